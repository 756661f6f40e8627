"""``qexport.ReluBounds``: the ReLU / ReLU6 a conv op applies to its float output (``relu`` attribute of
IntConv and PostConv), as a function their bodies call.

Input y float32; attribute relu: 0 (y), 1 (max(y, 0)) or 6 (min(max(y, 0), 6)).  NaN stays NaN, as
in onnxruntime's Max / Min and numpy's maximum / minimum; so does the native kernels' epilogue.
"""

from __future__ import annotations

import numpy as np

from .domain import op, qexport_function


@qexport_function
def ReluBounds(y, relu: int):
    kind = op.Constant(value_int=relu)
    floor = op.Where(op.Cast(kind, to=9), op.Constant(value_float=0.0), op.Constant(value_float=float("-inf")))
    ceiling = op.Where(op.Equal(kind, op.Constant(value_int=6)), op.Constant(value_float=6.0),
                       op.Constant(value_float=float("inf")))  # fmt: skip
    return op.Min(op.Max(y, floor), ceiling)


def reference(y: np.ndarray, relu: int) -> np.ndarray:
    if relu not in (0, 1, 6):
        raise ValueError(f"relu={relu} must be 0, 1 or 6")
    y = np.maximum(y, np.float32(0)) if relu else y
    return np.minimum(y, np.float32(6)) if relu == 6 else y
