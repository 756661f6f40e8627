"""NIPQ's resource losses: average bit-width or BOPs against a target, as smooth-L1.

Bits come from each quantizer's differentiable width (NIPQ's learned ``theta``; a constant for
every other quantizer), so the loss pushes learned widths down where they cost most.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import QexportError
from .base import Quantizer, Role
from .layers import QuantConv2d, QuantLinear
from .nipq import NipqQuantizer


def quantizer_bits(q: Quantizer | None, device: torch.device) -> Tensor:
    if q is None:
        return torch.tensor(32.0, device=device)  # float side
    if isinstance(q, NipqQuantizer):
        return q.continuous_bits().to(device)
    return torch.tensor(float(q.code_range.bits), device=device)


def _layers(model: nn.Module) -> list[QuantConv2d | QuantLinear]:
    return [m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))]


def average_bits(model: nn.Module, role: Role) -> Tensor:
    """Average bit-width of the ``role`` quantizers of the quantized layers, weighted by element
    count (weights of the layer; activation elements of one sample, seen in the last forward)."""
    pairs: list[tuple[Quantizer, int]] = []
    for m in _layers(model):
        q = m.weight_quant if role == "weight" else m.act_quant
        if q is not None:
            pairs.append((q, m.weight.numel() if role == "weight" else q.sample_numel))
    if not pairs:
        raise QexportError(f"average_bits: the model has no quantized {role}s")
    if any(n == 0 for _, n in pairs):
        raise QexportError("average_bits over activations needs one forward pass first: run a batch through the model")
    dev = next(model.parameters()).device
    total = sum(n for _, n in pairs)
    return sum(quantizer_bits(q, dev) * n for q, n in pairs) / total


def average_weight_bits(model: nn.Module) -> Tensor:
    return average_bits(model, "weight")


def layer_macs(m: QuantConv2d | QuantLinear) -> int:
    """Multiply-accumulates of one sample through ``m``, from the shape seen in its last forward."""
    if isinstance(m, QuantConv2d):
        kh, kw = m.kernel_size
        h, w = m.out_hw
        if h == 0:
            raise QexportError("BOPs need one forward pass first: run a batch through the model")
        return kh * kw * (m.in_channels // m.groups) * m.out_channels * h * w
    return m.in_features * m.out_features * m.rows


def gbops(model: nn.Module) -> Tensor:
    """Bit operations per sample, in G: sum of MACs * b_w * b_a over quantized layers."""
    layers = _layers(model)
    if not layers:
        raise QexportError("gbops: the model has no quantized layers")
    dev = layers[0].weight.device
    return (
        sum(layer_macs(m) * quantizer_bits(m.weight_quant, dev) * quantizer_bits(m.act_quant, dev) for m in layers)
        / 1e9
    )


def resource_loss(model: nn.Module, target: float, mode: Literal["avg_bits", "bops"] = "avg_bits") -> Tensor:
    """Smooth-L1 against ``target``: of the average weight bits plus of the average activation bits
    (``avg_bits``; each side only where the model has learned widths), or of the GBOPs (``bops``)."""
    if mode == "bops":
        value = gbops(model)
        return F.smooth_l1_loss(value, torch.full_like(value, float(target)))
    if mode != "avg_bits":
        raise QexportError(f"unknown resource mode {mode!r}: use 'avg_bits' or 'bops'")
    learned = {q.role for q in model.modules() if isinstance(q, NipqQuantizer) and q.learns_bits}
    if not learned:
        raise QexportError("resource_loss: no quantizer learns its bit-width (quantize with learn_bits=True)")
    losses = []
    for role in sorted(learned):
        value = average_bits(model, role)  # type: ignore[arg-type]
        losses.append(F.smooth_l1_loss(value, torch.full_like(value, float(target))))
    return sum(losses)  # type: ignore[return-value]


def finalize(model: nn.Module) -> nn.Module:
    """End of NIPQ's noisy phase: every NIPQ quantizer becomes hard (STE) with its integer width
    frozen; weights, BatchNorm and alpha stay trainable for the fine-tune."""
    found = [m for m in model.modules() if isinstance(m, NipqQuantizer)]
    if not found:
        raise QexportError("finalize(): the model has no NIPQ quantizer")
    for q in found:
        q.finalize()
    return model
