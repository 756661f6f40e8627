"""A small ONNX graph builder: unique names, initializers, nodes, the QDQ pattern of a uniform
quantizer and integer weight storage (int8, or packed int4 / int2)."""

from __future__ import annotations

import re
from typing import NamedTuple

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..quant.base import QuantSpec


def _clean(hint: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", hint).strip("_") or "t"


class QTensor(NamedTuple):
    """A quantized activation in the graph: its dequantized value, integer codes and step (scalar,
    or per sample / per row for ASQ), and the zero point the stored codes carry where it is not 0."""

    value: str
    codes: str
    scale: str
    zero_point: str | None = None


# weight storage -> (ONNX element type, lowest code, highest code, lowest opset)
STORAGE = {
    "int8": (TensorProto.INT8, -128, 127, 10),
    "int16": (TensorProto.INT16, -32768, 32767, 21),  # codes past int8 (base-2 POST at 4 bits, NIPQ > 8 bits)
    "int4": (TensorProto.INT4, -8, 7, 21),
    "int2": (TensorProto.INT2, -2, 1, 25),
}


_SUB_BYTE = {TensorProto.INT4: ml_dtypes.int4, TensorProto.UINT4: ml_dtypes.uint4, TensorProto.INT2: ml_dtypes.int2}


def packed_tensor(name: str, elem: int, values: np.ndarray) -> onnx.TensorProto:
    """``values`` (integers in range) as a packed sub-byte initializer."""
    return numpy_helper.from_array(np.ascontiguousarray(values).astype(_SUB_BYTE[elem]), name)


class GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._used: set[str] = set()
        self.codes: dict[str, str] = {}  # quantizer path -> name of its integer code tensor
        self.steps: dict[str, str] = {}  # ASQ quantizer path -> name of its per-sample step tensor
        self.code_offsets: dict[str, int] = {}  # quantizer path -> zero point its stored codes carry

    def name(self, hint: str) -> str:
        base = _clean(hint)
        name, k = base, 1
        while name in self._used:
            k += 1
            name = f"{base}_{k}"
        self._used.add(name)
        return name

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        # not np.ascontiguousarray: it turns a scalar into shape [1], and onnxruntime fuses a QDQ Add
        # into QLinearAdd only when its scales are true scalars
        self.initializers.append(numpy_helper.from_array(np.asarray(value, order="C"), name))
        return name

    def packed_const(self, hint: str, elem: int, values: np.ndarray) -> str:
        """A sub-byte initializer (int4 / uint4 / int2), stored packed (raw bytes, several per byte)."""
        name = self.name(hint)
        self.initializers.append(packed_tensor(name, elem, values))
        return name

    def node(self, op: str, inputs: list[str], hint: str, outputs: int = 1, domain: str = "", **attrs: object) -> str:
        """Add a node; returns its (first) output name."""
        return self.node_outputs(op, inputs, hint, outputs, domain, **attrs)[0]

    def node_outputs(self, op: str, inputs: list[str], hint: str, outputs: int, domain: str = "",
                     **attrs: object) -> list[str]:  # fmt: skip
        outs = [self.name(hint if outputs == 1 else f"{hint}_{i}") for i in range(outputs)]
        node = helper.make_node(op, inputs, outs, name=self.name(f"{hint}_{op}"), domain=domain or None, **attrs)
        self.nodes.append(node)
        return outs

    # -- quantize / dequantize -----------------------------------------------------------------
    def qdq(self, x: str, spec: QuantSpec, path: str, upper: float | None = None, offset: bool = True,
            uint8: bool = False) -> QTensor:  # fmt: skip
        """QuantizeLinear -> (code-range Clip below 8 bits) -> DequantizeLinear for a uniform
        activation quantizer with a constant per-tensor scale; records the code tensor.

        ``upper``: ``x`` is ``relu(v)`` standing for ``min(relu(v), upper)`` (a ReLU6): quantizing is
        monotone, so the clip is applied exactly to the codes instead, ``min(codes, Q(upper))``, and the
        ReLU before QuantizeLinear folds into onnxruntime's QLinearConv (a float Clip would not).

        ``offset``: a signed code range narrower than int8 is stored as uint8 with zero point 128 (the
        same numbers, codes + 128): onnxruntime fuses a QDQ pattern with a uint8 Clip into its integer
        kernels, but not one with an int8 Clip.  Off where the codes feed a qexport op or
        MatMulInteger directly, which take codes with zero point 0.  ``uint8``: every signed range,
        the full int8 one too, as uint8 + 128 (for MatMulInteger, given that zero point: its u8 x s8
        path is ~10x its s8 x s8 one on the CPUs here)."""
        step = spec.scale.numpy().astype(np.float32).reshape(())
        scale = self.const(f"{path}.scale", step)
        code_lo, code_hi = spec.qmin, spec.qmax
        if upper is not None:  # Q(upper) as QuantizeLinear computes it: float32 division, half to even
            code_lo, code_hi = max(code_lo, 0), min(code_hi, int(np.round(np.float32(upper) / step)))
        wide = spec.bits > 8  # NIPQ's learned widths reach 14 bits: a 16-bit container (no integer fusion)
        narrow = (code_lo, code_hi) != (-128, 127)
        shift = 128 if spec.signed and not wide and (uint8 or (offset and narrow)) else 0
        dtype = np.int8 if spec.signed and not shift else np.uint8
        if wide:
            dtype = np.int16 if spec.signed else np.uint16
        zp = self.const(f"{path}.zero_point", np.array(shift, dtype))
        codes = self.node("QuantizeLinear", [x, scale, zp], f"{path}.q")
        lo, hi = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
        code_lo, code_hi = code_lo + shift, code_hi + shift
        if shift:
            self.code_offsets[path] = shift
        if wide:  # onnxruntime has no 16-bit Clip kernel: clip the codes as int32
            wide_codes = self.node("Cast", [codes], f"{path}.codes32", to=TensorProto.INT32)
            qmin = self.const(f"{path}.qmin", np.array(code_lo, np.int32))
            qmax = self.const(f"{path}.qmax", np.array(code_hi, np.int32))
            wide_codes = self.node("Clip", [wide_codes, qmin, qmax], f"{path}.clipped")
            elem = TensorProto.INT16 if dtype == np.int16 else TensorProto.UINT16
            codes = self.node("Cast", [wide_codes], f"{path}.codes", to=elem)
        elif (code_lo, code_hi) != (lo, hi):  # the container is 8-bit: limit to the code range
            qmin = self.const(f"{path}.qmin", np.array(code_lo, dtype))
            qmax = self.const(f"{path}.qmax", np.array(code_hi, dtype))
            codes = self.node("Clip", [codes, qmin, qmax], f"{path}.codes")
        self.codes[path] = codes
        value = self.node("DequantizeLinear", [codes, scale, zp], f"{path}.dq")
        return QTensor(value, codes, scale, zp if shift else None)

    def weight_codes(self, codes: np.ndarray, path: str, storage: str = "int8") -> str:
        """Integer weight codes as an int8 tensor: an int8 initializer, or a packed int4 / int2 one
        widened by a Cast that onnxruntime folds at load time (so convs still fuse into its int8
        kernels, and native kernels see a constant int8 input)."""
        elem, lo, hi, _ = STORAGE[storage]
        if codes.size and (codes.min() < lo or codes.max() > hi):
            raise ValueError(f"weight codes of {path} do not fit {storage}")
        if storage in ("int8", "int16"):
            return self.const(f"{path}.weight_codes", codes.astype(np.int8 if storage == "int8" else np.int16))
        packed = self.packed_const(f"{path}.weight_codes", elem, codes)
        return self.node("Cast", [packed], f"{path}.weight_int8", to=TensorProto.INT8)

    def dq_weight(self, codes: np.ndarray, scale: np.ndarray, axis: int, path: str, storage: str = "int8") -> str:
        """Integer weight codes (int8, or packed int4 / int2) behind a per-channel DequantizeLinear."""
        w = self.weight_codes(codes, path, storage)
        zp = self.const(f"{path}.weight_zero_point", np.zeros(scale.shape, np.int16 if storage == "int16" else np.int8))
        s = self.const(f"{path}.weight_scale", scale.astype(np.float32))
        return self.node("DequantizeLinear", [w, s, zp], f"{path}.weight", axis=axis)

    def dq_bias(self, codes: np.ndarray, scale: np.ndarray, path: str) -> str:
        """An int32 bias on the accumulator scale ``s_x * s_w`` (what QLinearConv needs)."""
        b = self.const(f"{path}.bias_int32", codes.astype(np.int32))
        s = self.const(f"{path}.bias_scale", scale.astype(np.float32))
        zp = self.const(f"{path}.bias_zero_point", np.zeros(scale.shape, np.int32))
        return self.node("DequantizeLinear", [b, s, zp], f"{path}.bias", axis=0)
