"""OpenVINO as a deployment target: the form of a qexport ONNX file that OpenVINO's CPU plugin loads
and runs in int8 as far as its ops allow (``qexport model.pt --format onnx --target openvino``).

Rewrites of the onnxruntime file, each keeping what it computes (onnxruntime runs both files alike;
the export checks the rewritten one against the PyTorch model, code for code):

1. Model-local functions inlined (``onnx.inliner``): OpenVINO does not read model-local functions,
   so a qexport op (``IntConv``, ``PostConv``, ``AsqQuantize`` ...) would be an unknown op; its
   function body runs instead, in float (OpenVINO has no native kernel for it).  An ``IntConv`` is
   first written as DequantizeLinear -> Conv (-> Relu), which OpenVINO runs as an int8 conv; a
   ``PostConv`` / ``PostMatMul`` as two of them, over its even and its odd weights (decoded to int8
   here), added.
   ASQ's step per sample (or per row) cannot be a DequantizeLinear scale there: the codes are
   dequantized by 1 and the conv's output multiplied by the step.
2. No QuantizeLinear of a constant: OpenVINO's int8 pass (``AddTransformation``) throws on one.
   A QuantizeLinear after a pure data-movement op on a constant (the transformer's position
   embedding, ``Slice(pos, 0, seq)``, which OpenVINO folds to a constant once the sequence length
   is fixed; an embedding ``Gather``) moves in front of that op, and every QuantizeLinear of a
   constant is then folded into an integer initializer (onnxscript's constant folder).
3. A requantization between a Conv and a residual Add written as Div -> Round -> Clip -> Mul
   instead of QuantizeLinear -> DequantizeLinear.  OpenVINO fuses Conv + that quantization + Add +
   the Add's output quantization into one kernel and there drops the first quantization's
   rounding (intel_cpu ``Convolution::setPostOps``: "drop rounding one special residual pattern"),
   which moved 14% of the codes after a residual add one step and 3.7% of the top-1 decisions of a
   4-bit ResNet-20; spelled out as float ops the rounding survives, and the conv stays int8.
4. A strided 1x1 conv (a downsampling shortcut) as Slice -> stride-1 conv: OpenVINO's own
   rewrite of it subsamples after the dequantization and leaves the conv float.
5. A MatMul by a one-row constant (an ASQ step adapter with one hidden unit) as a Mul: OpenVINO
   fails to compile the ASQ adapters with one inference thread otherwise.

``qexport.export.openvino.run_check`` compares OpenVINO with onnxruntime on the same inputs."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx.inliner
from onnxscript import ir, optimizer

from ..errors import QexportError
from ..ops import DOMAIN, post_weights

if TYPE_CHECKING:
    import openvino
    from torch import nn

INSTALL_HINT = "pip install qexport[openvino]"
TARGETS = ("onnxruntime", "openvino")
# ops that only select, copy or rearrange the elements of their first input: a per-tensor
# QuantizeLinear after one of them computes the same as before it
_MOVES = {"Slice", "Gather", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Expand"}
_ADDS = {"Add", "Sum"}
_CODES = {ir.DataType.INT8: np.int8, ir.DataType.UINT8: np.uint8}  # code types an int8 conv reads


def import_openvino() -> Any:
    """The ``openvino`` module, or a one-line QexportError naming the extra to install."""
    try:
        import openvino
    except ImportError:
        raise QexportError(f"OpenVINO is not installed: {INSTALL_HINT}") from None
    return openvino


def to_openvino(model: onnx.ModelProto) -> onnx.ModelProto:
    """The OpenVINO form of a qexport ONNX model (see the module docstring); ``model`` is unchanged."""
    graph_model = ir.serde.deserialize_model(model)
    for node in list(graph_model.graph):
        if node.domain == DOMAIN and node.op_type in ("IntConvRequant", "PostConvRequant"):
            _unfused_requant(graph_model.graph, node)
        elif node.domain == DOMAIN and node.op_type == "Requantize":
            _unfused_requantize(graph_model.graph, node)
        elif node.domain == DOMAIN and node.op_type == "AddRequant":
            _unfused_add_requant(graph_model.graph, node)
    for node in list(graph_model.graph):
        if node.domain == DOMAIN and node.op_type == "IntConv":
            _int_conv_as_qdq(graph_model.graph, node)
        elif node.domain == DOMAIN and node.op_type in ("PostConv", "PostMatMul"):
            _post_as_qdq(graph_model.graph, node)
    inlined = onnx.inliner.inline_local_functions(ir.serde.serialize_model(graph_model))
    graph_model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(inlined))  # ranks for 5.
    graph = graph_model.graph
    for node in list(graph):
        if _is_quantize(node):
            _hoist_over_move(graph, node)
        elif node.op_type == "Conv" and node.domain in ("", "ai.onnx"):
            _subsample_before_strided_1x1(graph, node)
        elif node.op_type == "MatMul" and node.domain in ("", "ai.onnx"):
            _outer_product_as_mul(graph, node)
    # only QuantizeLinear folds (by default onnxscript keeps it), whatever its size: codes are smaller
    optimizer.fold_constants(graph_model, output_size_limit=sys.maxsize, should_fold=_is_quantize)
    for node in list(graph):
        if _is_quantize(node):
            _explicit_residual_rounding(graph, node)
    optimizer.remove_unused_nodes(graph_model)
    left = [n.outputs[0].name for n in graph if _is_quantize(n) and _constant(n.inputs[0]) is not None]
    if left:
        raise QexportError(f"QuantizeLinear of a constant left in the OpenVINO form ({left[0]}): report it")
    if not any(n.domain == DOMAIN for n in graph):
        graph_model.opset_imports.pop(DOMAIN, None)
    out = ir.serde.serialize_model(graph_model)
    onnx.helper.set_model_props(out, {**{p.key: p.value for p in model.metadata_props}, "target": "openvino"})
    onnx.checker.check_model(out, full_check=True)
    return out


def write_openvino(path: str | os.PathLike[str], out_path: str | os.PathLike[str] | None = None) -> Path:
    """Rewrite the qexport ONNX file ``path`` into its OpenVINO form, at ``out_path`` (default: in place)."""
    src = Path(path)
    try:
        model = onnx.load(src)
    except Exception as exc:  # protobuf DecodeError, missing file ...
        raise QexportError(f"{src}: not a readable ONNX file ({type(exc).__name__})") from None
    out = Path(out_path or src)
    onnx.save(to_openvino(model), out)
    return out


def _is_quantize(node: ir.Node) -> bool:
    return node.op_type == "QuantizeLinear" and node.domain in ("", "ai.onnx")


def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _scalar_quantize(node: ir.Node) -> tuple[ir.Value, ir.Value] | None:
    """(scale, zero point) of a per-tensor QuantizeLinear with constant parameters, else None."""
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return None
    scale, zero = _constant(node.inputs[1]), _constant(node.inputs[2])
    if scale is None or zero is None or scale.size != 1 or zero.size != 1:
        return None
    return node.inputs[1], node.inputs[2]  # type: ignore[return-value]


def _code_type(value: ir.Value) -> ir.DataType | None:
    """The integer type of ``value`` where it is known without shape inference: a constant's, a
    Cast's target, or the zero point's of the QuantizeLinear or ASQ quantizer it comes from (through
    a range Clip)."""
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is not None:
        return tensor.dtype
    node = value.producer()
    if node is None:
        return value.dtype
    if node.op_type == "Clip" and node.inputs[0] is not None:
        return _code_type(node.inputs[0])
    if node.op_type == "Cast" and "to" in node.attributes:
        return ir.DataType(node.attributes["to"].as_int())
    quantize = node.op_type == "QuantizeLinear" or (
        node.domain == DOMAIN and node.op_type in ("AsqQuantize", "AsqQuantizeRows") and value is node.outputs[1]
    )  # ASQ's codes: the type of its zero point too
    if quantize and len(node.inputs) > 2 and node.inputs[2] is not None:
        zero = ir.convenience.get_const_tensor(node.inputs[2])
        return None if zero is None else zero.dtype
    return value.dtype


def _unfused_requant(graph: ir.Graph, node: ir.Node) -> None:
    """An IntConvRequant / PostConvRequant as the conv -> QuantizeLinear -> Clip it was fused from
    (lower.py): the conv and QuantizeLinear patterns below, and OpenVINO's own, read that form."""
    *conv_inputs, y_scale, y_zero = node.inputs
    zero = _constant(y_zero)
    if zero is None:
        raise QexportError(f"{node.op_type} {node.name} has no constant y_zero_point: report it")
    attrs = {k: v for k, v in node.attributes.items() if k not in ("qmin", "qmax")}
    conv = ir.node(node.op_type.removesuffix("Requant"), conv_inputs, attributes=attrs, domain=DOMAIN)
    quant = ir.node("QuantizeLinear", [conv.outputs[0], y_scale, y_zero])
    bounds = [
        _initializer(graph, f"{node.outputs[0].name}.{bound}", np.asarray(node.attributes[bound].as_int(), zero.dtype))
        for bound in ("qmin", "qmax")
    ]
    clip = ir.node("Clip", [quant.outputs[0], *bounds])
    graph.insert_before(node, [conv, quant, clip])
    _replace(graph, [node], {node.outputs[0]: clip.outputs[0]})


