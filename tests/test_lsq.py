"""LSQ: initialisation, eval arithmetic (contract 1) and the gradients of the LSQ paper."""

from __future__ import annotations

import math

import pytest
import torch

from qexport.errors import QexportError
from qexport.quant import LsqQuantizer


def test_init_from_data() -> None:
    x = torch.randn(8, 16, 5, 5).relu()
    q = LsqQuantizer(4, signed=False)
    q.initialize_from(x)
    assert torch.allclose(q.step, 2 * x.abs().mean() / math.sqrt(15))


def test_per_channel_init() -> None:
    w = torch.randn(6, 3, 3, 3) * torch.arange(1, 7).view(6, 1, 1, 1)
    q = LsqQuantizer(4, signed=True, role="weight", narrow=True, channels=6)
    q.initialize_from(w)
    expected = 2 * w.abs().mean(dim=(1, 2, 3)) / math.sqrt(7)
    assert torch.allclose(q.step, expected)


def test_eval_is_divide_round_saturate() -> None:
    q = LsqQuantizer(4, signed=True).eval()
    q.initialize_from(torch.randn(100))
    x = torch.randn(1000) * 3
    s = q.step.detach()
    codes = torch.clamp(torch.round(x / s), -8, 7)
    assert torch.equal(q(x), codes * s)
    assert torch.equal(q.codes(x), codes)
    assert q.codes(x).min() == -8 and q.codes(x).max() == 7  # saturates both ends


@pytest.mark.parametrize("signed", [False, True])
def test_step_and_input_gradients_match_the_paper(signed: bool) -> None:
    q = LsqQuantizer(3, signed=signed).train()
    x = torch.randn(4, 2, 6, 6) * 2
    q.initialize_from(x)
    x.requires_grad_(True)
    upstream = torch.randn_like(x)
    (q(x) * upstream).sum().backward()

    s = q.step.detach()
    r = q.code_range
    v = x.detach() / s
    inside = (v >= r.qmin) & (v <= r.qmax)
    local = torch.where(v < r.qmin, float(r.qmin), torch.where(v > r.qmax, float(r.qmax), torch.round(v) - v))
    g = 1 / math.sqrt((x.numel() / x.shape[0]) * r.qmax)  # N = features per sample for activations
    assert torch.allclose(q.step.grad, (upstream * local).sum() * g, rtol=1e-5, atol=1e-6)
    assert torch.allclose(x.grad, upstream * inside, atol=1e-6)  # (g / s) * s: rounding only


def test_per_channel_weight_gradient_scale() -> None:
    w = torch.randn(4, 3, 3, 3)
    q = LsqQuantizer(4, signed=True, role="weight", narrow=True, channels=4).train()
    q.initialize_from(w)
    upstream = torch.randn_like(w)
    (q(w) * upstream).sum().backward()
    s = q.step.detach().view(4, 1, 1, 1)
    v = w / s
    local = torch.where(v < -7, -7.0, torch.where(v > 7, 7.0, torch.round(v) - v))
    g = 1 / math.sqrt(27 * 7)  # N = weights sharing one step
    assert torch.allclose(q.step.grad, (upstream * local).sum(dim=(1, 2, 3)) * g, rtol=1e-5, atol=1e-6)


def test_uninitialised_eval_is_a_clear_error() -> None:
    q = LsqQuantizer(4, signed=False).eval()
    q.path = "layers.0.conv1.act_quant"
    with pytest.raises(QexportError, match=r"layers\.0\.conv1\.act_quant.*calibrate"):
        q(torch.randn(3))


def test_nan_input_in_eval_is_a_clear_error() -> None:
    q = LsqQuantizer(8, signed=True)
    q.initialize_from(torch.randn(10))
    q.eval()
    with pytest.raises(QexportError, match="NaN"):
        q(torch.tensor([1.0, float("nan")]))


def test_lazy_init_on_first_training_batch() -> None:
    q = LsqQuantizer(4, signed=False).train()
    x = torch.rand(2, 8)
    q(x)
    assert q.ready and bool(q.initialized)
    assert torch.allclose(q.step, 2 * x.mean() / math.sqrt(15))


def test_mse_calibration_beats_the_paper_init_and_is_the_grid_minimum() -> None:
    from qexport.quant.core import mse_step_search

    x = torch.randn(4096) ** 3  # heavy tails: the paper's init clips badly
    start = 2 * x.abs().mean() / math.sqrt(7)
    best = mse_step_search(x, start, -8, 7, None)

    def err(s: torch.Tensor) -> float:
        return float((torch.clamp(torch.round(x / s), -8, 7) * s - x).pow(2).mean())

    grid = [start * f for f in torch.linspace(0.05, 2.0, 40).tolist()]
    assert err(best) == min(err(s) for s in grid)
    assert err(best) < err(start)


def test_calibrate_mse_and_paper_modes() -> None:
    from torch import nn

    import qexport

    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4))
    x = torch.randn(64, 16) ** 3
    steps = {}
    for init in ("paper", "mse"):
        q = qexport.quantize(model, bits=4, first_last_bits=None)
        qexport.calibrate(q, [x], init=init)
        steps[init] = float(q.get_submodule("0").act_quant.step)
        assert q.get_submodule("0").act_quant.init_method == "paper"  # restored after calibration
    assert steps["paper"] == pytest.approx(float(2 * x.abs().mean() / math.sqrt(7)))
    assert steps["mse"] != pytest.approx(steps["paper"])
