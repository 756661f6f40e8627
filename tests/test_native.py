"""The native kernels (custom_ops/): on every instruction-set path this CPU has (QEXPORT_ISA forces
each), they compute exactly what the ops' numpy references (and so the function bodies) compute, and
a malformed node gets an onnxruntime error naming what is wrong, never a crash.

CI builds the library and sets QEXPORT_REQUIRE_NATIVE=1, so a failed build fails here; elsewhere
these tests are skipped when the library was not built (see README: set-up)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import qexport
from qexport import native, zoo
from qexport.ops import (
    DOMAIN,
    add_requant,
    asq_quantize,
    asq_quantize_rows,
    int_conv,
    int_conv_requant,
    post_conv,
    post_conv_requant,
    post_rescale,
    post_weights,
    requantize,
    rescale,
)
from qexport.quant.asq import AsqQuantizer
from tests.test_ops import _asq_params, _model

if os.environ.get("QEXPORT_REQUIRE_NATIVE") == "1":
    assert native.available(), "QEXPORT_REQUIRE_NATIVE=1 but the native library was not built"
pytestmark = pytest.mark.skipif(not native.available(), reason="native library not built (README: set-up)")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return set()


FLAGS = _cpu_flags()
ISAS = ["scalar"] + (["avx2"] if "avx2" in FLAGS else []) + (
    ["avx512vnni"] if {"avx512f", "avx512bw", "avx512_vnni"} <= FLAGS else [])  # fmt: skip


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    os.environ["QEXPORT_ISA"] = request.param
    yield request.param
    os.environ.pop("QEXPORT_ISA", None)


def _ort_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int = 2,
             kernels: bool = True) -> list[np.ndarray]:  # fmt: skip
    """Run ``model`` in onnxruntime with the native kernels (``kernels``) or its qexport ops' bodies."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 4
    if kernels:
        assert native.register(so)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _conv_model(op: str, x: np.ndarray, x_scale: np.ndarray, w: onnx.TensorProto, w_scale: np.ndarray,
                bias: np.ndarray, out_shape: list[int], requant: tuple[np.float32, np.ndarray] | None = None,
                **attrs: object) -> tuple[onnx.ModelProto, dict]:  # fmt: skip
    """A one-node model; ``requant`` = (y_scale, y_zero_point): a *Requant op's two more inputs."""
    inits = [w, numpy_helper.from_array(w_scale, "ws"), numpy_helper.from_array(bias, "b")]
    x_type = TensorProto.INT8 if x.dtype == np.int8 else TensorProto.UINT8
    inputs = [helper.make_tensor_value_info("x", x_type, ["N", *x.shape[1:]])]
    feeds: dict[str, np.ndarray] = {"x": x}
    if np.ndim(x_scale):
        inputs.append(helper.make_tensor_value_info("xs", TensorProto.FLOAT, ["N", 1, 1, 1]))
        feeds["xs"] = x_scale
    else:
        inits.append(numpy_helper.from_array(np.asarray(x_scale, np.float32), "xs"))
    names, y_type = ["x", "xs", "w", "ws", "b"], TensorProto.FLOAT
    if requant is not None:
        inits += [numpy_helper.from_array(np.asarray(requant[0], np.float32), "ys"),
                  numpy_helper.from_array(requant[1], "yz")]  # fmt: skip
        names += ["ys", "yz"]
        y_type = helper.np_dtype_to_tensor_dtype(requant[1].dtype)
    node = helper.make_node(op, names, ["y"], domain=DOMAIN, **attrs)
    out = helper.make_tensor_value_info("y", y_type, ["N", *out_shape[1:]])
    return _model(node, inputs, [out], inits), feeds


# (group, stride, dilation, pads, signed, per-sample, in channels, out channels, side)
CONV_CASES = [
    (1, 1, 1, [1, 1, 1, 1], False, False, 8, 8, 9),
    (2, 2, 1, [1, 1, 1, 1], True, True, 8, 6, 9),
    (8, 1, 2, [2, 2, 2, 2], False, False, 8, 8, 9),  # depthwise, dilated
    (1, 1, 1, [0, 1, 2, 0], True, True, 13, 37, 11),  # channels not a multiple of 4 or 32, asymmetric pads
    (1, 2, 1, [3, 3, 3, 3], False, False, 3, 70, 23),  # a 7x7 stride-2 stem (kernel rows cut into quads)
    (1, 1, 2, [2, 2, 2, 2], False, True, 6, 9, 10),  # dilated, channels padded to 4 per pixel
    (40, 2, 1, [1, 1, 1, 1], True, True, 40, 40, 9),  # depthwise over two blocks of 32 lanes (three for POST)
    (17, 1, 1, [3, 2, 3, 2], False, False, 17, 17, 23),  # depthwise 7x7: an odd number of taps
    (4, 1, 1, [1, 1, 1, 1], False, False, 4, 8, 9),  # grouped with 1 input channel per group, not depthwise
    (1, 1, 1, [1, 2, 0, 1], False, True, 35, 20, 12),  # 16 + 16 + 3 channels: every NHWC copy path, odd pads
    (2, 1, 1, [1, 1, 1, 1], True, False, 34, 8, 9),  # two groups of 17 channels, 20 bytes apart in a pixel
    (1, 1, 1, [0, 0, 0, 0], True, False, 1, 5, 20),  # 1-byte pixels, no padding: words spill across rows and tasks
    (1, 2, 1, [1, 0, 1, 0], False, True, 6, 7, 19),  # 4 + 2 channels: the 2's words spill into the next pixel
    (1, 1, 1, [3, 3, 3, 3], False, False, 2, 40, 77),  # 77 x 77 outputs: tasks of 256 pixels, the last one short
]


@pytest.mark.parametrize(("group", "stride", "dilation", "pads", "signed", "per_sample", "cin", "cout", "side"),
                         CONV_CASES)  # fmt: skip
