"""Speed benchmark: qexport's exports against the FP32 ONNX model and onnxruntime's own int8
quantize_static model of the same network, timed interleaved in one process; where OpenVINO is
installed (pip install qexport[openvino]), also that quantize_static file run in OpenVINO's CPU plugin
(the "openvino int8" row) and each variant's --target openvino export run in OpenVINO, where it loads.

    python tools/bench.py                      # the zoo's models, batch 1 and 16, 1 and 2 threads
    python tools/bench.py resnet20 --batch 1 --threads 1 --budget 1
    python tools/bench.py vgg effnet --out /tmp/extra   # tools/bench_models.py's CNNs (not in the default run)

Writes docs/BENCHMARKS.md and docs/benchmarks.json (``--out``).  Models have random weights
(speed does not depend on their values), quantizers calibrated on random inputs.  Each table row:
median ms per batch (min-max), speed-up over FP32 in the same run, achieved GOPS (2 x MACs of
the float network / time), the kernels onnxruntime chose (for OpenVINO rows: what its compiled graph
runs in int8), and the peak memory of a process holding only that onnxruntime session."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import qexport
from qexport import bench, native, zoo
from qexport.errors import QexportError
from qexport.export.openvino import compile_model, import_openvino, write_openvino
from qexport.quant.nipq import NipqQuantizer, theta_for_bits
from tools import bench_models

ROOT = Path(__file__).resolve().parent.parent
MODELS: dict[str, dict[str, Any]] = {  # name -> zoo kwargs, image side
    "resnet18": {"kwargs": {"num_classes": 1000}, "side": 224},
    "resnet20": {"kwargs": {}, "side": 32},
    "mobilenetv2": {"kwargs": {"num_classes": 1000}, "side": 224},
    "transformer": {"kwargs": {"seq_len": 128}, "side": None},
}
EXTRA_MODELS = {"vgg": 32, "effnet": 224}  # tools/bench_models.py's, by name: image side; not in the default run
VARIANTS: dict[str, dict[str, Any]] = {  # qexport variant -> quantize() arguments
    "lsq w8a8": {"weight": "lsq", "act": "lsq", "bits": 8},
    "lsq w4a4": {"weight": "lsq", "act": "lsq", "bits": 4},
    "lsq w3a3": {"weight": "lsq", "act": "lsq", "bits": 3},
    "lsq w2a2": {"weight": "lsq", "act": "lsq", "bits": 2},
    "nipq w4a4": {"weight": "nipq", "act": "nipq", "bits": 4},
    "nipq mixed (avg 4)": {"weight": "nipq", "act": "nipq", "bits": 4, "learn_bits": True},
    "asq w4a4": {"weight": "lsq", "act": "asq", "bits": 4},
    "post w4a4": {"weight": "post", "act": "lsq", "bits": 4},
    "asq+post w4a4": {"weight": "post", "act": "asq", "bits": 4},
    "lsq w4a4 paper": {"weight": "lsq", "act": "lsq", "bits": 4, "placement": "paper"},
}
TRANSFORMER_VARIANTS = ("lsq w8a8", "lsq w4a4", "asq w4a4", "post w4a4")
ORT_INT8 = "ort int8 (quantize_static)"
OV_INT8 = "openvino int8 (the quantize_static file)"
OV_SUFFIX = " in openvino"  # a variant's --target openvino export, run in OpenVINO
PAPER_NOTE = (
    "paper placement: only layer inputs are quantized, so conv outputs and residual adds "
    "stay float and onnxruntime cannot fuse the convs whose output is not quantized"
)


def _mix_bits(model: torch.nn.Module) -> None:
    """NIPQ mixed precision as after training: learned widths frozen at 2..6, averaging 4."""
    widths = [2, 3, 4, 5, 6]
    rng = random.Random(0)
    for q in model.modules():
        if isinstance(q, NipqQuantizer) and q.learns_bits:
            with torch.no_grad():
                q.theta.fill_(theta_for_bits(rng.choice(widths)))
            q.finalize()


def build(name: str, cache: Path, variants: list[str], openvino: bool) -> tuple[dict[str, Path], dict[str, str]]:
    """Export FP32, ORT int8 and the qexport variants of zoo model ``name`` into ``cache``; with
    ``openvino``, also the rows that run in OpenVINO.  Returns (row -> file, row -> runtime of the
    rows that do not run in onnxruntime)."""
    example: tuple[torch.Tensor, ...] | None = None
    if name in EXTRA_MODELS:  # a user's model: captured with torch.export on an example input
        model = bench_models.create(name)
        side = EXTRA_MODELS[name]
        calib = torch.randn(8, 3, side, side, generator=torch.Generator().manual_seed(1))
        example = (calib[:1],)
    else:
        spec = MODELS[name]
        torch.manual_seed(0)
        model = zoo.create(name, **spec["kwargs"]).eval()
        calib = zoo.example_input(model, 8, size=spec["side"], seed=1)
    out: dict[str, Path] = {"fp32": qexport.export(model, cache / f"{name}_fp32.onnx", example)}
    out[ORT_INT8] = _ort_int8(out["fp32"], calib.numpy(), cache / f"{name}_ort_int8.onnx")
    runtimes: dict[str, str] = {}
    shape, _ = bench.input_shape(out["fp32"])
    if openvino:
        try:  # OpenVINO 2026.4 fails on the transformer's quantize_static file (an int8 Add it cannot type)
            compile_model(out[ORT_INT8], 1, shapes=[1, *shape[1:]])
            out[OV_INT8], runtimes[OV_INT8] = out[ORT_INT8], "openvino"
        except QexportError as exc:
            print(f"{name}: no '{OV_INT8}' row ({exc})", flush=True)
    for v in variants:
        args = dict(VARIANTS[v])
        q = qexport.quantize(model, **args, example_inputs=example)
        if args.get("learn_bits"):
            _mix_bits(q)
        qexport.calibrate(q, [calib])
        stem = f"{name}_{v.replace(' ', '_').replace('(', '').replace(')', '')}"
        out[v] = qexport.export(q, cache / f"{stem}.onnx", example)
        if openvino:
            ov_path = write_openvino(out[v], cache / f"{stem}_openvino.onnx")
            try:
                compile_model(ov_path, 1, shapes=[1, *shape[1:]])
            except QexportError as exc:
                print(f"{name} {v}: not timed in OpenVINO ({exc})", flush=True)
                continue
            out[v + OV_SUFFIX], runtimes[v + OV_SUFFIX] = ov_path, "openvino"
    order = [k for k in out if runtimes.get(k) != "openvino"] + [k for k in out if runtimes.get(k) == "openvino"]
    return {k: out[k] for k in order}, runtimes


def _ort_int8(fp32: Path, calib: np.ndarray, out: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name
            self.items = iter([{name: calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quantize_static(
        str(fp32),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def measure(
    name: str,
    paths: dict[str, Path],
    batches: list[int],
    threads: list[int],
    budget: float,
    memory: bool,
    runtimes: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Time every row of ``paths`` interleaved, each in its runtime (``runtimes``: row -> runtime,
    default onnxruntime), at every batch and thread count; kernels and onnxruntime memory per row."""
    runtimes = runtimes or {}
    shape, _ = bench.input_shape(paths["fp32"])
    vocab = bench.vocab_size(paths["fp32"])
    result: dict[str, Any] = {"model": name, "input": shape, "configs": [], "kernels": {}, "memory": {}}
    for v, p in paths.items():
        in_openvino = runtimes.get(v) == "openvino"
        result["kernels"][v] = bench.openvino_kernels(p, [1, *shape[1:]]) if in_openvino else bench.optimized_kernels(p)
    for b in batches:
        macs = bench.count_macs(paths["fp32"], [b, *shape[1:]])
        for t in threads:
            feeds = bench.random_feeds(b, shape, vocab)
            timings = bench.time_interleaved(paths, feeds, t, budget_s=budget, runtime=runtimes)
            base = next(x for x in timings if x.name == "fp32").median_ms
            rows = [
                {**x.__dict__, "speedup": base / x.median_ms, "gops": 2 * macs / (x.median_ms * 1e6)} for x in timings
            ]
            result["configs"].append({"batch": b, "threads": t, "macs": macs, "rows": rows})
            print(
                f"{name} batch {b} threads {t}: "
                + ", ".join(f"{r['name']} {r['median_ms']:.2f} ms ({r['speedup']:.2f}x)" for r in rows),
                flush=True,
            )
    if memory:  # a process with one onnxruntime session (no probe for OpenVINO)
        for v, p in paths.items():
            if runtimes.get(v, "onnxruntime") == "onnxruntime":
                result["memory"][v] = bench.peak_memory_mb(p, 1, max(batches))
    return result


