"""``quantize()``: put quantizers on the traced dataflow of any model.

The model is traced with torch.fx.  Every Conv2d / Linear becomes a QuantConv2d / QuantLinear
with the method's quantizer on its input (signed where the input can be negative, found by a
sign analysis of the graph) and on its weight.  In the ``deployable`` placement the integer glue
gets 8-bit quantizers too (residual-add operands and results, concat inputs, activation x activation
matmul operands), so an integer runtime can run the whole graph and the fake-quant model models it.
``paper`` keeps the papers' placement (layer inputs only).  See DESIGN.md, "Where quantizers sit".
"""

from __future__ import annotations

import copy
import fnmatch
import operator
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils import _pytree as pytree

from ..errors import QexportError
from .base import Quantizer
from .config import LayerPlan, QuantConfig, make_act_quantizer, make_weight_quantizer
from .fold import FoldableBatchNorm2d, batchnorm_after
from .layers import QuantConv2d, QuantLinear
from .lsq import LsqQuantizer

# -- the sign analysis ---------------------------------------------------------------------------
_NONNEG_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softmax, nn.Hardsigmoid)
_PASS_MODULES = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
    nn.Unflatten,
    nn.Upsample,
)
_NONNEG_FUNCS: set[Any] = {
    F.relu,
    torch.relu,
    F.relu6,
    torch.sigmoid,
    F.sigmoid,
    F.softmax,
    torch.softmax,
    F.hardsigmoid,
}
_PASS_FUNCS: set[Any] = {
    torch.flatten,
    torch.reshape,
    torch.permute,
    torch.transpose,
    torch.squeeze,
    torch.unsqueeze,
    torch.mean,
    F.adaptive_avg_pool2d,
    F.max_pool2d,
    F.avg_pool2d,
    F.dropout,
    operator.getitem,
    torch.chunk,
    torch.split,
    F.interpolate,
}
aten = torch.ops.aten
# the same rules for the ATen ops of a torch.export capture (capture.py)
_NONNEG_FUNCS |= {aten.relu.default, aten.relu_.default, aten.relu6.default, aten.sigmoid.default,
                  aten.softmax.int, aten._softmax.default, aten.hardsigmoid.default}  # fmt: skip
_PASS_FUNCS |= {
    aten.max_pool2d.default, aten.avg_pool2d.default, aten.adaptive_avg_pool2d.default, aten.mean.dim,
    aten.view.default, aten.reshape.default, aten.flatten.using_ints, aten.permute.default, aten.transpose.int,
    aten.squeeze.dim, aten.squeeze.dims, aten.unsqueeze.default, aten.clone.default, aten.expand.default,
    aten.slice.Tensor, aten.select.int, aten.split.Tensor, aten.chunk.default, aten.upsample_nearest2d.vec,
    aten.upsample_bilinear2d.vec, aten.contiguous.default, aten._to_copy.default, aten.to.dtype,
    aten.max_pool2d_with_indices.default, aten.unflatten.int, aten.t.default,
}  # fmt: skip
_NONNEG_METHODS = {"relu", "relu_", "sigmoid", "softmax"}
_PASS_METHODS = {
    "view",
    "reshape",
    "flatten",
    "permute",
    "transpose",
    "contiguous",
    "mean",
    "unflatten",
    "squeeze",
    "unsqueeze",
    "chunk",
    "split",
    "expand",
    "repeat",
    "float",
    "to",
    "clone",
    "detach",
}
_ADD_FUNCS: set[Any] = {operator.add, operator.iadd, torch.add, aten.add.Tensor, aten.add_.Tensor}
_CAT_FUNCS: set[Any] = {torch.cat, torch.concat, aten.cat.default}
_MATMUL_FUNCS: set[Any] = {operator.matmul, torch.matmul, torch.bmm, aten.matmul.default, aten.bmm.default}
_SHAPE_METHODS = {"size", "dim", "numel"}
_SHAPE_ATTRS = {"shape", "ndim", "dtype", "device"}

LEAF_TYPES: tuple[type[nn.Module], ...] = (Quantizer, QuantConv2d, QuantLinear, nn.MultiheadAttention)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAF_TYPES) or super().is_leaf_module(m, qualname)


