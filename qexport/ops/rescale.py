"""``qexport.Rescale``: an integer matmul's int32 sums to float, scaled per output column (the weight
steps), per row (an ASQ quantizer's per-token step) and offset by the bias, in one pass.  The exporter
writes it after the MatMulInteger of an ASQ linear layer with a bias, in place of the four float passes
(Cast, Mul, Mul, Add) it wrote before, which onnxruntime does not fuse (its MatMulIntegerToFloat takes
one input step, not one per row).

Inputs
  acc       int32 [..., N]  the sums
  w_scale   float32 [N]     each output column's weight step
  row_step  float32 [..., 1]  each row's input step: acc's shape with its last dimension 1
  bias      float32 [N]
Output
  y float32 [..., N] = float(acc) * w_scale * row_step + bias, in that order, each operation rounded
  to float32 (no fused multiply-add)
"""

from __future__ import annotations

import numpy as np

from .domain import op, qexport_function


@qexport_function
def Rescale(acc, w_scale, row_step, bias):
    return op.Add(op.Mul(op.Mul(op.Cast(acc, to=1), w_scale), row_step), bias)


def reference(acc: np.ndarray, w_scale: np.ndarray, row_step: np.ndarray, bias: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return (acc.astype(np.float32) * w_scale.astype(np.float32) * row_step.astype(np.float32)
                + bias.astype(np.float32)).astype(np.float32)  # fmt: skip
