#include "conv.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace qx {

void ConvAttrs::read(const OrtKernelInfo* info) {
  group = attr_int(info, "group", 1);
  strides = attr_ints(info, "strides", {1, 1});
  pads = attr_ints(info, "pads", {0, 0, 0, 0});
  dilations = attr_ints(info, "dilations", {1, 1});
  if (group < 1 || group > (1 << 20)) fail("attribute group=" + std::to_string(group) + " must be >= 1");
  if (strides.size() != 2 || pads.size() != 4 || dilations.size() != 2)
    fail("attributes strides / pads / dilations must have 2 / 4 / 2 values (2-D conv)");
  for (int64_t v : strides) if (v < 1 || v > 4096) fail("attribute strides must be in 1..4096");
  for (int64_t v : dilations) if (v < 1 || v > 4096) fail("attribute dilations must be in 1..4096");
  for (int64_t v : pads) if (v < 0 || v > 4096) fail("attribute pads must be in 0..4096");
}

ConvShape ConvShape::of(const Tensor& x, const std::vector<int64_t>& ws, const ConvAttrs& a, const std::string& op) {
  if (x.shape.size() != 4) fail(op + " input x_codes must be [N, C, H, W], got " + shape_text(x.shape));
  if (ws.size() != 4) fail(op + " input w_codes must be [M, C/group, kh, kw], got " + shape_text(ws));
  ConvShape s{x.shape[0], x.shape[1], x.shape[2], x.shape[3], ws[0], ws[1], ws[2], ws[3], 0, 0};
  if (s.m % a.group != 0 || s.c != s.cg * a.group)
    fail(op + ": weight " + shape_text(ws) + " does not match input channels " + std::to_string(s.c) + " with group " +
         std::to_string(a.group));
  if (s.kh < 1 || s.kw < 1 || s.kh > 4096 || s.kw > 4096) fail(op + ": bad kernel size " + shape_text(ws));
  const int64_t eh = a.dilations[0] * (s.kh - 1) + 1, ew = a.dilations[1] * (s.kw - 1) + 1;
  const int64_t hp = s.h + a.pads[0] + a.pads[2], wp = s.w + a.pads[1] + a.pads[3];
  if (hp < eh || wp < ew) fail(op + ": kernel larger than the padded input " + shape_text(x.shape));
  s.ho = (hp - eh) / a.strides[0] + 1;
  s.wo = (wp - ew) / a.strides[1] + 1;
  const int64_t cg4 = (s.cg + 3) / 4 * 4;
  // int32 accumulation of uint8 x int8 products stays exact up to 2^31 / (255 * 128) terms
  if (cg4 * s.kh * s.kw > 65536) fail(op + ": reduction longer than 65536 terms overflows int32 accumulation");
  return s;
}

KLayout KLayout::of(const ConvShape& s, const ConvAttrs& a) {
  KLayout k;
  k.span = a.group == 1 && a.dilations[1] == 1 && s.cg % 4 != 0;
  k.cg4 = k.span ? s.cg : (s.cg + 3) / 4 * 4;
  k.row_quads = k.span ? (s.kw * s.cg + 3) / 4 : k.cg4 / 4;
  k.k4 = k.span ? s.kh * k.row_quads : s.kh * s.kw * k.row_quads;
  return k;
}

