"""Lowering through torch.onnx: every op of the model is written by PyTorch's own ONNX exporter
(``torch.onnx.export(dynamo=True)``); qexport writes only the quantized units.

1. On the quantized fx graph, each quantized unit -- a QuantConv2d with the BatchNorm it folds and
   the ReLU an IntConv applies, a QuantLinear, a glue quantizer -- is replaced by a placeholder
   custom op ``qexport_lower::unit(x, uid)`` (fake kernel: the unit's output shape, batch dynamic).
   A ReLU6 whose every user is a uniform quantizer becomes a ReLU: the 6 is applied on the codes.
2. torch.onnx exports that graph; the placeholder becomes a node ``qexport.lower.Unit`` through a
   custom translation.
3. Each ``Unit`` node is replaced by what the Emitter writes for its unit (QDQ, QLinear-fusable
   patterns, IntConv / PostConv / AsqQuantize ...), and small ONNX passes finish the graph
   (exact adds as ``Sum``, a conv's output quantizer fused into it, dead nodes dropped, the qexport
   function bodies attached).
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxscript
import torch
import torch.nn.functional as F
from onnx import defs
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils import _pytree as pytree

from ..errors import QexportError
from ..ops import DOMAIN, VERSION, functions_for
from ..quant.base import Quantizer
from ..quant.capture import first_line
from ..quant.layers import QuantConv2d, QuantLinear
from .emit import Emitter, relu_kind

LOWER_DOMAIN = "qexport.lower"  # the placeholders' domain: never left in a written file
EXAMPLE_BATCH = 3  # batch of the capture example: not 1 (torch.export specializes sizes 0 and 1)


@dataclass
class _Unit:
    node: fx.Node  # the quantized layer or glue quantizer in the quantized graph
    last: fx.Node  # the node whose value the unit's output stands for (the folded BN, the fused ReLU)
    module: nn.Module

    def output_shape(self, x: torch.Tensor) -> list[Any]:
        """The unit's output shape for input ``x`` (symbolic sizes stay symbolic: dynamic axes)."""
        m = self.module
        if isinstance(m, QuantLinear):
            return [*x.shape[:-1], m.out_features]
        if isinstance(m, QuantConv2d):
            sizes = [
                (x.shape[2 + i] + 2 * m.padding[i] - m.dilation[i] * (m.kernel_size[i] - 1) - 1) // m.stride[i] + 1
                for i in range(2)
            ]
            return [x.shape[0], m.out_channels, *sizes]
        return list(x.shape)  # a glue quantizer


@dataclass
class _Plan:
    units: list[_Unit] = field(default_factory=list)
    relu6_codes: set[fx.Node] = field(default_factory=set)  # ReLU6s written as ReLU, the 6 on the codes


_ACTIVE: list[_Unit] = []  # the units of the lowering in progress (read by the fake kernel)


@torch.library.custom_op("qexport_lower::unit", mutates_args=())
def _unit(x: torch.Tensor, uid: int) -> torch.Tensor:
    raise QexportError("qexport_lower::unit is a lowering placeholder: it only exists while exporting")


@_unit.register_fake
def _unit_fake(x: torch.Tensor, uid: int) -> torch.Tensor:
    return x.new_empty(_ACTIVE[uid].output_shape(x), dtype=torch.float32)


def _register_schema() -> None:
    if defs.has("Unit", LOWER_DOMAIN):  # a second import (tests reload modules) must not register twice
        return
    param = defs.OpSchema.FormalParameter
    defs.register_schema(defs.OpSchema(
        "Unit", LOWER_DOMAIN, 1,
        inputs=[param("x", "T")], outputs=[param("y", "tensor(float)")],
        type_constraints=[("T", ["tensor(float)", "tensor(int64)", "tensor(int32)"], "")],
        attributes=[defs.OpSchema.Attribute("uid", defs.OpSchema.AttrType.INT, "unit index")],
    ))  # fmt: skip


_register_schema()
_LOWER_OPSET = onnxscript.values.Opset(LOWER_DOMAIN, 1)


def _unit_onnx(x: Any, uid: int) -> Any:
    return _LOWER_OPSET.Unit(x, uid=uid)


