"""The rounding / saturation core every quantizer shares.

Contract 1 (DESIGN.md): in eval mode a quantizer computes exactly what onnxruntime's
QuantizeLinear computes: divide by the float32 scale that gets exported (never multiply by a
reciprocal), round half to even, saturate to the code range, multiply back.  ``torch.round``
rounds half to even, and float32 division is correctly rounded in both libraries, so the
functions below match ORT code for code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import QexportError


@dataclass(frozen=True)
class CodeRange:
    """Integer code range ``[qmin, qmax]`` of a ``bits``-wide quantizer."""

    bits: int
    signed: bool
    narrow: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 16:
            raise QexportError(f"bit-width {self.bits} is outside 1..16; choose 2..8 for deployment")
        if self.signed and self.bits < 2:
            raise QexportError("a signed code range needs at least 2 bits")

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        half = 2 ** (self.bits - 1)
        return -(half - 1) if self.narrow else -half

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1


def round_ste(x: Tensor) -> Tensor:
    """Round half to even in the forward pass, identity gradient (straight-through estimator)."""
    return torch.round(x.detach()) + (x - x.detach())  # forward exactly round(x): y + 0


def grad_scale(x: Tensor, scale: float) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by ``scale`` (LSQ's gradient scaling)."""
    scaled = x * scale
    return x.detach() + (scaled - scaled.detach())


def clamp_ste(x: Tensor, lo: float, hi: float) -> Tensor:
    """Clamp in the forward pass, identity gradient (so a clamped parameter can come back)."""
    return x.detach().clamp(lo, hi) + (x - x.detach())


def quantize_codes(x: Tensor, scale: Tensor, qmin: int, qmax: int) -> Tensor:
    """Integer codes (as float) ``clamp(round(x / scale), qmin, qmax)``: no gradient."""
    return torch.clamp(torch.round(x / scale), qmin, qmax)


def fake_quant(x: Tensor, scale: Tensor, qmin: int, qmax: int) -> Tensor:
    """``clamp(round(x / scale)) * scale`` with the LSQ straight-through gradients.

    d/dx is 1 inside the range and 0 outside; d/dscale is ``round(x/s) - x/s`` inside and
    ``qmin`` / ``qmax`` outside, which is what autograd gives for this expression.
    """
    return round_ste(torch.clamp(x / scale, qmin, qmax)) * scale


def lsq_step_init(x: Tensor, qmax: int, dims: tuple[int, ...] | None = None) -> Tensor:
    """LSQ initial step ``2 * mean(|x|) / sqrt(Qp)`` over ``dims`` (all when None)."""
    absx = x.detach().abs().float()
    mean = absx.mean() if dims is None else absx.mean(dim=dims, keepdim=True)
    return 2.0 * mean / math.sqrt(max(qmax, 1))


def sync_mean(t: Tensor) -> Tensor:
    """Average ``t`` across ranks when torch.distributed is running, so every rank initialises the
    same quantizer parameters from its own data shard.  A no-op in a single process."""
    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def sample_abs(x: Tensor, limit: int = 1 << 20) -> Tensor:
    """A flat float32 sample of ``|x|`` of at most ``limit`` elements (torch.quantile refuses large inputs)."""
    flat = x.detach().abs().float().reshape(-1)
    if flat.numel() > limit:
        idx = torch.linspace(0, flat.numel() - 1, limit, device=flat.device).long()
        flat = flat[idx]
    return flat


def mse_step_search(x: Tensor, start: Tensor, qmin: int, qmax: int, dims: tuple[int, ...] | None) -> Tensor:
    """The step among ``start * f`` (f on a grid over [0.05, 2]) that minimises the quantization
    MSE ``|clamp(round(x/s)) * s - x|^2`` (per channel when ``dims`` are given)."""
    x = x.detach().float()
    best_err: Tensor | None = None
    best = start
    for f in torch.linspace(0.05, 2.0, 40).tolist():
        step = (start * f).clamp(min=1e-8)
        err = (torch.clamp(torch.round(x / step), qmin, qmax) * step - x).pow(2)
        err = err.mean() if dims is None else err.mean(dim=dims, keepdim=True)
        if best_err is None:
            best_err, best = err, step
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, step, best)
    return best
