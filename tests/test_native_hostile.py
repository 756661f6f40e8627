"""Regression tests for the six classes of hostile input an independent fuzzer found in the native
kernels (issue 22): each malformed node gets the native kernel's error where the op's schema rejects it
(whatever the function body does: it runs some such nodes), and where the schema accepts it the kernel
runs exactly when the body runs, with outputs equal bit for bit (NaN for NaN; a zero's sign is not
compared: onnxruntime's own Max gives either sign, depending on its vector path).
Models are built with tools/fuzz.py's builder (single nodes, ORT_DISABLE_ALL)."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from qexport import native

ROOT = Path(__file__).resolve().parents[1]
if os.environ.get("QEXPORT_REQUIRE_NATIVE") == "1":
    assert native.available(), "QEXPORT_REQUIRE_NATIVE=1 but the native library was not built"
pytestmark = pytest.mark.skipif(not native.available(), reason="native library not built (README: set-up)")


def _load_fuzz() -> Any:
    if "qexport_fuzz" in sys.modules:
        return sys.modules["qexport_fuzz"]
    spec = importlib.util.spec_from_file_location("qexport_fuzz", ROOT / "tools" / "fuzz.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["qexport_fuzz"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz()
Attr = fuzz.Attr
F32 = np.float32


def _conv(op: str = "IntConv", n: int = 2, c: int = 4, hw: tuple[int, int] = (5, 5), m: int = 6, k: int = 3,
          constant_w: bool = True, **attrs: Any) -> Any:  # fmt: skip
    rng = np.random.default_rng(7)
    x = rng.integers(0, 16, (n, c, *hw)).astype(np.uint8)
    if op == "PostConv":
        w = fuzz.post_codes(rng, (m, c, k, k), 4)
        a = {"bits": Attr(4, "int"), "group": Attr(1, "int")}
    else:
        w = rng.integers(-8, 8, (m, c, k, k)).astype(np.int8)
        a = {"relu": Attr(1, "int")}
    a.update({"pads": Attr([1, 1, 1, 1], "ints")})
    a.update(attrs)
    inputs = [x, np.asarray(F32(0.5)), w, (rng.random(m) + 0.1).astype(F32), rng.standard_normal(m).astype(F32)]
    return fuzz.Case(op, inputs, [False, True, constant_w, True, True], a)


def _asq(n: int = 2, c: int = 3, hw: tuple[int, int] = (4, 4), hidden: int = 2) -> Any:
    rng = np.random.default_rng(3)
    inputs = [fuzz.dyadic(rng, (n, c, *hw)), np.asarray(F32(0.25)), np.zeros((), np.uint8), fuzz.pow2(rng, (c, hidden)),
              fuzz.dyadic(rng, (hidden,)), np.abs(fuzz.pow2(rng, (hidden, 1))) + 1, F32([0.5])]  # fmt: skip
    return fuzz.Case("AsqQuantize", inputs, [False] + [True] * 6, {"qmin": Attr(0, "int"), "qmax": Attr(15, "int")})


def _runs(case: Any, dims: tuple[int, ...] | None = None) -> tuple[Any, str, Any, str]:
    """Both runs; ``dims``: input 0 becomes an empty initializer of these dimensions (beyond numpy)."""
    if dims is not None:
        case.inputs[0], case.constant[0] = case.inputs[0][:0], True
    model, feeds = fuzz.build(case)
    if dims is not None:
        init = next(t for t in model.graph.initializer if t.name == "in0")
        del init.dims[:]
        init.dims.extend(dims)
    data = model.SerializeToString()
    native_out, native_err, _ = fuzz._run(data, feeds, True)
    body_out, body_err, _ = fuzz._run(data, feeds, False)
    return native_out, native_err, body_out, body_err


def _rejected(case: Any, message: str) -> str:
    """The native kernel's error for a case the schema rejects; returns what the body did."""
    assert fuzz.spec_violation(case) is not None
    native_out, native_err, body_out, body_err = _runs(case)
    assert native_out is None, f"the native kernel ran a node the schema rejects ({fuzz.spec_violation(case)})"
    assert "qexport." in native_err and message in native_err, native_err
    return "ran" if body_out is not None else body_err


def _agree(case: Any) -> list[np.ndarray] | None:
    """A case the schema accepts: native runs iff the body runs, and then equals it bit for bit."""
    assert fuzz.spec_violation(case) is None
    native_out, native_err, body_out, body_err = _runs(case)
    assert (native_out is None) == (body_out is None), f"native: {native_err or 'ran'}; body: {body_err or 'ran'}"
    if native_out is not None:
        assert fuzz.same(native_out, body_out) == ""
    return native_out


# 1. the data race: weights that are not constant, different in each concurrent run -------------------


