"""Every file entry point of the command line fed corrupt, truncated, bit-flipped, empty, random and
hostile files: exit 2, one line naming the file, no traceback, no output file left behind, and a
pickle payload never executed (issue 22, item 4)."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import qexport
from qexport import zoo
from qexport.cli import main
from qexport.ops import DOMAIN

MARKER = "qexport-payload-ran"


class _Payload:
    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {MARKER}",))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile")
    model = qexport.quantize(zoo.create("resnet20"), bits=4)
    qexport.calibrate(model, [zoo.example_input(model, 8)])
    good_pt = qexport.save(model.eval(), d / "good.pt")
    good_onnx = qexport.export(model, d / "good.onnx")
    pt, ox = good_pt.read_bytes(), good_onnx.read_bytes()
    rng = random.Random(0)
    flipped = bytearray(ox)
    for i in rng.sample(range(len(flipped)), 64):
        flipped[i] ^= 0xFF
    out = {
        "empty.pt": b"", "random.pt": bytes(rng.randrange(256) for _ in range(4096)), "trunc.pt": pt[: len(pt) // 3],
        "seven.pt": b"garbage", "empty.onnx": b"", "random.onnx": bytes(rng.randrange(256) for _ in range(4096)),
        "trunc.onnx": ox[: len(ox) // 2], "flipped.onnx": bytes(flipped),
    }  # fmt: skip
    paths = {name: d / name for name in out}
    for name, data in out.items():
        paths[name].write_bytes(data)
    with open(d / "pickle.pt", "wb") as f:
        pickle.dump(_Payload(), f)
    paths["pickle.pt"] = d / "pickle.pt"
    torch.save({"format": "qexport-checkpoint", "x": _Payload()}, d / "zip_pickle.pt")
    paths["zip_pickle.pt"] = d / "zip_pickle.pt"
    with zipfile.ZipFile(d / "slip.pt", "w") as z:  # an entry pointing outside the archive's folder
        z.writestr("../../escaped.txt", "x")
        z.writestr("archive/data.pkl", pickle.dumps({"format": "qexport-checkpoint"}))
    paths["slip.pt"] = d / "slip.pt"
    # an ONNX file whose qexport node is malformed: IntConv without its required attribute and a
    # weight of the wrong rank
    node = helper.make_node("IntConv", ["x", "s", "w", "ws", "b"], ["y"], domain=DOMAIN, group=1)
    graph = helper.make_graph(
        [node], "bad", [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
         helper.make_tensor("w", TensorProto.INT8, [3], [1, 2, 3]),
         helper.make_tensor("ws", TensorProto.FLOAT, [1], [0.1]),
         helper.make_tensor("b", TensorProto.FLOAT, [1], [0.0])],
    )  # fmt: skip
    bad = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, 1)])
    onnx.save(bad, d / "malformed_node.onnx")
    paths["malformed_node.onnx"] = d / "malformed_node.onnx"
    np.save(d / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    np.save(d / "x_int8.npy", np.zeros((1, 3, 4, 4), np.int8))
    paths["x.npy"], paths["x_int8.npy"] = d / "x.npy", d / "x_int8.npy"
    paths["good.pt"], paths["good.onnx"] = good_pt, good_onnx
    return paths


def _commands(p: dict[str, Path], name: str, tmp: Path) -> list[list[str]]:
    f = str(p[name])
    if name.endswith(".pt"):
        return [[f, "--format", "onnx", "-o", str(tmp / "out.onnx")], ["check", f, str(p["good.onnx"])], ["inspect", f]]
    x = str(p["x_int8.npy"] if name == "malformed_node.onnx" else p["x.npy"])
    return [["check", str(p["good.pt"]), f], ["run", f, "--input", x, "--output", str(tmp / "y.npy")],
            ["inspect", f], ["bench", f, "--budget", "0.05"]]  # fmt: skip


NAMES = ["empty.pt", "random.pt", "trunc.pt", "seven.pt", "pickle.pt", "zip_pickle.pt", "slip.pt", "empty.onnx",
         "random.onnx", "trunc.onnx", "flipped.onnx", "malformed_node.onnx"]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_bad_file_exits_2_with_one_line(
    files: dict[str, Path], name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    for argv in _commands(files, name, tmp_path):
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2, (argv, err)
        assert err.startswith("qexport: error: ") and len(err.splitlines()) == 1, (argv, err)
        assert name in err, (argv, err)  # the line names the file
        assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "y.npy").exists(), argv
    assert not (tmp_path / MARKER).exists(), "a pickle payload ran"
    if "pickle" in name:
        assert "trust" in err
    if name in ("random.pt", "seven.pt"):
        assert "trust" not in err


def test_cli_process_prints_no_traceback(files: dict[str, Path], tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "qexport.cli", "bench", str(files["flipped.onnx"])],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