void PackedWeights::pack(const ConvShape& s, const KLayout& layout, int64_t group, int64_t real_lanes,
                         const std::function<int8_t(int64_t, int64_t, int64_t, int64_t, int64_t)>& value) {
  groups = group;
  lanes = (real_lanes + int64_t(kTileLanes) - 1) / int64_t(kTileLanes) * int64_t(kTileLanes);
  k4 = layout.k4;
  data.assign(size_t(groups * lanes * k4 * 4), 0);
  sums.assign(size_t(groups * lanes), 0);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t lane = 0; lane < real_lanes; ++lane) {
      int8_t* block = data.data() + (g * lanes + lane / int64_t(kTileLanes) * int64_t(kTileLanes)) * k4 * 4;
      const int64_t l = lane % int64_t(kTileLanes);
      int32_t sum = 0;
      for (int64_t i = 0; i < s.kh; ++i)
        for (int64_t j = 0; j < s.kw; ++j)
          for (int64_t c = 0; c < s.cg; ++c) {
            const int64_t k = layout.index(s, i, j, c);
            const int8_t v = value(g, lane, c, i, j);
            block[k / 4 * int64_t(kLaneStep) + l * 4 + k % 4] = v;
            sum += v;
          }
      sums[size_t(g * lanes + lane)] = sum;
    }
}

std::vector<float> sample_scales(const Tensor& scale, int64_t n, const std::string& what) {
  expect_type(scale, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, what);
  std::vector<float> out(static_cast<size_t>(n));
  if (scale.count == 1) {
    std::fill(out.begin(), out.end(), scale.as<float>()[0]);
  } else if (scale.count == n && !scale.shape.empty() && scale.shape[0] == n) {
    std::copy(scale.as<float>(), scale.as<float>() + n, out.begin());
  } else {
    fail(what + " must be a scalar or one value per sample [N, 1, 1, 1], got " + shape_text(scale.shape));
  }
  for (float v : out)
    if (!(v > 0.0f) || std::isinf(v)) fail(what + " holds a step that is not a positive finite number");
  return out;
}

ConvInputs conv_inputs(OrtKernelContext* context, const ConvAttrs& attrs, ONNXTensorElementDataType w_type,
                       const std::string& op) {
  ConvInputs in;
  in.x = input(context, 0, "input x_codes");
  const Tensor x_scale = input(context, 1, "input x_scale");
  in.w = input(context, 2, "input w_codes");
  in.w_scale = input(context, 3, "input w_scale");
  in.bias = input(context, 4, "input bias");
  if (in.x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 && in.x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8)
    fail(std::string("input x_codes must be int8 or uint8, got ") + type_name(in.x.type));
  expect_type(in.w, w_type, "input w_codes");
  in.s = ConvShape::of(in.x, in.w.shape, attrs, op);
  expect_type(in.w_scale, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "input w_scale");
  expect_type(in.bias, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "input bias");
  if (in.w_scale.count != in.s.m || in.bias.count != in.s.m)
    fail("w_scale and bias must hold one value per output channel (" + std::to_string(in.s.m) + "), got " +
         shape_text(in.w_scale.shape) + " and " + shape_text(in.bias.shape));
  in.xs = sample_scales(x_scale, in.s.n, "input x_scale");
  return in;
}

bool ConvInputs::stale(const PackedWeights& packed, const ConvAttrs& attrs) const {
  return packed.source != w.data || packed.groups != attrs.group || packed.k4 != KLayout::of(s, attrs).k4;
}