# -- 1. the plan: which nodes are units, what each absorbs -----------------------------------------
def _is_unit(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op != "call_module":
        return False
    m = gm.get_submodule(str(node.target))
    return isinstance(m, (QuantConv2d, QuantLinear, Quantizer))


def _fuses_relu(e: Emitter, node: fx.Node) -> bool:
    """Whether the Emitter writes conv ``node`` as an IntConv or PostConv that applies the ReLU / ReLU6
    after it."""
    layer = e.module(node)
    if not isinstance(layer, QuantConv2d) or layer.act_quant is None:
        return False
    form, post = e.weight_form(layer)
    return (post or e.writes_int_conv(layer, node, form)) and e.relu_after(node) is not None


def _plan(gm: fx.GraphModule, e: Emitter) -> _Plan:
    plan = _Plan()
    absorbed: set[fx.Node] = set()  # ReLUs a unit applies (seen before the ReLU itself, in graph order)
    for node in gm.graph.nodes:
        if (relu_kind(gm, node) == "relu6" and node not in absorbed and node.users
                and all(e.uniform_quantizer_input(u) for u in node.users)):  # fmt: skip
            plan.relu6_codes.add(node)
        if not _is_unit(gm, node):
            continue
        last = node
        if node in e.folds:  # the folded BatchNorm
            last = e.folds[node][0]
        if _fuses_relu(e, node):
            relu = e.relu_after(node)
            assert relu is not None
            last = relu
            absorbed.add(relu)
        plan.units.append(_Unit(node, last, gm.get_submodule(str(node.target))))
    return plan


def _lowering_graph(gm: fx.GraphModule, plan: _Plan) -> fx.GraphModule:
    """A copy of ``gm`` with each unit a placeholder call and the absorbed nodes gone."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    output = graph.graph_copy(gm.graph, env)
    if output is not None:
        graph.output(output)
    for uid, unit in enumerate(plan.units):
        new = env[unit.node]
        source = unit.node.args[0]
        with graph.inserting_before(new):
            placeholder = graph.call_function(torch.ops.qexport_lower.unit.default, (env[source], uid))
        env[unit.last].replace_all_uses_with(placeholder)
        chain = [unit.last]  # the unit's nodes, last first: each was the only user of the one before
        while chain[-1] is not unit.node:
            chain.append(chain[-1].args[0])
        for old in chain:
            graph.erase_node(env[old])
        env[unit.last] = placeholder  # later units read the unit's value through env
    for node in plan.relu6_codes:
        new = env[node]
        with graph.inserting_before(new):
            relu = graph.call_function(F.relu, (new.args[0],))
        new.replace_all_uses_with(relu)
        graph.erase_node(new)
    lowered = fx.GraphModule(gm, graph, class_name=type(gm).__name__)
    lowered.graph.eliminate_dead_code()
    lowered.recompile()
    return lowered


@contextlib.contextmanager
def _active(units: list[_Unit]) -> Iterator[None]:
    _ACTIVE[:] = units
    try:
        yield
    finally:
        _ACTIVE.clear()


# -- 2. torch.onnx ---------------------------------------------------------------------------------
def _torch_onnx(lowered: fx.GraphModule, args: tuple[torch.Tensor, ...], names: list[str], opset: int,
                dynamic: bool) -> onnx.ModelProto:  # fmt: skip
    def axes(a: torch.Tensor) -> dict[int, Any]:
        """The batch free everywhere; sequences (inputs of rank 2-3: token ids, masks, [B, T, C]
        features) free along every axis the model allows (Dim.AUTO keeps an axis static where the
        model needs it so); images keep their size."""
        if not dynamic or a.dim() == 0:
            return {}
        return dict.fromkeys(range(a.dim() if a.dim() <= 3 else 1), torch.export.Dim.AUTO)

    shapes = tuple(axes(a) for a in args)
    try:
        program = torch.onnx.export(
            lowered, args, dynamo=True, opset_version=opset, input_names=names, optimize=True, verbose=False,
            custom_translation_table={torch.ops.qexport_lower.unit.default: _unit_onnx},
            dynamic_shapes=shapes if dynamic else None, report=False,
        )  # fmt: skip
    except Exception as exc:  # torch.export / torch.onnx raise many kinds
        raise QexportError(f"torch.onnx could not export the model: {type(exc).__name__}: {first_line(exc)}") from None
    assert program is not None
    return program.model_proto


# -- 3. the units written in, and the finishing passes --------------------------------------------
def _splice(proto: onnx.ModelProto, e: Emitter, plan: _Plan) -> None:
    graph = proto.graph
    e.b._used.update(
        {n for node in graph.node for n in (*node.input, *node.output)}
        | {t.name for t in graph.initializer} | {v.name for v in (*graph.input, *graph.output)}
    )  # fmt: skip
    constants = {t.name: t for t in graph.initializer}
    rename: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        if node.domain != LOWER_DOMAIN:
            nodes.append(node)
            continue
        unit = plan.units[next(a.i for a in node.attribute if a.name == "uid")]
        source = unit.node.args[0]
        name = node.input[0]
        if name in constants:  # a quantizer of a constant (a positional embedding table)
            e.env[source] = onnx.numpy_helper.to_array(constants[name])
        else:
            e.env[source] = name
            if source in plan.relu6_codes:
                e.relu6.add(name)
        start = len(e.b.nodes)
        out = e.emit_unit(unit.node)
        nodes.extend(e.b.nodes[start:])
        rename[node.output[0]] = out
    for value in graph.output:
        if value.name in rename:
            # a unit's value is a graph output: give it the output's name through an Identity
            nodes.append(onnx.helper.make_node("Identity", [rename[value.name]], [value.name]))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(e.b.initializers)
    del graph.value_info[:]  # the placeholders' shapes are gone; onnxruntime infers the rest


def _readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Value name -> the nodes that read it (a node once per input naming it)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return readers


def _exact_adds(graph: onnx.GraphProto) -> None:
    """Add of two dequantized tensors read only by a QuantizeLinear -> Sum (see emit's ``_add``)."""
    producers = {o: n for n in graph.node for o in n.output}
    readers = _readers(graph)
    for n in graph.node:
        if n.op_type != "Add" or n.domain or len(n.input) != 2:
            continue
        dq = all(i in producers and producers[i].op_type == "DequantizeLinear" for i in n.input)
        users = readers.get(n.output[0], [])
        if dq and len(users) == 1 and users[0].op_type == "QuantizeLinear":
            n.op_type = "Sum"


def _transpose_codes(graph: onnx.GraphProto) -> None:
    """DequantizeLinear (per-tensor) -> Transpose becomes Transpose of the codes -> DequantizeLinear:
    the same numbers (dequantizing is elementwise), a quarter of the bytes moved, and no Transpose
    between a DequantizeLinear and the next QuantizeLinear for onnxruntime's transpose optimizer to
    push through them (it wrote a QuantizeLinear with a mismatched output_dtype on ConvNeXt)."""
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    scalars = {t.name for t in graph.initializer if not t.dims}
    for n in graph.node:
        dq = producers.get(n.input[0]) if n.op_type == "Transpose" and not n.domain else None
        if dq is None or dq.op_type != "DequantizeLinear" or readers.get(dq.output[0]) != 1:
            continue
        if not all(i in scalars for i in dq.input[1:]):
            continue
        codes, value, out = dq.input[0], dq.output[0], n.output[0]
        perm = [a for a in n.attribute if a.name == "perm"]
        moved = onnx.helper.make_node("Transpose", [codes], [f"{value}.t"], name=f"{n.name}.codes")
        moved.attribute.extend(perm)
        dequant = onnx.helper.make_node("DequantizeLinear", [f"{value}.t", *dq.input[1:]], [out], name=dq.name)
        dequant.attribute.extend(dq.attribute)
        dq.CopyFrom(moved)  # the codes are transposed where they were dequantized ...
        n.CopyFrom(dequant)  # ... and dequantized where they were transposed


_CODE_RANGE = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127)}


