"""Speed measurement of exported models in onnxruntime (CPU) and OpenVINO (CPU plugin, optional):
interleaved timing of several models in one process, the kernels onnxruntime actually chose (from
its optimised graph) or the precision OpenVINO runs each conv / matmul in (from its compiled graph),
the arithmetic of the network (for GOPS) and each onnxruntime session's peak memory in a process of
its own.

Speed is measured here and printed as tables (``qexport bench``, ``tools/bench.py``); no test asserts
a time."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper, shape_inference

from .errors import QexportError

# What onnxruntime's optimised graph holds for a conv / matmul, by kernel family.
INTEGER_CONV = {"QLinearConv", "ConvInteger", "PostConv", "IntConv", "PostConvRequant", "IntConvRequant"}
FLOAT_CONV = {"Conv", "FusedConv", "NhwcFusedConv", "NchwcConv"}
INTEGER_MATMUL = {"QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "PostMatMul"}
FLOAT_MATMUL = {"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulNBits"}
INTEGER_ADD = {"QLinearAdd"}


@dataclass
class Kernels:
    """Counts of the compute kernels in onnxruntime's optimised graph of one model."""

    integer_conv: int = 0
    float_conv: int = 0
    integer_matmul: int = 0
    float_matmul: int = 0
    integer_add: int = 0
    float_add: int = 0
    ops: dict[str, int] = field(default_factory=dict)

    def text(self) -> str:
        parts = (
            [f"conv {self.integer_conv} int / {self.float_conv} float"] if self.integer_conv + self.float_conv else []
        )
        if self.integer_matmul + self.float_matmul:
            parts.append(f"matmul {self.integer_matmul} int / {self.float_matmul} float")
        if self.integer_add + self.float_add:
            parts.append(f"add {self.integer_add} int / {self.float_add} float")
        return ", ".join(parts)


LEVELS = {  # onnxruntime graph optimisation by name
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,  # no QDQ fusions (QLinearConv, QLinearAdd)
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,  # onnxruntime's default
}


def session_options(threads: int, level: str = "all", optimized_path: str | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = LEVELS[level]
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    # idle pool threads must not spin: with several sessions timed in turn in one process, the spinning
    # threads of the others would steal the cores from the one running
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def make_session(
    path: str | os.PathLike[str], threads: int, optimized_path: str | None = None, native: bool = True
) -> ort.InferenceSession:
    from .native import register

    options = session_options(threads, optimized_path=optimized_path)
    if native:
        register(options, quiet=True)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


RUNTIMES = ("onnxruntime", "openvino")
_FEED_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)"}  # input dtype -> key of random_feeds


def openvino_kernels(path: str | os.PathLike[str], shape: list[int] | None = None) -> Kernels:
    """How OpenVINO's CPU plugin (1 thread, first input fixed to ``shape`` when given) runs the convs
    and matmuls of ``path``: int8 (u8 / i8 runtime precision) or float, from its compiled graph."""
    from .export.openvino import compile_model, precisions

    p = precisions(compile_model(path, 1, shapes=shape))
    return Kernels(p.integer_conv, p.float_conv, p.integer_matmul, p.float_matmul, ops=dict(sorted(p.ops.items())))


def _runner(
    path: str | os.PathLike[str], runtime: str, threads: int, feeds: dict[str, np.ndarray], native: bool
) -> Callable[[], object]:
    """One inference of ``path`` on its input from ``feeds``, ready to time."""
    if runtime == "openvino":
        from .export.openvino import compile_model

        _, dtype = input_shape(path)
        x = feeds[_FEED_TYPES.get(dtype, "tensor(float)")]
        request = compile_model(path, threads, shapes=list(x.shape)).create_infer_request()
        return lambda: request.infer({0: x})
    if runtime != "onnxruntime":
        raise QexportError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    s = make_session(path, threads, native=native)
    inp = s.get_inputs()[0]
    feed = {inp.name: feeds[inp.type]}
    return lambda: s.run(None, feed)