def _unfused_requantize(graph: ir.Graph, node: ir.Node) -> None:
    """A Requantize as the DequantizeLinear [-> Relu] -> QuantizeLinear [-> Clip] it was fused from
    (lower.py): OpenVINO's int8 pass reads quantization in that form."""
    x, x_scale, x_zero, y_scale, y_zero = node.inputs
    zero = _constant(y_zero)
    if zero is None:
        raise QexportError(f"Requantize {node.name} has no constant y_zero_point: report it")
    nodes = [ir.node("DequantizeLinear", [x, x_scale, x_zero])]
    if node.attributes["relu"].as_int():
        nodes.append(ir.node("Relu", [nodes[-1].outputs[0]]))
    nodes.append(ir.node("QuantizeLinear", [nodes[-1].outputs[0], y_scale, y_zero]))
    _clipped(graph, node, nodes, zero)


def _unfused_add_requant(graph: ir.Graph, node: ir.Node) -> None:
    """An AddRequant as the DequantizeLinear, DequantizeLinear -> Sum -> QuantizeLinear [-> Clip] it
    was fused from (lower.py)."""
    a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero = node.inputs
    zero = _constant(y_zero)
    if zero is None:
        raise QexportError(f"AddRequant {node.name} has no constant y_zero_point: report it")
    dqs = [ir.node("DequantizeLinear", [a, a_scale, a_zero]), ir.node("DequantizeLinear", [b, b_scale, b_zero])]
    nodes = [*dqs, ir.node("Sum", [dqs[0].outputs[0], dqs[1].outputs[0]])]
    nodes.append(ir.node("QuantizeLinear", [nodes[-1].outputs[0], y_scale, y_zero]))
    nodes = _with_clip(graph, node, nodes, zero)
    values = {node.outputs[0]: nodes[-1].outputs[0]}
    y = node.outputs[1] if len(node.outputs) > 1 else None
    if y is not None and (y.uses() or y.is_graph_output()):  # the dequantized sum [after its ReLU] (lower.py)
        nodes.append(ir.node("DequantizeLinear", [nodes[-1].outputs[0], y_scale, y_zero]))
        if "relu" in node.attributes and node.attributes["relu"].as_int() == 1:
            nodes.append(ir.node("Relu", [nodes[-1].outputs[0]]))
        values[y] = nodes[-1].outputs[0]
    graph.insert_before(node, nodes)
    _replace(graph, [node], values)