def _pooled_codes(graph: onnx.GraphProto, keep: set[str]) -> None:
    """MaxPool -> QuantizeLinear [-> Clip] (a constant scalar step and 8-bit zero point) becomes
    QuantizeLinear [-> Clip] -> MaxPool of the codes.  Quantizing is non-decreasing (a division by a
    positive step, rounding, clamping), so the code of a window's max is the max of its codes, and a
    padded position is never part of a window's max in either.  Only after a QDQ conv [-> Relu] (a
    VGG's conv -> ReLU -> MaxPool -> next conv's quantizer; the emitter writes the conv so where a pool
    and one quantizer follow): onnxruntime then fuses the conv and its quantizer into QLinearConv and
    moves the pool onto its channels-last codes (NhwcMaxPool, a fifth of the float pool's time), where
    its channels-first 8-bit MaxPool is 8-18x slower than the float one.  Only where the pool has no
    Indices output and its output is read by that quantizer alone and not kept, and the codes by
    DequantizeLinear nodes alone.  (A NaN: the float pool's max may skip it where the codes' max takes
    its code; the model's output is NaN-fed either way.)"""
    constants = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    readers = _readers(graph)

    def after_qdq_conv(value: str) -> bool:
        node = producers.get(value)
        if node is not None and node.op_type == "Relu" and not node.domain:
            node = producers.get(node.input[0])
        if node is None or node.op_type != "Conv" or node.domain:
            return False
        return _scalar_quantizer(producers.get(node.input[0]), "DequantizeLinear", constants)

    after: dict[str, onnx.NodeProto] = {}  # unpooled codes -> the pool that now reads them
    for pool in graph.node:
        if pool.op_type != "MaxPool" or pool.domain or len([o for o in pool.output if o]) != 1:
            continue
        if not after_qdq_conv(pool.input[0]):
            continue
        users = readers.get(pool.output[0], [])
        if pool.output[0] in keep or len(users) != 1 or not _scalar_quantizer(users[0], "QuantizeLinear", constants):
            continue
        quant = users[0]
        clip = _code_clip(quant, constants[quant.input[2]], readers, constants, keep)[2]
        last = clip if clip is not None else quant
        codes = last.output[0]
        # read by QDQ convs only (channels-last in onnxruntime, the pool with them), not a native op
        if not all(_scalar_quantizer(r, "DequantizeLinear", constants) for r in readers.get(codes, [None])):
            continue
        quant.input[0] = pool.input[0]
        last.output[0] = f"{codes}.unpooled"
        pool.input[0] = last.output[0]
        del pool.output[:]
        pool.output.append(codes)
        after[last.output[0]] = pool
    if not after:
        return
    # each moved pool right after the node whose codes it now reads
    moved = {pool.output[0] for pool in after.values()}
    order: list[onnx.NodeProto] = []
    for n in graph.node:
        if n.op_type == "MaxPool" and n.output and n.output[0] in moved:
            continue
        order.append(n)
        order.extend(after[o] for o in n.output if o in after)
    del graph.node[:]
    graph.node.extend(order)


def _code_clip(quant: onnx.NodeProto, zero: onnx.TensorProto, readers: dict[str, list[onnx.NodeProto]],
               constants: dict[str, onnx.TensorProto],
               keep: set[str]) -> tuple[int, int, onnx.NodeProto | None]:  # fmt: skip
    """The code range (qmin, qmax) of QuantizeLinear ``quant`` (8-bit zero point ``zero``) and the Clip
    that narrows it, when its one reader is a Clip of constant scalar bounds of the codes' type that
    leaves a range; else the type's range and None (a Clip that empties the range stays as written)."""
    qmin, qmax = _CODE_RANGE[zero.data_type]
    out = quant.output[0]
    clips = readers.get(out, [])
    if len(clips) != 1 or clips[0].op_type != "Clip" or clips[0].domain or out in keep or len(clips[0].input) != 3:
        return qmin, qmax, None
    bounds = [constants.get(i) for i in clips[0].input[1:]]
    if any(b is None or b.dims or b.data_type != zero.data_type for b in bounds):
        return qmin, qmax, None
    lo, hi = (int(onnx.numpy_helper.to_array(b)) for b in bounds)  # type: ignore[arg-type]
    if max(qmin, lo) > min(qmax, hi):
        return qmin, qmax, None
    return max(qmin, lo), min(qmax, hi), clips[0]


