"""``qexport.PostWeights``: POST weight codes -> the two integer weight tensors of the exact form.

A POST weight is ``alpha * sign * sqrt2^-k`` with ``k = 0 .. M - 1`` (``M = 2^(bits-1) - 1``
magnitudes) or zero.  Stored as one 4-bit code per weight (uint4 initializers, two per byte):
``code = j + 8 * negative`` with ``j = M - k`` the magnitude index (``j = 0`` is zero; post.py's
signed level index is ``±j``).  With ``E = (M - 1) // 2`` every magnitude is an integer power of
two times 1 or 1/sqrt2:

    sqrt2^-k = 2^-E * 2^(E - floor(k/2)) * (1 if k is even else 1/sqrt2)

so ``w_even`` holds ``sign * 2^(E - floor(k/2))`` where k is even and ``w_odd`` the same where k is
odd (at most ``2^E`` = 8 at 4 bits).  Both convolutions / matmuls then accumulate exact integers and
are combined once: ``acc_even + acc_odd / sqrt2``, times ``2^-E * alpha`` (folded into ``w_scale``).

Input   codes (the uint4 codes cast to another integer or float type: onnxruntime refuses a uint4
        input to a nested function)
Attr    bits int (2, 3 or 4)
Outputs w_even, w_odd float32, same shape, integer values
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx.numpy_helper

from ..errors import QexportError
from .domain import op, qexport_function

SQRT_HALF = np.float32(1.0 / np.sqrt(2.0))  # 0.70710677, the one float factor of the combine
BITS = (2, 3, 4)


@qexport_function
def PostWeights(codes, bits: int):
    # the two integer tables over all 16 codes (cheap), then one gather per weight
    two = op.Constant(value_float=2.0)
    eight = op.Constant(value_float=8.0)
    zero = op.Constant(value_float=0.0)
    one = op.Constant(value_float=1.0)
    table = op.Range(zero, op.Constant(value_float=16.0), one)
    magnitudes = op.Sub(op.Pow(two, op.Sub(op.Cast(op.Constant(value_int=bits), to=1), one)), one)
    shift = op.Floor(op.Div(op.Sub(magnitudes, one), two))
    negative = op.GreaterOrEqual(table, eight)
    j = op.Where(negative, op.Sub(table, eight), table)
    k = op.Sub(magnitudes, j)
    half = op.Floor(op.Div(k, two))
    magnitude = op.Where(op.Greater(j, zero), op.Pow(two, op.Sub(shift, half)), zero)
    w = op.Where(negative, op.Neg(magnitude), magnitude)
    odd = op.Equal(op.Sub(k, op.Mul(half, two)), one)
    index = op.Cast(codes, to=6)
    return op.Gather(op.Where(odd, zero, w), index), op.Gather(op.Where(odd, w, zero), index)


def magnitudes(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def shift(bits: int) -> int:
    """E: the power of two that makes every magnitude's integer factor whole."""
    return (magnitudes(bits) - 1) // 2


def pack(level_codes: np.ndarray, bits: int) -> np.ndarray:
    """post.py's signed level indices -> 4-bit codes (uint8 values 0..15)."""
    if bits not in BITS:
        raise QexportError(f"POST weights are stored at 2, 3 or 4 bits, not {bits}")
    c = np.asarray(level_codes).astype(np.int64)
    if np.abs(c).max(initial=0) > magnitudes(bits):
        raise QexportError(f"POST level codes exceed the {bits}-bit range ±{magnitudes(bits)}")
    return (np.abs(c) + 8 * (c < 0)).astype(np.uint8)


def uint4_initializer(name: str, codes: np.ndarray) -> onnx.TensorProto:
    """A uint4 initializer (two codes per byte in the file)."""
    return onnx.numpy_helper.from_array(np.ascontiguousarray(codes).astype(ml_dtypes.uint4), name)


def reference(codes: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(w_even, w_odd) as int64 from 4-bit codes."""
    c = np.asarray(codes).astype(np.int64)
    negative, j = c >= 8, c % 8
    k = magnitudes(bits) - j
    w = np.where(j > 0, 2 ** np.maximum(shift(bits) - k // 2, 0), 0) * np.where(negative, -1, 1)
    odd = (k % 2) == 1
    return np.where(odd, 0, w), np.where(odd, w, 0)


def accumulator_bound(codes: np.ndarray, bits: int, x_max: int) -> int:
    """Largest |partial sum| either accumulation can reach for inputs with |code| <= x_max; the float
    function body is exact while it stays below 2^24.  ``codes``: [out, ...] for conv, [K, out] for
    matmul (pass the transpose)."""
    even, odd = reference(codes, bits)
    per_out = np.maximum(np.abs(even).reshape(len(even), -1).sum(1), np.abs(odd).reshape(len(odd), -1).sum(1))
    return int(per_out.max(initial=0)) * x_max
