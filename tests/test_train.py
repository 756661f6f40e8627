"""tools/train.py on a tiny CIFAR-shaped archive made here: FP32, QAT from it, resume, NIPQ with a
resource target, and DistributedDataParallel over 2 CPU processes (gloo)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import qexport
from qexport.data import CLASSES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import train  # noqa: E402


def _make_archive(path: Path, per_class: tuple[int, int] = (12, 3)) -> None:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for split, count in zip(("train", "test"), per_class, strict=True):
            for ci, cls in enumerate(CLASSES):
                for k in range(count):
                    img = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8) + np.uint8(ci * 19)  # class-dependent
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, format="JPEG", quality=75)
                    info = tarfile.TarInfo(f"cifar10-jpeg/{split}/{cls}/{k:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)


@pytest.fixture()
def tiny_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    _make_archive(archive)
    monkeypatch.setenv("QEXPORT_CIFAR10", str(archive))
    monkeypatch.setenv("QEXPORT_CACHE", str(tmp_path / "cache"))
    return archive


def test_data_decodes_and_caches(tiny_cifar: Path) -> None:
    x, y = qexport.data.cifar10("train")
    assert x.shape == (120, 32, 32, 3) and x.dtype == torch.uint8 and y.bincount().tolist() == [12] * 10
    assert list((Path(os.environ["QEXPORT_CACHE"])).glob("*.npz"))
    aug = qexport.data.augment(x[:8])
    assert aug.shape == (8, 3, 32, 32) and aug.dtype == torch.float32


def test_fp32_then_qat_then_resume(tiny_cifar: Path, tmp_path: Path) -> None:
    small = ["--batch-size", "16", "--max-steps", "2", "--no-progress", "--calib-batches", "1"]
    assert (
        train.main(["--method", "fp32", "--epochs", "1", "--lr", "0.05", "--out", str(tmp_path / "fp32"), *small]) == 0
    )
    fp32 = tmp_path / "fp32" / "model.pt"
    assert qexport.load(fp32).qexport_meta["epochs"] == 1
    out = tmp_path / "asqpost"
    args = ["--method", "asq+post", "--init", str(fp32), "--out", str(out), *small]
    assert train.main([*args, "--epochs", "1"]) == 0
    assert train.main([*args, "--epochs", "2"]) == 0  # resumes from last.pt, runs epoch 2 only
    model = qexport.load(out / "model.pt")
    meta = model.qexport_meta
    assert [h["epoch"] for h in meta["history"]] == [1, 2]
    assert meta["weight"] == "post" and meta["act"] == "asq" and model.qexport_config["bits"] == 4
    assert model(qexport.data.normalize(qexport.data.cifar10("test")[0][:4])).shape == (4, 10)


def test_qat_continues_from_a_quantized_checkpoint(tiny_cifar: Path, tmp_path: Path) -> None:
    """A quantized --init with the same flags continues QAT: its learned quantizer parameters are kept
    (not re-calibrated from data); other flags are refused with a message naming them."""
    small = ["--batch-size", "16", "--max-steps", "2", "--no-progress", "--calib-batches", "1", "--epochs", "1"]
    assert train.main(["--method", "fp32", "--lr", "0.05", "--out", str(tmp_path / "fp32"), *small]) == 0
    first = tmp_path / "lsq" / "model.pt"
    args = ["--method", "lsq", "--bits", "3", *small]
    assert train.main([*args, "--init", str(tmp_path / "fp32" / "model.pt"), "--out", str(first.parent)]) == 0
    before = qexport.load(first).state_dict()
    with torch.no_grad():  # a step no calibration on this data would give
        for k in before:
            if k.endswith(".step"):
                before[k] *= 1.37
    moved = qexport.load(first)
    moved.load_state_dict(before)
    init = qexport.save(moved, tmp_path / "moved.pt", meta=moved.qexport_meta)
    assert train.main([*args, "--lr", "0", "--init", str(init), "--out", str(tmp_path / "cont")]) == 0
    continued = qexport.load(tmp_path / "cont" / "model.pt")
    after = continued.state_dict()
    meta = continued.qexport_meta  # the card reports both runs: epochs, seconds, history, commands
    assert meta["epochs"] == 2 and [h["epoch"] for h in meta["history"]] == [1, 2] and len(meta["commands"]) == 2
    assert meta["continued_from"] == str(init) and meta["train_seconds"] >= meta["history"][0]["seconds"]
    steps = [k for k in before if k.endswith(".step")]
    assert steps and all(torch.equal(before[k], after[k]) for k in steps)
    with pytest.raises(qexport.QexportError, match="8 training images make no batch of 16"):
        train.main([*args, "--limit", "8", "--init", str(init), "--out", str(tmp_path / "few")])
    with pytest.raises(qexport.QexportError, match=r"bits 3 \(asked 2\)"):
        train.main(["--method", "lsq", "--bits", "2", *small, "--init", str(init), "--out", str(tmp_path / "x")])


def test_distillation_loss_blends_cross_entropy_and_the_teachers_soft_targets() -> None:
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 10, generator=gen), torch.randn(6, 10, generator=gen)
    labels = torch.randint(0, 10, (6,), generator=gen)
    ce = torch.nn.functional.cross_entropy(student, labels)
    assert torch.allclose(train.distillation_loss(student, teacher, labels, 0.0, 2.0), ce)
    # the soft term is zero where the student already matches the teacher, positive elsewhere
    assert torch.allclose(train.distillation_loss(student, student, labels, 0.5, 2.0), 0.5 * ce)
    soft = train.distillation_loss(student, teacher, labels, 1.0, 2.0)
    probs_t = torch.softmax(teacher / 2, 1)
    kl = (probs_t * (torch.log_softmax(teacher / 2, 1) - torch.log_softmax(student / 2, 1))).sum(1).mean()
    assert soft > 0 and torch.allclose(soft, 4 * kl)
    with pytest.raises(qexport.QexportError, match="same classes"):
        train.distillation_loss(student, teacher[:, :5], labels, 0.5, 2.0)


def test_qat_distils_from_a_teacher(tiny_cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--teacher: with weight 0 the run is the plain run step for step; with weight 1 the loss is the
    teacher's soft term; the metadata names the teacher."""
    small = ["--batch-size", "16", "--max-steps", "2", "--no-progress", "--calib-batches", "1", "--epochs", "1"]
    assert train.main(["--method", "fp32", "--lr", "0.05", "--out", str(tmp_path / "fp32"), *small]) == 0
    fp32 = str(tmp_path / "fp32" / "model.pt")
    args = ["--method", "lsq", "--bits", "2", "--init", fp32, *small]
    losses = {}
    for name, extra in {
        "plain": [],
        "w0": ["--teacher", fp32, "--distill-weight", "0"],
        "w1": ["--teacher", fp32, "--distill-weight", "1"],
    }.items():
        assert train.main([*args, *extra, "--out", str(tmp_path / name)]) == 0
        meta = qexport.load(tmp_path / name / "model.pt").qexport_meta
        losses[name] = meta["history"][0]["loss"]
    assert losses["w0"] == losses["plain"] and losses["w1"] != losses["plain"]
    assert meta["distill"] == {"teacher": fp32, "weight": 1.0, "temperature": 2.0}
    import model_card  # the card names the teacher in the method column

    card = tmp_path / "card"
    card.mkdir()
    (card / "lsq_w2a2_kd.pt").write_bytes((tmp_path / "w1" / "model.pt").read_bytes())
    assert model_card.main(["--models", str(card)]) == 0
    assert "lsq w / lsq a + KD from model.pt" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        train.parse_args([*args, "--teacher", fp32, "--distill-weight", "1.5", "--out", str(tmp_path / "x")])


