"""File size of the exported ONNX model against the FP32 ONNX file, for every zoo model and storage.

    python tools/sizes.py            # prints a markdown table

Calibrated on random inputs (sizes do not depend on training).  ImageNet-layout models are exported
for 64x64 inputs, which does not change their weights.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import qexport
from qexport import zoo

VARIANTS = [  # column, quantize() arguments, opset, packed
    ("lsq 8-bit", {"bits": 8}, 21, True),
    ("lsq 4-bit int8", {"bits": 4}, 21, False),
    ("lsq 4-bit int4", {"bits": 4}, 21, True),
    ("lsq 2-bit int4", {"bits": 2}, 21, True),
    ("lsq 2-bit int2 (opset 25)", {"bits": 2}, 25, True),
    ("post 4-bit", {"bits": 4, "weight": "post"}, 21, True),
]


def main() -> None:
    print("| model | FP32 MB | " + " | ".join(v[0] for v in VARIANTS) + " |")
    print("|---|---|" + "---|" * len(VARIANTS))
    with tempfile.TemporaryDirectory() as tmp:
        for name in zoo.names():
            float_model = zoo.create(name).eval()
            side = 64 if name in ("resnet18", "mobilenetv2") else None
            example = zoo.example_input(float_model, 8, size=side)
            shape = [1, *example.shape[1:]]
            base = qexport.export(float_model, Path(tmp) / "fp32.onnx", input_shape=shape).stat().st_size
            cells = []
            for _label, kwargs, opset, packed in VARIANTS:
                model = qexport.quantize(float_model, **kwargs)
                qexport.calibrate(model, [example])
                out = qexport.export(model, Path(tmp) / "q.onnx", input_shape=shape, opset=opset, packed=packed)
                cells.append(f"{out.stat().st_size / base:.3f}x")
            print(f"| {name} | {base / 1e6:.2f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
