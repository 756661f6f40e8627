"""``qexport.IntConv``: 2-D convolution of integer activation codes with integer weights, for a conv
whose input step onnxruntime's QLinearConv cannot take (ASQ: one step per sample) or whose output
feeds no single quantizer (a ResNet stem: ReLU -> MaxPool -> two quantizers), which QDQ leaves float.

Inputs
  x_codes  int8/uint8 [N, C, H, W]  activation codes (zero point 0)
  x_scale  float32 [] or [N, 1, 1, 1] their step (per sample for ASQ)
  w_codes  int8 [M, C/group, kh, kw] weight codes (BatchNorm sign folded in)
  w_scale  float32 [M]              per output channel (BatchNorm folded in)
  bias     float32 [M]
Attributes
  strides, pads, dilations, group: as in Conv
  relu     0, 1 or 6: apply the ReLU (1) or ReLU6 (6) that follows the conv (saves a pass over the
           float output)
Output
  y float32 [N, M, H', W'] = acc * (x_scale * w_scale) + bias, then max(y, 0) with relu=1 and
  min(max(y, 0), 6) with relu=6; acc = the integer convolution.  The ReLU keeps NaN (a NaN w_scale or
  bias gives NaN, not 0), as onnxruntime's Max / Min and numpy's maximum / minimum do, and so does
  the native kernel.

The body computes ``acc`` with a float Conv of the codes (exact while every partial sum stays below
2^24, which 2- to 4-bit layers do; 8-bit ones round like any float conv); the native kernel
accumulates in int32.
"""

from __future__ import annotations

import numpy as np

from . import relu_bounds
from .domain import QX, op, qexport_function
from .post_conv import conv_int


@qexport_function
def IntConv(x_codes, x_scale, w_codes, w_scale, bias, strides: list[int], pads: list[int], dilations: list[int],
            group: int, relu: int):  # fmt: skip
    acc = op.Conv(op.Cast(x_codes, to=1), op.Cast(w_codes, to=1), strides=strides, pads=pads, dilations=dilations,
                  group=group)  # fmt: skip
    channel = op.Constant(value_ints=[1, 2])
    # the scale first: onnxruntime folds a constant in Mul's second input into the Conv's weights
    # (ConvMulFusion, then ConvAddFusion), and its float conv of non-integer weights is no longer exact
    y = op.Add(op.Mul(op.Mul(x_scale, op.Unsqueeze(w_scale, channel)), acc), op.Unsqueeze(bias, channel))
    return QX.ReluBounds(y, relu=relu)


def reference(x_codes: np.ndarray, x_scale: np.ndarray, w_codes: np.ndarray, w_scale: np.ndarray, bias: np.ndarray,
              strides: list[int], pads: list[int], dilations: list[int], group: int,
              relu: int = 0) -> np.ndarray:  # fmt: skip
    acc = conv_int(x_codes, w_codes, strides, pads, dilations, group).astype(np.float32)
    scale = np.asarray(x_scale, np.float32) * w_scale.astype(np.float32).reshape(-1, 1, 1)
    y = (acc * scale + bias.astype(np.float32).reshape(-1, 1, 1)).astype(np.float32)
    return relu_bounds.reference(y, relu)
