"""`qexport support` is written from the code, and docs/SUPPORTED.md is its output, not hand-kept."""

from __future__ import annotations

from pathlib import Path

from qexport import support

DOC = Path(__file__).resolve().parents[1] / "docs" / "SUPPORTED.md"


def test_supported_md_is_generated() -> None:
    assert DOC.read_text() == support.text(markdown=True), "regenerate: qexport support --markdown > docs/SUPPORTED.md"


def test_lowers_answers_from_torch_onnx() -> None:
    assert support.lowers("aten.gelu") and support.lowers("aten.upsample_nearest2d.vec") and support.lowers("silu")
    assert not support.lowers("aten.linalg_cholesky_ex")  # the op tests/test_frontend.py sees refused


def test_cli_support(capsys) -> None:  # type: ignore[no-untyped-def]
    from qexport.cli import main

    assert main(["support", "aten.gelu"]) == 0
    assert main(["support", "aten.linalg_cholesky_ex"]) == 1
    assert "no ONNX lowering" in capsys.readouterr().out
