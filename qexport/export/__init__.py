"""PyTorch -> ONNX export: QDQ for uniform quantizers, qexport custom ops (with their function
bodies) for ASQ steps and POST layers, BatchNorm folded, integer (optionally packed) weights."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from ..checkpoint import load
from ..errors import QexportError
from .lower import to_onnx

DEFAULT_OPSET = 21
MIN_OPSET = 21  # int4 types, LayerNormalization, Gelu (20)


def export(
    model: nn.Module | str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    *,
    input_shape: list[int] | None = None,
    opset: int = DEFAULT_OPSET,
    packed: bool = True,
    adds: str = "auto",
) -> Path:
    """Write the ONNX model of ``model`` (a quantized or float model, or a model.pt path) to ``out_path``.

    The input's shape (all but the batch dimension, which stays dynamic) comes from ``example_inputs``,
    else ``input_shape``, else the example stored with the model (zoo models and checkpoints have one).

    ``packed`` (default): uniform weights of 4 bits or fewer are stored as int4 (int2 at 2 bits from
    opset 25), so the file shrinks with the bit-width, and widened by a Cast that onnxruntime folds
    at load time: the convs still fuse into its int8 kernels (int4 QDQ itself is never fused, and
    int2 QDQ is fused into a kernel that rejects it).  ``packed=False`` stores int8.  POST weights
    are always 4-bit codes.

    ``adds``: how residual adds of two quantized tensors are written.  ``"fused"``: as the QDQ
    pattern onnxruntime fuses into its integer QLinearAdd (fastest; its requantization puts a few code
    pairs per million one code off the fake-quant model); ``"exact"``: as dequantize -> Sum ->
    quantize, which onnxruntime leaves unfused and which computes what the fake-quant model does;
    ``"auto"`` (default): exact in models with ASQ activations (a one-code difference moves a whole
    sample's step there), fused elsewhere."""
    from .. import __version__

    if not isinstance(model, nn.Module):
        model = load(model)
    model = model.eval()
    if opset < MIN_OPSET:
        raise QexportError(f"opset {opset} is too old: qexport exports at opset {MIN_OPSET} or newer")
    example = getattr(model, "qexport_example", None) or {}
    dtype = example.get("dtype", "float32")
    if example_inputs is None and input_shape is None and "inputs" in example:  # a captured model
        example_inputs = tuple(
            torch.zeros([1, *spec["shape"][1:]], dtype=getattr(torch, spec["dtype"])) for spec in example["inputs"])
    if example_inputs is None:
        if input_shape is None:
            if not example:
                raise QexportError("the model has no example input description: pass input_shape=[1, C, H, W]")
            input_shape = list(example["shape"])
        if dtype not in ("float32", "int64"):
            raise QexportError(f"exporting models with {dtype} inputs is not supported: use float32 or int64")
        example_inputs = torch.zeros([1, *input_shape[1:]], dtype=getattr(torch, dtype))
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    proto, emitter = to_onnx(model, args, opset, packed, adds)
    meta: dict[str, Any] = {
        "qexport_version": __version__,
        "quantization": json.dumps(getattr(model, "qexport_config", None)),
        "layers": json.dumps(emitter.layers),
        "codes": json.dumps(emitter.b.codes),
        "steps": json.dumps(emitter.b.steps),
        "code_offsets": json.dumps(emitter.b.code_offsets),
        "exact_adds": json.dumps(emitter.exact_adds),
        # the example each input was exported with: benchmarks feed its sizes on dynamic axes
        "example_shapes": json.dumps([list(a.shape) for a in args]),
    }
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, out)
    return out