def _is_float_tensor_add(node: onnx.NodeProto, constants: set[str]) -> bool:
    return node.op_type in ("Add", "Sum") and all(i not in constants for i in node.input)


def optimized_kernels(path: str | os.PathLike[str], native: bool = True) -> Kernels:
    """Which kernels onnxruntime (ORT_ENABLE_ALL, 1 thread) runs for the convs, matmuls and
    tensor-tensor adds of ``path`` (an add of a constant, such as a bias, is not counted)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "optimized.onnx")
        make_session(path, 1, optimized_path=out, native=native)
        graph = onnx.load(out).graph
    constants = {t.name for t in graph.initializer}
    ops = Counter(n.op_type for n in graph.node)
    k = Kernels(ops=dict(sorted(ops.items())))
    k.integer_conv = sum(ops[o] for o in INTEGER_CONV)
    k.float_conv = sum(ops[o] for o in FLOAT_CONV)
    k.integer_matmul = sum(ops[o] for o in INTEGER_MATMUL)
    k.float_matmul = sum(ops[o] for o in FLOAT_MATMUL)
    k.integer_add = sum(ops[o] for o in INTEGER_ADD)
    k.float_add = sum(1 for n in graph.node if _is_float_tensor_add(n, constants))
    return k


def _dims(info: onnx.ValueInfoProto) -> list[int] | None:
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in info.type.tensor_type.shape.dim]
    return dims if dims and all(d > 0 for d in dims) else None


def count_macs(path: str | os.PathLike[str], input_shape: list[int]) -> int:
    """Multiply-accumulates of the Conv / MatMul / Gemm nodes of a float ONNX model at ``input_shape``
    (batch included), from onnx shape inference; the arithmetic GOPS figures are measured against."""
    model = onnx.load(str(path))
    inp = model.graph.input[0]
    for d, size in zip(inp.type.tensor_type.shape.dim, input_shape, strict=True):
        d.ClearField("dim_param")
        d.dim_value = size
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {v.name: _dims(v) for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w, y = shapes.get(node.input[1]), shapes.get(node.output[0])
            if w and y:
                macs += int(np.prod(y)) * int(np.prod(w[1:]))
        elif node.op_type in ("MatMul", "Gemm"):
            a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a and y:
                k = a[-1] if not (node.op_type == "Gemm" and _attr(node, "transA")) else a[0]
                macs += int(np.prod(y)) * k
    return macs


def _attr(node: onnx.NodeProto, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)


@dataclass
class Timing:
    name: str
    median_ms: float
    min_ms: float
    max_ms: float
    runs: int


def time_interleaved(
    paths: dict[str, str | os.PathLike[str]],
    feeds: dict[str, np.ndarray],
    threads: int,
    budget_s: float = 3.0,
    min_runs: int = 10,
    max_runs: int = 300,
    native: bool = True,
    runtime: str | Mapping[str, str] = "onnxruntime",
) -> list[Timing]:
    """Time every model of ``paths`` (name -> ONNX file) on ``feeds`` (input dtype -> array) in this
    process, one run of each model per round (the order rotating each round), so drifting clocks and
    neighbours affect all models alike.  Rounds: enough to fill ``budget_s`` seconds, within bounds.
    ``runtime``: ``"onnxruntime"`` or ``"openvino"`` (CPU plugin, ``threads`` inference threads, the
    input's shape fixed to the feed's), for every model or per name (name -> runtime; others
    onnxruntime), so that one run times the same file in both."""
    runners = {}
    for name, path in paths.items():
        which = runtime if isinstance(runtime, str) else runtime.get(name, "onnxruntime")
        runners[name] = _runner(path, which, threads, feeds, native)
    for infer in runners.values():  # warm-up: allocation, prepacking, caches
        for _ in range(3):
            infer()
    start = time.perf_counter()
    for infer in runners.values():
        infer()
    per_round = time.perf_counter() - start
    rounds = int(min(max_runs, max(min_runs, budget_s / max(per_round, 1e-6))))
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            infer = runners[name]
            t0 = time.perf_counter()
            infer()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return [Timing(n, statistics.median(t), min(t), max(t), len(t)) for n, t in times.items()]


_MEMORY_PROBE = """
import json, sys
import numpy as np
import onnxruntime as ort

