"""``qexport.AsqQuantize``: ASQ activation quantization of a conv input, one step per sample.

Inputs
  x           float32 [N, C, H, W]
  step        float32 []             the learned step ``s``
  zero_point  int8 or uint8 []       always 0; its type is the type of ``codes`` (as in QuantizeLinear)
  w1, b1, w2, b2                     the adapter (asq_adapter.py)
Attributes
  qmin, qmax  int                    the code range
Outputs
  y           float32 [N, C, H, W]   ``codes * sample_step`` (optional: the exporter leaves it out where
                                     the consumer takes the codes)
  codes       int8/uint8 [N, C, H, W]
  sample_step float32 [N, 1, 1, 1]   ``step * beta_n``, beta_n = adapter(mean over H, W of x_n)

Codes and y as in step_quantize.py.  NaN (asq_adapter.py): a NaN in x or in the adapter's weights
makes that sample's step NaN, its y NaN and its codes 0.  ``step`` must be a positive finite number and
``zero_point`` 0 (the native kernel rejects anything else).  With H * W = 0 the channel means are
0 (onnxruntime's ReduceMean of nothing; numpy's mean would be NaN), as the native kernel computes.
"""

from __future__ import annotations

import numpy as np

from . import asq_adapter, step_quantize
from .domain import QX, op, qexport_function


@qexport_function
def AsqQuantize(x, step, zero_point, w1, b1, w2, b2, qmin: int, qmax: int):
    feats = op.ReduceMean(x, op.Constant(value_ints=[2, 3]), keepdims=0)
    beta = QX.AsqAdapter(feats, w1, b1, w2, b2)
    sample_step = op.Mul(step, op.Unsqueeze(beta, op.Constant(value_ints=[2, 3])))
    y, codes = QX.StepQuantize(x, sample_step, zero_point, qmin=qmin, qmax=qmax)
    return y, codes, sample_step


def reference(x: np.ndarray, step: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray,
              qmin: int, qmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(y, codes as int64, sample_step) in float32 arithmetic."""
    beta = asq_adapter.reference(x.mean(axis=(2, 3), dtype=np.float32), w1, b1, w2, b2)
    sample_step = (np.float32(step) * beta).reshape(-1, 1, 1, 1).astype(np.float32)
    return (*step_quantize.reference(x, sample_step, qmin, qmax), sample_step)