void run_conv(OrtKernelContext* context, Isa isa, const ConvShape& s, const ConvAttrs& a, const Tensor& x,
              const PackedWeights& w, const ConvOutput& output) {
  const bool is_signed = x.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
  const uint8_t offset = is_signed ? 128 : 0;
  const KLayout layout = KLayout::of(s, a);
  const int64_t cg4 = layout.cg4, groups = a.group;
  const int64_t pt = a.pads[0], pl = a.pads[1];
  const int64_t hp = s.h + pt + a.pads[2], wp = s.w + pl + a.pads[3];
  const int64_t pixel_bytes = groups * cg4, image_bytes = hp * wp * pixel_bytes;
  if (image_bytes > (int64_t(1) << 30)) fail("input too large for the native conv (over 1 GiB per sample)");
  // reused across runs (a fresh multi-MB buffer per run costs page faults); the lambdas below run on
  // other threads, so they use the pointer, never the thread_local itself
  thread_local std::vector<uint8_t> scratch;
  scratch.assign(size_t(s.n * image_bytes + 4), offset);  // + 4: a span layout's last quad reads past the end
  uint8_t* const nhwc = scratch.data();
  std::vector<int64_t> channel_at(size_t(s.c));  // input channel -> byte within an NHWC pixel
  for (int64_t c = 0; c < s.c; ++c) channel_at[size_t(c)] = c / s.cg * cg4 + c % s.cg;
  const uint8_t* src = static_cast<const uint8_t*>(x.data);
  parallel_for(context, size_t(s.n * s.h), [&](size_t nh) {
    // locals and restrict: byte stores may alias anything, which otherwise reloads every captured value
    const int64_t n = int64_t(nh) / s.h, h = int64_t(nh) % s.h, channels = s.c, width = s.w, plane = s.h * s.w;
    const int64_t stride = pixel_bytes;
    const uint8_t add = offset;
    const int64_t* __restrict at = channel_at.data();
    uint8_t* __restrict row = nhwc + n * image_bytes + ((h + pt) * wp + pl) * stride;
    const uint8_t* __restrict in = src + n * channels * plane + h * width;
    // pixel by pixel: contiguous writes; the C input rows being read stay in L1 across the pixels
    for (int64_t x0 = 0; x0 < width; ++x0) {
      uint8_t* __restrict out = row + x0 * stride;
      for (int64_t c = 0; c < channels; ++c) out[at[c]] = uint8_t(in[c * plane + x0] + add);
    }
  });
  // byte offset of each k quad from a pixel's window origin
  std::vector<int32_t> k_offset(size_t(layout.k4));
  for (int64_t i = 0, q = 0; i < s.kh; ++i) {
    const int64_t row = i * a.dilations[0] * wp * pixel_bytes;
    if (layout.span) {
      for (int64_t r = 0; r < layout.row_quads; ++r) k_offset[size_t(q++)] = int32_t(row + 4 * r);
    } else {
      for (int64_t j = 0; j < s.kw; ++j)
        for (int64_t c4 = 0; c4 < layout.row_quads; ++c4)
          k_offset[size_t(q++)] = int32_t(row + j * a.dilations[1] * pixel_bytes + 4 * c4);
    }
  }
  const int64_t pixels = s.ho * s.wo, tile = int64_t(kTilePixels), chunk = 8 * tile;
  const int64_t chunks = (pixels + chunk - 1) / chunk, blocks = w.lanes / int64_t(kTileLanes);
  const size_t tasks = size_t(s.n * groups * blocks * chunks);
  parallel_for(context, tasks, [&](size_t task) {
    const int64_t t = int64_t(task);
    const int64_t n = t / (groups * blocks * chunks), g = t / (blocks * chunks) % groups;
    const int64_t block = t / chunks % blocks, first = t % chunks * chunk;
    const uint8_t* image = nhwc + n * image_bytes + g * cg4;
    const int8_t* weights = w.data.data() + (g * w.lanes + block * int64_t(kTileLanes)) * w.k4 * 4;
    const int32_t* sums = w.sums.data() + g * w.lanes + block * int64_t(kTileLanes);
    TileOutput out;
    output(n, g, block * int64_t(kTileLanes), out);
    for (size_t l = 0; l < kTileLanes; ++l) out.correction[l] = int32_t(offset) * sums[l];
    for (int64_t p0 = first; p0 < std::min(pixels, first + chunk); p0 += tile) {
      const int64_t count = std::min(tile, pixels - p0);
      const uint8_t* pixel[kTilePixels];
      for (int64_t p = 0; p < tile; ++p) {
        const int64_t q = p < count ? p0 + p : p0;  // past the end: a real pixel again, never written
        pixel[p] = image + (q / s.wo * a.strides[0] * wp + q % s.wo * a.strides[1]) * pixel_bytes;
      }
      conv_tile(isa, pixel, k_offset.data(), weights, size_t(w.k4), out, size_t(p0), size_t(count));
    }
  });
}

}  // namespace qx
