"""ASQ: adaptive step size quantization of activations (arXiv 2504.17263; code SENGEL13/ASQ-POST).

A tiny adapter turns each sample's input into one positive scalar ``beta``; the step of that sample
is ``s * beta``.  Conv inputs ``[N, C, H, W]`` get one beta per sample (global average pool first);
Linear inputs ``[*, C]`` get one beta per row (per token for ``[N, T, C]``).

Gradients (LSQ style, straight-through): with ``g_n = sum(grad * (q - x / (s beta_n)))`` inside the
range (``Qn`` / ``Qp`` outside), ``grad_s = sum_n g_n * beta_n / sqrt(Qp * numel)`` (numel of the
whole batch, as the authors' code) and ``grad_beta_n = g_n * s``; autograd of the expression in
``fake_quant`` gives exactly these.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Quantizer, QuantSpec, Role
from .core import CodeRange, fake_quant, grad_scale, mse_step_search, quantize_codes

MIN_BETA = 1e-8
MIN_STEP = 1e-8


class AsqAdapter(nn.Module):
    """``[GAP] -> Linear(C, C//4) -> ReLU -> Linear(C//4, 1) -> ReLU -> clamp(1e-8)``; a single
    ``Linear(C, 1) -> ReLU`` for C < 8.  The last layer starts at N(0, 0.01) weights and bias 1,
    so beta starts near 1."""

    def __init__(self, channels: int, pool: bool) -> None:
        super().__init__()
        self.channels = channels
        self.pool = pool
        if channels < 8:
            self.fc1, self.fc2 = None, nn.Linear(channels, 1)
        else:
            self.fc1, self.fc2 = nn.Linear(channels, channels // 4), nn.Linear(channels // 4, 1)
        nn.init.normal_(self.fc2.weight, 0.0, 0.01)
        nn.init.constant_(self.fc2.bias, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        """beta shaped to broadcast against ``x``: ``[N, 1, 1, 1]`` (pooled) or ``[*, 1]``."""
        feats = x.mean(dim=(2, 3)) if self.pool else x
        h = feats.float()
        if self.fc1 is not None:
            h = torch.relu(self.fc1(h))
        beta = torch.relu(self.fc2(h)).clamp(min=MIN_BETA)
        return beta.view(x.shape[0], 1, 1, 1) if self.pool else beta


class AsqQuantizer(Quantizer):
    method = "asq"
    kind = "asq"

    def __init__(self, bits: int, signed: bool, channels: int, *, pool: bool, role: Role = "act") -> None:
        """``channels``: C of the input; ``pool``: True for conv inputs (one beta per sample)."""
        super().__init__(role)
        self._range = CodeRange(bits, signed)
        self.step = nn.Parameter(torch.ones(()))
        self.adapter = AsqAdapter(channels, pool)

    @property
    def code_range(self) -> CodeRange:
        return self._range

    def scale_for(self, x: Tensor) -> Tensor:
        """Per-sample (or per-row) float32 step ``s * beta`` for ``x``."""
        return self.step.clamp(min=MIN_STEP) * self.adapter(x)

    def init_values(self, x: Tensor) -> dict[str, Tensor]:
        # q(x; s * beta) = beta * q(x / beta; s): initialise s on the beta-normalised input
        v = x.detach() / self.adapter(x).detach()
        step = 2.0 * v.abs().mean() / math.sqrt(self._range.qmax)
        if self.init_method == "mse":
            step = mse_step_search(v, step, self._range.qmin, self._range.qmax, None)
        return {"step": step}

    def apply_init(self, values: dict[str, Tensor]) -> None:
        self.step.copy_(values["step"].clamp(min=MIN_STEP))

    def fake_quant(self, x: Tensor) -> Tensor:
        step = self.step.clamp(min=MIN_STEP)
        if self.training:
            step = grad_scale(step, 1.0 / math.sqrt(self._range.qmax * x.numel()))
        return fake_quant(x, step * self.adapter(x), self._range.qmin, self._range.qmax)

    def codes(self, x: Tensor) -> Tensor:
        self.require_initialized()
        with torch.no_grad():
            return quantize_codes(x, self.scale_for(x), self._range.qmin, self._range.qmax)

    def describe(self) -> QuantSpec:
        return self._spec("asq", self.step.clamp(min=MIN_STEP), None, adapter=self.adapter)