def _with_clip(graph: ir.Graph, node: ir.Node, nodes: list[ir.Node], zero: np.ndarray) -> list[ir.Node]:
    """``nodes`` (ending in a QuantizeLinear) and a Clip to ``node``'s qmin / qmax where they are narrower
    than the codes' type."""
    info = np.iinfo(zero.dtype)
    qmin, qmax = node.attributes["qmin"].as_int(), node.attributes["qmax"].as_int()
    if (qmin, qmax) != (info.min, info.max):
        bounds = [_initializer(graph, f"{node.outputs[0].name}.{name}", np.asarray(value, zero.dtype))
                  for name, value in (("qmin", qmin), ("qmax", qmax))]  # fmt: skip
        nodes.append(ir.node("Clip", [nodes[-1].outputs[0], *bounds]))
    return nodes


def _clipped(graph: ir.Graph, node: ir.Node, nodes: list[ir.Node], zero: np.ndarray) -> None:
    """``nodes`` and the Clip of ``_with_clip`` in place of ``node``."""
    nodes = _with_clip(graph, node, nodes, zero)
    graph.insert_before(node, nodes)
    _replace(graph, [node], {node.outputs[0]: nodes[-1].outputs[0]})


def _initializer(graph: ir.Graph, name: str, array: np.ndarray, dtype: ir.DataType | None = None) -> ir.Value:
    """A new initializer of ``graph``."""
    value = ir.Value(name=name, const_value=ir.tensor(array, dtype=dtype))
    graph.register_initializer(value)
    return value


