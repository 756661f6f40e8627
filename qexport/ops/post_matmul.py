"""``qexport.PostMatMul``: matmul (a Linear layer) with POST weights, exact.

Inputs
  x_codes  int8/uint8 [..., K]      activation codes (zero point 0)
  x_scale  float32 [] or [..., 1]   their step (per row for ASQ)
  w_codes  uint4 [K, M]             4-bit POST codes (post_weights.py), the transposed Linear weight
  w_scale  float32 [M]              ``alpha * 2^-E`` per output column
  bias     float32 [M]
Attribute
  bits (2, 3, 4)
Output
  y float32 [..., M] = (acc_even + acc_odd * 0.70710677) * (x_scale * w_scale) + bias
"""

from __future__ import annotations

import numpy as np

from . import post_weights
from .domain import QX, op, qexport_function


@qexport_function
def PostMatMul(x_codes, x_scale, w_codes, w_scale, bias, bits: int):
    w_even, w_odd = QX.PostWeights(op.Cast(w_codes, to=2), bits=bits)
    # one MatMul over both weight sets side by side: each activation read once, and no constant Mul
    # right after a MatMul (onnxruntime folds those into the weights)
    acc_even, acc_odd = op.Split(
        op.MatMul(op.Cast(x_codes, to=1), op.Concat(w_even, w_odd, axis=1)), axis=-1, num_outputs=2
    )
    acc = op.Add(acc_even, op.Mul(acc_odd, op.Constant(value_float=0.70710677)))
    return op.Add(op.Mul(acc, op.Mul(x_scale, w_scale)), bias)


def reference(x_codes: np.ndarray, x_scale: np.ndarray, w_codes: np.ndarray, w_scale: np.ndarray, bias: np.ndarray,
              bits: int) -> np.ndarray:  # fmt: skip
    even, odd = post_weights.reference(w_codes, bits)
    x = x_codes.astype(np.int64)
    acc = (x @ even).astype(np.float32) + (x @ odd).astype(np.float32) * post_weights.SQRT_HALF
    scale = (np.asarray(x_scale, np.float32) * w_scale.astype(np.float32)).astype(np.float32)
    return (acc * scale + bias.astype(np.float32)).astype(np.float32)
