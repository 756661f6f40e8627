"""PyTorch (a quantized fx GraphModule) -> ONNX, written node by node from the traced graph.

Writing the graph directly (rather than through torch.onnx) gives full control of what the
deployed graph holds: BatchNorm folded into per-channel weight scales, integer weight initializers,
int32 biases, constant scales, QDQ where the fake-quant model quantizes, nothing else.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import QexportError
from ..quant.base import Quantizer, QuantSpec
from ..quant.fold import bn_factors, deployed_conv
from ..quant.layers import QuantConv2d, QuantLinear
from ..quant.placement import trace
from .builder import GraphBuilder
from .fold import find_bn_folds

Handler = Callable[["Emitter", fx.Node], str]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


class Emitter:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.b = GraphBuilder()
        self.env: dict[fx.Node, Any] = {}
        self.folds = find_bn_folds(gm)  # conv node -> (BatchNorm node, module) it absorbs
        self.folded_bn = {bn_node for bn_node, _ in self.folds.values()}
        self.layers: list[dict[str, Any]] = []

    # -- helpers -------------------------------------------------------------------------------
    def module(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(str(node.target))

    def arg(self, a: Any) -> Any:
        return self.env[a] if isinstance(a, fx.Node) else a

    def unsupported(self, node: fx.Node, what: str) -> QexportError:
        where = str(node.target) if node.op == "call_module" else node.name
        return QexportError(
            f"cannot export {what} at '{where}': qexport's exporter does not express it yet; "
            "replace it with a supported layer or leave it out of the model"
        )

    def ints(self, hint: str, values: list[int]) -> str:
        return self.b.const(hint, np.asarray(values, np.int64))

    # -- quantized layers ----------------------------------------------------------------------
    @staticmethod
    def uniform_spec(q: Quantizer) -> QuantSpec:
        """The quantizer's description; a clear error for the kinds whose custom operators are not built."""
        spec = q.describe()
        if spec.kind != "uniform":
            raise QexportError(
                f"cannot export the {spec.method.upper()} quantizer at '{q.name()}' yet: its custom operator "
                "(ASQ step / POST conv) is not built; only LSQ / NIPQ quantizers export today"
            )
        return spec

    def quantized_input(self, layer: QuantConv2d | QuantLinear, x: str, path: str) -> str:
        """The layer's input after its activation quantizer."""
        if layer.act_quant is None:
            return x
        return self.b.qdq(x, self.uniform_spec(layer.act_quant), f"{path}.act_quant")

    def weight_codes(self, layer: QuantConv2d | QuantLinear) -> tuple[np.ndarray, np.ndarray] | None:
        """(integer weight codes, per-output-channel float32 scale) or None for a float weight."""
        q = layer.weight_quant
        if q is None:
            return None
        spec = self.uniform_spec(q)
        codes = _np(q.codes(layer.weight.detach())).astype(np.int64)
        scale = _np(spec.scale).astype(np.float32).reshape(-1)
        if scale.size == 1:
            scale = np.full(codes.shape[0], scale[0], np.float32)
        return codes, scale

    def record(self, path: str, layer: nn.Module, kind: str) -> None:
        entry: dict[str, Any] = {"path": path, "type": kind}
        for side in ("weight", "act"):
            q = getattr(layer, f"{side}_quant", None)
            if q is not None:
                entry[side] = {"method": q.method, "bits": q.code_range.bits, "signed": q.code_range.signed}
        self.layers.append(entry)

    def conv(self, node: fx.Node) -> str:
        layer = self.module(node)
        path = str(node.target)
        assert isinstance(layer, nn.Conv2d)
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise self.unsupported(node, f"Conv2d with padding={layer.padding!r} mode={layer.padding_mode!r}")
        x = self.arg(node.args[0])
        bn = self.folds[node][1] if node in self.folds else None
        if isinstance(layer, QuantConv2d):
            self.record(path, layer, "Conv")
            x = self.quantized_input(layer, x, path)
        if isinstance(layer, QuantConv2d) and layer.is_uniform():
            dep = layer.deployed()  # the same numbers the eval forward uses
            inputs = [x, self.b.dq_weight(dep.codes, dep.weight_scale, 0, path)]
            if dep.bias_codes is not None:
                inputs.append(self.b.dq_bias(dep.bias_codes, dep.bias_scale, path))
        else:  # float weights, or quantized weights with a float input: float bias, BN folded
            k, shift = bn_factors(bn, layer.out_channels)
            wq = self.weight_codes(layer) if isinstance(layer, QuantConv2d) else None
            if wq is not None:
                dep = deployed_conv(wq[0], wq[1], np.float32(1.0), None, bn)
                inputs = [x, self.b.dq_weight(dep.codes, dep.weight_scale, 0, path)]
            else:
                w = _np(layer.weight).astype(np.float64) * k.reshape(-1, 1, 1, 1)
                inputs = [x, self.b.const(f"{path}.weight", w.astype(np.float32))]
            if layer.bias is not None or bn is not None:
                bias = (0.0 if layer.bias is None else _np(layer.bias).astype(np.float64)) * k + shift
                inputs.append(self.b.const(f"{path}.bias", np.asarray(bias, np.float32)))
        ph, pw = layer.padding
        return self.b.node(
            "Conv", inputs, path, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
            pads=[ph, pw, ph, pw], dilations=list(layer.dilation), group=layer.groups,
        )  # fmt: skip

    def linear(self, node: fx.Node) -> str:
        layer = self.module(node)
        path = str(node.target)
        assert isinstance(layer, nn.Linear)
        x = self.arg(node.args[0])
        if isinstance(layer, QuantLinear):
            x = self.quantized_input(layer, x, path)
            wq = self.weight_codes(layer)
            self.record(path, layer, "MatMul")
        else:
            wq = None
        if wq is not None:
            codes, scale = wq
            w = self.b.dq_weight(codes.T.copy(), scale, 1, path)  # [in, out], per output column
        else:
            w = self.b.const(f"{path}.weight", _np(layer.weight).T.astype(np.float32).copy())
        y = self.b.node("MatMul", [x, w], f"{path}.matmul")
        if layer.bias is None:
            return y
        return self.b.node("Add", [y, self.b.const(f"{path}.bias", _np(layer.bias).astype(np.float32))], path)

    def glue(self, node: fx.Node) -> str:
        q = self.module(node)
        assert isinstance(q, Quantizer)
        return self.b.qdq(self.arg(node.args[0]), self.uniform_spec(q), str(node.target))

    def batchnorm(self, node: fx.Node) -> str:
        if node in self.folded_bn:
            return self.arg(node.args[0])
        bn = self.module(node)
        assert isinstance(bn, nn.BatchNorm2d)
        path = str(node.target)
        params = [
            self.b.const(f"{path}.{n}", _np(t).astype(np.float32))
            for n, t in (("scale", bn.weight), ("bias", bn.bias), ("mean", bn.running_mean), ("var", bn.running_var))
        ]
        return self.b.node("BatchNormalization", [self.arg(node.args[0]), *params], path, epsilon=bn.eps)


