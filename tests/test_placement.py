"""quantize() on the traced dataflow: placements, signedness, first/last bits, overrides,
custom models, every zoo model, tracing errors, calibration."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import qexport
from qexport import zoo
from qexport.errors import QexportError
from qexport.quant import AsqQuantizer, LsqQuantizer, QuantConv2d, Quantizer, QuantLinear


def _quantizer_of(gm: fx.GraphModule, node: object) -> Quantizer | None:
    if isinstance(node, fx.Node) and node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        return m if isinstance(m, Quantizer) else None
    return None


def _adds(gm: fx.GraphModule) -> list[fx.Node]:
    return [
        n for n in gm.graph.nodes if n.op == "call_function" and n.target in (operator.add, operator.iadd, torch.add)
    ]


def test_deployable_resnet_quantizes_residual_operands_and_results() -> None:
    gm = qexport.quantize(zoo.create("resnet20"), bits=4)
    adds = _adds(gm)
    assert len(adds) == 9
    for add in adds:
        for operand in add.args[:2]:
            q = _quantizer_of(gm, operand)
            assert q is not None and q.code_range.bits == 8, f"{add.name}: operand {operand} not quantized"
        users = list(add.users)
        assert len(users) == 1 and _quantizer_of(gm, users[0]) is not None
        assert _quantizer_of(gm, users[0]).code_range.signed  # sums of signed operands
    # identity shortcuts carry a ReLU output: unsigned operand quantizer
    assert not gm.get_submodule("glue.add_1_in1").code_range.signed


def test_paper_resnet_leaves_residual_adds_float() -> None:
    gm = qexport.quantize(zoo.create("resnet20"), bits=4, placement="paper")
    for add in _adds(gm):
        assert all(_quantizer_of(gm, a) is None for a in add.args[:2])
        assert all(_quantizer_of(gm, u) is None for u in add.users)
    assert not any(name.startswith("glue") for name, _ in gm.named_modules())


def test_signedness_first_last_and_bits() -> None:
    gm = qexport.quantize(zoo.create("resnet20"), weight="lsq", act="lsq", bits=3)
    stem = gm.get_submodule("stem.0")
    fc = gm.get_submodule("fc")
    assert isinstance(stem, QuantConv2d) and stem.act_quant.code_range.signed  # normalised image
    assert stem.act_quant.code_range.bits == 8 and stem.weight_quant.code_range.bits == 8
    assert fc.act_quant.code_range.bits == 8 and not fc.act_quant.code_range.signed  # pooled ReLU output
    conv1 = gm.get_submodule("layers.1.0.conv1")
    assert conv1.act_quant.code_range.bits == 3 and not conv1.act_quant.code_range.signed
    w = conv1.weight_quant.code_range
    assert (w.qmin, w.qmax) == (-4, 3)  # the LSQ paper's full signed range
    assert (stem.weight_quant.code_range.qmin, stem.weight_quant.code_range.qmax) == (-128, 127)
    narrow = qexport.quantize(zoo.create("resnet20"), bits=2, weight_range="narrow")
    w = narrow.get_submodule("layers.1.0.conv1").weight_quant.code_range
    assert (w.qmin, w.qmax) == (-1, 1)  # ternary
    with pytest.raises(qexport.QexportError, match="weight_range"):
        qexport.quantize(zoo.create("resnet20"), weight_range="wide")


def test_overrides_and_skips() -> None:
    gm = qexport.quantize(
        zoo.create("resnet20"),
        bits=4,
        overrides={"layers.2.*.conv2": {"bits": 2}, "layers.0.0.conv1": {"act": "asq"}, "fc": None},
    )
    assert gm.get_submodule("layers.2.1.conv2").weight_quant.code_range.bits == 2
    assert isinstance(gm.get_submodule("layers.0.0.conv1").act_quant, AsqQuantizer)
    assert type(gm.get_submodule("fc")) is nn.Linear
    with pytest.raises(QexportError, match="unknown keys"):
        qexport.quantize(zoo.create("resnet20"), overrides={"fc": {"wbits": 2}})


def test_original_model_is_untouched() -> None:
    model = zoo.create("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qexport.quantize(model)
    assert all(type(m) is not QuantConv2d for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class Custom(nn.Module):
    """Depthwise and grouped convs, a functional add, a concat, F.relu and a dilated conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4, bias=False)
        self.strided = nn.Conv2d(32, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.conv(x))
        b = torch.add(self.dw(a), a)
        c = torch.cat([self.grouped(b), a], dim=1)
        return self.head(self.strided(c).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", [("lsq", "lsq"), ("post", "asq"), ("nipq", "nipq"), ("pot", "lsq")])
def test_custom_model_with_depthwise_and_grouped_convs(method: tuple[str, str]) -> None:
    gm = qexport.quantize(Custom(), weight=method[0], act=method[1], bits=4)
    assert sum(isinstance(m, QuantConv2d) for m in gm.modules()) == 4
    assert gm.get_submodule("dw").groups == 16 and gm.get_submodule("grouped").dilation == (2, 2)
    cat = next(n for n in gm.graph.nodes if n.target is torch.cat)
    assert all(_quantizer_of(gm, a) is not None for a in cat.args[0])
    x = torch.randn(4, 3, 12, 12)
    qexport.calibrate(gm, [x, x * 0.5])
    gm.eval()
    y = gm(x)
    assert y.shape == (4, 5) and torch.isfinite(y).all()
    gm.train()
    gm(x).sum().backward()


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:  # data-dependent control flow: no tracer can follow it
            x = -x
        return self.fc(x.flatten(0, 1))


def test_untraceable_model_names_the_construct() -> None:
    with pytest.raises(QexportError, match=r"test_placement\.py:\d+: if x\.mean\(\) > 0") as err:
        qexport.quantize(Untraceable())
    assert "example_inputs=" in str(err.value) and "\n" not in str(err.value)


def test_untraceable_model_in_paper_placement_swaps_modules(capsys: pytest.CaptureFixture[str]) -> None:
    q = qexport.quantize(Untraceable(), placement="paper", first_last_bits=None)
    assert isinstance(q.fc, QuantLinear) and q.fc.act_quant.code_range.signed
    assert "falling back to module swapping" in capsys.readouterr().err
    qexport.calibrate(q, [torch.randn(2, 3, 8)])
    assert q.eval()(torch.randn(2, 3, 8)).shape == (6, 8)


IMAGENET_SIZE = 64  # ImageNet-layout models run at 64x64 in tests to keep CPU time down


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "mobilenetv2", "transformer"])
@pytest.mark.parametrize("placement", ["deployable", "paper"])
def test_every_zoo_model(name: str, placement: str) -> None:
    kwargs = {"layers": 2, "seq_len": 16} if name == "transformer" else {}
    model = zoo.create(name, **kwargs)
    gm = qexport.quantize(model, weight="post", act="asq", bits=4, placement=placement)
    x = zoo.example_input(gm, 2, size=IMAGENET_SIZE if name in ("resnet18", "mobilenetv2") else None)
    qexport.calibrate(gm, [x])
    gm.eval()
    with torch.no_grad():
        y, ref = gm(x), model.eval()(x)
    assert y.shape == ref.shape and torch.isfinite(y).all()
    layers = [m for m in model.modules() if type(m) in (nn.Conv2d, nn.Linear)]
    assert sum(isinstance(m, (QuantConv2d, QuantLinear)) for m in gm.modules()) == len(layers)
    glue = [n for n, _ in gm.named_modules() if n.startswith("glue.")]
    assert bool(glue) == (placement == "deployable")


