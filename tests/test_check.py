"""The parity checker and the export / check command line."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import qexport
from qexport import native, zoo
from qexport.check import MAX_FORCED_REL, check
from qexport.cli import main
from qexport.errors import QexportError
from qexport.export import export

from . import test_runtime
from .test_runtime import token_inputs, two_heads_inputs

qexport_check = importlib.import_module("qexport.check")  # the module (qexport.check is the function)

token_model = test_runtime.token_model  # the fixtures: a 2-input (int64 ids + mask) and a 2-output model
two_heads = test_runtime.two_heads


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("check")
    torch.manual_seed(0)  # the same weights whatever ran before (the tests compare exact per-tensor verdicts)
    model = qexport.quantize(zoo.create("resnet20"), bits=3)
    qexport.calibrate(model, [zoo.example_input(model, 32, seed=5)])
    pt = qexport.save(model, tmp / "m.pt")
    return pt, export(model, tmp / "m.onnx")


def test_passes_with_code_spread(calibrated: tuple[Path, Path]) -> None:
    pt, path = calibrated
    report = check(pt, path, samples=24, batch=8)
    # the ResNet-20 stem feeds two quantizers (conv path and shortcut), so it exports as IntConv, and
    # the native kernel (where built) is checked as well as the function body
    native_runs = {f"onnxruntime enable_all native batch {b}" for b in (1, 8)} if native.available() else set()
    assert report.passed and len(report.runs) == 5 + len(native_runs)
    assert {r.name for r in report.runs} == {
        f"onnxruntime {lvl} batch {b}" for lvl in ("disable_all", "enable_all") for b in (1, 8)
    } | {"reference evaluator batch 8"} | native_runs
    assert sorted(r.samples for r in report.runs) == [16] + [24] * (4 + len(native_runs))
    tensors = report.runs[0].tensors
    assert len(tensors) == 49 and all(t.identical >= 0.999 and t.max_step <= 1 for t in tensors)
    assert all(t.entropy_bits > 0.5 for t in tensors)  # not collapsed
    data = json.loads(report.to_json())
    assert data["passed"] and data["runs"][0]["tensors"][0]["path"] == "stem.0.act_quant"
    assert "parity: PASS" in report.table()


def test_quick_check_runs_what_deploys(calibrated: tuple[Path, Path]) -> None:
    """check(quick=True), what the export command runs: ORT_ENABLE_ALL with the function bodies and
    the native kernels (where built), the first input alone and then `batch` at a time, the same
    verdicts per tensor as the thorough check's runs at that level."""
    pt, path = calibrated
    report = check(pt, path, samples=10, batch=4, reference_samples=0, quick=True)
    native_runs = ["onnxruntime enable_all native batch 1+4"] if native.available() else []
    assert report.passed and [r.name for r in report.runs] == ["onnxruntime enable_all batch 1+4", *native_runs]
    assert all(r.samples == 10 and len(r.tensors) == 49 for r in report.runs)
    thorough = check(pt, path, samples=10, batch=4, reference_samples=0)
    (same_level,) = [r for r in thorough.runs if r.name == "onnxruntime enable_all batch 4"]
    # the same tensors judged alike; not the same counts: the quick run's batch-1 pass may put a
    # rounding tie of an onnxruntime int8 kernel one code off where the batch-4 pass does not (seen:
    # 2 of 40960 codes of glue.add_6_in0 with seed 0)
    quick, full = report.runs[0].tensors, same_level.tensors
    assert [(t.path, t.bits, t.codes) for t in quick] == [(t.path, t.bits, t.codes) for t in full]
    assert all(abs(a.identical - b.identical) <= 0.001 and a.max_step <= 1 for a, b in zip(quick, full, strict=True))


