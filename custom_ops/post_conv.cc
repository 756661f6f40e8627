// qexport.PostConv and PostConvRequant native kernel (signature and semantics: qexport/ops/post_conv.py,
// post_conv_requant.py).  Weight rows are
// interleaved per output channel (even, odd), so one tile holds both accumulations of two channels:
// each activation panel is read once for both.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "conv.h"
#include "ops.h"

namespace qx {

namespace {

// Decoded POST 4-bit code -> (even, odd) integer weights; false when the code is outside the range.
bool post_weight(int code, int64_t bits, int8_t* even, int8_t* odd) {
  const int magnitudes = (1 << (bits - 1)) - 1, e = (magnitudes - 1) / 2;
  const int j = code & 7;
  if (j > magnitudes) return false;
  const int k = magnitudes - j;
  int w = j > 0 ? 1 << std::max(e - k / 2, 0) : 0;
  if (code & 8) w = -w;
  *even = int8_t(k % 2 == 0 ? w : 0);
  *odd = int8_t(k % 2 == 1 ? w : 0);
  return true;
}

int uint4_at(const uint8_t* packed, int64_t i) { return (packed[i / 2] >> (4 * (i % 2))) & 15; }

}  // namespace

PostConvKernel::PostConvKernel(const OrtKernelInfo* info, bool requantized) : ConvKernel(info, true, requantized) {  // the body reads group
  bits = attr_int(info, "bits");
  if (bits < 2 || bits > 4) fail("attribute bits=" + std::to_string(bits) + " must be 2, 3 or 4");
  relu = relu_attr(info, requantized, true);  // optional on PostConv (0), required on PostConvRequant (its body reads it)
}

void PostConvKernel::compute(OrtKernelContext* context) {
  const Isa isa = active_isa();
  const ConvInputs in = conv_inputs(context, attrs, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT4, requant_attrs());
  const ConvShape& s = in.s;
  const Tensor& w = in.w;
  const std::vector<float>& xs = in.xs;
  const int64_t groups = packed_groups(s, attrs), mg = s.m / groups;
  // the function body fails (in a Reshape) without output or input channels: so does the kernel
  if (s.m == 0 || s.c == 0)
    fail("needs at least one input and one output channel, got C=" + std::to_string(s.c) + ", M=" + std::to_string(s.m));
  PackedWeights local;
  const PackedWeights& packed = weights(local, [&](PackedWeights& p) {
    const uint8_t* codes = w.as<uint8_t>();
    for (int64_t i = 0; i < w.count; ++i) {
      int8_t even, odd;
      if (!post_weight(uint4_at(codes, i), bits, &even, &odd))
        fail("w_codes holds code " + std::to_string(uint4_at(codes, i)) + ", outside the " + std::to_string(bits) +
             "-bit POST range");
    }
    const int64_t per_out = s.cg * s.kh * s.kw;
    // lanes of each 32-lane block: 0-15 the even sums of 16 channels, 16-31 their odd sums
    const int64_t half = int64_t(kTileLanes) / 2, lanes = (mg + half - 1) / half * int64_t(kTileLanes);
    p.pack(s, KLayout::of(s, attrs), groups, lanes, [&](int64_t g, int64_t lane, int64_t c, int64_t i, int64_t j) -> int8_t {
      const int64_t out = lane / int64_t(kTileLanes) * half + lane % half;
      if (out >= mg) return 0;
      int8_t even, odd;
      post_weight(uint4_at(codes, (g * mg + out) * per_out + (c * s.kh + i) * s.kw + j), bits, &even, &odd);
      return lane % int64_t(kTileLanes) < half ? even : odd;
    });
  });
  void* y = in.allocate_output(context);
  if (s.outputs() == 0) return;
  const float* ws = in.w_scale.as<float>();
  const float* b = in.bias.as<float>();
  run_conv(context, isa, s, attrs, in.x, packed, true, [&](int64_t n, int64_t g, int64_t lane0, TileOutput& out) {
    out.post_pairs = true;  // lanes 0-15: even sums of 16 channels, 16-31: their odd sums
    in.set_output(out, relu);
    const int64_t half = int64_t(kTileLanes) / 2;
    for (int64_t l = 0; l < half && lane0 / 2 + l < mg; ++l) {
      const int64_t m = g * mg + lane0 / 2 + l;
      out.row[l] = in.lane_row(y, n, m);
      out.scale[l] = xs[size_t(n)] * ws[m];
      out.bias[l] = b[m];
    }
  });
}

}  // namespace qx
