"""Build of the optional native onnxruntime kernels (custom_ops/, C++17) as qexport/_qexport_ops*.so.

Built when onnxruntime's C API headers are found: $QEXPORT_ORT_INCLUDE, else .cache/onnxruntime/include
(what tools/fetch_ort_headers.sh puts there).  Without them, or if the compiler fails, qexport installs
without the library and the qexport ops run their ONNX function bodies.  No -march: the kernels pick
their instruction set at run time (custom_ops/isa.cc)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent


def _include() -> Path | None:
    for candidate in (os.environ.get("QEXPORT_ORT_INCLUDE"), ROOT / ".cache" / "onnxruntime" / "include"):
        if candidate and (Path(candidate) / "onnxruntime_c_api.h").is_file():
            return Path(candidate)
    return None


include = _include()
extensions = []
for stale in (ROOT / "qexport").glob("_qexport_ops*"):  # a failed build must not leave an old library in use
    stale.unlink()
if include is None:
    print("qexport: onnxruntime headers not found (run tools/fetch_ort_headers.sh or set QEXPORT_ORT_INCLUDE): "
          "building without the native kernels", file=sys.stderr)
else:
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "custom_ops").glob("*.cc"))
    extensions.append(Extension(
        "qexport._qexport_ops",
        sources=sources,
        include_dirs=[str(include), "custom_ops"],
        language="c++",
        extra_compile_args=["-std=c++17", "-O3", "-ffp-contract=off", "-fno-math-errno", "-fvisibility=hidden"],
        optional=True,  # a failed build installs qexport without the library
    ))

setup(ext_modules=extensions)
