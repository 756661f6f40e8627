"""BN folding in eval mode: the fake-quant model computes the deployed conv (folded weights, bias
on the int32 accumulator grid), training keeps the plain conv + BatchNorm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qexport
from qexport import zoo
from qexport.quant import QuantConv2d
from qexport.quant.fold import FoldableBatchNorm2d, bn_factors, deployed_conv


def _trained_bn(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(-1.5, 1.5)  # negative gammas too
                m.bias.uniform_(-1, 1)


def test_quantize_links_conv_and_batchnorm() -> None:
    gm = qexport.quantize(zoo.create("resnet20"), bits=4)
    conv, bn = gm.get_submodule("layers.0.0.conv1"), gm.get_submodule("layers.0.0.bn1")
    assert isinstance(bn, FoldableBatchNorm2d) and conv.folded_bn is bn
    assert set(bn.state_dict()) == set(nn.BatchNorm2d(16).state_dict())  # checkpoints unchanged
    asq = qexport.quantize(zoo.create("resnet20"), act="asq", bits=4)
    assert isinstance(asq.get_submodule("layers.0.0.bn1"), FoldableBatchNorm2d)  # IntConv with per-sample steps
    post = qexport.quantize(zoo.create("resnet20"), weight="post", bits=4)
    assert isinstance(post.get_submodule("layers.0.0.bn1"), FoldableBatchNorm2d)  # PostConv


def test_eval_is_the_deployed_conv_and_training_is_not() -> None:
    model = zoo.create("resnet20")
    _trained_bn(model)
    gm = qexport.quantize(model, bits=3)
    x = torch.randn(4, 3, 32, 32)
    qexport.calibrate(gm, [x])
    conv: QuantConv2d = gm.get_submodule("layers.1.0.conv2")
    bn = conv.folded_bn
    inp = torch.randn(2, 32, 16, 16).relu()
    gm.eval()
    with torch.no_grad():
        deployed = bn(conv(inp))  # bn passes through in eval
        plain = bn.__class__.__mro__[1].forward(bn, conv._conv_forward(*conv.quantized_operands(inp), None))
    dep = conv.deployed()
    assert dep.bias_codes is not None and dep.bias_codes.dtype == np.int32
    step = float(conv.act_quant.step) * dep.weight_scale.max()
    assert torch.allclose(deployed, plain, atol=step)  # differs only by the bias rounding
    assert not torch.equal(deployed, plain)
    k, _ = bn_factors(bn, 32)
    assert (
        np.sign(dep.codes[:, 0, 0, 0])
        == np.sign(conv.weight_quant.codes(conv.weight.detach()).numpy()[:, 0, 0, 0]) * np.sign(k)
    ).all()
    gm.train()
    with torch.no_grad():
        y = bn(conv(inp))
    assert y.shape == deployed.shape and not torch.allclose(y, deployed, atol=step)  # batch statistics


@pytest.mark.parametrize(("act", "bits"), [("lsq", 3), ("lsq", 8), ("asq", 4)])
def test_eval_conv_is_intconv_arithmetic_bit_for_bit(act: str, bits: int) -> None:
    """Eval mode sums the integer codes exactly and rescales once, as qexport.IntConv (and every
    integer kernel) does: the output equals the op's reference to the last bit (a float conv of the
    fake-quantized values rounds its 576-term partial sums differently).  With ASQ the step is each
    sample's own and the bias stays float (no accumulator grid)."""
    from qexport.ops import int_conv

    model = zoo.create("resnet20")
    _trained_bn(model)
    gm = qexport.quantize(model, act=act, bits=bits, first_last_bits=bits)
    qexport.calibrate(gm, [torch.randn(8, 3, 32, 32)])
    conv: QuantConv2d = gm.get_submodule("layers.2.1.conv1")  # 64 channels x 3 x 3 = 576 terms
    inp = torch.randn(4, 64, 8, 8).relu() * torch.tensor([0.5, 1.0, 2.0, 4.0]).view(4, 1, 1, 1)
    gm.eval()
    with torch.no_grad():
        ours = conv(inp).numpy()
        codes = conv.act_quant.codes(inp).numpy().astype(np.int64)
        steps = conv.act_quant.scale_for(inp) if act == "asq" else conv.act_quant.describe().scale.expand(4)
    dep = conv.deployed()
    assert (dep.act_scale is None) == (act == "asq") and (dep.bias_codes is None) == (act == "asq")
    want = np.stack([
        int_conv.reference(codes[i : i + 1], steps[i].numpy(), dep.codes, dep.weight_scale, dep.float_bias, [1, 1],
                           [1, 1, 1, 1], [1, 1], 1)[0]
        for i in range(len(codes))
    ])  # fmt: skip
    assert ours.dtype == want.dtype == np.float32 and np.array_equal(ours, want)
    if act == "asq":
        assert len(set(steps.flatten().tolist())) == 4  # the samples' steps differ


