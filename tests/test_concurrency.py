"""Concurrent runs: onnxruntime lets several threads call ``run()`` on one session at once, so a kernel
instance's compute() runs concurrently with itself.  One session from 8 threads, and fresh sessions
whose first runs start together, must give outputs bit-identical to sequential runs, on every kernel
path this CPU has and on the function bodies.

The weights come both as constant initializers (packed once, by the first run) and through a Cast
that ORT_DISABLE_ALL leaves in the graph (not constant: packed on every run), the case where
the kernels used to re-pack one shared buffer inside compute() (issue 22: heap-use-after-free, wrong
outputs)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qexport import native
from qexport.ops import DOMAIN, VERSION, functions_for, post_weights
from tests.test_native import ISAS

THREADS = 8
BATCHES = (1, 2, 3, 5)  # inputs of several batch sizes: concurrent runs of different sizes


def _conv_model(op: str, constant: bool, rng: np.random.Generator) -> onnx.ModelProto:
    cin, cout, k = 12, 40, 3  # channels not a multiple of 4 or 32: padded lanes and quads too
    if op == "PostConv":
        codes = post_weights.pack(rng.integers(-7, 8, size=(cout, cin, k, k)), 4)
        w = numpy_helper.from_array(codes.astype(np.uint8), "w0")
        attrs: dict[str, object] = {"bits": 4}
        via = helper.make_node("Cast", ["w0"], ["w"], to=TensorProto.UINT4)  # stays a node at ORT_DISABLE_ALL
    else:
        w = numpy_helper.from_array(rng.integers(-8, 8, size=(cout, cin, k, k)).astype(ml_dtypes.int4), "w0")
        attrs = {"relu": 1}
        via = helper.make_node("Cast", ["w0"], ["w"], to=TensorProto.INT8)  # the exporter's int4 -> int8
    if constant:
        w = (post_weights.uint4_initializer("w", codes) if op == "PostConv" else
             numpy_helper.from_array(numpy_helper.to_array(w).astype(np.int8), "w"))  # fmt: skip
    inits = [w, numpy_helper.from_array((rng.random(cout) + 0.1).astype(np.float32), "ws"),
             numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b")]  # fmt: skip
    node = helper.make_node(op, ["x", "xs", "w", "ws", "b"], ["y"], domain=DOMAIN, strides=[1, 1], pads=[1, 1, 1, 1],
                            dilations=[1, 1], group=1, **attrs)  # fmt: skip
    inputs = [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", cin, 9, 9]),
              helper.make_tensor_value_info("xs", TensorProto.FLOAT, ["N", 1, 1, 1])]  # fmt: skip
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", cout, 9, 9])
    return _model([node] if constant else [via, node], inputs, [out], inits)


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           inits: list[onnx.TensorProto]) -> onnx.ModelProto:  # fmt: skip
    model = helper.make_model(helper.make_graph(nodes, "op", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, VERSION)],
                              functions=functions_for({nodes[-1].op_type}))  # fmt: skip
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def _asq_model(rng: np.random.Generator) -> onnx.ModelProto:
    c, hidden = 12, 4
    values = [np.float32(0.05), np.uint8(0), rng.standard_normal((c, hidden)).astype(np.float32),
              rng.standard_normal(hidden).astype(np.float32), rng.random((hidden, 1)).astype(np.float32),
              np.float32([0.5])]  # fmt: skip
    names = ["step", "zero_point", "w1", "b1", "w2", "b2"]
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in zip(names, values, strict=True)]
    node = helper.make_node("AsqQuantize", ["x", *names], ["y", "codes", "s"], domain=DOMAIN, qmin=0, qmax=15)
    dyn = ["N", c, 9, 9]
    return _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, dyn)],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, dyn),
                   helper.make_tensor_value_info("codes", TensorProto.UINT8, dyn),
                   helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 1, 1, 1])], inits)  # fmt: skip


MODELS = ["PostConv-constant", "PostConv-per-run", "IntConv-constant", "IntConv-per-run", "AsqQuantize"]


def _build(name: str) -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(len(name))
    if name == "AsqQuantize":
        model = _asq_model(rng)
        feeds = [{"x": (rng.standard_normal((b, 12, 9, 9)) * 2).astype(np.float32)} for b in BATCHES]
    else:
        op, kind = name.split("-", 1)
        model = _conv_model(op, kind == "constant", rng)
        feeds = [{"x": rng.integers(0, 16, (b, 12, 9, 9)).astype(np.uint8),
                  "xs": (rng.random((b, 1, 1, 1)) + 0.5).astype(np.float32)} for b in BATCHES]  # fmt: skip
    return model, feeds


def _session(model: onnx.ModelProto, use_native: bool) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the Identity / Cast stay
    so.intra_op_num_threads = 2
    so.log_severity_level = 4
    if use_native:
        assert native.register(so)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _bytes(outputs: list[np.ndarray]) -> list[bytes]:
    return [np.ascontiguousarray(o).tobytes() for o in outputs]


if os.environ.get("QEXPORT_REQUIRE_NATIVE") == "1":
    assert native.available(), "QEXPORT_REQUIRE_NATIVE=1 but the native library was not built"
# the native kernels on each instruction-set path this CPU has, and the function bodies
PATHS = ([f"native-{isa}" for isa in ISAS] if native.available() else []) + ["body"]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param != "body":
        os.environ["QEXPORT_ISA"] = request.param.split("-", 1)[1]
    yield request.param
    os.environ.pop("QEXPORT_ISA", None)


@pytest.mark.parametrize("name", MODELS)
def test_one_session_from_8_threads_is_bit_identical(path: str, name: str) -> None:
    use_native = path != "body"
    model, feeds = _build(name)
    expected = [_bytes(_session(model, use_native).run(None, f)) for f in feeds]
    session = _session(model, use_native)  # fresh: its first runs are concurrent too
    start = threading.Barrier(THREADS)

    def worker(t: int) -> list[tuple[int, list[bytes]]]:
        start.wait()
        order = [(t + i) % len(feeds) for i in range(3 * len(feeds))]  # each thread its own order
        return [(i, _bytes(session.run(None, feeds[i]))) for i in order]

    with ThreadPoolExecutor(THREADS) as pool:
        results = [r for rs in pool.map(worker, range(THREADS)) for r in rs]
    bad = sum(got != expected[i] for i, got in results)
    assert bad == 0, f"{bad} of {len(results)} concurrent runs differ from sequential runs"


def test_sessions_in_parallel_are_bit_identical(path: str) -> None:
    use_native = path != "body"
    built = [_build(name) for name in MODELS]
    expected = [[_bytes(_session(m, use_native).run(None, f)) for f in feeds] for m, feeds in built]
    start = threading.Barrier(THREADS)

    def worker(t: int) -> int:
        model, feeds = built[t % len(built)]
        session = _session(model, use_native)
        start.wait()  # first runs of fresh sessions, all at once
        return sum(_bytes(session.run(None, f)) != expected[t % len(built)][i] for i, f in enumerate(feeds))

    with ThreadPoolExecutor(THREADS) as pool:
        bad = sum(pool.map(worker, range(THREADS)))
    assert bad == 0, f"{bad} runs of sessions in parallel differ from sequential runs"