def _is_shape_value(node: fx.Node, shape_nodes: set[fx.Node]) -> bool:
    """True for values computed from tensor shapes (ints), not tensors."""
    val = node.meta.get("val")  # a torch.export capture says what each value is
    if val is not None or (node.op == "placeholder" and "val" in node.meta):
        return not isinstance(val, torch.Tensor) and not (
            isinstance(val, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in val))
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1] in _SHAPE_ATTRS:
        return True
    inputs = node.all_input_nodes
    return node.op in ("call_function", "call_method") and bool(inputs) and all(i in shape_nodes for i in inputs)


_OP_RULES: dict[str, tuple[set[Any], set[Any], set[Any]]] = {
    # op: (always non-negative, non-negative when the first input is, when all inputs are)
    "call_function": (_NONNEG_FUNCS, _PASS_FUNCS, _ADD_FUNCS | _CAT_FUNCS | {operator.mul, torch.mul, aten.mul.Tensor}),
    "call_method": (_NONNEG_METHODS, _PASS_METHODS, {"add", "add_", "mul"}),
}


def _is_nonneg(node: fx.Node, gm: fx.GraphModule, nonneg: set[fx.Node], tensors: list[fx.Node]) -> bool:
    first = bool(tensors) and tensors[0] in nonneg
    every = bool(tensors) and all(t in nonneg for t in tensors)
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        if isinstance(mod, Quantizer):
            return not mod.code_range.signed
        return isinstance(mod, _NONNEG_MODULES) or (isinstance(mod, _PASS_MODULES) and first)
    if node.op not in _OP_RULES:
        return False
    always, passing, joint = _OP_RULES[node.op]
    t = node.target
    return t in always or (t in passing and first) or (t in joint and every)


def _analyse(gm: fx.GraphModule) -> tuple[set[fx.Node], set[fx.Node]]:
    """(nodes whose value is never negative, nodes that hold shape arithmetic rather than tensors)."""
    nonneg: set[fx.Node] = set()
    shapes: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if _is_shape_value(node, shapes):
            shapes.add(node)
        elif _is_nonneg(node, gm, nonneg, [i for i in node.all_input_nodes if i not in shapes]):
            nonneg.add(node)
    return nonneg, shapes


# -- tracing -------------------------------------------------------------------------------------
def _user_frame(exc: BaseException) -> str:
    """'file:line: code' of the innermost frame outside torch/qexport, naming the construct."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        path = frame.filename.replace("\\", "/")
        if "/torch/" not in path and "/qexport/quant/" not in path:
            return f" at {frame.filename}:{frame.lineno}: {(frame.line or '').strip()}"
    return ""


def trace(model: nn.Module) -> fx.GraphModule:
    """torch.fx trace with qexport's layers as leaves; a QexportError names the failing construct."""
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError ... for untraceable code
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QexportError(
            f"cannot trace {type(model).__name__} with torch.fx{_user_frame(exc)} ({first}); pass "
            "example_inputs= (and example_kwargs=) to quantize() to capture it with torch.export instead"
        ) from None
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


# -- the plan ------------------------------------------------------------------------------------
def _plan(path: str, index: int, count: int, cfg: QuantConfig) -> LayerPlan | None:
    weight, act = cfg.weight, cfg.act
    wbits = cfg.weight_bits or cfg.bits
    abits = cfg.act_bits or cfg.bits
    if cfg.first_last_bits is not None and index in (0, count - 1):
        wbits = abits = cfg.first_last_bits
        if weight in ("post", "pot", "post2") and wbits not in (2, 3, 4):
            weight = "lsq"  # POST/POT levels are not defined at 8 bits: the 8-bit ends use uniform LSQ
    for pattern, spec in cfg.overrides.items():
        if not fnmatch.fnmatchcase(path, pattern):
            continue
        if spec is None:
            return None
        weight = spec.get("weight", weight)
        act = spec.get("act", act)
        if "bits" in spec:
            wbits = abits = spec["bits"]
        wbits = spec.get("weight_bits", wbits)
        abits = spec.get("act_bits", abits)
    if weight is None and act is None:
        return None
    return LayerPlan(weight, act, wbits, abits)


def _is_fixed(index: int, count: int, cfg: QuantConfig) -> bool:
    return cfg.first_last_bits is not None and index in (0, count - 1)