def test_post_conv_native_is_exact(isa: str, group: int, stride: int, dilation: int, pads: list[int], signed: bool,
                                   per_sample: bool, cin: int, cout: int, side: int) -> None:  # fmt: skip
    rng = np.random.default_rng(cin + cout)
    k = 7 if side > 20 else 3
    codes = post_weights.pack(rng.integers(-7, 8, size=(cout, cin // group, k, k)), 4)
    x = rng.integers(-8, 8, (3, cin, side, side)).astype(np.int8) if signed else \
        rng.integers(0, 16, (3, cin, side, side)).astype(np.uint8)  # fmt: skip
    x_scale = (rng.random((3, 1, 1, 1)) + 0.5).astype(np.float32) if per_sample else np.float32(0.37)
    w_scale, bias = (rng.random(cout) + 0.1).astype(np.float32), rng.standard_normal(cout).astype(np.float32)
    relu = (0, 1, 6)[(cin + cout) % 3]
    attrs = {"strides": [stride] * 2, "pads": pads, "dilations": [dilation] * 2, "group": group, "relu": relu}
    ref = post_conv.reference(x, x_scale, codes, w_scale, bias, 4, **attrs)
    assert not relu or ((ref == 0).any() and (relu == 1 or (ref == 6).any()))  # the bounds are reached
    model, feeds = _conv_model("PostConv", x, x_scale, post_weights.uint4_initializer("w", codes), w_scale, bias,
                               list(ref.shape), bits=4, **attrs)  # fmt: skip
    for threads in (1, 2):
        (y,) = _ort_run(model, feeds, threads)
        np.testing.assert_array_equal(y, ref)  # same integers, same float combine: bit for bit


@pytest.mark.parametrize(("group", "stride", "dilation", "pads", "signed", "per_sample", "cin", "cout", "side"),
                         CONV_CASES)  # fmt: skip
def test_int_conv_native_is_exact(isa: str, group: int, stride: int, dilation: int, pads: list[int], signed: bool,
                                  per_sample: bool, cin: int, cout: int, side: int) -> None:  # fmt: skip
    rng = np.random.default_rng(cin * cout)
    k = 7 if side > 20 else 3
    w = rng.integers(-128, 128, size=(cout, cin // group, k, k)).astype(np.int8)  # the full int8 range
    x = rng.integers(-128, 128, (3, cin, side, side)).astype(np.int8) if signed else \
        rng.integers(0, 256, (3, cin, side, side)).astype(np.uint8)  # fmt: skip
    x_scale = (rng.random((3, 1, 1, 1)) + 0.5).astype(np.float32) if per_sample else np.float32(0.01)
    w_scale, bias = (rng.random(cout) + 0.1).astype(np.float32), rng.standard_normal(cout).astype(np.float32)
    relu = (0, 1, 6)[(cin + cout + 1) % 3]
    attrs = {"strides": [stride] * 2, "pads": pads, "dilations": [dilation] * 2, "group": group, "relu": relu}
    ref = int_conv.reference(x, x_scale, w, w_scale, bias, **attrs)
    model, feeds = _conv_model("IntConv", x, x_scale, numpy_helper.from_array(w, "w"), w_scale, bias, list(ref.shape),
                               **attrs)  # fmt: skip
    (y,) = _ort_run(model, feeds)
    np.testing.assert_array_equal(y, ref)


# (op, y zero point, qmin, qmax): uint8 4-bit codes, int8 3-bit ones, a uint8 zero point of 128 (the
# signed codes MatMulInteger takes), the whole int8 range
REQUANT_CASES = [("IntConvRequant", np.uint8(0), 0, 15), ("PostConvRequant", np.int8(0), -4, 3),
                 ("IntConvRequant", np.uint8(128), 120, 135), ("PostConvRequant", np.int8(-3), -128, 127)]  # fmt: skip


@pytest.mark.parametrize(("op", "zero_point", "qmin", "qmax"), REQUANT_CASES)
@pytest.mark.parametrize("case", [0, 1, 3, 6, 7])
def test_conv_requant_native_matches_body(isa: str, op: str, zero_point: np.ndarray, qmin: int, qmax: int,
                                          case: int) -> None:  # fmt: skip
    """The codes out of the fused epilogue equal the function body's (QuantizeLinear then Clip, run by
    onnxruntime) and the numpy reference, rounding ties (steps of powers of two make y / y_scale land on
    k + 0.5) and a NaN bias channel (the lowest code, as MLAS) included."""
    group, stride, dilation, pads, signed, per_sample, cin, cout, side = CONV_CASES[case]
    rng = np.random.default_rng(case + qmax)
    k = 7 if side > 20 else 3
    x = rng.integers(-8, 8, (2, cin, side, side)).astype(np.int8) if signed else \
        rng.integers(0, 16, (2, cin, side, side)).astype(np.uint8)  # fmt: skip
    x_scale = np.full((2, 1, 1, 1), 0.25, np.float32) if per_sample else np.float32(0.5)
    w_scale = np.full(cout, 0.5, np.float32)
    bias = (rng.integers(-8, 8, cout) * 0.25).astype(np.float32)
    bias[cout // 2] = np.nan
    attrs = {"strides": [stride] * 2, "pads": pads, "dilations": [dilation] * 2, "group": group,
             "relu": (0, 1, 6)[case % 3], "qmin": qmin, "qmax": qmax}  # fmt: skip
    y_scale = np.float32(0.25 if op == "IntConvRequant" else 0.5)
    if op == "IntConvRequant":
        w = rng.integers(-8, 8, size=(cout, cin // group, k, k)).astype(np.int8)
        ref = int_conv_requant.reference(x, x_scale, w, w_scale, bias, y_scale, zero_point, **attrs)
        w_proto = numpy_helper.from_array(w, "w")
    else:
        codes = post_weights.pack(rng.integers(-7, 8, size=(cout, cin // group, k, k)), 4)
        attrs["bits"] = 4
        ref = post_conv_requant.reference(x, x_scale, codes, w_scale, bias, y_scale, zero_point, **attrs)
        w_proto = post_weights.uint4_initializer("w", codes)
    assert (ref == qmin).any() and ((ref == qmax).any() or qmax - qmin > 32)  # narrow ranges: both bounds reached
    model, feeds = _conv_model(op, x, x_scale, w_proto, w_scale, bias, list(ref.shape), (y_scale, zero_point), **attrs)
    (body,) = _ort_run(model, feeds, kernels=False)
    np.testing.assert_array_equal(body, ref)
    for threads in (1, 2):
        (y,) = _ort_run(model, feeds, threads)
        assert y.dtype == ref.dtype
        np.testing.assert_array_equal(y, ref)


# The float values every output channel's requantizing epilogue meets in test_conv_requant_edges (y is
# the channel's bias exactly: the input codes are all 0): NaN, infinities, values past any int32 after
# division by y_scale, -0, a denormal, ties k + 0.5 around 0 and both ends of the code ranges, their
# float neighbours
def _edge_values(y_scale: float) -> np.ndarray:
    ties = np.array([k + 0.5 for k in (-129, -5, -4, -1, 0, 2, 3, 14, 15, 127, 135, 255)], np.float32) * y_scale
    near = np.concatenate([np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))])
    extremes = [np.nan, np.inf, -np.inf, 3e38, -3e38, 1e12, -1e12, -0.0, 1e-45, -1e-45, 0.0]
    return np.concatenate([np.array(extremes, np.float32), ties, near]).astype(np.float32)


def _bias_codes(op: str, layout: str, bias: np.ndarray, relu: int, qmin: int, qmax: int, y_scale: np.float32,
                zero_point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A requantizing conv of ``layout`` over all-zero codes, so that each output channel's y is its
    ``bias`` value exactly: (the function body's codes, the native kernels' codes)."""
    cout = len(bias)
    cin, group, k, side = {"pointwise": (4, 1, 1, 16), "depthwise": (cout, cout, 3, 12), "3x3": (4, 1, 3, 9)}[layout]
    x = np.zeros((1, cin, side, side), np.uint8)
    attrs = {"strides": [1, 1], "pads": [k // 2] * 4, "dilations": [1, 1], "group": group, "relu": relu,
             "qmin": qmin, "qmax": qmax}  # fmt: skip
    w_shape = (cout, cin // group, k, k)
    rng = np.random.default_rng(cout)
    if op == "IntConvRequant":
        w_proto = numpy_helper.from_array(rng.integers(-8, 8, size=w_shape).astype(np.int8), "w")
    else:
        w_proto = post_weights.uint4_initializer("w", post_weights.pack(rng.integers(-7, 8, w_shape), 4))
        attrs["bits"] = 4
    model, feeds = _conv_model(op, x, np.float32(0.5), w_proto, np.full(cout, 0.5, np.float32), bias,
                               [1, cout, side, side], (y_scale, zero_point), **attrs)  # fmt: skip
    (body,) = _ort_run(model, feeds, kernels=False)
    (y,) = _ort_run(model, feeds)
    return body, y


@pytest.mark.parametrize(("op", "zero_point", "qmin", "qmax"), REQUANT_CASES)
@pytest.mark.parametrize("layout", ["pointwise", "depthwise", "3x3"])
@pytest.mark.parametrize("relu", [0, 1, 6])
def test_conv_requant_edges(isa: str, op: str, zero_point: np.ndarray, qmin: int, qmax: int, layout: str,
                            relu: int) -> None:  # fmt: skip
    """Every kernel's requantizing epilogue (the pixel-vectorised pointwise and depthwise kernels', the
    channel tile's) on the values where a clamp, a ReLU or the rounding could go wrong, against the
    function body (QuantizeLinear then Clip)."""
    y_scale = np.float32(0.25)
    body, y = _bias_codes(op, layout, _edge_values(float(y_scale)), relu, qmin, qmax, y_scale, zero_point)
    assert len(np.unique(body)) >= 4  # the edges reach several codes, both bounds (below ReLU6's 6) among them
    assert (body == qmin).any() and ((body == qmax).any() or (relu == 6 and (qmax - int(zero_point)) * y_scale > 6))
    np.testing.assert_array_equal(y, body)


@pytest.mark.parametrize(("y_scale", "qmin", "qmax"), [(0.35, 0, 255), (0.35, 0, 15), (0.25, 30, 40), (0.25, 24, 40)])
@pytest.mark.parametrize("layout", ["pointwise", "depthwise", "3x3"])
@pytest.mark.parametrize(("op", "relu"), [("IntConvRequant", 1), ("IntConvRequant", 6), ("PostConvRequant", 6)])
def test_conv_requant_relu_fold(isa: str, op: str, relu: int, layout: str, y_scale: float, qmin: int,
                                qmax: int) -> None:  # fmt: skip
    """Where the codes are unsigned from 0 up, the kernels fold the ReLU into the code range (ReLU6's 6 as
    the float 6 / y_scale where that is not below qmin): the codes stay the function body's, 6 / y_scale
    inside the range (17.14...), above it, below qmin (not folded) and on it."""
    six = np.float32(6.0)
    around = [six, np.nextafter(six, np.float32(9)), np.nextafter(six, np.float32(0)), 5.9, 6.2, 7e3]
    bias = np.concatenate([_edge_values(y_scale), np.array(around, np.float32)]).astype(np.float32)
    body, y = _bias_codes(op, layout, bias, relu, qmin, qmax, np.float32(y_scale), np.uint8(0))
    top = min(max(round(6 / y_scale), qmin), qmax) if relu == 6 else qmax  # the highest code reached
    assert (body == qmin).any() and (body == top).any()
    np.testing.assert_array_equal(y, body)


# (in channels, out channels, side, signed): 1x1 convs the AVX-512 VNNI path runs vectorised over pixels
# (custom_ops/pointwise.cc): 16 x 16 = one task of 4 full steps of 64 pixels; 30 x 30 four tasks, the
# last one's last step partial (pixels 900-959 computed, not stored); 7 x 7 too few pixels for it (the
# channel tile runs); 13 channels (not whole quads); several lane blocks; one channel in and out (packed
# as a depthwise conv, which the pointwise kernel must leave alone: fuzz seed 11 case 798)
POINTWISE_CASES = [(16, 40, 16, False), (13, 70, 30, True), (36, 20, 7, False), (8, 33, 16, True),
                   (1, 1, 8, True)]  # fmt: skip


def _check_conv_exact(op: str, x: np.ndarray, cout: int, kernel: tuple[int, int], rng: np.random.Generator,
                      weight_bits: int = 8, **conv: object) -> None:  # fmt: skip
    """One conv op on ``x`` with random ``weight_bits`` integer weights (IntConv) or POST weights, bit for
    bit its numpy reference (with its *Requant form's codes), at 1 and 2 threads."""
    n, cin = x.shape[:2]
    x_scale = (rng.random((n, 1, 1, 1)) + 0.5).astype(np.float32)
    w_scale, bias = (rng.random(cout) * 0.01).astype(np.float32), rng.standard_normal(cout).astype(np.float32)
    attrs: dict = {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1,
                   "relu": (0, 1, 6)[cout % 3], **conv}  # fmt: skip
    w_shape = (cout, cin // attrs["group"], *kernel)
    requant = None
    if op.endswith("Requant"):
        attrs.update(qmin=0, qmax=15)
    if op.startswith("IntConv"):
        half = 1 << (weight_bits - 1)
        w = rng.integers(-half, half, size=w_shape).astype(np.int8)
        ref = int_conv.reference(x, x_scale, w, w_scale, bias, **{k: attrs[k] for k in CONV_ATTRS})
        w_proto = numpy_helper.from_array(w, "w")
    else:
        codes = post_weights.pack(rng.integers(-7, 8, size=w_shape), 4)
        attrs["bits"] = 4
        ref = post_conv.reference(x, x_scale, codes, w_scale, bias, 4, **{k: attrs[k] for k in CONV_ATTRS})
        w_proto = post_weights.uint4_initializer("w", codes)
    if op.endswith("Requant"):
        requant = (np.float32(np.abs(ref).max() / 12), np.uint8(3))  # codes 0-15 over most of y's range
        ref = int_conv_requant.requantize(ref, requant[0], requant[1], 0, 15)
        assert len(np.unique(ref)) >= 10
    model, feeds = _conv_model(op, x, x_scale, w_proto, w_scale, bias, list(ref.shape), requant, **attrs)
    for threads in (1, 2):
        (y,) = _ort_run(model, feeds, threads)
        np.testing.assert_array_equal(y, ref)


def _codes(rng: np.random.Generator, shape: tuple[int, ...], signed: bool) -> np.ndarray:
    return rng.integers(-128, 128, shape).astype(np.int8) if signed else rng.integers(0, 256, shape).astype(np.uint8)


@pytest.mark.parametrize(("cin", "cout", "side", "signed"), POINTWISE_CASES)
@pytest.mark.parametrize(("op", "weight_bits"), [("IntConv", 8), ("IntConv", 4), ("IntConvRequant", 8),
                                                  ("IntConvRequant", 4), ("PostConv", 4), ("PostConvRequant", 4)])
def test_pointwise_conv_native_is_exact(isa: str, cin: int, cout: int, side: int, signed: bool, op: str,
                                        weight_bits: int) -> None:  # fmt: skip
    """IntConv with 8-bit and with 4-bit weights (the AVX2 paths' int16 plans differ: nibble split or
    not), POST weights (4-bit codes)."""
    rng = np.random.default_rng(cin * side + cout)
    _check_conv_exact(op, _codes(rng, (2, cin, side, side), signed), cout, (1, 1), rng, weight_bits=weight_bits)


# (channels, height, width, kernel, stride, dilation, pads, signed): depthwise convs the AVX-512 VNNI path
# (with VBMI) runs per channel plane, vectorised over output pixels, reading the NCHW planes in place
# (custom_ops/depthwise_planes.cc): MobileNet's 3x3 at stride 1 and 2 (rows of 28 and 17: full and
# partial vectors), dilated, a 5x5 (two tap groups per kernel row, the second mostly zero weights),
# asymmetric pads, rows of 6 pixels (packed two to a vector) and 3 (five to a vector), channels over
# several lane blocks (POST: 16 a block), 9 x 9 and 3 x 3 planes (every window at a border, the last
# ones at the end of the input); a dilation of 22 no 64-byte window holds (the depthwise tile runs)
DEPTHWISE_CASES = [(40, 28, 28, 3, 1, 1, [1, 1, 1, 1], False), (19, 33, 33, 3, 2, 1, [1, 1, 1, 1], True),
                   (8, 30, 30, 3, 1, 2, [2, 2, 2, 2], False), (6, 24, 24, 5, 1, 1, [2, 1, 2, 3], True),
                   (5, 80, 6, 3, 1, 1, [1, 1, 1, 1], False), (3, 200, 5, 3, 2, 1, [1, 1, 1, 1], True),
                   (33, 9, 9, 3, 1, 1, [1, 1, 1, 1], False), (7, 3, 3, 3, 2, 1, [1, 1, 1, 1], True),
                   (4, 50, 50, 3, 1, 22, [22, 22, 22, 22], False)]  # fmt: skip


@pytest.mark.parametrize(("c", "h", "w", "k", "stride", "dilation", "pads", "signed"), DEPTHWISE_CASES)
@pytest.mark.parametrize("op", ["IntConv", "PostConv", "IntConvRequant", "PostConvRequant"])
def test_depthwise_conv_native_is_exact(isa: str, c: int, h: int, w: int, k: int, stride: int, dilation: int,
                                        pads: list[int], signed: bool, op: str) -> None:  # fmt: skip
    rng = np.random.default_rng(c * h + w + k)
    _check_conv_exact(op, _codes(rng, (2, c, h, w), signed), c, (k, k), rng, group=c, strides=[stride, stride],
                      dilations=[dilation, dilation], pads=pads)


def test_depthwise_plane_too_large_for_a_plan_runs_the_tile(isa: str) -> None:
    """A depthwise plane whose plan would pass depthwise_planes.cc's bound (2^18 windows: here 1100 output
    rows x 82 vectors x 3 kernel rows) runs the depthwise tile, exactly."""
    rng = np.random.default_rng(1100)
    _check_conv_exact("IntConv", _codes(rng, (1, 1, 1100, 1300), False), 1, (3, 3), rng, weight_bits=4,
                      pads=[1, 1, 1, 1])  # fmt: skip


CONV_ATTRS = ("strides", "pads", "dilations", "group", "relu")


# (weight values, activation values): at the edges of what the AVX2 paths may sum in int16 (Int16Plan
# in custom_ops/gemm.h): pairs of magnitudes 16 (8 quads summed in int16), 128 (one), 129 (nibble split)
INT16_EDGES = [((-8, 7), (0, 255)), ((-8, -8), (255, 255)), ((-64, -64), (255, 255)), ((-65, -64), (255, 255)),
               ((-128, -128), (255, 255)), ((127, 127), (255, 255)), ((-128, 127), (0, 255))]  # fmt: skip


@pytest.mark.parametrize("layout", ["3x3", "depthwise", "pointwise"])
@pytest.mark.parametrize(("w_values", "x_values"), INT16_EDGES)
def test_int_conv_native_int16_edges(isa: str, layout: str, w_values: tuple[int, int],
                                     x_values: tuple[int, int]) -> None:  # fmt: skip
    """The int16 edges on the channel tile (3x3), the depthwise kernels and (16 x 16 pixels) the
    AVX-512 pointwise kernel."""
    rng = np.random.default_rng(abs(w_values[0]) + x_values[0])
    depthwise = layout == "depthwise"
    cin, cout = (36, 36) if depthwise else (20, 40)
    group = cin if depthwise else 1
    k, side = (1, 16) if layout == "pointwise" else (3, 7)
    w = rng.choice(np.asarray(w_values), size=(cout, cin // group, k, k)).astype(np.int8)
    x = rng.choice(np.asarray(x_values), size=(2, cin, side, side)).astype(np.uint8)
    w_scale, bias = np.full(cout, 0.5, np.float32), np.zeros(cout, np.float32)
    attrs = {"strides": [1, 1], "pads": [k // 2] * 4, "dilations": [1, 1], "group": group, "relu": 0}
    ref = int_conv.reference(x, np.float32(1.0), w, w_scale, bias, **attrs)
    model, feeds = _conv_model("IntConv", x, np.float32(1.0), numpy_helper.from_array(w, "w"), w_scale, bias,
                               list(ref.shape), **attrs)  # fmt: skip
    (y,) = _ort_run(model, feeds)
    np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize(("bits", "signed"), [(4, False), (2, True), (8, False)])
def test_asq_quantize_native_matches_reference(isa: str, bits: int, signed: bool) -> None:
    torch.manual_seed(bits)
    q = AsqQuantizer(bits, signed, 16, pool=True).eval()
    with torch.no_grad():
        q.adapter.fc2.weight.normal_(0, 0.3)
    x = torch.randn(5, 16, 6, 7) * 2
    q.initialize_from(x)
    r = q.code_range
    params = [np.asarray(q.step.detach().numpy(), np.float32), *_asq_params(q)]
    zp_type, zp = (TensorProto.INT8, np.int8(0)) if signed else (TensorProto.UINT8, np.uint8(0))
    names = ["step", "zero_point", "w1", "b1", "w2", "b2"]
    inits = [
        numpy_helper.from_array(np.asarray(v), n) for n, v in zip(names, [params[0], zp, *params[1:]], strict=True)
    ]
    node = helper.make_node("AsqQuantize", ["x", *names], ["y", "codes", "s"], domain=DOMAIN, qmin=r.qmin, qmax=r.qmax)
    dyn = ["N", 16, 6, 7]
    model = _model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, dyn)],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, dyn),
                    helper.make_tensor_value_info("codes", zp_type, dyn),
                    helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 1, 1, 1])], inits)  # fmt: skip
    y_ref, codes_ref, step_ref = asq_quantize.reference(x.numpy(), *params, r.qmin, r.qmax)
    y, codes, step = _ort_run(model, {"x": x.numpy()})
    assert codes.dtype == (np.int8 if signed else np.uint8)
    # the channel means are summed in another order than numpy's: the step may differ in its last bit
    np.testing.assert_allclose(step, step_ref, rtol=1e-6)
    np.testing.assert_array_equal(codes.astype(np.int64), codes_ref)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6)


@pytest.mark.parametrize("plane", [(1, 1), (1, 7), (2, 5), (3, 5), (4, 4), (5, 6), (6, 6), (7, 7), (1, 23), (14, 14)])
def test_asq_quantize_native_matches_body(isa: str, plane: tuple[int, int]) -> None:
    """Channel means, steps, codes and y bit for bit as the function body (onnxruntime's ReduceMean, whose
    order depends on each row's alignment: 40 rows of each size start at every offset), batch 1 and 3.
    A 16-lane sum of the means differed in the last bit at 7, 10, 30, 36 and 49 values, among others."""
    torch.manual_seed(plane[0] * 31 + plane[1])
    c = 40
    q = AsqQuantizer(4, False, c, pool=True).eval()
    with torch.no_grad():
        q.adapter.fc2.weight.normal_(0, 0.3)
    x = torch.randn(3, c, *plane) * 2 + 0.5
    q.initialize_from(x)
    r = q.code_range
    params = [np.asarray(q.step.detach().numpy(), np.float32), *_asq_params(q)]
    names = ["step", "zero_point", "w1", "b1", "w2", "b2"]
    inits = [numpy_helper.from_array(np.asarray(v), n)
             for n, v in zip(names, [params[0], np.uint8(0), *params[1:]], strict=True)]  # fmt: skip
    node = helper.make_node("AsqQuantize", ["x", *names], ["y", "codes", "s"], domain=DOMAIN, qmin=r.qmin, qmax=r.qmax)
    dyn = ["N", c, *plane]
    model = _model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, dyn)],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, dyn),
                    helper.make_tensor_value_info("codes", TensorProto.UINT8, dyn),
                    helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 1, 1, 1])], inits)  # fmt: skip
    for batch in (x[:1], x):
        feeds = {"x": batch.numpy()}
        for got, want in zip(_ort_run(model, feeds), _ort_run(model, feeds, kernels=False), strict=True):
            np.testing.assert_array_equal(got, want)


# (bits, signed, stored offset, input shape, leave y out): transformer tokens [N, T, C], 2-D [N, C]; the
# 7th has several row tasks, hidden-unit tasks (hidden 256) and K blocks in the adapter; the last two one
# row (the streamed first layer): 3 K blocks and 150 units (a partial vector), bias first (a Gemm); 5 K
# blocks and 275 units (two 256-unit spans), bias last
ROWS_CASES = [(4, True, True, (2, 9, 256), True), (4, False, False, (2, 9, 64), False),
              (8, True, False, (5, 48), False), (2, True, True, (3, 7, 300), False),
              (4, True, True, (0, 4, 32), False), (4, True, True, (2, 3, 0), False),
              (4, True, True, (1, 100, 1024), True),
              (4, True, True, (1, 600), False), (4, False, False, (1, 1, 1100), True)]  # fmt: skip


@pytest.mark.parametrize(("bits", "signed", "offset", "shape", "no_y"), ROWS_CASES)
def test_asq_quantize_rows_native_matches_body(isa: str, bits: int, signed: bool, offset: bool,
                                               shape: tuple[int, ...], no_y: bool) -> None:  # fmt: skip
    """Codes, steps and y bit for bit as the function body in onnxruntime (the exporter's contract:
    parity does not depend on the kernel), and as the numpy reference up to the adapter's summation
    order."""
    c = shape[-1]
    torch.manual_seed(bits + c)
    q = AsqQuantizer(bits, signed, max(c, 1), pool=False).eval()
    with torch.no_grad():
        q.adapter.fc2.weight.normal_(0, 0.3)
    x = torch.randn(*shape) * 2
    if x.numel():
        q.initialize_from(x)
    r = q.code_range
    params = [np.asarray(q.step.detach().numpy(), np.float32), *_asq_params(q)]
    if c == 0:  # an adapter over no features
        params[1] = np.zeros((0, params[1].shape[1]), np.float32)
    shift = 128 if offset else 0
    zp_type = TensorProto.UINT8 if offset or not signed else TensorProto.INT8
    zp = np.uint8(shift) if zp_type == TensorProto.UINT8 else np.int8(0)
    names = ["step", "zero_point", "w1", "b1", "w2", "b2"]
    values = [params[0], zp, *params[1:]]
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in zip(names, values, strict=True)]
    dims = [f"d{i}" for i in range(len(shape) - 1)] + [c]
    node = helper.make_node("AsqQuantizeRows", ["x", *names], ["" if no_y else "y", "codes", "s"], domain=DOMAIN,
                            qmin=r.qmin, qmax=r.qmax)  # fmt: skip
    outputs = [helper.make_tensor_value_info("codes", zp_type, dims),
               helper.make_tensor_value_info("s", TensorProto.FLOAT, [*dims[:-1], 1])]  # fmt: skip
    if not no_y:
        outputs.insert(0, helper.make_tensor_value_info("y", TensorProto.FLOAT, dims))
    model = _model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)], outputs, inits)
    feeds = {"x": x.numpy()}
    native_out = _ort_run(model, feeds)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    body_out = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    for got, want in zip(native_out, body_out, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        if got.dtype == np.float32:  # a -0 from rounding stays -0 (equality alone does not see it)
            np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
    codes, step = native_out[-2:]
    if x.numel():
        _, codes_ref, step_ref = asq_quantize_rows.reference(x.numpy(), *params, r.qmin, r.qmax)
        np.testing.assert_allclose(step, step_ref, rtol=1e-4)  # numpy's summation order, with cancellation
        agree = (codes.astype(np.int64) - shift == codes_ref).mean()
        assert agree > 0.999, agree  # numpy sums the adapter in another order: a step may differ in its last bit


def _requantize_model(x_type: int, y_zero_point: np.ndarray, relu: int, qmin: int, qmax: int, x_scale: float,
                      y_scale: float, x_zero_point: int) -> onnx.ModelProto:  # fmt: skip
    x_dtype = np.int8 if x_type == TensorProto.INT8 else np.uint8
    inits = [numpy_helper.from_array(np.float32(x_scale), "xs"), numpy_helper.from_array(x_dtype(x_zero_point), "xz"),
             numpy_helper.from_array(np.float32(y_scale), "ys"), numpy_helper.from_array(y_zero_point, "yz")]
    y_type = TensorProto.INT8 if y_zero_point.dtype == np.int8 else TensorProto.UINT8
    node = helper.make_node("Requantize", ["x", "xs", "xz", "ys", "yz"], ["y"], domain=DOMAIN, relu=relu, qmin=qmin,
                            qmax=qmax)  # fmt: skip
    return _model(node, [helper.make_tensor_value_info("x", x_type, ["N", "C", "H", "W"])],
                  [helper.make_tensor_value_info("y", y_type, ["N", "C", "H", "W"])], inits)  # fmt: skip


@pytest.mark.parametrize(("x_signed", "y_zero_point", "relu", "qmin", "qmax"),
                         [(True, np.uint8(0), 1, 0, 15), (True, np.int8(0), 0, -128, 127),
                          (False, np.uint8(0), 0, 0, 255), (False, np.int8(-3), 1, -8, 7),
                          (True, np.uint8(128), 0, 120, 135)])  # fmt: skip
@pytest.mark.parametrize("size", [1, 63, 64, 200, 70001])
def test_requantize_native_matches_body(isa: str, x_signed: bool, y_zero_point: np.ndarray, relu: int, qmin: int,
                                        qmax: int, size: int) -> None:  # fmt: skip
    """Every input byte, a tail of each length class and several parallel chunks; steps whose ratio puts
    codes exactly on rounding ties (half to even) and past the code range."""
    rng = np.random.default_rng(size)
    dtype = np.int8 if x_signed else np.uint8
    x = np.resize(np.arange(256, dtype=np.uint8), size).view(dtype)
    x = np.where(rng.random(size) < 0.5, x, rng.integers(0, 256, size, dtype=np.uint8).view(dtype))
    x = x.reshape(1, 1, 1, size)
    for x_scale, y_scale, x_zero_point in [(0.25, 0.5, 3), (0.03, 0.17, 0), (1.0, 2.0, -5 if x_signed else 200)]:
        model = _requantize_model(TensorProto.INT8 if x_signed else TensorProto.UINT8, y_zero_point, relu, qmin, qmax,
                                  x_scale, y_scale, x_zero_point)  # fmt: skip
        want = requantize.reference(x, np.float32(x_scale), dtype(x_zero_point), np.float32(y_scale), y_zero_point,
                                    relu, qmin, qmax)  # fmt: skip
        native_out = _ort_run(model, {"x": x})[0]
        body_out = _ort_run(model, {"x": x}, kernels=False)[0]
        assert native_out.dtype == y_zero_point.dtype
        np.testing.assert_array_equal(body_out, want)
        np.testing.assert_array_equal(native_out, want)


def test_requantize_with_steps_fed_at_run_time(isa: str) -> None:
    """Steps and zero points that are graph inputs, not initializers: the kernel builds its table per
    run (with constant ones it builds it once, when the session is made) and checks them per run."""
    model = _requantize_model(TensorProto.UINT8, np.int8(-2), 1, -8, 7, 0.25, 0.5, 0)
    feeds: dict[str, np.ndarray] = {"x": np.arange(256, dtype=np.uint8).reshape(1, 1, 4, 64)}
    for t in list(model.graph.initializer):
        if t.name != "yz":
            model.graph.initializer.remove(t)
            model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, []))
            feeds[t.name] = numpy_helper.to_array(t)
    for x_scale, y_scale in [(0.25, 0.5), (0.1, 0.3)]:
        feeds["xs"], feeds["ys"] = np.array(x_scale, np.float32), np.array(y_scale, np.float32)
        want = requantize.reference(feeds["x"], feeds["xs"], feeds["xz"], feeds["ys"], np.int8(-2), 1, -8, 7)
        np.testing.assert_array_equal(_ort_run(model, feeds)[0], want)
    feeds["ys"] = np.array(np.inf, np.float32)
    with pytest.raises(Exception, match="input y_scale must be a positive finite number"):
        _ort_run(model, feeds)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("nan_x_scale", "input x_scale must be a positive finite number"),
        ("zero_y_scale", "input y_scale must be a positive finite number"),
        ("x_zero_type", "input x_zero_point must have x_codes' type"),
        ("qmax", "outside y_zero_point's type range"),
        ("relu", "relu=6 must be 0 or 1"),
        ("inverted", "qmin=9 > qmax=3"),
    ],
)
def test_malformed_requantize_gets_an_error(change: str, message: str) -> None:
    """The kernel, not the body, answers: each of these the body would run (or fail on differently)."""
    model = _requantize_model(TensorProto.UINT8, np.uint8(0), 1, 0, 15, 0.25, 0.5, 0)
    inits = {t.name: t for t in model.graph.initializer}
    if change == "nan_x_scale":
        inits["xs"].CopyFrom(numpy_helper.from_array(np.float32(np.nan), "xs"))
    elif change == "zero_y_scale":
        inits["ys"].CopyFrom(numpy_helper.from_array(np.float32(0), "ys"))
    elif change == "x_zero_type":
        inits["xz"].CopyFrom(numpy_helper.from_array(np.int8(0), "xz"))
    elif change == "qmax":
        model = _edit(model, qmax=256)
    elif change == "relu":
        model = _edit(model, relu=6)
    elif change == "inverted":
        model = _edit(model, qmin=9, qmax=3)
    with pytest.raises(Exception, match=message):
        _ort_run(model, {"x": np.zeros((1, 2, 3, 4), np.uint8)})