def _conv_per_quantizer(graph: onnx.GraphProto, keep: set[str], codes: dict[str, str],
                        offsets: dict[str, int]) -> None:  # fmt: skip
    """A QDQ Conv (uint8 codes in) whose output only QuantizeLinear nodes read, several of them (the
    emitter writes one where a conv feeds several quantizers: Emitter.output_quantized), gets one copy
    per quantizer, so that onnxruntime fuses each DequantizeLinear -> Conv -> QuantizeLinear into its
    QLinearConv (one reader each) and runs it channels-last with its neighbours, instead of a float
    conv.  QLinearConv takes one code type in and out: int8 codes are written as uint8 + 128 (their
    Clip's bounds, their DequantizeLinear readers' zero point and the checker's ``offsets`` with
    them); where some quantizer's codes cannot be (another reader), nothing changes."""
    paths = {name: path for path, name in codes.items()}
    constants = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    readers = _readers(graph)
    added: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []  # (copy, the conv it follows)
    for conv in graph.node:
        if conv.op_type != "Conv" or conv.domain or conv.output[0] in keep:
            continue
        source = producers.get(conv.input[0])
        if not _scalar_quantizer(source, "DequantizeLinear", constants):
            continue
        assert source is not None
        if constants[source.input[2]].data_type != onnx.TensorProto.UINT8:
            continue
        quants = readers.get(conv.output[0], [])
        if len(quants) < 2 or not all(_scalar_quantizer(q, "QuantizeLinear", constants) for q in quants):
            continue
        plans = [_uint8_plan(q, constants, readers, keep, paths) for q in quants]
        if any(p is None for p in plans):
            continue
        for quant, plan in zip(quants, plans, strict=True):
            assert plan is not None
            _write_uint8(graph, constants, quant, *plan, paths, offsets)
        for i, quant in enumerate(quants[1:], 1):
            copy = onnx.NodeProto()
            copy.CopyFrom(conv)
            copy.name = f"{conv.name}.{i}"
            copy.output[0] = f"{conv.output[0]}.{i}"
            quant.input[0] = copy.output[0]
            added.append((copy, conv))
    for copy, conv in added:
        at = list(graph.node).index(conv)
        graph.node.insert(at + 1, copy)


_Uint8Plan = tuple[onnx.NodeProto | None, list[onnx.NodeProto]]  # (the quantizer's Clip, its DequantizeLinear readers)


def _uint8_plan(quant: onnx.NodeProto, constants: dict[str, onnx.TensorProto],
                readers: dict[str, list[onnx.NodeProto]], keep: set[str], paths: dict[str, str]) -> _Uint8Plan | None:
    """For ``_conv_per_quantizer``: (its Clip or None, the DequantizeLinear readers of its codes) where
    QuantizeLinear ``quant``'s codes are uint8 already or can be written as uint8 + 128; else None."""
    zero = constants[quant.input[2]]
    clip = _code_clip(quant, zero, readers, constants, keep)[2]
    out = clip.output[0] if clip is not None else quant.output[0]
    if clip is None and any(r.op_type == "Clip" for r in readers.get(quant.output[0], [])):
        return None  # a Clip _code_clip does not take apart
    later = readers.get(out, [])
    if zero.data_type == onnx.TensorProto.UINT8:
        return clip, []
    if out not in paths or not later:
        return None
    if any(r.op_type != "DequantizeLinear" or r.domain or len(r.input) != 3 or r.input[0] != out
           or r.input[2] != zero.name for r in later):  # fmt: skip
        return None
    return clip, later


def _write_uint8(graph: onnx.GraphProto, constants: dict[str, onnx.TensorProto], quant: onnx.NodeProto,
                 clip: onnx.NodeProto | None, dequantized: list[onnx.NodeProto], paths: dict[str, str],
                 offsets: dict[str, int]) -> None:  # fmt: skip
    """int8 codes of ``quant`` (and its ``clip``) written as uint8 + 128, as ``_uint8_plan`` found them."""
    zero = constants[quant.input[2]]
    if zero.data_type == onnx.TensorProto.UINT8:
        return
    out = clip.output[0] if clip is not None else quant.output[0]
    name = _as_uint8(graph, constants, out, zero, dequantized, dequantized, paths, offsets)
    assert name is not None  # what _as_uint8 needs, _uint8_plan checked
    quant.input[2] = name
    if clip is not None:  # its bounds are int8 constants of the codes' type: + 128, as the zero point
        for i in (1, 2):
            clip.input[i] = _uint8_zero_point(graph, constants, constants[clip.input[i]])


