#!/usr/bin/env python3
"""Print the model-card table of the checkpoints in models/ (markdown), from their metadata, and
with --eval measure each one here on the 10,000 CIFAR-10 test images: the PyTorch fake-quant model
on the CPU, and its ONNX export (what ``qexport model.pt --format onnx`` writes) in onnxruntime
twice, once with the qexport ops as their ONNX function bodies (plain onnxruntime) and once with
the native kernels registered (qexport.InferenceSession), each with its top-1 agreement with the
fake-quant model.

    python tools/model_card.py                           # table from the checkpoints' metadata
    python tools/model_card.py --eval                    # + measured here (~1 min a model, 2 cores)
    python tools/model_card.py --eval models/resnet20_lsq_w4a4.pt [--data cifar10-jpeg.tar.gz]
    python tools/model_card.py --eval --ort-level basic   # ONNX columns without the QDQ fusions
    python tools/model_card.py --eval --adds exact        # exported with exact residual adds
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import qexport
from qexport import checkpoint, data, native
from qexport.bench import LEVELS
from qexport.evaluate import predictions
from qexport.export import export
from qexport.export.emit import ADDS

# paper deltas to FP32 (ResNet-20, CIFAR-10; quantizers.md, Tables 4-5 of the ASQ/POST paper; FP32 92.6;
# LSQ at 2 bits as quoted in issue 4)
PAPER_DELTA = {
    ("lsq", "lsq", 2): -1.6,
    ("lsq", "lsq", 4): -0.2,
    ("pot", "lsq", 4): -0.1,
    ("post", "lsq", 4): 0.1,
    ("lsq", "asq", 4): 0.2,
    ("post", "asq", 4): 0.4,
    ("lsq", "asq", 3): -0.9,
    ("lsq", "asq", 2): -1.4,
    ("post", "asq", 3): 0.4,
}


MODES = ("function bodies", "native kernels")  # how onnxruntime runs the qexport ops


@dataclass
class Measured:
    """Top-1 on the test set: fake-quant, and per ONNX runtime mode (top-1, agreement with fake-quant)."""

    fake: float
    onnx_runs: dict[str, tuple[float, float]] | None  # None: the model does not export


def onnx_predictions(path: Path, images: torch.Tensor, native_kernels: bool, level: str = "all") -> np.ndarray:
    """Classes predicted by onnxruntime (CPU, graph optimisation ``level``) in batches of 500."""
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.log_severity_level = 3
    if native_kernels and not native.register(options, quiet=True):
        raise qexport.QexportError(
            "the native kernels are not built: pip install -e . after tools/fetch_ort_headers.sh"
        )
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    runs = [
        sess.run(None, {"input": data.normalize(images[i : i + 500]).numpy()})[0] for i in range(0, len(images), 500)
    ]
    return np.concatenate(runs).argmax(1)


def measure(model: torch.nn.Module, archive: str | None, level: str = "all", adds: str = "auto") -> Measured:
    """Fake-quant top-1 and, per runtime mode, (ONNX top-1, top-1 agreement) on the test set."""
    images, labels = data.cifar10("test", archive)
    truth = labels.numpy()
    ours = predictions(model, images).numpy()
    fake = 100.0 * float((ours == truth).mean())
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = export(model, Path(tmp) / "m.onnx", adds=adds)
        except qexport.QexportError:
            return Measured(fake, None)
        runs = {}
        for mode in MODES if native.available() else MODES[:1]:
            theirs = onnx_predictions(path, images, native_kernels=mode == MODES[1], level=level)
            runs[mode] = (100.0 * float((theirs == truth).mean()), 100.0 * float((theirs == ours).mean()))
    return Measured(fake, runs)


def describe(
    path: Path,
    model: torch.nn.Module,
    measure_here: bool,
    archive: str | None,
    fp32_top1: float | None,
    level: str = "all",
    adds: str = "auto",
) -> list[str]:
    meta = model.qexport_meta
    cfg = getattr(model, "qexport_config", None)
    if cfg is None:
        method, bits, placement, weight_range = "fp32", "32", "-", "-"
        key = None
    else:
        method = f"{cfg['weight']} w / {cfg['act']} a" + (" (learned bits)" if cfg["learn_bits"] else "")
        if meta.get("distill"):
            method += f" + KD from {Path(meta['distill']['teacher']).name}"
        bits = (
            str(cfg["bits"])
            if not cfg["learn_bits"]
            else f"avg {meta.get('history', [{}])[-1].get('avg_weight_bits', 0):.2f} w"
        )
        placement = cfg["placement"]
        weight_range = cfg["weight_range"]
        key = (cfg["weight"], cfg["act"], cfg["bits"])
    trained = meta.get("test_top1")
    cells = [""] * 5
    if measure_here:
        torch.set_num_threads(2)
        result = measure(model, archive, level, adds)
        cells = [f"{result.fake:.2f}"] + ["not exportable yet"] * 4
        if result.onnx_runs is not None:
            for i, mode in enumerate(MODES):
                run = result.onnx_runs.get(mode)
                cells[1 + 2 * i : 3 + 2 * i] = [f"{v:.2f}" for v in run] if run else ["library not built", ""]
    delta = f"{trained - fp32_top1:+.2f}" if (fp32_top1 is not None and trained is not None and cfg) else ""
    paper = PAPER_DELTA.get(key) if key and placement == "deployable" and not cfg["learn_bits"] else None
    return [
        path.name,
        method,
        bits,
        placement,
        weight_range,
        str(meta.get("epochs", "")),
        str(meta.get("seed", "")),
        f"{trained:.2f}" if trained is not None else "",
        *cells,
        delta,
        f"{paper:+.1f}" if paper is not None else "",
        f"{meta.get('train_seconds', 0):.0f} s",
        str(meta.get("device", "")),
    ]


def learned_bits_table(path: Path, model: torch.nn.Module) -> list[str]:
    """Markdown rows (layer, weight bits, activation bits) of a checkpoint trained with learned
    NIPQ bit-widths; empty for any other checkpoint."""
    cfg = getattr(model, "qexport_config", None)
    bits = model.qexport_meta.get("nipq_bits", {})
    if cfg is None or not cfg["learn_bits"] or not bits:
        return []
    layers = dict.fromkeys(k.rsplit(".", 1)[0] for k in bits)
    rows = [f"Learned bit-widths of {path.name}:", "", "| layer | weight bits | activation bits |", "|---|---|---|"]
    for layer in layers:
        rows.append(f"| {layer} | {bits.get(layer + '.weight_quant', '-')} | {bits.get(layer + '.act_quant', '-')} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="*", help="checkpoints to describe (default: every *.pt in --models)")
    p.add_argument("--models", default=str(Path(__file__).resolve().parents[1] / "models"))
    p.add_argument("--eval", action="store_true", help="re-measure top-1 on this machine")
    p.add_argument("--data", help="path of cifar10-jpeg.tar.gz (default: ../shared/data)")
    level_help = "onnxruntime graph optimisation of the ONNX columns (default: all, as onnxruntime)"
    p.add_argument("--ort-level", choices=sorted(LEVELS), default="all", help=level_help)
    p.add_argument("--adds", choices=ADDS, default="auto", help="residual adds of the export (qexport export --adds)")
    args = p.parse_args(argv)
    models = Path(args.models)
    paths = [Path(c) for c in args.checkpoints] or sorted(models.glob("*.pt"))
    fp32 = [payload for payload in map(checkpoint.read, sorted(models.glob("*.pt"))) if payload["quant"] is None]
    fp32_top1 = fp32[0]["meta"].get("test_top1") if fp32 else None
    header = [
        "checkpoint",
        "method",
        "bits",
        "placement",
        "LSQ weight codes",
        "epochs",
        "seed",
        "top-1 (training run)",
        "fake-quant top-1 (CPU)",
        "ONNX top-1 (function bodies)",
        "agreement %",
        "ONNX top-1 (native kernels)",
        "agreement %",
        "delta to FP32 (training run)",
        "paper delta",
        "train time",
        "device",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    bit_tables = []
    for path in paths:
        model = qexport.load(path)
        cells = describe(path, model, args.eval, args.data, fp32_top1, args.ort_level, args.adds)
        print("| " + " | ".join(cells) + " |", flush=True)
        bit_tables.append(learned_bits_table(path, model))
    for rows in filter(None, bit_tables):
        print("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
