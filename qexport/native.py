"""The native onnxruntime kernels of the qexport ops (C++ in ``custom_ops/``, built by ``pip install``
when onnxruntime's headers are found).  A registered kernel replaces the model's ONNX function of the
same name; without the library the function bodies run (exact, slower).

Environment: ``QEXPORT_NATIVE_LIB`` points at another build of the library (tools/sanitize_build.sh
makes an AddressSanitizer + UBSan one, docs/FUZZ.md says how to load it); ``QEXPORT_NATIVE=0``
disables it; ``QEXPORT_ISA`` = ``scalar`` | ``avx2`` | ``avx512vnni`` forces a kernel path (the
library refuses, with an error status, a path the CPU lacks)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import onnxruntime as ort

from .errors import QexportError

LIBRARY_STEM = "_qexport_ops"
_notified = False


def library_path() -> Path | None:
    """The native library to register, or None when there is none (or QEXPORT_NATIVE=0)."""
    if os.environ.get("QEXPORT_NATIVE", "1") == "0":
        return None
    override = os.environ.get("QEXPORT_NATIVE_LIB")
    if override:
        if not os.path.isfile(override):
            raise QexportError(
                f"QEXPORT_NATIVE_LIB={override}: no such file (unset it or point it at the built library)"
            )
        return Path(override)
    here = Path(__file__).resolve().parent
    found = sorted(here.glob(f"{LIBRARY_STEM}*.so")) + sorted(here.glob(f"{LIBRARY_STEM}*.pyd"))
    return found[0] if found else None


def available() -> bool:
    return library_path() is not None


def register(options: ort.SessionOptions, quiet: bool = False) -> bool:
    """Register the native kernels on ``options``; True when they are.  Without the library a
    one-line notice (once per process, unless ``quiet``) says the function bodies run instead."""
    global _notified
    path = library_path()
    if path is None:
        if not quiet and not _notified and os.environ.get("QEXPORT_NATIVE", "1") != "0":
            print(
                "qexport: native kernels not built (custom_ops/, see README): the qexport ops run their "
                "ONNX function bodies (exact, slower)",
                file=sys.stderr,
            )
            _notified = True
        return False
    options.register_custom_ops_library(str(path))
    return True
