"""qexport.InferenceSession as a drop-in onnxruntime session: several inputs (int64 token ids and an
attention mask), several outputs, onnxruntime's run(output_names, feed), and feeds checked before
anything runs.  The models here are small and fx-traceable (export in seconds); tests/test_check.py
uses them too."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

import qexport
from qexport.cli import main
from qexport.errors import QexportError

VOCAB, SEQ = 50, 7


class TokenClassifier(nn.Module):
    """Token ids + attention mask -> 4 logits: a masked mean of embeddings into a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).float()
        h = (self.emb(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.fc(h)


class TwoHeads(nn.Module):
    """One float input, two outputs in a dict: class logits [B, 3] and a dense embedding [B, 1, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 6)
        self.cls = nn.Linear(6, 3)
        self.proj = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.fc(x))
        return {"logits": self.cls(h), "embedding": self.proj(h).unsqueeze(1)}


def token_inputs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=gen)
    lengths = torch.randint(1, SEQ + 1, (n, 1), generator=gen)
    mask = (torch.arange(SEQ)[None, :] < lengths).long()
    return ids, mask


def two_heads_inputs(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def token_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    q = qexport.quantize(TokenClassifier(), bits=8)
    ids, mask = token_inputs(32, seed=1)
    qexport.calibrate(q, [(ids, mask)])
    path = qexport.export(q, tmp_path_factory.mktemp("runtime") / "tokens.onnx", (ids[:1], mask[:1]))
    return q.eval(), path


@pytest.fixture(scope="session")
def two_heads(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    q = qexport.quantize(TwoHeads(), bits=4)
    x = two_heads_inputs(64, seed=1)
    qexport.calibrate(q, [x])
    path = qexport.export(q, tmp_path_factory.mktemp("runtime") / "heads.onnx", x[:1])
    return q.eval(), path


def _torch_outputs(model: nn.Module, *inputs: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in tree_leaves(model(*inputs))]


def test_two_inputs_like_onnxruntime(token_model: tuple[nn.Module, Path]) -> None:
    model, path = token_model
    session = qexport.InferenceSession(path)
    inputs = session.get_inputs()
    assert [i.name for i in inputs] == ["input_ids", "attention_mask"]
    assert [i.type for i in inputs] == ["tensor(int64)"] * 2
    assert all(i.shape == ["batch", "sequence"] for i in inputs)  # batch and sequence length are dynamic
    assert [o.name for o in session.get_outputs()] == ["output"]
    assert "codes" in session.get_modelmeta().custom_metadata_map
    assert session.get_providers() == ["CPUExecutionProvider"]  # forwarded to onnxruntime's session
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # no qexport library
    for n in (1, 5):
        ids, mask = token_inputs(n, seed=n)
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        (y,) = session.run(None, feed)
        assert y.shape == (n, 4) and y.dtype == np.float32
        np.testing.assert_array_equal(y, plain.run(None, feed)[0])
        np.testing.assert_allclose(y, _torch_outputs(model, ids, mask)[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(session.run(["output"], feed)[0], y)
        np.testing.assert_array_equal(session.run_dict(feed)["output"], y)
    # nested lists are converted to the input's type, as onnxruntime does
    ids, mask = token_inputs(2)
    listed = session.run(None, {"input_ids": ids.tolist(), "attention_mask": mask.tolist()})[0]
    arrays = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    np.testing.assert_array_equal(listed, arrays)


def test_two_outputs_like_onnxruntime(two_heads: tuple[nn.Module, Path]) -> None:
    model, path = two_heads
    session = qexport.InferenceSession(path, threads=1)
    names = [o.name for o in session.get_outputs()]
    assert len(names) == 2 and [i.name for i in session.get_inputs()] == ["input"]
    x = two_heads_inputs(3, seed=7)
    feed = {"input": x.numpy()}
    logits, embedding = session.run(None, feed)
    assert logits.shape == (3, 3) and embedding.shape == (3, 1, 4)
    expected = _torch_outputs(model, x)  # the graph's outputs are the model's flattened outputs, in order
    for got, want in zip((logits, embedding), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    (only,) = session.run([names[1]], feed)
    np.testing.assert_array_equal(only, embedding)
    assert list(session.run_dict(feed)) == names
    np.testing.assert_array_equal(session.run(x.numpy()), logits)  # run(x): the first output
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    for got, want in zip((logits, embedding), plain, strict=True):
        np.testing.assert_array_equal(got, want)


def _token_feed(n: int = 2) -> dict[str, np.ndarray]:
    ids, mask = token_inputs(n)
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}


BAD_FEEDS = {
    "missing": ({"input_ids": _token_feed()["input_ids"]}, "input 'attention_mask' is missing"),
    "unknown": ({**_token_feed(), "token_type_ids": _token_feed()["input_ids"]}, "no input named 'token_type_ids'"),
    "dtype": ({**_token_feed(), "attention_mask": _token_feed()["attention_mask"].astype(np.int32)},
              "'attention_mask' has dtype int32; the model takes tensor\\(int64\\)"),
    "rank": ({**_token_feed(), "input_ids": _token_feed()["input_ids"][None]}, "'input_ids' has shape \\[1, 2, 7\\]"),
    "sequence": ({**_token_feed(), "input_ids": _token_feed()["input_ids"][:, :3]},
                 "'input_ids' and 'attention_mask' disagree on dimension 'sequence' \\(3 vs 7\\)"),
    "batch": ({**_token_feed(), "attention_mask": _token_feed(3)["attention_mask"]},
              "'input_ids' and 'attention_mask' disagree on dimension 'batch' \\(2 vs 3\\)"),
    "not an array": ({**_token_feed(), "input_ids": "abc"}, "'input_ids' is a str"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FEEDS))
def test_bad_feeds_are_one_line_errors(token_model: tuple[nn.Module, Path], case: str) -> None:
    _, path = token_model
    feed, message = BAD_FEEDS[case]
    session = qexport.InferenceSession(path)
    with pytest.raises(QexportError, match=message) as err:
        session.run(None, feed)
    assert "\n" not in str(err.value)


def test_bad_calls_and_float_checks(token_model: tuple[nn.Module, Path], two_heads: tuple[nn.Module, Path]) -> None:
    session = qexport.InferenceSession(token_model[1])
    with pytest.raises(QexportError, match="run\\(x\\) is for one-input models; this one takes 2"):
        session.run(_token_feed()["input_ids"])
    with pytest.raises(QexportError, match="no output named 'logits': its outputs are output"):
        session.run(["logits"], _token_feed())
    with pytest.raises(QexportError, match="run\\(\\) got a Tensor: call run\\(output_names, "):
        session.run(torch.zeros(2, 7, dtype=torch.int64))  # type: ignore[call-overload]
    with pytest.raises(QexportError, match="pass a dict of input name"):
        session.run(None, [_token_feed()["input_ids"]])  # type: ignore[arg-type]
    heads = qexport.InferenceSession(two_heads[1])
    x = two_heads_inputs(2).numpy()
    for value in (np.nan, np.inf):
        bad = x.copy()
        bad[1, 3] = value
        with pytest.raises(QexportError, match="input 'input' contains NaN or infinite values"):
            heads.run(None, {"input": bad})
    with pytest.raises(QexportError, match="has dtype float64; the model takes tensor\\(float\\)"):
        heads.run(x.astype(np.float64))


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(QexportError, match="no such ONNX file"):
        qexport.InferenceSession(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    for source in (tmp_path / "junk.onnx", b"junk"):
        with pytest.raises(QexportError, match="not a valid ONNX model") as err:
            qexport.InferenceSession(source)
        assert "\n" not in str(err.value)


def test_bytes_options_and_threads(token_model: tuple[nn.Module, Path]) -> None:
    """A model given as bytes; one SessionOptions shared by two sessions (registering the native
    library twice on it would make onnxruntime refuse the second); one session used by several threads."""
    _, path = token_model
    options = ort.SessionOptions()
    first = qexport.InferenceSession(path.read_bytes(), options, threads=2)
    second = qexport.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    assert first.get_session_options().intra_op_num_threads == 2
    feeds = [_token_feed(n) for n in range(1, 9)]
    expected = [second.run(None, f)[0] for f in feeds]
    results: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        for _ in range(20):
            results[k] = first.run(None, feeds[k])[0]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(feeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, want in enumerate(expected):
        np.testing.assert_array_equal(results[k], want)


def test_cli_run_with_named_inputs_and_npz(
    token_model: tuple[nn.Module, Path], two_heads: tuple[nn.Module, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    _, path = token_model
    feed = _token_feed(3)
    for name, array in feed.items():
        np.save(tmp_path / f"{name}.npy", array)
    named = [f"--input={name}={tmp_path / name}.npy" for name in feed]
    assert main(["run", str(path), *named, "--output", str(tmp_path / "y.npy")]) == 0
    expected = qexport.InferenceSession(path).run(None, feed)[0]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)
    np.savez(tmp_path / "feed.npz", **feed)
    assert main(["run", str(path), "--input", str(tmp_path / "feed.npz")]) == 0
    assert f"top-1 per sample: {expected.argmax(1).tolist()}" in capsys.readouterr().out
    # two outputs: every one by name in an .npz
    heads = two_heads[1]
    x = two_heads_inputs(2).numpy()
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(heads), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "o.npz")]) == 0
    names = [o.name for o in qexport.InferenceSession(heads).get_outputs()]
    with np.load(tmp_path / "o.npz") as saved:
        assert saved.files == names and saved[names[1]].shape == (2, 1, 4)
    assert main(["run", str(heads), "--input", str(tmp_path / "x.npy")]) == 0
    out = capsys.readouterr().out
    assert f"output {names[0]} [2, 3]; top-1 per sample" in out and f"output {names[1]} [2, 1, 4] float32" in out
    # bad invocations: one line each, exit 2
    bad = [
        ["run", str(path), "--input", str(tmp_path / "input_ids.npy")],  # one unnamed array, two inputs
        ["run", str(path), named[0]],  # a named input missing
        ["run", str(path), named[0], "--input", str(tmp_path / "attention_mask.npy")],  # named and unnamed
        ["run", str(path), named[0], f"--input=attention_mask={tmp_path / 'missing.npy'}"],
        ["run", str(heads), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "o.npy")],  # 2 outputs
    ]
    for args in bad:
        assert main(args) == 2, args
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == len(bad) and all(line.startswith("qexport: error: ") for line in err)
    assert "takes 2 inputs (input_ids, attention_mask)" in err[0] and "'attention_mask' is missing" in err[1]
    assert "NAME=FILE.npy" in err[2] and "missing.npy" in err[3] and "FILE.npz" in err[4]


def test_any_onnx_model_with_overridable_initializers() -> None:
    """A plain ONNX model (not qexport's), given as bytes: a graph input with a default (an
    overridable initializer) may be fed, as onnxruntime allows, and is left out of get_inputs()."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(np.ones(2, np.float32), "b")],
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    session = qexport.InferenceSession(proto.SerializeToString())
    assert [i.name for i in session.get_inputs()] == ["x"]
    x = np.zeros((3, 2), np.float32)
    np.testing.assert_array_equal(session.run(x), np.ones((3, 2), np.float32))
    (y,) = session.run(None, {"x": x, "b": np.full(2, 5.0, np.float32)})
    np.testing.assert_array_equal(y, np.full((3, 2), 5.0, np.float32))
    with pytest.raises(QexportError, match="no input named 'c': its inputs are x"):
        session.run(None, {"x": x, "c": x})
