"""``qexport.IntConvRequant``: ``IntConv`` with the quantizer that reads its output fused in: the conv
hands the next layer its codes, never a float tensor (no float output written and read back, no
separate QuantizeLinear and Clip pass).  The exporter's rewrite pass forms it from IntConv ->
QuantizeLinear (scalar step) [-> Clip], which it replaces exactly.

Inputs
  x_codes, x_scale, w_codes, w_scale, bias  as IntConv
  y_scale       float32 []  the output quantizer's step
  y_zero_point  int8/uint8 []  its zero point; the codes have its type
Attributes
  strides, pads, dilations, group, relu: as IntConv
  qmin, qmax    the code range (the Clip's bounds, or the type's range when there is no Clip)
Output
  y_codes int8/uint8 [N, M, H', W'] = Clip(QuantizeLinear(IntConv(...), y_scale, y_zero_point), qmin, qmax)

QuantizeLinear divides by the step and rounds half to even, as onnxruntime's MLAS does; the native
kernel does the same in the conv's epilogue, bit for bit.
"""

from __future__ import annotations

import numpy as np

from . import int_conv
from .domain import QX, op, qexport_function


@qexport_function
def IntConvRequant(x_codes, x_scale, w_codes, w_scale, bias, y_scale, y_zero_point, strides: list[int],
                   pads: list[int], dilations: list[int], group: int, relu: int, qmin: int, qmax: int):  # fmt: skip
    y = QX.IntConv(x_codes, x_scale, w_codes, w_scale, bias, strides=strides, pads=pads, dilations=dilations,
                   group=group, relu=relu)  # fmt: skip
    q = op.QuantizeLinear(y, y_scale, y_zero_point)
    return op.Clip(q, op.CastLike(op.Constant(value_int=qmin), q), op.CastLike(op.Constant(value_int=qmax), q))


def requantize(y: np.ndarray, y_scale: np.ndarray, y_zero_point: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    """QuantizeLinear (divide, round half to even, add the zero point, saturate) then Clip."""
    t = np.rint(y.astype(np.float32) / np.float32(y_scale))
    t = np.where(np.isnan(t), np.float32(qmin) - np.float32(y_zero_point), t)  # MLAS: NaN -> the lowest code
    return np.clip(t + np.int64(y_zero_point), qmin, qmax).astype(np.asarray(y_zero_point).dtype)


def reference(x_codes: np.ndarray, x_scale: np.ndarray, w_codes: np.ndarray, w_scale: np.ndarray, bias: np.ndarray,
              y_scale: np.ndarray, y_zero_point: np.ndarray, strides: list[int], pads: list[int],
              dilations: list[int], group: int, relu: int, qmin: int, qmax: int) -> np.ndarray:  # fmt: skip
    y = int_conv.reference(x_codes, x_scale, w_codes, w_scale, bias, strides, pads, dilations, group, relu)
    return requantize(y, y_scale, y_zero_point, qmin, qmax)
