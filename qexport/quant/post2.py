"""POST as the authors' public code computes it (SENGEL13/ASQ-POST): base-2 levels, ``2^b + 1`` of them.

Levels ``alpha * {0, ±1, ±2^-1, ..., ±2^-(2^(b-1) - 1)}``: 9 at 3 bits, 17 at 4 bits (smallest
magnitude 2^-7), one magnitude more than POT.  ``alpha`` is per output channel; ``w / alpha`` is clamped
to [-1, 1] and projected onto the nearest level in linear distance.  At an exact midpoint between two
levels the larger magnitude wins (what the public code was seen to pick; a rare case, one weight in
millions).  Training is POST's: straight-through gradients, alpha's scaled by ``1/sqrt(numel/Cout)``.

Codes are signed level indices ``c``: ``|c| = j >= 1`` is the magnitude ``2^-(M - j)`` with
``M = 2^(b-1)`` magnitudes, so the codes need ``b + 1`` bits as sign + index (5 at 4 bits).  Exact
integer form: level ``±j`` is ``±2^(j-1)`` on the grid ``alpha * 2^-(M-1)``, i.e. integer weights up
to ±8 at 3 bits (int8) and ±128 at 4 bits (int16 storage: a float convolution of exact values in
onnxruntime, an integer one in the eval forward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .core import CodeRange
from .post import PostQuantizer


@dataclass(frozen=True)
class LevelIndexRange(CodeRange):
    """Signed level indices ``-2^(bits-1) .. 2^(bits-1)`` of a ``bits``-wide base-2 POST: ``2^bits + 1``
    codes (``bits`` stays the nominal width a user trains at)."""

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1))

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1)


class Post2Quantizer(PostQuantizer):
    method = "post2"
    base: ClassVar[float] = 2.0

    def __init__(self, bits: int, channels: int) -> None:
        super().__init__(bits, channels)
        self._range = LevelIndexRange(bits, signed=True, narrow=True)
        count = self._range.qmax  # non-zero magnitudes M: 1, 2^-1, ..., 2^-(M-1)
        mags = [0.0] + [2.0 ** -(count - j) for j in range(1, count + 1)]
        self.register_buffer("magnitudes", torch.tensor(mags, dtype=torch.float32), persistent=False)

    def _level_codes(self, v: Tensor) -> Tensor:
        """Signed level index of the nearest level to ``v`` (clamped to [-1, 1]); a tie goes to the
        larger magnitude.  Midpoints of powers of two are exact in float32, and so are the distances
        to the two neighbouring levels (Sterbenz), so this is the argmin of the linear distance."""
        mags = self.magnitudes.to(v.device)
        midpoints = (mags[1:] + mags[:-1]) / 2
        idx = torch.bucketize(v.abs(), midpoints, right=True)
        return torch.where(v < 0, -idx, idx)

    def integer_weight(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """Level index ``±j`` is ``±2^(j-1)`` times ``alpha * 2^-(M-1)``: exact integer weights."""
        c = self.codes(w)
        ints = torch.where(c == 0, torch.zeros_like(c), torch.sign(c) * torch.exp2(c.abs() - 1))
        top = self._range.qmax - 1
        return ints, (self.alpha.detach().clamp(min=1e-8) * 2.0**-top).float()
