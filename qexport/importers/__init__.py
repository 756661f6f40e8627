"""Import checkpoints trained with the papers' official code (ECoLab-POSTECH/NIPQ, SENGEL13/ASQ-POST).

``import_checkpoint(path, "nipq" | "asq-post", ...)`` reads the file safely (``weights_only``, on the
CPU), recognises the architecture from its key names and shapes, maps every tensor onto the zoo model
quantized with the placement the official code used, and returns the qexport model with notes on
what the file did not say and how qexport's eval differs from the official one (measured, never
silently changed).  ``qexport import`` on the command line writes it with ``qexport.save``.
See ../shared/research/official-code.md for the two formats.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import zoo
from ..errors import QexportError
from ..quant.layers import QuantConv2d

SOURCES = ("nipq", "asq-post")


@dataclass
class Imported:
    """An imported model (eval mode) and what the import found out (one line each)."""

    model: nn.Module
    source: str
    arch: str
    notes: list[str] = field(default_factory=list)


@dataclass
class OfficialFile:
    """The tensors of an official checkpoint (``module.`` stripped, in file order) and its other entries."""

    path: Path
    tensors: dict[str, Tensor]
    extras: dict[str, Any]


def read_official(path: str | os.PathLike[str]) -> OfficialFile:
    """Load an official checkpoint: a bare state_dict, or a dict holding it under ``model`` or
    ``state_dict``; safe loading only (every official format loads with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise QexportError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise QexportError(
            f"{path}: holds Python objects a safe load refuses (official checkpoints hold none)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().split(". ")[0][:120] or type(exc).__name__
        raise QexportError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    if not isinstance(payload, dict):
        raise QexportError(f"{path}: holds a {type(payload).__name__}, not a state_dict or a checkpoint dict")
    extras: dict[str, Any] = {}
    sd: Any = payload
    for key in ("state_dict", "model"):
        if isinstance(payload.get(key), dict):
            sd = payload[key]
            extras = {k: v for k, v in payload.items() if k != key}
            break
    tensors = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not tensors:
        raise QexportError(f"{path}: holds no tensors (expected a state_dict, bare or under 'model' / 'state_dict')")
    prefixed = all(k.startswith("module.") for k in tensors)
    if prefixed:  # saved from a DataParallel model
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return OfficialFile(path, tensors, extras)


def load_mapped(
    model: nn.Module, mapped: dict[str, Tensor], what: str, official_name: Callable[[str], str] | None = None
) -> None:
    """Load ``mapped`` into ``model`` strictly; a missing or surplus tensor is one error line (a missing
    one named as the official file would name it, by ``official_name``)."""
    own = model.state_dict()
    missing = [k for k in own if k not in mapped]
    unexpected = [k for k in mapped if k not in own]
    if missing or unexpected:
        part = ""
        if missing:
            names = list(dict.fromkeys(official_name(k) for k in missing)) if official_name else missing
            part = f"lacks {len(names)} tensor(s), e.g. '{names[0]}'"
        if unexpected:
            part += ("; " if part else "") + f"has {len(unexpected)} unknown, e.g. '{unexpected[0]}'"
        raise QexportError(f"{what}: the mapped checkpoint {part}: a different architecture or a partial file?")
    for k, v in mapped.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise QexportError(f"{what}: '{k}' has shape {list(v.shape)}, the architecture needs {list(own[k].shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in mapped.items()})


@contextmanager
def official_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate ``model`` as the official code does: each conv on its fake-quantized input and weight
    (a float convolution) followed by its BatchNorm in float, instead of qexport's deployed integer conv
    (BatchNorm folded, the bias on the accumulator grid for a constant input step)."""
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    for conv in convs:
        conv.integer_eval = lambda: False  # type: ignore[method-assign]
    try:
        yield model
    finally:
        for conv in convs:
            del conv.integer_eval


def measure_eval_difference(model: nn.Module, example: Tensor) -> str:
    """One line: how far qexport's eval of ``model`` is from the official eval on ``example``."""
    with torch.no_grad():
        ours = model.eval()(example)
        with official_eval(model):
            theirs = model(example)
    diff = float((ours - theirs).abs().max())
    ref = float(theirs.abs().max()) or 1.0
    agree = int((ours.argmax(1) == theirs.argmax(1)).sum())
    return (
        f"qexport's eval (integer conv, BatchNorm folded) vs the official eval (fake-quant conv, float BatchNorm) "
        f"on {len(example)} random inputs: logits differ by {diff:.3g} ({100 * diff / ref:.2f}% of the largest), "
        f"top-1 agrees on {agree}/{len(example)}; re-measure accuracy on your data"
    )


def measure_layer_differences(model: nn.Module, example: Tensor) -> str | None:
    """One line: per conv that qexport evaluates as its deployed integer conv, fed the same input, how far
    its output is from the official fake-quant conv + float BatchNorm (relative to the largest output).
    Logits of a low-bit network amplify any difference; this shows where it comes from.  None: no such conv."""
    rel: dict[str, float] = {}
    names = {m: n for n, m in model.named_modules()}

    def hook(conv: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        assert isinstance(conv, QuantConv2d)
        if not (conv.integer_eval() and conv._deployable_now()):
            return
        theirs = conv._conv_forward(*conv.quantized_operands(inputs[0]), conv.bias)
        if conv.folded_bn is not None:
            theirs = nn.BatchNorm2d.forward(conv.folded_bn, theirs)
        rel[names[conv]] = float((out - theirs).abs().max()) / (float(theirs.abs().max()) or 1.0)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, QuantConv2d)]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    if not rel:
        return None
    worst = max(rel, key=rel.__getitem__)
    median = sorted(rel.values())[len(rel) // 2]
    return (
        f"per conv, fed the same input: qexport's deployed conv vs the official fake-quant conv + float BatchNorm "
        f"differ by up to {100 * rel[worst]:.3g}% of the largest output (at '{worst}'), median {100 * median:.3g}%"
    )


def import_checkpoint(
    path: str | os.PathLike[str],
    source: str,
    *,
    bits: int | None = None,
    arch: str | None = None,
    act: bool | None = None,
    weights: str | None = None,
    measure: bool = True,
    image_size: int = 224,
) -> Imported:
    """Import an official checkpoint.

    source: ``nipq`` (ECoLab-POSTECH/NIPQ MobileNetV2) or ``asq-post`` (SENGEL13/ASQ-POST ResNet-18).
    bits: the ASQ-POST bit-width when the file does not name it (``arch`` entry ``resnet18_4``).
    arch: the zoo architecture expected (checked against the file's keys).
    act: NIPQ only: whether activation quantization was on (``--a_scale > 0``); the file cannot say.
    weights: ASQ-POST only: ``post`` (Q_ResNet18_PA) or ``lsq`` (Q_ResNet18_Asq) when the key order
    does not tell.  measure: report how qexport's eval differs from the official one (on random
    inputs).  image_size: the input side the saved model records (export and check use it).
    """
    if source not in SOURCES:
        raise QexportError(f"unknown checkpoint source {source!r}: choose one of {', '.join(SOURCES)}")
    if not 32 <= image_size <= 1024:
        raise QexportError(f"image_size={image_size}: use 32 to 1024 pixels")
    flags = {"nipq": (("--bits", bits), ("--asq-weights", weights)), "asq-post": (("--nipq-act", act),)}[source]
    for flag, value in flags:
        if value is not None:
            raise QexportError(f"{flag} does not apply to --from {source} checkpoints")
    official = read_official(path)
    if source == "nipq":
        from .nipq import import_nipq

        result = import_nipq(official, arch=arch, act=act)
    else:
        from .asq_post import import_asq_post

        result = import_asq_post(official, arch=arch, bits=bits, weights=weights)
    result.model.qexport_example = {"shape": [1, 3, image_size, image_size], "dtype": "float32"}
    if measure:
        example = zoo.example_input(result.model, batch=4, seed=0)
        result.notes.append(measure_eval_difference(result.model, example))
        per_layer = measure_layer_differences(result.model, example)
        if per_layer is not None:
            result.notes.append(per_layer)
        if source == "nipq":
            from .nipq import formula_difference

            result.notes.append(formula_difference(result.model, example))
    return result


__all__ = ["SOURCES", "Imported", "OfficialFile", "import_checkpoint", "load_mapped", "official_eval", "read_official"]
