"""LSQ: learned step size (Esser et al., 2019).

``q = clamp(round(x / s), Qn, Qp)``, ``x_hat = q * s``; the step's gradient is scaled by
``g = 1 / sqrt(N * Qp)`` with N the number of elements that share one step: the features of one
sample for activations, the weights of the layer (per tensor) or of one output channel (per channel).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Quantizer, QuantSpec, Role
from .core import CodeRange, fake_quant, grad_scale, lsq_step_init, mse_step_search, quantize_codes

MIN_STEP = 1e-8


class LsqQuantizer(Quantizer):
    method = "lsq"

    def __init__(self, bits: int, signed: bool, role: Role = "act", *, narrow: bool = False, channels: int = 0) -> None:
        """``channels > 0`` gives one step per output channel (axis 0), for weights."""
        super().__init__(role)
        self._range = CodeRange(bits, signed, narrow)
        self.channels = channels
        self.step = nn.Parameter(torch.ones(channels) if channels else torch.ones(()))

    @property
    def code_range(self) -> CodeRange:
        return self._range

    def _reduce_dims(self, x: Tensor) -> tuple[int, ...] | None:
        return tuple(range(1, x.dim())) if self.channels else None

    def _step_for(self, x: Tensor) -> Tensor:
        step = self.step.clamp(min=MIN_STEP)
        return step.view(-1, *([1] * (x.dim() - 1))) if self.channels else step

    def grad_numel(self, x: Tensor) -> int:
        if self.role == "act":
            return max(x.numel() // max(x.shape[0], 1), 1) if x.dim() > 1 else x.numel()
        return x.numel() // self.channels if self.channels else x.numel()

    def init_values(self, x: Tensor) -> dict[str, Tensor]:
        dims = self._reduce_dims(x)
        step = lsq_step_init(x, self._range.qmax, dims)
        if self.init_method == "mse":
            step = mse_step_search(x, step, self._range.qmin, self._range.qmax, dims)
        return {"step": step.reshape(-1) if self.channels else step.reshape(())}

    def apply_init(self, values: dict[str, Tensor]) -> None:
        self.step.copy_(values["step"].clamp(min=MIN_STEP))

    def fake_quant(self, x: Tensor) -> Tensor:
        step = self._step_for(x)
        if self.training:
            step = grad_scale(step, 1.0 / math.sqrt(self.grad_numel(x) * self._range.qmax))
        return fake_quant(x, step, self._range.qmin, self._range.qmax)

    def codes(self, x: Tensor) -> Tensor:
        self.require_initialized()
        return quantize_codes(x, self._step_for(x).detach(), self._range.qmin, self._range.qmax)

    def describe(self) -> QuantSpec:
        return self._spec("uniform", self.step.clamp(min=MIN_STEP), 0 if self.channels else None)
