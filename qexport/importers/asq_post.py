"""SENGEL13/ASQ-POST checkpoints (ResNet-18) -> qexport's zoo ``resnet18``.

The official ``q_resnet18`` keeps the stem conv + BatchNorm and the fc in FP32 and quantizes every
block conv (and downsample conv) on its own input: ASQ activations (a per-tensor step ``s`` times a
per-sample ``beta`` from an adapter) and, in ``Q_ResNet18_PA``, POST weights with the public code's
base-2 level set (qexport ``post2``), or LSQ per-channel weights in ``Q_ResNet18_Asq``; the
``_Lsq`` variant has LSQ inputs (no adapter).  The bit-width is not in the state_dict: the checkpoint
dict's ``arch`` entry (``resnet18_4``) names it, else ``--bits``.  PA and Asq files share key names
and shapes; the order of a conv's keys tells them apart (PA: ``quan_w_fn.s`` before ``conv.weight``).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from .. import zoo
from ..errors import QexportError
from ..quant.config import QuantConfig
from ..quant.placement import apply_config
from . import Imported, OfficialFile, load_mapped

ARCH = "resnet18"
STEP_EPS = 1.19e-7  # the official activation step is max(|s|, this) in the forward
_UNIT = re.compile(r"^layer(\d)\.unit(\d+)\.(quant_convbn1|quant_convbn2|quant_identity_convbn)\.(.+)$")
_PART = {
    "quant_convbn1": ("conv1", "bn1"),
    "quant_convbn2": ("conv2", "bn2"),
    "quant_identity_convbn": ("shortcut.0", "shortcut.1"),
}


def recognise(tensors: dict[str, Tensor]) -> bool:
    return "quant_init_block_convbn.conv.weight" in tensors and "quant_output.linear.weight" in tensors


def _blocks(tensors: dict[str, Tensor]) -> list[int]:
    counts = [0, 0, 0, 0]
    for key in tensors:
        m = re.match(r"^layer(\d)\.unit(\d+)\.quant_convbn1\.conv\.weight$", key)
        if m and 1 <= int(m.group(1)) <= 4:
            counts[int(m.group(1)) - 1] += 1
    return counts


def _bits_of(official: OfficialFile, bits: int | None, where: str) -> int:
    arch = official.extras.get("arch")
    named = None
    if isinstance(arch, str) and (m := re.search(r"_(\d+)$", arch)):
        named = int(m.group(1))
    if bits is not None and named is not None and bits != named:
        raise QexportError(f"{where}: --bits {bits} contradicts the checkpoint's arch entry {arch!r}")
    chosen = bits if bits is not None else named
    if chosen is None:
        raise QexportError(f"{where}: the file does not hold the bit-width (the 'bit' of default.yaml); pass --bits N")
    return chosen


def _variant(tensors: dict[str, Tensor], weights: str | None, where: str) -> tuple[str, str]:
    """(weight method, act method) of the file: post2 / lsq weights, asq / lsq inputs."""
    keys = list(tensors)
    has_adapter = any(".adapter.net." in k for k in keys)
    act = "asq" if has_adapter else "lsq"
    if weights is not None:
        if weights not in ("post", "lsq"):
            raise QexportError(f"{where}: --asq-weights {weights!r}: use post or lsq")
        return ("post2" if weights == "post" else "lsq"), act
    if not has_adapter:
        return "lsq", act  # Q_ResNet18_Lsq: LSQ weights and inputs
    first = "layer1.unit1.quant_convbn1."
    try:
        w_at, conv_at = keys.index(first + "quan_w_fn.s"), keys.index(first + "conv.weight")
    except ValueError:
        raise QexportError(f"{where}: lacks '{first}quan_w_fn.s' or '{first}conv.weight': a partial file?") from None
    if w_at < conv_at:
        return "post2", act  # PostBnConv2d registers its quantizers before the conv
    if conv_at < w_at and keys.index(first + "bn.weight") < w_at:
        return "lsq", act  # AsqBnConv2dUnfold registers them last
    raise QexportError(f"{where}: the key order does not tell POST from LSQ weights; pass --asq-weights post|lsq")


def _map(tensors: dict[str, Tensor], weight: str, where: str) -> dict[str, Tensor]:
    mapped: dict[str, Tensor] = {}
    for key, value in tensors.items():
        if key.startswith("quant_init_block_convbn."):
            rest = key.removeprefix("quant_init_block_convbn.")
            mapped[re.sub(r"^conv\.", "stem.0.", re.sub(r"^bn\.", "stem.1.", rest))] = value
            continue
        if key.startswith("quant_output.linear."):
            mapped["fc." + key.removeprefix("quant_output.linear.")] = value
            continue
        m = _UNIT.match(key)
        if m is None:
            raise QexportError(f"{where}: unknown key '{key}' (not part of the official ResNet-18)")
        stage, unit, part, rest = int(m.group(1)) - 1, int(m.group(2)) - 1, m.group(3), m.group(4)
        conv, bn = _PART[part]
        base = f"layers.{stage}.{unit}."
        if rest == "init_state":
            continue
        if rest.startswith("conv."):
            mapped[base + conv + rest.removeprefix("conv")] = value
        elif rest.startswith("bn."):
            mapped[base + bn + rest.removeprefix("bn")] = value
        elif rest == "quan_w_fn.s":
            name = "alpha" if weight == "post2" else "step"
            mapped[f"{base}{conv}.weight_quant.{name}"] = value.reshape(-1).abs()
            mapped[f"{base}{conv}.weight_quant.initialized"] = torch.tensor(True)
        elif rest == "quan_a_fn.s":
            mapped[f"{base}{conv}.act_quant.step"] = value.reshape(()).abs().clamp(min=STEP_EPS)
            mapped[f"{base}{conv}.act_quant.initialized"] = torch.tensor(True)
        elif rest.startswith("adapter.net."):
            layer, _, param = rest.removeprefix("adapter.net.").partition(".")
            two = any(k.endswith(".adapter.net.2.weight") and k.startswith(key.split(".adapter.")[0]) for k in tensors)
            fc = {"0": "fc1" if two else "fc2", "2": "fc2"}.get(layer)
            if fc is None:
                raise QexportError(f"{where}: unknown adapter layer in '{key}'")
            mapped[f"{base}{conv}.act_quant.adapter.{fc}.{param}"] = value
        else:
            raise QexportError(f"{where}: unknown key '{key}' (not part of the official ResNet-18)")
    return mapped


def official_name(name: str) -> str:
    """The official key a qexport tensor comes from (the inverse of ``_map``)."""
    for ours, theirs in (("stem.0.", "quant_init_block_convbn.conv."), ("stem.1.", "quant_init_block_convbn.bn."),
                         ("fc.", "quant_output.linear.")):  # fmt: skip
        if name.startswith(ours):
            return theirs + name.removeprefix(ours)
    m = re.match(r"^layers\.(\d)\.(\d+)\.(conv1|bn1|conv2|bn2|shortcut\.0|shortcut\.1)\.(.+)$", name)
    if m is None:
        return name
    part = {"1": "quant_convbn1", "2": "quant_convbn2"}.get(m.group(3)[-1], "quant_identity_convbn")
    part = "quant_identity_convbn" if m.group(3).startswith("shortcut") else part
    base, rest = f"layer{int(m.group(1)) + 1}.unit{int(m.group(2)) + 1}.{part}.", m.group(4)
    if m.group(3).startswith(("bn", "shortcut.1")):
        return f"{base}bn.{rest}"
    if rest.startswith("weight_quant."):
        return f"{base}quan_w_fn.s"
    if rest.startswith("act_quant.adapter."):
        return f"{base}adapter.net.{0 if '.fc1.' in rest else 2}.{rest.rsplit('.', 1)[1]}"
    if rest.startswith("act_quant."):
        return f"{base}quan_a_fn.s"
    return f"{base}conv.{rest}"


def _weight_changes(model: Any, weight: str) -> str | None:
    """LSQ full-range weights: qexport applies the range to the weight mirrored by sign(BN gamma) (so a
    folded code stays in range); count the weights whose quantized value moves because of it."""
    if weight != "lsq":
        return None
    moved = total = 0
    for m in model.modules():
        q = getattr(m, "weight_quant", None)
        if q is None or getattr(m, "bn_after", None) is None:
            continue
        w = m.weight.detach()
        step = q.step.detach().clamp(min=1e-8).view(-1, 1, 1, 1)
        r = q.code_range
        theirs = torch.round(torch.clamp(w / step, r.qmin, r.qmax)) * step
        with torch.no_grad():
            moved += int((m.quantized_weight() != theirs).sum())
        total += w.numel()
    return f"LSQ weights mirrored by sign(BatchNorm gamma) for folding: {moved} of {total} quantized weights move"


def import_asq_post(official: OfficialFile, *, arch: str | None, bits: int | None, weights: str | None) -> Imported:
    t = official.tensors
    where = f"{official.path} (ASQ-POST)"
    if arch not in (None, ARCH):
        raise QexportError(f"{where}: only {ARCH} (q_resnet18) is importable, not {arch!r}; drop --arch")
    if not recognise(t):
        raise QexportError(
            f"{where}: not an official ASQ-POST ResNet (no 'quant_init_block_convbn.conv.weight' and "
            "'quant_output.linear.weight' keys)"
        )
    if any(".quant_convbn3." in k for k in t):
        raise QexportError(f"{where}: a bottleneck ResNet (ResNet-50); only ResNet-18 is importable")
    blocks = _blocks(t)
    if blocks != [2, 2, 2, 2]:
        raise QexportError(f"{where}: {blocks} blocks per stage; only ResNet-18 ([2, 2, 2, 2]) is importable")
    b = _bits_of(official, bits, where)
    weight, act = _variant(t, weights, where)
    if weight == "post2" and b not in (2, 3, 4):
        raise QexportError(
            f"{where}: {b}-bit base-2 POST needs integer weights up to 2^{2 ** (b - 1) - 1}, past int16; "
            "2 to 4 bits import"
        )
    cfg = QuantConfig(
        weight=weight, act=act, bits=b, placement="paper", first_last_bits=None,
        overrides={"stem.0": None, "fc": None}, weight_range="full",
    )  # fmt: skip
    num_classes = int(t["quant_output.linear.weight"].shape[0])
    model = apply_config(zoo.create(ARCH, num_classes=num_classes), cfg)
    load_mapped(model, _map(t, weight, where), where, official_name)
    model.eval()
    names = {"post2": "POST (base 2, Q_ResNet18_PA)", "lsq": "LSQ"}
    notes = [f"{b}-bit {names[weight]} weights, {act.upper()} inputs; stem conv and fc FP32 as in the official code"]
    moved = _weight_changes(model, weight)
    if moved:
        notes.append(moved)
    return Imported(model, "asq-post", ARCH, notes)
