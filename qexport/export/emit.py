"""The quantized units of a model in ONNX: what a QuantConv2d (with the BatchNorm it folds and the
ReLU an IntConv applies), a QuantLinear or a glue quantizer becomes -- QDQ shaped for onnxruntime's
integer fusions, IntConv / PostConv / PostMatMul / AsqQuantize, integer (packed) weights, int32 or
float biases, BatchNorm folded.  Everything else is written by torch.onnx (lower.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import QexportError
from ..ops import DOMAIN, post_weights
from ..quant.asq import AsqAdapter
from ..quant.base import Quantizer
from ..quant.fold import DeployedPost, bn_factors, deployed_conv, deployed_post
from ..quant.layers import QuantConv2d, QuantLinear
from .builder import STORAGE, GraphBuilder, QTensor
from .fold import find_bn_folds

Handler = Callable[["Emitter", fx.Node], str]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


class _Batch:
    def __repr__(self) -> str:
        return "batch"


BATCH = _Batch()  # the dynamic batch dimension where forward() reads a shape
# how quantized residual adds are exported: "fused" lets onnxruntime fuse them into QLinearAdd,
# "exact" keeps dequantize -> add -> quantize (as Sum), "auto" is exact only in models with ASQ steps
ADDS = ("auto", "exact", "fused")
MAX_EXACT = 2**24  # float32 holds every integer below this: the POST function bodies stay exact


class Emitter:
    def __init__(self, gm: fx.GraphModule, *, packed: bool = True, opset: int = 21, adds: str = "auto") -> None:
        self.gm = gm
        self.b = GraphBuilder()
        self.env: dict[fx.Node, Any] = {}
        self.folds = find_bn_folds(gm)  # conv node -> (BatchNorm node, module) it absorbs
        self.folded_bn = {bn_node for bn_node, _ in self.folds.values()}
        self.relu6: set[str] = set()  # tensors that are relu(v) standing for relu6(v): their quantizers clip
        self.layers: list[dict[str, Any]] = []
        self.packed = packed
        self.opset = opset
        if adds not in ADDS:
            raise QexportError(f"adds={adds!r} is not one of {', '.join(ADDS)}")
        # per-sample steps (ASQ) make every code upstream matter: see _add
        dynamic_steps = any(isinstance(m, Quantizer) and m.kind == "asq" for m in gm.modules())
        self.exact_adds = adds == "exact" or (adds == "auto" and dynamic_steps)

    # -- helpers -------------------------------------------------------------------------------
    def module(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(str(node.target))

    def arg(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self.arg(v) for v in a)
        if isinstance(a, slice):
            return slice(self.arg(a.start), self.arg(a.stop), self.arg(a.step))
        return a

    def tensor(self, value: Any, hint: str) -> str:
        """The graph name of ``value``: a tensor already in the graph, or a constant made an initializer."""
        if isinstance(value, str):
            return value
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        return self.b.const(hint, array)

    def unsupported(self, node: fx.Node, what: str) -> QexportError:
        where = str(node.target) if node.op == "call_module" else node.name
        return QexportError(
            f"cannot export {what} at '{where}': qexport's exporter does not express it yet; "
            "replace it with a supported layer or leave it out of the model"
        )

    def ints(self, hint: str, values: list[int]) -> str:
        return self.b.const(hint, np.asarray(values, np.int64))

    def storage(self, codes: np.ndarray) -> str:
        """How integer weight codes are stored: with ``packed``, the narrowest type that holds them
        in this opset (int4 from 21, int2 from 25), else int8.  (POT's 4-bit codes are up to ±64.)"""
        lo, hi = (int(codes.min()), int(codes.max())) if codes.size else (0, 0)
        for kind in ("int2", "int4"):
            _, qmin, qmax, opset = STORAGE[kind]
            if self.packed and self.opset >= opset and qmin <= lo and hi <= qmax:
                return kind
        return "int8" if -128 <= lo and hi <= 127 else "int16"

    # -- quantized activations -----------------------------------------------------------------
    def activation(self, q: Quantizer, x: str, path: str, codes_used: bool = False, uint8: bool = False) -> QTensor:
        """The quantized tensor of activation quantizer ``q`` applied to ``x``; ``codes_used``: its
        codes feed a qexport op or MatMulInteger (zero point 0), not only DequantizeLinear; ``uint8``:
        they feed MatMulInteger, signed ones stored as uint8 + 128 (its fast path; the zero point is
        ``QTensor.zero_point``)."""
        spec = q.describe()
        if spec.kind == "uniform":
            return self.b.qdq(x, spec, path, upper=6.0 if x in self.relu6 else None, offset=not codes_used,
                              uint8=uint8)  # fmt: skip
        if spec.kind != "asq":
            raise QexportError(f"'{path}' quantizes an activation with {spec.method.upper()} weight levels")
        adapter = spec.adapter
        assert isinstance(adapter, AsqAdapter)
        if adapter.fc1 is None:  # one layer: relu(relu(z) * 1 + 0) is relu(z), exactly
            w1, b1 = _np(adapter.fc2.weight).T, _np(adapter.fc2.bias)
            w2, b2 = np.ones((1, 1), np.float32), np.zeros(1, np.float32)
        else:
            w1, b1 = _np(adapter.fc1.weight).T, _np(adapter.fc1.bias)
            w2, b2 = _np(adapter.fc2.weight).T, _np(adapter.fc2.bias)
        shift = 128 if uint8 and spec.signed and not adapter.pool else 0  # AsqQuantizeRows only
        if shift:
            self.b.code_offsets[path] = shift
        params = [
            self.b.const(f"{path}.step", spec.scale.numpy().astype(np.float32).reshape(())),
            self.b.const(f"{path}.zero_point", np.array(shift, np.int8 if spec.signed and not shift else np.uint8)),
            *(self.b.const(f"{path}.adapter.{n}", np.ascontiguousarray(v, np.float32))
              for n, v in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))),
        ]  # fmt: skip
        op = "AsqQuantize" if adapter.pool else "AsqQuantizeRows"
        value, codes, step = self.b.node_outputs(
            op, [x, *params], path, 3, domain=DOMAIN, qmin=spec.qmin, qmax=spec.qmax
        )
        if codes_used:  # nothing reads the dequantized value: leave the optional output out
            self.b.nodes[-1].output[0] = value = ""
        self.b.codes[path], self.b.steps[path] = codes, step
        return QTensor(value, codes, step, params[1] if shift else None)

    def layer_input(self, layer: QuantConv2d | QuantLinear, x: str, path: str, codes_used: bool,
                    uint8: bool = False) -> QTensor | None:  # fmt: skip
        if layer.act_quant is None:
            return None
        return self.activation(layer.act_quant, x, f"{path}.act_quant", codes_used, uint8)

    def record(self, path: str, layer: nn.Module, kind: str, storage: str) -> None:
        entry: dict[str, Any] = {"path": path, "type": kind, "weight_storage": storage}
        for side in ("weight", "act"):
            q = getattr(layer, f"{side}_quant", None)
            if q is not None:
                entry[side] = {"method": q.method, "bits": q.code_range.bits, "signed": q.code_range.signed}
        self.layers.append(entry)

    @staticmethod
    def weight_form(layer: nn.Module) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, bool]:
        """(integer weight codes and scale, or None; whether the weights are on sqrt-2 levels, which
        have no integer form and make the layer a qexport PostConv / PostMatMul)."""
        q = getattr(layer, "weight_quant", None)
        if not isinstance(layer, (QuantConv2d, QuantLinear)) or q is None:
            return None, False
        form = layer.integer_weight()
        return form, form is None

    def post_operands(self, layer: QuantConv2d | QuantLinear, xq: QTensor | None, path: str, dep: DeployedPost,
                      transpose: bool) -> list[str]:  # fmt: skip
        """Inputs of a PostConv / PostMatMul: codes, step, uint4 weight codes, per-channel scale, bias."""
        if xq is None or layer.act_quant is None:
            raise QexportError(f"'{path}' has POST weights but a float input: POST layers need an activation quantizer")
        r = layer.act_quant.code_range
        if r.bits > 8:
            raise QexportError(
                f"'{path}' has POST weights and {r.bits}-bit activations: POST layers take activation codes "
                "of at most 8 bits; limit that quantizer's bits (max_bits=8)"
            )
        bound = post_weights.accumulator_bound(dep.codes, dep.bits, max(abs(r.qmin), r.qmax))
        if bound >= MAX_EXACT:
            raise QexportError(
                f"'{path}': POST accumulations reach {bound} >= 2^24, beyond exact float32 in the function "
                "body; split the layer or use fewer activation bits"
            )
        w = self.b.packed_const(f"{path}.weight_codes", onnx.TensorProto.UINT4, dep.codes.T if transpose else dep.codes)
        return [
            xq.codes, xq.scale, w, self.b.const(f"{path}.weight_scale", dep.weight_scale),
            self.b.const(f"{path}.bias", dep.float_bias),
        ]  # fmt: skip

    # -- quantized layers ----------------------------------------------------------------------
    def emit_unit(self, node: fx.Node) -> str:
        """Write the quantized unit at ``node`` (a QuantConv2d, QuantLinear or glue quantizer);
        returns its output's name."""
        m = self.module(node)
        if isinstance(m, QuantConv2d):
            return self.conv(node)
        if isinstance(m, QuantLinear):
            return self.linear(node)
        return self.glue(node)

    def conv(self, node: fx.Node) -> str:
        layer = self.module(node)
        path = str(node.target)
        assert isinstance(layer, nn.Conv2d)
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise self.unsupported(node, f"Conv2d with padding={layer.padding!r} mode={layer.padding_mode!r}")
        x = self.arg(node.args[0])
        bn = self.folds[node][1] if node in self.folds else None
        ph, pw = layer.padding
        attrs: dict[str, Any] = {"strides": list(layer.stride), "pads": [ph, pw, ph, pw],
                                 "dilations": list(layer.dilation), "group": layer.groups}  # fmt: skip
        form, post = self.weight_form(layer)
        # IntConv: integer weights, but an input step QLinearConv cannot take (ASQ) or an output it
        # would leave float
        int_conv = self.writes_int_conv(layer, node, form)
        xq = self.layer_input(layer, x, path, post or int_conv) if isinstance(layer, QuantConv2d) else None
        x = xq.value if xq is not None else x
        k, shift = bn_factors(bn, layer.out_channels)
        if post:
            assert isinstance(layer, QuantConv2d)
            self.record(path, layer, "PostConv", "uint4 POST codes")
            dep = layer.deployed()  # the eval forward's numbers
            assert isinstance(dep, DeployedPost)
            inputs = self.post_operands(layer, xq, path, dep, transpose=False)
            assert layer.weight_quant is not None
            return self.b.node("PostConv", inputs, path, domain=DOMAIN, bits=layer.weight_quant.code_range.bits,
                               relu=self.fused_relu_code(node), **attrs)  # fmt: skip
        if int_conv and xq is not None and form is not None:
            assert isinstance(layer, QuantConv2d)
            return self.int_conv(layer, node, xq, attrs)
        if isinstance(layer, QuantConv2d) and layer.is_integer():
            dep = layer.deployed()  # the same numbers the eval forward uses
            storage = self.storage(dep.codes)
            inputs = [x, self.b.dq_weight(dep.codes, dep.weight_scale, 0, path, storage)]
            if dep.bias_codes is not None:
                inputs.append(self.b.dq_bias(dep.bias_codes, dep.bias_scale, path))
        else:  # float weights, or integer weights with a float input: float bias, BN folded
            storage = "float32"
            if form is not None:
                dep = deployed_conv(_np(form[0]).astype(np.int64), _np(form[1]), None, None, bn)
                storage = self.storage(dep.codes)
                inputs = [x, self.b.dq_weight(dep.codes, dep.weight_scale, 0, path, storage)]
            else:
                w = _np(layer.weight).astype(np.float64) * k.reshape(-1, 1, 1, 1)
                inputs = [x, self.b.const(f"{path}.weight", w.astype(np.float32))]
            if layer.bias is not None or bn is not None:
                bias = (0.0 if layer.bias is None else _np(layer.bias).astype(np.float64)) * k + shift
                inputs.append(self.b.const(f"{path}.bias", np.asarray(bias, np.float32)))
        if isinstance(layer, QuantConv2d):
            self.record(path, layer, "Conv", storage if layer.weight_quant is not None else "float32")
        return self.b.node("Conv", inputs, path, kernel_shape=list(layer.kernel_size), **attrs)

    def writes_int_conv(self, layer: nn.Module, node: fx.Node, form: tuple[torch.Tensor, torch.Tensor] | None) -> bool:
        """Whether conv ``node`` (integer weights ``form``) is written as an IntConv.  Codes past 8 bits
        (int16 weights or activations) run as a float Conv of dequantized values instead."""
        if form is None or not isinstance(layer, QuantConv2d) or _wide(layer, form):
            return False
        return (not layer.is_integer() or not self.output_quantized(node, layer) or self.feeds_signed_int_conv(node)
                or (layer.groups == 1 and layer.in_channels <= _STEM_CHANNELS))

    def feeds_signed_int_conv(self, node: fx.Node) -> bool:
        """Whether a conv's output quantizer is the signed input of a conv written as IntConv: its codes
        are then int8 (zero point 0), and onnxruntime fuses DQ -> Conv -> Q into QLinearConv only with
        the input's type on both sides (uint8 in, int8 out stayed a float Conv with its weights
        dequantized every run: MobileNetV2's last projection conv).  As an IntConv it becomes an
        IntConvRequant instead."""
        users = self.users_after(node, through_relu=True)
        if len(users) != 1 or users[0].op != "call_module":
            return False
        user = self.module(users[0])
        if not isinstance(user, QuantConv2d) or user.act_quant is None or not user.act_quant.code_range.signed:
            return False
        form, post = self.weight_form(user)
        return not post and self.writes_int_conv(user, users[0], form)

    def output_quantized(self, node: fx.Node, layer: QuantConv2d) -> bool:
        """Whether a conv's output (after its folded BatchNorm and a ReLU, and through a max pool) goes
        into exactly one uniform quantizer: the QDQ pattern onnxruntime fuses into QLinearConv.  Or,
        with no ReLU and unsigned input codes, into several (MobileNetV2's projection convs: the next
        block's input quantizer and the residual add's): lower.py's ``_conv_per_quantizer`` then gives
        each its own copy of the conv, which onnxruntime fuses alike.  Otherwise it would stay a float
        conv, and the conv is exported as IntConv instead."""
        users = self.users_after(node, through_relu=True)
        if len(users) == 1 and max_pool(self.gm, users[0]):
            # a max pool then one quantizer, the input of a QDQ conv: lower.py's ``_pooled_codes``
            # quantizes before the pool
            users = list(users[0].users)
            return len(users) == 1 and self.uniform_quantizer_input(users[0]) and self.qdq_conv(users[0])
        if len(users) == 1:
            return self.uniform_quantizer_input(users[0])
        act = layer.act_quant
        return (len(users) > 1 and self.relu_after(node) is None and act is not None
                and not act.code_range.signed and act.code_range.bits <= 8
                and all(self.uniform_quantizer_input(u) for u in users))  # fmt: skip

    def qdq_conv(self, node: fx.Node) -> bool:
        """Whether ``node`` is a quantized conv written as DequantizeLinear -> Conv (no IntConv or
        PostConv): onnxruntime runs it channels-last, and its input's max pool with it."""
        if node.op != "call_module" or not isinstance(self.module(node), QuantConv2d):
            return False
        layer = self.module(node)
        form, post = self.weight_form(layer)
        return not post and not self.writes_int_conv(layer, node, form)

    def users_after(self, node: fx.Node, through_relu: bool = False) -> list[fx.Node]:
        """The users of a conv's output past its folded BatchNorm (and, ``through_relu``, a ReLU /
        ReLU6), as long as each step has one user."""
        users = list(node.users)
        while len(users) == 1 and (
            users[0] in self.folded_bn or (through_relu and relu_kind(self.gm, users[0]) is not None)
        ):
            users = list(users[0].users)
        return users

    def uniform_quantizer_input(self, user: fx.Node) -> bool:
        """Whether ``user`` takes its input through a uniform activation quantizer (a glue quantizer,
        or a quantized layer's input quantizer)."""
        if user.op != "call_module":
            return False
        m = self.module(user)
        q = m.act_quant if isinstance(m, (QuantConv2d, QuantLinear)) else m
        return isinstance(q, Quantizer) and q.describe().kind == "uniform"

    def int_conv(self, layer: QuantConv2d, node: fx.Node, xq: QTensor, attrs: dict[str, Any]) -> str:
        """IntConv: integer codes times integer weights, one float rescale (ASQ's per-sample step, or
        a uniform conv whose float output onnxruntime would not fuse)."""
        path = str(node.target)
        assert layer.integer_eval()
        # the eval forward's numbers: the bias on the accumulator grid where the input step is constant
        dep = layer.deployed()
        storage = self.storage(dep.codes)
        self.record(path, layer, "IntConv", storage)
        inputs = [xq.codes, xq.scale, self.b.weight_codes(dep.codes, path, storage),
                  self.b.const(f"{path}.weight_scale", dep.weight_scale.astype(np.float32)),
                  self.b.const(f"{path}.bias", dep.float_bias)]  # fmt: skip
        return self.b.node("IntConv", inputs, path, domain=DOMAIN, relu=self.fused_relu_code(node), **attrs)

    def relu_after(self, node: fx.Node) -> fx.Node | None:
        """The ReLU or ReLU6 that alone consumes a conv's output (after its folded BatchNorm), if any:
        an IntConv or PostConv applies it."""
        users = self.users_after(node)
        return users[0] if len(users) == 1 and relu_kind(self.gm, users[0]) is not None else None

    def fused_relu_code(self, node: fx.Node) -> int:
        """The ``relu`` attribute of IntConv / PostConv ``node``: 0, 1 (ReLU) or 6 (ReLU6)."""
        relu = self.relu_after(node)
        return 0 if relu is None else 6 if relu_kind(self.gm, relu) == "relu6" else 1

    def linear(self, node: fx.Node) -> str:
        layer = self.module(node)
        path = str(node.target)
        assert isinstance(layer, nn.Linear)
        x = self.arg(node.args[0])
        form, post = self.weight_form(layer)
        asq = isinstance(layer, QuantLinear) and layer.act_quant is not None and layer.act_quant.kind == "asq"
        # MatMulInteger for a per-row step, and for a 2-D input (DequantizeLinear -> MatMul plus the bias
        # becomes a float Gemm there; from 3-D on, onnxruntime fuses it into MatMulIntegerToFloat)
        integer = form is not None and not _wide(layer, form) and (asq or _rank(node.args[0]) == 2)
        xq = (self.layer_input(layer, x, path, post or integer, uint8=integer or post)
              if isinstance(layer, QuantLinear) else None)  # fmt: skip
        x = xq.value if xq is not None else x
        if post:
            assert isinstance(layer, QuantLinear)
            self.record(path, layer, "PostMatMul", "uint4 POST codes")
            q = layer.weight_quant
            assert q is not None
            level = _np(q.codes(layer.weight.detach())).astype(np.int64)
            bias = None if layer.bias is None else _np(layer.bias)
            dep = deployed_post(level, _np(q.describe().scale), q.code_range.bits, bias, None)
            inputs = self.post_operands(layer, xq, path, dep, transpose=True)
            assert xq is not None  # uint8 codes: + 128 where signed (the zero point), else as they are
            zero = xq.zero_point or self.b.const(f"{path}.act_quant.zero_point", np.array(0, np.uint8))
            inputs.append(zero)
            return self.b.node("PostMatMul", inputs, path, domain=DOMAIN, bits=layer.weight_quant.code_range.bits)
        if integer and xq is not None and form is not None:
            assert isinstance(layer, QuantLinear)
            return self.integer_matmul(layer, xq, form, path)
        if form is not None:
            codes, scale = _np(form[0]).astype(np.int64), _np(form[1]).astype(np.float32)
            storage = self.storage(codes)
            w = self.b.dq_weight(codes.T.copy(), scale, 1, path, storage)  # [in, out], per output column
        else:
            storage = "float32"
            w = self.b.const(f"{path}.weight", _np(layer.weight).T.astype(np.float32).copy())
        if isinstance(layer, QuantLinear):
            self.record(path, layer, "MatMul", storage)
        y = self.b.node("MatMul", [x, w], f"{path}.matmul")
        if layer.bias is None:
            return y
        return self.b.node("Add", [y, self.b.const(f"{path}.bias", _np(layer.bias).astype(np.float32))], path)

    def integer_matmul(self, layer: QuantLinear, xq: QTensor, form: tuple[torch.Tensor, torch.Tensor],
                       path: str) -> str:  # fmt: skip
        """A Linear with quantized input and integer weights: MatMulInteger of the codes, then float
        rescales.  With a constant input step (uniform) the one rescale ``w_scale * s_x`` is fused by
        onnxruntime into MatMulIntegerToFloat (a DequantizeLinear -> MatMul -> Add on 2-D inputs would
        become a float Gemm instead).  With a per-row (ASQ) step: ``w_scale`` first, the row step after
        (MatMulIntegerToFloat takes only a scalar input scale: a per-row one gave wrong output).  (A
        float input times DequantizeLinear weights is what onnxruntime rewrites into MatMulNBits, which
        requantizes the input and moves codes.)  With a per-row step and a bias, one Rescale node does the
        float passes after MatMulInteger (onnxruntime fuses none of Cast, Mul, Mul and Add there)."""
        codes, scale = _np(form[0]).astype(np.int64), _np(form[1]).astype(np.float32)
        storage = self.storage(codes)
        self.record(path, layer, "MatMulInteger", storage)
        w = self.b.weight_codes(codes.T.copy(), path, storage)
        a = [xq.codes, w] + ([xq.zero_point] if xq.zero_point else [])  # uint8 + 128: the fast u8 x s8 path
        acc_int = self.b.node("MatMulInteger", a, f"{path}.acc")
        bias = None if layer.bias is None else self.b.const(f"{path}.bias", _np(layer.bias).astype(np.float32))
        assert layer.act_quant is not None
        if layer.act_quant.kind == "asq":
            w_scale = self.b.const(f"{path}.weight_scale", scale)
            if bias is not None:  # the four float passes in one node
                return self.b.node("Rescale", [acc_int, w_scale, xq.scale, bias], path, domain=DOMAIN)
            y = self.b.node("Mul", [self.b.node("Cast", [acc_int], f"{path}.acc_f", to=1), w_scale], f"{path}.scaled")
            return self.b.node("Mul", [y, xq.scale], f"{path}.matmul")
        s_x = np.float32(layer.act_quant.describe().scale.reshape(()).item())
        acc = self.b.node("Cast", [acc_int], f"{path}.acc_f", to=1)
        y = self.b.node("Mul", [acc, self.b.const(f"{path}.scale", (scale * s_x).astype(np.float32))], f"{path}.matmul")
        return y if bias is None else self.b.node("Add", [y, bias], path)

    def glue(self, node: fx.Node) -> str:
        q = self.module(node)
        assert isinstance(q, Quantizer)
        x = self.tensor(self.arg(node.args[0]), f"{node.target}.input")
        return self.activation(q, x, str(node.target)).value


