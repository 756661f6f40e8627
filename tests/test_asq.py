"""ASQ: adapter structure and initialisation, per-sample / per-token beta, contract 1 with the
per-sample step, and the gradients of s and beta given in quantizers.md."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qexport.quant import AsqAdapter, AsqQuantizer


def test_adapter_structure() -> None:
    a = AsqAdapter(64, pool=True)
    assert isinstance(a.fc1, nn.Linear) and (a.fc1.in_features, a.fc1.out_features) == (64, 16)
    assert (a.fc2.in_features, a.fc2.out_features) == (16, 1)
    small = AsqAdapter(4, pool=True)
    assert small.fc1 is None and (small.fc2.in_features, small.fc2.out_features) == (4, 1)


@pytest.mark.parametrize("channels", [3, 16, 256])
def test_beta_starts_near_one(channels: int) -> None:
    a = AsqAdapter(channels, pool=True)
    with torch.no_grad():
        beta = a(torch.randn(32, channels, 8, 8).relu())
    assert beta.shape == (32, 1, 1, 1)
    assert float((beta - 1).abs().max()) < 0.1


def test_beta_per_token_for_linear_inputs() -> None:
    a = AsqAdapter(32, pool=False)
    x = torch.randn(2, 7, 32)
    assert a(x).shape == (2, 7, 1)
    x2 = x.clone()
    x2[0, 3] *= 10  # changing one token changes that token's beta only
    diff = (a(x2) - a(x)).abs().squeeze(-1)
    assert diff[0, 3] > 0 and float(diff.sum() - diff[0, 3]) == 0


def test_beta_is_positive_even_when_relu_is_zero() -> None:
    a = AsqAdapter(8, pool=True)
    with torch.no_grad():
        a.fc2.bias.fill_(-100.0)
    assert float(a(torch.randn(4, 8, 3, 3)).min()) == pytest.approx(1e-8)


def test_eval_uses_the_per_sample_step() -> None:
    q = AsqQuantizer(4, signed=False, channels=16, pool=True)
    x = torch.randn(5, 16, 6, 6).relu() * torch.arange(1, 6).view(5, 1, 1, 1)
    q.initialize_from(x)
    q.eval()
    scale = q.step.detach() * q.adapter(x).detach()  # float32 s * beta_n
    codes = torch.clamp(torch.round(x / scale), 0, 15)
    assert torch.equal(q.codes(x), codes)
    assert torch.equal(q(x), codes * scale)
    spec = q.describe()
    assert spec.kind == "asq" and spec.adapter is q.adapter and spec.scale.shape == ()


def test_gradients_of_step_and_beta() -> None:
    q = AsqQuantizer(3, signed=True, channels=8, pool=True).train()
    x = torch.randn(4, 8, 5, 5) * 2
    q.initialize_from(x)
    captured = {}

    def keep(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        out.retain_grad()
        captured["beta"] = out

    q.adapter.register_forward_hook(keep)
    upstream = torch.randn_like(x)
    (q(x) * upstream).sum().backward()

    beta = captured["beta"].detach()
    s = q.step.detach()
    r = q.code_range
    v = x / (s * beta)
    local = torch.where(v < r.qmin, float(r.qmin), torch.where(v > r.qmax, float(r.qmax), torch.round(v) - v))
    g_n = (upstream * local).sum(dim=(1, 2, 3))
    expected_s = (g_n * beta.view(-1)).sum() / math.sqrt(r.qmax * x.numel())
    assert float(q.step.grad) == pytest.approx(float(expected_s), rel=1e-4, abs=1e-6)
    assert torch.allclose(captured["beta"].grad.view(-1), g_n * s, rtol=1e-4, atol=1e-5)
    # and the adapter learns: its last layer receives gradient
    assert q.adapter.fc2.weight.grad is not None and float(q.adapter.fc2.weight.grad.abs().sum()) > 0
