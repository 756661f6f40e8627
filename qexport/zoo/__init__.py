"""The model zoo: ``qexport.zoo.create(name, **kwargs)``.

Each model remembers its zoo name and constructor arguments (``qexport_arch``) and the shape and
type of its input (``qexport_example``), which ``quantize`` carries over and checkpoints store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import QexportError
from .mobilenetv2 import mobilenetv2
from .resnet import resnet18, resnet20
from .transformer import transformer


@dataclass(frozen=True)
class ZooEntry:
    build: Callable[..., nn.Module]
    example: Callable[[dict[str, Any]], dict[str, Any]]  # kwargs -> {"shape", "dtype", "high"}


def _image(size: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda kw: {"shape": [1, 3, size, size], "dtype": "float32"}


def _tokens(kw: dict[str, Any]) -> dict[str, Any]:
    return {"shape": [1, kw.get("seq_len", 128)], "dtype": "int64", "high": kw.get("vocab_size", 1000)}


MODELS: dict[str, ZooEntry] = {
    "resnet20": ZooEntry(resnet20, _image(32)),
    "resnet18": ZooEntry(resnet18, _image(224)),
    "mobilenetv2": ZooEntry(mobilenetv2, _image(224)),
    "transformer": ZooEntry(transformer, _tokens),
}


def names() -> list[str]:
    return sorted(MODELS)


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build zoo model ``name`` with constructor ``kwargs`` (e.g. ``num_classes=10``)."""
    if name not in MODELS:
        raise QexportError(f"unknown zoo model {name!r}: choose one of {names()}")
    entry = MODELS[name]
    try:
        model = entry.build(**kwargs)
    except TypeError as exc:
        raise QexportError(f"zoo model {name!r} does not take these arguments: {exc}") from None
    model.qexport_arch = {"name": name, "kwargs": dict(kwargs)}
    model.qexport_example = entry.example(kwargs)
    return model


def example_input(model: nn.Module, batch: int = 1, *, size: int | None = None, seed: int = 0) -> torch.Tensor:
    """A random input for ``model`` (a zoo model, or one quantized from it): images ~ N(0, 1), or
    token ids.  ``size`` overrides the image side (ImageNet-layout models run at any size)."""
    example = getattr(model, "qexport_example", None)
    if example is None:
        raise QexportError("this model has no example input description: pass example inputs explicitly")
    gen = torch.Generator().manual_seed(seed)
    shape = [batch, *example["shape"][1:]]
    if example["dtype"] == "int64":
        return torch.randint(0, example["high"], shape, generator=gen)
    if size is not None:
        shape[-2:] = [size, size]
    return torch.randn(shape, generator=gen)


def example_inputs(model: nn.Module, batch: int = 1, *, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs for every input of ``model`` (a captured model records each: name, shape,
    dtype, and for integer inputs the range seen at capture), in forward()'s order."""
    example = getattr(model, "qexport_example", None)
    if example is None or "inputs" not in example:
        return (example_input(model, batch, seed=seed),)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for spec in example["inputs"]:
        shape = [batch, *spec["shape"][1:]]
        dtype = getattr(torch, spec["dtype"])
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=gen).to(dtype))
        else:
            out.append(torch.randint(0, int(spec.get("high", 2)), shape, generator=gen).to(dtype))
    return tuple(out)


__all__ = [
    "MODELS", "create", "example_input", "example_inputs", "mobilenetv2", "names", "resnet18", "resnet20",
    "transformer",
]  # fmt: skip