def _swap(layer: nn.Module, plan: LayerPlan, signed_input: bool, fixed: bool, cfg: QuantConfig) -> nn.Module:
    if isinstance(layer, nn.Conv2d):
        channels, out_channels, pool = layer.in_channels, layer.out_channels, True
    else:
        assert isinstance(layer, nn.Linear)
        channels, out_channels, pool = layer.in_features, layer.out_features, False
    act = make_act_quantizer(plan.act, plan.act_bits, signed_input, channels, pool, cfg, fixed) if plan.act else None
    weight = make_weight_quantizer(plan.weight, plan.weight_bits, out_channels, cfg, fixed) if plan.weight else None
    wrapped = (QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear).wrap(layer, act, weight)  # type: ignore[attr-defined]
    if weight is not None:
        weight.initialize_from(wrapped.weight)
    return wrapped


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _is_layer(m: nn.Module) -> bool:
    """Exactly torch's Conv2d / Linear: a user's subclass has its own forward, which a swap would lose."""
    return type(m) in (nn.Conv2d, nn.Linear)


# -- glue quantizers (deployable placement) ------------------------------------------------------
class _Glue:
    def __init__(self, gm: fx.GraphModule, nonneg: set[fx.Node], cfg: QuantConfig) -> None:
        self.gm, self.nonneg, self.cfg = gm, nonneg, cfg

    def is_quantized(self, node: fx.Node) -> bool:
        return node.op == "call_module" and isinstance(self.gm.get_submodule(str(node.target)), Quantizer)

    def insert_after(self, node: fx.Node, name: str, signed: bool) -> fx.Node:
        path = f"glue.{name}"
        self.gm.add_submodule(path, LsqQuantizer(self.cfg.glue_bits, signed, "act"))
        with self.gm.graph.inserting_after(node):
            return self.gm.graph.call_module(path, (node,))

    def quantize_operand(self, user: fx.Node, operand: fx.Node, name: str) -> None:
        if self.is_quantized(operand):
            return
        q = self.insert_after(operand, name, signed=operand not in self.nonneg)
        user.replace_input_with(operand, q)

    def quantize_result(self, node: fx.Node, signed: bool) -> None:
        q = self.insert_after(node, f"{node.name}_out", signed)
        node.replace_all_uses_with(q, delete_user_cb=lambda u: u is not q)


def _binary_tensor_operands(node: fx.Node, shapes: set[fx.Node]) -> list[fx.Node] | None:
    args = [a for a in node.args[:2] if isinstance(a, fx.Node) and a not in shapes]
    return args if len(args) == 2 else None


def _insert_glue(gm: fx.GraphModule, nonneg: set[fx.Node], shapes: set[fx.Node], cfg: QuantConfig) -> None:
    glue = _Glue(gm, nonneg, cfg)
    for node in list(gm.graph.nodes):
        is_fn = node.op == "call_function"
        is_add = (is_fn and node.target in _ADD_FUNCS) or (node.op == "call_method" and node.target in {"add", "add_"})
        is_matmul = (is_fn and node.target in _MATMUL_FUNCS) or (node.op == "call_method" and node.target == "matmul")
        if is_add or is_matmul:
            operands = _binary_tensor_operands(node, shapes)
            if operands is None:
                continue  # tensor + scalar: not integer glue
            for i, operand in enumerate(dict.fromkeys(operands)):
                glue.quantize_operand(node, operand, f"{node.name}_in{i}")
            if is_add:
                glue.quantize_result(node, signed=node not in nonneg)
        elif is_fn and node.target in _CAT_FUNCS and isinstance(node.args[0], (list, tuple)):
            for i, operand in enumerate(dict.fromkeys(a for a in node.args[0] if isinstance(a, fx.Node))):
                glue.quantize_operand(node, operand, f"{node.name}_in{i}")


def _link_batchnorms(gm: fx.GraphModule) -> None:
    """A QuantConv2d with integer eval (uniform or ASQ input, integer weights) whose only user is a
    BatchNorm2d folds it in eval mode (fold.py); every QuantConv2d learns the BatchNorm the export
    folds into it (its gamma signs mirror the weights)."""
    for node in gm.graph.nodes:
        pair = batchnorm_after(gm, node)
        conv = gm.get_submodule(str(node.target)) if pair else None
        if not (pair and isinstance(conv, QuantConv2d)):
            continue
        if conv.integer_eval():
            folded = FoldableBatchNorm2d.replace(pair[1])
            _set_submodule(gm, str(pair[0].target), folded)
            conv.fold(folded)
        else:
            conv.link_batchnorm(pair[1])


