"""OpenVINO against onnxruntime on the CIFAR-10 test set, per trained checkpoint: each model.pt is
exported for onnxruntime and in its OpenVINO form (--target openvino); onnxruntime runs the first
(native kernels where built), OpenVINO's CPU plugin the second, on the same images.

    python tools/openvino_parity.py                       # every models/resnet20_*.pt but fp32, pot; 10,000 images
    python tools/openvino_parity.py resnet20_lsq_w4a4 --images 1000

One markdown row per checkpoint: top-1 agreement (and how many images differ), the largest logit
difference, top-1 against the labels in both, and the convs / matmuls OpenVINO runs in int8."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qexport import bench, data
from qexport.evaluate import subset
from qexport.export import export
from qexport.export.openvino import compile_model, precisions, run, write_openvino

MODELS = Path(__file__).resolve().parents[1] / "models"


def row(name: str, x: np.ndarray, labels: np.ndarray, tmp: Path) -> str:
    plain = export(MODELS / f"{name}.pt", tmp / f"{name}.onnx")
    form = write_openvino(plain, tmp / f"{name}_openvino.onnx")
    session = bench.make_session(plain, 2)
    compiled = compile_model(form, 2)
    ours, theirs = [], []
    for i in range(0, len(x), 500):
        theirs.append(session.run(None, {"input": x[i : i + 500]})[0])
        ours.append(run(compiled, {"input": x[i : i + 500]})[0])
    a, b = np.concatenate(theirs), np.concatenate(ours)
    same = a.argmax(1) == b.argmax(1)
    return (
        f"| {name} | {100 * same.mean():.2f} ({int((~same).sum())} of {len(x)}) | {np.abs(a - b).max():.3g} | "
        f"{100 * (a.argmax(1) == labels).mean():.2f} | {100 * (b.argmax(1) == labels).mean():.2f} | "
        f"{precisions(compiled).text()} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="*", help="names in models/ without .pt (default: all but fp32 and pot)")
    p.add_argument("--images", type=int, default=10000, help="test images, spread over the set (default: all)")
    args = p.parse_args()
    names = args.checkpoints or [
        f.stem for f in sorted(MODELS.glob("resnet20_*.pt")) if not f.stem.endswith(("_fp32", "_pot_w4a4"))
    ]
    torch.set_num_threads(1)  # the export traces small ops
    images, labels = subset(*data.cifar10("test"), args.images)
    x = data.normalize(images).numpy()
    print("| checkpoint | top-1 agreement % | largest logit difference | top-1 onnxruntime % | top-1 OpenVINO % "
          "| OpenVINO runs |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(row(name, x, labels.numpy(), Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