_RELU_FUNCTIONS = {torch.relu, F.relu, torch.ops.aten.relu.default, torch.ops.aten.relu_.default}
_RELU6_FUNCTIONS = {F.relu6, torch.ops.aten.relu6.default}


_MAX_POOL_FUNCTIONS = {F.max_pool2d, torch.ops.aten.max_pool2d.default}


def max_pool(gm: fx.GraphModule, n: fx.Node) -> bool:
    """Whether ``n`` is a 2-d max pool with one output (no indices), as the fx tracer or torch.export
    leave it."""
    if n.op == "call_module":
        m = gm.get_submodule(str(n.target))
        return isinstance(m, nn.MaxPool2d) and not m.return_indices
    if n.op == "call_function" and n.target in _MAX_POOL_FUNCTIONS:
        return not n.kwargs.get("return_indices", False) and not (len(n.args) > 6 and n.args[6])
    return False


def relu_kind(gm: fx.GraphModule, n: fx.Node) -> str | None:
    """'relu' or 'relu6' for the ReLU forms the fx tracer and torch.export leave, else None."""
    if n.op == "call_module":
        m = gm.get_submodule(str(n.target))
        return "relu6" if isinstance(m, nn.ReLU6) else "relu" if isinstance(m, nn.ReLU) else None
    if n.op == "call_function":
        if n.target in _RELU_FUNCTIONS:
            return "relu"
        if n.target in _RELU6_FUNCTIONS:
            return "relu6"
        hardtanh = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
        if n.target in hardtanh and tuple(n.args[1:3]) == (0.0, 6.0) and not n.kwargs:  # relu6 in ATen
            return "relu6"
        return None
    return "relu" if n.op == "call_method" and n.target == "relu" else None


