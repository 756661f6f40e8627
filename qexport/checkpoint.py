"""The ``model.pt`` format: safe to load, self-describing.

A checkpoint is a dict of plain types and tensors, loadable with ``torch.load(weights_only=True)``:
architecture (a zoo name, or an importable ``module:function``) and its constructor arguments, the
quantization config, the state dict, the example input's shape and type, and free-form metadata.
Loading rebuilds the architecture, re-runs ``quantize`` with the stored config (deterministic) and
loads the tensors.  A file never makes qexport import code on its own say-so: zoo names load by
default, a ``module:function`` only when the caller passes the builder or ``trust=True``.
"""

from __future__ import annotations

import importlib
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import zoo
from .errors import QexportError
from .quant.config import QuantConfig
from .quant.placement import apply_config

FORMAT = "qexport-checkpoint"
FORMAT_VERSION = 1
_PLAIN = (int, float, str, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_plain(v, where)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise QexportError(f"{where}: key {k!r} is not a string; checkpoints hold plain types only")
            _check_plain(v, where)
        return
    raise QexportError(f"{where}: {type(value).__name__} is not a plain type (int, float, str, bool, list, dict)")


def _arch_of(model: nn.Module, arch: str | Callable[..., nn.Module] | None, kwargs: dict[str, Any] | None) -> dict:
    if arch is None and getattr(model, "qexport_program", None) is not None:
        # captured with torch.export: the program itself is the architecture
        return {"source": "program", "name": type(model).__name__, "kwargs": {},
                "modules": dict(getattr(model, "qexport_modules", {}) or {}),
                "outputs": getattr(model, "qexport_outputs", None)}  # fmt: skip
    if arch is None:
        stored = getattr(model, "qexport_arch", None)
        if stored is None:
            raise QexportError(
                "cannot tell which architecture this model is: quantize it with example_inputs= (captured with "
                "torch.export, saved self-contained), build it with qexport.zoo.create, or pass "
                "arch='package.module:function' (and arch_kwargs) to save()"
            )
        return {"source": stored.get("source", "zoo"), "name": stored["name"], "kwargs": dict(stored["kwargs"])}
    if callable(arch):
        arch = f"{arch.__module__}:{arch.__qualname__}"
    if arch in zoo.MODELS:
        return {"source": "zoo", "name": arch, "kwargs": dict(kwargs or {})}
    if ":" not in arch:
        raise QexportError(f"arch {arch!r} is neither a zoo name {zoo.names()} nor 'package.module:function'")
    return {"source": "import", "name": arch, "kwargs": dict(kwargs or {})}


def _example_of(model: nn.Module, example_inputs: Any) -> dict[str, Any] | None:
    if example_inputs is None:
        return getattr(model, "qexport_example", None)
    x = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    if not isinstance(x, torch.Tensor):
        raise QexportError("example_inputs must be a tensor or a tuple of tensors")
    example: dict[str, Any] = {"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch.")}
    old = getattr(model, "qexport_example", None) or {}
    for key in ("high", "inputs"):  # a captured model's record of every input stays
        if key in old:
            example[key] = old[key]
    return example


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: Any = None,
    *,
    arch: str | Callable[..., nn.Module] | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (float or quantized) to ``path`` in the qexport checkpoint format.

    ``arch``/``arch_kwargs`` name the builder when the model did not come from ``qexport.zoo``.
    ``meta`` holds plain-typed extras (training command, accuracy ...).  Written atomically.
    """
    from . import __version__

    record = _arch_of(model, arch, arch_kwargs)
    _check_plain(record, "architecture arguments")
    _check_plain(meta or {}, "meta")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "qexport_version": __version__,
        "arch": record,
        "quant": getattr(model, "qexport_config", None),
        "example": _example_of(model, example_inputs),
        "meta": dict(meta or {}),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    program = getattr(model, "qexport_program", None)
    if program is not None:  # the float program torch.export captured (its own safe format, as bytes)
        payload["program"] = torch.frombuffer(bytearray(program), dtype=torch.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def _looks_like_pickle(path: Path) -> bool:
    """A pickle of protocol 2 or newer opens with PROTO (0x80) and the protocol number; a zip (what
    torch.save writes) with 'PK'."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head[:2] == b"PK" or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def read(path: str | os.PathLike[str], *, trust: bool = False) -> dict[str, Any]:
    """The raw checkpoint dict, validated; a QexportError names what is wrong with a bad file."""
    path = Path(path)
    if not path.is_file():
        raise QexportError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError:
        if not _looks_like_pickle(path):  # garbage: --trust would not help, and must not be suggested
            raise QexportError(
                f"{path}: not a checkpoint (neither a torch.save archive nor a pickle); re-save it with "
                "qexport.save(model, path)"
            ) from None
        raise QexportError(
            f"{path}: holds Python objects that a safe load refuses (not a qexport checkpoint, or an "
            "arbitrary pickle); load it with trust=True (CLI: --trust) only if you trust where it came from"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, struct.error) as exc:
        first = str(exc).strip().split(". ")[0] if str(exc).strip() else type(exc).__name__
        raise QexportError(
            f"{path}: truncated or corrupt checkpoint ({first[:120]}); re-save or re-download it"
        ) from None
    if isinstance(payload, nn.Module) and trust:
        return {"module": payload}
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise QexportError(
            f"{path}: not a qexport checkpoint (a plain state dict or another tool's file?); "
            "write it with qexport.save(model, path)"
        )
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise QexportError(
            f"{path}: checkpoint format version {version} (written by qexport {payload.get('qexport_version')}), "
            f"this qexport reads version {FORMAT_VERSION}; use the matching qexport release"
        )
    return payload


