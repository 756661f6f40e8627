"""POT: power-of-two weight levels, ``alpha * {0, ±2^0, ±2^-1, ..., ±2^-(2^(b-1) - 2)}``.

The same quantizer as POST (same level count, same per-channel alpha, projection and gradients)
with base 2 instead of sqrt 2: POT spends its levels on tiny magnitudes, which is why the paper
prefers sqrt 2.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .post import PostQuantizer


class PotQuantizer(PostQuantizer):
    method = "pot"
    base: ClassVar[float] = 2.0

    def integer_weight(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """Powers of two are integers on a finer grid: level index ``±j`` is ``±2^(j-1)`` times
        ``alpha * 2^-(M-1)`` (``M`` magnitudes), so POT runs as int8 weights (at most ±64 at 4 bits)
        in the standard integer kernels, exactly."""
        c = self.codes(w)
        top = self.code_range.qmax - 1
        ints = torch.where(c == 0, torch.zeros_like(c), torch.sign(c) * torch.exp2(c.abs() - 1))
        return ints, (self.alpha.detach().clamp(min=1e-8) * 2.0**-top).float()
