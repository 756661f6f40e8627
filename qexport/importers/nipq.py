"""ECoLab-POSTECH/NIPQ checkpoints (MobileNetV2, torchvision layout) -> qexport's zoo ``mobilenetv2``.

The official model quantizes every conv and the classifier weight (per-tensor truncation ``alpha``,
learned bit-width) and every layer input but the image (signed before the expand 1x1 convs and the
last conv, unsigned elsewhere); BatchNorm, ReLU6, the residual add and pooling stay float.  Per layer
the file holds ``L.bit`` / ``L.alpha`` (weight: bit logit theta, pre-softplus alpha) and
``L.act_func.bit`` / ``L.act_func.alpha`` (input), which are qexport's NIPQ ``theta`` / ``alpha_param``
(same parameterisation).  The bit-width ``round(2 + 12 sigmoid(theta))`` is frozen (the official model
is evaluated after its hard-quantization fine-tuning).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from .. import zoo
from ..errors import QexportError
from ..quant.config import QuantConfig
from ..quant.nipq import NipqQuantizer
from ..quant.placement import apply_config
from . import Imported, OfficialFile, load_mapped, official_eval

ARCH = "mobilenetv2"
FLAG = "--nipq-act on|off (CLI) / act=True|False"
ACT_INIT = (6.0, 3.0)  # the official initial alpha_param of unsigned / signed input quantizers


def recognise(tensors: dict[str, Tensor]) -> bool:
    """Whether ``tensors`` look like the official NIPQ MobileNetV2."""
    return "classifier.1.weight" in tensors and "features.18.0.weight" in tensors and "features.0.0.bit" in tensors


def official_bits(theta: Tensor) -> Tensor:
    """The official eval bit-width ``round(2 + 12 sigmoid(theta))`` (torch.round: half to even)."""
    return torch.round(2 + 12 * torch.sigmoid(theta.float())).to(torch.int64)


def _qexport_name(key: str) -> str:
    key = re.sub(r"^features\.(\d+)\.conv\.", r"features.\1.block.", key)
    key = re.sub(r"^classifier\.1\.", "fc.", key)
    key = re.sub(r"\.act_func\.bit$", ".act_quant.theta", key)
    key = re.sub(r"\.act_func\.alpha$", ".act_quant.alpha_param", key)
    key = re.sub(r"\.bit$", ".weight_quant.theta", key)
    return re.sub(r"\.alpha$", ".weight_quant.alpha_param", key)


def official_name(name: str) -> str:
    """The official key a qexport tensor comes from (the inverse of ``_qexport_name``)."""
    name = re.sub(r"\.act_quant\.alpha_param$", ".act_func.alpha", name)
    name = re.sub(r"\.act_quant\.\w+$", ".act_func.bit", name)
    name = re.sub(r"\.weight_quant\.alpha_param$", ".alpha", name)
    name = re.sub(r"\.weight_quant\.\w+$", ".bit", name)
    name = re.sub(r"^features\.(\d+)\.block\.", r"features.\1.conv.", name)
    return re.sub(r"^fc\.", "classifier.1.", name)


def _signed_officially(path: str) -> bool:
    """Q_Sym inputs: the expand 1x1 conv of blocks 2..17 and the last conv (features.18.0)."""
    m = re.fullmatch(r"features\.(\d+)\.block\.0\.0", path)
    return path == "features.18.0" or (m is not None and 2 <= int(m.group(1)) <= 17)


def _act_untouched(tensors: dict[str, Tensor]) -> bool:
    """Every input quantizer still at its official init (bit 0, alpha 6 or 3): never trained."""
    bits = [v for k, v in tensors.items() if k.endswith(".act_func.bit")]
    alphas = [v for k, v in tensors.items() if k.endswith(".act_func.alpha")]
    at_init = all(float(b.reshape(-1)[0]) == 0.0 for b in bits)
    return at_init and all(float(a.reshape(-1)[0]) in ACT_INIT for a in alphas)


def import_nipq(official: OfficialFile, *, arch: str | None, act: bool | None) -> Imported:
    t = official.tensors
    where = f"{official.path} (NIPQ)"
    if arch not in (None, ARCH):
        raise QexportError(f"{where}: the official NIPQ code trains only {ARCH}, not {arch!r}; drop --arch")
    if not recognise(t):
        if "classifier.1.weight" in t and "features.18.0.weight" in t:
            raise QexportError(f"{where}: a MobileNetV2 without NIPQ parameters ('features.0.0.bit'): a float file?")
        raise QexportError(
            f"{where}: not an official NIPQ MobileNetV2 (no 'features.0.0.bit', 'features.18.0.weight' and "
            "'classifier.1.weight' keys)"
        )
    stem, head = tuple(t["features.0.0.weight"].shape[:2]), tuple(t["features.18.0.weight"].shape[:2])
    if stem != (32, 3) or head != (1280, 320):
        raise QexportError(f"{where}: only width 1.0 (32 stem and 1280 head channels) is supported")
    notes: list[str] = []
    if act is None:
        if not _act_untouched(t):
            raise QexportError(
                f"{where}: the file cannot say whether activation quantization was on (--a_scale); pass {FLAG}"
            )
        act = False
        notes.append("activation quantizers are at their initial values (never trained): imported weight-only")
    tensors = {k: v for k, v in t.items() if act or ".act_func." not in k}
    mapped: dict[str, Tensor] = {}
    for key, value in tensors.items():
        name = _qexport_name(key)
        if name.endswith((".theta", ".alpha_param")):
            if value.numel() != 1:
                raise QexportError(f"{where}: '{key}' has {value.numel()} values, the official quantizer holds one")
            value = value.reshape(())
        mapped[name] = value
    bits = {k.rsplit(".", 1)[0]: official_bits(v) for k, v in mapped.items() if k.endswith(".theta")}
    for quant, b in bits.items():  # the buffers qexport keeps beside theta: the frozen width, hard mode
        mapped[f"{quant}.frozen_bits"] = b
        mapped[f"{quant}.hard"] = torch.tensor(True)
        mapped[f"{quant}.initialized"] = torch.tensor(True)
    widest = max(int(b) for b in bits.values())
    cfg = QuantConfig(
        weight="nipq", act="nipq" if act else None, bits=4, placement="paper", first_last_bits=None,
        learn_bits=True, max_bits=max(widest, 4), overrides={"features.0.0": {"act": None}},
    )  # fmt: skip
    num_classes = int(t["classifier.1.weight"].shape[0])
    model = apply_config(zoo.create(ARCH, num_classes=num_classes), cfg)
    load_mapped(model, mapped, where, official_name)
    for name, m in model.named_modules():
        if isinstance(m, NipqQuantizer) and m.role == "act" and m.signed != _signed_officially(name.rsplit(".", 1)[0]):
            raise QexportError(f"{where}: qexport's sign analysis disagrees with the official code at '{name}'")
    model.eval()
    layers = sorted(int(b) for k, b in bits.items() if k.endswith("weight_quant"))
    notes.append(
        f"{len(layers)} weight quantizers at {layers[0]}..{layers[-1]} bits"
        + (f", {len(bits) - len(layers)} input quantizers" if act else ", inputs float")
        + "; weights assumed quantized (--w_scale > 0 as in the official scripts)"
    )
    if widest > 8:
        notes.append(f"widest quantizer {widest} bits: exported with 16-bit codes (float kernels for those layers)")
    return Imported(model, "nipq", ARCH, notes)


def official_codes(x: Tensor, alpha: Tensor, bits: int, signed: bool) -> Tensor:
    """The official hard quantizer's codes ``round(clamp(x / alpha, lo, 1) * n)``."""
    n = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    return torch.round(torch.clamp(x / alpha, -1.0 if signed else 0.0, 1.0) * n)


