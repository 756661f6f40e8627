"""One conv at a time: qexport's native IntConv and PostConv against onnxruntime's own QLinearConv and
FP32 Conv on the same shape (uint8 activations, random 4-bit weights; ReLU fused into the qexport ops),
each a one-node model timed alone, best of ``--runs``, batch 1.  Prints a markdown table naming the CPU
and the kernel path (``QEXPORT_ISA`` forces one; onnxruntime's kernels pick their own).

    python tools/conv_bench.py                                   # MobileNetV2 / ResNet shapes
    python tools/conv_bench.py --shape 16,96,112,1,1,1 --shape 144,144,56,3,1,144
    QEXPORT_ISA=avx2 python tools/conv_bench.py --lib build/old/_qexport_ops.so   # another build

A shape is ``in channels, out channels, side, kernel, stride, group``."""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qexport import native
from qexport.bench import cpu_name, kernel_path, session_options
from qexport.ops import DOMAIN, VERSION, functions_for, post_weights

SHAPES = [(16, 96, 112, 1, 1, 1), (24, 144, 56, 1, 1, 1), (144, 24, 56, 1, 1, 1), (64, 384, 14, 1, 1, 1),
          (320, 1280, 7, 1, 1, 1), (96, 96, 112, 3, 2, 96), (144, 144, 56, 3, 1, 144), (576, 576, 14, 3, 1, 576),
          (16, 16, 32, 3, 1, 1), (32, 32, 16, 3, 1, 1), (64, 64, 8, 3, 1, 1)]  # fmt: skip


def _model(nodes: list[onnx.NodeProto], x: onnx.ValueInfoProto, y_type: int, inits: list[onnx.TensorProto],
           ops: set[str]) -> onnx.ModelProto:  # fmt: skip
    y = helper.make_tensor_value_info("y", y_type, ["n", "c", "h", "w"])
    opsets = [helper.make_opsetid("", 21)] + ([helper.make_opsetid(DOMAIN, VERSION)] if ops else [])
    model = helper.make_model(helper.make_graph(nodes, "conv", [x], [y], inits), opset_imports=opsets,
                              functions=functions_for(ops))  # fmt: skip
    model.ir_version = 10
    return model


def models(cin: int, cout: int, side: int, k: int, stride: int, group: int,
           rng: np.random.Generator) -> dict[str, tuple[onnx.ModelProto, np.ndarray]]:  # fmt: skip
    """The four one-node models of a shape, with their input."""
    attrs = {"strides": [stride] * 2, "pads": [k // 2] * 4, "dilations": [1, 1], "group": group}
    codes = rng.integers(0, 16, (1, cin, side, side)).astype(np.uint8)
    w = rng.integers(-8, 8, (cout, cin // group, k, k)).astype(np.int8)
    x_u8 = helper.make_tensor_value_info("x", TensorProto.UINT8, list(codes.shape))
    scalar = numpy_helper.from_array
    out: dict[str, tuple[onnx.ModelProto, np.ndarray]] = {}
    inits = [scalar(np.float32(0.1), "xs"), scalar(np.uint8(0), "xz"), scalar(w, "w"),
             scalar(np.full(cout, 0.01, np.float32), "ws"), scalar(np.zeros(cout, np.int8), "wz"),
             scalar(np.float32(0.2), "ys"), scalar(np.uint8(0), "yz")]  # fmt: skip
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], **attrs)
    out["QLinearConv"] = (_model([node], x_u8, TensorProto.UINT8, inits, set()), codes)
    for op in ("IntConv", "PostConv"):
        weights = scalar(w, "w") if op == "IntConv" else post_weights.uint4_initializer(
            "w", post_weights.pack(rng.integers(-7, 8, (cout, cin // group, k, k)), 4))  # fmt: skip
        inits = [scalar(np.float32(0.1), "xs"), weights, scalar(np.full(cout, 0.01, np.float32), "ws"),
                 scalar(np.zeros(cout, np.float32), "b")]  # fmt: skip
        extra = {"bits": 4} if op == "PostConv" else {}
        node = helper.make_node(op, ["x", "xs", "w", "ws", "b"], ["y"], domain=DOMAIN, relu=1, **attrs, **extra)
        out[op] = (_model([node], x_u8, TensorProto.FLOAT, inits, {op}), codes)
    x_f = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(codes.shape))
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    out["FP32 Conv"] = (_model([node], x_f, TensorProto.FLOAT, [scalar(w.astype(np.float32), "w")], set()),
                        codes.astype(np.float32))  # fmt: skip
    return out


def best_us(model: onnx.ModelProto, x: np.ndarray, lib: str | None, runs: int) -> float:
    options = session_options(1)
    if lib:
        options.register_custom_ops_library(lib)
    else:
        native.register(options)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for _ in range(5):
        session.run(None, {"x": x})
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {"x": x})
        best = min(best, time.perf_counter() - t0)
    return best * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", action="append", help="cin,cout,side,kernel,stride,group (repeatable)")
    p.add_argument("--lib", help="native library to register instead of the installed one")
    p.add_argument("--runs", type=int, default=30)
    args = p.parse_args()
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shape] if args.shape else SHAPES

    print(f"{cpu_name()}, qexport kernel path {kernel_path()}; batch 1, 1 thread, microseconds, best of {args.runs}\n")
    names = ["QLinearConv", "IntConv", "PostConv", "FP32 Conv"]
    print("| cin | cout | side | k | stride | group | " + " | ".join(names) + " |")
    print("|" + "---:|" * (6 + len(names)))
    rng = np.random.default_rng(0)
    for shape in shapes:
        built = models(*shape, rng=rng)  # type: ignore[misc]
        times = [best_us(*built[n], args.lib, args.runs) for n in names]
        print("| " + " | ".join(str(v) for v in shape) + " | " + " | ".join(f"{t:.1f}" for t in times) + " |")


if __name__ == "__main__":
    main()