def _requantized_convs(graph: onnx.GraphProto, keep: set[str], codes: dict[str, str], offsets: dict[str, int]) -> None:
    """IntConv / PostConv -> QuantizeLinear (scalar constant step and 8-bit zero point) [-> Clip of
    constant bounds] becomes one IntConvRequant / PostConvRequant node: the conv writes the codes (its
    native kernel requantizes in its epilogue) instead of a float tensor that two more passes read.
    Only where the conv's float output has that one reader and is not kept (a graph output).

    int8 codes that only DequantizeLinear nodes read (a residual add's input) are written as uint8 +
    128, those nodes given that zero point, and ``offsets`` (the checker's) updated: onnxruntime fuses
    the add into QLinearAdd only with all its inputs of one type, which it otherwise gets by turning the
    QuantizeLinear -> DequantizeLinear pair into uint8 itself."""
    paths = {name: path for path, name in codes.items()}
    constants = {t.name: t for t in graph.initializer}
    readers = _readers(graph)

    def scalar(name: str) -> onnx.TensorProto | None:
        t = constants.get(name)
        return t if t is not None and not t.dims else None

    dropped: set[tuple[str, str]] = set()  # (op type, output) of the absorbed nodes
    for conv in graph.node:
        if conv.domain != DOMAIN or conv.op_type not in ("IntConv", "PostConv") or conv.output[0] in keep:
            continue
        users = readers.get(conv.output[0], [])
        quant = users[0] if len(users) == 1 else None
        if quant is None or quant.op_type != "QuantizeLinear" or quant.domain or len(quant.input) != 3:
            continue
        scale, zero = scalar(quant.input[1]), scalar(quant.input[2])
        if scale is None or zero is None or scale.data_type != onnx.TensorProto.FLOAT:
            continue
        if zero.data_type not in _CODE_RANGE:
            continue
        if any(a.name not in ("axis", "saturate") for a in quant.attribute):
            continue
        qmin, qmax, clip = _code_clip(quant, zero, readers, constants, keep)
        out, absorbed = (clip.output[0], [quant, clip]) if clip else (quant.output[0], [quant])
        zero_point = quant.input[2]
        dequantized = [n for n in readers.get(out, []) if n.op_type == "DequantizeLinear"]
        if zero.data_type == onnx.TensorProto.INT8 and dequantized:
            shifted = _as_uint8(graph, constants, out, zero, dequantized, readers.get(out, []), paths, offsets)
            if shifted is None:
                continue
            zero_point, qmin, qmax = shifted, qmin + 128, qmax + 128
        fused = onnx.helper.make_node(f"{conv.op_type}Requant", [*conv.input, quant.input[1], zero_point], [out],
                                      name=conv.name, domain=DOMAIN)  # fmt: skip
        fused.attribute.extend(conv.attribute)
        fused.attribute.extend([onnx.helper.make_attribute("qmin", qmin), onnx.helper.make_attribute("qmax", qmax)])
        conv.CopyFrom(fused)
        dropped.update((n.op_type, n.output[0]) for n in absorbed)
    kept = [n for n in graph.node if (n.op_type, n.output[0]) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)


def _scalar_quantizer(n: onnx.NodeProto | None, op_type: str, constants: dict[str, onnx.TensorProto]) -> bool:
    """Whether ``n`` is a standard QuantizeLinear / DequantizeLinear (``op_type``) of one constant float32
    step and an 8-bit constant zero point."""

    def scalar(name: str, types: tuple[int, ...]) -> bool:
        t = constants.get(name)
        return t is not None and not t.dims and t.data_type in types

    return (n is not None and n.op_type == op_type and not n.domain and len(n.input) == 3
            and scalar(n.input[1], (onnx.TensorProto.FLOAT,)) and scalar(n.input[2], tuple(_CODE_RANGE))
            and all(a.name in ("axis", "saturate", "block_size") for a in n.attribute))  # fmt: skip


def _requantized_codes(graph: onnx.GraphProto, keep: set[str], codes: dict[str, str], offsets: dict[str, int]) -> None:
    """DequantizeLinear [-> Relu] -> QuantizeLinear [-> Clip], all of constant scalar steps and 8-bit
    zero points, becomes one Requantize node from codes to codes (a residual add's output, read by the
    next conv's quantizer and the next add's): its native kernel looks each code up in a 256-entry
    table instead of three or four passes over a float tensor.  The DequantizeLinear and Relu stay only
    while something else reads them (``_live`` drops them otherwise).

    int8 codes that only DequantizeLinear / Requantize nodes read (the add's output quantizer, or a new
    Requantize's output) are written as uint8 + 128, as in ``_requantized_convs``: onnxruntime fuses
    QLinearAdd only with one type in and out, and no longer sees the QuantizeLinear -> DequantizeLinear
    pair it would have turned into uint8 itself."""
    paths = {name: path for path, name in codes.items()}
    constants = {t.name: t for t in graph.initializer}
    readers = _readers(graph)

    dropped: set[str] = set()  # outputs of the absorbed Clips
    formed: list[onnx.NodeProto] = []
    for dq in list(graph.node):
        if not _scalar_quantizer(dq, "DequantizeLinear", constants) or dq.output[0] in keep:
            continue
        quants = [(0, q) for q in readers.get(dq.output[0], [])]
        for relu in readers.get(dq.output[0], []):
            if relu.op_type == "Relu" and not relu.domain and relu.output[0] not in keep:
                quants += [(1, q) for q in readers.get(relu.output[0], [])]
        targets = [(r, q) for r, q in quants if _scalar_quantizer(q, "QuantizeLinear", constants)]
        for with_relu, quant in targets:
            zero = constants[quant.input[2]]
            qmin, qmax, clip = _code_clip(quant, zero, readers, constants, keep)
            out = quant.output[0]
            if clip is not None:
                dropped.add(out)
                out = clip.output[0]
            zero_point, qmin, qmax = _written_codes(graph, constants, readers, out, quant, qmin, qmax, paths, offsets)
            node = onnx.helper.make_node("Requantize", [*dq.input, quant.input[1], zero_point], [out], name=quant.name,
                                         domain=DOMAIN, relu=with_relu, qmin=qmin, qmax=qmax)  # fmt: skip
            quant.CopyFrom(node)
            formed.append(quant)
    kept = [n for n in graph.node if not (n.op_type == "Clip" and n.input[0] in dropped)]
    del graph.node[:]
    graph.node.extend(kept)
    _requantize_from_uint8(graph, constants, formed, paths, offsets)