# -- standard operators -----------------------------------------------------------------------
def _unary(op: str, **attrs: object) -> Handler:
    return lambda e, n: e.b.node(op, [e.arg(n.args[0])], n.name, **attrs)


def _identity(e: Emitter, n: fx.Node) -> str:
    return e.arg(n.args[0])


def _binary(op: str) -> Handler:
    def emit(e: Emitter, n: fx.Node) -> str:
        a, b = (e.arg(v) for v in n.args[:2])
        if not isinstance(a, str) or not isinstance(b, str):
            scalar = b if isinstance(a, str) else a
            const = e.b.const(f"{n.name}.const", np.asarray(scalar, np.float32))
            a, b = (a, const) if isinstance(a, str) else (const, b)
        return e.b.node(op, [a, b], n.name)

    return emit


def _relu6(e: Emitter, n: fx.Node) -> str:
    lo = e.b.const(f"{n.name}.min", np.asarray(0.0, np.float32))
    hi = e.b.const(f"{n.name}.max", np.asarray(6.0, np.float32))
    return e.b.node("Clip", [e.arg(n.args[0]), lo, hi], n.name)


def _pool(e: Emitter, n: fx.Node) -> str:
    m = e.module(n)
    k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size, m.kernel_size)
    s = m.stride if isinstance(m.stride, tuple) else (m.stride, m.stride)
    p = m.padding if isinstance(m.padding, tuple) else (m.padding, m.padding)
    if getattr(m, "dilation", 1) not in (1, (1, 1)) or getattr(m, "ceil_mode", False):
        raise e.unsupported(n, f"{type(m).__name__} with dilation or ceil_mode")
    op = "MaxPool" if isinstance(m, nn.MaxPool2d) else "AveragePool"
    extra = {} if op == "MaxPool" else {"count_include_pad": int(m.count_include_pad)}
    return e.b.node(
        op, [e.arg(n.args[0])], n.name, kernel_shape=list(k), strides=list(s), pads=[p[0], p[1], p[0], p[1]], **extra
    )


def _adaptive_pool(e: Emitter, n: fx.Node) -> str:
    m = e.module(n)
    if m.output_size not in (1, (1, 1)):
        raise e.unsupported(n, f"AdaptiveAvgPool2d({m.output_size})")
    return e.b.node("GlobalAveragePool", [e.arg(n.args[0])], n.name)


