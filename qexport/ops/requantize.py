"""``qexport.Requantize``: codes of one quantizer to codes of the next, never through a float tensor.
The exporter's rewrite pass forms it from DequantizeLinear [-> Relu] -> QuantizeLinear [-> Clip] of
constant scalar steps (a residual add's output read by the next conv's quantizer and by the next
add's), which it replaces exactly: the same float operations in the same order.

Inputs
  x_codes       int8/uint8 (any shape)
  x_scale       float32 []  their step
  x_zero_point  [] of x_codes' type
  y_scale       float32 []  the output quantizer's step
  y_zero_point  int8/uint8 []  its zero point; the output codes have its type
Attributes
  relu          0 or 1 (required): apply max(., 0) to the dequantized value
  qmin, qmax    the output code range (the Clip's bounds, or the type's range when there is none)
Output
  y_codes [x_codes' shape] = Clip(QuantizeLinear(Relu?(DequantizeLinear(x, x_scale, x_zero_point)),
                                  y_scale, y_zero_point), qmin, qmax)

An 8-bit input has 256 possible values: the native kernel computes the 256 output codes with those
float operations (QuantizeLinear divides and rounds half to even, as onnxruntime's MLAS does) and then
looks each input code up in that table.
"""

from __future__ import annotations

import numpy as np

from .domain import op, qexport_function


@qexport_function
def Requantize(x_codes, x_scale, x_zero_point, y_scale, y_zero_point, relu: int, qmin: int, qmax: int):
    x = op.DequantizeLinear(x_codes, x_scale, x_zero_point)
    floor = op.Where(op.Cast(op.Constant(value_int=relu), to=9), op.Constant(value_float=0.0),
                     op.Constant(value_float=float("-inf")))  # fmt: skip
    q = op.QuantizeLinear(op.Max(x, floor), y_scale, y_zero_point)
    return op.Clip(q, op.CastLike(op.Constant(value_int=qmin), q), op.CastLike(op.Constant(value_int=qmax), q))


def reference(x_codes: np.ndarray, x_scale: np.ndarray, x_zero_point: np.ndarray, y_scale: np.ndarray,
              y_zero_point: np.ndarray, relu: int, qmin: int, qmax: int) -> np.ndarray:  # fmt: skip
    x = (x_codes.astype(np.int32) - np.int32(x_zero_point)).astype(np.float32) * np.float32(x_scale)
    if relu:
        x = np.maximum(x, np.float32(0))
    t = np.clip(np.rint(x / np.float32(y_scale)) + np.float32(y_zero_point), qmin, qmax)
    return t.astype(np.asarray(y_zero_point).dtype)