def _requantized_sums(graph: onnx.GraphProto, keep: set[str], codes: dict[str, str], offsets: dict[str, int]) -> None:
    """DequantizeLinear, DequantizeLinear -> Sum -> QuantizeLinear [-> Clip], all of constant scalar
    steps and 8-bit zero points (an exact residual add, ``_exact_adds``), becomes one AddRequant node:
    codes in, the sum's codes out, the same float operations in one pass.  Only where the sum has that
    one reader and is not kept; a DequantizeLinear that something else reads too (MobileNetV2: the
    previous sum, read by the next block's ASQ quantizer as well) stays for it.  int8 output codes
    that only DequantizeLinear nodes read are written as uint8 + 128, as in ``_requantized_convs``."""
    paths = {name: path for path, name in codes.items()}
    constants = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    readers = _readers(graph)

    def only_reader(value: str, node: onnx.NodeProto) -> bool:
        users = readers.get(value, [])
        return value not in keep and len(users) == 1 and users[0].output[0] == node.output[0]

    dropped: set[tuple[str, str]] = set()  # (op type, output) of the absorbed nodes
    for total in graph.node:
        if total.op_type != "Sum" or total.domain or len(total.input) != 2 or total.input[0] == total.input[1]:
            continue
        dqs = [producers.get(i) for i in total.input]
        if not all(_scalar_quantizer(dq, "DequantizeLinear", constants) for dq in dqs):
            continue
        users = readers.get(total.output[0], [])
        quant = users[0] if len(users) == 1 else None
        if not _scalar_quantizer(quant, "QuantizeLinear", constants) or total.output[0] in keep:
            continue
        assert quant is not None
        zero = constants[quant.input[2]]
        qmin, qmax, clip = _code_clip(quant, zero, readers, constants, keep)
        sole = [dq for dq in dqs if only_reader(dq.output[0], total)]  # type: ignore[union-attr]
        out, absorbed = (clip.output[0], [*sole, quant, clip]) if clip else (quant.output[0], [*sole, quant])
        zero_point, qmin, qmax = _written_codes(graph, constants, readers, out, quant, qmin, qmax, paths, offsets)
        inputs = [*dqs[0].input, *dqs[1].input, quant.input[1], zero_point]  # type: ignore[union-attr]
        # (the dequantized output left out: _dequantized_sums may give it a reader; onnx's checker wants
        # the slot listed, empty, where a function has more outputs than the node uses)
        # relu written though 0 is its default: onnx's reference evaluator does not apply function
        # attribute defaults
        fused = onnx.helper.make_node("AddRequant", inputs, [out, ""], name=total.name, domain=DOMAIN, qmin=qmin,
                                      qmax=qmax, relu=0)  # fmt: skip
        dropped.update((n.op_type, n.output[0]) for n in absorbed)  # type: ignore[union-attr]
        total.CopyFrom(fused)
    kept = [n for n in graph.node if (n.op_type, n.output[0]) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)


def _dequantized_sums(graph: onnx.GraphProto, keep: set[str]) -> None:
    """A DequantizeLinear of an AddRequant's codes, with the add's own step and zero point [-> Relu],
    becomes the AddRequant's output ``y`` (``relu=1`` with the Relu): the float sum a ResNet block's
    next ASQ quantizer reads, written in the add's own pass instead of one or two more passes over a
    float tensor.  Relu(DequantizeLinear(c)) is DequantizeLinear(max(c, zero point)) exactly, which is
    what the kernel writes.  Only where qexport ops read the float sum (an ASQ quantizer); one such
    reader per add (the node has one such output); any others stay, and so does every value in
    ``keep``."""
    readers = _readers(graph)
    dropped: set[str] = set()  # outputs of the absorbed nodes
    for add in graph.node:
        if add.op_type != "AddRequant" or add.domain != DOMAIN or (len(add.output) > 1 and add.output[1]):
            continue
        for dq in readers.get(add.output[0], []):
            if (dq.op_type != "DequantizeLinear" or dq.domain or list(dq.input) != [add.output[0], *add.input[6:8]]
                    or dq.attribute or dq.output[0] in keep):  # fmt: skip
                continue
            users = readers.get(dq.output[0], [])
            relu = users[0] if len(users) == 1 and users[0].op_type == "Relu" and not users[0].domain else None
            if relu is not None and relu.output[0] in keep:
                relu = None
            # only for qexport readers (an ASQ quantizer): a standard reader may be a QDQ pattern that
            # onnxruntime fuses with the DequantizeLinear (DequantizeLinear -> Conv into QLinearConv)
            final = readers.get((relu or dq).output[0], [])
            if not final or not all(n.domain == DOMAIN for n in final):
                continue
            del add.output[1:]
            add.output.append(relu.output[0] if relu is not None else dq.output[0])
            kept_attrs = [a for a in add.attribute if a.name != "relu"]
            del add.attribute[:]
            add.attribute.extend([*kept_attrs, onnx.helper.make_attribute("relu", int(relu is not None))])
            dropped.add(dq.output[0])
            if relu is not None:
                dropped.add(relu.output[0])
            break
    absorbed = ("DequantizeLinear", "Relu")
    kept = [n for n in graph.node if not (n.output and n.output[0] in dropped and n.op_type in absorbed)]
    del graph.node[:]
    graph.node.extend(kept)