def _one_constant(value: ir.Value | None) -> bool:
    """Whether ``value`` is a constant of one element (a step DequantizeLinear can take as its scale)."""
    array = _constant(value)
    return array is not None and array.size == 1


def _input_dq(graph: ir.Graph, node: ir.Node, x: ir.Value, x_type: ir.DataType, x_scale: ir.Value,
              x_zero: ir.Value | None = None) -> tuple[ir.Node, ir.Value | None]:  # fmt: skip
    """DequantizeLinear of a qexport conv / matmul's input codes, for OpenVINO's int8 pattern: by their
    step where it is one constant; else (ASQ's step per sample or per row) by 1, the codes' integer
    values, and the step is returned, to multiply the conv / matmul's output by (a DequantizeLinear
    scale must be a constant for OpenVINO's int8 pass)."""
    name = node.outputs[0].name
    if x_zero is None:
        x_zero = _initializer(graph, f"{name}.x_zero_point", np.zeros((), _CODES[x_type]), x_type)
    if _one_constant(x_scale):
        return ir.node("DequantizeLinear", [x, x_scale, x_zero]), None
    one = _initializer(graph, f"{name}.x_unit_scale", np.float32(1.0))
    return ir.node("DequantizeLinear", [x, one, x_zero]), x_scale


def _rescaled(graph: ir.Graph, node: ir.Node, y: ir.Value, step: ir.Value | None, bias: ir.Value | None,
              conv: bool) -> list[ir.Node]:  # fmt: skip
    """y times the input step (where _input_dq left it out), plus the bias (a conv's as [1, M, 1, 1]),
    then the node's ReLU."""
    new = []
    if step is not None:
        new.append(ir.node("Mul", [y, step]))
    if bias is not None:
        b = _constant(bias)
        if conv:
            assert b is not None
            bias = _initializer(graph, f"{node.outputs[0].name}.bias_nchw", b.reshape(1, -1, 1, 1))
        new.append(ir.node("Add", [new[-1].outputs[0] if new else y, bias]))
    return new + _relu_nodes(graph, node, new[-1].outputs[0] if new else y)


def _convertible(node: ir.Node, x: ir.Value | None, conv: bool, bias: ir.Value | None) -> ir.DataType | None:
    """The code type of a qexport conv / matmul's input when the rewrites below apply to it: codes of
    8-bit type, a ReLU they know, and (a conv with a step per sample) a constant bias."""
    x_type = None if x is None else _code_type(x)
    if x_type not in _CODES or ("relu" in node.attributes and node.attributes["relu"].as_int() not in (0, 1, 6)):
        return None
    if conv and not _one_constant(node.inputs[1]) and (bias is None or _constant(bias) is None):
        return None
    return x_type


def _int_conv_as_qdq(graph: ir.Graph, node: ir.Node) -> None:
    """An IntConv as DequantizeLinear -> Conv (-> times ASQ's per-sample step, + bias) (-> Relu):
    OpenVINO runs it as an int8 conv (the function body would be a float conv, its scale folded into
    the weights: not exact)."""
    x, x_scale, w, w_scale, bias = node.inputs
    x_type = _convertible(node, x, True, bias)
    w_type = None if w is None else _code_type(w)
    scales = None if w_scale is None else _constant(w_scale)
    if x_type is None or w_type not in _CODES or scales is None or x_scale is None:
        return
    assert x is not None and w is not None and w_scale is not None
    w_zero = _initializer(graph, f"{node.outputs[0].name}.w_zero_point", np.zeros(scales.shape, _CODES[w_type]), w_type)
    x_dq, step = _input_dq(graph, node, x, x_type, x_scale)
    w_dq = ir.node("DequantizeLinear", [w, w_scale, w_zero], attributes={"axis": 0})
    conv_attrs = {k: v for k, v in node.attributes.items() if k in ("strides", "pads", "dilations", "group")}
    conv = ir.node("Conv", [x_dq.outputs[0], w_dq.outputs[0], *([bias] if step is None else [])], attributes=conv_attrs)
    new = [x_dq, w_dq, conv, *_rescaled(graph, node, conv.outputs[0], step, None if step is None else bias, True)]
    graph.insert_before(node, new)
    _replace(graph, [node], {node.outputs[0]: new[-1].outputs[0]})


