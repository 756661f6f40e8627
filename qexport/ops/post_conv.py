"""``qexport.PostConv``: 2-D convolution with POST weights, exact.

Inputs
  x_codes  int8/uint8 [N, C, H, W]  activation codes (zero point 0)
  x_scale  float32 [] or [N, 1, 1, 1] their step (per sample for ASQ)
  w_codes  uint4 [M, C/group, kh, kw] 4-bit POST codes (post_weights.py)
  w_scale  float32 [M]              ``alpha * 2^-E`` per output channel (BatchNorm folded in)
  bias     float32 [M]
Attributes
  bits (2, 3, 4), strides, pads, dilations, group: as in Conv
  relu     0 (default), 1 or 6: the ReLU / ReLU6 that follows the conv (relu_bounds.py).  The
           exporter always writes it: onnx's ReferenceEvaluator does not apply a function's defaults
Output
  y float32 [N, M, H', W'] = (acc_even + acc_odd * 0.70710677) * (x_scale * w_scale) + bias, then
  the ReLU

``acc_even`` / ``acc_odd`` are the integer convolutions of the codes with ``w_even`` / ``w_odd``.
The body computes them with one float Conv, which is exact because every partial sum is an integer
below 2^24 (the exporter checks this bound per layer); a native kernel accumulates in int32.
"""

from __future__ import annotations

import numpy as np

from . import post_weights, relu_bounds
from .domain import QX, op, qexport_function


@qexport_function
def PostConv(x_codes, x_scale, w_codes, w_scale, bias, bits: int, strides: list[int], pads: list[int],
             dilations: list[int], group: int, relu: int = 0):  # fmt: skip
    w_even, w_odd = QX.PostWeights(op.Cast(w_codes, to=2), bits=bits)
    # one Conv with both weight sets as output channels (per group: even block, then odd block), so
    # each activation is read once and no constant Mul sits right after a Conv (onnxruntime would
    # fold it into the weights, which are then no longer integers)
    one = op.Constant(value_ints=[1])
    two = op.Constant(value_ints=[2])
    groups = op.Reshape(op.Constant(value_int=group), one)
    dims = op.Shape(w_even)
    out = op.Slice(dims, op.Constant(value_ints=[0]), one)
    per_group = op.Div(out, groups)
    rest = op.Slice(dims, one, op.Constant(value_ints=[4]))
    blocks = op.Concat(groups, one, per_group, rest, axis=0)
    w_both = op.Concat(op.Reshape(w_even, blocks), op.Reshape(w_odd, blocks), axis=1)
    w_both = op.Reshape(w_both, op.Concat(op.Mul(out, two), rest, axis=0))
    acc_both = op.Conv(op.Cast(x_codes, to=1), w_both, strides=strides, pads=pads, dilations=dilations, group=group)
    shape = op.Shape(acc_both)
    batch = op.Slice(shape, op.Constant(value_ints=[0]), one)
    spatial = op.Slice(shape, two, op.Constant(value_ints=[4]))
    split = op.Reshape(acc_both, op.Concat(batch, groups, two, per_group, spatial, axis=0))
    flat = op.Concat(batch, out, spatial, axis=0)
    axis = op.Constant(value_ints=[2])
    acc_even = op.Reshape(op.Slice(split, op.Constant(value_ints=[0]), one, axis), flat)
    acc_odd = op.Reshape(op.Slice(split, one, two, axis), flat)
    acc = op.Add(acc_even, op.Mul(acc_odd, op.Constant(value_float=0.70710677)))
    channel = op.Constant(value_ints=[1, 2])
    y = op.Add(op.Mul(acc, op.Mul(x_scale, op.Unsqueeze(w_scale, channel))), op.Unsqueeze(bias, channel))
    return QX.ReluBounds(y, relu=relu)


def conv_int(x: np.ndarray, w: np.ndarray, strides: list[int], pads: list[int], dilations: list[int],
             group: int) -> np.ndarray:  # fmt: skip
    """Integer 2-D convolution in int64 (a readable reference, not fast)."""
    n, _, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    (sh, sw), (dh, dw) = strides, dilations
    ho = (h + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, m, ho, wo), np.int64)
    mg = m // group
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]
            for g in range(group):
                out[:, g * mg : (g + 1) * mg] += np.einsum(
                    "nchw,oc->nohw", patch[:, g * cg : (g + 1) * cg], w[g * mg : (g + 1) * mg, :, i, j].astype(np.int64)
                )
    return out


def reference(x_codes: np.ndarray, x_scale: np.ndarray, w_codes: np.ndarray, w_scale: np.ndarray,
              bias: np.ndarray, bits: int, strides: list[int], pads: list[int], dilations: list[int],
              group: int, relu: int = 0) -> np.ndarray:  # fmt: skip
    even, odd = post_weights.reference(w_codes, bits)
    acc_even = conv_int(x_codes, even, strides, pads, dilations, group).astype(np.float32)
    acc_odd = conv_int(x_codes, odd, strides, pads, dilations, group).astype(np.float32)
    acc = acc_even + acc_odd * post_weights.SQRT_HALF
    scale = np.asarray(x_scale, np.float32) * w_scale.astype(np.float32).reshape(-1, 1, 1)
    return relu_bounds.reference((acc * scale + bias.astype(np.float32).reshape(-1, 1, 1)).astype(np.float32), relu)
