"""POT: power-of-two weight levels, ``alpha * {0, ±2^0, ±2^-1, ..., ±2^-(2^(b-1) - 2)}``.

The same quantizer as POST (same level count, same per-channel alpha, projection and gradients)
with base 2 instead of sqrt 2: POT spends its levels on tiny magnitudes, which is why the paper
prefers sqrt 2.
"""

from __future__ import annotations

from typing import ClassVar

from .post import PostQuantizer


class PotQuantizer(PostQuantizer):
    method = "pot"
    base: ClassVar[float] = 2.0