@pytest.mark.parametrize("op", ["IntConv", "PostConv"])
def test_1_concurrent_runs_with_per_run_weights_do_not_mix(op: str) -> None:
    cases = []
    for seed in range(4):  # four different weights, fed per run (IntConv) or through a Cast (PostConv)
        case = _conv(op, constant_w=False, m=40)
        rng = np.random.default_rng(seed)
        case.inputs[2] = (fuzz.post_codes(rng, case.inputs[2].shape, 4) if op == "PostConv" else
                          rng.integers(-8, 8, case.inputs[2].shape).astype(np.int8))  # fmt: skip
        cases.append(case)
    if op == "IntConv":  # one session, the weight a graph input: each run brings its own
        model, _ = fuzz.build(cases[0])
        session = fuzz._session(model.SerializeToString(), True)
        feeds = [fuzz.build(c)[1] for c in cases]
        expected = [session.run(None, f) for f in feeds]
        start = threading.Barrier(8)
        bad: list[int] = []

        def work(t: int) -> None:
            start.wait()
            for i in range(12):
                j = (t + i) % len(feeds)
                if fuzz.same(session.run(None, feeds[j]), expected[j]):
                    bad.append(j)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not bad, f"{len(bad)} of 96 concurrent runs got another run's weights"
    else:
        for case in cases:
            model, feeds = fuzz.build(case)
            session = fuzz._session(model.SerializeToString(), True)
            assert fuzz.concurrent_check(session, feeds, session.run(None, feeds), threads=8) == ""


# 2. huge dimensions beside an empty one ---------------------------------------------------------------


@pytest.mark.parametrize("dims", [(0, 4, 2**20, 2**20), (0, 4, 2**31, 3), (0, 4, 2**32, 2**32), (0, 4, 2**62, 2**40),
                                  (0, 2**40, 5, 5)])  # fmt: skip
def test_2_empty_batch_with_huge_dimensions(dims: tuple[int, ...]) -> None:
    case = _conv()
    native_out, native_err, body_out, _ = _runs(case, dims)
    if dims[1] != 4:  # channels that do not match the weight: rejected
        assert native_out is None and "does not match input channels" in native_err
        return
    if native_out is None:  # the only allowed refusal of a valid node: a size the kernel cannot address
        assert fuzz.LIMIT in native_err, native_err
    else:
        assert native_out[0].shape == (0, 6, dims[2], dims[3])
        assert body_out is None or fuzz.same(native_out, body_out) == ""


@pytest.mark.parametrize("dims", [(0, 3, 2**31, 2**31), (0, 3, 2**32, 2**32), (0, 3, 2**40, 2**40)])
def test_2_asq_empty_batch_with_huge_dimensions(dims: tuple[int, ...]) -> None:
    case = _asq()
    native_out, native_err, _, _ = _runs(case, dims)
    assert native_out is not None or fuzz.LIMIT in native_err, native_err
    if native_out is not None:
        assert [o.shape for o in native_out] == [dims, dims, (0, 1, 1, 1)]


def test_2_huge_attributes_are_checked_arithmetic() -> None:
    case = _conv(pads=Attr([2**62, 0, 2**62, 0], "ints"))
    native_out, native_err, _, _ = _runs(case)
    assert native_out is None and "overflows 64-bit size arithmetic" in native_err
    _agree(_conv(strides=Attr([10**6, 1], "ints")))  # valid: a 1-row output, as the body computes


# 3. attributes read strictly ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "name", "attr", "message"),
    [
        ("AsqQuantize", "qmin", None, "attribute qmin is required"),
        ("AsqQuantize", "qmax", Attr(15.0, "float"), "attribute qmax must be an int"),
        ("IntConv", "relu", None, "attribute relu is required"),
        ("IntConv", "relu", Attr(1.0, "float"), "attribute relu must be an int"),
        ("IntConv", "relu", Attr(2, "int"), "relu=2 must be 0, 1 or 6"),
        ("PostConv", "relu", Attr(7, "int"), "relu=7 must be 0, 1 or 6"),
        ("IntConv", "group", Attr("1", "string"), "attribute group must be an int"),
        ("IntConv", "strides", Attr([1.0, 1.0], "floats"), "attribute strides must be a list of ints"),
        ("IntConv", "pads", Attr(1, "int"), "attribute pads must be a list of ints"),
        ("IntConv", "dilations", Attr([1, 1, 1], "ints"), "must have 2 / 4 / 2 values"),
        ("IntConv", "pads", Attr([-1, 0, 0, 0], "ints"), "pads must be >= 0"),
        ("PostConv", "group", None, "attribute group is required"),
        ("PostConv", "bits", None, "attribute bits is required"),
        ("PostConv", "bits", Attr(5, "int"), "bits=5 must be 2, 3 or 4"),
    ],
)
def test_3_attributes_are_read_strictly(op: str, name: str, attr: Any, message: str) -> None:
    case = _asq() if op == "AsqQuantize" else _conv(op)
    if attr is None:
        del case.attrs[name]
    else:
        case.attrs[name] = attr
    body = _rejected(case, message)
    if attr is None or attr.kind in ("float", "floats", "string"):  # missing / wrong type: the body fails too
        assert body != "ran"


def test_3_optional_attributes_take_conv_defaults_only_when_absent() -> None:
    case = _conv()
    for name in ("strides", "pads", "dilations", "group"):
        case.attrs.pop(name, None)
    assert _agree(case) is not None


