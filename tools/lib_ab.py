"""Two builds of the native kernels on the same exported models, interleaved: each round runs every
library's session on each model in turn (``--runs`` runs each), so machine noise falls on all alike.
Prints a markdown table (median and minimum ms per run) naming the CPU and the kernel path.

    git stash; python setup.py build_ext --inplace --force; cp qexport/_qexport_ops*.so /tmp/before.so
    git stash pop; python setup.py build_ext --inplace --force
    python tools/lib_ab.py /tmp/before.so qexport/_qexport_ops*.so --model .cache/bench/resnet20_post_w4a4.onnx
    QEXPORT_ISA=avx2 python tools/lib_ab.py A.so B.so --model m1.onnx --model m2.onnx --rounds 30

The models are feeds-compatible exports (tools/bench.py's, in .cache/bench after a run)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from qexport.bench import cpu_name, kernel_path, session_feeds, session_options


def _times(model: Path, libraries: list[str], threads: int, batch: int, rounds: int, runs: int) -> list[list[float]]:
    sessions = []
    for lib in libraries:
        options = session_options(threads)
        options.register_custom_ops_library(lib)
        sessions.append(ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"]))
    feeds = session_feeds(model, sessions[0], batch)
    for session in sessions:  # warm: weights packed, arenas grown
        for _ in range(3):
            session.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for i, session in enumerate(sessions):
            start = time.perf_counter()
            for _ in range(runs):
                session.run(None, feeds)
            times[i].append((time.perf_counter() - start) / runs * 1e3)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("libraries", nargs="+", help="native kernel libraries (.so) to compare")
    p.add_argument("--model", action="append", required=True, type=Path, help="an exported model (repeatable)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--runs", type=int, default=5, help="runs per library per round")
    args = p.parse_args()
    print(f"{cpu_name()}, kernel path {kernel_path()}; batch {args.batch}, {args.threads} thread(s), "
          f"{args.rounds} rounds x {args.runs} runs; ms per run, median (min)\n")  # fmt: skip
    names = [Path(lib).name for lib in args.libraries]
    print("| model | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for model in args.model:
        times = _times(model, args.libraries, args.threads, args.batch, args.rounds, args.runs)
        cells = [f"{np.median(t):.3f} ({min(t):.3f})" for t in times]
        print(f"| {model.name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
