"""BatchNorm folding: a Conv2d whose only user is a BatchNorm2d absorbs it.

``bn(conv(x)) = k * conv(x) + shift`` with ``k = gamma / sqrt(var + eps)`` and
``shift = beta - mean * k``, per output channel.  With per-channel weight scales this is exact for
the integer codes: ``k * (q * s) = q * (s * k)``, and a negative ``k`` negates the (symmetric,
narrow-range) codes of its channel.  Computed in float64, stored as float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import fx, nn


@dataclass(frozen=True)
class BnFold:
    bn_node: fx.Node
    k: np.ndarray
    shift: np.ndarray


def find_bn_folds(gm: fx.GraphModule) -> dict[fx.Node, BnFold]:
    """Conv node -> the BatchNorm it absorbs."""
    folds = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(str(node.target)), nn.Conv2d):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        bn = gm.get_submodule(str(users[0].target))
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None:
            continue
        var = bn.running_var.detach().double().numpy()
        mean = bn.running_mean.detach().double().numpy()
        gamma = bn.weight.detach().double().numpy() if bn.affine else np.ones_like(mean)
        beta = bn.bias.detach().double().numpy() if bn.affine else np.zeros_like(mean)
        k = gamma / np.sqrt(var + bn.eps)
        folds[node] = BnFold(users[0], k, beta - mean * k)
    return folds
