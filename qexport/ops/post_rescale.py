"""``qexport.PostRescale``: POST's integer matmul sums to float in one pass: the even and odd sqrt-2
sums combined (``even + odd * 0.70710677``), times the input step and the column's weight scale, plus
the bias.  PostMatMul's body calls it after its one MatMulInteger over both weight sets; it replaces
the seven float operations (Cast, Split, Mul, Add, Mul, Mul, Add) that body ran before, which
onnxruntime does not fuse.

Inputs
  acc      int32 [..., 2M]  the even sums in columns 0 .. M-1, the odd ones in M .. 2M-1
  x_scale  float32 [] or [..., 1]  the input step (one, or one per row: acc's shape with its last
           dimension 1)
  w_scale  float32 [M]
  bias     float32 [M]
Output
  y float32 [..., M] = (float(even) + float(odd) * 0.70710677) * (x_scale * w_scale) + bias, in that
  order, each operation rounded to float32 (no fused multiply-add)
"""

from __future__ import annotations

import numpy as np

from .domain import op, qexport_function
from .post_weights import SQRT_HALF


@qexport_function
def PostRescale(acc, x_scale, w_scale, bias):
    acc_even, acc_odd = op.Split(op.Cast(acc, to=1), axis=-1, num_outputs=2)
    combined = op.Add(acc_even, op.Mul(acc_odd, op.Constant(value_float=0.70710677)))
    return op.Add(op.Mul(combined, op.Mul(x_scale, w_scale)), bias)


def reference(acc: np.ndarray, x_scale: np.ndarray, w_scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    m = acc.shape[-1] // 2
    f = acc.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        combined = f[..., :m] + f[..., m:] * SQRT_HALF
        scale = (np.asarray(x_scale, np.float32) * w_scale.astype(np.float32)).astype(np.float32)
        return (combined * scale + bias.astype(np.float32)).astype(np.float32)
