"""``qexport.PostConvRequant``: ``PostConv`` with the quantizer that reads its output fused in, as
``IntConvRequant`` is to ``IntConv`` (see int_conv_requant.py).

Inputs
  x_codes, x_scale, w_codes, w_scale, bias  as PostConv
  y_scale       float32 []  the output quantizer's step
  y_zero_point  int8/uint8 []  its zero point; the codes have its type
Attributes
  bits, strides, pads, dilations, group, relu: as PostConv
  qmin, qmax    the code range
Output
  y_codes int8/uint8 [N, M, H', W'] = Clip(QuantizeLinear(PostConv(...), y_scale, y_zero_point), qmin, qmax)
"""

from __future__ import annotations

import numpy as np

from . import post_conv
from .domain import QX, op, qexport_function
from .int_conv_requant import requantize


@qexport_function
def PostConvRequant(x_codes, x_scale, w_codes, w_scale, bias, y_scale, y_zero_point, bits: int, strides: list[int],
                    pads: list[int], dilations: list[int], group: int, relu: int, qmin: int, qmax: int):  # fmt: skip
    # through a Cast to uint4 (21), a no-op: onnxruntime types a function's input from the standard ops
    # that read it (an input only another function reads gets a type list without uint4), and it has no
    # Identity kernel for uint4
    w_uint4 = op.Cast(w_codes, to=21)
    y = QX.PostConv(x_codes, x_scale, w_uint4, w_scale, bias, bits=bits, strides=strides, pads=pads,
                    dilations=dilations, group=group, relu=relu)  # fmt: skip
    q = op.QuantizeLinear(y, y_scale, y_zero_point)
    return op.Clip(q, op.CastLike(op.Constant(value_int=qmin), q), op.CastLike(op.Constant(value_int=qmax), q))


def reference(x_codes: np.ndarray, x_scale: np.ndarray, w_codes: np.ndarray, w_scale: np.ndarray, bias: np.ndarray,
              y_scale: np.ndarray, y_zero_point: np.ndarray, bits: int, strides: list[int], pads: list[int],
              dilations: list[int], group: int, relu: int, qmin: int, qmax: int) -> np.ndarray:  # fmt: skip
    y = post_conv.reference(x_codes, x_scale, w_codes, w_scale, bias, bits, strides, pads, dilations, group, relu)
    return requantize(y, y_scale, y_zero_point, qmin, qmax)
