// qexport.IntConv native kernel (signature and semantics: qexport/ops/int_conv.py): int8 weight codes
// times activation codes with a scalar or per-sample step, int32 accumulation, one float rescale.
#include "conv.h"
#include "ops.h"

namespace qx {

IntConvKernel::IntConvKernel(const OrtKernelInfo* info) : node(node_name(info)), constant_weights(is_constant_input(info, 2)) {
  attrs.read(info);
  relu = attr_int(info, "relu", 0);
  if (relu != 0 && relu != 1) fail("attribute relu=" + std::to_string(relu) + " must be 0 or 1");
}

void IntConvKernel::compute(OrtKernelContext* context) {
  const Isa isa = active_isa();
  const Tensor x = input(context, 0, "input x_codes");
  const Tensor x_scale = input(context, 1, "input x_scale");
  const Tensor w = input(context, 2, "input w_codes");
  const Tensor w_scale = input(context, 3, "input w_scale");
  const Tensor bias = input(context, 4, "input bias");
  if (x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 && x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8)
    fail(std::string("input x_codes must be int8 or uint8, got ") + type_name(x.type));
  expect_type(w, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, "input w_codes");
  const ConvShape s = ConvShape::of(x, w.shape, attrs, "IntConv");
  expect_type(w_scale, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "input w_scale");
  expect_type(bias, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "input bias");
  if (w_scale.count != s.m || bias.count != s.m)
    fail("w_scale and bias must hold one value per output channel (" + std::to_string(s.m) + "), got " +
         shape_text(w_scale.shape) + " and " + shape_text(bias.shape));
  const std::vector<float> xs = sample_scales(x_scale, s.n, "input x_scale");
  const int64_t mg = s.m / attrs.group;
  if (packed.source != w.data || packed.groups != attrs.group || packed.k4 != s.kh * s.kw * ((s.cg + 3) / 4)) {
    const int8_t* codes = w.as<int8_t>();
    const int64_t per_out = s.cg * s.kh * s.kw;
    packed.pack(s, attrs.group, mg, [&](int64_t g, int64_t lane, int64_t c, int64_t i, int64_t j) {
      return codes[(g * mg + lane) * per_out + (c * s.kh + i) * s.kw + j];
    });
    packed.source = constant_weights ? w.data : nullptr;
  }
  float* y = static_cast<float*>(output(context, 0, {s.n, s.m, s.ho, s.wo}));
  const float* ws = w_scale.as<float>();
  const float* b = bias.as<float>();
  const int64_t pixels = s.ho * s.wo;
  run_conv(context, isa, s, attrs, x, packed, [&](int64_t n, int64_t g, int64_t lane0, TileOutput& out) {
    out.relu = relu != 0;
    for (int64_t l = 0; l < int64_t(kTileLanes) && lane0 + l < mg; ++l) {
      const int64_t m = g * mg + lane0 + l;
      out.row[l] = y + (n * s.m + m) * pixels;
      out.scale[l] = xs[size_t(n)] * ws[m];
      out.bias[l] = b[m];
    }
  });
}

}  // namespace qx