def test_reused_teacher_forced_passes_change_nothing(
    calibrated: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs whose runtime codes equal an earlier run's reuse its teacher-forced PyTorch pass: the report
    is the one every run's own pass gives."""
    pt, path = calibrated
    model = qexport.load(pt)
    passes = []
    outputs = qexport_check._outputs
    monkeypatch.setattr(qexport_check, "_outputs", lambda m, xs: passes.append(1) or outputs(m, xs))
    reused = check(model, path, samples=12, batch=4, reference_samples=4)
    assert len(passes) < 1 + len(reused.runs)  # the free-running pass, then fewer than one per run
    monkeypatch.setattr(qexport_check, "MEMO_BYTES", 0)
    passes.clear()
    own = check(model, path, samples=12, batch=4, reference_samples=4)
    assert len(passes) == 1 + len(own.runs) and reused.to_dict() == own.to_dict()


def test_detects_a_wrong_scale(calibrated: tuple[Path, Path], tmp_path: Path) -> None:
    pt, path = calibrated
    proto = onnx.load(path)
    for init in proto.graph.initializer:
        if init.name == "layers.1.1.conv1.act_quant.scale":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.3), init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, bad)
    report = check(pt, bad, samples=8, batch=8)
    assert not report.passed
    failing = [t.path for t in report.runs[0].tensors if not t.passed]
    assert failing and failing[0] == "layers.1.1.conv1.act_quant"
    quick = check(pt, bad, samples=8, batch=8, reference_samples=0, quick=True)
    assert not quick.passed and all(not r.passed for r in quick.runs)
    assert main(["check", str(pt), str(bad), "--samples", "4", "--quiet"]) == 1


def test_bad_inputs(calibrated: tuple[Path, Path], tmp_path: Path) -> None:
    pt, path = calibrated
    with pytest.raises(QexportError, match="do not fit"):
        check(pt, path, torch.randn(2, 3, 16, 16))
    with pytest.raises(QexportError, match="NaN"):
        check(pt, path, torch.full((2, 3, 32, 32), float("nan")))
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert main(["check", str(pt), str(tmp_path / "junk.onnx"), "--quiet"]) == 2
    foreign = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    onnx.save(foreign, tmp_path / "foreign.onnx")
    with pytest.raises(QexportError, match="not written by qexport"):
        check(pt, tmp_path / "foreign.onnx")
    assert main(["check", str(pt), str(tmp_path / "none.onnx")]) == 2