def formula_difference(model: nn.Module, example: Tensor) -> str:
    """One line: the input codes qexport's ``round(x / (alpha / n))`` gives that the official
    ``round(clamp(x / alpha) * n)`` does not, on ``example`` (they differ only near rounding ties)."""
    counts = [0, 0]

    def hook(q: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
        assert isinstance(q, NipqQuantizer)
        x = inputs[0]
        theirs = official_codes(x, q.alpha().detach(), q.integer_bits(), q.signed)
        counts[0] += int((q.codes(x) != theirs).sum())
        counts[1] += x.numel()

    qs = [m for m in model.modules() if isinstance(m, NipqQuantizer) and m.role == "act"]
    handles = [q.register_forward_hook(hook) for q in qs]
    try:
        with torch.no_grad(), official_eval(model):
            model(example)
    finally:
        for h in handles:
            h.remove()
    w_diff = w_total = 0
    for layer in model.modules():
        q = getattr(layer, "weight_quant", None)
        if isinstance(q, NipqQuantizer):
            w = layer.weight.detach()
            w_diff += int((q.codes(w) != official_codes(w, q.alpha().detach(), q.integer_bits(), True)).sum())
            w_total += w.numel()
    return (
        f"codes: qexport's round(x / (alpha / n)) differs from the official round(clamp(x / alpha) * n) on "
        f"{counts[0]} of {counts[1]} input codes and {w_diff} of {w_total} weight codes (rounding ties)"
    )
