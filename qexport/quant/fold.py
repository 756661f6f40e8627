"""BatchNorm folding, shared by the eval forward and the exporter so that both compute the same
numbers.

After training, ``bn(conv(x))`` becomes one conv: weights ``q * (s_w |k|)`` with the codes negated
where ``k = gamma / sqrt(var + eps)`` is negative (exact; an asymmetric code range was applied to
the weight mirrored by that sign, QuantConv2d.weight_signs, so the result stays in range), and
bias ``k * b + beta - k * mean``.  An integer runtime (ORT's QLinearConv, and ORT's own bias
quantization of any DQ -> Conv) keeps that bias as int32 on the accumulator scale
``s_x * s_w |k|``; at 2-4 bits that grid is coarse next to an 8-bit output step, so the rounding
moves output codes.  The eval forward therefore computes the deployed conv itself: folded weights
and the bias rounded to the accumulator grid (``deployed_conv``).  Training still runs the plain
conv and BatchNorm with batch statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor, fx, nn

from ..ops import post_weights


class FoldableBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that its conv may absorb: it passes its input through when the conv (its only
    producer, which runs just before it) says it computed the folded, deployed conv.

    Same parameters and buffers as BatchNorm2d, so checkpoints are unchanged."""

    folded = False  # set by quantize() when the preceding QuantConv2d can fold it
    absorbed = False  # set by that conv on every forward: did it apply this BatchNorm itself?

    def forward(self, x: Tensor) -> Tensor:
        if self.absorbed and not self.training:
            return x
        return super().forward(x)

    @classmethod
    def replace(cls, bn: nn.BatchNorm2d) -> FoldableBatchNorm2d:
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        new.load_state_dict(bn.state_dict())
        new.folded = True
        return new.train(bn.training)


def batchnorm_after(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, nn.BatchNorm2d] | None:
    """(node, module) of the BatchNorm2d with running statistics that is the only user of conv ``node``."""
    if node.op != "call_module" or len(node.users) != 1:
        return None
    (user,) = node.users
    if user.op != "call_module" or not isinstance(gm.get_submodule(str(node.target)), nn.Conv2d):
        return None
    bn = gm.get_submodule(str(user.target))
    return (user, bn) if isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats else None


def bn_factors(bn: nn.BatchNorm2d | None, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(k, shift) in float64 with ``bn(y) = k * y + shift`` per channel; identity without a BN."""
    if bn is None:
        return np.ones(channels), np.zeros(channels)
    mean = bn.running_mean.detach().double().cpu().numpy()
    var = bn.running_var.detach().double().cpu().numpy()
    gamma = bn.weight.detach().double().cpu().numpy() if bn.affine else np.ones_like(mean)
    beta = bn.bias.detach().double().cpu().numpy() if bn.affine else np.zeros_like(mean)
    k = gamma / np.sqrt(var + bn.eps)
    return k, beta - mean * k


@dataclass(frozen=True)
class DeployedConv:
    """What the deployed graph holds for one conv with integer weights."""

    codes: np.ndarray  # int64 weight codes, BN sign folded in
    weight_scale: np.ndarray  # float32 [Cout]
    act_scale: np.float32 | None  # the input step; None: one per sample, known at run time (ASQ)
    bias_codes: np.ndarray | None  # int32 on the accumulator scale (a constant act_scale), or None
    bias_scale: np.ndarray | None  # float32 [Cout] = act_scale * weight_scale (a constant act_scale)
    float_bias: np.ndarray  # float32 [Cout] the graph adds after the rescale (bias_codes * bias_scale)

    @property
    def max_abs_row_sum(self) -> int:
        """The largest sum of |weight codes| of one output channel: times the largest activation
        code, it bounds every partial sum of the integer convolution."""
        return int(np.abs(self.codes).reshape(len(self.codes), -1).sum(1).max(initial=0))


def deployed_conv(codes: np.ndarray, weight_scale: np.ndarray, act_scale: np.ndarray | None, bias: np.ndarray | None,
                  bn: nn.BatchNorm2d | None) -> DeployedConv:  # fmt: skip
    """Fold ``bn`` into (codes, per-channel scale) and, with a constant ``act_scale``, round the bias
    to the accumulator grid; with a per-sample step (None) the bias stays float32."""
    k, shift = bn_factors(bn, codes.shape[0])
    sign = np.where(k < 0, -1, 1).reshape(-1, *([1] * (codes.ndim - 1)))
    scale = (weight_scale.astype(np.float64) * np.abs(k)).astype(np.float32)
    total = (np.zeros(len(k)) if bias is None else bias.astype(np.float64) * k) + shift
    if act_scale is None:
        return DeployedConv(codes * sign, scale, None, None, None, total.astype(np.float32))
    s_x = np.float32(act_scale)
    bias_scale = (s_x * scale).astype(np.float32)
    bias_codes, float_bias = None, np.zeros(len(k), np.float32)
    if bias is not None or bn is not None:
        q = np.round(total / bias_scale.astype(np.float64))
        bias_codes = np.clip(q, -(2**31), 2**31 - 1).astype(np.int32)
        float_bias = bias_codes.astype(np.float32) * bias_scale
    return DeployedConv(codes * sign, scale, s_x, bias_codes, bias_scale, float_bias)


@dataclass(frozen=True)
class DeployedPost:
    """What the deployed graph holds for one layer with POST weights (qexport.PostConv / PostMatMul)."""

    codes: np.ndarray  # uint8 4-bit POST codes (post_weights.pack), BN sign folded in
    bits: int
    weight_scale: np.ndarray  # float32 [Cout] = alpha * |k| * 2^-E
    float_bias: np.ndarray  # float32 [Cout]


def deployed_post(level_codes: np.ndarray, alpha: np.ndarray, bits: int, bias: np.ndarray | None,
                  bn: nn.BatchNorm2d | None) -> DeployedPost:  # fmt: skip
    """Fold ``bn`` into POST's signed level indices (its sign) and per-channel scale."""
    k, shift = bn_factors(bn, level_codes.shape[0])
    level = level_codes.astype(np.int64) * np.where(k < 0, -1, 1).reshape(-1, *([1] * (level_codes.ndim - 1)))
    scale = alpha.astype(np.float64).reshape(-1) * np.abs(k) * 2.0 ** -post_weights.shift(bits)
    total = (np.zeros(len(k)) if bias is None else bias.astype(np.float64) * k) + shift
    return DeployedPost(post_weights.pack(level, bits), bits, scale.astype(np.float32), total.astype(np.float32))
