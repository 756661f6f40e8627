"""qexport: train LSQ / NIPQ / ASQ / POST quantized networks in PyTorch, deploy them as integer
ONNX models, and prove the deployed model computes what the trained one did."""

from . import zoo
from .check import check
from .checkpoint import load, save
from .errors import QexportError
from .export import export
from .quant import QuantConfig, calibrate, finalize, quantize, resource_loss
from .runtime import InferenceSession

__version__ = "0.1.0"

__all__ = [
    "InferenceSession",
    "QexportError",
    "QuantConfig",
    "__version__",
    "calibrate",
    "check",
    "export",
    "finalize",
    "load",
    "quantize",
    "resource_loss",
    "save",
    "zoo",
]