def peak_int8_gops(threads: int = 1) -> float:
    """This CPU's int8 GEMM rate through onnxruntime's MatMulInteger (u8 x s8, 512x1024x1024), GOPS."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = 512, 1024, 1024
    w = numpy_helper.from_array(np.random.default_rng(0).integers(-128, 127, (k, n), dtype=np.int8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])],
        [w],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    s = ort.InferenceSession(
        proto.SerializeToString(), bench.session_options(threads), providers=["CPUExecutionProvider"]
    )
    a = np.random.default_rng(1).integers(0, 255, (m, k), dtype=np.uint8)
    for _ in range(3):
        s.run(None, {"a": a})
    best = min(_timed(lambda: s.run(None, {"a": a})) for _ in range(20))
    del onnx
    return 2 * m * k * n / best / 1e9


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _row(r: dict[str, Any], batch: int, threads: int, name: str) -> dict[str, Any] | None:
    for c in r["configs"]:
        if c["batch"] == batch and c["threads"] == threads:
            return next((x for x in c["rows"] if x["name"] == name), None)
    return None


def targets(results: list[dict[str, Any]], env: dict[str, Any]) -> list[str]:
    """The issue's targets against this run: one table row each, met or missed by how much."""
    by = {r["model"]: r for r in results}
    rows: list[tuple[str, str, str, bool]] = []  # target, goal, measured, met

    def speed(model: str, name: str, b: int = 1, t: int = 1) -> float | None:
        x = _row(by[model], b, t, name) if model in by else None
        return None if x is None else x["speedup"]

    if "resnet18" in by:
        ort = speed("resnet18", ORT_INT8) or 0.0
        for v in ("lsq w8a8", "lsq w4a4", "lsq w3a3", "lsq w2a2", "nipq w4a4", "nipq mixed (avg 4)"):
            x = speed("resnet18", v)
            if x is not None:
                goal = max(3.2, 0.95 * ort)
                rows.append(
                    (
                        f"ResNet-18 {v}",
                        f">= 3.2x and within 5% of ORT int8 ({ort:.3f}x): {goal:.3f}x",
                        f"{x:.3f}x",
                        x >= goal,
                    )
                )
        lsq = _row(by["resnet18"], 1, 1, "lsq w4a4")
        asq = _row(by["resnet18"], 1, 1, "asq w4a4")
        if lsq and asq:
            rows.append(
                (
                    "ResNet-18 asq w4a4",
                    ">= 2.7x and <= 1.2x the LSQ time",
                    f"{asq['speedup']:.3f}x, {asq['median_ms'] / lsq['median_ms']:.2f}x LSQ",
                    asq["speedup"] >= 2.7 and asq["median_ms"] <= 1.2 * lsq["median_ms"],
                )
            )
        for v, goal in (("post w4a4", 1.6), ("asq+post w4a4", 1.5)):
            x = speed("resnet18", v)
            if x is not None:
                rows.append((f"ResNet-18 {v}", f">= {goal}x", f"{x:.2f}x", x >= goal))
        b16 = _row(by["resnet18"], 16, 1, "lsq w4a4")
        if b16:
            share = b16["gops"] / env["int8_peak_gops"]
            rows.append(
                (
                    "ResNet-18 lsq w4a4, batch 16, 1 thread",
                    ">= 70% of the int8 peak",
                    f"{b16['gops']:.0f} GOPS = {100 * share:.0f}% of {env['int8_peak_gops']:.0f}",
                    share >= 0.7,
                )
            )
    if "transformer" in by:
        ort = speed("transformer", ORT_INT8) or 0.0
        for v in ("lsq w8a8", "lsq w4a4"):
            x = speed("transformer", v)
            if x is not None:
                rows.append(
                    (f"transformer {v}", f">= 1.6x and above ORT int8 ({ort:.2f}x)", f"{x:.2f}x", x >= 1.6 and x > ort)
                )
    for r in results:
        fp32 = r["memory"].get("fp32")
        if not fp32:
            continue
        worst = max(
            (v for v in r["memory"] if v not in ("fp32", ORT_INT8)),
            key=lambda v: r["memory"][v]["session_mb"],
            default=None,
        )
        if worst:
            got = r["memory"][worst]["session_mb"]
            rows.append(
                (
                    f"{r['model']} peak memory (b16 t1)",
                    f"every qexport session <= FP32 ({fp32['session_mb']:.0f} MB)",
                    f"largest: {worst} {got:.0f} MB",
                    got <= fp32["session_mb"],
                )
            )
    lines = [
        "## Targets (ResNet-18 224 and the transformer: batch 1, 1 thread, unless noted)",
        "",
        "| target | goal | measured | |",
        "|---|---|---|---|",
    ]
    lines += [f"| {t} | {g} | {m} | {'met' if ok else '**missed**'} |" for t, g, m, ok in rows]
    return [*lines, ""]


