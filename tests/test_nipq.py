"""NIPQ: bit-width mapping, noise statistics, gradients of alpha and theta, the hard path,
finalize, and the resource losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qexport
from qexport.quant import NipqQuantizer, average_bits, gbops, resource_loss
from qexport.quant import nipq as nipq_mod
from qexport.quant.core import round_ste


def test_official_bit_mapping_and_deployment_limit() -> None:
    q = NipqQuantizer(8, signed=False, learn_bits=True)
    with torch.no_grad():
        q.theta.zero_()
    assert float(q.continuous_bits().detach()) == 8.0  # 2 + 12 * sigmoid(0)
    with torch.no_grad():
        q.theta.fill_(3.0)  # 2 + 12 * sigmoid(3) = 13.4, limited to 8
    assert float(q.continuous_bits().detach()) == 8.0 and q.integer_bits() == 8
    wide = NipqQuantizer(8, signed=False, learn_bits=True, max_bits=14)
    with torch.no_grad():
        wide.theta.fill_(3.0)
    assert wide.integer_bits() == round(2 + 12 / (1 + math.exp(-3)))


def test_limit_keeps_the_gradient() -> None:
    """A width pushed past the limit must be able to come back: the clamp is straight-through."""
    q = NipqQuantizer(8, signed=False, learn_bits=True)
    with torch.no_grad():
        q.theta.fill_(3.0)
    q.continuous_bits().backward()
    assert float(q.theta.grad) == pytest.approx(
        12 * torch.sigmoid(torch.tensor(3.0)).item() * (1 - torch.sigmoid(torch.tensor(3.0)).item())
    )


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_fixed_bits_no_log_of_zero(bits: int) -> None:
    q = NipqQuantizer(bits, signed=True)
    assert q.integer_bits() == bits and math.isfinite(float(q.theta))
    assert q.code_range.qmax == 2 ** (bits - 1) - 1  # narrow: 2-bit signed is ternary
    learned = NipqQuantizer(bits, signed=False, learn_bits=True)
    assert learned.integer_bits() == bits


def test_noise_follows_the_rounding_error_histogram() -> None:
    # every in-range value sits 0.3 of a step above an integer: rounding error is -0.3 exactly
    v = torch.randint(0, 10, (200000,)).float() + 0.3
    noise = nipq_mod.rounding_noise(v, torch.ones_like(v, dtype=torch.bool))
    assert noise.abs().max() <= 0.5
    assert abs(float(noise.mean()) + 0.3) < 1 / 256 + 1e-3
    assert float(noise.std()) < 1 / 256
    # a uniform spread of values gives uniform noise over [-0.5, 0.5]
    u = torch.rand(200000) * 20
    noise = nipq_mod.rounding_noise(u, torch.ones_like(u, dtype=torch.bool))
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - math.sqrt(1 / 12)) < 0.01


def test_noise_ignores_clipped_elements() -> None:
    v = torch.cat([torch.full((1000,), 0.25), torch.full((1000,), 7.5)])  # errors -0.25 / +0.5
    mask = torch.arange(2000) < 1000
    noise = nipq_mod.rounding_noise(v, mask)
    assert abs(float(noise.mean()) + 0.25) < 0.01


def _fixed_noise(monkeypatch: pytest.MonkeyPatch, value: torch.Tensor) -> None:
    monkeypatch.setattr(nipq_mod, "rounding_noise", lambda scaled, in_range: value)


def test_alpha_gradient_in_the_noisy_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    q = NipqQuantizer(4, signed=False).train()
    q.initialize_from(torch.rand(100) * 3)
    x = torch.rand(500) * 4
    noise = torch.rand(500) - 0.5
    _fixed_noise(monkeypatch, noise)
    upstream = torch.randn(500)
    out = q(x)
    alpha = float(q.alpha())
    n = 15
    assert torch.allclose(out, x.clamp(0, alpha) + noise * alpha / n, atol=1e-6)
    (out * upstream).sum().backward()
    dalpha = (upstream * ((x > alpha).float() + noise / n)).sum()
    expected = dalpha * torch.sigmoid(q.alpha_param.detach())  # d softplus
    assert float(q.alpha_param.grad) == pytest.approx(float(expected), rel=1e-4)


def test_theta_gradient_through_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    q = NipqQuantizer(4, signed=False, learn_bits=True).train()
    q.initialize_from(torch.rand(100) * 3)
    monkeypatch.setattr(q, "_train_bits", lambda: round_ste(q.continuous_bits()))  # no bit jitter
    noise = torch.rand(300) - 0.5
    _fixed_noise(monkeypatch, noise)
    x = torch.rand(300) * 2
    upstream = torch.randn(300)
    (q(x) * upstream).sum().backward()
    sig = torch.sigmoid(q.theta.detach())
    b = torch.round(2 + 12 * sig)
    n = 2**b - 1
    d_delta_db = -float(q.alpha()) * 2**b * math.log(2) / n**2
    expected = (upstream * noise).sum() * d_delta_db * 12 * sig * (1 - sig)
    assert float(q.theta.grad) == pytest.approx(float(expected), rel=1e-4)


def test_stochastic_bit_rounding_stays_within_one_bit() -> None:
    q = NipqQuantizer(5, signed=False, learn_bits=True).train()
    with torch.no_grad():
        q.theta.fill_(nipq_mod.theta_for_bits(5.3))  # 5.3 + U(-0.5, 0.5) rounds to 5 or 6
    seen = {float(q._train_bits()) for _ in range(200)}
    assert seen == {5.0, 6.0}


def test_hard_path_is_contract_one() -> None:
    q = NipqQuantizer(3, signed=True)
    q.initialize_from(torch.randn(1000))
    q.eval()
    x = torch.randn(2000) * 2
    s = (q.alpha().detach() / 3).float()
    codes = torch.clamp(torch.round(x / s), -3, 3)
    assert torch.equal(q(x), codes * s)
    assert torch.equal(q.codes(x), codes)
    spec = q.describe()
    assert (spec.qmin, spec.qmax, spec.bits) == (-3, 3, 3) and torch.equal(spec.scale, s)


def test_finalize_freezes_bits_and_uses_ste() -> None:
    q = NipqQuantizer(6, signed=False, learn_bits=True)
    q.initialize_from(torch.rand(100) * 3)
    with torch.no_grad():
        q.theta.fill_(nipq_mod.theta_for_bits(4.2))
    q.finalize()
    assert q.integer_bits() == 4 and not q.learns_bits and not q.theta.requires_grad
    q.train()
    x = (torch.rand(100) * 4).requires_grad_(True)
    out = q(x)
    s = q.alpha().detach() / 15
    assert torch.allclose(out, torch.clamp(torch.round(x / s), 0, 15) * s)  # hard even in training
    out.sum().backward()
    assert q.alpha_param.grad is not None and float(q.alpha_param.grad.abs()) > 0
    # the frozen state survives a state-dict round trip
    fresh = NipqQuantizer(6, signed=False, learn_bits=True)
    fresh.load_state_dict(q.state_dict())
    assert fresh.integer_bits() == 4 and fresh._hard and fresh.ready


def _tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)
    )


def test_bops_and_average_bits_by_hand() -> None:
    m = qexport.quantize(_tiny(), weight="nipq", act="nipq", bits=4, first_last_bits=None)
    x = torch.randn(2, 3, 8, 8)
    qexport.calibrate(m, [x])
    m(x)
    macs = [9 * 3 * 8 * 64, 9 * 4 * 8 * 36, 288 * 4]
    assert float(gbops(m)) == pytest.approx(sum(macs) * 16 / 1e9)
    assert float(average_bits(m, "weight")) == pytest.approx(4.0)
    assert float(average_bits(m, "act")) == pytest.approx(4.0)


def test_resource_loss_pushes_learned_bits_down() -> None:
    m = qexport.quantize(_tiny(), weight="nipq", act="nipq", bits=7, learn_bits=True, first_last_bits=None)
    x = torch.randn(2, 3, 8, 8)
    qexport.calibrate(m, [x])
    m.train()
    m(x)
    opt = torch.optim.SGD([p for n, p in m.named_parameters() if n.endswith("theta")], lr=1.0)
    before = float(average_bits(m, "weight"))
    for _ in range(20):
        opt.zero_grad()
        resource_loss(m, 3.0).backward()
        opt.step()
    after_w, after_a = float(average_bits(m, "weight")), float(average_bits(m, "act"))
    assert after_w < before - 1 and after_a < before - 1
    loss_bops = resource_loss(m, 0.0, mode="bops")
    assert loss_bops.requires_grad and F.relu(loss_bops) > 0
