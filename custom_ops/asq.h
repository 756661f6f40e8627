// What both ASQ kernels share (AsqQuantize: one step per sample from its channel means; AsqQuantizeRows:
// one step per row of a [..., C] input): input validation, the adapter, and the quantization of a run
// of values with one step.  Semantics: qexport/ops/asq_quantize.py, asq_quantize_rows.py,
// asq_adapter.py, step_quantize.py.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common.h"
#include "isa.h"

namespace qx {

struct AsqInputs {
  Tensor x, w1, b1, w2, b2;
  float step = 0.0f;
  bool is_signed = false;  // codes int8 (else uint8)
  uint8_t zero_point = 0;  // what the stored codes carry: 0, or 128 for a signed range stored as uint8
  int64_t channels = 0, hidden = 0;
  // x float32 with channels on axis ``channel_axis``; ``offset_allowed``: zero_point may be uint8 128
  // with a signed code range (the rows op); qmin / qmax are validated against the stored type
  static AsqInputs read(OrtKernelContext* context, size_t x_rank, int64_t channel_axis, bool offset_allowed,
                        int64_t qmin, int64_t qmax);
};

// The adapter on each of ``count`` feature rows (``channels`` floats each): step[r] = step * beta_r in
// the body's order, products accumulated with fused multiply-adds as onnxruntime's MatMul (MLAS).
// ``bias_first``: the adapter's first-layer bias enters before its products, as in the Gemm onnxruntime
// fuses the body's MatMul + Add into on 2-D features (channel means, [N, C] rows); on [N, T, C] rows of
// symbolic size it does not fuse and the bias comes last.  With one K block (C <= 256) both agree.
// special[r]: the row's step is not a positive finite number or its features are not finite (quantize
// it element by element as the body, NaN and all).
// In two parts: the first layer of ``rows`` rows into [rows, hidden] (before the ReLU), in parallel
// tasks of 48 rows x 64 hidden units (each task reads its 64 columns of w1 once for all its rows; one
// row: tasks of a K block x 256 units, streaming whole rows of w1), then one row's step from its hidden
// row.
std::vector<float> asq_hidden(OrtKernelContext* context, Isa isa, const AsqInputs& in, const float* feats,
                              int64_t rows, bool bias_first);
void asq_step(Isa isa, const AsqInputs& in, const float* hid, const float* feats, float* step, char* special);

// codes / y of ``count`` values x with one step (y may be nullptr: the output is left out).
void asq_quantize_run(Isa isa, const AsqInputs& in, const float* x, float step, bool special, int64_t qmin,
                      int64_t qmax, float* y, void* codes, size_t count);

}  // namespace qx