def _flatten(e: Emitter, n: fx.Node) -> str:
    if n.op == "call_module":
        start, end = e.module(n).start_dim, e.module(n).end_dim
    else:
        start = n.kwargs.get("start_dim", n.args[1] if len(n.args) > 1 else 0)
        end = n.kwargs.get("end_dim", n.args[2] if len(n.args) > 2 else -1)
    if end != -1 or start < 1:
        raise e.unsupported(n, f"flatten({start}, {end})")
    shape = e.ints(f"{n.name}.shape", [0] * start + [-1])
    return e.b.node("Reshape", [e.arg(n.args[0]), shape], n.name)


def _cat(e: Emitter, n: fx.Node) -> str:
    dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)
    return e.b.node("Concat", [e.arg(a) for a in n.args[0]], n.name, axis=dim)


def _mean(e: Emitter, n: fx.Node) -> str:
    dims = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
    keep = int(n.kwargs.get("keepdim", n.args[2] if len(n.args) > 2 else False))
    if dims is None:
        raise e.unsupported(n, "mean over all dimensions")
    dims = [dims] if isinstance(dims, int) else list(dims)
    return e.b.node("ReduceMean", [e.arg(n.args[0]), e.ints(f"{n.name}.axes", dims)], n.name, keepdims=keep)


MODULE_HANDLERS: list[tuple[type[nn.Module], Handler]] = [
    (nn.Conv2d, Emitter.conv),
    (nn.Linear, Emitter.linear),
    (Quantizer, Emitter.glue),
    (nn.BatchNorm2d, Emitter.batchnorm),
    (nn.ReLU, _unary("Relu")),
    (nn.ReLU6, _relu6),
    (nn.MaxPool2d, _pool),
    (nn.AvgPool2d, _pool),
    (nn.AdaptiveAvgPool2d, _adaptive_pool),
    (nn.Flatten, _flatten),
    (nn.Dropout, _identity),
    (nn.Identity, _identity),
    (nn.Sigmoid, _unary("Sigmoid")),
]
FUNCTION_HANDLERS: dict[Any, Handler] = {
    operator.add: _binary("Add"), operator.iadd: _binary("Add"), torch.add: _binary("Add"),
    operator.mul: _binary("Mul"), torch.mul: _binary("Mul"), operator.sub: _binary("Sub"),
    operator.truediv: _binary("Div"), torch.relu: _unary("Relu"), F.relu: _unary("Relu"), F.relu6: _relu6,
    torch.flatten: _flatten, torch.cat: _cat, torch.concat: _cat, torch.mean: _mean, torch.sigmoid: _unary("Sigmoid"),
    F.dropout: _identity,
}  # fmt: skip
METHOD_HANDLERS: dict[str, Handler] = {
    "flatten": _flatten, "relu": _unary("Relu"), "mean": _mean, "add": _binary("Add"), "mul": _binary("Mul"),
    "contiguous": _identity, "sigmoid": _unary("Sigmoid"),
}  # fmt: skip


def emit_node(e: Emitter, node: fx.Node) -> str:
    if node.op == "call_module":
        mod = e.module(node)
        for cls, handler in MODULE_HANDLERS:
            if isinstance(mod, cls):
                return handler(e, node)
        raise e.unsupported(node, f"module {type(mod).__name__}")
    if node.op == "call_function":
        handler = FUNCTION_HANDLERS.get(node.target)
        if handler is None:
            raise e.unsupported(node, f"function {getattr(node.target, '__name__', node.target)}")
        return handler(e, node)
    if node.op == "call_method":
        handler = METHOD_HANDLERS.get(str(node.target))
        if handler is None:
            raise e.unsupported(node, f"tensor method .{node.target}()")
        return handler(e, node)
    raise e.unsupported(node, f"graph node kind {node.op}")


def to_onnx(model: nn.Module, input_shape: list[int], opset: int = 21) -> tuple[onnx.ModelProto, Emitter]:
    """The ONNX model of ``model`` (eval mode) with a dynamic batch dimension."""
    gm = model if isinstance(model, fx.GraphModule) else trace(model)
    e = Emitter(gm)
    inputs, outputs = [], []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if inputs:
                raise e.unsupported(node, "a second model input")
            e.env[node] = "input"
            inputs.append(
                onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", *input_shape[1:]])
            )
        elif node.op == "output":
            result = node.args[0]
            if not isinstance(result, fx.Node):
                raise e.unsupported(node, "a model output that is not one tensor")
            out = e.b.node("Identity", [e.env[result]], "output")
            with torch.no_grad():
                out_shape = list(gm(torch.zeros(input_shape)).shape)
            outputs.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, ["batch", *out_shape[1:]]))
        elif node.op == "get_attr":
            raise e.unsupported(node, "a parameter used directly in forward()")
        else:
            e.env[node] = emit_node(e, node)
    graph = onnx.helper.make_graph(e.b.nodes, gm.__class__.__name__, inputs, outputs, e.b.initializers)
    model_proto = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", opset)], producer_name="qexport"
    )
    model_proto.ir_version = min(model_proto.ir_version, 10)
    return model_proto, e


__all__ = ["Emitter", "to_onnx"]
