#!/usr/bin/env python
"""Fuzz the qexport-domain ops: malformed single-node models, native kernels against function bodies.

    python tools/fuzz.py --cases 5000 --seed 0 --zoo    # per-op table; failing cases saved
    python tools/fuzz.py --replay 1234 --seed 0         # run one case in this process, print everything

Every case is one node of one qexport op, built from a valid random node (dyadic values, so that both
implementations' float arithmetic is exact and may be compared bit for bit; Requantize and AddRequant,
whose kernels repeat the body's float operations one by one, also get inexact steps) or taken from a real
exported graph (--zoo, --exported: the node's attributes, initializers and the activations it sees in a
run, ASQ inputs rounded to multiples of 1/8), and then, usually, mutated:
ranks and shapes, channels and groups, empty and huge-but-empty tensors, zero / negative / huge
attribute values, wrong attribute types, out-of-range bits and codes, wrong dtypes, NaN / inf / zero /
negative scales, denormal and overflowing steps, rounding ties, missing and extra inputs, truncated
initializers, constant and per-run weights; some
valid cases are also run
from several threads at once.  Each case runs twice at ORT_DISABLE_ALL: with the native library
registered and with the function bodies only.

The oracle is the op's schema (qexport/ops/*.py), restated in ``spec_violation`` below:
  - a case the schema rejects must get an error from the native kernel (whatever the body does: the
    function bodies run much that the schema rejects, e.g. bits=5 or a bias of shape [M, 1, 1]);
  - a case the schema accepts must run natively iff the body runs, with outputs equal bit for bit
    (NaN where the body has NaN; -0 and 0 count as equal, see ``same``); the one allowed exception is an error
    naming "a native kernel limit" (int32 accumulation, 1 GiB buffers, 2^31 elements);
  - ops without a native kernel must behave the same with and without the library registered;
  - an AsqQuantize node whose step or adapter inputs are not float32 finds no native kernel (the
    kernel's declared types, register.cc): onnxruntime runs its function body, which must then give
    what it gives without the library (outcome "body").
Outcomes per case: ran (bit for bit), close (AsqQuantize / AsqQuantizeRows with a per-run adapter
weight only, see ``asq_close``), error (clean, as the oracle wants), limit, body, skipped (a valid conv whose output
has 2^24 to 2^31 elements: work, not a test; beyond, the kernel must refuse it as a limit and the body is
not run; under ASan, also a case that runs a function body only and has a dimension of 2^31 or more,
whose output onnxruntime's allocator would abort on), crash (the worker process died: segfault, abort, sanitizer
report), hang (no answer within --timeout), disagree.

Cases run in a worker subprocess that announces each case before running it; a parent restarts it
when it dies or hangs.  A case is a pure function of (seed, index): failing cases are saved under
--out as <op>-s<seed>-<index>.onnx (the single-node model; its graph inputs in the .npz beside it)
and replay with --replay.  Run under the sanitizer build: tools/sanitize_build.sh (docs/FUZZ.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONV_OPS = ("PostConv", "IntConv", "PostConvRequant", "IntConvRequant")
NATIVE_OPS = (*CONV_OPS, "AsqQuantize", "AsqQuantizeRows", "Requantize", "AddRequant", "Rescale", "PostRescale")
BODY_OPS = ("PostMatMul", "PostWeights", "StepQuantize", "AsqAdapter")
OPS = NATIVE_OPS + BODY_OPS
INPUTS = {
    "PostConv": ["x_codes", "x_scale", "w_codes", "w_scale", "bias"],
    "IntConv": ["x_codes", "x_scale", "w_codes", "w_scale", "bias"],
    "PostConvRequant": ["x_codes", "x_scale", "w_codes", "w_scale", "bias", "y_scale", "y_zero_point"],
    "IntConvRequant": ["x_codes", "x_scale", "w_codes", "w_scale", "bias", "y_scale", "y_zero_point"],
    "AsqQuantize": ["x", "step", "zero_point", "w1", "b1", "w2", "b2"],
    "AsqQuantizeRows": ["x", "step", "zero_point", "w1", "b1", "w2", "b2"],
    "Requantize": ["x_codes", "x_scale", "x_zero_point", "y_scale", "y_zero_point"],
    "AddRequant": ["a_codes", "a_scale", "a_zero_point", "b_codes", "b_scale", "b_zero_point", "y_scale",
                   "y_zero_point"],
    "Rescale": ["acc", "w_scale", "row_step", "bias"],
    "PostRescale": ["acc", "x_scale", "w_scale", "bias"],
    "PostMatMul": ["x_codes", "x_scale", "w_codes", "w_scale", "bias", "x_zero_point"],
    "PostWeights": ["codes"],
    "StepQuantize": ["x", "step", "zero_point"],
    "AsqAdapter": ["feats", "w1", "b1", "w2", "b2"],
}
OUTPUTS = {
    "PostConv": ["y"], "IntConv": ["y"], "PostConvRequant": ["y_codes"], "IntConvRequant": ["y_codes"],
    "AsqQuantize": ["y", "codes", "sample_step"], "AsqQuantizeRows": ["y", "codes", "row_step"],
    "Requantize": ["y_codes"], "AddRequant": ["y_codes", "y"], "Rescale": ["y"], "PostRescale": ["y"],
    "PostMatMul": ["y"],
    "PostWeights": ["w_even", "w_odd"],
    "StepQuantize": ["y", "codes"], "AsqAdapter": ["beta"],
}  # fmt: skip
LIMIT = "a native kernel limit"
OUTCOMES = ("ran", "close", "error", "limit", "body", "skipped", "crash", "hang", "disagree")
HUGE = [2**31, 2**40, 2**62, 2**63 - 1]
DTYPES = [np.float32, np.float64, np.float16, np.int8, np.uint8, np.int32, np.int64, ml_dtypes.uint4, ml_dtypes.int4]
UINT4, INT4 = np.dtype(ml_dtypes.uint4), np.dtype(ml_dtypes.int4)


@dataclass
class Attr:
    value: Any
    kind: str  # int, ints, float, floats, string


@dataclass
class Case:
    op: str
    inputs: list[np.ndarray | None]  # None: left out (an empty input name)
    constant: list[bool]  # an initializer (constant) or a graph input / a Cast's output (per run)
    attrs: dict[str, Attr]
    mutations: list[str] = field(default_factory=list)
    concurrent: bool = False  # also run the native session from several threads at once
    truncated: list[int] = field(default_factory=list)  # initializers whose data is cut short


# ---------------------------------------------------------------------------------------------------
# valid random nodes


class Skip(Exception):
    """A mutation that does not apply to this case."""


def small(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape``, when it holds few enough elements to make (else the mutation does not apply)."""
    if int(np.prod(shape, dtype=object)) > 2**22:  # e.g. a huge empty tensor's empty dimension made 1
        raise Skip
    return shape


def dyadic(rng: np.random.Generator, shape: tuple[int, ...], lo: int = -64, hi: int = 64, den: int = 8) -> np.ndarray:
    """Multiples of 1/den: sums and powers-of-two products stay exact in float32."""
    shape = small(shape)
    return (rng.integers(lo, hi, size=shape) / den).astype(np.float32)


def gauss(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 2.0) -> np.ndarray:
    """Normal float32 values: their sums depend on the order of the additions (the ASQ kernels must add
    as onnxruntime's ReduceMean and Gemm do, bit for bit)."""
    return (rng.standard_normal(small(shape)) * scale).astype(np.float32)


