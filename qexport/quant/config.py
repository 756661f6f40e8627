"""The quantization configuration: a dataclass that round-trips through the checkpoint as plain
types, and the factories that turn a method name into quantizer modules."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from ..errors import QexportError
from .asq import AsqQuantizer
from .base import Quantizer
from .lsq import LsqQuantizer
from .nipq import NipqQuantizer
from .post import PostQuantizer
from .post2 import Post2Quantizer
from .pot import PotQuantizer

WEIGHT_METHODS = ("lsq", "nipq", "post", "pot", "post2")
ACT_METHODS = ("lsq", "nipq", "asq")
PLACEMENTS = ("deployable", "paper")
WEIGHT_RANGES = ("full", "narrow")
OVERRIDE_KEYS = ("weight", "act", "bits", "weight_bits", "act_bits")


def _check_bits(bits: int, what: str, hi: int = 8) -> None:
    if not isinstance(bits, int) or not 2 <= bits <= hi:
        raise QexportError(f"{what}={bits!r} is not supported: use an integer from 2 to {hi}")


@dataclass
class QuantConfig:
    """How ``qexport.quantize`` quantizes a model (see its docstring for each field)."""

    weight: str | None = "lsq"
    act: str | None = "lsq"
    bits: int = 4
    weight_bits: int | None = None
    act_bits: int | None = None
    placement: Literal["deployable", "paper"] = "deployable"
    first_last_bits: int | None = 8
    glue_bits: int = 8
    per_channel: bool = True
    learn_bits: bool = False
    max_bits: int = 8
    overrides: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    weight_range: Literal["full", "narrow"] = "full"

    def __post_init__(self) -> None:
        if self.weight is not None and self.weight not in WEIGHT_METHODS:
            raise QexportError(f"unknown weight method {self.weight!r}: choose one of {WEIGHT_METHODS} or None")
        if self.act is not None and self.act not in ACT_METHODS:
            raise QexportError(f"unknown activation method {self.act!r}: choose one of {ACT_METHODS} or None")
        if self.placement not in PLACEMENTS:
            raise QexportError(f"unknown placement {self.placement!r}: choose one of {PLACEMENTS}")
        if self.weight_range not in WEIGHT_RANGES:
            raise QexportError(f"unknown weight_range {self.weight_range!r}: choose one of {WEIGHT_RANGES}")
        _check_bits(self.bits, "bits")
        for name in ("weight_bits", "act_bits", "first_last_bits"):
            if getattr(self, name) is not None:
                _check_bits(getattr(self, name), name)
        _check_bits(self.glue_bits, "glue_bits")
        _check_bits(self.max_bits, "max_bits", hi=14)
        for pattern, spec in self.overrides.items():
            if spec is None:
                continue
            bad = set(spec) - set(OVERRIDE_KEYS)
            if bad:
                raise QexportError(f"override {pattern!r} has unknown keys {sorted(bad)}: allowed are {OVERRIDE_KEYS}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise QexportError(f"quantization config has unknown fields {sorted(unknown)}: written by a newer qexport?")
        # checkpoints written before weight_range existed trained narrow-range LSQ weights
        return cls(**{"weight_range": "narrow", **data})


@dataclass(frozen=True)
class LayerPlan:
    """What one Conv2d / Linear gets."""

    weight: str | None
    act: str | None
    weight_bits: int
    act_bits: int


def make_weight_quantizer(method: str, bits: int, out_channels: int, cfg: QuantConfig, fixed: bool) -> Quantizer:
    if method == "lsq":
        narrow = cfg.weight_range == "narrow"
        return LsqQuantizer(bits, True, "weight", narrow=narrow, channels=out_channels if cfg.per_channel else 0)
    if method == "nipq":
        learn = cfg.learn_bits and not fixed
        return NipqQuantizer(bits, True, "weight", learn_bits=learn, max_bits=max(cfg.max_bits, bits))
    if method == "post":
        return PostQuantizer(bits, out_channels)
    if method == "pot":
        return PotQuantizer(bits, out_channels)
    if method == "post2":
        return Post2Quantizer(bits, out_channels)
    raise QexportError(f"unknown weight method {method!r}")


def make_act_quantizer(
    method: str, bits: int, signed: bool, channels: int, pool: bool, cfg: QuantConfig, fixed: bool
) -> Quantizer:
    if method == "lsq":
        return LsqQuantizer(bits, signed, "act")
    if method == "nipq":
        learn = cfg.learn_bits and not fixed
        return NipqQuantizer(bits, signed, "act", learn_bits=learn, max_bits=max(cfg.max_bits, bits))
    if method == "asq":
        return AsqQuantizer(bits, signed, channels, pool=pool)
    raise QexportError(f"unknown activation method {method!r}")
