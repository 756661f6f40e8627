// qexport.IntConv and IntConvRequant native kernel (signature and semantics: qexport/ops/int_conv.py,
// int_conv_requant.py): int8 weight codes times activation codes with a scalar or per-sample step,
// int32 accumulation, one float rescale.
#include "conv.h"
#include "ops.h"

namespace qx {

// group: optional on IntConv, required on IntConvRequant (its body reads the attribute)
IntConvKernel::IntConvKernel(const OrtKernelInfo* info, bool requantized)
    : ConvKernel(info, requantized, requantized) {
  relu = relu_attr(info, true, true);
}

void IntConvKernel::compute(OrtKernelContext* context) {
  const Isa isa = active_isa();
  const ConvInputs in = conv_inputs(context, attrs, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, requant_attrs());
  const ConvShape& s = in.s;
  const Tensor& w = in.w;
  const std::vector<float>& xs = in.xs;
  const int64_t groups = packed_groups(s, attrs), mg = s.m / groups;
  PackedWeights local;
  const PackedWeights& packed = weights(local, [&](PackedWeights& p) {
    const int8_t* codes = w.as<int8_t>();
    const int64_t per_out = s.cg * s.kh * s.kw;
    p.pack(s, KLayout::of(s, attrs), groups, mg, [&](int64_t g, int64_t lane, int64_t c, int64_t i, int64_t j) {
      return codes[(g * mg + lane) * per_out + (c * s.kh + i) * s.kw + j];
    });
  });
  void* y = in.allocate_output(context);
  if (s.outputs() == 0) return;
  const float* ws = in.w_scale.as<float>();
  const float* b = in.bias.as<float>();
  run_conv(context, isa, s, attrs, in.x, packed, false, [&](int64_t n, int64_t g, int64_t lane0, TileOutput& out) {
    in.set_output(out, relu);
    for (int64_t l = 0; l < int64_t(kTileLanes) && lane0 + l < mg; ++l) {
      const int64_t m = g * mg + lane0 + l;
      out.row[l] = in.lane_row(y, n, m);
      out.scale[l] = xs[size_t(n)] * ws[m];
      out.bias[l] = b[m];
    }
  });
}

}  // namespace qx
