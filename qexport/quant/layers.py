"""Conv2d / Linear with an activation quantizer on the input and a weight quantizer on the weight.

They subclass the torch layers, so groups, depthwise, stride, dilation, padding and bias work as
usual; either quantizer may be None (that side stays float).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops import post_weights
from .base import Quantizer
from .fold import DeployedConv, DeployedPost, FoldableBatchNorm2d, deployed_conv, deployed_post


def version_key(tensors: list[Tensor]) -> tuple[int, ...]:
    """Changes whenever one of ``tensors`` is modified in place (optimizer steps, load_state_dict bump
    ``_version``) or replaced: the key of the eval-mode caches below."""
    return tuple(t._version for t in tensors) + tuple(id(t) for t in tensors)


class _Quantized:
    """What both layers share: the two quantizers and their application."""

    act_quant: Quantizer | None
    weight_quant: Quantizer | None
    weight: nn.Parameter

    def quantized_operands(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.act_quant is not None:
            x = self.act_quant(x)
        return x, self.quantized_weight()

    def weight_signs(self) -> Tensor | None:
        """Per-output-channel signs [C, 1, ...] the weight is mirrored by before quantization, or None
        (see QuantConv2d)."""
        return None

    def _sign_tensors(self) -> list[Tensor]:
        return []

    def _fake_weight(self) -> Tensor:
        assert self.weight_quant is not None
        signs = self.weight_signs()
        if signs is None:
            return self.weight_quant(self.weight)
        return self.weight_quant(self.weight * signs) * signs

    def quantized_weight(self) -> Tensor:
        """The fake-quantized weight; in eval without autograd it is cached until the weight or a
        quantizer parameter changes (POST's level projection of a large layer is not free)."""
        q = self.weight_quant
        if q is None:
            return self.weight
        if q.training or torch.is_grad_enabled() or not q.ready or q.calibrating:
            return self._fake_weight()
        key = version_key([self.weight, *q.parameters(), *q.buffers(), *self._sign_tensors()])
        cached = self.__dict__.get("_weight_cache")
        if cached is None or cached[0] != key:
            cached = (key, self._fake_weight())
            self.__dict__["_weight_cache"] = cached
        return cached[1]

    def integer_weight(self) -> tuple[Tensor, Tensor] | None:
        """``(codes, per-channel scale)`` of the fake-quantized weight (``codes * scale`` equals it), or
        None when the weight quantizer has no integer form (POST) or there is none."""
        q = self.weight_quant
        if q is None:
            return None
        signs = self.weight_signs()
        w = self.weight.detach()
        if signs is None:
            return q.integer_weight(w)
        form = q.integer_weight(w * signs)
        return None if form is None else (form[0] * signs, form[1])


class QuantConv2d(_Quantized, nn.Conv2d):
    folded_bn: FoldableBatchNorm2d | None = None  # a reference, not a submodule (it stays in the graph)
    bn_after: nn.BatchNorm2d | None = None  # the BatchNorm the export folds in (a reference too)

    def fold(self, bn: FoldableBatchNorm2d) -> None:
        """Absorb the BatchNorm that follows in eval mode (see fold.py)."""
        object.__setattr__(self, "folded_bn", bn)
        self.link_batchnorm(bn)

    def link_batchnorm(self, bn: nn.BatchNorm2d) -> None:
        object.__setattr__(self, "bn_after", bn)

    def weight_signs(self) -> Tensor | None:
        """Folding the BatchNorm that follows negates the codes of channels whose gamma is negative.
        An asymmetric code range (LSQ's full range, -2..1 at 2 bits) is therefore applied to the weight
        mirrored by sign(gamma): the folded codes then lie in the range itself (int2 / int4 storage
        holds them) whatever the sign.  Symmetric ranges need no mirror (None)."""
        bn, q = self.bn_after, self.weight_quant
        if bn is None or not bn.affine or q is None:
            return None
        r = q.code_range
        if r.qmin == -r.qmax:
            return None
        signs = torch.where(bn.weight.detach() < 0, -1.0, 1.0).to(self.weight.dtype)
        return signs.view(-1, *([1] * (self.weight.dim() - 1)))

    def _sign_tensors(self) -> list[Tensor]:
        return [] if self.bn_after is None or not self.bn_after.affine else [self.bn_after.weight]

    def is_integer(self) -> bool:
        """A uniform input quantizer with a constant scale and weights with an integer form (uniform or
        POT): the conv runs as an integer kernel (QLinearConv) with an int32 bias."""
        a = self.act_quant
        return a is not None and a.kind == "uniform" and self._integer_weights()

    def _integer_weights(self) -> bool:
        w = self.weight_quant
        return w is not None and (w.kind == "uniform" or w.method in ("pot", "post2"))

    def integer_eval(self) -> bool:
        """Whether eval runs the integer arithmetic of the deployed conv: integer or POST weights, and
        input codes with a constant step (QLinearConv / IntConv / PostConv) or a per-sample one (ASQ)."""
        a, w = self.act_quant, self.weight_quant
        post = w is not None and w.method == "post"
        return a is not None and a.kind in ("uniform", "asq") and (self._integer_weights() or post)

    def _deployable_now(self) -> bool:
        """Both quantizers initialised and not collecting calibration statistics."""
        return all(q is not None and q.ready and not q.calibrating for q in (self.act_quant, self.weight_quant))

    def _state_versions(self) -> tuple[int, ...]:
        """In-place versions of every tensor the deployed conv depends on (optimizer steps and
        load_state_dict modify them in place, which bumps the version)."""
        tensors = [*self.parameters(), *self.buffers()]
        if self.folded_bn is not None:
            tensors += [*self.folded_bn.parameters(), *self.folded_bn.buffers()]
        return version_key(tensors)

    def deployed(self) -> DeployedConv | DeployedPost:
        """The folded weight codes and scales and the bias the deployed graph holds (cached until a
        parameter or buffer changes)."""
        key = self._state_versions()
        cached = self.__dict__.get("_deployed_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        dep = self._compute_deployed()
        self.__dict__["_deployed_cache"] = (key, dep)
        return dep

    def _compute_deployed(self) -> DeployedConv | DeployedPost:
        q, a = self.weight_quant, self.act_quant
        assert q is not None
        bias = None if self.bias is None else self.bias.detach().cpu().numpy()
        if q.method == "post":
            level = q.codes(self.weight.detach()).cpu().numpy()
            return deployed_post(level, q.describe().scale.detach().cpu().numpy(), q.code_range.bits, bias,
                                 self.folded_bn)  # fmt: skip
        form = self.integer_weight()
        assert form is not None and a is not None
        codes, w_scale = (t.cpu().numpy() for t in form)
        a_spec = a.describe()
        act_scale = a_spec.scale.cpu().numpy() if a_spec.kind == "uniform" else None  # ASQ: per sample
        return deployed_conv(codes.astype("int64"), w_scale, act_scale, bias, self.folded_bn)

    @classmethod
    def wrap(cls, conv: nn.Conv2d, act: Quantizer | None, weight: Quantizer | None) -> QuantConv2d:
        q = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )  # fmt: skip
        q.load_state_dict(conv.state_dict())
        q.act_quant, q.weight_quant = act, weight
        q.out_hw = (0, 0)
        return q

    def forward(self, x: Tensor) -> Tensor:
        deploy = not self.training and self.integer_eval() and self._deployable_now()
        if self.folded_bn is not None:
            self.folded_bn.absorbed = deploy  # the BatchNorm right after passes through only then
        if deploy:
            y = self._integer_forward(x)
        else:
            y = self._conv_forward(*self.quantized_operands(x), self.bias)
        self.out_hw = (int(y.shape[-2]), int(y.shape[-1]))  # read by the NIPQ BOPs loss
        return y

    def _integer_forward(self, x: Tensor) -> Tensor:
        """What the integer graph computes (qexport.IntConv's / PostConv's arithmetic; QLinearConv's up
        to its requantization): the exact integer convolution of the activation and weight codes (BN
        folded in; POST: one for the even and one for the odd powers of sqrt 2, combined as
        ``even + odd * 0.70710677``), then ``acc * (s_x * s_w) + bias`` in float32, the bias on the
        accumulator grid for a constant step ``s_x``.  A float conv of the fake-quantized values rounds
        its partial sums differently, which flips codes at rounding ties downstream (and, through
        ASQ's adapter, whole samples' steps)."""
        a = self.act_quant
        assert a is not None
        cached = self.__dict__.get("_integer_cache")
        dep = self.deployed()
        if cached is None or cached[0] is not dep or cached[1] != x.device:
            cached = (dep, x.device, *self._integer_operands(dep, x.device))
            self.__dict__["_integer_cache"] = cached
        weights, w_scale, bias, step, rescale = cached[2:]
        if step is None:  # ASQ: this batch's per-sample steps [N, 1, 1, 1]
            step = a.scale_for(x)
            rescale = step * w_scale
        # a(x) = codes * step: the division gives the codes back exactly.  Calling the quantizer (not
        # its codes()) keeps its forward hooks, which the checker's teacher forcing replaces the output
        # with; for ASQ that runs the adapter a second time (~16% of a ResNet-20 eval, measured here)
        codes = torch.round(a(x) / step)
        acc = self._conv_forward(codes.to(weights[0].dtype), weights[0], None).to(torch.float32)
        if len(weights) == 2:  # POST
            odd = self._conv_forward(codes.to(weights[1].dtype), weights[1], None).to(torch.float32)
            acc = acc + odd * torch.tensor(post_weights.SQRT_HALF)  # float32, as the graph
        return acc * rescale + bias

    def _integer_operands(
        self, dep: DeployedConv | DeployedPost, device: torch.device
    ) -> tuple[list[Tensor], Tensor, Tensor, Tensor | None, Tensor | None]:
        """(integer weight tensors, weight scale and bias [1, Cout, 1, 1], the constant input step and
        rescale or None for ASQ) on ``device``."""
        a = self.act_quant
        assert a is not None
        x_max = max(abs(a.code_range.qmin), abs(a.code_range.qmax))
        if isinstance(dep, DeployedPost):
            codes = list(post_weights.reference(dep.codes, dep.bits))
            bound = post_weights.accumulator_bound(dep.codes, dep.bits, x_max)
        else:
            codes, bound = [dep.codes], dep.max_abs_row_sum * x_max
        # float32 sums of integers are exact while every partial sum stays below 2^24 (CPU kernels
        # here multiply and add directly; other devices may pick inexact algorithms: float64 there)
        dtype = torch.float32 if device.type == "cpu" and bound < 2**24 else torch.float64
        weights = [torch.from_numpy(c).to(device, dtype) for c in codes]
        w_scale = torch.from_numpy(dep.weight_scale).to(device).view(1, -1, 1, 1)
        bias = torch.from_numpy(dep.float_bias).to(device).view(1, -1, 1, 1)
        a_spec = a.describe()
        step = a_spec.scale.detach().to(device) if a_spec.kind == "uniform" else None
        return weights, w_scale, bias, step, None if step is None else step * w_scale


class QuantLinear(_Quantized, nn.Linear):
    @classmethod
    def wrap(cls, linear: nn.Linear, act: Quantizer | None, weight: Quantizer | None) -> QuantLinear:
        q = cls(
            linear.in_features, linear.out_features, bias=linear.bias is not None, device=linear.weight.device,
            dtype=linear.weight.dtype,
        )  # fmt: skip
        q.load_state_dict(linear.state_dict())
        q.act_quant, q.weight_quant = act, weight
        q.rows = 1
        return q

    def forward(self, x: Tensor) -> Tensor:
        x, w = self.quantized_operands(x)
        self.rows = max(x.numel() // max(x.shape[0] * x.shape[-1], 1), 1)  # tokens per sample, for BOPs
        return nn.functional.linear(x, w, self.bias)
