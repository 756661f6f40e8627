"""The parity checker: does the ONNX model compute what the fake-quant PyTorch model computes?

For every quantized tensor the integer codes of both are compared with TEACHER FORCING: each
PyTorch quantizer receives the tensors the runtime itself produced upstream, so a rounding tie that
flips one code early cannot cascade into every later layer (free-running codes of a low-bit network
diverge that way however exact both sides are).  Final outputs: top-1 agreement teacher-forced and
free-running, and the largest absolute difference free-running.  Contract 2 (DESIGN.md): a model
passes when no code differs by more than one step, at least 99.9% of the codes of every tensor are
identical (or at most one differs, on tensors too small for 0.1% to allow one) and top-1 agreement
is at least 99.9%, teacher-forced.  Free-running top-1 must reach 90%:
a one-step difference at a tie, which the contract allows, legitimately flips samples whose two best
logits are that close (seen on random-weight and 3-bit models; lowest 94.5%: a random 8-bit ASQ
MobileNetV2 through the native IntConv, whose exact int32 sums sit further from PyTorch's float32 conv
than the float function body does, every tensor >= 99.999% identical and 100% teacher-forced), while a
real error disagrees on most samples.  Each run is one runtime configuration (onnxruntime optimisation
level x batch, with or without the native kernels, or onnx's ReferenceEvaluator).

Inputs and outputs: the model may take several inputs (float32 or int64, each with the batch in
dimension 0), given as a tuple in ``forward()``'s order or as a dict keyed by the ONNX input names,
and may return several tensors (any nesting: compared in ``torch.utils._pytree.tree_leaves`` order
with the ONNX graph outputs).  Every output's values, teacher-forced, must lie within
``MAX_FORCED_REL`` (0.1%) of its scale (max - min of the PyTorch output over all samples, or its
largest magnitude where that is larger, as for one sample of a one-value output): with the codes
forced equal, only float accumulation order and float ops after the last quantizer remain (seen:
at most 2e-5%, on the zoo at 2-8 bits and small models; a last-layer weight scale 1% off gives
0.4-0.7%, which top-1 alone never sees: scaling logits moves no argmax).  Then by kind:
- classifier-like (2-D ``[batch, classes]``, ``classes > 1``, float): top-1 agreement as above;
- dense (anything else: segmentation maps, box regressions, embeddings, token logits): free-running
  the mean difference must stay within ``DENSE_MAX_FREE_MEAN`` (1%) of the scale: the one-step ties
  contract 2 allows move a dense output locally, while a real error moves most of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from .checkpoint import load
from .errors import QexportError
from .native import available as native_available
from .native import register as register_native
from .ops import uses_qexport_ops
from .progress import Progress
from .quant.base import Quantizer

MIN_IDENTICAL = 0.999
# ... or at most this many codes differ: on a tensor of fewer than 1,000 codes (a classifier input on
# a few samples) one code at a rounding tie is already more than 0.1%
MAX_TIE_CODES = 1
MAX_STEP = 1
MIN_TOP1 = 0.999  # teacher-forced
# free-running: a 1-step code difference that contract 2 allows (at a rounding tie) moves everything
# downstream, and flips the top-1 of samples whose two best logits are that close; so a looser bound,
# which still catches any real error (a wrong layer disagrees on most samples); random-weight
# low-bit networks amplify such flips most: 97.3% was the lowest seen in the test matrix
MIN_FREE_TOP1 = 0.90
# ... or at most this many samples differ (on a few samples one flip is already more than 10%)
MAX_FREE_FLIPS = 1
# relative to an output's scale over the samples (see the module docstring): teacher-forced largest
# difference (every output), free-running mean difference (dense outputs)
MAX_FORCED_REL = 1e-3
DENSE_MAX_FREE_MEAN = 1e-2
LEVELS = {
    "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "enable_all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass
class TensorReport:
    path: str
    bits: int
    codes: str
    identical: float
    differing: int  # codes that differ (by at most max_step)
    max_step: int
    low_share: float  # share of codes at the bottom of the range
    high_share: float  # ... at the top
    entropy_bits: float  # of the code histogram; near 0 means a collapsed tensor

    @property
    def passed(self) -> bool:
        return (self.identical >= MIN_IDENTICAL or self.differing <= MAX_TIE_CODES) and self.max_step <= MAX_STEP


@dataclass
class OutputReport:
    """One graph output against the model's output at the same place in its flattened outputs."""

    name: str
    kind: str  # "top-1" (classifier-like: [batch, classes]) or "dense"
    samples: int
    max_abs_diff: float  # free-running
    mean_abs_diff: float  # free-running
    forced_max_abs_diff: float  # teacher-forced
    scale: float  # max - min of the PyTorch output over the samples, or its largest magnitude if larger
    top1_agreement: float | None = None  # classifier-like only: teacher-forced ...
    free_top1_agreement: float | None = None  # ... and free-running

    @property
    def forced_rel(self) -> float:
        """Teacher-forced largest difference as a share of the output's scale."""
        return self.forced_max_abs_diff / max(self.scale, 1e-12)

    @property
    def free_mean_rel(self) -> float:
        """Free-running mean difference as a share of the output's scale."""
        return self.mean_abs_diff / max(self.scale, 1e-12)

    @property
    def passed(self) -> bool:
        if self.forced_rel > MAX_FORCED_REL:
            return False
        if self.kind == "top-1":
            assert self.top1_agreement is not None and self.free_top1_agreement is not None
            flips = round((1.0 - self.free_top1_agreement) * self.samples)
            free_ok = self.free_top1_agreement >= MIN_FREE_TOP1 or flips <= MAX_FREE_FLIPS
            return self.top1_agreement >= MIN_TOP1 and free_ok
        return self.free_mean_rel <= DENSE_MAX_FREE_MEAN

    def summary(self) -> str:
        forced = (
            f"max |diff| {self.forced_max_abs_diff:.3g} forced ({100 * self.forced_rel:.3f}% of scale "
            f"{self.scale:.3g}, limit {100 * MAX_FORCED_REL:g}%)"
        )
        if self.kind == "top-1":
            assert self.top1_agreement is not None and self.free_top1_agreement is not None
            return (
                f"top-1 agreement {100 * self.top1_agreement:.2f}% forced, {100 * self.free_top1_agreement:.2f}% "
                f"free-running; {forced}, {self.max_abs_diff:.3g} free-running"
            )
        return (
            f"dense: {forced}; free-running max {self.max_abs_diff:.3g}, mean {self.mean_abs_diff:.3g} "
            f"({100 * self.free_mean_rel:.3f}%, limit {100 * DENSE_MAX_FREE_MEAN:g}%)"
        )


