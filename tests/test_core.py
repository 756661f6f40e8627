"""The shared rounding core: code ranges, straight-through helpers, and contract 1 against
onnxruntime's QuantizeLinear at and next to rounding ties."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from qexport.errors import QexportError
from qexport.quant.core import CodeRange, clamp_ste, grad_scale, quantize_codes, round_ste


@pytest.mark.parametrize(
    ("bits", "signed", "narrow", "lo", "hi"),
    [
        (8, False, False, 0, 255),
        (8, True, False, -128, 127),
        (8, True, True, -127, 127),
        (4, False, False, 0, 15),
        (4, True, False, -8, 7),
        (4, True, True, -7, 7),
        (2, True, True, -1, 1),
        (2, False, False, 0, 3),
        (3, True, False, -4, 3),
    ],
)
def test_code_range(bits: int, signed: bool, narrow: bool, lo: int, hi: int) -> None:
    r = CodeRange(bits, signed, narrow)
    assert (r.qmin, r.qmax) == (lo, hi)


def test_code_range_rejects_bad_widths() -> None:
    with pytest.raises(QexportError):
        CodeRange(0, False)
    with pytest.raises(QexportError):
        CodeRange(1, True)


def test_straight_through_helpers_are_exact_in_forward() -> None:
    x = torch.randn(10000) * 50
    x.requires_grad_(True)
    assert torch.equal(round_ste(x), torch.round(x))
    assert torch.equal(grad_scale(x, 0.37), x)
    assert torch.equal(clamp_ste(x, -3, 3), x.clamp(-3, 3))
    (round_ste(x) * 2 + grad_scale(x, 0.25) + clamp_ste(x, -3, 3)).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 2 + 0.25 + 1))


def _ort_quantize(x: np.ndarray, scale: float, dtype: int, opset: int = 21) -> np.ndarray:
    """Codes from onnxruntime's QuantizeLinear (cast to int32 to fetch sub-byte types)."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("Cast", ["q"], ["y"], to=TensorProto.INT32),
    ]
    graph = helper.make_graph(
        nodes,
        "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [None])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [scale]), helper.make_tensor("z", dtype, [], [0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _tie_values(scale: np.float32, lo: int, hi: int) -> np.ndarray:
    """(k + 0.5) * scale in float32, and the float32 neighbours on each side."""
    ties = ((np.arange(lo - 2, hi + 2, dtype=np.float32) + np.float32(0.5)) * scale).astype(np.float32)
    up = np.nextafter(ties, np.float32(np.inf))
    down = np.nextafter(ties, np.float32(-np.inf))
    return np.concatenate([ties, up, down, ties * 3, -ties]).astype(np.float32)


@pytest.mark.parametrize(
    ("dtype", "bits", "signed"),
    [
        (TensorProto.INT8, 8, True),
        (TensorProto.UINT8, 8, False),
        (TensorProto.INT4, 4, True),
        (TensorProto.UINT4, 4, False),
    ],
)
@pytest.mark.parametrize("scale", [0.1, 0.0173, 0.3, 1.0 / 3.0])
def test_codes_match_onnxruntime_at_ties(dtype: int, bits: int, signed: bool, scale: float) -> None:
    r = CodeRange(bits, signed)
    s32 = np.float32(scale)
    x = _tie_values(s32, r.qmin, r.qmax)
    ours = quantize_codes(torch.from_numpy(x), torch.tensor(s32), r.qmin, r.qmax).numpy().astype(np.int32)
    theirs = _ort_quantize(x, float(s32), dtype)
    assert np.array_equal(ours, theirs), f"{int((ours != theirs).sum())} codes differ"


def test_the_tie_test_can_tell_reciprocal_multiplication_apart() -> None:
    """Multiplying by 1/scale (PyTorch's fake_quantize) differs from ORT at some ties; dividing does not."""
    s32 = np.float32(0.1)
    x = _tie_values(s32, -128, 127)
    theirs = _ort_quantize(x, float(s32), TensorProto.INT8)
    recip = np.clip(np.round(x * (np.float32(1) / s32)), -128, 127).astype(np.int32)
    divided = quantize_codes(torch.from_numpy(x), torch.tensor(s32), -128, 127).numpy().astype(np.int32)
    assert (recip != theirs).any()
    assert np.array_equal(divided, theirs)