# 4. inputs checked by exact shape, not element count ---------------------------------------------------


@pytest.mark.parametrize(
    ("index", "shape", "message"),
    [
        (1, (1,), "x_scale must be a scalar [] or one value per sample"),
        (1, (1, 1, 1, 1), "x_scale must be a scalar [] or one value per sample"),
        (1, (2,), "x_scale must be a scalar [] or one value per sample"),
        (3, (6, 1), "w_scale must have shape [6]"),
        (4, (6, 1, 1), "bias must have shape [6]"),  # the body runs this one, into a 5-D output
        (4, (1,), "bias must have shape [6]"),
    ],
)
def test_4_conv_inputs_are_checked_by_shape(index: int, shape: tuple[int, ...], message: str) -> None:
    case = _conv()
    case.inputs[index] = np.full(shape, 0.5, F32)
    _rejected(case, message)


@pytest.mark.parametrize(
    ("index", "value", "message"),
    [
        (1, F32([0.25]), "step must have shape []"),
        (2, np.zeros((1,), np.uint8), "zero_point must have shape []"),
        (2, np.ones((), np.uint8), "zero_point must be 0"),
        (5, F32([1.0, 1.0]), "w2 must have shape [2, 1]"),
        (6, np.asarray(F32(0.5)), "b2 must have shape [1]"),
        (4, F32([[0.0, 0.0]]), "b1 must have shape [2]"),
    ],
)
def test_4_asq_inputs_are_checked_by_shape(index: int, value: np.ndarray, message: str) -> None:
    case = _asq()
    case.inputs[index] = np.asarray(value)
    _rejected(case, message)


def test_4_conv_weight_type_is_checked_by_the_kernel() -> None:
    case = _conv("PostConv")
    case.inputs[2] = case.inputs[2].astype(np.uint8)  # uint8 codes where the schema says uint4
    _rejected(case, "w_codes must be uint4")


# 5. NaN as the function body ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", [3, 4, 5, 6])
def test_5_nan_in_the_adapter_propagates_as_in_the_body(where: int) -> None:
    case = _asq()
    case.inputs[where] = case.inputs[where].copy()
    case.inputs[where].flat[0] = np.nan
    y, codes, step = _agree(case)
    assert np.isnan(step).all() and np.isnan(y).all() and (codes == 0).all()  # not beta = 1e-8


def test_5_nan_and_inf_in_x_as_in_the_body() -> None:
    case = _asq()
    x = case.inputs[0].copy()
    x[0, 0, 0, 0], x[1, 2, 1, 1] = np.nan, np.inf
    case.inputs[0] = x
    _agree(case)


@pytest.mark.parametrize("op", ["IntConv", "PostConv"])
@pytest.mark.parametrize("relu", [1, 6])
@pytest.mark.parametrize("where", [3, 4])
def test_5_fused_relu_keeps_nan(op: str, relu: int, where: int) -> None:
    case = _conv(op, relu=Attr(relu, "int"))
    case.inputs[where] = case.inputs[where].copy()
    case.inputs[where][2] = np.nan
    (y,) = _agree(case)
    assert np.isnan(y[:, 2]).all() and not np.isnan(np.delete(y, 2, axis=1)).any()


# 6. zero channels --------------------------------------------------------------------------------------


@pytest.mark.parametrize("zero", ["M", "C"])
def test_6_post_conv_without_channels_is_an_error_as_in_the_body(zero: str) -> None:
    case = _conv("PostConv", c=0 if zero == "C" else 4, m=0 if zero == "M" else 6)
    body = _rejected(case, "needs at least one input and one output channel")
    assert body != "ran"  # the body fails in a Reshape


@pytest.mark.parametrize("zero", ["M", "C"])
def test_6_int_conv_without_channels_runs_as_the_body(zero: str) -> None:
    case = _conv("IntConv", c=0 if zero == "C" else 4, m=0 if zero == "M" else 6)
    (y,) = _agree(case)
    assert y.shape == ((2, 0, 5, 5) if zero == "M" else (2, 6, 5, 5))


@pytest.mark.parametrize("shape", [(2, 0, 4, 4), (2, 3, 0, 4)])
def test_6_asq_without_channels_or_pixels_runs_as_the_body(shape: tuple[int, ...]) -> None:
    case = _asq()
    case.inputs[0] = np.zeros(shape, F32)
    if shape[1] == 0:
        case.inputs[3] = np.zeros((0, 2), F32)
    _agree(case)


def test_saved_fuzz_case_format_round_trips(tmp_path: Path) -> None:
    case = _conv("PostConv")
    case.inputs[2] = np.full(case.inputs[2].shape, 7, np.uint8).astype(ml_dtypes.uint4)
    case.attrs["bits"] = Attr(2, "int")  # code 7 is outside the 2-bit range
    _rejected(case, "outside the 2-bit POST range")
    stem = fuzz.save_case(case, tmp_path, 0, 1, {"outcome": "error"})
    assert Path(str(stem) + ".onnx").is_file() and Path(str(stem) + ".npz").is_file()