@dataclass
class RunReport:
    name: str
    samples: int
    top1_agreement: float  # teacher-forced: PyTorch's head fed the runtime's own upstream codes
    free_top1_agreement: float  # free-running: each side on its own from the input
    max_abs_diff: float
    tensors: list[TensorReport] = field(default_factory=list)
    # every graph output (the top-1 figures above are the lowest over the classifier-like ones, 1.0
    # when there is none; max_abs_diff the largest over all)
    outputs: list[OutputReport] = field(default_factory=list)

    @property
    def free_flips(self) -> int:
        """Samples whose free-running top-1 differs."""
        return round((1.0 - self.free_top1_agreement) * self.samples)

    @property
    def first_divergent(self) -> str | None:
        return next((t.path for t in self.tensors if t.identical < 1.0), None)

    @property
    def passed(self) -> bool:
        return (
            self.top1_agreement >= MIN_TOP1
            and (self.free_top1_agreement >= MIN_FREE_TOP1 or self.free_flips <= MAX_FREE_FLIPS)
            and all(t.passed for t in self.tensors)
            and all(o.passed for o in self.outputs)
        )


@dataclass
class CheckReport:
    onnx_path: str
    samples: int
    runs: list[RunReport]
    not_run: list[str] = field(default_factory=list)  # runs that could not run, and why

    @property
    def passed(self) -> bool:
        return bool(self.runs) and all(r.passed for r in self.runs)

    def worst(self) -> dict[str, float]:
        """Over all runs and tensors: the smallest identical-code fraction, the largest step difference
        and the lowest top-1 agreement (the figures contract 2 judges)."""
        tensors = [t for r in self.runs for t in r.tensors]
        return {
            "identical": min((t.identical for t in tensors), default=1.0),
            "max_step": max((t.max_step for t in tensors), default=0),
            "top1_agreement": min((r.top1_agreement for r in self.runs), default=0.0),
            "free_top1_agreement": min((r.free_top1_agreement for r in self.runs), default=0.0),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "onnx": self.onnx_path, "samples": self.samples, "passed": self.passed, "not_run": self.not_run,
            "runs": [
                {**asdict(r), "passed": r.passed, "first_divergent": r.first_divergent,
                 "tensors": [{**asdict(t), "passed": t.passed} for t in r.tensors],
                 "outputs": [{**asdict(o), "passed": o.passed} for o in r.outputs]}
                for r in self.runs
            ],
        }  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        from .summary import format_table

        lines = []
        for r in self.runs:
            verdict = "PASS" if r.passed else "FAIL"
            if len(r.outputs) <= 1 and all(o.kind == "top-1" and o.passed for o in r.outputs):
                lines.append(
                    f"{r.name} ({r.samples} samples): {verdict}  top-1 agreement {100 * r.top1_agreement:.2f}% forced,"
                    f" {100 * r.free_top1_agreement:.2f}% free-running  max |diff| {r.max_abs_diff:.3g}"
                    f"  first divergent tensor: {r.first_divergent or 'none'}"
                )
                continue
            lines.append(
                f"{r.name} ({r.samples} samples): {verdict}  first divergent tensor: {r.first_divergent or 'none'}"
            )
            lines += [f"  output {o.name}: {'ok' if o.passed else 'FAIL'}  {o.summary()}" for o in r.outputs]
        lines += [f"not run: {reason}" for reason in self.not_run]
        worst: dict[str, TensorReport] = {}
        for r in self.runs:
            for t in r.tensors:
                if t.path not in worst or t.identical < worst[t.path].identical:
                    worst[t.path] = t
        rows = [
            [t.path, str(t.bits), t.codes, f"{100 * t.identical:.3f}", str(t.max_step), f"{100 * t.low_share:.1f}",
             f"{100 * t.high_share:.1f}", f"{t.entropy_bits:.2f}", "ok" if t.passed else "FAIL"]
            for t in worst.values()
        ]  # fmt: skip
        header = ["tensor (worst run)", "bits", "codes", "identical %", "max step", "at min %", "at max %",
                  "entropy", ""]  # fmt: skip
        verdict = "PASS" if self.passed else "FAIL"
        return "\n".join([*lines, format_table(rows, header), f"parity: {verdict} on {self.samples} samples"])


