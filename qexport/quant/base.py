"""What every quantizer shares: initialisation (lazy, from data, or by calibration), the
uninitialised-use error, and the explicit description an exporter reads (`QuantSpec`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ..errors import QexportError
from .core import CodeRange, sync_mean

Role = Literal["weight", "act"]
SpecKind = Literal["uniform", "asq", "levels"]


@dataclass(frozen=True)
class QuantSpec:
    """What an exporter needs to know about one quantizer, without touching its internals.

    ``scale`` is the float32 step the eval forward divides by: shape ``[]`` (per tensor) or
    ``[C]`` along ``axis`` 0 (per output channel).  For ``kind == "levels"`` (POST / POT) it is the
    per-channel ``alpha`` and codes are signed level indices (see ``post.py``).  For ``kind == "asq"``
    the step of sample n is ``scale * adapter(x)[n]``.
    """

    method: str
    kind: SpecKind
    role: Role
    bits: int
    signed: bool
    qmin: int
    qmax: int
    scale: Tensor
    axis: int | None
    base: float | None = None
    adapter: nn.Module | None = None


class Quantizer(nn.Module):
    """Base of every qexport quantizer.

    Subclasses implement ``init_values(x)`` (the parameter values to initialise from a tensor),
    ``apply_init(values)``, ``fake_quant(x)`` (the training/eval forward) and ``codes(x)``.
    """

    method: ClassVar[str] = ""
    kind: ClassVar[SpecKind] = "uniform"

    def __init__(self, role: Role) -> None:
        super().__init__()
        self.role: Role = role
        self.path = ""  # the module path in the quantized model, for error messages
        self.calibrating = False
        self._calib_sum: dict[str, Tensor] = {}
        self._calib_count = 0
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.sample_numel = 0
        # "paper": each method's published init rule; "mse": uniform steps that minimise the
        # quantization error of the data (what calibrate() uses by default)
        self.init_method: Literal["paper", "mse"] = "paper"
        self.ready = False  # a Python mirror of `initialized`: reading a CUDA buffer would sync every step

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.refresh_flags()

    def refresh_flags(self) -> None:
        """Re-read the Python mirrors of the flag buffers (after loading a state dict)."""
        self.ready = bool(self.initialized)

    def mark_initialized(self) -> None:
        self.initialized.fill_(True)
        self.ready = True

    # -- to implement ---------------------------------------------------------------------------
    def init_values(self, x: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def apply_init(self, values: dict[str, Tensor]) -> None:
        raise NotImplementedError

    def fake_quant(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def codes(self, x: Tensor) -> Tensor:
        """Integer codes (as a float tensor) the eval forward produces for ``x``."""
        raise NotImplementedError

    def describe(self) -> QuantSpec:
        raise NotImplementedError

    def integer_weight(self, w: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(codes, scale)`` with ``codes * scale`` equal to the quantized weight in float32 (codes
        integer, scale per output channel ``[C]``): the form an integer kernel runs.  Uniform
        quantizers have it; POST (sqrt-2 levels) does not (None)."""
        if self.kind != "uniform":
            return None
        scale = self.describe().scale.reshape(-1)
        if scale.numel() == 1:
            scale = scale.expand(w.shape[0]).clone()
        return self.codes(w), scale

    def _spec(
        self, kind: Literal["uniform", "asq", "levels"], scale: Tensor, axis: int | None, **extra: Any
    ) -> QuantSpec:
        """A QuantSpec of this quantizer (checks it is initialised) with a float32 copy of ``scale``."""
        self.require_initialized()
        r = self.code_range
        return QuantSpec(
            method=self.method,
            kind=kind,
            role=self.role,
            bits=r.bits,
            signed=r.signed,
            qmin=r.qmin,
            qmax=r.qmax,
            scale=scale.detach().float().clone(),
            axis=axis,
            **extra,
        )

    @property
    def code_range(self) -> CodeRange:
        raise NotImplementedError

    # -- shared machinery -----------------------------------------------------------------------
    def name(self) -> str:
        return self.path or type(self).__name__

    def require_initialized(self) -> None:
        if not self.ready:
            raise QexportError(
                f"quantizer '{self.name()}' ({self.method}) has no scale yet: run "
                "qexport.calibrate(model, batches) or train the model before evaluating or exporting it"
            )

    def initialize_from(self, x: Tensor) -> None:
        """Initialise from one tensor (averaged over ranks under torch.distributed)."""
        values = {k: sync_mean(v.detach()) for k, v in self.init_values(x).items()}
        with torch.no_grad():
            self.apply_init(values)
        self.mark_initialized()

    def start_calibration(self) -> None:
        self.calibrating = True
        self._calib_sum = {}
        self._calib_count = 0

    def finish_calibration(self) -> None:
        self.calibrating = False
        if self._calib_count == 0:
            return  # never reached by the calibration data (a branch not taken): keep its state
        values = {k: sync_mean(v / self._calib_count) for k, v in self._calib_sum.items()}
        with torch.no_grad():
            self.apply_init(values)
        self.mark_initialized()
        self._calib_sum = {}

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            if self.role == "weight" and self._calib_count:
                return x  # the weight is the same in every batch: observe it once
            for k, v in self.init_values(x).items():
                self._calib_sum[k] = self._calib_sum.get(k, 0) + v.detach()
            self._calib_count += 1
            return x
        if not self.ready:
            if not self.training:
                self.require_initialized()
            self.initialize_from(x)
        if self.role == "act" and x.dim() > 1:
            self.sample_numel = x.numel() // x.shape[0]  # read by the NIPQ average-bit loss
        if not self.training and not bool(torch.isfinite(x).all()):
            raise QexportError(f"quantizer '{self.name()}' received NaN or infinite values")
        return self.fake_quant(x)

    def extra_repr(self) -> str:
        r = self.code_range
        return f"{self.role}, bits={r.bits}, signed={r.signed}, codes=[{r.qmin}, {r.qmax}]"