def pow2(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """0 or +-2^k: products with any float are exact."""
    shape = small(shape)
    v = rng.choice(np.float32([0, 0.25, 0.5, 1, 2, -0.25, -0.5, -1, -2]), size=shape)
    return np.asarray(v, np.float32)


def codes(rng: np.random.Generator, shape: tuple[int, ...], signed: bool) -> np.ndarray:
    """Activation codes over the whole 8-bit range."""
    shape = small(shape)
    return rng.integers(-128 if signed else 0, 128 if signed else 256, shape).astype(np.int8 if signed else np.uint8)


def steps(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    shape = small(shape)
    return (rng.integers(1, 64, size=shape) / 32).astype(np.float32)


def post_codes(rng: np.random.Generator, shape: tuple[int, ...], bits: int) -> np.ndarray:
    shape = small(shape)
    m = 2 ** (bits - 1) - 1
    return (rng.integers(0, m + 1, size=shape) + 8 * rng.integers(0, 2, size=shape)).astype(UINT4)


def any_step(rng: np.random.Generator) -> np.float32:
    """A float32 [] step: a multiple of 1/32 (many exact products and rounding ties) or any float32 from
    1e-3 to 3 (inexact products: both implementations must round each one alike)."""
    if rng.integers(2):
        return np.float32(steps(rng, ()))
    return np.float32(10 ** rng.uniform(-3, 0.5))


def zero_point(rng: np.random.Generator, signed: bool) -> np.ndarray:
    """An 8-bit zero point []: 0 or 128 as the exporter writes them, or any value of the type."""
    lo, hi = (-128, 127) if signed else (0, 255)
    value = int(rng.integers(lo, hi + 1)) if rng.integers(2) else int(_pick(rng, [0] if signed else [0, 128]))
    return np.asarray(value, np.int8 if signed else np.uint8)


def code_range(rng: np.random.Generator, signed: bool) -> tuple[int, int]:
    """qmin <= qmax in the 8-bit type: the whole type (no Clip), a 4-bit range (a Clip), or any."""
    lo, hi = (-128, 127) if signed else (0, 255)
    how = int(rng.integers(3))
    if how == 0:
        return lo, hi
    if how == 1:
        return (-8, 7) if signed else (0, 15)
    qmin = int(rng.integers(lo, hi + 1))
    return qmin, int(rng.integers(qmin, hi + 1))


def broadcast_pair(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Two shapes that broadcast (numpy's rules) to ``shape``: each axis kept in both or made 1 in one of
    them (a 0 against a 1 too), then some leading axes of one dropped; in either order."""
    a, b = list(shape), list(shape)
    for i in range(len(shape)):
        how = int(rng.integers(3))
        if how == 1:
            a[i] = 1
        elif how == 2:
            b[i] = 1
    b = b[int(rng.integers(len(b) + 1)) :]
    return (tuple(a), tuple(b)) if rng.integers(2) else (tuple(b), tuple(a))


HUGE_STEPS = [3e38, 3.4028235e38, 1e38]  # (code - zero point) * step overflows, or the sum of two products
LONG = [15, 16, 17, 63, 64, 65, 1000, 65535, 65536, 65537, 131073, 200001]  # lengths around 16 / 8 and 65536


def conv_kind(op: str) -> str:
    """PostConv or IntConv for a conv op (their Requant forms too), else the op."""
    return op.removesuffix("Requant")


def base_case(op: str, rng: np.random.Generator) -> Case:
    if op in CONV_OPS and op.endswith("Requant"):  # the conv, and its output quantizer: a step, a zero point, a range
        case = base_case(conv_kind(op), rng)
        signed = bool(rng.integers(2))
        lo, hi = (-128, 127) if signed else (0, 255)
        zp = np.asarray(rng.integers(lo, hi + 1), np.int8 if signed else np.uint8)
        qmin = int(rng.integers(lo, hi + 1))
        qmax = int(rng.integers(qmin, hi + 1))
        case.op = op
        case.inputs += [steps(rng, ()), zp]
        case.constant += [bool(rng.integers(4)), bool(rng.integers(4))]
        case.attrs.update(qmin=Attr(qmin, "int"), qmax=Attr(qmax, "int"))
        case.attrs.setdefault("relu", Attr(0, "int"))  # required (the bodies read it)
        case.attrs.setdefault("group", Attr(1, "int"))
        return case
    r = lambda a, b: int(rng.integers(a, b + 1))  # noqa: E731
    attrs: dict[str, Attr] = {}
    if op in ("PostConv", "IntConv"):
        group = int(rng.choice([1, 1, 2, 3]))
        cg, mg, n = r(1, 5), r(1, 4), r(1, 3)
        k = (r(1, 3), r(1, 3))
        stride, dil = [r(1, 2), r(1, 2)], [r(1, 2), r(1, 2)]
        pads = [r(0, 2) for _ in range(4)]
        h = r(max(1, dil[0] * (k[0] - 1) + 1 - pads[0] - pads[2]), 8)
        w = r(max(1, dil[1] * (k[1] - 1) + 1 - pads[1] - pads[3]), 8)
        c, m = cg * group, mg * group
        signed = bool(rng.integers(2))
        x = codes(rng, (n, c, h, w), signed)
        xs = steps(rng, ()) if rng.integers(2) else steps(rng, (n, 1, 1, 1))
        if op == "PostConv":
            bits = r(2, 4)
            wc = post_codes(rng, (m, cg, *k), bits)
            attrs["bits"] = Attr(bits, "int")
            if rng.integers(2):  # optional on PostConv (0 when absent)
                attrs["relu"] = Attr(int(rng.choice([0, 1, 6])), "int")
        else:
            wc = rng.integers(-128, 128, (m, cg, *k)).astype(np.int8)
            attrs["relu"] = Attr(int(rng.choice([0, 1, 6])), "int")
        ws, b = (rng.random(m) + 0.05).astype(np.float32), rng.standard_normal(m).astype(np.float32)
        if op == "PostConv" or group != 1 or rng.integers(2):
            attrs["group"] = Attr(group, "int")
        for name, v, default in (("strides", stride, [1, 1]), ("pads", pads, [0] * 4), ("dilations", dil, [1, 1])):
            if v != default or rng.integers(2):
                attrs[name] = Attr(v, "ints")
        inputs = [x, xs, wc, ws, b]
        constant = [False, bool(rng.integers(2)), bool(rng.integers(2)), True, True]
    elif op in ("AsqQuantize", "AsqQuantizeRows", "StepQuantize", "AsqAdapter"):
        n, c, hidden = r(1, 3), r(1, 12), r(1, 4)
        pixels = (r(1, 9), r(1, 9))  # any plane: the channel means' order depends on each row's alignment
        shape = (n, c, *pixels) if op == "AsqQuantize" else ((n, c) if rng.integers(2) else (n, r(1, 3), c))
        x = gauss(rng, shape)
        adapter = [gauss(rng, (c, hidden), 0.5), gauss(rng, (hidden,), 0.5), gauss(rng, (hidden, 1), 0.5),
                   dyadic(rng, (1,), 1, 16)]  # fmt: skip
        signed = bool(rng.integers(2))
        bits = r(2, 8)
        qmin, qmax = (-(2 ** (bits - 1)) + r(0, 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        zp = np.zeros((), np.int8 if signed else np.uint8)
        step = steps(rng, ())
        if op == "AsqAdapter":
            inputs, attrs = [x, *adapter], {}
        elif op == "StepQuantize":
            inputs = [x, steps(rng, (*shape[:-1], 1)) if rng.integers(2) else step, zp]
            attrs = {"qmin": Attr(qmin, "int"), "qmax": Attr(qmax, "int")}
        else:
            inputs = [x, step, zp, *adapter]
            attrs = {"qmin": Attr(qmin, "int"), "qmax": Attr(qmax, "int")}
        # the adapter's weights constant, as exported (asq_close: onnxruntime sums per-run ones otherwise)
        constant = [False] + [bool(rng.integers(4)) if i < 3 or op in ("StepQuantize", "AsqAdapter") else True
                              for i in range(1, len(inputs))]  # fmt: skip
    elif op == "Requantize":  # codes to codes: any rank, both 8-bit types in and out
        signed, y_signed = bool(rng.integers(2)), bool(rng.integers(2))
        shape = tuple(r(0 if rng.random() < 0.05 else 1, 5) for _ in range(r(0, 4)))
        x = codes(rng, shape, signed)
        xs = any_step(rng)
        ys = xs * np.float32(2.0 ** r(-2, 3)) if rng.integers(3) == 0 else any_step(rng)  # ties: a power-of-2 ratio
        qmin, qmax = code_range(rng, y_signed)
        inputs = [x, np.asarray(xs), zero_point(rng, signed), np.asarray(ys, np.float32), zero_point(rng, y_signed)]
        # relu is always written (the exporter writes it); m_attr_drop leaves it out
        attrs = {"relu": Attr(r(0, 1), "int"), "qmin": Attr(qmin, "int"), "qmax": Attr(qmax, "int")}
        constant = [bool(rng.random() < 0.2)] + [bool(rng.integers(4)) for _ in inputs[1:]]
    elif op == "AddRequant":  # two codes to their sum's codes: both 8-bit types for a, b and y; any rank
        a_signed, b_signed, y_signed = (bool(rng.integers(2)) for _ in range(3))
        shape = tuple(r(0 if rng.random() < 0.05 else 1, 5) for _ in range(r(0, 4)))
        if rng.random() < 0.1:  # long: vector bodies and tails, several 65536-value parallel chunks, long rows
            shape = (r(1, 3), _pick(rng, LONG)) if rng.integers(2) else (_pick(rng, LONG),)
        a_shape, b_shape = (shape, shape) if rng.integers(2) else broadcast_pair(rng, shape)
        how = int(rng.integers(4))
        if how == 0:  # rounding ties: multiples of 1/32 summed (exact), then divided by a power of two
            sa, sb, sy = steps(rng, ()), steps(rng, ()), np.float32(2.0 ** -r(1, 4))
        elif how == 1:  # products or sums past float32: +-inf, and inf - inf (NaN: qmin in body and kernel)
            sa = np.float32(_pick(rng, HUGE_STEPS))
            sb = np.float32(_pick(rng, HUGE_STEPS)) if rng.integers(3) else any_step(rng)
            sy = any_step(rng)
        else:  # inexact steps: both must round each product, the sum and the quotient alike
            sa, sb = any_step(rng), any_step(rng)
            sy = sa * np.float32(2.0 ** r(-2, 3)) if rng.integers(3) == 0 else any_step(rng)
        qmin, qmax = code_range(rng, y_signed)
        inputs = [codes(rng, a_shape, a_signed), np.asarray(sa, np.float32), zero_point(rng, a_signed),
                  codes(rng, b_shape, b_signed), np.asarray(sb, np.float32), zero_point(rng, b_signed),
                  np.asarray(sy, np.float32), zero_point(rng, y_signed)]  # fmt: skip
        attrs = {"qmin": Attr(qmin, "int"), "qmax": Attr(qmax, "int")}
        if rng.integers(2):  # relu (0 when absent) for the dequantized output y
            attrs["relu"] = Attr(r(0, 1), "int")
        constant = [bool(rng.random() < 0.2) if i in (0, 3) else bool(rng.integers(4)) for i in range(8)]
    elif op == "PostMatMul":
        bits, k_, m = r(2, 4), r(1, 8), r(1, 6)
        lead = (r(1, 3),) if rng.integers(2) else (r(1, 2), r(1, 3))
        signed = bool(rng.integers(2))
        x = codes(rng, (*lead, k_), signed)
        zp = np.zeros((), x.dtype)
        if signed and rng.integers(2):  # signed codes stored as uint8 + 128, as the exporter writes them
            x, zp = (x.astype(np.int16) + 128).astype(np.uint8), np.array(128, np.uint8)
        xs = steps(rng, ()) if rng.integers(2) else steps(rng, (*lead, 1))
        inputs = [x, xs, post_codes(rng, (k_, m), bits), (rng.random(m) + 0.05).astype(np.float32),
                  rng.standard_normal(m).astype(np.float32), zp]  # fmt: skip
        attrs = {"bits": Attr(bits, "int")}
        constant = [False, bool(rng.integers(2)), True, True, True, True]
    elif op == "Rescale":  # int32 sums [..., N] to float: per-column scales, per-row steps, a bias
        lead = tuple(r(0 if rng.random() < 0.05 else 1, 4) for _ in range(r(0, 2)))
        n = _pick(rng, LONG) if rng.random() < 0.1 else r(0 if rng.random() < 0.05 else 1, 40)
        acc = rng.integers(-(2**31), 2**31, (*lead, n), dtype=np.int64).astype(np.int32)
        if rng.integers(2):
            acc //= 1 << r(0, 20)
        inputs = [acc, rng.standard_normal(n).astype(np.float32), steps(rng, (*lead, 1)),
                  rng.standard_normal(n).astype(np.float32)]  # fmt: skip
        constant = [False, bool(rng.integers(4)), False, bool(rng.integers(4))]
    elif op == "PostRescale":  # int32 even | odd sums [..., 2M] to float: the combine, steps, scales, bias
        lead = tuple(r(0 if rng.random() < 0.05 else 1, 4) for _ in range(r(0, 2)))
        m = _pick(rng, LONG) if rng.random() < 0.1 else r(0 if rng.random() < 0.05 else 1, 40)
        acc = rng.integers(-(2**31), 2**31, (*lead, 2 * m), dtype=np.int64).astype(np.int32)
        if rng.integers(2):
            acc //= 1 << r(0, 20)
        xs = steps(rng, ()) if rng.integers(2) else steps(rng, (*lead, 1))
        inputs = [acc, xs, rng.standard_normal(m).astype(np.float32), rng.standard_normal(m).astype(np.float32)]
        constant = [False, bool(rng.integers(4)), bool(rng.integers(4)), bool(rng.integers(4))]
    elif op == "PostWeights":
        bits = r(2, 4)
        inputs = [post_codes(rng, (r(1, 4), r(1, 4)), bits).astype(np.int8)]
        attrs = {"bits": Attr(bits, "int")}
        constant = [bool(rng.integers(2))]
    else:
        raise ValueError(op)
    return Case(op, list(inputs), constant, attrs)


# ---------------------------------------------------------------------------------------------------
# mutations


def regen(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=object))
    if size == 0:
        return np.zeros(shape, dtype)
    small(shape)
    if dtype.kind == "f":
        return dyadic(rng, shape).astype(dtype)
    if dtype in (UINT4,):
        return rng.integers(0, 16, shape).astype(dtype)
    if dtype in (INT4,):
        return rng.integers(-8, 8, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -128), min(info.max, 255) + 1, shape).astype(dtype)


def _pick(rng: np.random.Generator, items: list) -> Any:
    if not items:
        raise Skip
    return items[int(rng.integers(len(items)))]


def _present(case: Case) -> list[int]:
    return [i for i, v in enumerate(case.inputs) if v is not None]


def m_attr_drop(case: Case, rng: np.random.Generator) -> None:
    if case.attrs:
        name = _pick(rng, sorted(case.attrs))
        del case.attrs[name]
        case.mutations.append(f"drop attribute {name}")


def m_attr_type(case: Case, rng: np.random.Generator) -> None:
    if not case.attrs:
        return
    name = _pick(rng, sorted(case.attrs))
    a = case.attrs[name]
    kind = _pick(rng, [k for k in ("int", "ints", "float", "floats", "string") if k != a.kind])
    if a.kind in ("int", "float"):
        scalar = int(a.value)
    elif a.kind in ("ints", "floats"):
        scalar = int(a.value[0]) if a.value else 1
    else:
        scalar = int(a.value) if str(a.value).lstrip("-").isdigit() else 1
    values = [int(v) for v in a.value] if a.kind in ("ints", "floats") else [scalar]
    converted = {"int": scalar, "ints": values, "float": float(scalar), "floats": [float(v) for v in values],
                 "string": str(scalar)}  # fmt: skip
    case.attrs[name] = Attr(converted[kind], kind)
    case.mutations.append(f"attribute {name} as {kind}")


def m_attr_value(case: Case, rng: np.random.Generator) -> None:
    if not case.attrs:
        return
    name = _pick(rng, sorted(case.attrs))
    a = case.attrs[name]
    v = _pick(rng, [0, -1, 1, 2, 3, 4, 5, 8, -128, 127, 255, 256, -(2**63), *HUGE])
    if a.kind == "int":
        case.attrs[name] = Attr(v, "int")
        case.mutations.append(f"attribute {name}={v}")
    elif a.kind == "ints":
        values = list(a.value)
        how = int(rng.integers(4))
        if how == 0 or not values:
            values.append(v)
        elif how == 1:
            values.pop(int(rng.integers(len(values))))
        else:
            values[int(rng.integers(len(values)))] = v
        case.attrs[name] = Attr(values, "ints")
        case.mutations.append(f"attribute {name}={values}")


def m_attr_add(case: Case, rng: np.random.Generator) -> None:
    name = _pick(rng, ["group", "strides", "pads", "dilations", "relu", "bits", "qmin", "qmax", "kernel_shape", "axis"])
    if name not in case.attrs:
        value = [1, 1] if name in ("strides", "dilations", "kernel_shape") else [0] * 4 if name == "pads" else 1
        case.attrs[name] = Attr(value, "ints" if isinstance(value, list) else "int")
        case.mutations.append(f"add attribute {name}={value}")


def m_rank(case: Case, rng: np.random.Generator) -> None:
    i = _pick(rng, _present(case))
    v = case.inputs[i]
    assert v is not None
    if v.ndim and rng.integers(2):
        new = v[..., 0] if v.shape[-1] else np.zeros(small(v.shape[:-1]), v.dtype)
    else:
        new = v.reshape((1, *v.shape))
    case.inputs[i] = np.ascontiguousarray(new)
    case.mutations.append(f"input {i} rank {v.ndim} -> {new.ndim}")


def m_dim(case: Case, rng: np.random.Generator) -> None:
    i = _pick(rng, _present(case))
    v = case.inputs[i]
    assert v is not None
    if not v.ndim:
        return m_rank(case, rng)
    shape = list(v.shape)
    d = int(rng.integers(len(shape)))
    shape[d] = _pick(rng, [0, 1, 2, shape[d] + 1, max(shape[d] - 1, 0), 7])
    case.inputs[i] = regen(rng, tuple(shape), v.dtype)
    case.mutations.append(f"input {i} shape {list(v.shape)} -> {shape}")


def m_huge_empty(case: Case, rng: np.random.Generator) -> None:
    i = _pick(rng, _present(case))
    v = case.inputs[i]
    assert v is not None
    if v.ndim < 2:
        return m_dim(case, rng)
    shape = list(v.shape)
    zero, big = rng.choice(len(shape), 2, replace=False)
    shape[int(zero)] = 0
    shape[int(big)] = _pick(rng, [2**20, 2**31, 2**40])
    if v.ndim > 2 and shape[int(big)] <= 2**31 and rng.integers(2):
        shape[int(next(j for j in range(len(shape)) if j not in (zero, big)))] = 2**21
    case.inputs[i] = np.zeros(shape, v.dtype)
    case.mutations.append(f"input {i} shape {list(v.shape)} -> {shape} (empty)")


def m_dtype(case: Case, rng: np.random.Generator) -> None:
    i = _pick(rng, _present(case))
    v = case.inputs[i]
    assert v is not None
    dtype = np.dtype(_pick(rng, [d for d in DTYPES if np.dtype(d) != v.dtype]))
    case.inputs[i] = regen(rng, v.shape, dtype) if v.size else np.zeros(v.shape, dtype)
    if dtype in (UINT4, INT4) and not case.constant[i] and v.size == 0:
        case.constant[i] = True
    case.mutations.append(f"input {i} dtype {v.dtype} -> {dtype}")


SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, -1.0, -0.5, 3e38, -3e38, 1e-45, 1e-38]


def m_values(case: Case, rng: np.random.Generator) -> None:
    floats = [i for i in _present(case) if case.inputs[i].dtype.kind == "f" and case.inputs[i].size]  # type: ignore[union-attr]
    if not floats:
        return
    i = _pick(rng, floats)
    v = case.inputs[i].copy()  # type: ignore[union-attr]
    special = _pick(rng, SPECIAL)
    if rng.integers(2):
        v.flat[int(rng.integers(v.size))] = special
        what = "one"
    else:
        v[...] = special
        what = "all"
    case.inputs[i] = v
    case.mutations.append(f"input {i} {what} = {special}")


def m_missing(case: Case, rng: np.random.Generator) -> None:
    if rng.integers(2):
        i = _pick(rng, _present(case))
        case.inputs[i] = None
        case.mutations.append(f"input {i} left out")
    else:
        keep = int(rng.integers(len(case.inputs)))
        del case.inputs[keep:], case.constant[keep:]
        case.mutations.append(f"only {keep} inputs")


def m_extra(case: Case, rng: np.random.Generator) -> None:
    case.inputs.append(dyadic(rng, (2,)))
    case.constant.append(True)
    case.mutations.append("an extra input")


def m_truncate(case: Case, rng: np.random.Generator) -> None:
    i = _pick(rng, [i for i in _present(case) if case.inputs[i].size > 1])  # type: ignore[union-attr]
    case.constant[i] = True
    case.truncated.append(i)
    case.mutations.append(f"input {i} a truncated initializer")


def m_constness(case: Case, rng: np.random.Generator) -> None:
    i = _pick(rng, _present(case))
    case.constant[i] = not case.constant[i]
    case.mutations.append(f"input {i} {'constant' if case.constant[i] else 'per run'}")


# op-specific mutations that keep the node consistent (the interesting edge of the valid set)


def m_conv_channels(case: Case, rng: np.random.Generator) -> None:
    x, xs, w = case.inputs[:3]
    assert x is not None and w is not None
    which = _pick(rng, ["N", "M", "C", "H", "W", "group", "kernel"])
    group = case.attrs.get("group", Attr(1, "int")).value
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    if which == "N":
        n = 0
    elif which == "M":
        m = 0
    elif which == "C":
        c, cg = 0, 0
    elif which == "H":
        h = 0
    elif which == "W":
        wd = 0
    elif which == "group":  # depthwise, or a group that does not divide
        group = int(_pick(rng, [c, c + 1, 2]))
        cg = max(c // max(group, 1), 1)
        m = group * max(m // max(group, 1), 1)
        case.attrs["group"] = Attr(group, "int")
    else:
        kh, kw = _pick(rng, [(0, 1), (1, 0), (h + 5, 1), (1, 1)])
    wdtype = w.dtype
    case.inputs[0] = regen(rng, (n, c, h, wd), x.dtype)
    if xs is not None and np.ndim(xs):
        case.inputs[1] = steps(rng, (n, 1, 1, 1))
    if conv_kind(case.op) == "PostConv" and wdtype == UINT4:
        case.inputs[2] = post_codes(rng, (m, cg, kh, kw), case.attrs.get("bits", Attr(4, "int")).value
                                    if case.attrs.get("bits", Attr(4, "int")).value in (2, 3, 4) else 4)  # fmt: skip
    else:
        case.inputs[2] = regen(rng, (m, cg, kh, kw), wdtype)
    case.inputs[3] = (rng.random(small((m,))) + 0.05).astype(np.float32)
    case.inputs[4] = rng.standard_normal(small((m,))).astype(np.float32)
    case.mutations.append(f"conv {which}: x {[n, c, h, wd]}, w {[m, cg, kh, kw]}, group {group}")


def m_conv_shapes(case: Case, rng: np.random.Generator) -> None:
    x, w = case.inputs[0], case.inputs[2]
    assert x is not None and w is not None
    n, m = x.shape[0], w.shape[0]
    which = _pick(rng, ["x_scale", "w_scale", "bias"])
    if which == "x_scale":
        shape = _pick(rng, [(1,), (n,), (n, 1), (1, 1, 1, 1), (n, 1, 1, 1), (), (n + 1, 1, 1, 1), (n, 1, 1, 2)])
        case.inputs[1] = steps(rng, shape)
    else:
        shape = _pick(rng, [(m, 1, 1), (1,), (), (m + 1,), (1, m), (m,)])
        case.inputs[3 if which == "w_scale" else 4] = dyadic(rng, shape)
    case.mutations.append(f"{which} shape {list(shape)}")


def m_conv_attrs(case: Case, rng: np.random.Generator) -> None:
    name = _pick(rng, ["strides", "dilations", "pads"])
    # big enough to overflow or to pass a kernel limit; not merely big (a valid conv of 10^9 outputs is work,
    # not a test)
    v = _pick(rng, [2**31, 2**40, 2**62, 2**63 - 1] + ([1000, 10**6] if name == "strides" else []))
    values = [v, 1] if name != "pads" else [v, 0, v, 0]
    if rng.integers(2):
        values = values[::-1] if name != "pads" else [0, v, 0, v]
    case.attrs[name] = Attr(values, "ints")
    case.mutations.append(f"huge {name}={values}")


def m_post_codes(case: Case, rng: np.random.Generator) -> None:
    w = case.inputs[2]
    if w is None or w.dtype != UINT4 or not w.size:
        return
    bits = case.attrs.get("bits", Attr(4, "int")).value
    v = w.astype(np.uint8)
    v.flat[int(rng.integers(v.size))] = _pick(rng, [7, 15, 4, 12, 3, 11])
    case.inputs[2] = v.astype(UINT4)
    case.mutations.append(f"a code {v.max()} at bits={bits}")


def m_asq(case: Case, rng: np.random.Generator) -> None:
    x, zp, w1, b2 = case.inputs[0], case.inputs[2], case.inputs[3], case.inputs[6]
    assert x is not None and w1 is not None
    which = _pick(rng, ["hidden0", "C0", "HW0", "N0", "zero_point", "zero_shape", "qrange", "step_shape", "nan_x",
                        "nan_adapter", "inf_adapter", "huge_step"])  # fmt: skip
    if which == "hidden0":
        c = w1.shape[0]
        case.inputs[3:7] = [np.zeros((c, 0), np.float32), np.zeros(0, np.float32), np.zeros((0, 1), np.float32), b2]
    elif which == "C0":
        shape = list(x.shape)
        shape[-1 if case.op == "AsqQuantizeRows" else 1] = 0
        case.inputs[0] = np.zeros(shape, np.float32)
        case.inputs[3] = np.zeros((0, w1.shape[1]), np.float32)
    elif which == "HW0" and x.ndim == 4:
        case.inputs[0] = np.zeros((x.shape[0], x.shape[1], 0, x.shape[3]), np.float32)
    elif which == "N0":
        case.inputs[0] = np.zeros((0, *x.shape[1:]), np.float32)
    elif which == "zero_point" and zp is not None:
        case.inputs[2] = np.asarray(1, zp.dtype)
    elif which == "zero_shape" and zp is not None:
        case.inputs[2] = np.zeros((1,), zp.dtype)
    elif which == "qrange":
        lo, hi = _pick(rng, [(0, 0), (5, 1), (-128, 127), (0, 255), (-129, 0), (0, 256), (-1, 15), (1, 3)])
        case.attrs["qmin"], case.attrs["qmax"] = Attr(lo, "int"), Attr(hi, "int")
    elif which == "step_shape":
        case.inputs[1] = steps(rng, _pick(rng, [(1,), (1, 1, 1, 1), (x.shape[0], 1, 1, 1)]))
    elif which == "nan_x" and x.size:
        v = x.copy()
        v.flat[int(rng.integers(v.size))] = _pick(rng, [np.nan, np.inf, -np.inf])
        case.inputs[0] = v
    elif which in ("nan_adapter", "inf_adapter"):
        j = int(rng.integers(3, 7))
        v = case.inputs[j]
        if v is not None and v.size:
            v = v.copy()
            v.flat[int(rng.integers(v.size))] = np.nan if which == "nan_adapter" else _pick(rng, [np.inf, -np.inf])
            case.inputs[j] = v
    elif which == "huge_step":
        case.inputs[1] = np.float32(_pick(rng, [3e38, 1e-45, 1e-30]))
    case.mutations.append(f"asq {which}")


def _zero_point_at_edge(case: Case, rng: np.random.Generator, indices: list[int]) -> None:
    """One of the 8-bit zero points at ``indices`` set to its type's lowest or highest value."""
    j = int(_pick(rng, indices))
    v = case.inputs[j]
    assert v is not None
    if v.dtype in (np.int8, np.uint8):
        info = np.iinfo(v.dtype)
        case.inputs[j] = np.asarray(_pick(rng, [info.min, info.max]), v.dtype)


def _zero_point_reshaped(case: Case, rng: np.random.Generator, indices: list[int]) -> None:
    """One of the zero points at ``indices`` given a shape other than []."""
    j = int(_pick(rng, indices))
    v = case.inputs[j]
    assert v is not None
    case.inputs[j] = np.full(_pick(rng, [(1,), (1, 1), (2,), (0,)]), v.flat[0] if v.size else 0, v.dtype)


def m_requantize(case: Case, rng: np.random.Generator) -> None:
    x, xs, xz, ys, yz = case.inputs[:5]
    assert x is not None and xs is not None and xz is not None and ys is not None and yz is not None
    which = _pick(rng, ["ties", "tiny_step", "huge_step", "x_type", "y_type", "x_zero_type", "zero_edge", "zero_shape",
                        "step_shape", "qrange", "length"])  # fmt: skip
    other = {np.dtype(np.int8): np.uint8, np.dtype(np.uint8): np.int8}
    if which == "ties" and xs.dtype == np.float32:  # codes halfway between two output codes (or next to it)
        case.inputs[3] = np.asarray(xs * np.float32(_pick(rng, [2.0, 4.0, 2 / 3, 0.4])), np.float32)
    elif which in ("tiny_step", "huge_step"):  # valid: positive, finite (denormal, or products that overflow)
        values = [1e-45, 1e-40, 1.1754944e-38] if which == "tiny_step" else [3e38, 3.4028235e38, 1e30]
        case.inputs[int(_pick(rng, [1, 3]))] = np.asarray(_pick(rng, values), np.float32)
    elif which == "x_type" and x.dtype in other:  # the codes read as the other 8-bit type, its zero point too
        case.inputs[0] = x.view(other[x.dtype])
        case.inputs[2] = zero_point(rng, other[x.dtype] == np.int8)
    elif which == "y_type" and yz.dtype in other:  # the output type changes: a code range of the new type
        qmin, qmax = code_range(rng, other[yz.dtype] == np.int8)
        case.inputs[4] = zero_point(rng, other[yz.dtype] == np.int8)
        case.attrs["qmin"], case.attrs["qmax"] = Attr(qmin, "int"), Attr(qmax, "int")
    elif which == "x_zero_type" and xz.dtype in other:  # the other 8-bit type: onnxruntime's type check passes
        case.inputs[2] = np.asarray(int(xz.flat[0]) % 128 if xz.size else 0, other[xz.dtype])
    elif which == "zero_edge":  # a zero point at its type's end
        _zero_point_at_edge(case, rng, [2, 4])
    elif which == "zero_shape":
        _zero_point_reshaped(case, rng, [2, 4])
    elif which == "step_shape":
        j = int(_pick(rng, [1, 3]))
        v = case.inputs[j]
        assert v is not None
        case.inputs[j] = np.full(_pick(rng, [(1,), (1, 1, 1, 1), (2,), (0,)]), v.flat[0] if v.size else 1, v.dtype)
    elif which == "qrange":
        lo, hi = (-128, 127) if yz.dtype == np.int8 else (0, 255)
        qmin, qmax = _pick(rng, [(lo, lo), (hi, hi), (lo - 1, hi), (lo, hi + 1), (5, 4), (-129, 255), (-128, 255),
                                 (0, 127), (-(2**63), 2**63 - 1), (2**31, 2**31)])  # fmt: skip
        case.attrs["qmin"], case.attrs["qmax"] = Attr(qmin, "int"), Attr(qmax, "int")
    elif which == "length" and x.dtype in other:  # vector tails, and several parallel chunks of 65536 bytes
        n = int(_pick(rng, [63, 64, 65, 127, 128, 129, 1000, 65535, 65536, 65537, 200001]))
        shape = (n,) if rng.integers(2) else (1, n, 1)
        case.inputs[0] = codes(rng, shape, x.dtype == np.int8)
    case.mutations.append(f"requantize {which}")


def m_add_requant(case: Case, rng: np.random.Generator) -> None:
    a, b, zy = case.inputs[0], case.inputs[3], case.inputs[7]
    assert a is not None and b is not None and zy is not None
    which = _pick(rng, ["ties", "overflow", "tiny_step", "bad_step", "step_shape", "a_type", "b_type", "y_type",
                        "zero_type", "zero_edge", "zero_shape", "code_edge", "broadcast", "broadcast", "no_broadcast",
                        "qrange", "length", "length"])  # fmt: skip
    other = {np.dtype(np.int8): np.uint8, np.dtype(np.uint8): np.int8}

    def like(shape: tuple[int, ...], v: np.ndarray) -> np.ndarray:  # new codes of v's type
        return codes(rng, shape, v.dtype == np.int8) if v.dtype in other else regen(rng, shape, v.dtype)

    if which == "ties":  # multiples of 1/32 summed exactly, divided by a power of two: halfway cases
        case.inputs[1], case.inputs[4] = steps(rng, ()), steps(rng, ())
        case.inputs[6] = np.asarray(_pick(rng, [1 / 16, 1 / 8, 1 / 4, 1 / 2, 1 / 32]), np.float32)
    elif which == "overflow":  # (code - zero point) * step, or the sum, past float32: inf, inf - inf = NaN
        case.inputs[1] = np.asarray(_pick(rng, HUGE_STEPS), np.float32)
        case.inputs[4] = np.asarray(_pick(rng, HUGE_STEPS), np.float32)
        if rng.integers(2):
            case.inputs[6] = np.asarray(_pick(rng, [1.0, 3e38, 1e-45, 0.5]), np.float32)
    elif which == "tiny_step":  # valid: positive and finite (denormal, the least normal)
        case.inputs[int(_pick(rng, [1, 4, 6]))] = np.asarray(_pick(rng, [1e-45, 1e-40, 1.1754944e-38]), np.float32)
    elif which == "bad_step":
        v = _pick(rng, [0.0, -0.0, -1.0, -1e-45, np.nan, np.inf, -np.inf])
        case.inputs[int(_pick(rng, [1, 4, 6]))] = np.asarray(v, np.float32)
    elif which == "step_shape":
        j = int(_pick(rng, [1, 4, 6]))
        v = case.inputs[j]
        assert v is not None
        case.inputs[j] = np.full(_pick(rng, [(1,), (1, 1, 1, 1), (2,), (0,)]), v.flat[0] if v.size else 1, v.dtype)
    elif which in ("a_type", "b_type"):  # the codes read as the other 8-bit type, their zero point too
        j = 0 if which == "a_type" else 3
        v = case.inputs[j]
        assert v is not None
        if v.dtype in other:
            case.inputs[j] = v.view(other[v.dtype])
            case.inputs[j + 2] = zero_point(rng, other[v.dtype] == np.int8)
    elif which == "y_type" and zy.dtype in other:  # the output type changes: a code range of the new type
        qmin, qmax = code_range(rng, other[zy.dtype] == np.int8)
        case.inputs[7] = zero_point(rng, other[zy.dtype] == np.int8)
        case.attrs["qmin"], case.attrs["qmax"] = Attr(qmin, "int"), Attr(qmax, "int")
    elif which == "zero_type":  # a or b's zero point of the other 8-bit type: no type check but the kernel's
        j = int(_pick(rng, [2, 5]))
        v = case.inputs[j]
        assert v is not None
        if v.dtype in other:
            case.inputs[j] = np.asarray(int(v.flat[0]) % 128 if v.size else 0, other[v.dtype])
    elif which == "zero_edge":  # a zero point at its type's end
        _zero_point_at_edge(case, rng, [2, 5, 7])
    elif which == "zero_shape":
        _zero_point_reshaped(case, rng, [2, 5, 7])
    elif which == "code_edge":  # codes at their type's ends, the zero point at one end: |code - zero| up to 255
        j = int(_pick(rng, [0, 3]))
        v = case.inputs[j]
        assert v is not None
        if v.dtype in other and v.size:
            info = np.iinfo(v.dtype)
            v = v.copy()
            ends = np.asarray(rng.choice([info.min, info.max], size=v.shape), v.dtype)
            mask = rng.random(v.shape) < _pick(rng, [0.5, 1.0])
            v[mask] = ends[mask]
            case.inputs[j] = v
            case.inputs[j + 2] = np.asarray(_pick(rng, [info.min, info.max]), v.dtype)
    elif which == "broadcast":  # valid shapes: scalars, 1 against 0, rows and columns, leading axes
        pair = _pick(rng, [((), ()), ((), (5, 3)), ((1,), ()), ((0,), (1,)), ((1, 0), (3, 1)), ((4, 1), (1, 19)),
                           ((2, 3, 4, 5), (3, 1, 1)), ((1, 1, 1), (7,)), ((2, 1, 3), (2, 5, 1)), None])  # fmt: skip
        if pair is None:
            pair = broadcast_pair(rng, tuple(int(rng.integers(0 if rng.random() < 0.1 else 1, 6))
                                             for _ in range(int(rng.integers(0, 5)))))  # fmt: skip
        sa_, sb_ = pair if rng.integers(2) else pair[::-1]
        case.inputs[0], case.inputs[3] = like(sa_, a), like(sb_, b)
    elif which == "no_broadcast":  # an aligned axis of two sizes, neither 1
        shape = [int(rng.integers(1, 5)) for _ in range(int(rng.integers(1, 5)))]
        d = int(rng.integers(len(shape)))
        x, y = _pick(rng, [(2, 3), (3, 2), (0, 2), (2, 0), (4, 5), (7, 70)])
        sa_, sb_ = list(shape), list(shape)
        sa_[d], sb_[d] = x, y
        sb_ = sb_[int(rng.integers(d + 1)) :]  # leading axes dropped: axis d stays aligned from the end
        if rng.integers(2):
            sa_, sb_ = sb_, sa_
        case.inputs[0], case.inputs[3] = like(tuple(sa_), a), like(tuple(sb_), b)
    elif which == "qrange":
        lo, hi = (-128, 127) if zy.dtype == np.int8 else (0, 255)
        qmin, qmax = _pick(rng, [(lo, lo), (hi, hi), (lo - 1, hi), (lo, hi + 1), (5, 4), (-129, 255), (-128, 255),
                                 (0, 127), (-(2**63), 2**63 - 1), (2**31, 2**31)])  # fmt: skip
        case.attrs["qmin"], case.attrs["qmax"] = Attr(qmin, "int"), Attr(qmax, "int")
    elif which == "length":  # vector bodies and tails (16 / 8 a step), 65536-value parallel chunks, long rows
        n = int(_pick(rng, [7, 8, 9, 31, 33, 127, 129, *LONG]))
        k = int(rng.integers(1, 4))
        form = _pick(rng, ["flat", "flat", "rows", "column", "outer", "scalar", "huge"])  # huge: 2^31 outputs, a limit
        sa_, sb_ = {"flat": ((n,), (n,)) if rng.integers(2) else ((1, n, 1), (1, n, 1)),
                    "rows": ((k, n), (n,)),  # rows of both, unit strides
                    "column": ((k, n), (k, 1)),  # one value broadcast along each row
                    "outer": ((min(n, 4096), 1), (1, k)) if rng.integers(2) else ((k, 1), (1, n)),
                    "scalar": ((), (n,)),
                    "huge": ((2**16, 1), (1, 2**15 + int(rng.integers(2))))}[form]  # fmt: skip
        if rng.integers(2):
            sa_, sb_ = sb_, sa_
        case.inputs[0], case.inputs[3] = like(sa_, a), like(sb_, b)
    case.mutations.append(f"add_requant {which}")


def m_rescale(case: Case, rng: np.random.Generator) -> None:
    """Rescale and PostRescale (same input order but for the step: Rescale's third, PostRescale's second)."""
    if case.op == "PostRescale":
        acc, step, ws, bias = case.inputs
        step_at, scale_at = 1, (2, 3)
    else:
        acc, ws, step, bias = case.inputs
        step_at, scale_at = 2, (1, 3)
    assert acc is not None and ws is not None and step is not None and bias is not None
    which = _pick(rng, ["special", "special", "huge_sums", "step_shape", "column_count", "acc_type", "length"])
    n = (acc.shape[-1] // (2 if case.op == "PostRescale" else 1)) if acc.ndim else 0
    if which == "special" and acc.size:  # inf, NaN, -0 and denormals in the scales, steps and bias
        for v in (ws, step, bias):
            flat = v.reshape(-1)
            if flat.size and np.issubdtype(v.dtype, np.floating):  # (an earlier mutation may have made it ints)
                flat[int(rng.integers(flat.size))] = _pick(rng, [np.inf, -np.inf, np.nan, -0.0, 3e38, 1e-45])
    elif which == "huge_sums":  # past 2^24: the Cast rounds them
        case.inputs[0] = np.full(acc.shape, _pick(rng, [2**31 - 1, -(2**31), 2**24 + 1, -(2**24) - 3]), np.int32)
    elif which == "step_shape":
        case.inputs[step_at] = np.ones(_pick(rng, [(1,), (*acc.shape[:-1],), (*acc.shape[:-1], 2), ()]), np.float32)
    elif which == "column_count":
        j = int(_pick(rng, list(scale_at)))
        case.inputs[j] = np.ones(max(n + int(_pick(rng, [-1, 1])), 0), np.float32)
    elif which == "acc_type":
        case.inputs[0] = acc.astype(_pick(rng, [np.int64, np.float32, np.int16, np.uint32]))
    elif which == "length":  # vector bodies and tails, several parallel tasks
        m = _pick(rng, LONG)
        rows = acc.shape[:-1] if acc.ndim else ()
        sums = rng.integers(-(2**20), 2**20, (*rows, 2 * m if case.op == "PostRescale" else m)).astype(np.int32)
        scales, steps_, bias_ = np.ones(m, np.float32), np.ones((*rows, 1), np.float32), np.zeros(m, np.float32)
        case.inputs = [sums, steps_, scales, bias_] if case.op == "PostRescale" else [sums, scales, steps_, bias_]


GENERIC = [m_attr_drop, m_attr_type, m_attr_value, m_attr_add, m_rank, m_dim, m_huge_empty, m_dtype, m_values,
           m_missing, m_extra, m_constness, m_truncate]  # fmt: skip
SPECIFIC = {
    "PostConv": [m_conv_channels, m_conv_shapes, m_conv_attrs, m_post_codes],
    "IntConv": [m_conv_channels, m_conv_shapes, m_conv_attrs],
    "PostConvRequant": [m_conv_channels, m_conv_shapes, m_conv_attrs, m_post_codes],
    "IntConvRequant": [m_conv_channels, m_conv_shapes, m_conv_attrs],
    "AsqQuantize": [m_asq],
    "AsqQuantizeRows": [m_asq],
    "Requantize": [m_requantize],
    "AddRequant": [m_add_requant],
    "Rescale": [m_rescale],
    "PostRescale": [m_rescale],
    "PostMatMul": [m_post_codes],
}


# ---------------------------------------------------------------------------------------------------
# bases from real exported graphs: every qexport node of a model, with its attributes, its initializers
# and the activations it gets when the model runs (ASQ inputs rounded to multiples of 1/8, see above)

ZOO = [("resnet20", "post", "asq"), ("resnet20", "lsq", "asq"), ("resnet20", "lsq", "lsq")]


def sources_tag() -> str:
    """A digest of the qexport package's sources: a zoo export is made again when they change (an export
    made before Requantize existed has none of its nodes)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "qexport").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:10]


def export_zoo(cache: Path) -> list[Path]:
    """Small real exports (resnet20: POST / LSQ weights with ASQ activations, and LSQ weights and
    activations, 4 bits), made once per version of the qexport sources."""
    paths = []
    tag = sources_tag()
    for arch, weight, act in ZOO:
        path = cache / f"{arch}_{weight}_{act}_w4a4-{tag}.onnx"
        if not path.is_file():
            import torch

            import qexport
            from qexport import zoo

            torch.manual_seed(0)
            cache.mkdir(parents=True, exist_ok=True)
            with contextlib.redirect_stdout(io.StringIO()):
                model = qexport.quantize(zoo.create(arch), weight=weight, act=act, bits=4)
                qexport.calibrate(model, [zoo.example_input(model, 8)])
                part = path.with_suffix(f".{os.getpid()}.part")  # another run may read the cache meanwhile
                qexport.export(model, part)
                os.replace(part, path)
        paths.append(path)
    return paths


def load_bases(paths: list[Path]) -> list[Case]:
    import onnx
    import onnxruntime as ort
    from onnx import AttributeProto, helper, numpy_helper

    from qexport.ops import DOMAIN

    bases = []
    for path in paths:
        model = onnx.load(str(path))
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        nodes = [n for n in model.graph.node if n.domain == DOMAIN and n.op_type in OPS]
        wanted = sorted({name for n in nodes for name in n.input if name and name not in inits})
        graph_outputs = {o.name for o in model.graph.output}
        model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in wanted if n not in graph_outputs)
        so = ort.SessionOptions()
        so.log_severity_level = 4
        session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        feeds = {}
        for i in model.graph.input:
            dims = [d.dim_value if d.dim_value > 0 else 2 for d in i.type.tensor_type.shape.dim]
            feeds[i.name] = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
        values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
        for n in nodes:
            inputs, constant = [], []
            for name in n.input:
                v = inits.get(name, values.get(name))
                if v is not None and v.dtype == np.float32 and name not in inits and n.op_type.startswith("Asq"):
                    v = (np.clip(np.round(v * 8), -512, 512) / 8).astype(np.float32)  # dyadic: exact sums
                inputs.append(v)
                constant.append(name in inits)
            attrs = {}
            for a in n.attribute:
                if a.type == AttributeProto.INT:
                    attrs[a.name] = Attr(int(a.i), "int")
                elif a.type == AttributeProto.INTS:
                    attrs[a.name] = Attr([int(v) for v in a.ints], "ints")
            bases.append(Case(n.op_type, inputs, constant, attrs, [f"from {path.name}:{n.name}"]))
    return bases


def make_case(seed: int, index: int, bases: list[Case] | None = None) -> Case:
    rng = np.random.default_rng([seed, index])
    weights = np.array([3.0 if op in NATIVE_OPS else 1.0 for op in OPS])
    op = OPS[int(rng.choice(len(OPS), p=weights / weights.sum()))]
    if bases and rng.random() < 0.4:
        base = bases[int(rng.integers(len(bases)))]
        case = Case(base.op, [None if v is None else v.copy() for v in base.inputs], list(base.constant),
                    {k: Attr(a.value, a.kind) for k, a in base.attrs.items()}, list(base.mutations))  # fmt: skip
        op = case.op
    else:
        case = base_case(op, rng)
    case.inputs = [None if v is None else np.asarray(v) for v in case.inputs]
    if rng.random() < 0.15:
        case.mutations.append("unmutated")
    else:
        for _ in range(int(rng.choice([1, 1, 1, 2, 3]))):
            pool = GENERIC + SPECIFIC.get(op, []) * 3
            if len(case.inputs) != len(INPUTS[op]) or any(v is None for v in case.inputs):
                pool = GENERIC  # the specific ones read every input
            mutate = _pick(rng, pool)
            # ValueError: an array numpy cannot make; IndexError: a mutation that reads the schema's ranks
            # after an earlier one changed a rank (it does not apply)
            with contextlib.suppress(Skip, ValueError, IndexError):
                mutate(case, rng)
            case.inputs = [None if v is None else np.asarray(v) for v in case.inputs]
    case.concurrent = op in NATIVE_OPS and rng.random() < 0.2
    return case


# ---------------------------------------------------------------------------------------------------
# the schema, restated (qexport/ops/*.py): None when the native kernel must accept the case


def _int_attr(case: Case, name: str, required: bool, default: int | None = None) -> tuple[int | None, str | None]:
    a = case.attrs.get(name)
    if a is None:
        return (None, f"attribute {name} is required") if required else (default, None)
    if a.kind != "int":
        return None, f"attribute {name} must be an int"
    return int(a.value), None


def _ints_attr(case: Case, name: str, default: list[int]) -> tuple[list[int] | None, str | None]:
    a = case.attrs.get(name)
    if a is None:
        return default, None
    if a.kind != "ints":
        return None, f"attribute {name} must be ints"
    return [int(v) for v in a.value], None


def _code_range(case: Case) -> tuple[int | None, int | None, str | None]:
    """The required qmin / qmax attributes, or what is wrong with them."""
    qmin, why = _int_attr(case, "qmin", True)
    if why:
        return None, None, why
    qmax, why = _int_attr(case, "qmax", True)
    return (None, None, why) if why else (qmin, qmax, None)


def _requant_violation(case: Case) -> str | None:
    """The output quantizer of a *Requant op or of Requantize: y_scale a positive finite float32 scalar,
    y_zero_point an int8 / uint8 scalar, qmin <= qmax in its type's range."""
    qmin, qmax, why = _code_range(case)
    if why:
        return why
    at = INPUTS[case.op].index("y_scale")
    ys, zp = case.inputs[at], case.inputs[at + 1]
    assert ys is not None and zp is not None and qmin is not None and qmax is not None
    if ys.dtype != np.float32 or ys.shape != () or not (ys > 0 and np.isfinite(ys)):
        return "y_scale a positive finite float32 scalar"
    if zp.dtype not in (np.int8, np.uint8) or zp.shape != ():
        return "y_zero_point an int8 / uint8 scalar"
    lo, hi = (-128, 127) if zp.dtype == np.int8 else (0, 255)
    if not lo <= qmin <= qmax <= hi:
        return "qmin <= qmax in the codes' range"
    return None


def _rescale_violation(case: Case) -> str | None:
    """Rescale (rescale.cc): 4 inputs; acc int32 [..., N] (rank >= 1); w_scale and bias float32 [N];
    row_step float32 of acc's shape with its last dimension 1.  Any values (inf, NaN: the body's)."""
    if len(case.inputs) != 4 or any(v is None for v in case.inputs):
        return "inputs missing or extra"
    acc, ws, step, bias = case.inputs
    assert acc is not None and ws is not None and step is not None and bias is not None
    if acc.dtype != np.int32 or acc.ndim == 0:
        return "acc int32 [..., N]"
    n = acc.shape[-1]
    if any(v.dtype != np.float32 or v.shape != (n,) for v in (ws, bias)):
        return "w_scale and bias float32 [N]"
    if step.dtype != np.float32 or step.shape != (*acc.shape[:-1], 1):
        return "row_step float32 [..., 1]"
    return None


def _post_rescale_violation(case: Case) -> str | None:
    """PostRescale (post_rescale.cc): 4 inputs; acc int32 [..., 2M]; x_scale float32 [] or acc's shape
    with its last dimension 1; w_scale and bias float32 [M].  Any values."""
    if len(case.inputs) != 4 or any(v is None for v in case.inputs):
        return "inputs missing or extra"
    acc, xs, ws, bias = case.inputs
    assert acc is not None and xs is not None and ws is not None and bias is not None
    if acc.dtype != np.int32 or acc.ndim == 0 or acc.shape[-1] % 2:
        return "acc int32 [..., 2M]"
    m = acc.shape[-1] // 2
    if any(v.dtype != np.float32 or v.shape != (m,) for v in (ws, bias)):
        return "w_scale and bias float32 [M]"
    if xs.dtype != np.float32 or xs.shape not in ((), (*acc.shape[:-1], 1)):
        return "x_scale float32 [] or [..., 1]"
    return None


def _post_matmul_scales_violation(case: Case) -> bool:
    """Whether PostMatMul's x_scale, w_scale or bias break its signature (float32; x_scale [] or
    [..., 1], w_scale and bias [M]), which numpy broadcasting in its body would otherwise let run."""
    x, xs, w, ws, bias = (case.inputs + [None] * 5)[:5]
    if x is None or xs is None or w is None or ws is None or bias is None or w.ndim != 2 or x.ndim == 0:
        return False
    m = w.shape[1]
    return (any(v.dtype != np.float32 for v in (xs, ws, bias)) or ws.shape != (m,) or bias.shape != (m,)
            or xs.shape not in ((), (*x.shape[:-1], 1)))  # fmt: skip


def _requantize_violation(case: Case) -> str | None:
    """Requantize (requantize.cc): relu 0 or 1, required (the body reads it); the output quantizer as the
    *Requant ops'; x_codes int8 / uint8 of any shape; x_scale a positive finite float32 scalar;
    x_zero_point a scalar of x_codes' type."""
    relu, why = _int_attr(case, "relu", True)
    if why or relu not in (0, 1):
        return why or f"relu={relu}"
    if len(case.inputs) != 5 or any(v is None for v in case.inputs):
        return "inputs missing or extra"
    why = _requant_violation(case)
    if why:
        return why
    x, xs, xz = case.inputs[:3]
    assert x is not None and xs is not None and xz is not None
    if x.dtype not in (np.int8, np.uint8):
        return "x_codes int8 / uint8"
    if xs.dtype != np.float32 or xs.shape != () or not (xs > 0 and np.isfinite(xs)):
        return "x_scale a positive finite float32 scalar"
    if xz.dtype != x.dtype or xz.shape != ():
        return "x_zero_point a scalar of x_codes' type"
    return None


def _add_requant_violation(case: Case) -> str | None:
    """AddRequant (add_requant.cc): qmin, qmax required ints, qmin <= qmax (RequantAttrs::read); relu 0
    or 1 when present (the dequantized output's ReLU); 8 inputs;
    a_codes, b_codes int8 / uint8 of shapes that broadcast (numpy's rules); a_scale, b_scale, y_scale
    positive finite float32 scalars; a_zero_point, b_zero_point scalars of their codes' types;
    y_zero_point an int8 / uint8 scalar, qmin and qmax inside its type's range."""
    if len(case.inputs) != 8 or any(v is None for v in case.inputs):
        return "inputs missing or extra"
    why = _requant_violation(case)  # qmin / qmax, y_scale, y_zero_point
    if why:
        return why
    relu, why = _int_attr(case, "relu", False, 0)
    if why or relu not in (0, 1):
        return why or f"relu={relu}"
    for name, at in (("a", 0), ("b", 3)):
        c, scale, zp = case.inputs[at : at + 3]
        assert c is not None and scale is not None and zp is not None
        if c.dtype not in (np.int8, np.uint8):
            return f"{name}_codes int8 / uint8"
        if scale.dtype != np.float32 or scale.shape != () or not (scale > 0 and np.isfinite(scale)):
            return f"{name}_scale a positive finite float32 scalar"
        if zp.dtype != c.dtype or zp.shape != ():
            return f"{name}_zero_point a scalar of {name}_codes' type"
    a, b = case.inputs[0], case.inputs[3]
    assert a is not None and b is not None
    for da, db in zip(a.shape[::-1], b.shape[::-1], strict=False):  # aligned from the last axis
        if da != db and da != 1 and db != 1:
            return "a_codes and b_codes do not broadcast"
    return None


def truncated(case: Case) -> set[int]:
    """The inputs whose initializer build() cuts short (later mutations may have emptied or moved them)."""
    return {i for i in case.truncated if i < len(case.inputs) and case.constant[i] and case.inputs[i] is not None
            and case.inputs[i].size > 1}  # type: ignore[union-attr]  # fmt: skip


def spec_violation(case: Case) -> str | None:
    op = case.op
    if op not in NATIVE_OPS:
        return None
    if truncated(case):
        return "a truncated initializer"
    if op == "Requantize":
        return _requantize_violation(case)
    if op == "AddRequant":
        return _add_requant_violation(case)
    if op == "Rescale":
        return _rescale_violation(case)
    if op == "PostRescale":
        return _post_rescale_violation(case)
    if op in CONV_OPS:
        requant = op.endswith("Requant")
        op = conv_kind(op)
        group, why = _int_attr(case, "group", op == "PostConv" or requant, 1)  # bodies that read group
        if why:
            return why
        if op == "PostConv":
            bits, why = _int_attr(case, "bits", True)
            if why or bits not in (2, 3, 4):
                return why or f"bits={bits}"
        relu, why = _int_attr(case, "relu", op == "IntConv" or requant, 0)
        if why or relu not in (0, 1, 6):
            return why or f"relu={relu}"
        strides, why1 = _ints_attr(case, "strides", [1, 1])
        pads, why2 = _ints_attr(case, "pads", [0] * 4)
        dil, why3 = _ints_attr(case, "dilations", [1, 1])
        if why1 or why2 or why3:
            return why1 or why2 or why3
        assert strides is not None and pads is not None and dil is not None and group is not None
        if len(strides) != 2 or len(pads) != 4 or len(dil) != 2:
            return "strides / pads / dilations lengths"
        if min(strides) < 1 or min(dil) < 1 or min(pads) < 0 or group < 1:
            return "attribute range"
        if len(case.inputs) != (7 if requant else 5) or any(v is None for v in case.inputs):
            return "inputs missing or extra"
        if requant:
            why = _requant_violation(case)
            if why:
                return why
        x, xs, w, ws, b = case.inputs[:5]
        assert x is not None and xs is not None and w is not None and ws is not None and b is not None
        if x.dtype not in (np.int8, np.uint8) or x.ndim != 4:
            return "x_codes int8/uint8 [N, C, H, W]"
        if w.dtype != (UINT4 if op == "PostConv" else np.int8) or w.ndim != 4:
            return "w_codes type / rank"
        if any(t.dtype != np.float32 for t in (xs, ws, b)):
            return "float32 scales and bias"
        n, c, h, wd = x.shape
        m, cg, kh, kw = w.shape
        if xs.shape not in ((), (n, 1, 1, 1)):
            return "x_scale shape"
        if not (np.all(xs > 0) and np.all(np.isfinite(xs))):
            return "x_scale not positive finite"
        if ws.shape != (m,) or b.shape != (m,):
            return "w_scale / bias shape"
        if c != cg * group or m % group:
            return "channels / group"
        if kh < 1 or kw < 1:
            return "empty kernel"
        if h + pads[0] + pads[2] < dil[0] * (kh - 1) + 1 or wd + pads[1] + pads[3] < dil[1] * (kw - 1) + 1:
            return "kernel larger than the padded input"
        if op == "PostConv":
            if m == 0 or c == 0:
                return "PostConv without channels (its body fails)"
            j = w.astype(np.uint8) & 7
            if j.size and int(j.max()) > 2 ** (bits - 1) - 1:  # type: ignore[operator]
                return "POST code outside the bits' range"
        return None
    # AsqQuantize, AsqQuantizeRows
    rows = op == "AsqQuantizeRows"
    qmin, qmax, why = _code_range(case)
    if why:
        return why
    assert qmin is not None and qmax is not None
    if len(case.inputs) != 7 or any(v is None for v in case.inputs):
        return "inputs missing or extra"
    x, step, zp, w1, b1, w2, b2 = case.inputs
    assert x is not None and step is not None and zp is not None
    assert w1 is not None and b1 is not None and w2 is not None and b2 is not None
    if x.dtype != np.float32 or (x.ndim != 4 and not rows) or x.ndim == 0:
        return "x float32 [N, C, H, W] (rows: [..., C])"
    if any(t.dtype != np.float32 for t in (step, w1, b1, w2, b2)):
        return "float32 step and adapter"
    if zp.dtype not in (np.int8, np.uint8) or zp.shape != ():
        return "zero_point a scalar of int8 / uint8"
    shift = int(zp)
    if shift != 0 and not (rows and zp.dtype == np.uint8 and shift == 128 and qmin < 0):
        return "zero_point 0 (rows: or uint8 128 with a signed range)"
    if not (-128 <= qmin < qmax <= 255):
        return "qmin < qmax, an 8-bit range"
    lo, hi = (-128, 127) if zp.dtype == np.int8 else (0, 255)
    if not (lo <= qmin + shift and qmax + shift <= hi):
        return "qmin, qmax plus the zero point in the codes' type"
    if step.shape != () or not (step > 0 and np.isfinite(step)):
        return "step a positive finite scalar"
    c = x.shape[-1 if rows else 1]
    if w1.ndim != 2 or w1.shape[0] != c:
        return "w1 [C, hidden]"
    hidden = w1.shape[1]
    if b1.shape != (hidden,) or w2.shape != (hidden, 1) or b2.shape != (1,):
        return "adapter shapes"
    return None


# ---------------------------------------------------------------------------------------------------
# building and running


def functions(op: str) -> list:
    from qexport import ops
    from qexport.ops import asq_adapter, post_weights, step_quantize

    if op in ops.OP_TYPES:
        return ops.functions_for({op})
    fn = {"PostWeights": post_weights.PostWeights, "StepQuantize": step_quantize.StepQuantize,
          "AsqAdapter": asq_adapter.AsqAdapter}[op]  # fmt: skip
    return [fn.to_function_proto()]


def build(case: Case) -> tuple[Any, dict[str, np.ndarray]]:
    from onnx import AttributeProto, TensorProto, helper, numpy_helper

    from qexport.ops import DOMAIN, VERSION

    nodes, inits, graph_inputs, feeds, names = [], [], [], {}, []
    for i, (v, const) in enumerate(zip(case.inputs, case.constant, strict=True)):
        if v is None:
            names.append("")
            continue
        v = np.asarray(v)
        name = f"in{i}"
        names.append(name)
        if const:
            inits.append(numpy_helper.from_array(v, name))
            if i in truncated(case):
                t = inits[-1]
                if t.raw_data:
                    t.raw_data = t.raw_data[: len(t.raw_data) // 2]
                else:
                    for fld in ("float_data", "int32_data", "int64_data", "double_data"):
                        values = getattr(t, fld)
                        del values[len(values) // 2 :]
        elif v.dtype in (UINT4, INT4):  # not a feed: a Cast that ORT_DISABLE_ALL keeps (not constant)
            raw = v.astype(np.uint8 if v.dtype == UINT4 else np.int8)
            inits.append(numpy_helper.from_array(raw, name + "_raw"))
            to = TensorProto.UINT4 if v.dtype == UINT4 else TensorProto.INT4
            nodes.append(helper.make_node("Cast", [name + "_raw"], [name], to=to))
        else:
            elem = helper.np_dtype_to_tensor_dtype(v.dtype)
            graph_inputs.append(helper.make_tensor_value_info(name, elem, None))
            feeds[name] = v
    kinds = {"int": AttributeProto.INT, "ints": AttributeProto.INTS, "float": AttributeProto.FLOAT,
             "floats": AttributeProto.FLOATS, "string": AttributeProto.STRING}  # fmt: skip
    node = helper.make_node(case.op, names, OUTPUTS[case.op], domain=DOMAIN)
    for name, a in sorted(case.attrs.items()):
        node.attribute.append(helper.make_attribute(name, a.value, attr_type=kinds[a.kind]))
    nodes.append(node)
    outputs = [helper.make_empty_tensor_value_info(o) for o in OUTPUTS[case.op]]
    graph = helper.make_graph(nodes, "fuzz", graph_inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, VERSION)],
                              functions=functions(case.op))  # fmt: skip
    model.ir_version = 10
    return model, feeds


def _session(model_bytes: bytes, native: bool) -> Any:
    import onnxruntime as ort

    from qexport import native as qx_native

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 2
    so.log_severity_level = 4
    if native:
        assert qx_native.register(so, quiet=True), "the native library is not built"
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def _run(model_bytes: bytes, feeds: dict, native: bool) -> tuple[list[np.ndarray] | None, str, Any]:
    try:
        session = _session(model_bytes, native)
        return session.run(None, feeds), "", session
    except Exception as e:
        return None, _first_line(e), None


def same(a: list[np.ndarray], b: list[np.ndarray]) -> str:
    """'' when equal bit for bit, else what differs.  Any NaN equals any NaN, and -0 equals 0: onnxruntime's
    Max (the body's ReLU) returns either zero for max(-0, 0), depending on whether its vector path ran."""
    if len(a) != len(b):
        return f"{len(a)} outputs against {len(b)}"
    for i, (u, v) in enumerate(zip(a, b, strict=True)):
        u, v = np.asarray(u), np.asarray(v)
        if u.dtype != v.dtype or u.shape != v.shape:
            return f"output {i}: {u.dtype}{list(u.shape)} against {v.dtype}{list(v.shape)}"
        if u.dtype.kind == "f":
            nan = np.isnan(u)
            if not np.array_equal(nan, np.isnan(v)):
                return f"output {i}: NaN in other places"
            uu, vv = u[~nan], v[~nan]
            if not np.array_equal(uu, vv):
                k = int(np.argmax(uu != vv))
                return f"output {i}: {(uu != vv).sum()} values differ (first {uu[k]!r} against {vv[k]!r})"
        elif not np.array_equal(u, v):
            return f"output {i}: {(u != v).sum()} codes differ"
    return ""


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in float32 steps (same-sign finite values; inf where the signs differ)."""
    ia, ib = a.astype(np.float32).view(np.int32).astype(np.int64), b.astype(np.float32).view(np.int32).astype(np.int64)
    d = np.abs(ia - ib).astype(np.float64)
    d[(np.signbit(a) != np.signbit(b)) & (a != b)] = np.inf
    return d


def asq_close(n: list[np.ndarray], b: list[np.ndarray]) -> str:
    """'' when two ASQ results differ only as the order of float sums may make them: each sample's or
    row's step within 4 float32 steps, codes within 1 where the steps differ and equal where they agree, y
    within 4 steps where the codes agree.  Allowed only where an adapter weight is a per-run input: the
    kernels add in the order of onnxruntime's Gemm / MatMul over constant weights (what every export
    has); over per-run weights onnxruntime takes other paths (no prepacked B; a GEMV when N = 1)."""
    if len(n) != 3 or len(b) != 3 or any(u.shape != v.shape or u.dtype != v.dtype for u, v in zip(n, b, strict=True)):
        return "outputs of other shapes or types"
    sn, sb = n[2].reshape(len(n[2]), -1)[:, 0], b[2].reshape(len(b[2]), -1)[:, 0]
    if not np.array_equal(np.isnan(sn), np.isnan(sb)):
        return "NaN steps in other samples"
    ok = ~np.isnan(sn)
    d = np.zeros(len(sn))
    d[ok] = _ulps(sn[ok], sb[ok])
    if d.max(initial=0) > 4:
        return f"sample steps {d.max()} float steps apart"
    cn, cb = n[1].astype(np.int64), b[1].astype(np.int64)
    diff = np.abs(cn - cb).reshape(len(cn), -1)
    if diff.max(initial=0) > 1 or diff[d == 0].max(initial=0) > 0:
        return "codes differ beyond the steps' difference"
    yn, yb = n[0], b[0]
    same_code = (cn == cb) & ~np.isnan(yn) & ~np.isnan(yb)
    if not np.array_equal(np.isnan(yn)[cn == cb], np.isnan(yb)[cn == cb]):
        return "NaN y in other places"
    if _ulps(yn[same_code], yb[same_code]).max(initial=0) > 4:
        return "y further apart than the steps"
    return ""


def concurrent_check(session: Any, feeds: dict, expected: list[np.ndarray], threads: int = 4) -> str:
    start = threading.Barrier(threads)
    problems: list[str] = []

    def work() -> None:
        start.wait()
        for _ in range(3):
            try:
                why = same(session.run(None, feeds), expected)
            except Exception as e:
                why = _first_line(e)
            if why:
                problems.append(why)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return problems[0] if problems else ""


def classify(case: Case, native_out: list | None, native_err: str, body_out: list | None,
             body_err: str) -> tuple[str, str]:  # fmt: skip
    """(outcome, why) by the oracle in the module docstring."""
    if case.op not in NATIVE_OPS:  # registering the library must change nothing
        if native_out is None and body_out is not None and "PostRescale input" in native_err and (
            _post_matmul_scales_violation(case)
        ):  # PostMatMul's body calls the native PostRescale, which refuses what PostMatMul's signature does
            return "error", ""
        if (native_out is None) != (body_out is None):
            return "disagree", f"registered: {native_err or 'ran'}; plain: {body_err or 'ran'}"
        if native_out is not None and body_out is not None and (why := same(native_out, body_out)):
            return "disagree", why
        return ("ran" if native_out is not None else "error"), ""
    spec = spec_violation(case)
    if spec is not None and case.op == "AsqQuantize" and native_out is not None and _typed_inputs_not_float(case):
        # no kernel for these types (register.cc): onnxruntime ran the function body, as without the library
        if body_out is not None and not same(native_out, body_out):
            return "body", ""
        return "disagree", f"types outside the kernel's ran differently: {body_err or 'outputs differ'}"
    if spec is not None:
        if native_out is not None:
            return "disagree", f"native runs what the schema rejects ({spec})"
        return "error", ""
    if native_out is None and LIMIT in native_err:
        return "limit", native_err
    if native_out is not None and body_out is not None:
        why = same(native_out, body_out)
        per_run_adapter = case.op in ("AsqQuantize", "AsqQuantizeRows") and not all(case.constant[3:7])
        if why and per_run_adapter and not asq_close(native_out, body_out):
            return "close", why
        return ("disagree", why) if why else ("ran", "")
    if native_out is None and body_out is None:
        return "error", f"valid by the restated schema, both reject: {native_err}"
    if native_out is None:
        return "disagree", f"native rejects a valid case the body runs: {native_err}"
    return "disagree", f"native runs a case the body rejects: {body_err}"


def _typed_inputs_not_float(case: Case) -> bool:
    """Whether an AsqQuantize input the kernel declares float32 (all but zero_point) is of another type."""
    return any(v is not None and i != 2 and v.dtype != np.float32 for i, v in enumerate(case.inputs[:7]))


def conv_outputs(case: Case) -> int:
    """Elements of a valid case's largest output (0 for other cases): a conv's y, AsqQuantize's y or its
    per-sample steps (N of them, also when x is empty), AddRequant's y (the broadcast shape)."""
    if case.op == "AsqQuantize" and spec_violation(case) is None:
        x = case.inputs[0]
        assert x is not None
        return max(int(x.size), int(x.shape[0]))
    if case.op == "AddRequant" and spec_violation(case) is None:
        a, b = case.inputs[0], case.inputs[3]
        assert a is not None and b is not None
        rank = max(a.ndim, b.ndim)
        da, db = (1,) * (rank - a.ndim) + a.shape, (1,) * (rank - b.ndim) + b.shape
        return int(np.prod([y if x == 1 else x for x, y in zip(da, db, strict=True)], dtype=object))
    if case.op not in CONV_OPS or spec_violation(case) is not None:
        return 0
    x, w = case.inputs[0], case.inputs[2]
    assert x is not None and w is not None
    strides = case.attrs["strides"].value if "strides" in case.attrs else [1, 1]
    pads = case.attrs["pads"].value if "pads" in case.attrs else [0] * 4
    dil = case.attrs["dilations"].value if "dilations" in case.attrs else [1, 1]
    ho = (x.shape[2] + pads[0] + pads[2] - dil[0] * (w.shape[2] - 1) - 1) // strides[0] + 1
    wo = (x.shape[3] + pads[1] + pads[3] - dil[1] * (w.shape[3] - 1) - 1) // strides[1] + 1
    return int(x.shape[0]) * int(w.shape[0]) * ho * wo


MAX_OUTPUTS = 2**24  # a valid case with a bigger output is not run (it is work, not a test): "skipped"


UNDER_ASAN = "asan" in os.environ.get("LD_PRELOAD", "")


def run_case(case: Case) -> dict[str, Any]:
    body_only = case.op not in NATIVE_OPS or (case.op == "AsqQuantize" and _typed_inputs_not_float(case))
    if UNDER_ASAN and body_only and any(v is not None and max(v.shape, default=0) >= 2**31 for v in case.inputs):
        # onnxruntime's own allocation of a huge output aborts under ASan (its operator new cannot fail
        # softly there): not a finding about the kernels, which these ops do not have
        return {"outcome": "skipped", "why": "huge dimension under ASan", "native": "", "body": ""}
    outputs = conv_outputs(case)
    if MAX_OUTPUTS < outputs < 2**31:
        return {"outcome": "skipped", "why": f"valid, {outputs} outputs", "native": "", "body": ""}
    model, feeds = build(case)
    data = model.SerializeToString()
    native_out, native_err, session = _run(data, feeds, True)
    if outputs >= 2**31:  # beyond the kernels' limit: the kernel must say so (the body is not run)
        ok = native_out is None and LIMIT in native_err
        why = "" if ok else f"{outputs} outputs: {native_err or 'ran'}"
        return {"outcome": "limit" if ok else "disagree", "why": why, "native": native_err or "ran", "body": "not run"}
    if case.op in NATIVE_OPS and spec_violation(case) is not None and not (
        case.op == "AsqQuantize" and _typed_inputs_not_float(case)
    ):
        # the oracle needs only the kernel's error; and onnxruntime's own Conv hangs on a kernel with an
        # empty dimension (a body of a malformed node is not ours to run)
        body_out, body_err = None, "not run (the schema rejects the case)"
    else:
        body_out, body_err, _ = _run(data, feeds, False)
    outcome, why = classify(case, native_out, native_err, body_out, body_err)
    if outcome == "ran" and case.concurrent and session is not None and native_out is not None:
        if problem := concurrent_check(session, feeds, native_out):
            outcome, why = "disagree", f"concurrent runs differ: {problem}"
    return {"outcome": outcome, "why": why, "native": native_err or "ran", "body": body_err or "ran"}


# ---------------------------------------------------------------------------------------------------
# worker and parent


WORKER_MEMORY = 4 << 30  # bytes of address space: a malformed node asking for more gets an allocation error


def worker(seed: int, exported: list[Path]) -> None:
    """Read case indices on stdin; announce each ('start i') before running it, then its result."""
    if not UNDER_ASAN:  # ASan reserves terabytes of address space: there ASAN_OPTIONS bound allocations
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))
    out = sys.stdout
    with contextlib.redirect_stdout(io.StringIO()):
        bases = load_bases(exported)
    for line in sys.stdin:
        index = int(line)
        out.write(f"start {index}\n")
        out.flush()
        try:
            case = make_case(seed, index, bases)
            with contextlib.redirect_stdout(io.StringIO()):
                result = run_case(case)
            result.update(op=case.op, mutations=case.mutations)
        except Exception as e:
            result = {"outcome": "fuzzer-bug", "why": f"{type(e).__name__}: {e}", "op": "?", "mutations": []}
        out.write(f"done {index} {json.dumps(result)}\n")
        out.flush()


class Worker:
    def __init__(self, seed: int, log: Path, exported: list[Path]) -> None:
        self.log = open(log, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--seed", str(seed)]
        command += [a for p in exported for a in ("--exported", str(p))]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env)
        self.buffer = b""

    def line(self, deadline: float) -> str | None:
        """The next line, or None at EOF (died) or past the deadline (check ``alive``)."""
        assert self.proc.stdout is not None
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def send(self, index: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{index}\n".encode())
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


def save_case(case: Case, out: Path, seed: int, index: int, result: dict) -> Path:
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    model, feeds = build(case)
    stem = out / f"{case.op}-s{seed}-{index}"
    onnx.save(model, str(stem) + ".onnx")
    np.savez(str(stem) + ".npz", **feeds)
    (Path(str(stem) + ".json")).write_text(json.dumps({**result, "seed": seed, "index": index}, indent=1) + "\n")
    return stem


def fuzz(cases: int, seed: int, timeout: float, out: Path, exported: list[Path] | None = None,
         quiet: bool = False) -> dict[str, Counter]:  # fmt: skip
    exported = exported or []
    bases = load_bases(exported)
    if not UNDER_ASAN:  # regenerating a case must not exhaust the machine
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))
    log = out / f"worker-s{seed}.log"
    out.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"")
    table: dict[str, Counter] = defaultdict(Counter)
    notes: list[str] = []
    w = Worker(seed, log, exported)
    index = 0
    while index < cases:
        w.send(index)
        started = w.line(time.monotonic() + 120)  # start-up: imports
        result: dict[str, Any] | None = None
        if started == f"start {index}":
            line = w.line(time.monotonic() + timeout)
            if line and line.startswith(f"done {index} "):
                result = json.loads(line.split(" ", 2)[2])
        if result is not None and result["outcome"] == "fuzzer-bug":
            w.stop()
            raise SystemExit(f"tools/fuzz.py: a bug in the fuzzer at case {index} (seed {seed}): {result['why']}")
        if result is None:  # died or hung: the announced case is the culprit
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(timeout=1.0)  # a worker that died has closed its output: let it be reaped
            dead = w.proc.poll() is not None
            outcome = "crash" if dead else "hang"
            w.stop()
            case = make_case(seed, index, bases)
            tail = log.read_bytes()[-2000:].decode(errors="replace")
            result = {"outcome": outcome, "why": f"exit {w.proc.returncode}" if dead else f"no answer in {timeout} s",
                      "op": case.op, "mutations": case.mutations, "log_tail": tail}  # fmt: skip
            w = Worker(seed, log, exported)
        table[result["op"]][result["outcome"]] += 1
        if result["outcome"] in ("crash", "hang", "disagree"):
            stem = save_case(make_case(seed, index, bases), out, seed, index, result)
            notes.append(f"case {index} {result['op']} {result['outcome']}: {result['why']} "
                         f"[{'; '.join(result['mutations'])}] -> {stem}.onnx")  # fmt: skip
        elif result["outcome"] == "error" and result.get("why"):
            notes.append(f"case {index} {result['op']} (note) {result['why']} [{'; '.join(result['mutations'])}]")
        index += 1
        if not quiet and index % 500 == 0:
            print(f"... {index} cases", file=sys.stderr, flush=True)
    w.stop()
    if not quiet:
        for n in notes:
            print(n)
    return table


