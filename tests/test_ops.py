"""The qexport custom operators: each function body (in onnxruntime at both optimisation levels, at
batch 1 and > 1, and in onnx's ReferenceEvaluator) equals the op's numpy reference, and the
reference equals the PyTorch quantizer it deploys."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from qexport.errors import QexportError
from qexport.ops import (
    DOMAIN,
    VERSION,
    asq_quantize,
    asq_quantize_rows,
    functions_for,
    int_conv,
    post_conv,
    post_matmul,
    post_weights,
)
from qexport.quant.asq import AsqQuantizer
from qexport.quant.post import PostQuantizer

LEVELS = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)


def _model(node: onnx.NodeProto, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           inits: list[onnx.TensorProto]) -> onnx.ModelProto:  # fmt: skip
    graph = helper.make_graph([node], "op", inputs, outputs, inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, VERSION)],
        functions=functions_for({node.op_type}),
    )
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def _runs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
    """Outputs from onnxruntime at both optimisation levels and from the ReferenceEvaluator."""
    results = []
    for level in LEVELS:
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        results.append(ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
            None, feeds))  # fmt: skip
    results.append(ReferenceEvaluator(model).run(None, feeds))
    return results


def _asq_params(q: AsqQuantizer) -> list[np.ndarray]:
    a = q.adapter
    if a.fc1 is None:
        return [a.fc2.weight.detach().numpy().T.copy(), a.fc2.bias.detach().numpy(), np.ones((1, 1), np.float32),
                np.zeros(1, np.float32)]  # fmt: skip
    return [t.detach().numpy().T.copy() if t.dim() == 2 else t.detach().numpy()
            for t in (a.fc1.weight, a.fc1.bias, a.fc2.weight, a.fc2.bias)]  # fmt: skip


@pytest.mark.parametrize(
    ("bits", "signed", "channels", "pool"),
    [(4, False, 16, True), (2, True, 6, True), (3, True, 32, False), (8, False, 4, False)],
)
def test_asq_ops_match_reference_and_quantizer(bits: int, signed: bool, channels: int, pool: bool) -> None:
    torch.manual_seed(bits)
    q = AsqQuantizer(bits, signed, channels, pool=pool).eval()
    with torch.no_grad():
        q.adapter.fc2.weight.normal_(0, 0.3)  # betas well away from 1, different per sample
    shape = [5, channels, 6, 7] if pool else [5, 9, channels]
    x = torch.randn(shape) * 2
    q.initialize_from(x)
    r = q.code_range
    params = [np.asarray(q.step.detach().numpy(), np.float32), *_asq_params(q)]
    op, ref = ("AsqQuantize", asq_quantize.reference) if pool else ("AsqQuantizeRows", asq_quantize_rows.reference)
    zp_type, zp = (TensorProto.INT8, np.int8(0)) if signed else (TensorProto.UINT8, np.uint8(0))
    names = ["step", "zero_point", "w1", "b1", "w2", "b2"]
    inits = [
        numpy_helper.from_array(np.asarray(v), n) for n, v in zip(names, [params[0], zp, *params[1:]], strict=True)
    ]
    node = helper.make_node(op, ["x", *names], ["y", "codes", "step_out"], domain=DOMAIN, qmin=r.qmin, qmax=r.qmax)
    dyn = ["N", *shape[1:]]
    step_shape = ["N", 1, 1, 1] if pool else ["N", shape[1], 1]
    model = _model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, dyn)],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, dyn),
                    helper.make_tensor_value_info("codes", zp_type, dyn),
                    helper.make_tensor_value_info("step_out", TensorProto.FLOAT, step_shape)], inits)  # fmt: skip
    y_ref, codes_ref, step_ref = ref(x.numpy(), *params, r.qmin, r.qmax)
    # the reference is the quantizer: same codes and steps as PyTorch's eval forward
    np.testing.assert_array_equal(codes_ref, q.codes(x).numpy().astype(np.int64))
    np.testing.assert_allclose(y_ref, q(x).detach().numpy(), rtol=1e-6, atol=1e-7)
    for batch in (1, 5):
        for y, codes, step in _runs(model, {"x": x.numpy()[:batch]}):
            np.testing.assert_array_equal(codes.astype(np.int64), codes_ref[:batch])
            np.testing.assert_allclose(step, step_ref[:batch], rtol=1e-6)
            np.testing.assert_allclose(y, y_ref[:batch], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_post_weight_decoding_is_exact(bits: int) -> None:
    """w_even + w_odd / sqrt 2, times 2^-E, is the POST magnitude of every code, in float64."""
    q = PostQuantizer(bits, channels=1)
    levels = q.levels().double().numpy()
    signed_index = np.arange(-post_weights.magnitudes(bits), post_weights.magnitudes(bits) + 1)
    codes = post_weights.pack(signed_index, bits)
    even, odd = post_weights.reference(codes, bits)
    value = (even + odd / math.sqrt(2.0)) * 2.0 ** -post_weights.shift(bits)
    np.testing.assert_allclose(value, levels, rtol=1e-6)
    assert np.abs(np.concatenate([even, odd])).max() == 2 ** post_weights.shift(bits)
    # the function body decodes the same integers (through a PostMatMul with an identity input)
    k = len(codes)
    w = post_weights.uint4_initializer("w", codes.reshape(k, 1))
    inits = [w, numpy_helper.from_array(np.float32(1.0), "xs"), numpy_helper.from_array(np.ones(1, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(1, np.float32), "b"),
             numpy_helper.from_array(np.int8(0), "xz")]  # fmt: skip
    node = helper.make_node("PostMatMul", ["x", "xs", "w", "ws", "b", "xz"], ["y"], domain=DOMAIN, bits=bits)
    model = _model(node, [helper.make_tensor_value_info("x", TensorProto.INT8, ["N", k])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], inits)  # fmt: skip
    for (y,) in _runs(model, {"x": np.eye(k, dtype=np.int8)}):
        np.testing.assert_allclose(y[:, 0], (even + odd * np.float32(post_weights.SQRT_HALF)).astype(np.float32))


def test_post_pack_rejects_out_of_range_codes() -> None:
    with pytest.raises(QexportError, match="exceed the 3-bit range"):
        post_weights.pack(np.array([0, 4]), 3)
    with pytest.raises(QexportError, match="2, 3 or 4 bits"):
        post_weights.pack(np.array([0]), 5)


@pytest.mark.parametrize(
    ("group", "stride", "dilation", "per_sample"), [(1, 1, 1, False), (2, 2, 1, True), (8, 1, 2, False)]
)
def test_post_conv_matches_reference(group: int, stride: int, dilation: int, per_sample: bool) -> None:
    rng = np.random.default_rng(group)
    bits, cin, cout = 4, 8, 8
    level = rng.integers(-7, 8, size=(cout, cin // group, 3, 3))
    codes = post_weights.pack(level, bits)
    x = rng.integers(0, 16, size=(3, cin, 9, 9)).astype(np.uint8)
    x_scale = (rng.random((3, 1, 1, 1)) + 0.5).astype(np.float32) if per_sample else np.float32(0.37)
    w_scale, bias = (rng.random(cout) + 0.1).astype(np.float32), rng.standard_normal(cout).astype(np.float32)
    attrs = {"strides": [stride] * 2, "pads": [1, 1, 1, 1], "dilations": [dilation] * 2, "group": group}
    ref = post_conv.reference(x, x_scale, codes, w_scale, bias, bits, **attrs)
    inits = [post_weights.uint4_initializer("w", codes), numpy_helper.from_array(w_scale, "ws"),
             numpy_helper.from_array(bias, "b")]  # fmt: skip
    feeds = {"x": x}
    inputs = [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", cin, 9, 9])]
    if per_sample:
        inputs.append(helper.make_tensor_value_info("xs", TensorProto.FLOAT, ["N", 1, 1, 1]))
        feeds["xs"] = x_scale
    else:
        inits.append(numpy_helper.from_array(x_scale, "xs"))
    node = helper.make_node("PostConv", ["x", "xs", "w", "ws", "b"], ["y"], domain=DOMAIN, bits=bits, relu=0, **attrs)
    model = _model(node, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", cout, *ref.shape[2:]])],
                   inits)  # fmt: skip
    for (y,) in _runs(model, feeds):
        np.testing.assert_allclose(y, ref, rtol=2e-6, atol=1e-6)
    # and it is the float convolution of the dequantized POST weights, up to float rounding
    w_hat = np.sign(level) * np.sqrt(2.0) ** -(post_weights.magnitudes(bits) - np.abs(level)) * (np.abs(level) > 0)
    w_hat = w_hat * (w_scale.astype(np.float64) * 2.0 ** post_weights.shift(bits)).reshape(-1, 1, 1, 1)
    xs = np.broadcast_to(np.asarray(x_scale, np.float64), (3, 1, 1, 1))
    x_hat, b64 = torch.from_numpy(x.astype(np.float64) * xs), torch.from_numpy(bias.astype(np.float64))
    conv = torch.nn.functional.conv2d(x_hat, torch.from_numpy(w_hat), b64, stride, 1, dilation, group)
    np.testing.assert_allclose(ref, conv.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op_type", ["PostConv", "IntConv"])
@pytest.mark.parametrize("relu", [0, 1, 6])
def test_conv_relu_attribute(op_type: str, relu: int) -> None:
    """The function bodies apply ReLU / ReLU6 as the references do (ReluBounds), NaN kept."""
    rng = np.random.default_rng(relu)
    x = rng.integers(0, 16, size=(2, 4, 6, 6)).astype(np.uint8)
    w_scale, bias = np.full(4, 0.5, np.float32), np.array([0.0, np.nan, 3.0, -3.0], np.float32)
    attrs = {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1, "relu": relu}
    if op_type == "PostConv":
        codes = post_weights.pack(rng.integers(-7, 8, size=(4, 4, 3, 3)), 4)
        w, extra = post_weights.uint4_initializer("w", codes), {"bits": 4}
        ref = post_conv.reference(x, np.float32(0.3), codes, w_scale, bias, 4, **attrs)
    else:
        codes = rng.integers(-8, 8, size=(4, 4, 3, 3)).astype(np.int8)
        w, extra = numpy_helper.from_array(codes, "w"), {}
        ref = int_conv.reference(x, np.float32(0.3), codes, w_scale, bias, **attrs)
    assert np.isnan(ref[:, 1]).all() and (relu != 6 or (ref == 6).any()) and (relu == 0 or (ref == 0).any())
    inits = [w, *(numpy_helper.from_array(v, n) for n, v in (("ws", w_scale), ("b", bias), ("xs", np.float32(0.3))))]
    node = helper.make_node(op_type, ["x", "xs", "w", "ws", "b"], ["y"], domain=DOMAIN, **extra, **attrs)
    inputs = [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", 4, 6, 6])]
    model = _model(node, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])], inits)
    for (y,) in _runs(model, {"x": x}):
        np.testing.assert_allclose(y, ref, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("offset", [False, True])
def test_post_matmul_matches_reference_per_row(offset: bool) -> None:
    """Signed codes as they are (zero point int8 0) and stored as uint8 + 128 (what the exporter writes):
    the same y."""
    rng = np.random.default_rng(3)
    bits, k, m = 3, 24, 5
    codes = post_weights.pack(rng.integers(-3, 4, size=(k, m)), bits)
    x = rng.integers(-8, 8, size=(2, 7, k)).astype(np.int8)
    x_scale = (rng.random((2, 7, 1)) + 0.5).astype(np.float32)
    w_scale, bias = (rng.random(m) + 0.1).astype(np.float32), rng.standard_normal(m).astype(np.float32)
    ref = post_matmul.reference(x, x_scale, codes, w_scale, bias, bits)
    zero = np.uint8(128) if offset else np.int8(0)
    if offset:
        x = (x.astype(np.int16) + 128).astype(np.uint8)
        np.testing.assert_array_equal(post_matmul.reference(x, x_scale, codes, w_scale, bias, bits, 128), ref)
    inits = [post_weights.uint4_initializer("w", codes), numpy_helper.from_array(w_scale, "ws"),
             numpy_helper.from_array(bias, "b"), numpy_helper.from_array(np.asarray(zero), "xz")]  # fmt: skip
    node = helper.make_node("PostMatMul", ["x", "xs", "w", "ws", "b", "xz"], ["y"], domain=DOMAIN, bits=bits)
    x_type = TensorProto.UINT8 if offset else TensorProto.INT8
    model = _model(node, [helper.make_tensor_value_info("x", x_type, ["N", 7, k]),
                          helper.make_tensor_value_info("xs", TensorProto.FLOAT, ["N", 7, 1])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 7, m])], inits)  # fmt: skip
    for (y,) in _runs(model, {"x": x, "xs": x_scale}):
        np.testing.assert_allclose(y, ref, rtol=2e-6, atol=1e-6)


def test_post_accumulator_bound() -> None:
    codes = post_weights.pack(np.full((2, 100), 7), 4)  # every weight the largest integer, 8
    assert post_weights.accumulator_bound(codes, 4, 255) == 8 * 100 * 255
