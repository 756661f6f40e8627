"""A small ONNX graph builder: unique names, initializers, nodes, and the QDQ pattern of a uniform
quantizer."""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..quant.base import QuantSpec


def _clean(hint: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", hint).strip("_") or "t"


class GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._used: set[str] = set()
        self.codes: dict[str, str] = {}  # quantizer path -> name of its integer code tensor

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
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], hint: str, outputs: int = 1, **attrs: object) -> str:
        """Add a node; returns its (first) output name."""
        outs = [self.name(hint if outputs == 1 else f"{hint}_{i}") for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(f"{hint}_{op}"), **attrs))
        return outs[0]

    # -- quantize / dequantize -----------------------------------------------------------------
    def qdq(self, x: str, spec: QuantSpec, path: str) -> str:
        """QuantizeLinear -> (code-range Clip below 8 bits) -> DequantizeLinear for a uniform
        activation quantizer with a constant per-tensor scale; records the code tensor."""
        scale = self.const(f"{path}.scale", spec.scale.numpy().astype(np.float32).reshape(()))
        zp = self.const(f"{path}.zero_point", np.zeros((), np.int8 if spec.signed else np.uint8))
        codes = self.node("QuantizeLinear", [x, scale, zp], f"{path}.q")
        lo, hi = (-128, 127) if spec.signed else (0, 255)
        if (spec.qmin, spec.qmax) != (lo, hi):  # the container is 8-bit: limit to the code range
            dtype = np.int8 if spec.signed else np.uint8
            qmin = self.const(f"{path}.qmin", np.array(spec.qmin, dtype))
            qmax = self.const(f"{path}.qmax", np.array(spec.qmax, dtype))
            codes = self.node("Clip", [codes, qmin, qmax], f"{path}.codes")
        self.codes[path] = codes
        return self.node("DequantizeLinear", [codes, scale, zp], f"{path}.dq")

    def dq_weight(self, codes: np.ndarray, scale: np.ndarray, axis: int, path: str) -> str:
        """An int8 weight initializer behind a per-channel DequantizeLinear."""
        w = self.const(f"{path}.weight_codes", codes.astype(np.int8))
        s = self.const(f"{path}.weight_scale", scale.astype(np.float32))
        zp = self.const(f"{path}.weight_zero_point", np.zeros(scale.shape, np.int8))
        return self.node("DequantizeLinear", [w, s, zp], f"{path}.weight", axis=axis)

    def dq_bias(self, codes: np.ndarray, scale: np.ndarray, path: str) -> str:
        """An int32 bias on the accumulator scale ``s_x * s_w`` (what QLinearConv needs)."""
        b = self.const(f"{path}.bias_int32", codes.astype(np.int32))
        s = self.const(f"{path}.bias_scale", scale.astype(np.float32))
        zp = self.const(f"{path}.bias_zero_point", np.zeros(scale.shape, np.int32))
        return self.node("DequantizeLinear", [b, s, zp], f"{path}.bias", axis=0)


def value_info(name: str, elem: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


ELEM = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}
