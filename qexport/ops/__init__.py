"""qexport's custom ONNX operators (domain ``qexport``, version 1).

One file per operator: its signature (docstring), its ONNX function body written with onnxscript
(the portable fallback every exported file carries, so it runs in plain onnxruntime and in
``onnx.reference.ReferenceEvaluator``) and a numpy reference that states the arithmetic exactly.
A native kernel registered under the same domain and name replaces the function body.
"""

from __future__ import annotations

import onnx

from . import (
    add_requant,
    asq_adapter,
    asq_quantize,
    asq_quantize_rows,
    int_conv,
    int_conv_requant,
    post_conv,
    post_conv_requant,
    post_matmul,
    post_rescale,
    post_weights,
    relu_bounds,
    requantize,
    rescale,
    step_quantize,
)
from .domain import DOMAIN, VERSION

# op name -> the function protos a model using it must carry (dependencies first)
_FUNCTIONS = {
    "AddRequant": [add_requant.AddRequant],
    "AsqQuantize": [asq_adapter.AsqAdapter, step_quantize.StepQuantize, asq_quantize.AsqQuantize],
    "AsqQuantizeRows": [asq_adapter.AsqAdapter, step_quantize.StepQuantize, asq_quantize_rows.AsqQuantizeRows],
    "IntConv": [relu_bounds.ReluBounds, int_conv.IntConv],
    "IntConvRequant": [relu_bounds.ReluBounds, int_conv.IntConv, int_conv_requant.IntConvRequant],
    "PostConv": [post_weights.PostWeights, relu_bounds.ReluBounds, post_conv.PostConv],
    "PostConvRequant": [post_weights.PostWeights, relu_bounds.ReluBounds, post_conv.PostConv,
                        post_conv_requant.PostConvRequant],
    "PostMatMul": [post_weights.PostWeights, post_rescale.PostRescale, post_matmul.PostMatMul],
    "PostRescale": [post_rescale.PostRescale],
    "Requantize": [requantize.Requantize],
    "Rescale": [rescale.Rescale],
}


def functions_for(op_types: set[str], opset: int = 21) -> list[onnx.FunctionProto]:
    """The function protos (each once, dependencies first) for the qexport ops in ``op_types``.

    The bodies are written against standard opset 21; a model importing a newer opset gets them
    importing that one (onnx requires a function's opset to match the model's; every op the bodies
    use means the same from 21 to 25 for the types they use)."""
    seen: dict[str, onnx.FunctionProto] = {}
    for op_type in sorted(op_types):
        for fn in _FUNCTIONS[op_type]:
            if fn.name not in seen:
                proto = fn.to_function_proto()
                for imp in proto.opset_import:
                    if imp.domain == "":
                        imp.version = opset
                seen[fn.name] = proto
    return list(seen.values())


def uses_qexport_ops(model: onnx.ModelProto) -> bool:
    """Whether ``model``'s graph has a node in the qexport domain (what the native kernels replace)."""
    return any(n.domain == DOMAIN for n in model.graph.node)


OP_TYPES = frozenset(_FUNCTIONS)

__all__ = ["DOMAIN", "OP_TYPES", "VERSION", "functions_for", "uses_qexport_ops"]