def _add_requant_model(a_shape: list[int], b_shape: list[int], a_type: int, b_type: int, steps: tuple[float, ...],
                       zeros: tuple[int, int], y_zero_point: np.ndarray, qmin: int, qmax: int,
                       relu: int | None = None) -> onnx.ModelProto:  # fmt: skip
    """A one-node AddRequant; ``steps`` = (a_scale, b_scale, y_scale), ``zeros`` = (a, b zero points); with
    ``relu`` (0 or 1) its dequantized output yf too, else only the codes (the second output left out)."""
    dtype = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8}
    values = {"as": np.float32(steps[0]), "bs": np.float32(steps[1]), "ys": np.float32(steps[2]),
              "az": dtype[a_type](zeros[0]), "bz": dtype[b_type](zeros[1]), "yz": y_zero_point}
    inits = [numpy_helper.from_array(v, k) for k, v in values.items()]
    y_type = TensorProto.INT8 if y_zero_point.dtype == np.int8 else TensorProto.UINT8
    symbolic = any(isinstance(d, str) for d in a_shape + b_shape)
    out_shape = a_shape if symbolic else list(np.broadcast_shapes(tuple(a_shape), tuple(b_shape)))
    extra = {} if relu is None else {"relu": relu}
    names = ["a", "as", "az", "b", "bs", "bz", "ys", "yz"]
    node = helper.make_node("AddRequant", names, ["y", "" if relu is None else "yf"], domain=DOMAIN, qmin=qmin,
                            qmax=qmax, **extra)  # fmt: skip
    outputs = [helper.make_tensor_value_info("y", y_type, out_shape)]
    if relu is not None:
        outputs.append(helper.make_tensor_value_info("yf", TensorProto.FLOAT, out_shape))
    return _model(node, [helper.make_tensor_value_info("a", a_type, a_shape),
                         helper.make_tensor_value_info("b", b_type, b_shape)], outputs, inits)  # fmt: skip


