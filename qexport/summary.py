"""Per-layer summaries: what ``qexport inspect model.pt`` and ``qexport inspect model.onnx`` print."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from torch import nn

from .errors import QexportError
from .ops import DOMAIN
from .quant.base import Quantizer
from .quant.layers import QuantConv2d, QuantLinear


@dataclass(frozen=True)
class QuantizerRow:
    path: str
    role: str
    method: str
    bits: int
    signed: bool
    codes: str
    scale: str


def _scale_text(q: Quantizer) -> str:
    if not q.ready:
        return "uncalibrated"
    spec = q.describe()
    s = spec.scale.reshape(-1)
    per = f"per-channel x{s.numel()}" if spec.axis is not None else "per-tensor"
    text = f"{per} {float(s.min()):.4g}..{float(s.max()):.4g}" if s.numel() > 1 else f"{per} {float(s):.4g}"
    if spec.kind == "asq":
        text += " x beta(x)"
    elif spec.kind == "levels":
        text = f"alpha {text}, base {spec.base:.4g}"
    return text


def quantizer_rows(model: nn.Module) -> list[QuantizerRow]:
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, Quantizer):
            r = m.code_range
            rows.append(QuantizerRow(name, m.role, m.method, r.bits, r.signed, f"[{r.qmin}, {r.qmax}]", _scale_text(m)))
    return rows


def layer_count(model: nn.Module) -> tuple[int, int]:
    """(quantized Conv/Linear layers, float Conv/Linear layers)."""
    quant = sum(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules())
    total = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    return quant, total - quant


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def onnx_metadata(proto: onnx.ModelProto, path: str) -> dict[str, str]:
    """The metadata qexport writes; an error for ONNX files from elsewhere."""
    meta = {p.key: p.value for p in proto.metadata_props}
    if "qexport_version" not in meta or "layers" not in meta:
        raise QexportError(f"{path}: this ONNX file was not written by qexport (no qexport metadata)")
    return meta


def _scale_range(values: np.ndarray) -> str:
    v = values.reshape(-1)
    if v.size == 0:
        return "-"
    return f"{v.min():.4g}" if v.size == 1 else f"x{v.size} {v.min():.4g}..{v.max():.4g}"


def onnx_summary(path: str) -> str:
    """What ``qexport inspect model.onnx`` prints: file, opsets, custom ops, then per quantized layer
    its type, methods and bits, weight storage, weight scales and bytes in the file."""
    proto = onnx.load(path)
    meta = onnx_metadata(proto, path)
    inits = {t.name: t for t in proto.graph.initializer}
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in proto.opset_import)
    custom = sorted({n.op_type for n in proto.graph.node if n.domain == DOMAIN})
    size = Path(path).stat().st_size
    lines = [
        f"{path}  ({size / 1e6:.2f} MB, written by qexport {meta['qexport_version']})",
        f"opsets: {opsets}; custom ops: {', '.join(custom) or 'none'} "
        f"(function bodies: {', '.join(f.name for f in proto.functions) or 'none'})",
    ]
    if "exact_adds" in meta:  # files before qexport wrote it have fused adds unless the model has ASQ
        adds = "exact (dequantize -> Sum -> quantize)" if json.loads(meta["exact_adds"]) else "fused (QLinearAdd)"
        lines.append(f"quantized residual adds: {adds}")
    rows, total = [], 0
    for layer in json.loads(meta["layers"]):
        p = layer["path"]
        own = [t for name, t in inits.items() if name.startswith(f"{p}.") and not name.startswith(f"{p}.act_quant")]
        nbytes = sum(t.ByteSize() for t in own)
        total += nbytes
        scale = inits.get(f"{p}.weight_scale")
        w, a = (layer.get(side) for side in ("weight", "act"))
        # a method name ending in a digit gets a dash before its bits: post2-4
        methods = [f"{q['method']}{'-' * q['method'][-1:].isdigit()}{q['bits']}" if q else "float" for q in (w, a)]
        scales = _scale_range(numpy_helper.to_array(scale)) if scale is not None else "-"
        rows.append([p, layer["type"], *methods, layer["weight_storage"], scales, f"{nbytes / 1e3:.1f}"])
    lines.append(format_table(rows, ["layer", "op", "weights", "input", "storage", "weight scale", "kB"]))
    lines.append(f"{len(rows)} quantized layers, {total / 1e6:.2f} MB of their weights, file {size / 1e6:.2f} MB")
    return "\n".join(lines)
