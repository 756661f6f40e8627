"""The integer graph of the uniform quantizers (LSQ, NIPQ fixed and mixed, 2 to 8 bits, `deployable`
placement), read from onnxruntime's own optimised graph: every conv runs as QLinearConv (or, where its
output feeds no single quantizer, as the native IntConv), every linear layer as an integer matmul,
and every residual add of the ResNets as QLinearAdd (but not where ASQ adapters read the sums), its
output requantized code to code for the next layer (Requantize).
Correctness of the graph's shape, so a test; the speed it buys is measured in tools/bench.py."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

import qexport
from qexport import bench, native, zoo
from qexport.ops import DOMAIN
from qexport.summary import onnx_summary
from tests.test_matrix import _mix_bits, _settle_batchnorm

MODELS = {  # name -> (zoo kwargs, image side, residual adds)
    "resnet20": ({}, None, 9),
    "resnet18": ({"num_classes": 10}, 32, 8),
    "transformer": ({"layers": 2, "dim": 64, "heads": 4, "ff": 128, "seq_len": 32, "vocab_size": 256}, None, 0),
}
VARIANTS = {
    "lsq-2": {"weight": "lsq", "act": "lsq", "bits": 2},
    "lsq-3": {"weight": "lsq", "act": "lsq", "bits": 3},
    "lsq-4": {"weight": "lsq", "act": "lsq", "bits": 4},
    "lsq-8": {"weight": "lsq", "act": "lsq", "bits": 8},
    "nipq-4": {"weight": "nipq", "act": "nipq", "bits": 4},
    "nipq-mixed": {"weight": "nipq", "act": "nipq", "bits": 4, "learn_bits": True},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", list(MODELS))
def test_uniform_variants_run_as_integer_kernels(tmp_path: Path, name: str, variant: str) -> None:
    kwargs, side, adds = MODELS[name]
    model = zoo.create(name, **kwargs)
    x = zoo.example_input(model, 16, size=side, seed=3)
    _settle_batchnorm(model, x)
    q = qexport.quantize(model, **VARIANTS[variant])
    if variant == "nipq-mixed":
        _mix_bits(q, seed=7)
    qexport.calibrate(q, [x])
    path = qexport.export(q, tmp_path / "m.onnx", input_shape=[1, *x.shape[1:]])
    exported = onnx.load(path).graph.node
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in q.modules())
    linears = sum(isinstance(m, torch.nn.Linear) for m in q.modules())
    int_convs = sum(n.op_type == "IntConv" and n.domain == DOMAIN for n in exported)

    k = bench.optimized_kernels(path, native=native.available())
    ops = k.ops
    assert k.integer_conv + k.float_conv == convs
    if native.available():
        assert k.float_conv == 0, ops  # IntConv runs in the native kernel
    else:
        assert k.float_conv == int_convs, ops  # only IntConv function bodies (a float Conv) stay float
    assert ops.get("QLinearConv", 0) == convs - int_convs
    # linear layers: MatMulIntegerToFloat (3-D input) or MatMulInteger (2-D), never a float Gemm / MatMul
    assert k.float_matmul == 0 and k.integer_matmul >= linears, ops
    assert ops.get("MatMulNBits", 0) == 0
    if adds:  # every residual add of the ResNets
        assert ops.get("QLinearAdd", 0) == adds and k.float_add == 0, ops
    if adds and native.available() and not variant.startswith("nipq"):
        # each add's output codes reach the next conv's quantizer and the next add's as codes (two
        # Requantize); only the last add's output is dequantized (a ReLU, then the float pool)
        assert ops.get("Requantize", 0) == 2 * (adds - 1), ops
        assert ops.get("DequantizeLinear", 0) <= 1 and ops.get("Relu", 0) <= 1, ops


def test_mobilenetv2_lsq_runs_every_conv_in_integer_kernels(tmp_path: Path) -> None:
    """MobileNetV2 with LSQ: its last projection conv feeds the int8 codes of an IntConv (the 1x1 conv
    before the pool) from uint8 input codes, which QLinearConv cannot take (one type in and out); it
    is written as IntConv and fused into IntConvRequant, so no conv stays float (it was a float Conv
    dequantizing its weights every run).  The five projection convs that feed two quantizers (the
    next block's and the residual add's) are written once per quantizer, each a QLinearConv; the stem
    (3 input channels) is an IntConv.  The benchmark counts the *Requant ops as integer convs."""
    model = zoo.create("mobilenetv2", num_classes=10)
    x = zoo.example_input(model, 8, size=32, seed=3)
    _settle_batchnorm(model, x)
    q = qexport.quantize(model, weight="lsq", act="lsq", bits=4)
    qexport.calibrate(q, [x])
    path = qexport.export(q, tmp_path / "m.onnx", input_shape=[1, *x.shape[1:]])
    exported = onnx.load(path).graph.node
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in q.modules())
    native_convs = [n for n in exported if n.domain == DOMAIN and n.op_type in ("IntConv", "IntConvRequant")]
    assert any(n.op_type == "IntConvRequant" and n.name.startswith("features.17.block.2") for n in native_convs)
    assert any(n.name.startswith("features.0.0") for n in native_convs)
    written = [n for n in exported if n.op_type in ("Conv", "IntConv", "IntConvRequant")]
    copies = [n.name for n in written if n.op_type == "Conv" and n.name.endswith(".1")]
    assert len(written) == convs + 5 and len(copies) == 5 and all(".block.2" in c for c in copies), copies
    k = bench.optimized_kernels(path, native=native.available())
    assert k.integer_conv + k.float_conv == len(written), k.ops
    if native.available():
        assert k.float_conv == 0, k.ops
    assert k.ops.get("QLinearConv", 0) == len(written) - len(native_convs), k.ops


@pytest.mark.parametrize(("act", "adds", "exact"), [("asq", "auto", True), ("asq", "fused", False),
                                                  ("nipq", "auto", False), ("nipq", "exact", True)])  # fmt: skip
def test_residual_adds_fused_or_exact(tmp_path: Path, act: str, adds: str, exact: bool) -> None:
    """Exact adds (the default with ASQ activations, where a one-code difference moves a sample's
    step) are exported as AddRequant, whose native kernel and whose function body (a Sum, which
    onnxruntime does not fuse into QLinearAdd, whose requantization puts a few code pairs per million
    one code off) add the dequantized codes in float, exactly as the fake-quant model adds them.  Fused
    adds run as QLinearAdd."""
    model = zoo.create("resnet20")
    x = zoo.example_input(model, 16, seed=3)
    _settle_batchnorm(model, x)
    q = qexport.quantize(model, weight="nipq" if act == "nipq" else "lsq", act=act, bits=4)
    qexport.calibrate(q, [x])
    path = qexport.export(q, tmp_path / "m.onnx", input_shape=[1, *x.shape[1:]], adds=adds)
    adds_in_model = MODELS["resnet20"][2]
    exported = onnx.load(path).graph.node
    assert sum(n.op_type == "AddRequant" and n.domain == DOMAIN for n in exported) == (adds_in_model if exact else 0)
    assert not any(n.op_type == "Sum" for n in exported)
    # ASQ: each sum's DequantizeLinear -> Relu, the next block's quantizer's float input, is the add's
    # second output (all but the last block's, which the average pool reads); NIPQ's sums feed
    # onnxruntime's QDQ convs, which keep their DequantizeLinear
    folded = [n for n in exported if n.op_type == "AddRequant" and len(n.output) > 1 and n.output[1]]
    assert len(folded) == (adds_in_model - 1 if exact and act == "asq" else 0)
    sums = {n.output[0] for n in exported if n.op_type == "AddRequant"}
    dqs = {n.output[0] for n in exported if n.op_type == "DequantizeLinear" and n.input[0] in sums}
    relus = {n.output[0] for n in exported if n.op_type == "Relu" and n.input[0] in dqs}
    asq_inputs = {n.input[0] for n in exported if n.op_type == "AsqQuantize"}
    assert not (dqs | relus) & asq_inputs  # no ASQ quantizer reads a sum through a separate DequantizeLinear
    k = bench.optimized_kernels(path, native=native.available())
    assert k.ops.get("QLinearAdd", 0) == (0 if exact else adds_in_model), k.ops
    if native.available():
        assert k.ops.get("AddRequant", 0) == (adds_in_model if exact else 0) and k.float_add == 0, k.ops
    else:  # the function body's float Sum
        assert k.float_add == (adds_in_model if exact else 0), k.ops
    assert f"quantized residual adds: {'exact' if exact else 'fused'}" in onnx_summary(str(path))
    assert qexport.check(q, path, samples=16, reference_samples=0).passed  # the parity contract holds either way
    with pytest.raises(qexport.QexportError, match="adds='sum' is not one of auto, exact, fused"):
        qexport.export(q, tmp_path / "bad.onnx", input_shape=[1, *x.shape[1:]], adds="sum")


class _PooledCNN(torch.nn.Module):
    """VGG-style: conv -> BN -> ReLU -> MaxPool -> the next conv, pools of 2x2, of 3x3 with padding (a
    ResNet stem's) and 2x2 with ceil_mode (a partial last window)."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[torch.nn.Module]:
            return [torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False), torch.nn.BatchNorm2d(cout), torch.nn.ReLU()]

        self.features = torch.nn.Sequential(
            *block(3, 16), *block(16, 16), torch.nn.MaxPool2d(2),
            *block(16, 32), torch.nn.MaxPool2d(3, 2, 1),
            *block(32, 32), torch.nn.MaxPool2d(2, ceil_mode=True), *block(32, 32), *block(32, 32),
            torch.nn.MaxPool2d(2), *block(32, 32),
        )  # fmt: skip
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


