"""Running an exported model: an onnxruntime CPU session with qexport's input checks and, when built,
the native kernels of the qexport ops (qexport/native.py); without them the ops' ONNX function bodies
run and a one-line notice says so."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort

from .errors import QexportError
from .native import register
from .ops import uses_qexport_ops

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


class InferenceSession:
    """``InferenceSession(path, threads=None)``; ``run(x)`` returns the model's output array."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        if not os.path.isfile(path):
            raise QexportError(f"{path}: no such ONNX file")
        try:
            proto = onnx.load(str(path), load_external_data=False)
            onnx.checker.check_model(proto)
        except Exception as exc:  # ValidationError, DecodeError ...
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise QexportError(f"{path}: not a valid ONNX model ({first})") from None
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.native = register(options, quiet=not uses_qexport_ops(proto))
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        if len(self.session.get_inputs()) != 1:
            raise QexportError(f"{path}: models with several inputs are not supported")

    def run(self, x: np.ndarray) -> np.ndarray:
        expected = self.input.shape
        dtype = _NUMPY_TYPES.get(self.input.type)
        if dtype is None or x.dtype != dtype:
            raise QexportError(f"input has dtype {x.dtype}; the model takes {self.input.type}: convert it first")
        fixed = [d if isinstance(d, int) else None for d in expected]
        if x.ndim != len(fixed) or any(f is not None and f != s for f, s in zip(fixed, x.shape, strict=True)):
            shown = ["N" if f is None else str(f) for f in fixed]
            raise QexportError(f"input has shape {list(x.shape)}; the model takes [{', '.join(shown)}]")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise QexportError("input contains NaN or infinite values")
        return self.session.run(None, {self.input.name: x})[0]
