"""POST / POT: level sets (paper semantics), nearest-level projection, codes, alpha init and
gradients."""

from __future__ import annotations

import math

import pytest
import torch

from qexport.errors import QexportError
from qexport.quant import PostQuantizer, PotQuantizer

R2 = math.sqrt(2)


def _levels(q: PostQuantizer) -> list[float]:
    return [round(v, 6) for v in q.levels().tolist()]


def test_post_3bit_levels() -> None:
    expected = sorted([0.0, 1.0, -1.0, 1 / R2, -1 / R2, 0.5, -0.5])
    assert _levels(PostQuantizer(3, channels=1)) == [round(v, 6) for v in expected]


def test_post_4bit_levels() -> None:
    mags = [R2**-k for k in range(7)]  # 1 .. 0.125
    expected = sorted([0.0, *mags, *[-m for m in mags]])
    levels = _levels(PostQuantizer(4, channels=1))
    assert len(levels) == 15 and levels == [round(v, 6) for v in expected]
    assert min(abs(v) for v in levels if v) == 0.125


def test_pot_levels() -> None:
    assert _levels(PotQuantizer(3, channels=1)) == [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
    levels = _levels(PotQuantizer(4, channels=1))
    assert len(levels) == 15 and min(abs(v) for v in levels if v) == (2**-6)
    assert _levels(PotQuantizer(2, channels=1)) == _levels(PostQuantizer(2, channels=1)) == [-1.0, 0.0, 1.0]


@pytest.mark.parametrize("bits", [1, 5, 8])
def test_unsupported_widths(bits: int) -> None:
    with pytest.raises(QexportError, match="POST"):
        PostQuantizer(bits, channels=4)


@pytest.mark.parametrize("cls", [PostQuantizer, PotQuantizer])
@pytest.mark.parametrize("bits", [3, 4])
def test_projection_is_nearest_level_in_linear_distance(cls: type[PostQuantizer], bits: int) -> None:
    q = cls(bits, channels=1)
    v = torch.rand(20000) * 2 - 1
    levels = q.levels()
    brute = levels[(v[:, None] - levels[None, :]).abs().argmin(dim=1)]
    proj = q.project(v)
    dist_ours = (proj - v).abs()
    dist_best = (brute - v).abs()
    assert torch.equal(dist_ours, dist_best)  # same distance (ties may pick either level)


def test_codes_and_values() -> None:
    w = torch.randn(6, 4, 3, 3)
    q = PostQuantizer(4, channels=6)
    q.initialize_from(w)
    q.eval()
    codes = q.codes(w)
    assert codes.min() >= -7 and codes.max() <= 7 and codes.dtype == torch.float32
    alpha = q.alpha.detach().view(6, 1, 1, 1)
    mags = q.magnitudes
    values = torch.sign(codes) * mags[codes.abs().long()] * alpha
    assert torch.allclose(q(w), values)
    # |code| = 7 is alpha itself, |code| = 1 the smallest magnitude alpha * 2^-3
    assert float(mags[7]) == 1.0 and float(mags[1]) == pytest.approx(0.125)


def test_alpha_init_is_99th_percentile_per_channel() -> None:
    w = torch.randn(3, 100, 1, 1) * torch.tensor([1.0, 2.0, 5.0]).view(3, 1, 1, 1)
    q = PostQuantizer(4, channels=3)
    q.initialize_from(w)
    expected = torch.stack([torch.quantile(w[i].abs().flatten(), 0.99) for i in range(3)])
    assert torch.allclose(q.alpha, expected)


def test_gradients_ste_and_alpha_scale() -> None:
    w = (torch.randn(4, 8, 3, 3) * 0.5).requires_grad_(True)
    q = PostQuantizer(3, channels=4).train()
    q.initialize_from(w)
    upstream = torch.randn_like(w)
    (q(w) * upstream).sum().backward()
    alpha = q.alpha.detach().view(4, 1, 1, 1)
    v = (w.detach() / alpha).clamp(-1, 1)
    inside = (w.detach() / alpha).abs() <= 1
    local = q.project(v) - v  # inside; sign(w) outside (project(+-1) = +-1, v = +-1)
    local = torch.where(inside, local, torch.sign(w.detach()))
    g = 1 / math.sqrt(w.numel() / 4)
    expected = (upstream * local).sum(dim=(1, 2, 3)) * g
    assert torch.allclose(q.alpha.grad, expected, rtol=1e-4, atol=1e-6)
    assert torch.allclose(w.grad, upstream * inside, atol=1e-6)