def test_transformer_glue_and_per_token_asq() -> None:
    gm = qexport.quantize(zoo.create("transformer", layers=1, seq_len=8), act="asq", bits=4)
    matmuls = [n for n in gm.graph.nodes if n.target is torch.matmul]
    assert len(matmuls) == 2
    for mm in matmuls:
        assert all(_quantizer_of(gm, a) is not None for a in mm.args[:2])
    softmax_operand = _quantizer_of(gm, matmuls[1].args[0])
    assert not softmax_operand.code_range.signed  # softmax output is non-negative
    q = gm.get_submodule("blocks.0.fc1").act_quant
    assert isinstance(q, AsqQuantizer) and q.code_range.signed  # LayerNorm output
    assert q.adapter(torch.randn(3, 8, 256)).shape == (3, 8, 1)


def test_calibration_spreads_codes() -> None:
    gm = qexport.quantize(zoo.create("resnet20"), bits=4)
    x = torch.randn(16, 3, 32, 32)
    with pytest.raises(QexportError, match="calibrate"):
        gm.eval()(x)
    qexport.calibrate(gm, [x[:8], x[8:]])
    q = gm.get_submodule("layers.1.0.conv2").act_quant
    captured = {}
    handle = q.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    gm.eval()(x)
    handle.remove()
    codes = q.codes(captured["x"])
    assert len(torch.unique(codes)) == 16  # all 16 codes of 4-bit unsigned are used


def test_calibrate_without_quantizers_or_batches() -> None:
    with pytest.raises(QexportError, match="no qexport quantizer"):
        qexport.calibrate(nn.Linear(2, 2), [torch.randn(1, 2)])
    with pytest.raises(QexportError, match="no batches"):
        qexport.calibrate(qexport.quantize(zoo.create("resnet20")), [])


def test_bad_method_names() -> None:
    with pytest.raises(QexportError, match="unknown weight method"):
        qexport.quantize(zoo.create("resnet20"), weight="asq")
    with pytest.raises(QexportError, match="bits"):
        qexport.quantize(zoo.create("resnet20"), bits=9)


def test_glue_quantizers_are_lsq_8bit() -> None:
    gm = qexport.quantize(zoo.create("resnet20"), weight="nipq", act="nipq", bits=2)
    glue = [m for n, m in gm.named_modules() if n.startswith("glue.") and isinstance(m, Quantizer)]
    assert glue and all(isinstance(m, LsqQuantizer) and m.code_range.bits == 8 for m in glue)


def test_multihead_attention_is_left_float_with_a_warning() -> None:
    class WithMha(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.fc = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.attn(x, x, x)[0])

    with pytest.warns(UserWarning, match="MultiheadAttention stays float"):
        q = qexport.quantize(WithMha(), first_last_bits=None)
    assert isinstance(q.fc, QuantLinear) and type(q.attn) is nn.MultiheadAttention