def _build(record: dict[str, Any], arch: Callable[..., nn.Module] | None, trust: bool, path: Path,
           program: torch.Tensor | None = None) -> nn.Module:  # fmt: skip
    kwargs = record.get("kwargs", {})
    if record.get("source") == "program":
        from .quant.capture import load_program, restore_outputs, to_graph_module

        if not isinstance(program, torch.Tensor) or program.dtype != torch.uint8:
            raise QexportError(f"{path}: names a captured program but holds none; re-save it with qexport.save")
        data = program.numpy().tobytes()
        modules = record.get("modules")
        if not isinstance(modules, dict):
            raise QexportError(f"{path}: its captured program has no module record; re-save it with qexport.save")
        model = to_graph_module(load_program(data, str(path)), None, modules)
        restore_outputs(model, record.get("outputs"))
        model.qexport_program, model.qexport_outputs = data, record.get("outputs")
        return model
    if arch is not None:
        model = arch(**kwargs)
    elif record["source"] == "zoo":
        model = zoo.create(record["name"], **kwargs)
    elif trust:
        module_name, _, func = record["name"].partition(":")
        try:
            fn = importlib.import_module(module_name)
            for part in func.split("."):
                fn = getattr(fn, part)
        except (ImportError, AttributeError) as exc:
            raise QexportError(f"{path}: cannot import architecture {record['name']!r} ({exc})") from None
        model = fn(**kwargs)
    else:
        raise QexportError(
            f"{path}: the architecture is {record['name']!r}; qexport does not import code a file names: "
            "pass its builder (load(path, arch=function)) or trust=True (CLI: --trust) if you trust the file"
        )
    model.qexport_arch = dict(record)
    return model


def load(
    path: str | os.PathLike[str], *, arch: Callable[..., nn.Module] | None = None, trust: bool = False
) -> nn.Module:
    """Rebuild the model stored at ``path`` (in eval mode).

    ``arch``: the builder to use for a ``module:function`` architecture (required unless ``trust``).
    ``trust``: allow importing the named builder and loading arbitrary pickles (only for files you trust).
    """
    return build(read(path, trust=trust), path, arch=arch, trust=trust)


def build(
    payload: dict[str, Any], path: str | os.PathLike[str], *, arch: Callable[..., nn.Module] | None = None,
    trust: bool = False,
) -> nn.Module:  # fmt: skip
    """The model of a checkpoint dict that ``read`` returned (``path`` only names it in errors)."""
    path = Path(path)
    if "module" in payload:
        return payload["module"]
    model = _build(payload["arch"], arch, trust, path, payload.get("program"))
    inputs = (payload.get("example") or {}).get("inputs")
    if payload["arch"].get("source") == "program" and isinstance(inputs, list):
        from .quant.capture import name_inputs

        name_inputs(model, [str(spec.get("name")) for spec in inputs if isinstance(spec, dict)])
    if payload.get("quant") is not None:
        model = apply_config(model, QuantConfig.from_dict(payload["quant"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[1:2] or [str(exc)[:160]]
        raise QexportError(
            f"{path}: its tensors do not fit the architecture ({first[0].strip()}); was it saved by another version?"
        ) from None
    if payload.get("example") is not None:
        model.qexport_example = payload["example"]
    model.qexport_meta = payload.get("meta", {})
    return model.eval()
