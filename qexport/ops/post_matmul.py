"""``qexport.PostMatMul``: matmul (a Linear layer) with POST weights, exact.

Inputs
  x_codes       int8/uint8 [..., K]      activation codes
  x_scale       float32 [] or [..., 1]   their step (per row for ASQ)
  w_codes       uint4 [K, M]             4-bit POST codes (post_weights.py), the transposed Linear weight
  w_scale       float32 [M]              ``alpha * 2^-E`` per output column
  bias          float32 [M]
  x_zero_point  the type of x_codes []   what the stored codes carry: 0, or uint8 128 for signed codes
                                         stored offset (the exporter's choice: onnxruntime's u8 x s8
                                         MatMulInteger is ~19x its s8 x s8 one on the CPUs here)
Attribute
  bits (2, 3, 4)
Output
  y float32 [..., M] = (acc_even + acc_odd * 0.70710677) * (x_scale * w_scale) + bias, with acc the
  integer sums of (x_codes - x_zero_point) times the decoded weights
"""

from __future__ import annotations

import numpy as np

from . import post_rescale, post_weights
from .domain import QX, op, qexport_function


@qexport_function
def PostMatMul(x_codes, x_scale, w_codes, w_scale, bias, x_zero_point, bits: int):
    w_even, w_odd = QX.PostWeights(op.Cast(w_codes, to=2), bits=bits)
    # one integer MatMul over both weight sets side by side (int8, |w| <= 8): each activation read once,
    # the weights constant-folded into an int8 GEMM's packed B; its int32 sums are exact in float32
    # while under 2^24 (the exporter checks the bound)
    acc = op.MatMulInteger(x_codes, op.Cast(op.Concat(w_even, w_odd, axis=1), to=3), x_zero_point)
    # the float combine, scales and bias: one native pass where the kernels are registered
    return QX.PostRescale(acc, x_scale, w_scale, bias)


def reference(x_codes: np.ndarray, x_scale: np.ndarray, w_codes: np.ndarray, w_scale: np.ndarray, bias: np.ndarray,
              bits: int, x_zero_point: int = 0) -> np.ndarray:  # fmt: skip
    even, odd = post_weights.reference(w_codes, bits)
    x = x_codes.astype(np.int64) - int(x_zero_point)
    return post_rescale.reference(np.concatenate([x @ even, x @ odd], axis=-1), x_scale, w_scale, bias)
