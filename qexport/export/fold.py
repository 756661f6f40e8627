"""Which BatchNorm each conv absorbs: the one a uniform QuantConv2d folds in eval mode, or the
single BatchNorm user of a float Conv2d (the folding math is qexport.quant.fold's)."""

from __future__ import annotations

from torch import fx, nn

from ..quant.layers import QuantConv2d


def find_bn_folds(gm: fx.GraphModule) -> dict[fx.Node, tuple[fx.Node, nn.BatchNorm2d]]:
    """Conv node -> (BatchNorm node, module) it absorbs."""
    folds = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or len(node.users) != 1:
            continue
        conv = gm.get_submodule(str(node.target))
        (user,) = node.users
        if not isinstance(conv, nn.Conv2d) or user.op != "call_module":
            continue
        bn = gm.get_submodule(str(user.target))
        if isinstance(conv, QuantConv2d) and conv.is_uniform():
            if conv.folded_bn is bn:
                folds[node] = (user, bn)
        elif isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
            folds[node] = (user, bn)
    return folds
