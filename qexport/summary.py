"""Per-layer summary of a quantized PyTorch model: what ``qexport inspect model.pt`` prints."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

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
