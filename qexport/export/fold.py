"""Which BatchNorm each conv absorbs: the one a uniform QuantConv2d folds in eval mode, or the
single BatchNorm user of any other conv (the folding math is qexport.quant.fold's)."""

from __future__ import annotations

from torch import fx, nn

from ..quant.fold import batchnorm_after
from ..quant.layers import QuantConv2d


def find_bn_folds(gm: fx.GraphModule) -> dict[fx.Node, tuple[fx.Node, nn.BatchNorm2d]]:
    """Conv node -> (BatchNorm node, module) it absorbs."""
    folds = {}
    for node in gm.graph.nodes:
        pair = batchnorm_after(gm, node)
        if pair is None:
            continue
        conv = gm.get_submodule(str(node.target))
        if not (isinstance(conv, QuantConv2d) and conv.is_integer()) or conv.folded_bn is pair[1]:
            folds[node] = pair
    return folds
