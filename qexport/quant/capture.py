"""Capture with torch.export: any model (Hugging Face, timm, torchvision-style, a user's script)
becomes an fx GraphModule of ATen ops that ``quantize()`` can annotate, train and export.

As PyTorch's PT2E QAT flow does, the model is captured once (non-strict ``torch.export`` in train
mode, every input dimension free where the model allows), then:
- each ``aten.conv2d`` / ``aten.linear`` whose weight is the parameter of an ``nn.Conv2d`` /
  ``nn.Linear`` becomes a call of that module (which ``quantize()`` then swaps), so the quantized
  layers keep their module paths and their parameters;
- each ``aten.batch_norm`` becomes a call of its BatchNorm module and each ``aten.dropout`` a call
  of an ``nn.Dropout``: ``model.train()`` / ``model.eval()`` switch them as in the user's model (PT2E
  leaves that to the user: ``move_exported_model_to_eval``);
- shape guards are dropped: the batch may change between calls.
Outputs are flattened for the program (a tuple of tensors: a saved program then loads without the
user's output classes, e.g. a transformers ModelOutput) and restored to the user's structure by the
module's own pytree code.
"""

from __future__ import annotations

import copy
import io
import re
import traceback
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils import _pytree as pytree

from ..errors import QexportError
from .placement import _set_submodule

_CONV = {torch.ops.aten.conv2d.default}
_LINEAR = {torch.ops.aten.linear.default}
_BATCHNORM = {torch.ops.aten.batch_norm.default, torch.ops.aten._native_batch_norm_legit_no_training.default}
_DROPOUT = {torch.ops.aten.dropout.default, torch.ops.aten.dropout_.default}
_ATTENTION = torch.ops.aten.scaled_dot_product_attention.default


class Attention(nn.Module):
    """``F.scaled_dot_product_attention`` whose dropout follows ``train()`` / ``eval()``: a train-mode
    capture bakes the attention dropout into the op's arguments, where eval would still apply it."""

    def __init__(self, dropout_p: float, is_causal: bool, scale: float | None, enable_gqa: bool) -> None:
        super().__init__()
        self.dropout_p, self.is_causal, self.scale, self.enable_gqa = dropout_p, is_causal, scale, enable_gqa

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        p = self.dropout_p if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, mask, p, self.is_causal, scale=self.scale,
                                              enable_gqa=self.enable_gqa)  # fmt: skip



class _Flat(nn.Module):
    """``model`` taking every input positionally (keyword inputs after the positional ones) and
    returning its outputs flattened to a tuple of tensors (pytree leaves)."""

    def __init__(self, model: nn.Module, keywords: list[str]) -> None:
        super().__init__()
        self.model = model
        self.keywords = keywords

    def forward(self, *inputs: Any) -> tuple[Any, ...]:
        cut = len(inputs) - len(self.keywords)
        out = self.model(*inputs[:cut], **dict(zip(self.keywords, inputs[cut:], strict=True)))
        return tuple(pytree.tree_leaves(out))


def _user_line(exc: BaseException) -> str:
    """' at file:line: code' of the innermost frame outside torch / qexport."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = frame.filename.replace("\\", "/")
        if "/torch/" not in path and "/qexport/" not in path and "/site-packages/torch" not in path:
            return f" at {frame.filename}:{frame.lineno}: {(frame.line or '').strip()}"
    return ""


def first_line(exc: BaseException) -> str:
    """The first informative line of a torch.export / torch.onnx error (torch.onnx opens with a
    generic preamble: 'Failed to convert ...', '- If there is ...', '## Exception summary')."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line and not line.startswith(("Failed to", "-", "#", "Create an error")):
            return line[:240]
    return type(exc).__name__


