"""Where an exported model spends its time in onnxruntime: per-node and per-op-type times from
onnxruntime's own profiler (the optimised graph's nodes, so fused kernels appear under their fused
names), batch and threads as given, native qexport kernels registered.

    python tools/node_times.py .cache/bench/resnet20_post_w4a4.onnx --top 15
    QEXPORT_ISA=avx2 python tools/node_times.py model.onnx --batch 16 --threads 2

Prints two tables (by op type, by node): total microseconds per run and share of the model's time."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import onnxruntime as ort

from qexport import native
from qexport.bench import cpu_name, kernel_path, session_feeds, session_options


def profile(path: Path, batch: int, threads: int, runs: int) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Mean microseconds per run by op type and by (op type, node name)."""
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "profile")
        native.register(options)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = session_feeds(path, session, batch)
        for _ in range(5):
            session.run(None, feeds)
        trace = session.end_profiling()  # warm-up runs end up in the trace too; dropped below
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, feeds)
        trace = session.end_profiling()
        events = json.loads(Path(trace).read_text())
    by_op: dict[str, float] = defaultdict(float)
    by_node: dict[tuple[str, str], float] = defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op = e["args"].get("op_name", "?")
        by_op[op] += e["dur"] / runs
        by_node[(op, e["name"][: -len("_kernel_time")])] += e["dur"] / runs
    return dict(by_op), dict(by_node)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args()
    by_op, by_node = profile(args.model, args.batch, args.threads, args.runs)
    total = sum(by_op.values())
    print(f"{args.model.name}: batch {args.batch}, {args.threads} thread(s), {cpu_name()}, "
          f"kernel path {kernel_path()}: {total:.0f} us of node time per run")  # fmt: skip
    print("| op type | us/run | share |\n|---|---|---|")
    for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"| {op} | {t:.0f} | {100 * t / total:.1f}% |")
    print("\n| node | op type | us/run | share |\n|---|---|---|---|")
    for (op, node), t in sorted(by_node.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"| {node} | {op} | {t:.0f} | {100 * t / total:.1f}% |")


if __name__ == "__main__":
    main()