def hwm_kb():  # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's over fork + exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))

path, threads, batch, library = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
before = hwm_kb()
options = ort.SessionOptions()
options.intra_op_num_threads = threads
options.inter_op_num_threads = 1
if library:
    options.register_custom_ops_library(library)
s = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
inp = s.get_inputs()[0]
shape = [batch if not isinstance(d, int) else d for d in inp.shape]
rng = np.random.default_rng(0)
x = np.zeros(shape, np.int64) if inp.type == "tensor(int64)" else rng.standard_normal(shape, np.float32)
for _ in range(3):
    s.run(None, {inp.name: x})
after = hwm_kb()
print(json.dumps({"peak_mb": after / 1024, "session_mb": (after - before) / 1024}))
"""


def peak_memory_mb(path: str | os.PathLike[str], threads: int, batch: int, native: bool = True) -> dict[str, float]:
    """Peak resident memory of a fresh process (python, numpy and onnxruntime only) that loads
    ``path`` and runs it 3 times: the whole process (``peak_mb``) and its growth from loading and
    running the session (``session_mb``)."""
    from .native import library_path

    library = str(library_path() or "") if native else ""
    cmd = [sys.executable, "-c", _MEMORY_PROBE, str(path), str(threads), str(batch), library]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise QexportError(f"memory probe of {path} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def random_feeds(batch: int, shape: list[int], vocab: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """An input of each kind a zoo model takes: float images and int64 token ids, batch first."""
    rng = np.random.default_rng(seed)
    full = [batch, *shape[1:]]
    return {
        "tensor(float)": rng.standard_normal(full, dtype=np.float32),
        "tensor(int64)": rng.integers(0, vocab, full, dtype=np.int64),
    }


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module says: every benchmark table
    names it."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def kernel_path() -> str:
    """The native kernels' instruction-set path: QEXPORT_ISA where set, else the best this CPU has (as
    custom_ops/isa.cc picks it)."""
    forced = os.environ.get("QEXPORT_ISA")
    if forced:
        return f"{forced} (forced by QEXPORT_ISA)"
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "unknown"
    if {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "fma"} <= flags:
        return "avx512vnni"
    return "avx2" if {"avx2", "fma"} <= flags else "scalar"


def session_feeds(path: str | os.PathLike[str], session: ort.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    """The input the benchmark feeds ``session`` of the model at ``path``: a sequence axis at the size the
    model was exported with, token ids within the vocabulary."""
    shape, _ = input_shape(path)
    inp = session.get_inputs()[0]
    return {inp.name: random_feeds(batch, shape, vocab_size(path))[inp.type]}


def input_shape(path: str | os.PathLike[str]) -> tuple[list[int], str]:
    """The first input's shape: fixed sizes as the file says; a dynamic axis past the batch (a
    sequence) at the size the model was exported with (metadata ``example_shapes``), else 1."""
    model = onnx.load(str(path), load_external_data=False)
    inp = model.graph.input[0]
    meta = {p.key: p.value for p in model.metadata_props}
    example = json.loads(meta["example_shapes"])[0] if "example_shapes" in meta else []
    dims = [
        d.dim_value if d.HasField("dim_value") else (example[i] if 0 < i < len(example) else 1)
        for i, d in enumerate(inp.type.tensor_type.shape.dim)
    ]
    return dims, onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type).name


def vocab_size(path: str | os.PathLike[str]) -> int:
    """Rows of the first Gather table (the embedding), so random token ids stay in range."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[0] in inits:
            return int(numpy_helper.to_array(inits[node.input[0]]).shape[0])
    return 1000


def save_json(obj: object, path: str | os.PathLike[str]) -> None:
    Path(path).write_text(json.dumps(obj, indent=1, default=lambda o: asdict(o)))