def _dynamic(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """Every dimension of every tensor input free (Dim.AUTO: torch.export keeps it static where the
    model needs it so)."""

    def spec(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return dict.fromkeys(range(value.dim()), torch.export.Dim.AUTO) if value.dim() else None
        return pytree.tree_map(lambda v: None, value) if isinstance(value, (list, tuple, dict)) else None

    return tuple(spec(a) for a in inputs)


def export_program(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.export.ExportedProgram:
    """torch.export (non-strict, train mode) of ``model`` with flattened outputs; a QexportError names
    the failing construct and the user's source line."""
    flat = _Flat(model, list(kwargs))
    flat.train(True)  # as PT2E's QAT flow: dropout and batch statistics in the graph (module calls after)
    inputs = (*args, *kwargs.values())
    try:
        try:
            return torch.export.export(flat, inputs, dynamic_shapes={"inputs": _dynamic(inputs)}, strict=False)
        except Exception:
            return torch.export.export(flat, inputs, strict=False)
    except Exception as exc:
        norms = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        cumulative = [name for name, m in norms if m.momentum is None and m.track_running_stats]
        if cumulative:  # its factor 1 / num_batches_tracked is a data-dependent float in train mode
            raise QexportError(
                f"cannot capture {type(model).__name__} with torch.export: BatchNorm '{cumulative[0]}' has "
                "momentum=None (a cumulative average of the batch statistics, which train mode computes from "
                "a tensor's value); give it a number (PyTorch's default is 0.1) before quantize()"
            ) from None
        raise QexportError(
            f"cannot capture {type(model).__name__} with torch.export{_user_line(exc)} ({type(exc).__name__}: "
            f"{first_line(exc)}); see https://pytorch.org/docs/stable/export.html for what it captures"
        ) from None


def _owner(gm: fx.GraphModule, node: Any) -> str | None:
    """The module path owning parameter / buffer node ``node`` (``get_attr`` 'a.b.weight' -> 'a.b')."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    return str(node.target).rpartition(".")[0]


def _module_for(source: nn.Module, gm: fx.GraphModule, node: fx.Node) -> str | None:
    """The path of the user's module that ``node`` (a conv / linear / batch norm call) is, or None."""
    path = _owner(gm, node.args[1]) if node.target not in _BATCHNORM else _batchnorm_owner(gm, node)
    if not path:
        return None
    try:
        module = source.get_submodule(path)
    except AttributeError:
        return None
    if node.target in _CONV:
        ok = type(module) is nn.Conv2d and _conv_matches(module, node)
    elif node.target in _LINEAR:
        ok = type(module) is nn.Linear
    else:
        ok = isinstance(module, nn.modules.batchnorm._BatchNorm)
    return path if ok else None


def _batchnorm_owner(gm: fx.GraphModule, node: fx.Node) -> str | None:
    for arg in node.args[1:5]:  # weight, bias, running_mean, running_var
        path = _owner(gm, arg)
        if path:
            return path
    return None


def _conv_matches(conv: nn.Conv2d, node: fx.Node) -> bool:
    """aten.conv2d(x, w, b, stride, padding, dilation, groups) with the module's own settings (a
    module's weight passed to F.conv2d with other settings stays a functional conv)."""
    defaults = (None, None, None, [1, 1], [0, 0], [1, 1], 1)
    args = list(node.args) + list(defaults[len(node.args):])
    pair = lambda v: list(v) if isinstance(v, (list, tuple)) else [v, v]  # noqa: E731
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return False
    return (pair(args[3]) == list(conv.stride) and pair(args[4]) == list(conv.padding)
            and pair(args[5]) == list(conv.dilation) and args[6] == conv.groups
            and (args[2] is None) == (conv.bias is None))  # fmt: skip


def to_graph_module(ep: torch.export.ExportedProgram, source: nn.Module | None,
                    modules: dict[str, str] | None = None) -> fx.GraphModule:  # fmt: skip
    """The trainable GraphModule of a captured program: conv / linear / batch norm / dropout nodes
    made module calls.  ``source``: the user's modules, whose types decide (the paths converted are
    recorded in ``gm.qexport_modules``); None: a loaded program, where ``modules`` (that record) says
    which nodes were converted, so the graph is the one that was trained."""
    converted: dict[str, str] = {}
    gm = _reroot(ep.module())
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards"):
            graph.erase_node(node)
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in _CONV | _LINEAR | _BATCHNORM:
            kind = "conv" if node.target in _CONV else "linear" if node.target in _LINEAR else "batchnorm"
            if source is not None:
                path = _module_for(source, gm, node)
            else:
                path = _batchnorm_owner(gm, node) if kind == "batchnorm" else _owner(gm, node.args[1])
                if not path or (modules or {}).get(path) != kind:
                    continue
                if path not in converted:
                    _rebuilt(gm, node)
            if path is None:
                continue
            converted[path] = kind
            if source is not None:
                _set_submodule(gm, path, source.get_submodule(path))
            with graph.inserting_before(node):
                call = graph.call_module(path, (node.args[0],))
            call.meta = dict(node.meta)
            node.replace_all_uses_with(call)
            graph.erase_node(node)
        elif node.target is _ATTENTION:
            names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
            given = {**dict(zip(names, node.args, strict=False)), **node.kwargs}
            if float(given.get("dropout_p", 0.0)) == 0.0:
                continue  # nothing that depends on the mode
            name = f"attention_{node.name}"
            gm.add_submodule(name, Attention(float(given["dropout_p"]), bool(given.get("is_causal", False)),
                                             given.get("scale"), bool(given.get("enable_gqa", False))))  # fmt: skip
            with graph.inserting_before(node):
                call = graph.call_module(name, (given["query"], given["key"], given["value"], given.get("attn_mask")))
            call.meta = dict(node.meta)
            node.replace_all_uses_with(call)
            graph.erase_node(node)
        elif node.target in _DROPOUT:
            p = float(node.args[1]) if len(node.args) > 1 else 0.5
            name = f"dropout_{node.name}"
            gm.add_submodule(name, nn.Dropout(p))
            with graph.inserting_before(node):
                call = graph.call_module(name, (node.args[0],))
            call.meta = dict(node.meta)
            node.replace_all_uses_with(call)
            graph.erase_node(node)
    for node in list(graph.nodes):  # the BatchNorm modules count their own batches
        counter = node.args[0] if node.op == "call_function" and node.args else None
        if (node.target is torch.ops.aten.add_.Tensor and not node.users and isinstance(counter, fx.Node)
                and str(counter.target).endswith("num_batches_tracked")):  # fmt: skip
            graph.erase_node(node)
    graph.eliminate_dead_code(is_impure_node=lambda n: n.op in ("placeholder", "output") or n.op == "call_module")
    graph.lint()
    gm.recompile()
    gm.qexport_modules = converted
    return gm


def _reroot(gm: fx.GraphModule) -> fx.GraphModule:
    """The program of ``_Flat(model)`` holds everything under ``model.``: move it to the root, so
    that paths are the user's own ('layer1.0.conv1', not 'model.layer1.0.conv1')."""
    for method in ("train", "eval"):  # ep.module() refuses them; our BatchNorm / Dropout modules obey them
        gm.__dict__.pop(method, None)
    inner = getattr(gm, "model", None)
    if not isinstance(inner, nn.Module):
        return gm
    delattr(gm, "model")
    for name, child in inner.named_children():
        gm.add_module(name, child)
    for name, param in inner.named_parameters(recurse=False):
        gm.register_parameter(name, param)
    for name, buf in inner.named_buffers(recurse=False):
        gm.register_buffer(name, buf)
    for node in gm.graph.nodes:
        if node.op == "get_attr" and str(node.target).startswith("model."):
            node.target = str(node.target).removeprefix("model.")
    return gm


def _rebuilt(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """After loading a saved program (the user's classes gone): the module a conv / linear / batch
    norm node stands for, rebuilt from the node's arguments and the program's parameters."""
    if node.target in _BATCHNORM:
        path = _batchnorm_owner(gm, node)
        if path is None:
            return None
        holder = gm.get_submodule(path)
        mean = getattr(holder, "running_mean", None)
        if mean is None:
            return None
        eps = float(node.args[7]) if len(node.args) > 7 else 1e-5
        momentum = float(node.args[6]) if len(node.args) > 6 else 0.1
        val = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
        rank = val.dim() if isinstance(val, torch.Tensor) else 4
        kind = nn.BatchNorm1d if rank in (2, 3) else nn.BatchNorm3d if rank == 5 else nn.BatchNorm2d
        bn = kind(mean.numel(), eps=eps, momentum=momentum, affine=hasattr(holder, "weight"))
        _adopt(bn, holder)
        _set_submodule(gm, path, bn)
        return path
    path = _owner(gm, node.args[1])
    if not path:
        return None
    holder = gm.get_submodule(path)
    weight = holder.weight
    bias = getattr(holder, "bias", None) if len(node.args) > 2 and node.args[2] is not None else None
    if node.target in _LINEAR:
        module: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        args = list(node.args) + [None] * (7 - len(node.args))
        stride, padding, dilation = args[3] or [1, 1], args[4] or [0, 0], args[5] or [1, 1]
        groups = int(args[6] or 1)
        module = nn.Conv2d(
            weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=tuple(stride),
            padding=tuple(padding), dilation=tuple(dilation), groups=groups, bias=bias is not None,
        )  # fmt: skip
    _adopt(module, holder)
    _set_submodule(gm, path, module)
    return path


def _adopt(module: nn.Module, holder: nn.Module) -> None:
    """Give ``module`` the parameters and buffers the program holds at its path."""
    for name, value in list(holder.named_parameters(recurse=False)):
        setattr(module, name, value)
    for name, value in list(holder.named_buffers(recurse=False)):
        module.register_buffer(name, value)


def restore_signature(gm: fx.GraphModule, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Make ``gm`` take its inputs as ``model`` does (positional, then keywords such as
    ``attention_mask``) and return what ``model`` returns (a dict, a ModelOutput ...), not the flat
    tuples of the program."""
    codegen = gm.graph._codegen
    info = getattr(codegen, "pytree_info", None)
    if info is None:
        return
    with torch.no_grad():
        was = model.training
        model.eval()
        try:
            out = model(*args, **kwargs)
        finally:
            model.train(was)
    leaves, out_spec = pytree.tree_flatten(out)
    gm.qexport_outputs = _spec_text(out)
    in_leaves, in_spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
    names = _input_names(model, args, kwargs)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(leaves) == info.out_spec.num_leaves:
        info = info._replace(out_spec=out_spec)
    if len(in_leaves) == len(placeholders) == len(names) and len(set(names)) == len(names):
        taken = {n.name for n in gm.graph.nodes} - {p.name for p in placeholders}
        if not taken & set(names):
            for node, name in zip(placeholders, names, strict=True):
                node.target = node.name = name
            info = info._replace(orig_args=names, in_spec=in_spec)
    codegen.pytree_info = info
    gm.recompile()


def _spec_text(out: Any) -> str | None:
    """The output structure as pytree's JSON (a ModelOutput as the dict of its fields), for loading."""
    if isinstance(out, Mapping) and type(out) is not dict:
        out = dict(out)
    try:
        return pytree.treespec_dumps(pytree.tree_flatten(out)[1])
    except Exception:  # a structure pytree cannot serialize: the loaded model returns a flat tuple
        return None


def restore_outputs(gm: fx.GraphModule, text: str | None) -> None:
    """A loaded program returns the recorded structure (a tensor, a dict, a tuple ...)."""
    info = getattr(gm.graph._codegen, "pytree_info", None)
    if info is None or not text:
        return
    try:
        spec = pytree.treespec_loads(text)
    except Exception:  # an unreadable record: keep the flat tuple
        return
    if spec.num_leaves == info.out_spec.num_leaves:
        gm.graph._codegen.pytree_info = info._replace(out_spec=spec)
        gm.recompile()


def name_inputs(gm: fx.GraphModule, names: list[str]) -> None:
    """Give a loaded program's inputs their forward() names (recorded at capture), positionally."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    taken = {n.name for n in gm.graph.nodes} - {p.name for p in placeholders}
    if len(names) != len(placeholders) or len(set(names)) != len(names) or taken & set(names):
        return
    for node, name in zip(placeholders, names, strict=True):
        node.target = node.name = name
    info = getattr(gm.graph._codegen, "pytree_info", None)
    if info is not None:
        gm.graph._codegen.pytree_info = info._replace(orig_args=list(names))
    gm.recompile()


def program_bytes(ep: torch.export.ExportedProgram) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(ep, buffer)
    return buffer.getvalue()


def load_program(data: bytes, where: str) -> torch.export.ExportedProgram:
    try:
        return torch.export.load(io.BytesIO(data))
    except Exception as exc:
        raise QexportError(f"{where}: its captured program does not load ({first_line(exc)})") from None


def _input_names(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    """The forward() parameter name of each tensor input, in the program's input order."""
    import inspect

    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return []
    names: list[str] = []
    for name, value in [*((n, v) for n, v in bound.arguments.items() if n not in kwargs), *kwargs.items()]:
        leaves = pytree.tree_leaves(value)
        names += [name if len(leaves) == 1 else f"{name}_{i}" for i in range(len(leaves))]
    return names


def _node_line(gm: fx.GraphModule, op: str) -> str:
    """' at file:line: code' of the user's source for the first node calling ``op`` (an ATen name;
    the capture may hold the op it decomposes into: linalg_cholesky for linalg_cholesky_ex)."""
    base = op.removeprefix("aten.")
    for node in gm.graph.nodes:
        name = str(node.target).removeprefix("aten.").rsplit(".", 1)[0]
        if node.op == "call_function" and (base == name or base.startswith(name + "_")):
            frames = [f for f in str(node.meta.get("stack_trace", "")).split('File "')[1:] if "/torch/" not in f]
            frames = [f for f in frames if "/qexport/" not in f.split('"')[0]]
            if frames:
                path, _, rest = frames[-1].partition('", line ')
                number, _, code = rest.partition("\n")
                return f" at {path}:{number.split(',')[0]}: {code.strip()}"
    return ""


def check_lowerable(gm: fx.GraphModule, inputs: tuple[Any, ...]) -> None:
    """A dry run of torch.onnx on the float program: an op it cannot write fails now, naming the op
    and the user's source line, not after a day of QAT."""
    flat = copy.deepcopy(gm)
    flat.graph._codegen = fx.graph.CodeGen()  # the program's own flat inputs and outputs
    flat.recompile()
    flat.eval()
    try:
        torch.onnx.export(flat, inputs, dynamo=True, optimize=False, verbose=False, report=False)
    except Exception as exc:
        text = str(exc)
        found = re.search(r"No ONNX function found for <OpOverload\(op='([\w.]+)', overload='(\w+)'", text)
        if found is None:
            raise QexportError(f"torch.onnx cannot export {type(gm).__name__}: {first_line(exc)}") from None
        op = found.group(1)
        raise QexportError(
            f"{op}.{found.group(2)}{_node_line(gm, op)} has no ONNX lowering in torch.onnx, so the model could "
            "train but never deploy: rewrite that line with ops ONNX has, or keep it out of the exported model"
        ) from None


def capture(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[fx.GraphModule, bytes]:
    """(trainable GraphModule with the user's modules at their paths, the float program's bytes)."""
    ep = export_program(model, args, kwargs)
    gm = to_graph_module(ep, model)
    check_lowerable(gm, (*args, *kwargs.values()))
    restore_signature(gm, model, args, kwargs)
    return gm, program_bytes(ep)


__all__ = ["capture", "load_program", "program_bytes", "to_graph_module"]