def _relu_nodes(graph: ir.Graph, node: ir.Node, y: ir.Value) -> list[ir.Node]:
    """The fused ReLU of qexport conv ``node`` (its ``relu`` attribute: 0, 1 or 6) applied to ``y``."""
    relu = node.attributes["relu"].as_int() if "relu" in node.attributes else 0
    if relu == 1:
        return [ir.node("Relu", [y])]
    if relu != 6:
        return []
    bounds = [_initializer(graph, f"{node.outputs[0].name}.relu6_{bound}", np.float32(value))
              for bound, value in (("low", 0.0), ("high", 6.0))]  # fmt: skip
    return [ir.node("Clip", [y, *bounds])]


def _post_as_qdq(graph: ir.Graph, node: ir.Node) -> None:
    """A PostConv / PostMatMul as two int8 convs / matmuls, the even and the odd weights (decoded at
    export), each DequantizeLinear -> Conv / MatMul, added (-> times ASQ's step, + bias) (-> Relu):
    OpenVINO runs both in int8 (the function body decodes the weights at run time and runs a float
    conv, or an integer MatMul OpenVINO has no int8 kernel for).  The odd weights' scale carries the
    1 / sqrt 2; float rounding differs from the body's combine in the last bits, as an int8 conv's
    does from IntConv's."""
    matmul = node.op_type == "PostMatMul"
    x, x_scale, w, w_scale, bias = node.inputs[:5]
    x_type = _convertible(node, x, not matmul, bias)
    codes, scales = _constant(w), _constant(w_scale)
    if x_type is None or codes is None or scales is None or x_scale is None:
        return
    assert x is not None
    name = node.outputs[0].name
    x_dq, step = _input_dq(graph, node, x, x_type, x_scale, node.inputs[5] if matmul else None)
    new, sums = [x_dq], []
    attrs = {k: v for k, v in node.attributes.items() if k in ("strides", "pads", "dilations", "group")}
    bits = node.attributes["bits"].as_int()
    for part, weights, scale in zip(("even", "odd"), post_weights.reference(codes.astype(np.uint8), bits),
                                    (scales, scales * post_weights.SQRT_HALF), strict=True):  # fmt: skip
        w_dq = ir.node("DequantizeLinear", [
            _initializer(graph, f"{name}.w_{part}", weights.astype(np.int8)),
            _initializer(graph, f"{name}.w_{part}_scale", scale.astype(np.float32)),
            _initializer(graph, f"{name}.w_{part}_zero_point", np.zeros(scale.shape, np.int8)),
        ], attributes={"axis": 1 if matmul else 0})  # fmt: skip
        if matmul:
            op = ir.node("MatMul", [x_dq.outputs[0], w_dq.outputs[0]])
        else:  # the bias in the even conv where no step multiplies after (a Conv input, per channel)
            in_conv = [bias] if part == "even" and step is None else []
            op = ir.node("Conv", [x_dq.outputs[0], w_dq.outputs[0], *in_conv], attributes=attrs)
        new += [w_dq, op]
        sums.append(op.outputs[0])
    total = ir.node("Add", sums)
    after_bias = bias if matmul or step is not None else None
    new += [total, *_rescaled(graph, node, total.outputs[0], step, after_bias, not matmul)]
    graph.insert_before(node, new)
    _replace(graph, [node], {node.outputs[0]: new[-1].outputs[0]})


def _weight_shape(value: ir.Value | None) -> list[int] | None:
    """The shape of a conv's weights: a constant, or one behind DequantizeLinear / Cast."""
    while value is not None:
        tensor = ir.convenience.get_const_tensor(value)
        if tensor is not None:
            return list(tensor.shape)
        node = value.producer()
        if node is None or node.op_type not in ("DequantizeLinear", "Cast"):
            return None
        value = node.inputs[0]
    return None


