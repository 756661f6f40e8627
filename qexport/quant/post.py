"""POST: weights on powers of the square root of two (arXiv 2504.17263, paper semantics).

Levels ``alpha * {0, ±base^0, ±base^-1, ..., ±base^-(2^(b-1) - 2)}`` with ``base = sqrt 2``: sign
plus ``2^(b-1) - 1`` magnitudes plus zero, ``2^b - 1`` levels that fit a b-bit sign/magnitude code
(7 at 3 bits, 15 at 4 bits).  ``alpha`` is per output channel, initialised at the 99th percentile of
``|w|``; ``w / alpha`` is clamped to [-1, 1] and projected onto the nearest level in linear distance
(ties to the smaller magnitude); straight-through gradients, alpha's scaled by ``1/sqrt(numel/Cout)``.

The public code uses base 2 and 2^b + 1 levels; qexport follows the paper and offers base 2 as POT.

Codes are signed level indices ``c``: ``c = 0`` is zero, ``|c| = j >= 1`` is the magnitude
``base^-(M - j)`` with ``M = 2^(b-1) - 1`` magnitudes, so ``|c| = M`` is alpha itself.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..errors import QexportError
from .base import Quantizer, QuantSpec, Role
from .core import CodeRange, grad_scale, sample_abs

MIN_ALPHA = 1e-8
SUPPORTED_BITS = (2, 3, 4)  # the paper evaluates 3 and 4; at 2 bits POST = POT = ternary


class PostQuantizer(Quantizer):
    method = "post"
    kind = "levels"
    base: ClassVar[float] = math.sqrt(2.0)

    def __init__(self, bits: int, channels: int, role: Role = "weight") -> None:
        super().__init__(role)
        if bits not in SUPPORTED_BITS:
            raise QexportError(
                f"{self.method.upper()} weights are defined at {SUPPORTED_BITS} bits, not {bits}: "
                "choose one of those or a uniform quantizer (lsq, nipq)"
            )
        self._range = CodeRange(bits, signed=True, narrow=True)
        self.channels = channels
        self.alpha = nn.Parameter(torch.ones(channels))
        count = self._range.qmax  # number of non-zero magnitudes M
        # ascending: 0, base^-(M-1), ..., base^-1, 1  (index j <-> |code| j)
        mags = [0.0] + [self.base ** -(count - j) for j in range(1, count + 1)]
        self.register_buffer("magnitudes", torch.tensor(mags, dtype=torch.float32), persistent=False)

    @property
    def code_range(self) -> CodeRange:
        return self._range

    def levels(self) -> Tensor:
        """All levels of ``w / alpha`` in ascending order."""
        return torch.cat([-self.magnitudes.flip(0)[:-1], self.magnitudes])

    def _alpha_for(self, w: Tensor) -> Tensor:
        return self.alpha.clamp(min=MIN_ALPHA).view(-1, *([1] * (w.dim() - 1)))

    def _level_codes(self, v: Tensor) -> Tensor:
        """Signed level index of the nearest level to ``v`` (already clamped to [-1, 1])."""
        mags = self.magnitudes.to(v.device)
        midpoints = (mags[1:] + mags[:-1]) / 2
        idx = torch.bucketize(v.abs(), midpoints, right=False)  # a tie goes to the smaller magnitude
        return torch.where(v < 0, -idx, idx)

    def project(self, v: Tensor) -> Tensor:
        codes = self._level_codes(v)
        return torch.sign(codes).to(v.dtype) * self.magnitudes.to(v.device)[codes.abs()]

    def init_values(self, w: Tensor) -> dict[str, Tensor]:
        flat = w.detach().abs().float().reshape(w.shape[0], -1)
        alpha = torch.stack([torch.quantile(sample_abs(row), 0.99) for row in flat])
        return {"alpha": alpha.clamp(min=1e-6)}

    def apply_init(self, values: dict[str, Tensor]) -> None:
        self.alpha.copy_(values["alpha"])

    def fake_quant(self, w: Tensor) -> Tensor:
        alpha = self._alpha_for(w)
        if self.training:
            alpha = grad_scale(alpha, 1.0 / math.sqrt(w.numel() / w.shape[0]))
        v = torch.clamp(w / alpha, -1.0, 1.0)
        q = self.project(v.detach()) + (v - v.detach())  # straight-through
        return q * alpha

    def codes(self, w: Tensor) -> Tensor:
        self.require_initialized()
        with torch.no_grad():
            return self._level_codes(torch.clamp(w / self._alpha_for(w), -1.0, 1.0)).float()

    def describe(self) -> QuantSpec:
        return self._spec("levels", self.alpha.clamp(min=MIN_ALPHA), 0, base=self.base)
