"""The export matrix: every zoo model x every method x every bit-width the method defines x both
placements exports, passes onnx.checker (full check) and strict shape inference, and keeps parity
(DESIGN.md contract 2) on 256 inputs at ORT_DISABLE_ALL and ORT_ENABLE_ALL, batch 1 and 8; the
small models also in onnx's ReferenceEvaluator.  Calibrated on random inputs (MSE steps), so the
code-spread figures must show tensors that are neither collapsed nor saturated.

Sizes reduced for CI, and said so: ResNet-18 and MobileNetV2 at 32x32 inputs (their 224 layout is
unchanged: the global pool absorbs the size); the transformer encoder at 2 layers, d=64, 32 tokens.
"""

from __future__ import annotations

import random
import zlib
from pathlib import Path

import onnx
import pytest
import torch

import qexport
from qexport import native, zoo
from qexport.check import CheckReport
from qexport.ops import uses_qexport_ops
from qexport.quant import Quantizer
from qexport.quant.nipq import NipqQuantizer, theta_for_bits

SAMPLES = 256
MODELS = {  # name -> (constructor kwargs, image side or None, run the reference evaluator)
    "resnet20": ({}, None, True),
    "transformer": ({"layers": 2, "dim": 64, "heads": 4, "ff": 128, "seq_len": 32, "vocab_size": 256}, None, True),
    "resnet18": ({"num_classes": 10}, 32, False),
    "mobilenetv2": ({"num_classes": 10}, 32, False),
}
METHODS = {  # name -> (quantize() arguments, bit-widths)
    "lsq": ({"weight": "lsq", "act": "lsq"}, (2, 3, 4, 8)),
    "nipq-mixed": ({"weight": "nipq", "act": "nipq", "learn_bits": True}, (4,)),
    "asq": ({"weight": "lsq", "act": "asq"}, (2, 3, 4, 8)),
    "post": ({"weight": "post", "act": "lsq"}, (3, 4)),
    "pot": ({"weight": "pot", "act": "lsq"}, (3, 4)),
    "asq+post": ({"weight": "post", "act": "asq"}, (3, 4)),
}
CASES = [
    pytest.param(model, method, bits, placement, id=f"{model}-{method}-{bits}-{placement}")
    for model in MODELS
    for method, (_, widths) in METHODS.items()
    for bits in widths
    for placement in ("deployable", "paper")
]


def _settle_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Give the random model the BatchNorm statistics of its own activations (a trained model has
    them), so that deep layers neither vanish nor explode and calibration sees realistic tensors.
    Quantizers stay in eval (no NIPQ noise): a quantized model's statistics come through its codes."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.train()
    for q in model.modules():
        if isinstance(q, Quantizer):
            q.eval()
    with torch.no_grad():
        for chunk in x.split(32):
            model(chunk)
    model.eval()


def _settle_quantized_batchnorm(model: torch.nn.Module, calib: torch.Tensor) -> None:
    """Full-range (asymmetric) weight codes, -2..1 at 2 bits, shift each channel's mean; QAT leaves
    BatchNorm statistics that absorb the shift, a random model's float statistics do not (ReLU
    outputs then collapse to zero).  Re-estimate them through the quantized convs.  No second
    calibration: calibrate() runs the float network, whose activations these statistics no longer
    normalise."""
    if any(q.code_range.qmin != -q.code_range.qmax for q in _weight_quantizers(model)):
        _settle_batchnorm(model, calib)


def _weight_quantizers(model: torch.nn.Module) -> list[Quantizer]:
    return [q for q in model.modules() if isinstance(q, Quantizer) and q.role == "weight"]


def _mix_bits(model: torch.nn.Module, seed: int) -> None:
    """NIPQ mixed precision: every learned width set to a random 2..8 and frozen (as after training)."""
    rng = random.Random(seed)
    for q in model.modules():
        if isinstance(q, NipqQuantizer) and q.learns_bits:
            with torch.no_grad():
                q.theta.fill_(theta_for_bits(rng.randint(2, 8)))
            q.finalize()


def run_case(name: str, method: str, bits: int, placement: str, out_dir: Path) -> CheckReport:
    """Quantize, calibrate, export and check one matrix case (also used by tools/parity_table.py)."""
    kwargs, side, reference = MODELS[name]
    args, _ = METHODS[method]
    # each case its own random model, the same whichever cases run before it
    torch.manual_seed(zlib.crc32(f"{name}-{method}-{bits}-{placement}".encode()))
    float_model = zoo.create(name, **kwargs)
    calib = zoo.example_input(float_model, 64, size=side, seed=1000)
    _settle_batchnorm(float_model, calib)
    model = qexport.quantize(float_model, bits=bits, placement=placement, **args)
    if method == "nipq-mixed":
        _mix_bits(model, seed=len(name))
    qexport.calibrate(model, [calib[:32], calib[32:]])
    _settle_quantized_batchnorm(model, calib)
    x = torch.cat([zoo.example_input(model, 32, size=side, seed=i) for i in range(SAMPLES // 32)])
    path = qexport.export(model, out_dir / "m.onnx", input_shape=[1, *x.shape[1:]])

    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    return qexport.check(model, path, x, reference_samples=8 if reference else 0)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "method", "bits", "placement"), CASES)
def test_export_and_parity(tmp_path: Path, name: str, method: str, bits: int, placement: str) -> None:
    report = run_case(name, method, bits, placement, tmp_path)
    reference = MODELS[name][2]
    assert report.passed, report.table()
    native_runs = native.available() and uses_qexport_ops(onnx.load(tmp_path / "m.onnx"))
    runs = 4 + (1 if reference else 0) + (2 if native_runs else 0)
    assert len(report.runs) == runs and all(r.samples >= 8 for r in report.runs)
    for t in report.runs[0].tensors:  # spread: neither collapsed onto one code nor saturated
        assert t.entropy_bits > 0.5, f"{t.path}: codes collapsed ({t.entropy_bits:.2f} bits of entropy)"
        limit = 0.5  # share of codes clipped at an end of the range (one-pass calibration sees the
        # float network's tensors, so a tensor behind low-bit layers can clip a third of its values)
        unsigned = t.codes.startswith("[0,")  # after a ReLU, code 0 holds every negative input
        assert t.high_share < limit and (unsigned or t.low_share < limit), f"{t.path} saturated: {t}"
