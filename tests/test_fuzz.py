"""A short run of tools/fuzz.py (the long one, 5000 cases, is in docs/FUZZ.md): malformed single-node
models of every qexport op, in a worker process, native kernels against the function bodies and the
ops' schema.  No crash, no hang, no disagreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qexport import native
from tests.test_native_hostile import _load_fuzz  # one loader of tools/fuzz.py

pytestmark = pytest.mark.skipif(not native.available(), reason="native library not built (README: set-up)")


@pytest.mark.parametrize(("cases", "seed"), [(150, 22), pytest.param(3000, 5, marks=pytest.mark.slow)])
def test_fuzz_run_finds_no_crash_hang_or_disagreement(tmp_path: Path, cases: int, seed: int) -> None:
    """150 cases in the default run; 3000 with another seed in the slow set."""
    fuzz = _load_fuzz()
    table = fuzz.fuzz(cases, seed=seed, timeout=30.0, out=tmp_path, quiet=True)
    counts = {o: sum(row[o] for row in table.values()) for o in fuzz.OUTCOMES}
    assert sum(counts.values()) == cases
    assert set(table) == set(fuzz.OPS), "every qexport op was fuzzed"
    bad = {o: counts[o] for o in ("crash", "hang", "disagree") if counts[o]}
    saved = sorted(p.name for p in tmp_path.glob("*.onnx"))
    assert not bad, f"{bad}; cases saved: {saved} (replay: python tools/fuzz.py --seed {seed} --replay INDEX)"
    assert counts["ran"] > 30 and counts["error"] > 30, counts  # both valid and rejected cases were exercised


def test_fuzz_oracle_flags_a_kernel_that_accepts_what_the_schema_rejects() -> None:
    fuzz = _load_fuzz()
    inputs = [np.zeros((1, 1, 3, 3), np.uint8), np.float32(1), np.zeros((1, 1, 1, 1), np.int8),
              np.ones((1, 1, 1), np.float32), np.zeros(1, np.float32)]  # fmt: skip
    case = fuzz.Case("IntConv", inputs, [False, True, True, True, True], {"relu": fuzz.Attr(0, "int")})
    assert fuzz.spec_violation(case) == "w_scale / bias shape"
    out = [np.zeros((1, 1, 3, 3), np.float32)]
    assert fuzz.classify(case, out, "", None, "body error")[0] == "disagree"
    assert fuzz.classify(case, None, "an error", None, "")[0] == "error"
