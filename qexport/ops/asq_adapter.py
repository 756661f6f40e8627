"""``qexport.AsqAdapter``: the ASQ adapter MLP, shared by both ASQ quantize ops.

Inputs  feats float32 [..., C]; w1 [C, H1], b1 [H1], w2 [H1, 1], b2 [1] (transposed Linear weights;
        a one-layer adapter ``Linear(C, 1)`` is w1 = its weight, b1 = its bias, w2 = [[1]], b2 = [0],
        which computes exactly the same numbers since relu(relu(z) * 1 + 0) = relu(z))
Output  beta  float32 [..., 1] = max(relu(relu(feats @ w1 + b1) @ w2 + b2), 1e-8)

NaN propagates: a NaN in feats or in the weights makes beta NaN (Relu and Max keep NaN, as
onnxruntime's do and numpy's maximum), never the 1e-8 floor; the quantizer's step is then NaN.
"""

from __future__ import annotations

import numpy as np

from .domain import op, qexport_function

MIN_BETA = np.float32(1e-8)


@qexport_function
def AsqAdapter(feats, w1, b1, w2, b2):
    hidden = op.Relu(op.Add(op.MatMul(feats, w1), b1))
    return op.Max(op.Relu(op.Add(op.MatMul(hidden, w2), b2)), op.Constant(value_float=1e-8))


def reference(feats: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    hidden = np.maximum(feats @ w1 + b1, np.float32(0))
    return np.maximum(np.maximum(hidden @ w2 + b2, np.float32(0)), MIN_BETA).astype(np.float32)
