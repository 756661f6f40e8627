"""``qexport.AsqQuantizeRows``: ASQ activation quantization of a Linear input, one step per row
(per sample for ``[N, C]``, per token for ``[N, T, C]``).

Inputs
  x           float32 [..., C]
  step        float32 []
  zero_point  int8 or uint8 []       the type of ``codes``: 0, or 128 in uint8 for a signed range stored
                                     offset (what onnxruntime's MatMulInteger runs fastest: u8 x s8)
  w1, b1, w2, b2                     the adapter (asq_adapter.py), applied to each row of x
Attributes
  qmin, qmax  int
Outputs
  y           float32 [..., C]       ``codes * row_step``
  codes       int8/uint8 [..., C]    the codes plus zero_point
  row_step    float32 [..., 1]       ``step * beta`` of each row

Same arithmetic as AsqQuantize without the pooling (codes and y as in step_quantize.py).
"""

from __future__ import annotations

import numpy as np

from . import asq_adapter, step_quantize
from .domain import QX, op, qexport_function


@qexport_function
def AsqQuantizeRows(x, step, zero_point, w1, b1, w2, b2, qmin: int, qmax: int):
    row_step = op.Mul(step, QX.AsqAdapter(x, w1, b1, w2, b2))
    y, codes = QX.StepQuantize(x, row_step, zero_point, qmin=qmin, qmax=qmax)
    return y, codes, row_step


def reference(x: np.ndarray, step: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray,
              qmin: int, qmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(y, codes as int64, row_step) in float32 arithmetic."""
    row_step = (np.float32(step) * asq_adapter.reference(x, w1, b1, w2, b2)).astype(np.float32)
    return (*step_quantize.reference(x, row_step, qmin, qmax), row_step)