@pytest.mark.parametrize("act", ["lsq", "asq"])
def test_eval_post_conv_is_postconv_arithmetic_bit_for_bit(act: str) -> None:
    """POST weights: eval sums the codes against the even and the odd powers of sqrt 2 exactly and
    combines them once, with BatchNorm folded in, as qexport.PostConv does: equal to its reference."""
    from qexport.ops import post_conv

    model = zoo.create("resnet20")
    _trained_bn(model)
    gm = qexport.quantize(model, weight="post", act=act, bits=4)
    qexport.calibrate(gm, [torch.randn(8, 3, 32, 32)])
    conv: QuantConv2d = gm.get_submodule("layers.2.1.conv1")
    assert isinstance(conv.folded_bn, FoldableBatchNorm2d)
    inp = torch.randn(4, 64, 8, 8).relu() * torch.tensor([0.5, 1.0, 2.0, 4.0]).view(4, 1, 1, 1)
    gm.eval()
    with torch.no_grad():
        ours = conv.folded_bn(conv(inp)).numpy()  # the BatchNorm passes through: folded
        codes = conv.act_quant.codes(inp).numpy().astype(np.int64)
        steps = conv.act_quant.scale_for(inp) if act == "asq" else conv.act_quant.describe().scale.expand(4)
    dep = conv.deployed()
    want = np.stack([
        post_conv.reference(codes[i : i + 1], steps[i].numpy(), dep.codes, dep.weight_scale, dep.float_bias, 4,
                            [1, 1], [1, 1, 1, 1], [1, 1], 1)[0]
        for i in range(len(codes))
    ])  # fmt: skip
    assert ours.dtype == want.dtype == np.float32 and np.array_equal(ours, want)


@pytest.mark.parametrize("act", ["lsq", "asq"])
def test_full_range_weights_mirror_negative_gammas_so_folded_codes_stay_in_range(act: str) -> None:
    """2-bit LSQ weights use -2..1; a channel with a negative BatchNorm gamma is quantized mirrored
    (its codes -1..2), so the folded codes are -2..1 on every channel and int2 storage holds them."""
    model = zoo.create("resnet20")
    _trained_bn(model)
    gm = qexport.quantize(model, act=act, bits=2)
    qexport.calibrate(gm, [torch.randn(4, 3, 32, 32)])
    conv: QuantConv2d = gm.get_submodule("layers.2.0.conv1")
    bn = conv.bn_after
    assert bn is not None and (bn.weight < 0).any() and (bn.weight > 0).any()
    codes, scale = conv.integer_weight()
    neg = (bn.weight < 0).numpy()
    assert codes[neg].min() == -1 and codes[neg].max() == 2
    assert codes[~neg].min() == -2 and codes[~neg].max() == 1
    gm.eval()
    with torch.no_grad():
        assert torch.equal(conv.quantized_weight(), codes * scale.view(-1, 1, 1, 1))
    k, _ = bn_factors(bn, codes.shape[0])
    folded = codes.numpy() * np.where(k < 0, -1, 1).reshape(-1, 1, 1, 1)
    assert folded.min() == -2 and folded.max() == 1
    assert np.array_equal(conv.deployed().codes, folded)
    if act == "lsq":
        inp = torch.randn(2, 32, 16, 16).relu()
        with torch.no_grad():
            deployed = bn(conv(inp))
            plain = nn.BatchNorm2d.forward(bn, conv._conv_forward(*conv.quantized_operands(inp), None))
        step = float(conv.act_quant.step) * conv.deployed().weight_scale.max()
        assert torch.allclose(deployed, plain, atol=step)  # the fold is exact up to the int32 bias rounding


def test_checkpoints_without_weight_range_keep_narrow_codes() -> None:
    from qexport.quant.config import QuantConfig

    old = QuantConfig().to_dict()
    del old["weight_range"]
    assert QuantConfig.from_dict(old).weight_range == "narrow"
    assert QuantConfig.from_dict(QuantConfig().to_dict()).weight_range == "full"


def test_deployed_conv_math() -> None:
    codes = np.array([[[[3]]], [[[-2]]]])
    bn = nn.BatchNorm2d(2).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([2.0, -0.5]))
        bn.bias.copy_(torch.tensor([0.3, 0.1]))
        bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
        bn.running_var.copy_(torch.tensor([4.0 - 1e-5, 1.0 - 1e-5]))
    dep = deployed_conv(codes, np.array([0.1, 0.2], np.float32), np.float32(0.5), None, bn)
    assert dep.codes[:, 0, 0, 0].tolist() == [3, 2]  # negative gamma negates the codes
    assert np.allclose(dep.weight_scale, [0.1, 0.1])  # s_w * |k|, k = [1, -0.5]
    assert np.allclose(dep.bias_scale, [0.05, 0.05])
    # shift = beta - mean * k = [0.3 - 1, 0.1 - 0.5] = [-0.7, -0.4] -> codes -14, -8
    assert dep.bias_codes.tolist() == [-14, -8]


@pytest.mark.slow  # CPU time: in the slow set (CI runs it)
def test_calibration_sees_batchnorm_and_ptq_keeps_accuracy() -> None:
    """Calibration runs the plain conv, so the BatchNorm after it must still apply (a regression:
    skipping it calibrated every scale on un-normalised activations, 10% top-1)."""
    from pathlib import Path

    from qexport import data
    from qexport.evaluate import subset, top1

    base = qexport.load(Path(__file__).resolve().parents[1] / "models" / "resnet20_fp32.pt")
    train, _ = data.cifar10("train")
    calib = [data.normalize(train[i : i + 64]) for i in range(0, 50000, 12500)]
    images, labels = subset(*data.cifar10("test"), 500)
    fp32 = top1(base, images, labels)
    w8 = qexport.calibrate(qexport.quantize(base, bits=8), calib)
    assert top1(w8, images, labels) >= fp32 - 1.5
    w4 = {init: qexport.calibrate(qexport.quantize(base, bits=4), calib, init=init) for init in ("mse", "paper")}
    assert top1(w4["mse"], images, labels) > top1(w4["paper"], images, labels)
