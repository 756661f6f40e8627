"""The command line: help, zoo, quantize -> inspect -> eval on a tiny archive, and exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qexport.cli import main

from .test_train import _make_archive


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "inspect" in capsys.readouterr().out
    proc = subprocess.run(
        [sys.executable, "-m", "qexport.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.startswith("qexport ")
    assert main([]) == 2  # no command: usage, bad-input exit code


def test_zoo_lists_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("resnet20", "resnet18", "mobilenetv2", "transformer"))


def test_quantize_inspect_eval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "c.tar.gz"
    _make_archive(archive, per_class=(4, 2))
    monkeypatch.setenv("QEXPORT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "q.pt"
    args = ["quantize", "resnet20", "--weight", "post", "--act", "asq", "--bits", "3", "--calib", "cifar10"]
    assert main([*args, "--calib-images", "16", "--data", str(archive), "-o", str(out)]) == 0
    assert "not trained" in capsys.readouterr().out
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "weight=post act=asq bits=3" in text and "x beta(x)" in text and "alpha per-channel" in text
    for adds in ("auto", "fused"):  # ASQ models default to exact adds; --adds fused lets QLinearAdd run them
        onnx_out = tmp_path / f"q_{adds}.onnx"
        assert main(["export", str(out), "-o", str(onnx_out), "--adds", adds, "--no-check"]) == 0
        assert main(["inspect", str(onnx_out)]) == 0
        expected = "exact" if adds == "auto" else "fused"
        assert f"quantized residual adds: {expected}" in capsys.readouterr().out
    assert main(["eval", str(out), "--data", str(archive), "--quiet"]) == 0
    assert "on 20 images" in capsys.readouterr().out
    assert main(["quantize", "resnet20", "--bits", "9", "-o", str(tmp_path / "x.pt")]) == 2
    assert "bits=9" in capsys.readouterr().err


def test_bench_times_models_and_names_their_kernels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import qexport
    from qexport import zoo

    fp32 = qexport.export(zoo.create("resnet20").eval(), tmp_path / "fp32.onnx")
    q = qexport.quantize(zoo.create("resnet20"), bits=4)
    qexport.calibrate(q, [zoo.example_input(q, 8)])
    quantized = qexport.export(q, tmp_path / "q.onnx")
    assert main(["bench", str(quantized), "--fp32", str(fp32), "--budget", "0.2", "--threads", "1", "2"]) == 0
    out = capsys.readouterr().out
    assert "fp32.onnx: conv 0 int / 21 float" in out  # ORT's optimised graph, read back
    assert "q.onnx: conv 21 int / 0 float" in out or "q.onnx: conv 20 int / 1 float" in out  # stem: IntConv
    assert out.count("x vs fp32") == 4 and "1 thread(s)" in out and "2 thread(s)" in out
    assert main(["bench", str(tmp_path / "missing.onnx")]) == 2