@pytest.mark.parametrize(("a_shape", "b_shape"),
                         [([1, 16, 8, 8], [1, 16, 8, 8]), ([2, 3, 5, 7], [2, 3, 5, 7]), ([1, 70001], [1, 70001]),
                          ([2, 9, 33], [9, 33]), ([2, 3, 4, 5], [3, 1, 1]), ([4, 1], [1, 19]),
                          ([], [5, 3])])  # fmt: skip
@pytest.mark.parametrize(("signed", "y_zero_point", "qmin", "qmax"),
                         [((True, True), np.int8(0), -128, 127), ((False, True), np.uint8(128), 120, 135),
                          ((True, False), np.uint8(0), 0, 15), ((False, False), np.int8(-3), -8, 7)])  # fmt: skip
def test_add_requant_native_matches_body(isa: str, a_shape: list[int], b_shape: list[int], signed: tuple[bool, bool],
                                         y_zero_point: np.ndarray, qmin: int, qmax: int) -> None:  # fmt: skip
    """Equal shapes (vector body and tail, several parallel chunks) and broadcasting; steps whose sums
    fall on rounding ties and past the code range; sums that overflow to inf and inf - inf (NaN).  The
    codes alone, and with the dequantized output, with and without its ReLU."""
    rng = np.random.default_rng(len(a_shape) * 100 + len(b_shape))
    types = [TensorProto.INT8 if sg else TensorProto.UINT8 for sg in signed]
    dtypes = [np.int8 if sg else np.uint8 for sg in signed]
    a = rng.integers(0, 256, a_shape, dtype=np.uint8).view(dtypes[0]) if a_shape else np.array(100, dtypes[0])
    b = rng.integers(0, 256, b_shape, dtype=np.uint8).view(dtypes[1])
    cases = [((0.25, 0.5, 0.5), (3, 1), None), ((0.031, 0.017, 0.05), (0, 0), 1), ((3e38, 3e38, 1.0), (0, 0), 0),
             ((0.25, 0.5, 0.5), (3, 1), 1)]  # fmt: skip
    for steps, zeros, relu in cases:
        model = _add_requant_model(a_shape, b_shape, types[0], types[1], steps, zeros, y_zero_point, qmin, qmax, relu)
        want = add_requant.reference(a, np.float32(steps[0]), dtypes[0](zeros[0]), b, np.float32(steps[1]),
                                     dtypes[1](zeros[1]), np.float32(steps[2]), y_zero_point, qmin, qmax)  # fmt: skip
        native_out = _ort_run(model, {"a": a, "b": b})
        body_out = _ort_run(model, {"a": a, "b": b}, kernels=False)
        assert native_out[0].dtype == y_zero_point.dtype and native_out[0].shape == want.shape
        np.testing.assert_array_equal(body_out[0], want)
        np.testing.assert_array_equal(native_out[0], want)
        if relu is not None:
            dequantized = add_requant.dequantized(want, np.float32(steps[2]), y_zero_point, relu)
            assert native_out[1].dtype == np.float32
            np.testing.assert_array_equal(body_out[1], dequantized)
            np.testing.assert_array_equal(native_out[1], dequantized)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("nan_b_scale", "input b_scale must be a positive finite number"),
        ("a_zero_type", "input a_zero_point must have a_codes' type"),
        ("qmax", "outside y_zero_point's type range"),
        ("broadcast", "do not broadcast"),
        ("float_b", "input b_codes must be int8 or uint8"),
        ("relu", "attribute relu=2 must be 0 or 1"),
    ],
)
def test_malformed_add_requant_gets_an_error(change: str, message: str) -> None:
    """The kernel, not the body, answers."""
    dims: list = ["N", "C", "H", "W"]  # any shapes at run time
    model = _add_requant_model(dims, dims, TensorProto.UINT8, TensorProto.UINT8, (0.25, 0.5, 0.5), (0, 0),
                               np.uint8(0), 0, 15)  # fmt: skip
    b_shape = (1, 2, 3, 5) if change == "broadcast" else (1, 2, 3, 4)
    feeds = {"a": np.zeros((1, 2, 3, 4), np.uint8), "b": np.zeros(b_shape, np.uint8)}
    inits = {t.name: t for t in model.graph.initializer}
    if change == "nan_b_scale":
        inits["bs"].CopyFrom(numpy_helper.from_array(np.float32(np.nan), "bs"))
    elif change == "a_zero_type":
        inits["az"].CopyFrom(numpy_helper.from_array(np.int8(0), "az"))
    elif change == "qmax":
        model = _edit(model, qmax=256)
    elif change == "float_b":
        model.graph.input[1].type.tensor_type.elem_type = TensorProto.FLOAT
        feeds["b"] = feeds["b"].astype(np.float32)
    elif change == "relu":
        model = _edit(model, relu=2)
    with pytest.raises(Exception, match=message):
        _ort_run(model, feeds)