# -- the public entry ----------------------------------------------------------------------------
def apply_config(model: nn.Module, cfg: QuantConfig) -> nn.Module:
    """Quantize a copy of ``model`` as ``cfg`` says (deterministic: checkpoints re-run it on load)."""
    source = model
    model = copy.deepcopy(model)
    try:
        # a torch.export capture (capture.py) is already a graph; other models are traced with fx
        gm = model if getattr(source, "qexport_program", None) is not None else trace(model)
    except QexportError as exc:
        if cfg.placement != "paper":
            raise
        print(f"qexport: {exc}; falling back to module swapping (all layer inputs signed)", file=sys.stderr)
        return _swap_without_tracing(model, source, cfg)

    nonneg, shapes = _analyse(gm)
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.MultiheadAttention):
            warnings.warn(
                f"{node.target}: nn.MultiheadAttention stays float (its projections are not separate nn.Linear "
                "modules); write attention from nn.Linear and matmul to quantize it",
                stacklevel=3,
            )
    layer_nodes = [n for n in gm.graph.nodes if n.op == "call_module" and _is_layer(gm.get_submodule(str(n.target)))]
    for index, node in enumerate(layer_nodes):
        path = str(node.target)
        plan = _plan(path, index, len(layer_nodes), cfg)
        if plan is None:
            continue
        inputs = [i for i in node.all_input_nodes if i not in shapes]
        signed = not (inputs and inputs[0] in nonneg)
        layer = gm.get_submodule(path)
        _set_submodule(gm, path, _swap(layer, plan, signed, _is_fixed(index, len(layer_nodes), cfg), cfg))
    _link_batchnorms(gm)
    if cfg.placement == "deployable":
        _insert_glue(gm, nonneg, shapes, cfg)
    gm.graph.lint()
    gm.recompile()
    _finish(gm, source, cfg)
    return gm


def _swap_without_tracing(model: nn.Module, source: nn.Module, cfg: QuantConfig) -> nn.Module:
    paths = [name for name, m in model.named_modules() if _is_layer(m)]
    for index, path in enumerate(paths):
        plan = _plan(path, index, len(paths), cfg)
        if plan is not None:
            fixed = _is_fixed(index, len(paths), cfg)
            _set_submodule(model, path, _swap(model.get_submodule(path), plan, True, fixed, cfg))
    _finish(model, source, cfg)
    return model


def _finish(model: nn.Module, source: nn.Module, cfg: QuantConfig) -> None:
    for name, m in model.named_modules():
        if isinstance(m, Quantizer):
            m.path = name
    model.qexport_config = cfg.to_dict()
    for attr in ("qexport_arch", "qexport_example", "qexport_program", "qexport_modules", "qexport_outputs"):
        if hasattr(source, attr):
            setattr(model, attr, copy.deepcopy(getattr(source, attr)))
    model.train(source.training)


