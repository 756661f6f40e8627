"""Training-side quantizers, the quantized layers and ``quantize()``."""

from .asq import AsqAdapter, AsqQuantizer
from .base import Quantizer, QuantSpec
from .config import QuantConfig
from .layers import QuantConv2d, QuantLinear
from .lsq import LsqQuantizer
from .nipq import NipqQuantizer
from .placement import apply_config, calibrate, quantize, quantizers
from .post import PostQuantizer
from .post2 import Post2Quantizer
from .pot import PotQuantizer
from .resource import average_bits, average_weight_bits, finalize, gbops, resource_loss

__all__ = [
    "AsqAdapter",
    "AsqQuantizer",
    "LsqQuantizer",
    "NipqQuantizer",
    "Post2Quantizer",
    "PostQuantizer",
    "PotQuantizer",
    "QuantConfig",
    "QuantConv2d",
    "QuantLinear",
    "QuantSpec",
    "Quantizer",
    "apply_config",
    "average_bits",
    "average_weight_bits",
    "calibrate",
    "finalize",
    "gbops",
    "quantize",
    "quantizers",
    "resource_loss",
]