def _post_conv_case() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    codes = post_weights.pack(np.full((4, 4, 3, 3), 7), 4)
    x = np.ones((2, 4, 5, 5), np.uint8)
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    w = post_weights.uint4_initializer("w", codes)
    attrs = {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1}
    return _conv_model("PostConv", x, np.float32(0.5), w, ones, zeros, [2, 4, 5, 5], bits=4, **attrs)


def _edit(model: onnx.ModelProto, **attrs: object) -> onnx.ModelProto:
    node = model.graph.node[0]
    for name, value in attrs.items():
        for a in list(node.attribute):
            if a.name == name:
                node.attribute.remove(a)
        node.attribute.append(helper.make_attribute(name, value))
    return model


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("bits", "bits=5 must be 2, 3 or 4"),
        ("group", "does not match input channels"),
        ("pads", "strides / pads / dilations must have"),
        ("float_x", "x_codes must be int8 or uint8"),
        ("rank", "x_codes must be \\[N, C, H, W\\]"),
        ("scale_len", "input w_scale must have shape \\[4\\], got \\[3\\]"),
        ("code", "outside the 2-bit POST range"),
        ("nan_step", "not a positive finite number"),
        ("isa", "is not a kernel path"),
    ],
)
def test_malformed_nodes_get_an_error_not_a_crash(change: str, message: str) -> None:
    model, feeds = _post_conv_case()
    if change == "bits":
        model = _edit(model, bits=5)
    elif change == "group":
        model = _edit(model, group=3)
    elif change == "pads":
        model = _edit(model, pads=[1, 1])
    elif change == "code":  # code 7 (magnitude index 7) exists at 4 bits, not at 2
        model = _edit(model, bits=2)
    elif change == "float_x":
        model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT
        feeds = {"x": feeds["x"].astype(np.float32)}
    elif change == "rank":
        model.graph.input[0].type.tensor_type.shape.dim.pop()
        feeds = {"x": feeds["x"][..., 0]}
    elif change == "scale_len":
        init = next(t for t in model.graph.initializer if t.name == "ws")
        init.CopyFrom(numpy_helper.from_array(np.ones(3, np.float32), "ws"))
    elif change == "nan_step":
        init = next(t for t in model.graph.initializer if t.name == "xs")
        init.CopyFrom(numpy_helper.from_array(np.float32(np.nan), "xs"))
    elif change == "isa":
        os.environ["QEXPORT_ISA"] = "sse9"
    try:
        with pytest.raises(Exception, match=message):
            _ort_run(model, feeds)
    finally:
        os.environ.pop("QEXPORT_ISA", None)