def _code_outputs(proto: onnx.ModelProto) -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
    """(quantizer path -> code tensor, ASQ quantizer path -> per-sample step tensor, quantizer path ->
    zero point its stored codes carry) from the metadata."""
    meta = {p.key: p.value for p in proto.metadata_props}
    if "codes" not in meta:
        raise QexportError("not written by qexport (no code-tensor map in its metadata): export it with qexport")
    return json.loads(meta["codes"]), json.loads(meta.get("steps", "{}")), json.loads(meta.get("code_offsets", "{}"))


def _session(proto: bytes, level: str, native: bool) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = LEVELS[level]
    so.log_severity_level = 3
    if native:
        register_native(so)
    return ort.InferenceSession(proto, so, providers=["CPUExecutionProvider"])


# one batch's code comparison of a quantizer: identical codes, codes, largest step, histogram of the runtime's codes
_Tally = tuple[int, int, int, np.ndarray]


class _Accumulator:
    """Running code comparison of one quantizer over batches."""

    def __init__(self, q: Quantizer) -> None:
        r = q.code_range
        self.qmin, self.qmax, self.bits = r.qmin, r.qmax, r.bits
        self.same = self.total = self.max_step = 0
        self.hist = np.zeros(r.qmax - r.qmin + 1, np.int64)

    def compare(self, ours: np.ndarray, theirs: np.ndarray) -> _Tally:
        """What one batch of codes adds (see ``merge``)."""
        diff = np.abs(ours - theirs)
        hist = np.bincount((theirs - self.qmin).clip(0, len(self.hist) - 1).ravel(), minlength=len(self.hist))
        return int((diff == 0).sum()), diff.size, int(diff.max()) if diff.size else 0, hist

    def merge(self, tally: _Tally) -> None:
        same, total, max_step, hist = tally
        self.same += same
        self.total += total
        self.max_step = max(self.max_step, max_step)
        self.hist += hist

    def add(self, ours: np.ndarray, theirs: np.ndarray) -> None:
        self.merge(self.compare(ours, theirs))

    def report(self, path: str) -> TensorReport:
        n = max(int(self.hist.sum()), 1)
        p = self.hist[self.hist > 0] / n
        return TensorReport(
            path, self.bits, f"[{self.qmin}, {self.qmax}]", self.same / max(self.total, 1), self.total - self.same,
            self.max_step,
            float(self.hist[0] / n), float(self.hist[-1] / n), float(-(p * np.log2(p)).sum()),
        )  # fmt: skip


