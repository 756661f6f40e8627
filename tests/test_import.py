"""Importing checkpoints of the official NIPQ and ASQ-POST code (qexport/importers).

The official parameter layouts are built synthetically (random "trained-looking" values, key names
and order from ../shared/research/official-code.md); the reference forwards below are written from
the formulas there, not from the official code."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import qexport
from qexport.cli import main
from qexport.errors import QexportError
from qexport.importers import import_checkpoint, official_eval
from qexport.importers.asq_post import official_name
from qexport.quant import Post2Quantizer
from qexport.zoo.mobilenetv2 import SETTINGS

SIZE = 32


# -- synthetic official checkpoints -----------------------------------------------------------------
def _bn(sd: dict, prefix: str, c: int, gen: torch.Generator, negative: bool = True) -> None:
    gamma = 0.5 + torch.rand(c, generator=gen)
    if negative:
        gamma = gamma * torch.where(torch.rand(c, generator=gen) < 0.2, -1.0, 1.0)
    sd[f"{prefix}.weight"] = gamma
    sd[f"{prefix}.bias"] = 0.1 * torch.randn(c, generator=gen)
    sd[f"{prefix}.running_mean"] = 0.1 * torch.randn(c, generator=gen)
    sd[f"{prefix}.running_var"] = 0.5 + torch.rand(c, generator=gen)
    sd[f"{prefix}.num_batches_tracked"] = torch.tensor(100)


def _theta(bits: float) -> Tensor:
    p = (bits - 2) / 12
    return torch.tensor([math.log(p / (1 - p))])


def _softplus_inv(y: float) -> Tensor:
    return torch.tensor([y + math.log(-math.expm1(-y))])


def _mbv2_layers() -> list[tuple[str, str, int, int, int, int, int, str | None]]:
    """(official conv prefix, its BatchNorm, cin, cout, kernel, groups, stride, input sign) of the
    official MobileNetV2 (torchvision layout)."""
    out: list = [("features.0.0", "features.0.1", 3, 32, 3, 1, 2, None)]
    cin, idx = 32, 1
    for t, c, n, s in SETTINGS:
        for i in range(n):
            hidden, j, p = cin * t, 0, f"features.{idx}.conv"
            if t != 1:
                out.append((f"{p}.0.0", f"{p}.0.1", cin, hidden, 1, 1, 1, "signed"))
                j = 1
            out.append((f"{p}.{j}.0", f"{p}.{j}.1", hidden, hidden, 3, hidden, s if i == 0 else 1, "unsigned"))
            out.append((f"{p}.{j + 1}", f"{p}.{j + 2}", hidden, c, 1, 1, 1, "unsigned"))
            cin, idx = c, idx + 1
    out.append(("features.18.0", "features.18.1", 320, 1280, 1, 1, 1, "signed"))
    return out


def nipq_state_dict(seed: int = 0, act: bool = True, wide: bool = True, classes: int = 10) -> dict[str, Tensor]:
    """Trained-looking NIPQ parameters: bits 3..8 (10 on the last conv with ``wide``), alpha below max|w|;
    ``act=False``: input quantizers left at the official init (bit 0, alpha 6 / 3)."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = OrderedDict()
    bit_choices = [3.0, 4.0, 5.0, 6.0, 8.0]
    for prefix, bn, cin, cout, k, groups, _stride, sign in _mbv2_layers():
        w = torch.randn(cout, cin // groups, k, k, generator=gen) * math.sqrt(2.0 / (k * k * cin // groups))
        sd[f"{prefix}.weight"] = w
        b = bit_choices[int(torch.randint(len(bit_choices), (1,), generator=gen))]
        b = 10.0 if wide and prefix == "features.18.0" else b  # past 8 bits: 16-bit codes in export
        sd[f"{prefix}.bit"] = _theta(b)
        sd[f"{prefix}.alpha"] = _softplus_inv(float(w.abs().max()) * (0.5 + 0.4 * float(torch.rand(1, generator=gen))))
        if sign is not None:
            init = 3.0 if sign == "signed" else 6.0
            sd[f"{prefix}.act_func.bit"] = _theta(b) if act else torch.zeros(1)
            alpha = _softplus_inv(2.0 + 2 * float(torch.rand(1, generator=gen)))
            sd[f"{prefix}.act_func.alpha"] = alpha if act else torch.tensor([init])
        _bn(sd, bn, cout, gen)
    sd["classifier.1.weight"] = 0.05 * torch.randn(classes, 1280, generator=gen)
    sd["classifier.1.bias"] = 0.1 * torch.randn(classes, generator=gen)
    sd["classifier.1.bit"] = _theta(6.0)
    sd["classifier.1.alpha"] = _softplus_inv(float(sd["classifier.1.weight"].abs().max()))
    sd["classifier.1.act_func.bit"] = _theta(6.0) if act else torch.zeros(1)
    sd["classifier.1.act_func.alpha"] = _softplus_inv(3.0) if act else torch.tensor([6.0])
    return sd


def _asq_conv(sd: dict, prefix: str, cin: int, cout: int, k: int, order: str, gen: torch.Generator,
              negative: bool) -> None:  # fmt: skip
    w = torch.randn(cout, cin, k, k, generator=gen) * math.sqrt(2.0 / (k * k * cin))
    q = w.abs().reshape(cout, -1).quantile(0.99, dim=1).view(-1, 1, 1, 1) if order == "post" else \
        2 * w.abs().reshape(cout, -1).mean(1).view(-1, 1, 1, 1) / math.sqrt(7)  # fmt: skip
    signs = torch.where(
        torch.rand(cout, 1, 1, 1, generator=gen) < 0.1, -1.0, 1.0
    )  # official alpha is never made positive
    w_s, a_s = q * signs, torch.tensor([0.05 + 0.1 * float(torch.rand(1, generator=gen))])
    adapter = OrderedDict()
    adapter[f"{prefix}.adapter.net.0.weight"] = 0.3 * torch.randn(cin // 4, cin, generator=gen)
    adapter[f"{prefix}.adapter.net.0.bias"] = 0.1 * torch.randn(cin // 4, generator=gen)
    adapter[f"{prefix}.adapter.net.2.weight"] = 0.05 * torch.randn(1, cin // 4, generator=gen)
    adapter[f"{prefix}.adapter.net.2.bias"] = torch.tensor([1.0])
    bn: dict = OrderedDict()
    _bn(bn, f"{prefix}.bn", cout, gen, negative=negative)
    sd[f"{prefix}.init_state"] = torch.zeros(1)
    if order == "post":  # PostBnConv2d: quantizers, conv, bn, adapter
        sd[f"{prefix}.quan_w_fn.s"], sd[f"{prefix}.quan_a_fn.s"] = w_s, a_s
        sd[f"{prefix}.conv.weight"] = w
        sd.update(bn)
        sd.update(adapter)
    else:  # AsqBnConv2dUnfold: conv, bn, adapter, quantizers
        sd[f"{prefix}.conv.weight"] = w
        sd.update(bn)
        sd.update(adapter)
        sd[f"{prefix}.quan_w_fn.s"], sd[f"{prefix}.quan_a_fn.s"] = w_s, a_s


def asq_state_dict(
    seed: int = 0, order: str = "post", classes: int = 10, negative: bool | None = None
) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = OrderedDict()
    sd["quant_init_block_convbn.conv.weight"] = torch.randn(64, 3, 7, 7, generator=gen) * math.sqrt(2 / 147)
    _bn(sd, "quant_init_block_convbn.bn", 64, gen)
    cin = 64
    for i, width in enumerate([64, 128, 256, 512], start=1):
        for j in (1, 2):
            p = f"layer{i}.unit{j}"
            stride_in = cin if j == 1 else width
            # LSQ weights with a negative gamma are mirrored by qexport (test_lsq_mirroring_is_reported)
            neg = order == "post" if negative is None else negative
            _asq_conv(sd, f"{p}.quant_convbn1", stride_in, width, 3, order, gen, neg)
            _asq_conv(sd, f"{p}.quant_convbn2", width, width, 3, order, gen, neg)
            if j == 1 and i > 1:
                _asq_conv(sd, f"{p}.quant_identity_convbn", cin, width, 1, order, gen, neg)
        cin = width
    sd["quant_output.linear.weight"] = 0.05 * torch.randn(classes, 512, generator=gen)
    sd["quant_output.linear.bias"] = 0.1 * torch.randn(classes, generator=gen)
    return sd


# -- reference forwards, from the formulas ----------------------------------------------------------
def nipq_ref(x: Tensor, bit: Tensor, alpha: Tensor, signed: bool) -> Tensor:
    b = int(torch.round(2 + 12 * torch.sigmoid(bit)).item())
    a = F.softplus(alpha)
    n = 2 ** (b - 1) - 1 if signed else 2**b - 1
    return torch.round(torch.clamp(x / a, -1.0 if signed else 0.0, 1.0) * n) * a / n


def bn_ref(x: Tensor, sd: dict, p: str) -> Tensor:
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        False, 0.0, 1e-5)  # fmt: skip


def nipq_forward(sd: dict, x: Tensor, act: bool = True) -> Tensor:
    def conv(x: Tensor, p: str, stride: int, groups: int, sign: str | None) -> Tensor:
        if sign is not None and act:
            x = nipq_ref(x, sd[f"{p}.act_func.bit"], sd[f"{p}.act_func.alpha"], sign == "signed")
        w = nipq_ref(sd[f"{p}.weight"], sd[f"{p}.bit"], sd[f"{p}.alpha"], True)
        return F.conv2d(x, w, None, stride, w.shape[-1] // 2, 1, groups)

    layers = {p: (s, g, sign) for p, _bn, _ci, _co, _k, g, s, sign in _mbv2_layers()}
    h = F.relu6(bn_ref(conv(x, "features.0.0", 2, 1, None), sd, "features.0.1"))
    cin, idx = 32, 1
    for t, c, n, s in SETTINGS:
        for i in range(n):
            y, j = h, 0
            if t != 1:
                p = f"features.{idx}.conv.0"
                y = F.relu6(bn_ref(conv(y, f"{p}.0", 1, 1, "signed"), sd, f"{p}.1"))
                j = 1
            p = f"features.{idx}.conv.{j}"
            stride, groups, _ = layers[f"{p}.0"]
            y = F.relu6(bn_ref(conv(y, f"{p}.0", stride, groups, "unsigned"), sd, f"{p}.1"))
            p = f"features.{idx}.conv.{j + 1}"
            y = bn_ref(conv(y, p, 1, 1, "unsigned"), sd, f"features.{idx}.conv.{j + 2}")
            h = h + y if (s if i == 0 else 1) == 1 and cin == c else y
            cin, idx = c, idx + 1
    h = F.relu6(bn_ref(conv(h, "features.18.0", 1, 1, "signed"), sd, "features.18.1"))
    h = h.mean((2, 3))
    if act:
        h = nipq_ref(h, sd["classifier.1.act_func.bit"], sd["classifier.1.act_func.alpha"], False)
    w = nipq_ref(sd["classifier.1.weight"], sd["classifier.1.bit"], sd["classifier.1.alpha"], True)
    return F.linear(h, w, sd["classifier.1.bias"])


def post_ref(w: Tensor, alpha: Tensor, bits: int) -> Tensor:
    mags = [1.0] + [2.0**-k for k in range(1, 2 ** (bits - 1))]
    levels = torch.tensor([0.0] + mags + [-m for m in mags])
    v = torch.clamp(w / alpha, -1, 1)
    idx = torch.argmin((v.unsqueeze(-1) - levels).abs(), dim=-1)
    return alpha * levels[idx]


def lsq_w_ref(w: Tensor, s: Tensor, bits: int) -> Tensor:
    s = s.abs().clamp(min=1.19e-7)
    return torch.round(torch.clamp(w / s, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)) * s


def asq_act_ref(x: Tensor, sd: dict, p: str, bits: int) -> Tensor:
    h = F.relu(F.linear(x.mean((2, 3)), sd[f"{p}.adapter.net.0.weight"], sd[f"{p}.adapter.net.0.bias"]))
    beta = F.relu(F.linear(h, sd[f"{p}.adapter.net.2.weight"], sd[f"{p}.adapter.net.2.bias"])).clamp(min=1e-8)
    step = sd[f"{p}.quan_a_fn.s"].abs().clamp(min=1.19e-7) * beta.view(-1, 1, 1, 1)
    return torch.clamp(torch.round(x / step), 0, 2**bits - 1) * step


def asq_forward(sd: dict, x: Tensor, bits: int, weights: str) -> Tensor:
    def qconv(x: Tensor, p: str, stride: int) -> Tensor:
        w, s = sd[f"{p}.conv.weight"], sd[f"{p}.quan_w_fn.s"]
        wq = post_ref(w, s, bits) if weights == "post" else lsq_w_ref(w, s, bits)
        y = F.conv2d(asq_act_ref(x, sd, p, bits), wq, None, stride, w.shape[-1] // 2)
        return bn_ref(y, sd, f"{p}.bn")

    h = bn_ref(F.conv2d(x, sd["quant_init_block_convbn.conv.weight"], None, 2, 3), sd, "quant_init_block_convbn.bn")
    h = F.max_pool2d(F.relu(h), 3, 2, 1)
    for i in range(1, 5):
        for j in (1, 2):
            p = f"layer{i}.unit{j}"
            stride = 2 if (j == 1 and i > 1) else 1
            y = F.relu(qconv(h, f"{p}.quant_convbn1", stride))
            y = qconv(y, f"{p}.quant_convbn2", 1)
            short = qconv(h, f"{p}.quant_identity_convbn", stride) if f"{p}.quant_identity_convbn.conv.weight" in sd \
                else h  # fmt: skip
            h = F.relu(y + short)
    h = h.mean((2, 3))  # AvgPool2d(7) at 224 px, the same mean as at any size here
    return F.linear(h, sd["quant_output.linear.weight"], sd["quant_output.linear.bias"])


# -- tests -------------------------------------------------------------------------------------------
@pytest.fixture
def x() -> Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_post2_levels_and_integer_form() -> None:
    q = Post2Quantizer(4, 3)
    w = torch.randn(3, 200, generator=torch.Generator().manual_seed(0))
    q.initialize_from(w)
    assert q.levels().numel() == 17 and q.code_range.qmax == 8
    q.eval()
    assert torch.equal(q(w), post_ref(w, q.alpha.view(-1, 1), 4))
    codes, scale = q.integer_weight(w)
    assert torch.equal(codes * scale.view(-1, 1), q(w)) and int(codes.abs().max()) <= 128
    tie = torch.tensor([[3 / 128, -3 / 128, 0.75]])  # midpoints: the larger magnitude wins
    q3 = Post2Quantizer(4, 1)
    q3.initialize_from(torch.ones(1, 4))
    with torch.no_grad():
        q3.alpha.fill_(1.0)
    assert q3.eval()(tie).tolist() == [[2**-5, -(2**-5), 1.0]]


@pytest.mark.parametrize("order", ["post", "lsq"])
def test_asq_post_matches_official_forward(tmp_path: Path, x: Tensor, order: str) -> None:
    sd = asq_state_dict(order=order)
    wrapped = OrderedDict((f"module.{k}", v) for k, v in sd.items())  # saved from DataParallel
    payload = {"epoch": 3, "arch": "resnet18_4", "state_dict": wrapped, "best_acc1": torch.tensor(1.0)}
    path = _save(payload, tmp_path / "checkpoint.pth.tar")
    imported = import_checkpoint(path, "asq-post", measure=False, image_size=SIZE)
    model = imported.model
    expected_w = "post2" if order == "post" else "lsq"
    assert model.get_submodule("layers.0.0.conv1").weight_quant.method == expected_w
    assert (
        type(model.get_submodule("stem.0")) is torch.nn.Conv2d and type(model.fc) is torch.nn.Linear
    )  # FP32 as official
    with torch.no_grad(), official_eval(model):
        ours = model(x)
    ref = asq_forward(sd, x, 4, order)
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max())), float((ours - ref).abs().max())


def test_nipq_matches_official_forward(tmp_path: Path, x: Tensor) -> None:
    sd = nipq_state_dict()
    path = _save(sd, tmp_path / "mobilenetv2_imagenet_best.pth")
    with pytest.raises(QexportError, match="--nipq-act"):
        import_checkpoint(path, "nipq", measure=False)
    imported = import_checkpoint(path, "nipq", act=True, measure=False, image_size=SIZE)
    model = imported.model
    assert model.get_submodule("features.18.0").weight_quant.code_range.bits == 10
    assert model.get_submodule("features.18.0").act_quant.code_range.bits == 10
    assert model.get_submodule("features.0.0").act_quant is None
    assert model.get_submodule("features.2.block.0.0").act_quant.signed
    with torch.no_grad(), official_eval(model):
        ours = model(x)
    ref = nipq_forward(sd, x)
    assert torch.allclose(ours, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max())), float((ours - ref).abs().max())


def test_nipq_weight_only_inferred(tmp_path: Path, x: Tensor) -> None:
    sd = nipq_state_dict(act=False, wide=False)
    path = _save({"model": sd, "epoch": 1, "optimizer": {}, "best_acc": 0.5, "model_ema": None}, tmp_path / "m.ckpt")
    imported = import_checkpoint(path, "nipq", measure=False, image_size=SIZE)
    assert any("weight-only" in n for n in imported.notes)
    model = imported.model
    assert all(m.act_quant is None for m in model.modules() if hasattr(m, "act_quant"))
    with torch.no_grad():
        ours = model(x)  # no input quantizer: qexport's eval is the official one
    ref = nipq_forward(sd, x, act=False)
    assert torch.allclose(ours, ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max()))


def test_asq_post_cli_export_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _save({"arch": "resnet18_4", "state_dict": asq_state_dict(seed=2)}, tmp_path / "model_best.pth.tar")
    out = tmp_path / "model.pt"
    assert main(["import", str(path), "--from", "asq-post", "--image-size", str(SIZE), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "official eval" in text and "POST (base 2" in text
    onnx_path = qexport.export(out, tmp_path / "model.onnx")
    report = qexport.check(out, onnx_path, samples=8, reference_samples=0)
    assert report.passed, report


@pytest.mark.slow  # CPU time: in the slow set (CI runs it)
def test_nipq_export_check(tmp_path: Path) -> None:
    path = _save(nipq_state_dict(seed=3), tmp_path / "best.pth")
    imported = import_checkpoint(path, "nipq", act=True, image_size=SIZE)
    assert any("16-bit" in n for n in imported.notes) and any("rounding ties" in n for n in imported.notes)
    assert any(n.startswith("per conv, fed the same input") for n in imported.notes)  # BN folded: measured
    out = qexport.save(imported.model, tmp_path / "model.pt")
    onnx_path = qexport.export(out, tmp_path / "model.onnx")
    report = qexport.check(out, onnx_path, samples=8, reference_samples=0)
    assert report.passed, report


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sd = asq_state_dict(seed=4)
    bare = _save(sd, tmp_path / "bare.pth")
    other = _save({"x": torch.ones(2)}, tmp_path / "other.pth")
    partial = {k: v for k, v in sd.items() if k != "layer2.unit1.quant_identity_convbn.quan_a_fn.s"}
    cases = [
        (["--from", "asq-post"], bare, "pass --bits N"),
        (["--from", "nipq"], bare, "not an official NIPQ"),
        (["--from", "asq-post", "--bits", "4"], other, "not an official ASQ"),
        (["--from", "asq-post", "--bits", "3"], _save({"arch": "resnet18_4", "state_dict": sd}, tmp_path / "a.tar"),
         "contradicts"),
        (["--from", "asq-post", "--bits", "4"],
         _save(partial, tmp_path / "p.pth"),
         "lacks 1 tensor(s), e.g. 'layer2.unit1.quant_identity_convbn.quan_a_fn.s'"),
        (["--from", "nipq"], tmp_path / "missing.pth", "no such checkpoint"),
        (["--from", "nipq", "--bits", "4"], bare, "--bits does not apply to --from nipq"),
        (["--from", "asq-post", "--bits", "5"], bare, "5-bit base-2 POST"),
    ]  # fmt: skip
    for flags, path, message in cases:
        assert main(["import", str(path), *flags, "--no-measure", "-o", str(tmp_path / "o.pt")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    nipq = {k: v for k, v in nipq_state_dict(seed=5).items() if k != "features.3.conv.1.0.alpha"}
    with pytest.raises(QexportError, match=r"lacks 1 tensor\(s\), e\.g\. 'features\.3\.conv\.1\.0\.alpha'"):
        import_checkpoint(_save(nipq, tmp_path / "n.pth"), "nipq", act=True, measure=False)


def test_lsq_mirroring_is_reported(tmp_path: Path) -> None:
    """Full-range LSQ weights in a channel with a negative BatchNorm gamma: qexport quantizes the mirrored
    weight (folding stays in range), which moves codes at the range ends; the import says how many."""
    sd = asq_state_dict(seed=6, order="lsq", negative=True)
    path = _save({"arch": "resnet18_3", "state_dict": sd}, tmp_path / "lsq.pth.tar")
    imported = import_checkpoint(path, "asq-post", measure=False, image_size=SIZE)
    (note,) = [n for n in imported.notes if n.startswith("LSQ weights mirrored")]
    moved = 0
    for name, m in imported.model.named_modules():
        if getattr(m, "weight_quant", None) is not None:  # the official weights, from the file's own tensors
            ref = lsq_w_ref(sd[official_name(f"{name}.weight")], sd[official_name(f"{name}.weight_quant.step")], 3)
            with torch.no_grad():
                moved += int((m.quantized_weight() != ref).sum())
    assert moved > 0 and f": {moved} of " in note