def markdown(results: list[dict[str, Any]], env: dict[str, Any], notes: str = "") -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python tools/bench.py` (see its docstring); the notes after the targets are "
        "`docs/bench_notes.md`. Times are medians over interleaved runs in one process (min-max in "
        "brackets), ms per batch; `x` = speed-up over the FP32 ONNX model in the same run; GOPS = 2 x MACs "
        "of the float network / time. Random weights, quantizers calibrated on random inputs.",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores; onnxruntime {env['onnxruntime']}; native qexport "
        f"kernels: {env['native']}, kernel path {env.get('kernel_path', 'not recorded')}; "
        f"int8 peak (MatMulInteger u8 x s8, 1 thread): {env['int8_peak_gops']:.0f} GOPS.",
        "",
        f"OpenVINO: {env.get('openvino', 'not run')}. Rows `{OV_INT8}` (onnxruntime's quantize_static file) and "
        f"`<variant>{OV_SUFFIX}` (the variant exported with `--target openvino`) run in OpenVINO's CPU plugin "
        "(same threads, static shapes, no core pinning, f32 where not int8; their kernels column counts the "
        "convs / matmuls its compiled graph runs in int8), timed in the same rounds as the onnxruntime rows; "
        "`x` is against the same FP32 model in onnxruntime.",
        "",
        *targets(results, env),
        notes,
    ]
    for r in results:
        lines += [f"## {r['model']} (input {r['input'][1:]})", ""]
        head = "| variant | " + " | ".join(f"b{c['batch']} t{c['threads']}" for c in r["configs"])
        head += " | GOPS b16 t1 | kernels (integer / float) | session MB (peak RSS growth, b16 t1) |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        names = [x["name"] for x in r["configs"][0]["rows"]]
        for n in names:
            cells = []
            for c in r["configs"]:
                x = next(x for x in c["rows"] if x["name"] == n)
                cells.append(f"{x['median_ms']:.2f} ({x['min_ms']:.2f}-{x['max_ms']:.2f}) **{x['speedup']:.2f}x**")
            b16 = _row(r, 16, 1, n)
            k = r["kernels"][n]
            kernels = (k if isinstance(k, bench.Kernels) else bench.Kernels(**k)).text()
            mem = r["memory"].get(n)
            memory = f"{mem['session_mb']:.0f}" if mem else ""
            lines.append(
                f"| {n} | " + " | ".join(cells) + f" | {b16['gops']:.0f} | {kernels} | {memory} |"
                if b16
                else f"| {n} | " + " | ".join(cells) + f" |  | {kernels} | {memory} |"
            )
        lines.append("")
        if any("paper" in n for n in names):
            lines += [f"`lsq w4a4 paper`: {PAPER_NOTE}.", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", default=[],
                   help=f"of {list(MODELS) + list(EXTRA_MODELS)} (default: {list(MODELS)}, the zoo's)")  # fmt: skip
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--budget", type=float, default=4.0, help="seconds of timed rounds per configuration")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-openvino", action="store_true", help="leave out the rows that run in OpenVINO")
    p.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    p.add_argument("--render", type=Path, help="only rewrite BENCHMARKS.md from this benchmarks.json")
    args = p.parse_args()
    notes_path = ROOT / "docs" / "bench_notes.md"
    notes = notes_path.read_text() if notes_path.is_file() else ""
    if args.render:
        data = json.loads(args.render.read_text())
        (args.out / "BENCHMARKS.md").write_text(markdown(data["results"], data["env"], notes))
        print(f"wrote {args.out / 'BENCHMARKS.md'}")
        return
    args.models = args.models or list(MODELS)
    unknown = [m for m in args.models if m not in MODELS and m not in EXTRA_MODELS]
    if unknown:
        p.error(f"unknown models {unknown}: choose from {list(MODELS) + list(EXTRA_MODELS)}")
    args.cache.mkdir(parents=True, exist_ok=True)
    env = {
        "cpu": bench.cpu_name(),
        "cores": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "native": str(native.library_path() or "not built"),
        "int8_peak_gops": peak_int8_gops(1),
        "kernel_path": bench.kernel_path(),
    }
    openvino = not args.no_openvino
    if openvino:
        try:
            env["openvino"] = f"{import_openvino().__version__.split('-')[0]} (CPU plugin)"
        except QexportError as exc:
            print(f"no OpenVINO rows: {exc}", flush=True)
            openvino = False
    results = []
    for name in args.models:
        variants = [v for v in args.variants if name != "transformer" or v in TRANSFORMER_VARIANTS]
        paths, runtimes = build(name, args.cache, variants, openvino)
        results.append(measure(name, paths, args.batch, args.threads, args.budget, not args.no_memory, runtimes))
    args.out.mkdir(parents=True, exist_ok=True)
    bench.save_json({"env": env, "results": results}, args.out / "benchmarks.json")
    results = json.loads((args.out / "benchmarks.json").read_text())["results"]  # plain dicts, as --render
    (args.out / "BENCHMARKS.md").write_text(markdown(results, env, notes))
    print(json.dumps(env))
    print(f"wrote {args.out / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