def test_qexport_session_registers_the_library(tmp_path: Path) -> None:
    model = qexport.quantize(zoo.create("resnet20"), weight="post", act="asq", bits=4)
    qexport.calibrate(model, [zoo.example_input(model, 8)])
    path = qexport.export(model, tmp_path / "m.onnx")
    session = qexport.InferenceSession(path)
    assert session.native
    x = zoo.example_input(model, 2).numpy()
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(session.run(x), plain, rtol=1e-4, atol=1e-4)


def _rescale_model(shape: list[int]) -> onnx.ModelProto:
    """A one-node Rescale, every input a graph input (acc [*shape], w_scale and bias [N], row_step
    [*shape[:-1], 1])."""
    n = shape[-1]
    inputs = [helper.make_tensor_value_info("acc", TensorProto.INT32, shape),
              helper.make_tensor_value_info("ws", TensorProto.FLOAT, [n]),
              helper.make_tensor_value_info("step", TensorProto.FLOAT, [*shape[:-1], 1]),
              helper.make_tensor_value_info("b", TensorProto.FLOAT, [n])]  # fmt: skip
    node = helper.make_node("Rescale", ["acc", "ws", "step", "b"], ["y"], domain=DOMAIN)
    return _model(node, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], [])


@pytest.mark.parametrize("shape", [[1, 1], [3, 17], [128, 256], [2, 5, 40], [4, 0], [0, 8], [1, 70000]])
def test_rescale_native_matches_body(isa: str, shape: list[int]) -> None:
    """float(acc) * w_scale * row_step + bias, each operation rounded as the body's Cast, Mul, Mul, Add:
    sums past 2^24 (Cast rounds them), steps and scales that overflow to inf, NaN and -0 among them,
    rows of every tail length and several parallel tasks."""
    acc, step, ws, b = _rescale_inputs(np.random.default_rng(sum(shape)), shape, shape[-1], [*shape[:-1], 1])
    feeds = {"acc": acc, "ws": ws, "step": step, "b": b}
    _assert_native_body_reference(_rescale_model(shape), feeds, rescale.reference(acc, ws, step, b))


