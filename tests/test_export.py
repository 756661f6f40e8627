"""The ONNX exporter as far as it goes (uniform LSQ / NIPQ quantizers in CNNs): valid ONNX, BN
folded, integer weights and int32 biases, and code-for-code parity with the fake-quant model when
each quantizer is fed the runtime's own upstream tensors (teacher forcing), at ORT_DISABLE_ALL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import qexport
from qexport import data, zoo
from qexport.errors import QexportError
from qexport.export import export


def _session(proto: onnx.ModelProto, level: ort.GraphOptimizationLevel) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _teacher_forced(model: torch.nn.Module, path: Path, x: torch.Tensor) -> tuple[dict[str, tuple[float, int]], float]:
    """Per quantizer (identical-code fraction, largest step difference) and top-1 agreement."""
    proto = onnx.load(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    codes, offsets = json.loads(meta["codes"]), json.loads(meta.get("code_offsets", "{}"))
    for name in codes.values():
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sess = _session(proto, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x.numpy()}), strict=True))
    result: dict[str, tuple[float, int]] = {}

    def hook(q: qexport.quant.Quantizer, inputs: tuple, _out: torch.Tensor, qpath: str) -> torch.Tensor:
        theirs = outs[codes[qpath]].astype(np.int64) - offsets.get(qpath, 0)  # uint8 + 128 storage
        diff = np.abs(q.codes(inputs[0]).numpy().astype(np.int64) - theirs)
        result[qpath] = (float((diff == 0).mean()), int(diff.max()))
        return torch.from_numpy(theirs.astype(np.float32)) * q.describe().scale

    handles = [model.get_submodule(p).register_forward_hook(lambda q, i, o, p=p: hook(q, i, o, p)) for p in codes]
    with torch.no_grad():
        ref = model(x).numpy()
    for h in handles:
        h.remove()
    return result, float((ref.argmax(1) == outs["output"].argmax(1)).mean())


@pytest.mark.parametrize(
    ("weight", "act", "bits", "placement", "kw"),
    [
        ("lsq", "lsq", 4, "deployable", {}),
        ("lsq", "lsq", 2, "deployable", {}),
        ("nipq", "nipq", 6, "deployable", {"learn_bits": True}),
        ("lsq", "lsq", 3, "paper", {}),
        ("nipq", "nipq", 8, "deployable", {}),
    ],
)
def test_resnet20_uniform_parity(tmp_path: Path, weight: str, act: str, bits: int, placement: str, kw: dict) -> None:
    model = qexport.quantize(zoo.create("resnet20"), weight=weight, act=act, bits=bits, placement=placement, **kw)
    calib = zoo.example_input(model, 32, seed=1)
    qexport.calibrate(model, [calib])
    model.eval()
    path = export(model, tmp_path / "m.onnx")
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops  # folded
    weights = [i for i in proto.graph.initializer if i.name.endswith("weight_codes")]
    # integer weights, packed by default: int4 at 4 bits and below (the 8-bit first / last layers int8)
    packed = {onnx.TensorProto.INT8, onnx.TensorProto.INT4}
    assert weights and {i.data_type for i in weights} == (packed if bits <= 4 else {onnx.TensorProto.INT8})
    assert not {i.name for i in proto.graph.initializer} & {i.name for i in proto.graph.input}
    per_tensor, agree = _teacher_forced(model, path, zoo.example_input(model, 16, seed=2))
    assert len(per_tensor) == sum(isinstance(m, qexport.quant.Quantizer) and m.role == "act" for m in model.modules())
    for qpath, (same, step) in per_tensor.items():
        assert same >= 0.999 and step <= 1, f"{qpath}: {same:.5f} identical, max {step} steps"
    assert agree == 1.0


def test_runs_at_every_level_and_batch(tmp_path: Path) -> None:
    model = qexport.quantize(zoo.create("resnet20"), bits=4)
    qexport.calibrate(model, [zoo.example_input(model, 16)])
    path = export(model, tmp_path / "m.onnx")
    proto = onnx.load(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["qexport_version"] == qexport.__version__
    layers = json.loads(meta["layers"])
    assert layers[0]["weight"]["bits"] == 8 and layers[1]["weight"] == {"method": "lsq", "bits": 4, "signed": True}
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        sess = _session(proto, level)
        for batch in (1, 8):
            out = sess.run(None, {"input": zoo.example_input(model, batch).numpy()})[0]
            assert out.shape == (batch, 10) and np.isfinite(out).all()


def test_float_model_matches(tmp_path: Path) -> None:
    model = zoo.create("mobilenetv2", num_classes=10).eval()
    path = export(model, tmp_path / "f.onnx", input_shape=[1, 3, 64, 64])
    x = torch.randn(2, 3, 64, 64)
    out = _session(onnx.load(path), ort.GraphOptimizationLevel.ORT_ENABLE_ALL).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(out - model(x).numpy()).max() < 1e-4


def test_post_weights_on_a_float_input_name_the_layer(tmp_path: Path) -> None:
    """A POST layer runs on integer codes: weight-only POST has nothing to feed it."""
    model = qexport.quantize(zoo.create("resnet20"), weight="post", act=None, bits=4, placement="paper")
    qexport.calibrate(model, [zoo.example_input(model, 4)])
    with pytest.raises(QexportError, match=r"'layers\.0\.0\.conv1' has POST weights but a float input"):
        export(model, tmp_path / "x.onnx")


def test_post_weights_on_wide_activations_name_the_layer(tmp_path: Path) -> None:
    """POST layers take 8-bit codes (their ops' inputs are int8 / uint8): NIPQ's learned widths past 8
    bits get a clear error, not a file onnxruntime cannot load."""
    model = qexport.quantize(zoo.create("resnet20"), weight="post", act="nipq", bits=4, placement="paper")
    qexport.calibrate(model, [zoo.example_input(model, 4)])
    q = model.get_submodule("layers.0.0.conv1").act_quant
    q.frozen_bits.fill_(10)
    q.refresh_flags()
    with pytest.raises(QexportError, match=r"'layers\.0\.0\.conv1' has POST weights and 10-bit activations"):
        export(model, tmp_path / "x.onnx")


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["resnet20_lsq_w4a4", "resnet20_nipq_mixed_avg4"])
def test_trained_checkpoint_on_real_images(tmp_path: Path, name: str) -> None:
    """Free-running (no teacher forcing): the ONNX model's top-1 equals the fake-quant model's on 500
    CIFAR-10 test images, at both optimisation levels, at batch 1 and batch 50."""
    model = qexport.load(ROOT / "models" / f"{name}.pt")
    images, _ = data.cifar10("test")
    x = data.normalize(images[::20])
    with torch.no_grad():
        ref = model(x).numpy().argmax(1)
    proto = onnx.load(export(model, tmp_path / "m.onnx"))
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        sess = _session(proto, level)
        batched = np.concatenate([sess.run(None, {"input": x[i : i + 50].numpy()})[0] for i in range(0, 500, 50)])
        single = np.concatenate([sess.run(None, {"input": x[i : i + 1].numpy()})[0] for i in range(0, 500, 5)])
        assert (batched.argmax(1) == ref).mean() >= 0.998  # at most one of 500 differs (a rounding tie)
        assert np.array_equal(single.argmax(1), batched[::5].argmax(1))


def test_weight_only_quantization_exports_integer_weights(tmp_path: Path) -> None:
    model = qexport.quantize(zoo.create("resnet20"), weight="lsq", act=None, bits=4, placement="paper")
    qexport.calibrate(model, [zoo.example_input(model, 8)])
    model.eval()
    proto = onnx.load(export(model, tmp_path / "w.onnx"))
    assert sum(i.name.endswith("weight_codes") for i in proto.graph.initializer) == 22
    x = zoo.example_input(model, 4, seed=3)
    out = _session(proto, ort.GraphOptimizationLevel.ORT_DISABLE_ALL).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(out - model(x).numpy()).max() < 1e-4  # float activations: rounding only


def test_uncalibrated_model_is_a_clear_error(tmp_path: Path) -> None:
    model = qexport.quantize(zoo.create("resnet20"), bits=4)
    with pytest.raises(QexportError, match=r"stem\.0\.act_quant.*calibrate"):
        export(model, tmp_path / "u.onnx")


def _fused_convs(path: Path) -> tuple[int, int]:
    """(QLinearConv, float Conv) nodes in onnxruntime's optimised graph."""
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    return ops.count("QLinearConv"), ops.count("Conv") + ops.count("FusedConv")


@pytest.mark.parametrize(("bits", "opset", "limit"), [(4, 21, 0.15), (2, 25, 0.09)])
def test_packed_weights_shrink_the_file_and_still_fuse(tmp_path: Path, bits: int, opset: int, limit: float) -> None:
    """ResNet-18: 4-bit weights as int4 and 2-bit as int2 (opset 25) against the FP32 ONNX file;
    the Cast to int8 is folded at load time, so the convs fuse exactly as with int8 storage.  The
    stem, whose ReLU -> MaxPool feeds two quantizers, is an IntConv: two float convs in its function
    body (the conv of the codes, and its per-channel rescale, which onnxruntime's NCHWc layout runs as a
    1x1 depthwise conv), an integer one in the native kernel."""
    fp32 = export(zoo.create("resnet18").eval(), tmp_path / "fp32.onnx", input_shape=[1, 3, 64, 64])
    model = qexport.quantize(zoo.create("resnet18"), bits=bits)
    qexport.calibrate(model, [zoo.example_input(model, 8, size=64)])
    sizes, fused = {}, {}
    for packed in (True, False):
        path = export(model, tmp_path / f"q{packed}.onnx", input_shape=[1, 3, 64, 64], opset=opset, packed=packed)
        sizes[packed] = path.stat().st_size / fp32.stat().st_size
        fused[packed] = _fused_convs(path)
    assert fused[True] == fused[False] == (19, 2)
    assert sizes[True] <= limit < 0.25 < sizes[False]
    # 16 samples: free-running top-1 must reach 90%, and one tie-flipped sample of 8 would be 87.5%
    x = zoo.example_input(model, 16, size=64, seed=5)
    assert qexport.check(model, tmp_path / "qTrue.onnx", x, reference_samples=2).passed


def test_graph_forms_the_kernels_rely_on(tmp_path: Path) -> None:
    """MobileNetV2 with ASQ: each ReLU6 after a conv is applied by its IntConv (relu=6), no float Clip
    left; the transformer with ASQ: MatMulInteger reads the rows' signed codes as uint8 + 128 and is
    given that zero point (onnxruntime's u8 x s8 path), and its int32 sums go straight into a Rescale
    (weight steps, row steps and bias in one pass; every linear layer has a bias); both agree with
    PyTorch."""
    torch.manual_seed(0)
    cnn = qexport.quantize(zoo.create("mobilenetv2", num_classes=10), weight="lsq", act="asq", bits=4)
    x = zoo.example_input(cnn, 8, size=32, seed=0)
    qexport.calibrate(cnn, [x])
    proto = onnx.load(export(cnn, tmp_path / "cnn.onnx", input_shape=[1, 3, 32, 32]))
    convs = [n for n in proto.graph.node if n.op_type == "IntConv"]
    relus = [next(a.i for a in n.attribute if a.name == "relu") for n in convs]
    assert relus.count(6) == 35 and "Clip" not in {n.op_type for n in proto.graph.node}
    assert qexport.check(cnn, tmp_path / "cnn.onnx", x, quick=True).passed

    tr = qexport.quantize(zoo.create("transformer", layers=1, dim=64, heads=4, ff=128, seq_len=16, vocab_size=64),
                          weight="lsq", act="asq", bits=4)  # fmt: skip
    ids = zoo.example_input(tr, 8, seed=0)
    qexport.calibrate(tr, [ids])
    proto = onnx.load(export(tr, tmp_path / "tr.onnx"))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMulInteger"]
    assert matmuls and all(len(n.input) == 3 and inits[n.input[2]].dtype == np.uint8 for n in matmuls)
    signed = [n for n in matmuls if int(inits[n.input[2]]) == 128]
    assert signed  # LayerNorm outputs: signed codes, stored offset
    readers = {i: n for n in proto.graph.node for i in n.input}
    rescales = [readers[n.output[0]] for n in matmuls]
    assert all(r.op_type == "Rescale" and r.domain == "qexport" for r in rescales)
    steps = {n.output[2] for n in proto.graph.node if n.op_type == "AsqQuantizeRows"}
    assert all(r.input[2] in steps for r in rescales)  # each reads its quantizer's row steps
    assert qexport.check(tr, tmp_path / "tr.onnx", ids, quick=True).passed


def test_conv_output_quantizers_fuse_into_the_conv(tmp_path: Path) -> None:
    """MobileNetV2 with POST weights: a conv whose float output only a QuantizeLinear (and its code-range
    Clip) reads becomes a PostConvRequant writing those codes, under the codes' own name, qmin / qmax
    the Clip's bounds; a conv read by two quantizers (a block's output: the next conv and the residual
    add) or by the final mean stays PostConv; int8 codes of a residual add's input are written as uint8
    + 128 (onnxruntime's QLinearAdd takes one type).  Agrees with PyTorch,
    the native kernels and the function bodies alike (check runs both)."""
    torch.manual_seed(0)
    cnn = qexport.quantize(zoo.create("mobilenetv2", num_classes=10), weight="post", act="lsq", bits=4)
    x = zoo.example_input(cnn, 8, size=32, seed=0)
    qexport.calibrate(cnn, [x])
    proto = onnx.load(export(cnn, tmp_path / "cnn.onnx", input_shape=[1, 3, 32, 32]))
    ops = [n.op_type for n in proto.graph.node]
    fused = [n for n in proto.graph.node if n.op_type == "PostConvRequant"]
    assert len(fused) == 45 and ops.count("PostConv") == 6
    for conv in (n for n in proto.graph.node if n.op_type == "PostConv"):
        readers = [n.op_type for n in proto.graph.node if conv.output[0] in n.input]
        assert len(readers) == 2 or readers == ["ReduceMean"]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    offsets = json.loads(next(p.value for p in proto.metadata_props if p.key == "code_offsets"))
    paths = {v: k for k, v in json.loads(next(p.value for p in proto.metadata_props if p.key == "codes")).items()}
    shifted = [n for n in fused if inits[n.input[6]].dtype == np.uint8 and int(inits[n.input[6]]) >= 128]
    assert shifted  # int8 residual-add inputs written as uint8 + 128, their offset recorded for the checker
    assert all(offsets[paths[n.output[0]]] == 128 for n in shifted)
    codes = set(json.loads(next(p.value for p in proto.metadata_props if p.key == "codes")).values())
    for node in fused:
        bounds = {a.name: a.i for a in node.attribute if a.name in ("qmin", "qmax")}
        # 4-bit codes of a conv input (a Clip absorbed), 8-bit ones of a residual add's (the type's range,
        # the int8 one stored as uint8 + 128)
        assert node.output[0] in codes and (bounds["qmin"], bounds["qmax"]) in ((0, 15), (-8, 7), (0, 255))
    assert qexport.check(cnn, tmp_path / "cnn.onnx", x, quick=True).passed
