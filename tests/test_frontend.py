"""Any model a user brings (issue 16): captured with torch.export, trained, saved self-contained,
exported through torch.onnx by `qexport m.pt --format onnx` in a fresh process that never sees the
model's source, run in onnxruntime (native kernels when built) and parity-checked with the
thresholds of DESIGN.md contract 2 (both onnxruntime levels, batch 1 and > 1).

The default run covers a text model with two inputs (and, below, a user's CNN saved from its own
script); every model x configuration is in the slow set (`python -m pytest -m slow`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree

import qexport
from qexport import QexportError
from tests.frontend_models import CONFIGS, MODELS
from tests.test_matrix import _mix_bits

pytest.importorskip("transformers", reason="transformers is in the test extra (pip install -e '.[test]')")

FAST = {("hf-bert", "lsq-w8a8")}  # the default run: a text model with two inputs
CASES = [
    pytest.param(m, c, marks=() if (m, c) in FAST else pytest.mark.slow, id=f"{m}-{c}") for m in MODELS for c in CONFIGS
]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "qexport.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip


@pytest.mark.parametrize(("name", "config"), CASES)
def test_model_deploys(tmp_path: Path, name: str, config: str) -> None:
    model, args, kwargs = MODELS[name]()
    q = qexport.quantize(model, example_inputs=args, example_kwargs=kwargs, **CONFIGS[config])
    if config == "nipq-mixed":
        _mix_bits(q, seed=len(name))  # widths 2..8 per layer, frozen, as after training
    batch = (*args, *kwargs.values())
    qexport.calibrate(q, [batch])
    # it trains like the user's model: same call, same output structure, gradients reach the weights
    q.train()
    out = q(*args, **kwargs)
    assert type(out) is type(model(*args, **kwargs))
    leaves = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    sum(t.float().pow(2).mean() for t in leaves).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in q.parameters())
    q.eval()
    path = qexport.save(q, tmp_path / "m.pt")

    # a fresh process, in another folder, with no access to tests/ (the model's source)
    done = _cli(str(path), "--format", "onnx", "--samples", "16", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "parity: PASS" in done.stdout
    proto = onnx.load(tmp_path / "m.onnx")
    onnx.checker.check_model(proto, full_check=True)
    assert not [n for n in proto.graph.node if n.domain == "qexport.lower"]
    # plain onnxruntime (function bodies) takes every input by its forward() name
    names = [i.name for i in ort.InferenceSession(str(tmp_path / "m.onnx")).get_inputs()]
    assert len(names) == len(batch)
    if len(batch) > 1:
        assert names == ["input_ids", "attention_mask"]


def test_inputs_outputs_as_the_user_has_them() -> None:
    """BERT: ids positional, mask by keyword or positional; a ModelOutput comes back; the export has
    both inputs and a dynamic batch and sequence-free batch axis."""
    model, args, kwargs = MODELS["hf-bert"]()
    q = qexport.quantize(model, bits=8, example_inputs=args, example_kwargs=kwargs)
    qexport.calibrate(q, [(*args, *kwargs.values())])
    q.eval()
    by_keyword = q(*args, **kwargs)
    by_position = q(args[0], kwargs["attention_mask"])
    assert type(by_keyword).__name__ == "SequenceClassifierOutput"
    assert torch.equal(by_keyword.logits, by_position.logits)
    assert q(args[0][:3], attention_mask=kwargs["attention_mask"][:3]).logits.shape == (3, 3)  # another batch


def test_batchnorm_and_dropout_follow_train_and_eval() -> None:
    """PT2E leaves train/eval switching to the user; here the captured BatchNorm and Dropout modules
    obey model.train() / model.eval() like the user's."""
    model, args, _ = MODELS["se-cnn"]()
    model.fc = torch.nn.Sequential(torch.nn.Dropout(0.5), model.fc)
    q = qexport.quantize(model, bits=8, example_inputs=args)
    qexport.calibrate(q, [args])
    q.eval()
    first, second = q(*args), q(*args)
    assert torch.equal(first, second)  # eval: no dropout, running statistics
    running = q.get_submodule("stem.1").running_mean.clone()
    q.train()
    torch.manual_seed(1)
    a = q(*args)
    torch.manual_seed(2)
    b = q(*args)
    assert not torch.equal(a, b)  # train: dropout samples
    assert not torch.equal(running, q.get_submodule("stem.1").running_mean)  # batch statistics update


def test_user_model_checkpoint_loads_without_its_source(tmp_path: Path) -> None:
    """A model class defined in the user's own script (``__main__``) saves and exports in a fresh
    process with the script gone."""
    script = tmp_path / "train_mine.py"
    script.write_text(
        "import torch, qexport\nfrom torch import nn\nimport torch.nn.functional as F\n"
        "class MyNet(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.c = nn.Conv2d(3, 8, 3, padding=1); self.bn = nn.BatchNorm2d(8)\n"
        "        self.fc = nn.Linear(8, 4)\n"
        "    def forward(self, x):\n"
        "        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.c(x))), 1).flatten(1))\n"
        "x = torch.randn(8, 3, 16, 16)\n"
        "q = qexport.quantize(MyNet(), bits=4, example_inputs=(x,))\n"
        "qexport.calibrate(q, [x])\n"
        "qexport.save(q.eval(), 'mine.pt')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    made = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    script.unlink()
    done = _cli("mine.pt", "--format", "onnx", "--samples", "16", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "parity: PASS" in done.stdout
    loaded = qexport.load(tmp_path / "mine.pt")
    meta = {p.key: p.value for p in onnx.load(tmp_path / "mine.onnx").metadata_props}
    assert json.loads(meta["quantization"])["bits"] == 4
    assert loaded(torch.randn(2, 3, 16, 16)).shape == (2, 4)


class _Unlowerable(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return torch.linalg.cholesky(y.T @ y + torch.eye(8))  # no ONNX lowering for aten.linalg_cholesky_ex


def test_unlowerable_op_fails_in_quantize_with_the_source_line() -> None:
    start = time.monotonic()
    with pytest.raises(QexportError) as err:
        qexport.quantize(_Unlowerable(), bits=8, example_inputs=(torch.randn(4, 8),))
    message = str(err.value)
    assert time.monotonic() - start < 30
    assert "\n" not in message
    assert "cholesky" in message and "test_frontend.py" in message, message


def test_uncapturable_model_names_the_construct() -> None:
    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # Python control flow on a tensor's value
                return F.relu(x)
            return x

    with pytest.raises(QexportError, match=r"cannot capture DataDependent with torch\.export.*test_frontend\.py"):
        qexport.quantize(DataDependent(), bits=8, example_inputs=(torch.randn(2, 4),))


def test_cumulative_batchnorm_is_named() -> None:
    """BatchNorm with momentum=None (a cumulative average) cannot be captured in train mode: its update
    factor comes from a tensor's value; the error names the module and the fix."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=None), torch.nn.ReLU())
    with pytest.raises(QexportError, match=r"BatchNorm '1' has momentum=None .* give it a number"):
        qexport.quantize(model, bits=8, example_inputs=(torch.randn(2, 3, 8, 8),))
    model[1].momentum = 0.1
    qexport.quantize(model, bits=8, example_inputs=(torch.randn(2, 3, 8, 8),))  # captured