def _rescale_inputs(rng: np.random.Generator, shape: list[int], columns: int,
                    step_shape: list[int]) -> tuple[np.ndarray, ...]:  # fmt: skip
    """(acc, step, w_scale, bias): int32 sums of every size (past 2^24 too); overflowing, -0, NaN and
    denormal scales, inf / -0 / NaN biases, an overflowing and a NaN step."""
    acc = rng.integers(-(2**31), 2**31, shape, dtype=np.int64).astype(np.int32)
    acc[..., ::3] //= 4096
    step = np.asarray(rng.random(step_shape) + 0.01, np.float32)
    ws = (rng.standard_normal(columns) * 1e-3).astype(np.float32)
    b = rng.standard_normal(columns).astype(np.float32)
    if columns >= 8:
        ws[:4] = [np.float32(3e38), -0.0, np.nan, np.float32(1e-45)]
        b[4:8] = [np.inf, -0.0, np.nan, -np.inf]
    if step.size >= 2:
        step.reshape(-1)[:2] = [np.float32(3e38), np.nan]
    return acc, step, ws, b


def _assert_native_body_reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray], want: np.ndarray) -> None:
    """The function body and the native kernel both give ``want`` bit for bit (NaNs and -0 too)."""
    body_out = _ort_run(model, feeds, kernels=False)[0]
    native_out = _ort_run(model, feeds)[0]
    np.testing.assert_array_equal(body_out.view(np.uint32), want.view(np.uint32))
    np.testing.assert_array_equal(native_out.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("acc_type", "Rescale input acc must be int32"),
        ("ws_shape", "Rescale input w_scale must have shape \\[8\\], got \\[7\\]"),
        ("bias_type", "Rescale input bias must be float32"),
        ("step_shape", "Rescale input row_step .* must have shape \\[3, 1\\], got \\[1, 1\\]"),
        ("scalar", "Rescale input acc must have shape \\[..., N\\]"),
    ],
)
def test_malformed_rescale_gets_an_error(change: str, message: str) -> None:
    """Inputs of the wrong type or shape reach the kernel (every input is typed ``any``) and get its
    one-line error, before it reads any of them."""
    feeds = {"acc": np.zeros((3, 8), np.int32), "ws": np.ones(8, np.float32), "step": np.ones((3, 1), np.float32),
             "b": np.zeros(8, np.float32)}  # fmt: skip
    model = _rescale_model([3, 8])
    for value in model.graph.input:  # any shape: the kernel checks them
        value.type.tensor_type.ClearField("shape")
    if change == "acc_type":
        feeds["acc"] = feeds["acc"].astype(np.int64)
        model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    elif change == "ws_shape":
        feeds["ws"] = np.ones(7, np.float32)
    elif change == "bias_type":
        feeds["b"] = feeds["b"].astype(np.float64)
        model.graph.input[3].type.tensor_type.elem_type = TensorProto.DOUBLE
    elif change == "step_shape":
        feeds["step"] = np.ones((1, 1), np.float32)
    elif change == "scalar":
        feeds["acc"] = np.array(5, np.int32)
    with pytest.raises(Exception, match=message):
        _ort_run(model, feeds)