Feed = dict[str, np.ndarray]
# runs the graph on a feed (an array stands for the feed of a one-input model), every output in order
Infer = Callable[[Feed | np.ndarray], list[np.ndarray]]


def _as_feed(x: Feed | np.ndarray, first: str) -> Feed:
    return {first: x} if isinstance(x, np.ndarray) else x


def _ort_infer(proto: bytes, level: str, native: bool = False) -> Infer:
    sess = _session(proto, level, native)
    first = sess.get_inputs()[0].name
    return lambda x: sess.run(None, _as_feed(x, first))


def _reference_infer(proto: onnx.ModelProto) -> Infer:
    """onnx's pure-numpy ReferenceEvaluator (runs the qexport function bodies, like any runtime)."""
    from onnx.reference import ReferenceEvaluator

    ref = ReferenceEvaluator(proto)
    first = ref.input_names[0]
    return lambda x: ref.run(None, _as_feed(x, first))


CHUNK = 64  # samples per teacher-forced PyTorch pass (the runtime still runs at its own batch size)
Inputs = dict[str, torch.Tensor]  # ONNX input name -> tensor, in the graph's (= forward()'s) order


def _outputs(model: nn.Module, xs: Inputs) -> list[torch.Tensor]:
    """The model's flattened outputs (tree_leaves of what forward returns: tuples, dicts, ModelOutputs)."""
    return [leaf for leaf in tree_leaves(model(*xs.values())) if isinstance(leaf, torch.Tensor)]


def _slice(xs: Inputs, start: int, stop: int) -> Inputs:
    return {name: t[start:stop] for name, t in xs.items()}


def _batched(t: torch.Tensor | np.ndarray, n: int) -> bool:
    """Whether ``t`` has the batch of ``n`` samples in dimension 0 (a tensor computed from constants
    only has none: it is the same for every batch)."""
    return t.ndim > 0 and t.shape[0] == n


def _free_running(model: nn.Module, x: torch.Tensor | Inputs) -> list[np.ndarray]:
    """The fake-quant model's outputs (they do not depend on the runtime configuration), one array per
    flattened output."""
    xs = x if isinstance(x, dict) else {"input": x}
    n = len(next(iter(xs.values())))
    chunks: list[list[np.ndarray]] = []
    with torch.no_grad():
        for i in range(0, n, CHUNK):
            part = _slice(xs, i, i + CHUNK)
            chunks.append([leaf.numpy() for leaf in _outputs(model, part)])
    return [
        np.concatenate([c[k] for c in chunks]) if _batched(chunks[0][k], min(CHUNK, n)) else chunks[0][k]
        for k in range(len(chunks[0]))
    ]


def _classifier_like(out: np.ndarray) -> bool:
    return out.ndim == 2 and out.shape[-1] > 1 and np.issubdtype(out.dtype, np.floating)


