"""The model.pt format: round trips, safe loading, and one clear error for every bad file."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import qexport
from qexport import checkpoint, zoo
from qexport.errors import QexportError


def _trained_like(weight: str, act: str, **kw: object) -> nn.Module:
    model = zoo.create("resnet20")
    q = qexport.quantize(model, weight=weight, act=act, bits=4, **kw)
    x = torch.randn(8, 3, 32, 32)
    qexport.calibrate(q, [x])
    q.train()
    opt = torch.optim.SGD(q.parameters(), lr=0.01)
    for _ in range(2):  # move every parameter away from its initial value
        opt.zero_grad()
        q(x).sum().backward()
        opt.step()
    return q.eval()


@pytest.mark.parametrize(
    ("weight", "act", "kw"),
    [
        ("lsq", "lsq", {}),
        ("post", "asq", {}),
        ("nipq", "nipq", {"learn_bits": True}),
        ("pot", "lsq", {"placement": "paper"}),
    ],
)
def test_round_trip_gives_identical_outputs(tmp_path: Path, weight: str, act: str, kw: dict) -> None:
    q = _trained_like(weight, act, **kw)
    path = qexport.save(q, tmp_path / "model.pt", meta={"note": "test"})
    back = qexport.load(path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(q(x), back(x))
    assert back.qexport_meta == {"note": "test"} and not back.training
    assert back.qexport_config == q.qexport_config
    torch.load(path, weights_only=True)  # the contract: a safe load reads it


def test_finalized_nipq_round_trip(tmp_path: Path) -> None:
    q = _trained_like("nipq", "nipq", learn_bits=True)
    qexport.finalize(q)
    back = qexport.load(qexport.save(q, tmp_path / "m.pt"))
    bits = [m.integer_bits() for m in back.modules() if isinstance(m, qexport.quant.NipqQuantizer)]
    assert all(m._hard and not m.learns_bits for m in back.modules() if isinstance(m, qexport.quant.NipqQuantizer))
    assert bits == [m.integer_bits() for m in q.modules() if isinstance(m, qexport.quant.NipqQuantizer)]


def test_float_model_and_example_shape(tmp_path: Path) -> None:
    model = zoo.create("resnet18", num_classes=7)
    path = qexport.save(model, tmp_path / "f.pt", example_inputs=torch.randn(1, 3, 64, 64))
    payload = checkpoint.read(path)
    assert payload["example"] == {"shape": [1, 3, 64, 64], "dtype": "float32"}
    assert payload["quant"] is None and payload["arch"] == {
        "source": "zoo",
        "name": "resnet18",
        "kwargs": {"num_classes": 7},
    }
    back = qexport.load(path)
    assert back.fc.out_features == 7


def build_custom(width: int = 4) -> nn.Module:
    """An importable architecture for the module:function tests."""
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.Flatten(), nn.Linear(width * 4, 2))


def test_module_function_architecture_needs_the_callers_consent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import test_checkpoint as here

    model = qexport.quantize(here.build_custom(3), first_last_bits=None)
    qexport.calibrate(model, [torch.randn(2, 3, 4, 4)])
    path = qexport.save(model, tmp_path / "c.pt", arch="test_checkpoint:build_custom", arch_kwargs={"width": 3})
    with pytest.raises(QexportError, match="does not import code a file names"):
        qexport.load(path)
    x = torch.randn(2, 3, 4, 4)
    for back in (qexport.load(path, arch=here.build_custom), qexport.load(path, trust=True)):
        with torch.no_grad():
            assert torch.equal(back(x), model.eval()(x))


def test_save_needs_an_architecture(tmp_path: Path) -> None:
    with pytest.raises(QexportError, match="arch="):
        qexport.save(nn.Linear(2, 2), tmp_path / "x.pt")


class Payload:
    def __reduce__(self) -> tuple:
        return (print, ("this must never run on a safe load",))


def test_arbitrary_pickle_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "qexport-checkpoint", "x": Payload()}, path)
    with pytest.raises(QexportError, match="trust=True"):
        qexport.load(path)
    assert "must never run" not in capsys.readouterr().out


def test_corrupt_truncated_foreign_and_version(tmp_path: Path) -> None:
    good = qexport.save(_trained_like("lsq", "lsq"), tmp_path / "good.pt")
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.pt").write_bytes(b"\x00garbage" * 100)
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "foreign.pt")
    with open(tmp_path / "plainpickle.pt", "wb") as f:
        pickle.dump([1, 2, 3], f)
    payload = checkpoint.read(good)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    payload["format_version"] = checkpoint.FORMAT_VERSION
    payload["state_dict"] = {k: v for k, v in payload["state_dict"].items() if "fc" not in k}
    torch.save(payload, tmp_path / "missing.pt")
    cases = {
        "trunc.pt": "truncated or corrupt",
        "noise.pt": "truncated or corrupt|not a checkpoint",
        "empty.pt": "truncated or corrupt",
        "foreign.pt": "not a qexport checkpoint",
        "future.pt": "format version 99",
        "missing.pt": "do not fit",
        "nothere.pt": "no such checkpoint",
        "plainpickle.pt": "truncated or corrupt|refuses|not a qexport",
    }
    (tmp_path / "seven.pt").write_bytes(b"garbage")
    cases["seven.pt"] = "not a checkpoint"
    for name, pattern in cases.items():
        with pytest.raises(QexportError, match=pattern) as err:
            qexport.load(tmp_path / name)
        assert "\n" not in str(err.value), name
        if name in ("seven.pt", "noise.pt"):  # garbage is no pickle: --trust is no advice for it
            assert "trust" not in str(err.value), name


def test_cli_bad_files_exit_2_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    for args in (
        ["inspect", str(tmp_path / "bad.pt")],
        ["inspect", str(tmp_path / "none.pt")],
        ["eval", str(tmp_path / "bad.pt")],
    ):
        proc = subprocess.run([sys.executable, "-m", "qexport.cli", *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("qexport: error: ") and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
