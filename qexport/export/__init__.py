"""PyTorch -> ONNX export (work in progress: uniform LSQ / NIPQ quantizers and float layers of CNNs;
ASQ and POST custom operators, packed weights and transformer ops are not built yet)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import onnx
from torch import nn

from ..checkpoint import load
from ..errors import QexportError
from .emit import to_onnx

DEFAULT_OPSET = 21


def export(
    model: nn.Module | str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    input_shape: list[int] | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write the ONNX model of ``model`` (a quantized or float model, or a model.pt path) to ``out_path``."""
    from .. import __version__

    if not isinstance(model, nn.Module):
        model = load(model)
    model = model.eval()
    if input_shape is None:
        example = getattr(model, "qexport_example", None)
        if example is None:
            raise QexportError("the model has no example input description: pass input_shape=[1, C, H, W]")
        if example["dtype"] != "float32":
            raise QexportError(f"exporting models with {example['dtype']} inputs is not supported yet")
        input_shape = list(example["shape"])
    proto, emitter = to_onnx(model, input_shape, opset)
    meta: dict[str, Any] = {
        "qexport_version": __version__,
        "quantization": json.dumps(getattr(model, "qexport_config", None)),
        "layers": json.dumps(emitter.layers),
        "codes": json.dumps(emitter.b.codes),
    }
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, out)
    return out