def _written_codes(graph: onnx.GraphProto, constants: dict[str, onnx.TensorProto],
                   readers: dict[str, list[onnx.NodeProto]], out: str, quant: onnx.NodeProto, qmin: int, qmax: int,
                   paths: dict[str, str], offsets: dict[str, int]) -> tuple[str, int, int]:  # fmt: skip
    """The zero point and code range a node fused from QuantizeLinear ``quant`` writes ``out`` with:
    int8 codes that only DequantizeLinear nodes read as uint8 + 128 (``_as_uint8``), else as quantized."""
    zero = constants[quant.input[2]]
    later = readers.get(out, [])
    dequantized = [n for n in later if n.op_type == "DequantizeLinear"]
    if zero.data_type == onnx.TensorProto.INT8 and dequantized:
        shifted = _as_uint8(graph, constants, out, zero, dequantized, later, paths, offsets)
        if shifted is not None:
            return shifted, qmin + 128, qmax + 128
    return quant.input[2], qmin, qmax


def _requantize_from_uint8(graph: onnx.GraphProto, constants: dict[str, onnx.TensorProto], formed: list[onnx.NodeProto],
                           paths: dict[str, str], offsets: dict[str, int]) -> None:  # fmt: skip
    """int8 codes of a QuantizeLinear that only DequantizeLinear / Requantize nodes (one of the
    ``formed`` at least) read, with its zero point, become uint8 + 128 there and in those readers."""
    readers = _readers(graph)
    producers = {o: n for n in graph.node for o in n.output}
    for codes in {n.input[0] for n in formed}:
        quant = producers.get(codes)
        if quant is None or quant.op_type != "QuantizeLinear" or quant.domain or codes not in paths:
            continue
        zero = constants.get(quant.input[2])
        users = readers.get(codes, [])
        if zero is None or zero.data_type != onnx.TensorProto.INT8 or zero.dims:
            continue
        if any(u.op_type not in ("DequantizeLinear", "Requantize") or len(u.input) < 3 or u.input[0] != codes
               or u.input[2] != zero.name for u in users):  # fmt: skip
            continue
        name = _uint8_zero_point(graph, constants, zero)
        for n in [quant, *users]:
            n.input[2] = name
        offsets[paths[codes]] = offsets.get(paths[codes], 0) + 128


def _uint8_zero_point(graph: onnx.GraphProto, constants: dict[str, onnx.TensorProto], zero: onnx.TensorProto) -> str:
    """The name of the uint8 constant (the int8 one + 128) for int8 scalar ``zero`` (a zero point, or a
    Clip bound of such codes), made once (added to ``constants`` and the graph)."""
    name = f"{zero.name}.uint8"
    if name not in constants:
        value = np.array(int(onnx.numpy_helper.to_array(zero)) + 128, np.uint8)
        constants[name] = onnx.numpy_helper.from_array(value, name)
        graph.initializer.append(constants[name])
    return name


def _as_uint8(graph: onnx.GraphProto, constants: dict[str, onnx.TensorProto], codes: str, zero: onnx.TensorProto,
              dequantized: list[onnx.NodeProto], readers: list[onnx.NodeProto], paths: dict[str, str],
              offsets: dict[str, int]) -> str | None:  # fmt: skip
    """The uint8 zero point (int8 one + 128) of int8 ``codes`` that only DequantizeLinear nodes with that
    zero point read, now given to them; None (nothing changed) otherwise.  ``constants``: the graph's
    initializers by name, the new one added."""
    if len(dequantized) != len(readers) or codes not in paths:
        return None
    if any(len(n.input) != 3 or n.input[2] != zero.name for n in dequantized):
        return None
    name = _uint8_zero_point(graph, constants, zero)
    for n in dequantized:
        n.input[2] = name
    offsets[paths[codes]] = offsets.get(paths[codes], 0) + 128
    return name


def _live(graph: onnx.GraphProto, keep: set[str]) -> None:
    live, needed = [], set(keep)
    for node in reversed(graph.node):
        if any(o and o in needed for o in node.output):
            live.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(live[::-1])
    used = {i for n in graph.node for i in n.input} | keep
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        node.output[:] = [new if o == old else o for o in node.output]
    for value in (*graph.input, *graph.output):
        if value.name == old:
            value.name = new