class _OutputAccumulator:
    """Running comparison of one graph output over batches."""

    def __init__(self, name: str, reference: np.ndarray) -> None:
        self.name = name
        self.top1 = _classifier_like(reference)
        ref = reference.astype(np.float64)
        self.scale = float(max(ref.max() - ref.min(), np.abs(ref).max())) if ref.size else 0.0
        self.samples = self.agree = self.forced_agree = self.count = 0
        self.max_diff = self.forced_max_diff = self.sum_diff = 0.0

    def add(self, ref: np.ndarray, out: np.ndarray, forced: np.ndarray, instrumented: np.ndarray, n: int) -> None:
        """``ref`` free-running PyTorch vs ``out`` the shipped graph; ``forced`` teacher-forced PyTorch
        vs ``instrumented`` the graph that gave the codes; ``n`` samples."""
        for a, b in ((ref, out), (forced, instrumented)):
            if a.shape != b.shape:
                raise QexportError(
                    f"graph output '{self.name}' has shape {list(b.shape)} where the model's output at its place has "
                    f"{list(a.shape)}: the ONNX file's outputs are not the model's (export it again)"
                )
        diff = np.abs(ref.astype(np.float64) - out.astype(np.float64))
        self.samples += n
        self.max_diff = max(self.max_diff, float(diff.max()) if diff.size else 0.0)
        self.sum_diff += float(diff.sum())
        self.count += diff.size
        forced_diff = np.abs(forced.astype(np.float64) - instrumented.astype(np.float64))
        self.forced_max_diff = max(self.forced_max_diff, float(forced_diff.max()) if forced_diff.size else 0.0)
        if self.top1:
            self.agree += int((ref.argmax(-1) == out.argmax(-1)).sum())
            self.forced_agree += int((forced.argmax(-1) == instrumented.argmax(-1)).sum())

    def report(self) -> OutputReport:
        samples = max(self.samples, 1)
        return OutputReport(
            self.name, "top-1" if self.top1 else "dense", self.samples, self.max_diff,
            self.sum_diff / max(self.count, 1), self.forced_max_diff, self.scale,
            self.forced_agree / samples if self.top1 else None, self.agree / samples if self.top1 else None,
        )  # fmt: skip


def _spans(n: int, batch: int, single_first: bool) -> list[tuple[int, int]]:
    """(start, stop) of the runtime's batches over ``n`` samples: ``batch`` at a time, or, with
    ``single_first``, the first sample alone and then ``batch`` at a time."""
    starts = [0, *range(1, n, batch)] if single_first else list(range(0, n, batch))
    return list(zip(starts, [*starts[1:], n], strict=True))


# Teacher-forced PyTorch passes already made in this check, by chunk, batch layout and digest of the
# runtime's code and step tensors: (the model's outputs, each quantizer's code comparison).  The
# pass reads nothing else of the run, so a run whose runtime gave the same codes as an earlier one
# (the levels and the native kernels usually agree code for code) reuses it instead of running the
# model again.  Outputs are kept up to MEMO_BYTES in all.
_Memo = dict[tuple[int, tuple[int, ...], bytes], tuple[list[np.ndarray], list[tuple[str, _Tally]]]]
MEMO_BYTES = 256 << 20


def _digest(parts: list[dict[str, np.ndarray]], names: Sequence[str]) -> bytes:
    h = hashlib.blake2b(digest_size=32)
    for part in parts:
        for name in names:
            a = np.ascontiguousarray(part[name])
            h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(memoryview(a).cast("B"))
    return h.digest()