def test_nipq_mixed_precision_run(tiny_cifar: Path, tmp_path: Path) -> None:
    out = tmp_path / "nipq"
    argv = [
        "--method",
        "nipq",
        "--learn-bits",
        "--bits",
        "6",
        "--target-bits",
        "4",
        "--resource-weight",
        "5",
        "--epochs",
        "2",
        "--finalize-epochs",
        "1",
        "--batch-size",
        "16",
        "--max-steps",
        "3",
        "--lr",
        "0.5",
        "--no-progress",
        "--calib-batches",
        "1",
        "--out",
        str(out),
    ]
    assert train.main(argv) == 0
    meta = qexport.load(out / "model.pt").qexport_meta
    assert meta["history"][0]["avg_weight_bits"] < 6.0  # the resource loss moved the widths
    assert set(meta["nipq_bits"].values()) <= set(range(2, 9))
    # continuing the finalized checkpoint keeps its hard quantizers and frozen widths, even at lr 0.5
    # with the resource target still asking for fewer bits
    cont = tmp_path / "nipq_cont"
    assert train.main([*argv[:-1], str(cont), "--init", str(out / "model.pt"), "--resource-weight", "50"]) == 0
    continued = qexport.load(cont / "model.pt")
    assert continued.qexport_meta["nipq_bits"] == meta["nipq_bits"]
    nipq = [m for m in continued.modules() if isinstance(m, qexport.quant.NipqQuantizer)]
    assert nipq and all(m._hard and not m.learns_bits for m in nipq)