def _wide(layer: nn.Module, form: tuple[torch.Tensor, torch.Tensor]) -> bool:
    """Whether a layer's weight codes or input codes need more than 8 bits (no integer kernel takes them)."""
    act, weight = getattr(layer, "act_quant", None), getattr(layer, "weight_quant", None)
    lo, hi = (int(form[0].min()), int(form[0].max())) if form[0].numel() else (0, 0)
    # a symmetric level set can be negated by a BatchNorm sign fold: -128 would become 128
    symmetric = weight is not None and weight.code_range.qmin == -weight.code_range.qmax
    wide_weights = hi > 127 or lo < -128 or (symmetric and lo < -127)
    return wide_weights or (act is not None and act.code_range.bits > 8)


# A conv over a few input channels (an image stem) is an IntConv even where onnxruntime would fuse it
# into its QLinearConv: MLAS packs K = 3 x 3 x 3 poorly (tools/conv_bench.py, Zen 4, AVX-512 VNNI,
# batch 1: 3 -> 32 at 224 stride 2, IntConv 259 us, QLinearConv 412).
_STEM_CHANNELS = 4


def _rank(n: fx.Node) -> int:
    meta = n.meta.get("tensor_meta")
    if meta is None:
        raise QexportError(f"no shape is known for '{n.name}' (shape propagation did not reach it)")
    return len(meta.shape)


__all__ = ["Emitter", "relu_kind"]