def quantize(
    model: nn.Module,
    weight: str | None = "lsq",
    act: str | None = "lsq",
    bits: int = 4,
    *,
    weight_bits: int | None = None,
    act_bits: int | None = None,
    placement: str = "deployable",
    first_last_bits: int | None = 8,
    glue_bits: int = 8,
    per_channel: bool = True,
    learn_bits: bool = False,
    max_bits: int = 8,
    overrides: dict[str, dict[str, Any] | None] | None = None,
    weight_range: str = "full",
    example_inputs: Any = None,
    example_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Return a quantized copy of ``model`` (the original is left untouched).

    example_inputs / example_kwargs: inputs the model takes (a tensor or a tuple of positional
        inputs; keyword inputs such as ``attention_mask``).  With them the model is captured with
        torch.export (any model it captures: Hugging Face, timm, a user's script) and the result is
        a GraphModule that trains like the model, saves self-contained and exports; without them
        the model is traced with torch.fx (models written for it, such as the zoo's).

    weight: ``lsq`` | ``nipq`` | ``post`` | ``pot`` | None (float weights).
    act: ``lsq`` | ``nipq`` | ``asq`` | None (float inputs).
    bits: default width of both; ``weight_bits`` / ``act_bits`` set them apart.
    placement: ``deployable`` (default: also 8-bit glue quantizers on residual adds, concats and
        activation matmuls, so the graph runs as integer kernels) or ``paper`` (layer inputs only).
    first_last_bits: width of the first and last Conv/Linear (8 as in the papers; None: no exception).
    glue_bits: width of the glue quantizers (LSQ).
    per_channel: LSQ weight steps per output channel (POST/POT alpha is always per channel).
    learn_bits / max_bits: NIPQ learns each layer's width (mixed precision) within 2..max_bits,
        starting from ``bits``; first and last layer stay fixed.
    overrides: ``{"layer1.*.conv1": {"bits": 2}, "fc": None}``: fnmatch patterns on module paths,
        keys weight / act / bits / weight_bits / act_bits; None leaves the layer float.
    weight_range: LSQ weight codes: ``full`` (default, the LSQ paper's ``-2^(b-1) .. 2^(b-1)-1``: four
        levels at 2 bits) or ``narrow`` (``±(2^(b-1)-1)``: ternary at 2 bits).  A conv's full range
        is applied to its weight mirrored by the sign of the following BatchNorm's gamma, so the
        folded codes stay in range.  NIPQ, POST and POT keep their own symmetric levels.
    """
    cfg = QuantConfig(
        weight=weight,
        act=act,
        bits=bits,
        weight_bits=weight_bits,
        act_bits=act_bits,
        placement=placement,  # type: ignore[arg-type]
        first_last_bits=first_last_bits,
        glue_bits=glue_bits,
        per_channel=per_channel,
        learn_bits=learn_bits,
        max_bits=max_bits,
        overrides=dict(overrides or {}),
        weight_range=weight_range,  # type: ignore[arg-type]
    )
    if example_inputs is None and example_kwargs is None:
        return apply_config(model, cfg)
    from .capture import capture

    args = example_inputs if isinstance(example_inputs, tuple) else (
        () if example_inputs is None else (example_inputs,))  # fmt: skip
    gm, program = capture(copy.deepcopy(model), args, dict(example_kwargs or {}))
    gm.qexport_program = program
    gm.qexport_example = example_record(gm)
    values = pytree.tree_leaves((args, example_kwargs or {}))
    for spec, value in zip(gm.qexport_example["inputs"], values, strict=False):
        if isinstance(value, torch.Tensor) and not value.is_floating_point() and value.numel():
            spec["high"] = int(value.max()) + 1  # random check inputs stay in the range seen (token ids)
    gm.train(model.training)
    return apply_config(gm, cfg)


def example_record(gm: fx.GraphModule) -> dict[str, Any]:
    """The captured graph's inputs (name, shape at capture, dtype), in order: what export feeds."""
    inputs = []
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder" and isinstance(val, torch.Tensor):
            shape = [int(d) if isinstance(d, int) else int(d.node.hint or 2) for d in val.shape]
            inputs.append({"name": str(node.target), "shape": shape, "dtype": str(val.dtype).removeprefix("torch.")})
    first = inputs[0] if inputs else {"shape": [], "dtype": "float32"}
    return {"shape": first["shape"], "dtype": first["dtype"], "inputs": inputs}


def quantizers(model: nn.Module) -> list[Quantizer]:
    return [m for m in model.modules() if isinstance(m, Quantizer)]


def calibrate(
    model: nn.Module,
    batches: Any,
    *,
    init: Literal["mse", "paper"] = "mse",
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> nn.Module:
    """Initialise every quantizer's scale from data: a pass over ``batches`` (tensors, or tuples
    of positional inputs) in float, then each quantizer's init rule on the averaged statistics.
    Weight quantizers are re-initialised from the current weights.  Returns ``model``.

    init: ``mse`` (default) picks each uniform step (LSQ, ASQ) that minimises the quantization
    error of the data: a much better start for QAT at 3-4 bits than ``paper``, the LSQ paper's
    ``2 mean|x| / sqrt(Qp)`` (which lazy initialisation on the first training batch uses).
    NIPQ (quantile) and POST/POT (99th percentile) keep their own rules."""
    if init not in ("mse", "paper"):
        raise QexportError(f"calibrate(init={init!r}): use 'mse' or 'paper'")
    qs = quantizers(model)
    if not qs:
        raise QexportError("calibrate() found no qexport quantizer in the model: call qexport.quantize first")
    was_training = model.training
    model.eval()
    for q in qs:
        q.init_method = init
        q.start_calibration()
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                if forward is not None:
                    forward(model, batch)
                elif isinstance(batch, (tuple, list)):
                    model(*batch)
                else:
                    model(batch)
                seen += 1
    finally:
        for q in qs:
            q.finish_calibration()
            q.init_method = "paper"
        model.train(was_training)
    if seen == 0:
        raise QexportError("calibrate() got no batches: pass an iterable of input tensors")
    missing = [q.name() for q in qs if not q.ready]
    if missing:
        warnings.warn(f"calibration data never reached {len(missing)} quantizer(s), e.g. {missing[0]}", stacklevel=2)
    return model