def _output_names(gm: fx.GraphModule, count: int) -> list[str]:
    """'output' for one output; else the user's names: the keys of a dict / ModelOutput
    ('logits', 'hidden_states.0'), 'output_i' for tuple positions."""
    if count == 1:
        return ["output"]
    info = getattr(gm.graph._codegen, "pytree_info", None)
    names = [f"output_{i}" for i in range(count)]
    if info is not None and info.out_spec is not None and info.out_spec.num_leaves == count:
        paths = pytree.tree_flatten_with_path(pytree.tree_unflatten(list(range(count)), info.out_spec))[0]
        keyed = [re.sub(r"[^A-Za-z0-9_.]+", "", pytree.keystr(path).replace("][", ".")) for path, _ in paths]
        keyed = [k.replace("'", "").strip(".") or f"output_{i}" for i, k in enumerate(keyed)]
        keyed = [k if not k[0].isdigit() else f"output_{k}" for k in keyed]
        if len(set(keyed)) == count:
            names = keyed
    return names


def _name_axes(graph: onnx.GraphProto) -> None:
    """torch.onnx's symbolic sizes (s0, s35 ...) named as users read them: 'batch' for dimension 0 of
    the inputs, 'sequence' for dimension 1 of sequence inputs; outputs share the names."""
    names: dict[str, str] = {}
    for value in graph.input:
        t = value.type.tensor_type
        dims = t.shape.dim
        if dims and dims[0].dim_param:
            names.setdefault(dims[0].dim_param, "batch")
        if 2 <= len(dims) <= 3 and dims[1].dim_param:
            names.setdefault(dims[1].dim_param, "sequence")
    for value in (*graph.input, *graph.output):
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in names:
                d.dim_param = names[d.dim_param]


def to_onnx(model: nn.Module, args: tuple[torch.Tensor, ...], opset: int = 21, packed: bool = True,
            adds: str = "auto", dynamic: bool = True) -> tuple[onnx.ModelProto, Emitter]:  # fmt: skip
    """The ONNX model of quantized ``model`` (an fx GraphModule, eval mode) on inputs like ``args``
    (dimension 0 of every input is the dynamic batch)."""
    from ..quant.placement import trace

    gm = model if isinstance(model, fx.GraphModule) else trace(model)
    gm.eval()
    batch = EXAMPLE_BATCH
    args = tuple(a[:1].expand(batch, *a.shape[1:]).contiguous() if a.dim() else a for a in args)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*args)
    except Exception as exc:  # ShapeProp wraps the model's own error
        cause = exc.__cause__ or exc
        if isinstance(cause, QexportError):
            raise cause from None
        shapes = [list(a.shape) for a in args]
        raise QexportError(
            f"the model fails on inputs of shape {shapes} ({type(cause).__name__}: {cause}); pass inputs it takes"
        ) from None
    e = Emitter(gm, packed=packed, opset=opset, adds=adds)
    plan = _plan(gm, e)
    lowered = _lowering_graph(gm, plan)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    names = ["input"] if len(placeholders) == 1 else [str(p.target) for p in placeholders]
    with _active(plan.units), torch.no_grad():
        proto = _torch_onnx(copy.copy(lowered), args, names, opset, dynamic)
    _splice(proto, e, plan)
    graph = proto.graph
    for value, name in zip(list(graph.output), _output_names(gm, len(graph.output)), strict=True):
        _rename_value(graph, value.name, name)
    if e.exact_adds:
        _exact_adds(graph)
    _transpose_codes(graph)
    _name_axes(graph)
    keep = {o.name for o in graph.output} | set(e.b.codes.values()) | set(e.b.steps.values())
    _live(graph, keep)  # first: the readers the next pass counts are live ones
    _pooled_codes(graph, keep)
    _conv_per_quantizer(graph, keep, e.b.codes, e.b.code_offsets)
    _requantized_convs(graph, keep, e.b.codes, e.b.code_offsets)
    _requantized_codes(graph, keep, e.b.codes, e.b.code_offsets)
    _requantized_sums(graph, keep, e.b.codes, e.b.code_offsets)
    _dequantized_sums(graph, keep)
    _live(graph, keep)
    used = {n.op_type for n in graph.node if n.domain == DOMAIN}
    opsets = {o.domain: o.version for o in proto.opset_import if o.domain != LOWER_DOMAIN}
    opsets[DOMAIN] = VERSION
    del proto.opset_import[:]
    proto.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
    del proto.functions[:]
    proto.functions.extend(functions_for(used, opset))
    proto.producer_name = "qexport"
    proto.ir_version = min(proto.ir_version, 11 if opset >= 25 else 10)
    graph.name = type(gm).__name__
    _shapes(proto)
    return proto, e


def _shapes(proto: onnx.ModelProto) -> None:
    """Every intermediate tensor's type and shape as value_info, the qexport ops' outputs included
    (inferred through their function bodies).  onnxruntime knows no shape past a custom op, and its
    NHWC transformer leaves a QLinearConv whose input rank is unknown channels-first: without these,
    every QLinearConv after the first qexport op ran NCHW (MobileNetV2 LSQ: 40 of 45), each with its
    own layout copies."""
    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(v for v in inferred.graph.value_info if v.type.tensor_type.HasField("shape"))


__all__ = ["to_onnx"]