def _subsample_before_strided_1x1(graph: ir.Graph, conv: ir.Node) -> None:
    """A strided 1x1 conv as Slice (every stride-th row and column) -> 1x1 conv of stride 1.
    OpenVINO does the same, but puts its subsampling MaxPool after the input's dequantization, which
    leaves the conv float (a ResNet's downsampling shortcuts); a Slice before it stays int8."""

    def ints(name: str) -> list[int]:
        return list(conv.attributes[name].as_ints()) if name in conv.attributes else []

    strides, shape = ints("strides"), _weight_shape(conv.inputs[1])
    if shape is None or len(shape) != 4 or shape[2:] != [1, 1] or not any(s > 1 for s in strides):
        return
    auto_pad = conv.attributes["auto_pad"].as_string() if "auto_pad" in conv.attributes else "NOTSET"
    if any(ints("pads")) or any(d != 1 for d in ints("dilations")) or auto_pad not in ("NOTSET", "VALID"):
        return
    if conv.inputs[0] is None:
        return
    name = conv.outputs[0].name
    params = [
        _initializer(graph, f"{name}.subsample_{what}", np.array(values, np.int64))
        for what, values in (("starts", [0, 0]), ("ends", [2**62, 2**62]), ("axes", [2, 3]), ("steps", strides))
    ]
    subsample = ir.node("Slice", [conv.inputs[0], *params])
    graph.insert_before(conv, [subsample])
    conv.replace_input_with(0, subsample.outputs[0])
    conv.attributes["strides"] = ir.AttrInt64s("strides", [1] * len(strides))


def _outer_product_as_mul(graph: ir.Graph, matmul: ir.Node) -> None:
    """MatMul(x, W) with a constant W of one row (x's last axis is 1) as Mul(x, W): the same products,
    no sums.  OpenVINO 2026.4 fails to compile a MatMul by a 1x1 constant after another MatMul with
    one thread (its snippets: "Layout rank can't be larger than tensor rank"); ASQ's step adapters
    with one hidden unit are that."""
    x, w = matmul.inputs
    weights = _constant(w)
    if x is None or x.shape is None or len(x.shape) < 2 or weights is None or weights.ndim != 2:
        return
    if weights.shape[0] != 1:
        return
    mul = ir.node("Mul", [x, w])
    graph.insert_before(matmul, [mul])
    _replace(graph, [matmul], {matmul.outputs[0]: mul.outputs[0]})


def _hoist_over_move(graph: ir.Graph, quant: ir.Node) -> None:
    """Q(move(C, ...)) -> move(Q(C), ...) for a constant C, so that Q(C) folds."""
    move = quant.inputs[0].producer() if quant.inputs[0] is not None else None
    params = _scalar_quantize(quant)
    if move is None or params is None or move.op_type not in _MOVES or move.domain not in ("", "ai.onnx"):
        return
    if _constant(move.inputs[0]) is None:
        return
    codes = ir.node("QuantizeLinear", [move.inputs[0], *params])
    codes.outputs[0].name = f"{move.inputs[0].name}.codes"  # the integer initializer it folds into
    moved = ir.node(move.op_type, [codes.outputs[0], *move.inputs[1:]], attributes=move.attributes)
    graph.insert_before(quant, [codes, moved])
    _replace(graph, [quant], {quant.outputs[0]: moved.outputs[0]})


def _explicit_residual_rounding(graph: ir.Graph, quant: ir.Node) -> None:
    """Conv -> Q -> DQ -> Add becomes Conv -> Div -> Round -> Clip -> Mul -> Add (same values)."""
    src = quant.inputs[0].producer() if quant.inputs[0] is not None else None
    params = _scalar_quantize(quant)
    if src is None or src.op_type != "Conv" or params is None:
        return
    uses = quant.outputs[0].uses()
    if quant.outputs[0].is_graph_output() or len(uses) != 1:
        return
    deq = uses[0].node
    if deq.op_type != "DequantizeLinear" or list(deq.inputs[1:]) != list(params):
        return
    if not any(u.node.op_type in _ADDS for u in deq.outputs[0].uses()):
        return
    scale, zero = params
    zp = _constant(zero)
    assert zp is not None
    info = np.iinfo(zp.dtype)
    lo = _initializer(graph, f"{quant.outputs[0].name}.low", np.float32(info.min - int(zp.item())))
    hi = _initializer(graph, f"{quant.outputs[0].name}.high", np.float32(info.max - int(zp.item())))
    div = ir.node("Div", [quant.inputs[0], scale])
    rnd = ir.node("Round", [div.outputs[0]])
    clip = ir.node("Clip", [rnd.outputs[0], lo, hi])
    mul = ir.node("Mul", [clip.outputs[0], scale])
    graph.insert_before(deq, [div, rnd, clip, mul])
    # the codes (as floats here) keep the code tensor's name: the checker reads them
    _replace(graph, [deq, quant], {quant.outputs[0]: clip.outputs[0], deq.outputs[0]: mul.outputs[0]}, False)