def test_cli_export_form(calibrated: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pt, _ = calibrated
    out = tmp_path / "cli.onnx"
    assert main([str(pt), "--format", "onnx", "-o", str(out), "--samples", "8", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "22 quantized layers" in text and "parity: PASS on 8 samples" in text
    assert "quick parity check: 8 random inputs, onnxruntime ORT_ENABLE_ALL" in text and "qexport check" in text
    assert "onnxruntime enable_all batch 1+8 (8 samples): PASS" in text
    assert main([str(pt), "--format", "tflite"]) == 2


def test_run_command_and_bad_inputs(
    calibrated: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = calibrated
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(path), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 0
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (3, 10)
    assert np.allclose(y, qexport.InferenceSession(path, threads=1).run(x))
    capsys.readouterr()
    bad = {
        "shape.npy": np.zeros((2, 3, 16, 16), np.float32),
        "dtype.npy": np.zeros((2, 3, 32, 32), np.float64),
        "nan.npy": np.full((1, 3, 32, 32), np.nan, np.float32),
    }
    for name, arr in bad.items():
        np.save(tmp_path / name, arr)
        assert main(["run", str(path), "--input", str(tmp_path / name)]) == 2, name
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "shape [2, 3, 16, 16]" in err[0] and "float64" in err[1] and "NaN" in err[2]
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert main(["run", str(tmp_path / "junk.onnx"), "--input", str(tmp_path / "x.npy")]) == 2
    assert main(["run", str(path), "--input", str(tmp_path / "missing.npy")]) == 2


def test_inspect_onnx_and_bad_files(
    calibrated: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = calibrated
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "22 quantized layers" in out and "layers.0.0.conv1" in out and "lsq3" in out and "int4" in out
    foreign = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    onnx.save(foreign, tmp_path / "foreign.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    for args in (["inspect", str(tmp_path / "foreign.onnx")], ["inspect", str(tmp_path / "junk.onnx")],
                 ["inspect", str(tmp_path / "none.onnx")], [str(tmp_path / "none.pt"), "--format", "onnx"],
                 [str(tmp_path / "junk.pt"), "--format", "onnx"]):  # fmt: skip
        assert main(args) == 2, args
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("qexport: error: ") for line in err)
    assert "not written by qexport" in err[0] and "not a readable ONNX file" in err[1]


def test_free_running_floor_allows_one_flip_on_few_samples() -> None:
    from qexport.check import RunReport

    def run(samples: int, flips: int) -> RunReport:
        return RunReport("r", samples, 1.0, 1.0 - flips / samples, 0.0)

    assert run(8, 1).passed and not run(8, 2).passed  # 87.5% passes as one sample, 75% does not
    assert run(256, 25).passed and not run(256, 26).passed  # 90.2% / 89.8%


def test_free_running_outputs_come_from_the_shipped_graph(calibrated: tuple[Path, Path]) -> None:
    """onnxruntime does not fuse nodes whose outputs are graph outputs, so the graph with every code
    tensor as an extra output can compute differently from the one users ship: the free-running
    comparison must use the second (here a stand-in that predicts another class), the teacher-forced
    one the first."""
    from qexport.check import _code_outputs, _ort_infer, _run
    from qexport.progress import Progress

    pt, path = calibrated
    model = qexport.load(pt).eval()
    proto = onnx.load(path)
    codes, steps, offsets = _code_outputs(proto)
    for name in codes.values():
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    names = [o.name for o in proto.graph.output]
    x = torch.cat([zoo.example_input(model, 1, seed=i) for i in range(4)])
    with torch.no_grad():
        free = model(x).numpy()
    infer = _ort_infer(proto.SerializeToString(), "enable_all")
    shipped = _ort_infer(onnx.load(path).SerializeToString(), "enable_all")

    def other_class(xb: np.ndarray) -> list[np.ndarray]:
        out = shipped(xb)[0]
        return [np.roll(out, 1, axis=-1)]  # every argmax moves

    bar = Progress(8, "t", enabled=False)
    honest = _run(model, names, infer, shipped, codes, steps, offsets, x, free, "r", 2, bar)
    moved = _run(model, names, infer, other_class, codes, steps, offsets, x, free, "r", 2, bar)
    assert honest.free_top1_agreement == 1.0 and honest.top1_agreement == 1.0
    assert moved.free_top1_agreement == 0.0 and moved.top1_agreement == 1.0 and not moved.passed


def test_tensor_rule_allows_one_tie_on_small_tensors_only() -> None:
    """>= 99.9% identical codes, or a single differing code where 0.1% of the tensor is less than one
    code (512 classifier inputs on 8 samples); never a code more than one step off."""
    from qexport.check import _Accumulator
    from qexport.quant.core import CodeRange

    class _Q:
        code_range = CodeRange(8, signed=False)  # codes 0..255

    def report(numel: int, differing: int, step: int = 1) -> bool:
        acc = _Accumulator(_Q())  # type: ignore[arg-type]
        ours = np.full(numel, 7, np.int64)
        theirs = ours.copy()
        theirs[:differing] += step
        acc.add(ours, theirs)
        r = acc.report("t")
        assert r.differing == differing
        return r.passed

    assert report(512, 0) and report(512, 1) and not report(512, 2)
    assert not report(512, 1, step=2)
    assert report(10_000, 10) and not report(10_000, 11)


# -- several inputs and outputs (the small models of tests/test_runtime.py) --------------------------
def _scaled(path: Path, out: Path, initializer: str, factor: float) -> Path:
    proto = onnx.load(path)
    (init,) = [t for t in proto.graph.initializer if t.name == initializer]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    onnx.save(proto, out)
    return out


def test_multi_input_model_passes_and_a_tampered_scale_fails(
    token_model: tuple[torch.nn.Module, Path], tmp_path: Path
) -> None:
    model, path = token_model
    ids, mask = token_inputs(24, seed=3)
    report = check(model, path, (ids, mask), batch=8, reference_samples=4)
    assert report.passed and report.samples == 24 and len(report.runs) >= 5
    for run in report.runs:
        assert [t.path for t in run.tensors] == ["fc.act_quant"] and run.tensors[0].identical == 1.0
        assert [(o.name, o.kind) for o in run.outputs] == [("output", "top-1")]
    # a dict by ONNX input name, in any order, is the same check
    by_name = check(model, path, {"attention_mask": mask, "input_ids": ids}, batch=8, reference_samples=0)
    assert by_name.passed and by_name.worst() == check(model, path, (ids, mask), reference_samples=0).worst()
    bad = _scaled(path, tmp_path / "bad.onnx", "fc.act_quant.scale", 1.3)
    report = check(model, bad, (ids, mask), batch=8, reference_samples=4)
    assert not report.passed
    assert all([t.path for t in r.tensors if not t.passed] == ["fc.act_quant"] for r in report.runs)
    assert "parity: FAIL" in report.table()


def test_every_output_is_compared_by_its_kind(two_heads: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    """[B, 3] logits by top-1 agreement, the [B, 1, 4] embedding by its error against its scale; both
    by their teacher-forced values: a last-layer weight scale 1% off changes no code and no top-1."""
    model, path = two_heads
    x = two_heads_inputs(32, seed=3)
    names = [o.name for o in onnx.load(path).graph.output]
    report = check(model, path, x, batch=8, reference_samples=4)
    assert report.passed
    for run in report.runs:
        assert [(o.name, o.kind) for o in run.outputs] == [(names[0], "top-1"), (names[1], "dense")]
        dense = run.outputs[1]
        assert dense.scale > 0.1 and dense.forced_rel < 1e-4 and dense.free_mean_rel < 1e-4
    assert f"output {names[1]}: ok  dense" in report.table()
    bad = check(model, _scaled(path, tmp_path / "bad.onnx", "proj.scale", 1.01), x, batch=8, reference_samples=4)
    assert not bad.passed
    for run in bad.runs:
        logits, embedding = run.outputs
        assert logits.passed and not embedding.passed and all(t.passed for t in run.tensors)
        assert embedding.forced_rel > MAX_FORCED_REL
    data = json.loads(bad.to_json())
    assert [o["passed"] for o in data["runs"][0]["outputs"]] == [True, False]
    assert f"output {names[1]}: FAIL  dense" in bad.table()
    # the same on the classifier: every top-1 still agrees (scaling logits moves no argmax), their values do not
    bad = check(model, _scaled(path, tmp_path / "bad_cls.onnx", "cls.scale", 1.01), x, batch=8, reference_samples=0)
    assert not bad.passed
    for run in bad.runs:
        logits, embedding = run.outputs
        assert logits.top1_agreement == logits.free_top1_agreement == 1.0 and logits.forced_rel > MAX_FORCED_REL
        assert not logits.passed and embedding.passed


def test_multi_input_errors(
    token_model: tuple[torch.nn.Module, Path], two_heads: tuple[torch.nn.Module, Path], tmp_path: Path
) -> None:
    model, path = token_model
    ids, mask = token_inputs(4)
    cases = [
        (ids, "takes 2 inputs \\(input_ids, attention_mask\\): pass check inputs as a tuple"),
        (None, "takes 2 inputs"),
        ((ids, mask, mask), "3 check inputs given"),
        ({"input_ids": ids, "mask": mask}, "has no input named 'mask'"),
        ({"input_ids": ids}, "needs input 'attention_mask'"),
        ((ids, mask.int()), "check input 'attention_mask' is torch.int32; the model takes torch.int64"),
        ((ids[:, :5], mask), "'input_ids' and 'attention_mask' disagree on axis 'sequence' \\(5 vs 7\\)"),
        ((ids[None], mask), "inputs of shape \\[1, 4, 7\\] do not fit the model input 'input_ids'"),
        ((ids, mask[:3]), "different numbers of samples \\(input_ids: 4, attention_mask: 3\\)"),
    ]
    for inputs, message in cases:
        with pytest.raises(QexportError, match=message):
            check(model, path, inputs)
    heads, heads_path = two_heads
    proto = onnx.load(heads_path)
    del proto.graph.output[1]
    onnx.save(proto, tmp_path / "one_output.onnx")
    with pytest.raises(QexportError, match=r"the model returns 2 tensors but .* has 1 outputs"):
        check(heads, tmp_path / "one_output.onnx", two_heads_inputs(4))


def test_output_rules() -> None:
    from qexport.check import DENSE_MAX_FREE_MEAN, OutputReport

    def dense(forced: float, mean: float) -> OutputReport:
        return OutputReport(
            "o", "dense", 8, max_abs_diff=mean, mean_abs_diff=mean, forced_max_abs_diff=forced, scale=2.0
        )

    assert dense(0.0, 0.0).passed and dense(2 * MAX_FORCED_REL, 2 * DENSE_MAX_FREE_MEAN).passed
    assert not dense(2.1 * MAX_FORCED_REL, 0.0).passed and not dense(0.0, 2.1 * DENSE_MAX_FREE_MEAN).passed

    def top1(forced: float, free: float, forced_diff: float = 0.0) -> OutputReport:
        return OutputReport(
            "o", "top-1", 8, 0.0, 0.0, forced_diff, 1.0, top1_agreement=forced, free_top1_agreement=free
        )

    assert top1(1.0, 7 / 8).passed and not top1(1.0, 6 / 8).passed and not top1(7 / 8, 1.0).passed
    assert top1(1.0, 1.0, MAX_FORCED_REL).passed and not top1(1.0, 1.0, 1.1 * MAX_FORCED_REL).passed


def test_cli_check_on_given_inputs(
    calibrated: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pt, path = calibrated
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", input=x)
    # arrays by ONNX input name (an .npz, or NAME=FILE.npy: the same reader as `qexport run`'s)
    assert main(["check", str(pt), str(path), "--input", str(tmp_path / "x.npz"), "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 1
    np.savez(tmp_path / "wrong.npz", pixels=x)
    assert main(["check", str(pt), str(path), "--input", str(tmp_path / "wrong.npz"), "--quiet"]) == 2
    data = tmp_path / "c.tar.gz"
    assert main(["check", str(pt), str(path), "--input", str(tmp_path / "x.npy"), "--data", str(data)]) == 2


def test_captured_multi_input_checkpoint_checks_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 2-input model captured with torch.export and saved self-contained: `qexport check` on named
    .npy inputs, and check() on random inputs drawn as its example records them (ids below the
    vocabulary, masks of 0/1)."""
    torch.manual_seed(0)
    ids, mask = token_inputs(16, seed=2)
    q = qexport.quantize(test_runtime.TokenClassifier(), bits=8, example_inputs=(ids[:2], mask[:2]))
    qexport.calibrate(q, [(ids, mask)])
    pt = qexport.save(q, tmp_path / "tokens.pt")
    path = export(q, tmp_path / "tokens.onnx", (ids[:1], mask[:1]))
    default = check(pt, path, samples=12, reference_samples=2)
    assert default.passed and default.samples == 12
    np.save(tmp_path / "ids.npy", ids[:4].numpy())
    np.save(tmp_path / "mask.npy", mask[:4].numpy())
    named = ["--input", f"input_ids={tmp_path / 'ids.npy'}", "--input", f"attention_mask={tmp_path / 'mask.npy'}"]
    assert main(["check", str(pt), str(path), *named, "--quiet"]) == 0
    assert "parity: PASS on 4 samples" in capsys.readouterr().out
    assert main(["check", str(pt), str(path), "--input", str(tmp_path / "ids.npy"), "--quiet"]) == 2
    assert "takes 2 inputs (input_ids, attention_mask)" in capsys.readouterr().err
