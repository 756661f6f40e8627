"""NIPQ: pseudo-quantization noise with a learned truncation boundary and learned bit-width
(Shin et al., CVPR 2023; official code ECoLab-POSTECH/NIPQ).

- ``alpha = softplus(alpha_param)``; step ``delta = alpha / n`` with ``n = 2^b - 1`` (unsigned) or
  ``2^(b-1) - 1`` (signed, narrow range: 2-bit signed is ternary).
- learned bit-width ``b = 2 + 12 * sigmoid(theta)`` (official mapping), limited to
  ``[min_bits, max_bits]`` (2..8 by default, for ORT's 8-bit kernels) by a straight-through clamp so a
  layer pushed past the limit can come back; in noisy training ``b + U(-0.5, 0.5)`` rounded with STE.
- noisy training forward: clip to ``[0, alpha]`` / ``[-alpha, alpha]``, add ``noise * delta`` where
  the noise follows the empirical histogram (256 bins) of the real rounding error of the in-range
  elements; sampled by inverse CDF (``torch.multinomial`` costs ~5x an LSQ step on CPU).
- hard forward (eval, and training after ``finalize``): contract 1, ``clamp(round(x / s)) * s`` with
  ``s = alpha / n`` in float32.  The official code computes ``round(clamp(x / alpha) * n) * alpha / n``:
  the same levels, but not the arithmetic ORT performs (a documented deviation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import QexportError
from .base import Quantizer, QuantSpec, Role
from .core import CodeRange, clamp_ste, fake_quant, mse_step_search, quantize_codes, round_ste, sample_abs

NOISE_BINS = 256
BIT_LO, BIT_SPAN = 2.0, 12.0  # official mapping b = 2 + 12 * sigmoid(theta)
MIN_ALPHA = 1e-6


def softplus_inverse(y: Tensor) -> Tensor:
    """``x`` with ``softplus(x) == y`` for y > 0."""
    return y + torch.log(-torch.expm1(-y))


def theta_for_bits(bits: float) -> float:
    """The ``theta`` that maps to ``bits`` (clamped away from the log(0) at exactly 2 or 14 bits)."""
    p = min(max((bits - BIT_LO) / BIT_SPAN, 1e-3), 1 - 1e-3)
    return math.log(p / (1 - p))


def levels_for_bits(bits: Tensor, signed: bool) -> Tensor:
    """``n``: the largest code of a ``bits``-wide (narrow, when signed) range, differentiable in bits."""
    return 2.0 ** (bits - 1) - 1 if signed else 2.0**bits - 1


def rounding_noise(scaled: Tensor, in_range: Tensor) -> Tensor:
    """Noise shaped like ``scaled``, drawn from the histogram of ``round(v) - v`` over in-range ``v``.

    Inverse-CDF sampling on ``NOISE_BINS`` bins over [-0.5, 0.5], uniform inside a bin.
    """
    # out-of-range elements are moved outside histc's [min, max], which ignores them (no sync)
    err = torch.where(in_range, torch.round(scaled) - scaled, torch.full_like(scaled, 2.0)).float()
    hist = torch.histc(err, bins=NOISE_BINS, min=-0.5, max=0.5) + 1e-12  # all empty: uniform
    cdf = torch.cumsum(hist, 0) / hist.sum()
    u = torch.rand(scaled.numel(), device=scaled.device)
    idx = torch.searchsorted(cdf, u).clamp(max=NOISE_BINS - 1).reshape(scaled.shape)
    within = torch.rand(scaled.shape, device=scaled.device)
    return (idx.to(scaled.dtype) + within) / NOISE_BINS - 0.5


class NipqQuantizer(Quantizer):
    method = "nipq"

    def __init__(
        self,
        bits: int,
        signed: bool,
        role: Role = "act",
        *,
        learn_bits: bool = False,
        min_bits: int = 2,
        max_bits: int = 8,
    ) -> None:
        """``bits``: the fixed width, or the initial width when ``learn_bits``."""
        super().__init__(role)
        if not 2 <= min_bits <= bits <= max_bits <= 14:
            raise QexportError(
                f"NIPQ needs 2 <= min_bits <= bits <= max_bits <= 14, got {min_bits}, {bits}, {max_bits}"
            )
        self.signed = signed
        self.min_bits, self.max_bits = min_bits, max_bits
        self.alpha_param = nn.Parameter(softplus_inverse(torch.tensor(6.0 if not signed else 3.0)))
        self.theta = nn.Parameter(torch.tensor(theta_for_bits(bits)), requires_grad=learn_bits)
        # frozen_bits > 0: the integer width is fixed (fixed-bit mode, or after finalize()).
        self.register_buffer("frozen_bits", torch.tensor(0 if learn_bits else bits, dtype=torch.int64))
        self.register_buffer("hard", torch.zeros((), dtype=torch.bool))
        self.refresh_flags()

    def refresh_flags(self) -> None:
        super().refresh_flags()
        self._frozen = int(self.frozen_bits)
        self._hard = bool(self.hard)

    # -- bit-width ------------------------------------------------------------------------------
    def continuous_bits(self) -> Tensor:
        """Differentiable bit-width before rounding (what the resource losses use)."""
        if self._frozen > 0:
            return self.frozen_bits.float()
        return clamp_ste(BIT_LO + BIT_SPAN * torch.sigmoid(self.theta), self.min_bits, self.max_bits)

    @property
    def learns_bits(self) -> bool:
        return self._frozen == 0

    def integer_bits(self) -> int:
        if self._frozen > 0:
            return self._frozen
        b = float(self.continuous_bits().detach())
        return int(min(max(round(b), self.min_bits), self.max_bits))

    def _train_bits(self) -> Tensor:
        if self._frozen > 0:
            return self.frozen_bits.float()
        b = self.continuous_bits()
        if not self._hard:
            b = b + (torch.rand((), device=b.device) - 0.5)
        return clamp_ste(round_ste(b), self.min_bits, self.max_bits)

    @property
    def code_range(self) -> CodeRange:
        return CodeRange(self.integer_bits(), self.signed, narrow=True)

    def alpha(self) -> Tensor:
        return F.softplus(self.alpha_param).clamp(min=MIN_ALPHA)

    def step(self) -> Tensor:
        """The float32 step of the hard path, ``alpha / n``: the exported scale."""
        n = self.code_range.qmax
        return (self.alpha().detach().float() / n).float()

    # -- initialisation -------------------------------------------------------------------------
    def init_values(self, x: Tensor) -> dict[str, Tensor]:
        # Weights: alpha = max|w| (official).  Activations: the 99.9th percentile of |x| from data
        # (the official code uses constants 6 / 3; data keeps low-bit codes spread over the range).
        # With init_method "mse" (calibrate()'s default) alpha then moves to the MSE-optimal step times n:
        # at 2-3 bits a percentile boundary rounds most of a heavy-tailed tensor to zero.
        absx = sample_abs(x)
        alpha = absx.max() if self.role == "weight" else torch.quantile(absx, 0.999)
        if self.init_method == "mse":
            r = self.code_range
            alpha = mse_step_search(x, alpha.clamp(min=1e-3) / r.qmax, r.qmin, r.qmax, None) * r.qmax
        return {"alpha": alpha.clamp(min=1e-3)}

    def apply_init(self, values: dict[str, Tensor]) -> None:
        self.alpha_param.copy_(softplus_inverse(values["alpha"].to(self.alpha_param)))

    # -- forward --------------------------------------------------------------------------------
    def fake_quant(self, x: Tensor) -> Tensor:
        if not self.training:
            r = self.code_range
            return fake_quant(x, self.step().to(x.device), r.qmin, r.qmax)
        bits = self._train_bits()
        n = levels_for_bits(bits, self.signed)
        alpha = self.alpha()
        if self._hard:
            qmax = self.code_range.qmax  # hard mode: the width is frozen
            return fake_quant(x, alpha / n, -qmax if self.signed else 0, qmax)
        lo = -alpha if self.signed else torch.zeros_like(alpha)
        clipped = torch.minimum(torch.maximum(x, lo), alpha)
        delta = alpha / n
        with torch.no_grad():
            in_range = (x >= lo) & (x <= alpha)
            noise = rounding_noise(x / delta, in_range)
        return clipped + noise * delta

    def codes(self, x: Tensor) -> Tensor:
        self.require_initialized()
        r = self.code_range
        return quantize_codes(x, self.step().to(x.device), r.qmin, r.qmax)

    def finalize(self) -> None:
        """Switch to the hard quantizer with straight-through gradients and freeze the integer
        bit-width; alpha (and the layer's weights / BatchNorm) stay trainable."""
        self.frozen_bits.fill_(self.integer_bits())
        self.theta.requires_grad_(False)
        self.hard.fill_(True)
        self.refresh_flags()

    def describe(self) -> QuantSpec:
        return self._spec("uniform", self.step(), None)

    def extra_repr(self) -> str:
        learned = "learned" if int(self.frozen_bits) == 0 else "fixed"
        return f"{super().extra_repr()}, bits {learned} in [{self.min_bits}, {self.max_bits}]"
