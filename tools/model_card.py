#!/usr/bin/env python3
"""Print the model-card table of the checkpoints in models/ (markdown), from their metadata, and
with --eval measure each one here on the 10,000 CIFAR-10 test images: the PyTorch fake-quant model
on the CPU, and its ONNX export in onnxruntime (CPU, default optimisation) with the top-1 agreement.

    python tools/model_card.py                 # table from the checkpoints' training metadata
    python tools/model_card.py --eval          # + measured here (~40 s a model on 2 cores)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import qexport
from qexport import checkpoint, data
from qexport.evaluate import predictions
from qexport.export import export

# paper deltas to FP32 (ResNet-20, CIFAR-10; quantizers.md, Tables 4-5 of the ASQ/POST paper; FP32 92.6)
PAPER_DELTA = {
    ("lsq", "lsq", 4): -0.2,
    ("pot", "lsq", 4): -0.1,
    ("post", "lsq", 4): 0.1,
    ("lsq", "asq", 4): 0.2,
    ("post", "asq", 4): 0.4,
    ("lsq", "asq", 3): -0.9,
    ("lsq", "asq", 2): -1.4,
    ("post", "asq", 3): 0.4,
}


def measure_both(model: torch.nn.Module) -> tuple[float, tuple[float, float] | None]:
    """(fake-quant top-1, (ONNX top-1, top-1 agreement) or None when the model cannot export yet)
    on the 10,000 CIFAR-10 test images."""
    images, labels = data.cifar10("test")
    ours = predictions(model, images).numpy()
    fake = 100.0 * float((ours == labels.numpy()).mean())
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = export(model, Path(tmp) / "m.onnx")
        except qexport.QexportError:
            return fake, None
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        runs = [
            sess.run(None, {"input": data.normalize(images[i : i + 500]).numpy()})[0]
            for i in range(0, len(images), 500)
        ]
    theirs = np.concatenate(runs).argmax(1)
    return fake, (100.0 * float((theirs == labels.numpy()).mean()), 100.0 * float((theirs == ours).mean()))


def describe(path: Path, measure: bool, fp32_top1: float | None) -> list[str]:
    model = qexport.load(path)
    meta = model.qexport_meta
    cfg = getattr(model, "qexport_config", None)
    if cfg is None:
        method, bits, placement = "fp32", "32", "-"
        key = None
    else:
        method = f"{cfg['weight']} w / {cfg['act']} a" + (" (learned bits)" if cfg["learn_bits"] else "")
        bits = (
            str(cfg["bits"])
            if not cfg["learn_bits"]
            else f"avg {meta.get('history', [{}])[-1].get('avg_weight_bits', 0):.2f} w"
        )
        placement = cfg["placement"]
        key = (cfg["weight"], cfg["act"], cfg["bits"])
    trained = meta.get("test_top1")
    here = onnx_top1 = agree = ""
    if measure:
        torch.set_num_threads(2)
        here_top1, onnx_result = measure_both(model)
        here = f"{here_top1:.2f}"
        if onnx_result is None:
            onnx_top1 = agree = "not exportable yet"
        else:
            onnx_top1, agree = f"{onnx_result[0]:.2f}", f"{onnx_result[1]:.2f}"
    delta = f"{trained - fp32_top1:+.2f}" if (fp32_top1 is not None and trained is not None and cfg) else ""
    paper = PAPER_DELTA.get(key) if key and placement == "deployable" and not cfg["learn_bits"] else None
    return [
        path.name,
        method,
        bits,
        placement,
        str(meta.get("epochs", "")),
        str(meta.get("seed", "")),
        f"{trained:.2f}" if trained is not None else "",
        here,
        onnx_top1,
        agree,
        delta,
        f"{paper:+.1f}" if paper is not None else "",
        f"{meta.get('train_seconds', 0):.0f} s",
        str(meta.get("device", "")),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=str(Path(__file__).resolve().parents[1] / "models"))
    p.add_argument("--eval", action="store_true", help="re-measure top-1 on this machine")
    args = p.parse_args(argv)
    paths = sorted(Path(args.models).glob("*.pt"))
    fp32 = [payload for payload in map(checkpoint.read, paths) if payload["quant"] is None]
    fp32_top1 = fp32[0]["meta"].get("test_top1") if fp32 else None
    header = [
        "checkpoint",
        "method",
        "bits",
        "placement",
        "epochs",
        "seed",
        "top-1 (training run)",
        "fake-quant top-1 (CPU)",
        "ONNX top-1 (ORT CPU)",
        "top-1 agreement %",
        "delta to FP32 (training run)",
        "paper delta",
        "train time",
        "device",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for path in paths:
        print("| " + " | ".join(describe(path, args.eval, fp32_top1)) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