def _post_rescale_model(shape: list[int], per_row: bool) -> onnx.ModelProto:
    """A one-node PostRescale: acc [*shape] (even | odd columns), x_scale [] or [*shape[:-1], 1], w_scale
    and bias [shape[-1] / 2], all graph inputs."""
    m = shape[-1] // 2
    inputs = [helper.make_tensor_value_info("acc", TensorProto.INT32, shape),
              helper.make_tensor_value_info("xs", TensorProto.FLOAT, [*shape[:-1], 1] if per_row else []),
              helper.make_tensor_value_info("ws", TensorProto.FLOAT, [m]),
              helper.make_tensor_value_info("b", TensorProto.FLOAT, [m])]  # fmt: skip
    node = helper.make_node("PostRescale", ["acc", "xs", "ws", "b"], ["y"], domain=DOMAIN)
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [*shape[:-1], m])
    return _model(node, inputs, [out], [])


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("shape", [[1, 2], [3, 34], [128, 512], [2, 5, 80], [4, 0], [0, 8], [1, 70000]])
def test_post_rescale_native_matches_body(isa: str, shape: list[int], per_row: bool) -> None:
    """(float(even) + float(odd) * 0.70710677) * (x_scale * w_scale) + bias, each operation rounded as
    the body's: sums past 2^24, scales that overflow, inf, NaN and -0 among them, every tail length and
    several parallel tasks; one step for all rows or one per row."""
    rng = np.random.default_rng(sum(shape) + per_row)
    acc, xs, ws, b = _rescale_inputs(rng, shape, shape[-1] // 2, [*shape[:-1], 1] if per_row else [])
    feeds = {"acc": acc, "xs": xs, "ws": ws, "b": b}
    _assert_native_body_reference(_post_rescale_model(shape, per_row), feeds, post_rescale.reference(acc, xs, ws, b))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("acc_type", "PostRescale input acc must be int32"),
        ("odd_columns", "PostRescale input acc must have shape \\[..., 2M\\]"),
        ("ws_shape", "PostRescale input w_scale must have shape \\[4\\], got \\[8\\]"),
        ("xs_shape", "PostRescale input x_scale .* must have shape \\[3, 1\\], got \\[3\\]"),
        ("bias_type", "PostRescale input bias must be float32"),
    ],
)
def test_malformed_post_rescale_gets_an_error(change: str, message: str) -> None:
    """Inputs of the wrong type or shape reach the kernel (every input is typed ``any``) and get its
    one-line error, before it reads any of them."""
    feeds = {"acc": np.zeros((3, 8), np.int32), "xs": np.ones((3, 1), np.float32), "ws": np.ones(4, np.float32),
             "b": np.zeros(4, np.float32)}  # fmt: skip
    model = _post_rescale_model([3, 8], True)
    for value in model.graph.input:  # any shape: the kernel checks them
        value.type.tensor_type.ClearField("shape")
    if change == "acc_type":
        feeds["acc"] = feeds["acc"].astype(np.int64)
        model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    elif change == "odd_columns":
        feeds["acc"] = np.zeros((3, 7), np.int32)
    elif change == "ws_shape":
        feeds["ws"] = np.ones(8, np.float32)
    elif change == "xs_shape":
        feeds["xs"] = np.ones(3, np.float32)
    elif change == "bias_type":
        feeds["b"] = feeds["b"].astype(np.float64)
        model.graph.input[3].type.tensor_type.elem_type = TensorProto.DOUBLE
    with pytest.raises(Exception, match=message):
        _ort_run(model, feeds)
