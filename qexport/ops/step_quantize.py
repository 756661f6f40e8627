"""``qexport.StepQuantize``: quantize with a runtime step tensor, shared by both ASQ ops.

Inputs  x float32; step float32 broadcastable to x (per sample or per row); zero_point int8 / uint8 []
        (its type is the type of ``codes``; 0, or 128 in uint8 to store a signed range offset)
Attrs   qmin, qmax int
Outputs y = q * step (float32), codes = q + zero_point (the zero point's type)

``q = clip(round_half_even(x / step), qmin, qmax)``: a division by the float32 step, as
QuantizeLinear does.  NaN: where ``round(x / step)`` is NaN (x NaN, a NaN step, 0 / 0, inf / inf) y is
NaN and the stored code is 0 (onnxruntime's Cast of NaN to an 8-bit integer; the native kernels do
the same).
Div/Round/Clip rather than QuantizeLinear(axis=0): a per-sample DequantizeLinear scale feeding a Conv
is fused by onnxruntime into kernels that reject it at batch > 1 (research/onnxruntime.md), and a
per-row step is beyond QuantizeLinear's ``axis``.
"""

from __future__ import annotations

import numpy as np

from .domain import op, qexport_function


@qexport_function
def StepQuantize(x, step, zero_point, qmin: int, qmax: int):
    lo = op.Cast(op.Constant(value_int=qmin), to=1)
    hi = op.Cast(op.Constant(value_int=qmax), to=1)
    codes = op.Clip(op.Round(op.Div(x, step)), lo, hi)
    return op.Mul(codes, step), op.CastLike(op.Add(codes, op.Cast(zero_point, to=1)), zero_point)


def reference(x: np.ndarray, step: np.ndarray, qmin: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, codes as int64) in float32 arithmetic; a NaN gives y NaN and code 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        codes = np.clip(np.round(x / step), qmin, qmax).astype(np.float32)
        return codes * step, np.where(np.isnan(codes), 0, codes).astype(np.int64)