@pytest.mark.parametrize("bits", [4, 8])
def test_max_pooled_convs_stay_integer(tmp_path: Path, bits: int) -> None:
    """A conv whose output goes through a max pool into one uniform quantizer is written as a QDQ conv
    and its quantizer moved before the pool (lower.py's ``_pooled_codes``: quantizing is non-decreasing,
    so the code of a window's max is the max of its codes): onnxruntime fuses the conv into QLinearConv
    and pools its channels-last codes (NhwcMaxPool).  Before, each such conv was an IntConv with a float
    output, pooled in float and quantized again.  Parity holds with pads and a partial window."""
    model = _PooledCNN()
    x = torch.randn(16, 3, 42, 42)  # 42 -> 21 -> 11 -> 6 (ceil, a partial window) -> 3
    _settle_batchnorm(model, x)
    for bn in model.modules():  # momentum None (a cumulative average) cannot be captured: data-dependent
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.momentum = 0.1
    q = qexport.quantize(model.eval(), weight="lsq", act="lsq", bits=bits, example_inputs=(x[:1],))
    qexport.calibrate(q, [x])
    path = qexport.export(q, tmp_path / "m.onnx", x[:1])
    graph = onnx.load(path).graph
    producers = {o: n for n in graph.node for o in n.output}
    pools = [n for n in graph.node if n.op_type == "MaxPool"]
    # the last pool's codes go into an IntConv (its output is pooled in float, not quantized): that
    # pool stays float, after an IntConv (onnxruntime's channels-first 8-bit MaxPool is slow)
    codes = "Clip" if bits < 8 else "QuantizeLinear"
    assert [producers[p.input[0]].op_type for p in pools] == [codes, codes, codes, "IntConv"]
    k = bench.optimized_kernels(path, native=native.available())
    assert k.ops.get("NhwcMaxPool", 0) == 3 and k.ops.get("MaxPool", 0) == 1, k.ops
    if native.available():  # the stem (3 input channels) and the last two are IntConvs
        assert k.float_conv == 0 and k.ops.get("QLinearConv", 0) == 4, k.ops
    assert qexport.check(q, path, samples=16, reference_samples=0).passed
