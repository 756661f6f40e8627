"""``qexport.AddRequant``: the exact residual add (``--adds exact``, the default with ASQ activations)
with the quantizer that reads its sum fused in: two code tensors in, the sum's codes out, in one pass
instead of two DequantizeLinear, a float Sum and a QuantizeLinear over float tensors.  The exporter's
rewrite pass forms it from DequantizeLinear, DequantizeLinear -> Sum -> QuantizeLinear [-> Clip] of
constant scalar steps, which it replaces exactly: the same float operations in the same order.
(Unlike onnxruntime's QLinearAdd, which rescales in fixed point and moves a few codes per million.)
A second pass folds a DequantizeLinear [-> Relu] of the sum's codes into the optional output ``y``
(the next ASQ quantizer's float input in a ResNet block), written in the same pass.

Inputs
  a_codes, b_codes           int8/uint8, shapes that broadcast (numpy rules)
  a_scale, b_scale           float32 []  their steps
  a_zero_point, b_zero_point [] of their codes' types
  y_scale                    float32 []  the sum's quantizer's step
  y_zero_point               int8/uint8 []  its zero point; the output codes have its type
Attributes
  qmin, qmax    the output code range (the Clip's bounds, or the type's range when there is none)
  relu          0 (default) or 1: y after max(., 0)
Outputs
  y_codes [broadcast shape] = Clip(QuantizeLinear(DequantizeLinear(a) + DequantizeLinear(b), y_scale,
                                   y_zero_point), qmin, qmax)
  y (optional) float32 [broadcast shape] = Relu?(DequantizeLinear(y_codes, y_scale, y_zero_point))
"""

from __future__ import annotations

import numpy as np

from .domain import op, qexport_function


@qexport_function
def AddRequant(a_codes, a_scale, a_zero_point, b_codes, b_scale, b_zero_point, y_scale, y_zero_point, qmin: int,
               qmax: int, relu: int = 0):  # fmt: skip
    # Sum, not Add: onnxruntime fuses DequantizeLinear x 2 -> Add -> QuantizeLinear into its QLinearAdd,
    # which rescales in fixed point (not exactly these float operations)
    a = op.DequantizeLinear(a_codes, a_scale, a_zero_point)
    total = op.Sum(a, op.DequantizeLinear(b_codes, b_scale, b_zero_point))
    q = op.QuantizeLinear(total, y_scale, y_zero_point)
    codes = op.Clip(q, op.CastLike(op.Constant(value_int=qmin), q), op.CastLike(op.Constant(value_int=qmax), q))
    # Max with 0 is Relu here: a dequantized code is never -0 or NaN
    floor = op.Where(op.Cast(op.Constant(value_int=relu), to=9), op.Constant(value_float=0.0),
                     op.Constant(value_float=float("-inf")))  # fmt: skip
    y = op.Max(op.DequantizeLinear(codes, y_scale, y_zero_point), floor)
    return codes, y


def _dequantize(codes: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    return (codes.astype(np.int32) - np.int32(zero_point)).astype(np.float32) * np.float32(scale)


def reference(a_codes: np.ndarray, a_scale: np.ndarray, a_zero_point: np.ndarray, b_codes: np.ndarray,
              b_scale: np.ndarray, b_zero_point: np.ndarray, y_scale: np.ndarray, y_zero_point: np.ndarray,
              qmin: int, qmax: int) -> np.ndarray:  # fmt: skip
    """float32 throughout; a NaN sum (inf - inf) gives qmin, as onnxruntime's QuantizeLinear (MLAS)."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = _dequantize(a_codes, a_scale, a_zero_point) + _dequantize(b_codes, b_scale, b_zero_point)
        t = np.rint(total / np.float32(y_scale))
    t = np.where(np.isnan(t), np.float32(qmin) - np.float32(y_zero_point), t)
    return np.clip(t + np.float32(y_zero_point), qmin, qmax).astype(np.asarray(y_zero_point).dtype)


def dequantized(y_codes: np.ndarray, y_scale: np.ndarray, y_zero_point: np.ndarray, relu: int) -> np.ndarray:
    """Output ``y``: the codes dequantized, after a ReLU when ``relu``."""
    y = _dequantize(y_codes, y_scale, y_zero_point)
    return np.maximum(y, np.float32(0)) if relu else y