def _run(model: nn.Module, names: list[str], infer: Infer, plain: Infer | None, codes: dict[str, str],
         steps: dict[str, str], offsets: dict[str, int], x: torch.Tensor | Inputs,
         free: np.ndarray | list[np.ndarray], name: str, batch: int, bar: Progress, *, single_first: bool = False,
         memo: _Memo | None = None) -> RunReport:  # fmt: skip
    """``infer`` runs the graph with every code tensor as an extra output (teacher forcing needs them);
    ``plain`` the graph as shipped, for the free-running outputs: onnxruntime does not fuse a node
    whose output is a graph output, so the instrumented graph can round differently (a fused
    QLinearAdd requantizes in its own arithmetic).  None: ``infer``'s output stands for both.
    ``x``: the inputs by ONNX name (a tensor: a one-input model's); ``free``: the free-running
    outputs of the model on all of ``x`` (from ``_free_running``), the graph's first outputs.
    The runtime runs ``batch`` samples at a time; ``single_first``: the first sample alone, then
    ``batch`` at a time.  ``memo``: teacher-forced passes to reuse and add to (see ``_Memo``)."""
    xs = x if isinstance(x, dict) else {"input": x}
    frees = free if isinstance(free, list) else [free]
    total = len(next(iter(xs.values())))
    outs = [_OutputAccumulator(n, f) for n, f in zip(names, frees, strict=False)]
    accs = {path: _Accumulator(model.get_submodule(path)) for path in codes}
    forced_names = list(dict.fromkeys([*codes.values(), *steps.values()]))
    for start in range(0, total, CHUNK):
        xc = _slice(xs, start, start + CHUNK)
        n = len(next(iter(xc.values())))
        parts, shipped = [], []
        spans = _spans(n, batch, single_first and start == 0)
        for i, stop in spans:
            xb = {k: t.numpy() for k, t in _slice(xc, i, stop).items()}
            parts.append(dict(zip(names, infer(xb), strict=True)))
            if plain is not None:
                shipped.append(plain(xb)[: len(frees)])
            bar.update(len(next(iter(xb.values()))))

        def gather(name: str, batched: bool, parts: list = parts) -> np.ndarray:
            # a tensor computed from constants only (no batch dimension) is the same in every part
            return np.concatenate([p[name] for p in parts]) if batched else parts[0][name]

        def ref_part(k: int, start: int = start, n: int = n) -> np.ndarray:
            return frees[k][start : start + n] if _batched(frees[k], total) else frees[k]

        instrumented = [gather(o.name, _batched(ref_part(k), n)) for k, o in enumerate(outs)]
        if plain is not None:
            out = [
                np.concatenate([s[k] for s in shipped]) if _batched(ref_part(k), n) else shipped[0][k]
                for k in range(len(outs))
            ]
        else:
            out = instrumented

        key = (start, tuple(stop - i for i, stop in spans), _digest(parts, forced_names))
        if memo is not None and key in memo:
            forced, tallies = memo[key]
        else:
            tallies = []

            def force(q: Quantizer, inputs: tuple, _out: torch.Tensor, path: str, chunk: int = n,
                      tallies: list[tuple[str, _Tally]] = tallies) -> torch.Tensor:  # fmt: skip
                batched = inputs[0].dim() > 0 and inputs[0].shape[0] == chunk
                theirs = gather(codes[path], batched).astype(np.int64) - offsets.get(path, 0)
                tallies.append((path, accs[path].compare(q.codes(inputs[0]).numpy().astype(np.int64), theirs)))
                # the runtime's own step: ASQ's per-sample step as the graph computed it
                step = torch.from_numpy(gather(steps[path], batched)) if path in steps else q.describe().scale
                return torch.from_numpy(theirs.astype(np.float32)) * step

            hooks = [
                model.get_submodule(p).register_forward_hook(lambda q, i, o, p=p: force(q, i, o, p)) for p in codes
            ]
            try:
                with torch.no_grad():
                    forced = [leaf.numpy() for leaf in _outputs(model, xc)]
            finally:
                for h in hooks:
                    h.remove()
            if memo is not None and sum(a.nbytes for v in memo.values() for a in v[0]) < MEMO_BYTES:
                memo[key] = (forced, tallies)
        for path, tally in tallies:
            accs[path].merge(tally)
        for k, acc in enumerate(outs):
            acc.add(ref_part(k), out[k], forced[k], instrumented[k], n)
    reports = [o.report() for o in outs]
    top1 = [o for o in reports if o.kind == "top-1"]
    return RunReport(
        f"{name} batch {'1+' if single_first and total > 1 else ''}{batch}", total,
        min((o.top1_agreement for o in top1 if o.top1_agreement is not None), default=1.0),
        min((o.free_top1_agreement for o in top1 if o.free_top1_agreement is not None), default=1.0),
        max((o.max_abs_diff for o in reports), default=0.0),
        [a.report(p) for p, a in accs.items()], reports,
    )  # fmt: skip


_TORCH_TYPES = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.INT64: torch.int64}


def _graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    constants = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in constants]


def _default_inputs(model: nn.Module, proto: onnx.ModelProto, samples: int) -> tuple[torch.Tensor, ...]:
    """``samples`` random inputs for every input, as the model's example records them (zoo models:
    images ~ N(0, 1) or token ids; captured models: each input's shape, dtype and integer range)."""
    from .zoo import example_inputs

    names = [s.name for s in _graph_inputs(proto)]
    takes = f"the model takes {len(names)} input{'s' if len(names) > 1 else ''} ({', '.join(names)})"
    what = "pass check inputs (a tensor, a tuple in forward()'s order or a dict by name)"
    if getattr(model, "qexport_example", None) is None:
        raise QexportError(f"{takes} and records no example of them: {what}")
    per_sample = [example_inputs(model, 1, seed=i) for i in range(samples)]
    if len(per_sample[0]) != len(names):
        raise QexportError(f"{takes} but its example describes {len(per_sample[0])}: {what}")
    return tuple(torch.cat(column) for column in zip(*per_sample, strict=True))