@pytest.mark.slow  # CPU time: in the slow set (CI runs it)
def test_ddp_two_cpu_ranks_stay_identical(tiny_cifar: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29531",
        str(ROOT / "tools" / "train.py"),
        "--method",
        "asq",
        "--bits",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--max-steps",
        "3",
        "--calib-batches",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--save-rank-states",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each rank calibrated on its own shard: the steps agree before DDP's first broadcast only
    # because calibration averages its statistics over the ranks
    c0 = torch.load(out / "rank0_calibrated.pt", weights_only=True)
    c1 = torch.load(out / "rank1_calibrated.pt", weights_only=True)
    act_steps = [k for k in c0 if k.endswith("act_quant.step")]
    assert act_steps
    for k in act_steps:
        assert torch.equal(c0[k], c1[k]), f"calibration differs between ranks at {k}"
    s0 = torch.load(out / "rank0.pt", weights_only=True)
    s1 = torch.load(out / "rank1.pt", weights_only=True)
    assert s0.keys() == s1.keys()
    quant_keys = [k for k in s0 if k.endswith(".step") or ".adapter." in k]
    assert quant_keys
    for k in s0:
        assert torch.equal(s0[k], s1[k]), f"ranks differ at {k}"


def test_model_card_measures_checkpoint_and_its_onnx_export(
    tiny_cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import model_card

    small = ["--batch-size", "16", "--max-steps", "2", "--no-progress", "--calib-batches", "1", "--epochs", "1"]
    assert train.main(["--method", "fp32", "--lr", "0.05", "--out", str(tmp_path / "fp32"), *small]) == 0
    init = str(tmp_path / "fp32" / "model.pt")
    assert train.main(["--method", "asq+post", "--init", init, "--out", str(tmp_path / "q"), *small]) == 0
    models = tmp_path / "models"
    models.mkdir()
    for name in ("fp32", "q"):
        (models / f"{name}.pt").write_bytes((tmp_path / name / "model.pt").read_bytes())
    assert model_card.main(["--eval", "--models", str(models), "--data", str(tiny_cifar)]) == 0
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in capsys.readouterr().out.splitlines()}
    header = rows["checkpoint"]
    for name in ("fp32.pt", "q.pt"):
        row = dict(zip(header, rows[name], strict=True))
        fake = float(row["fake-quant top-1 (CPU)"])
        assert 0.0 <= fake <= 100.0
        # 30 test images: the export agrees with the fake-quant model on every one
        onnx_cols = [i for i, h in enumerate(header) if h.startswith("ONNX top-1")]
        for i in onnx_cols:
            if rows[name][i] == "library not built":
                assert not qexport.native.available()
                continue
            assert float(rows[name][i]) == fake and float(rows[name][i + 1]) == 100.0
    assert rows["q.pt"][header.index("method")] == "post w / asq a"