def print_table(table: dict[str, Counter], seed: int, cases: int, seconds: float) -> None:
    print(f"\nqexport op fuzz: {cases} cases, seed {seed}, {seconds:.0f} s")
    print(f"| op | cases | {' | '.join(OUTCOMES)} |")
    print("|---|---:|" + "---:|" * len(OUTCOMES))
    total: Counter = Counter()
    for op in OPS:
        row = table.get(op, Counter())
        total.update(row)
        print(f"| {op}{'' if op in NATIVE_OPS else ' (body only)'} | {sum(row.values())} | "
              + " | ".join(str(row[o]) for o in OUTCOMES) + " |")  # fmt: skip
    print(f"| all | {sum(total.values())} | " + " | ".join(str(total[o]) for o in OUTCOMES) + " |")


def replay(seed: int, index: int, exported: list[Path]) -> None:
    case = make_case(seed, index, load_bases(exported))
    print(f"case {index} (seed {seed}): {case.op}, mutations: {case.mutations}")
    for i, v in enumerate(case.inputs):
        print(f"  input {i}: " + ("left out" if v is None else f"{v.dtype}{list(v.shape)} "
                                  f"{'constant' if case.constant[i] else 'per run'}"))  # fmt: skip
    print(f"  attrs: { {k: (a.value, a.kind) for k, a in case.attrs.items()} }")
    print(f"  schema: {spec_violation(case) or 'valid'}")
    print(json.dumps(run_case(case), indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a case may take before it is a hang")
    p.add_argument("--out", type=Path, default=ROOT / ".cache" / "fuzz" / "failures",
                   help="where failing cases are saved")
    p.add_argument("--replay", type=int, default=None, metavar="INDEX", help="run one case here and show it")
    p.add_argument("--exported", type=Path, action="append", default=[], metavar="ONNX",
                   help="also mutate the qexport nodes of this exported model (repeatable)")
    p.add_argument("--zoo", action="store_true",
                   help=f"also mutate the nodes of small real exports ({', '.join('/'.join(z) for z in ZOO)}), "
                        "made once per version of the qexport sources into .cache/fuzz/")  # fmt: skip
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.seed, args.exported)
        return 0
    exported = list(args.exported) + (export_zoo(ROOT / ".cache" / "fuzz") if args.zoo else [])
    if args.replay is not None:
        replay(args.seed, args.replay, exported)
        return 0
    from qexport import native

    if not native.available():
        print("tools/fuzz.py: the native library is not built (pip install -e .)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    table = fuzz(args.cases, args.seed, args.timeout, args.out, exported)
    print_table(table, args.seed, args.cases, time.monotonic() - t0)
    bad = sum(row[o] for row in table.values() for o in ("crash", "hang", "disagree"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