def _check_inputs(
    proto: onnx.ModelProto, inputs: torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor]
) -> Inputs:
    """``inputs`` as ONNX input name -> tensor, checked against the graph's inputs (one-line
    QexportErrors)."""
    specs = _graph_inputs(proto)
    names = [s.name for s in specs]
    several = f"the model takes {len(names)} inputs ({', '.join(names)})"
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        if len(specs) != 1:
            raise QexportError(f"{several}: pass check inputs as a tuple in forward()'s order or a dict by name")
        given = {names[0]: inputs}
    elif isinstance(inputs, Mapping):
        unknown = [k for k in inputs if k not in names]
        missing = [k for k in names if k not in inputs]
        if unknown or missing:
            what = f"has no input named {unknown[0]!r}" if unknown else f"needs input {missing[0]!r}"
            raise QexportError(f"the ONNX model {what}: its inputs are {', '.join(names)}")
        given = {k: inputs[k] for k in names}
    elif isinstance(inputs, Sequence):
        if len(inputs) != len(specs):
            raise QexportError(f"{len(inputs)} check inputs given; {several}")
        given = dict(zip(names, inputs, strict=True))
    else:
        raise QexportError(f"check inputs are a {type(inputs).__name__}: pass a tensor, a tuple or a dict of tensors")
    xs: Inputs = {}
    sizes: dict[str, tuple[str, int]] = {}  # named axis -> (first input with it, its size)
    for spec in specs:
        t = given[spec.name]
        t = torch.from_numpy(t) if isinstance(t, np.ndarray) else t
        if not isinstance(t, torch.Tensor):
            raise QexportError(f"check input {spec.name!r} is a {type(t).__name__}: pass a torch tensor")
        label, are = ("the check inputs", "are") if len(specs) == 1 else (f"check input {spec.name!r}", "is")
        tt = spec.type.tensor_type
        want = _TORCH_TYPES.get(tt.elem_type)
        if want is not None and t.dtype != want:
            raise QexportError(f"{label} {are} {t.dtype}; the model takes {want}: convert first (.to({want}))")
        if t.is_floating_point() and not torch.isfinite(t).all():
            verb = "contain" if len(specs) == 1 else "contains"
            raise QexportError(f"{label} {verb} NaN or infinite values: clean or clip them first")
        dims = list(tt.shape.dim)
        fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims[1:]]
        if t.dim() != len(dims) or any(f is not None and f != s for f, s in zip(fixed, t.shape[1:], strict=True)):
            shown = ", ".join("?" if f is None else str(f) for f in fixed)
            where = "input" if len(specs) == 1 else f"input {spec.name!r}"
            raise QexportError(f"inputs of shape {list(t.shape)} do not fit the model {where} [batch, {shown}]")
        for axis, d in enumerate(dims[1:], start=1):  # a named axis (sequence) is one size in every input
            if d.dim_param:
                seen = sizes.setdefault(d.dim_param, (spec.name, int(t.shape[axis])))
                if seen[1] != t.shape[axis]:
                    raise QexportError(
                        f"check inputs {seen[0]!r} and {spec.name!r} disagree on axis {d.dim_param!r} "
                        f"({seen[1]} vs {t.shape[axis]}): give every input the same size there"
                    )
        xs[spec.name] = t
    counts = {k: len(t) for k, t in xs.items()}
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise QexportError(f"the check inputs have different numbers of samples ({shown}): give each the same batch")
    return xs


