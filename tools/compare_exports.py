"""Before/after benchmark of an exporter change: the same checkpoints exported by an earlier commit
(in a git worktree, in a subprocess) and by this tree, timed interleaved in one process against the
FP32 model, with this tree's native kernels for both.

    python tools/compare_exports.py --before cae35ee            # zoo x (lsq w4a4, asq+post w4a4), b1 t1
    python tools/compare_exports.py --before cae35ee --models resnet20 --budget 1

Prints a markdown table: median ms per batch, speed-up over FP32 before and after, after / before."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import qexport
from qexport import bench, native, zoo
from tools.bench import MODELS, VARIANTS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VARIANTS = ["lsq w4a4", "asq+post w4a4"]
_EXPORT = "import sys, qexport; qexport.export(qexport.load(sys.argv[1]), sys.argv[2])"


def _worktree(commit: str, cache: Path) -> Path:
    tree = cache / f"before-{commit}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit], check=True,
                       capture_output=True)  # fmt: skip
    return tree


def _checkpoints(name: str, variants: list[str], cache: Path) -> dict[str, Path]:
    spec = MODELS[name]
    torch.manual_seed(0)
    model = zoo.create(name, **spec["kwargs"])
    calib = zoo.example_input(model, 8, size=spec["side"], seed=1)
    out = {"fp32": qexport.save(model, cache / f"{name}_fp32.pt")}
    for variant in variants:
        q = qexport.quantize(model, **VARIANTS[variant])
        qexport.calibrate(q, [calib])
        out[variant] = qexport.save(q.eval(), cache / f"{name}_{variant.replace(' ', '_')}.pt")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="the commit whose exporter is 'before'")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--budget", type=float, default=3.0, help="seconds of timed rounds per model")
    p.add_argument("--cache", default=str(ROOT / ".cache" / "compare"))
    args = p.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    tree = _worktree(args.before, cache)
    env_before = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}
    rows = []
    for name in args.models:
        points = _checkpoints(name, args.variants, cache)
        fp32 = cache / f"{name}_fp32.onnx"
        qexport.export(qexport.load(points["fp32"]), fp32)
        for variant in args.variants:
            stem = cache / f"{name}_{variant.replace(' ', '_')}"
            after = qexport.export(qexport.load(points[variant]), f"{stem}_after.onnx")
            before = Path(f"{stem}_before.onnx")
            done = subprocess.run([sys.executable, "-c", _EXPORT, str(points[variant]), str(before)], env=env_before,
                                  cwd=tree, capture_output=True, text=True)  # fmt: skip
            if done.returncode:
                raise SystemExit(f"{args.before} could not export {name} {variant}: {done.stderr.strip()[-300:]}")
            shape, _ = bench.input_shape(fp32)
            feeds = bench.random_feeds(args.batch, shape, bench.vocab_size(fp32))
            paths = {"fp32": fp32, "before": before, "after": after}
            t = {r.name: r.median_ms for r in bench.time_interleaved(paths, feeds, args.threads, args.budget)}
            rows.append([name, variant, f"{t['fp32']:.2f}", f"{t['before']:.2f}", f"{t['after']:.2f}",
                         f"{t['fp32'] / t['before']:.2f}x", f"{t['fp32'] / t['after']:.2f}x",
                         f"{t['before'] / t['after']:.3f}"])  # fmt: skip
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    cpu = bench.cpu_name()
    print(f"{cpu}, native kernels: {native.available()} (kernel path {bench.kernel_path()}), batch {args.batch}, "
          f"{args.threads} thread(s), before = {args.before}, after = this tree\n")  # fmt: skip
    header = ["model", "variant", "fp32 ms", "before ms", "after ms", "before vs fp32", "after vs fp32",
              "speed after / before"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