def _replace(graph: ir.Graph, old: list[ir.Node], values: dict[ir.Value, ir.Value], same_type: bool = True) -> None:
    """Remove the nodes ``old``; each of their output values in ``values`` hands its uses, its place
    among the graph outputs and its name to its replacement, and its type and shape where the
    replacement computes the same type (``same_type``)."""
    kept = {after: (before.name, before.type, before.shape) for before, after in values.items()}
    for before, after in values.items():
        before.replace_all_uses_with(after, replace_graph_outputs=True)
    graph.remove(old, safe=True)
    for after, (name, type_, shape) in kept.items():
        after.name = name
        if same_type:
            after.type, after.shape = type_, shape


# ---------------------------------------------------------------------------------------------------
# running a file in OpenVINO


def compile_model(
    path: str | os.PathLike[str], threads: int = 0, batch: int | None = None, shapes: Sequence[int] | None = None
) -> Any:
    """``path`` compiled for OpenVINO's CPU plugin: f32 where not int8 (no bf16 / f16 downcast),
    ``threads`` inference threads (0: OpenVINO's choice), no core pinning (pinning distorts
    timings when several compiled models share a process).  ``batch`` fixes the batch dimension of
    every input; ``shapes`` the first input's whole shape (dynamic axes past the batch too)."""
    ov = import_openvino()
    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError / its own exception types
        raise QexportError(f"{path}: OpenVINO cannot read it ({_first_line(exc)})") from None
    if shapes is not None:
        model.reshape({model.inputs[0].any_name: list(shapes)})
    elif batch is not None:
        model.reshape(
            {i.any_name: [batch, *list(i.get_partial_shape())[1:]] for i in model.inputs}  # type: ignore[misc]
        )
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": "LATENCY",
        "ENABLE_CPU_PINNING": False,
        "INFERENCE_PRECISION_HINT": "f32",
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        return core.compile_model(model, "CPU", config)
    except Exception as exc:
        raise QexportError(f"{path}: OpenVINO cannot compile it ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    """The informative line of an OpenVINO exception (its first lines name only C++ source files)."""
    lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip(" -")]
    unknown = [line for line in lines if line.startswith("No conversion rule found")]
    if unknown:  # ops OpenVINO does not know: qexport ops of an onnxruntime-target file, say so
        hint = "; export with --target openvino" if f"{DOMAIN}." in unknown[0] else ""
        return f"{unknown[0][:160]}{hint}"
    useful = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return (useful or lines or [type(exc).__name__])[0][:200]


@dataclass
class Precisions:
    """What OpenVINO's compiled graph runs convs and matmuls in (``runtimePrecision`` per node)."""

    integer_conv: int = 0
    float_conv: int = 0
    integer_matmul: int = 0
    float_matmul: int = 0
    ops: dict[str, int] = field(default_factory=dict)

    def text(self) -> str:
        parts = (
            [f"conv {self.integer_conv} int8 / {self.float_conv} float"] if self.integer_conv + self.float_conv else []
        )
        if self.integer_matmul + self.float_matmul:
            parts.append(f"matmul {self.integer_matmul} int8 / {self.float_matmul} float")
        return ", ".join(parts)


def precisions(compiled: openvino.CompiledModel) -> Precisions:
    """Counts of int8 and float convs / matmuls in a compiled model's runtime graph."""
    p = Precisions()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind, precision = str(info["layerType"].astype(str)), str(info["runtimePrecision"].astype(str))
        p.ops[kind] = p.ops.get(kind, 0) + 1
        integer = precision.lower() in ("u8", "i8")
        if kind == "Convolution":
            p.integer_conv += integer
            p.float_conv += not integer
        elif kind in ("FullyConnected", "MatMul"):
            p.integer_matmul += integer
            p.float_matmul += not integer
    return p


def run(compiled: openvino.CompiledModel, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Every output of ``compiled`` on ``feed`` (input name -> array), in graph order."""
    request = compiled.create_infer_request()
    results = request.infer({name: np.ascontiguousarray(x) for name, x in feed.items()})
    return [np.asarray(results[out]) for out in compiled.outputs]


@dataclass
class OutputParity:
    name: str
    max_abs_diff: float
    top1_agreement: float | None  # classifier-like outputs ([batch, classes]) only
    mean_rel_diff: float  # mean |difference| / (max - min of onnxruntime's output)


@dataclass
class OpenVinoCheck:
    """OpenVINO against onnxruntime on the same inputs (free-running)."""

    path: str
    samples: int
    reference: str  # what onnxruntime ran: "the same file" or "the onnxruntime export"
    outputs: list[OutputParity]
    precisions: Precisions

    @property
    def passed(self) -> bool:
        from ..check import DENSE_MAX_FREE_MEAN, MAX_FREE_FLIPS, MIN_FREE_TOP1

        for o in self.outputs:
            if o.top1_agreement is not None:
                flips = round((1 - o.top1_agreement) * self.samples)
                if o.top1_agreement < MIN_FREE_TOP1 and flips > MAX_FREE_FLIPS:
                    return False
            elif o.mean_rel_diff > DENSE_MAX_FREE_MEAN:
                return False
        return True

    def text(self) -> str:
        parts = []
        for o in self.outputs:
            top1 = f"top-1 agreement {100 * o.top1_agreement:.2f}%, " if o.top1_agreement is not None else ""
            label = f"{o.name}: " if len(self.outputs) > 1 else ""
            parts.append(f"{label}{top1}largest difference {o.max_abs_diff:.3g}")
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"OpenVINO vs onnxruntime ({self.reference}), same {self.samples} inputs: {'; '.join(parts)}; "
            f"OpenVINO runs {self.precisions.text() or 'no conv or matmul'}: {verdict}"
        )


def example_feed(model: nn.Module, path: str | os.PathLike[str], samples: int) -> dict[str, np.ndarray]:
    """``samples`` random inputs of every input of ``path`` as the model's example describes them, the
    ones ``qexport.check`` draws by default (the same seeds): input name -> array."""
    from ..zoo import example_inputs

    proto = onnx.load(str(path), load_external_data=False)
    constants = {t.name for t in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in constants]
    if getattr(model, "qexport_example", None) is None:
        raise QexportError("the model records no example input: cannot draw inputs for the OpenVINO check")
    per_sample = [example_inputs(model, 1, seed=i) for i in range(samples)]
    columns = [np.concatenate([s[k].numpy() for s in per_sample]) for k in range(len(per_sample[0]))]
    if len(columns) != len(names):
        raise QexportError(f"{path} takes {len(names)} inputs but the model's example describes {len(columns)}")
    return dict(zip(names, columns, strict=True))


def run_check(
    path: str | os.PathLike[str],
    feed: Mapping[str, np.ndarray],
    reference: str | os.PathLike[str] | bytes | None = None,
    threads: int = 0,
) -> OpenVinoCheck:
    """Run ``path`` in OpenVINO and ``reference`` (the onnxruntime export it was made from, a path or
    its bytes; default: ``path`` itself) in onnxruntime (CPU, native kernels where built) on ``feed``
    (input name -> array, samples in dimension 0) and compare the outputs, free-running."""
    import onnxruntime as ort

    from ..native import register

    compiled = compile_model(path, threads)
    try:
        ours = run(compiled, feed)
    except Exception as exc:
        raise QexportError(f"{path}: OpenVINO cannot run it ({_first_line(exc)})") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    register(options, quiet=True)
    source = reference if isinstance(reference, bytes) else str(reference or path)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    theirs = session.run(None, dict(feed))
    samples = len(next(iter(feed.values())))
    outputs = []
    for out, a, b in zip(session.get_outputs(), theirs, ours, strict=True):
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        diff = np.abs(a64 - b64) if a64.size else np.zeros(1)
        scale = max(float(a64.max() - a64.min()) if a64.size else 0.0, 1e-12)
        top1 = None
        if a64.ndim == 2 and a64.shape[1] > 1 and np.issubdtype(np.asarray(a).dtype, np.floating):
            top1 = float((a64.argmax(1) == b64.argmax(1)).mean())
        outputs.append(OutputParity(out.name, float(diff.max()), top1, float(diff.mean()) / scale))
    what = "the same file" if reference is None else "the onnxruntime export"
    return OpenVinoCheck(str(path), samples, what, outputs, precisions(compiled))