def check(
    model: nn.Module | str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    inputs: torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor] | None = None,
    samples: int = 256,
    *,
    batch: int = 8,
    reference_samples: int = 16,
    show_progress: bool = False,
    quick: bool = False,
) -> CheckReport:
    """Compare ``onnx_path`` with the fake-quant ``model`` (or model.pt) on ``inputs`` at
    ORT_DISABLE_ALL and ORT_ENABLE_ALL, at batch 1 and ``batch``, and in onnx's ReferenceEvaluator on
    the first ``reference_samples`` inputs (pure numpy: about 1 s per ResNet-18 image at 224; 0 skips it).
    Where the model has qexport ops and the native kernels are built, ORT_ENABLE_ALL runs with them too.

    ``quick`` (what ``qexport model.pt --format onnx`` runs): only what a deployment runs, onnxruntime
    at ORT_ENABLE_ALL (its default) with the ops' function bodies and with the native kernels (where
    built and used), each run feeding the first input alone and the rest ``batch`` at a time; the
    same pass rule on every run.

    ``inputs``: a tensor (a one-input model), a tuple of tensors (the inputs in ``forward()``'s
    order) or a dict of ONNX input name -> tensor, each with the samples in dimension 0; default:
    ``samples`` random inputs as the model's example describes them (``qexport.zoo.example_inputs``).
    Every graph output is compared with the model's output at the same place in its flattened
    outputs (see the module docstring)."""
    if not os.path.isfile(onnx_path):
        raise QexportError(f"{onnx_path}: no such ONNX file")
    try:
        proto = onnx.load(str(onnx_path))
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise QexportError(f"{onnx_path}: not a readable ONNX file ({type(exc).__name__})") from None
    try:
        codes, steps, offsets = _code_outputs(proto)
    except QexportError as exc:
        raise QexportError(f"{onnx_path}: {exc}") from None
    xs = _check_inputs(proto, inputs) if inputs is not None else None  # bad inputs fail before a model.pt loads
    if not isinstance(model, nn.Module):
        model = load(model)
    model = model.eval()
    for path in codes:
        try:
            model.get_submodule(path)
        except AttributeError:
            raise QexportError(f"{onnx_path} does not belong to this model: it has no quantizer '{path}'") from None
    if xs is None:
        xs = _check_inputs(proto, _default_inputs(model, proto, samples))
    shipped = proto.SerializeToString()
    outputs = [o.name for o in proto.graph.output]
    for name in dict.fromkeys([*codes.values(), *steps.values()]):
        if name not in outputs:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    instrumented = proto.SerializeToString()
    names = [o.name for o in proto.graph.output]
    # (level, native kernels): the native kernels replace the function bodies of the qexport ops
    deployed = [("enable_all", False)] + [("enable_all", True)] * (native_available() and uses_qexport_ops(proto))
    if quick:
        runs = [(level, batch, native) for level, native in deployed]
    else:
        runs = [(level, b, native) for level, native in [("disable_all", False), *deployed] for b in (1, batch)]
    memo: _Memo = {}
    count = len(next(iter(xs.values())))
    ref_xs = _slice(xs, 0, reference_samples)
    ref_count = min(reference_samples, count)
    bar = Progress(count * len(runs) + ref_count, "check", enabled=show_progress)
    try:
        free = _free_running(model, xs)
        if len(free) != len(outputs):
            raise QexportError(
                f"the model returns {len(free)} tensors but {onnx_path} has {len(outputs)} outputs "
                f"({', '.join(outputs)}): it was not exported from this model"
            )
        reports = []
        for level, b, native in runs:
            label = f"onnxruntime {level}{' native' if native else ''}"
            args = (codes, steps, offsets, xs, free, label, b, bar)
            infer, plain = _ort_infer(instrumented, level, native), _ort_infer(shipped, level, native)
            reports.append(_run(model, names, infer, plain, *args, single_first=quick, memo=memo))
        not_run: list[str] = []
        if ref_count:
            infer = _reference_infer(proto)  # no graph rewrites: its output stands for the shipped graph
            ref_free = [f[:ref_count] if _batched(f, count) else f for f in free]
            args = (codes, steps, offsets, ref_xs, ref_free, "reference evaluator", batch, bar)
            try:
                reports.append(_run(model, names, infer, None, *args, memo=memo))
            except (ValueError, IndexError, TypeError, RuntimeError) as exc:
                # onnx's numpy evaluator fails on some graphs onnxruntime runs (GatherElements of
                # constants in Hugging Face BERT): said in the report, not a parity verdict
                first = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else type(exc).__name__
                not_run.append(f"reference evaluator could not run this graph ({type(exc).__name__}: {first})")
    finally:
        bar.close()
    return CheckReport(str(onnx_path), count, reports, not_run)
