#include "conv.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace qx {

void ConvAttrs::read(const OrtKernelInfo* info, bool group_required) {
  group = group_required ? attr_int(info, "group") : attr_int(info, "group", 1);
  strides = attr_ints(info, "strides", {1, 1});
  pads = attr_ints(info, "pads", {0, 0, 0, 0});
  dilations = attr_ints(info, "dilations", {1, 1});
  if (group < 1) fail("attribute group=" + std::to_string(group) + " must be >= 1");
  if (strides.size() != 2 || pads.size() != 4 || dilations.size() != 2)
    fail("attributes strides / pads / dilations must have 2 / 4 / 2 values (2-D conv), got " +
         std::to_string(strides.size()) + " / " + std::to_string(pads.size()) + " / " + std::to_string(dilations.size()));
  for (int64_t v : strides) if (v < 1) fail("attribute strides must be >= 1, got " + shape_text(strides));
  for (int64_t v : dilations) if (v < 1) fail("attribute dilations must be >= 1, got " + shape_text(dilations));
  for (int64_t v : pads) if (v < 0) fail("attribute pads must be >= 0, got " + shape_text(pads));
}

ConvShape ConvShape::of(const Tensor& x, const std::vector<int64_t>& ws, const ConvAttrs& a) {
  if (x.shape.size() != 4) fail("input x_codes must be [N, C, H, W], got " + shape_text(x.shape));
  if (ws.size() != 4) fail("input w_codes must be [M, C/group, kh, kw], got " + shape_text(ws));
  ConvShape s{x.shape[0], x.shape[1], x.shape[2], x.shape[3], ws[0], ws[1], ws[2], ws[3], 0, 0, 0, 0};
  if (s.m % a.group != 0 || s.c != checked_mul(s.cg, a.group, "C/group * group"))
    fail("weight " + shape_text(ws) + " does not match input channels " + std::to_string(s.c) + " with group " +
         std::to_string(a.group));
  if (s.kh < 1 || s.kw < 1) fail("empty kernel " + shape_text(ws));
  const auto what = [&] { return "conv size of input " + shape_text(x.shape) + " and weight " + shape_text(ws); };
  const int64_t eh = checked_add(checked_mul(a.dilations[0], s.kh - 1, what), 1, what);
  const int64_t ew = checked_add(checked_mul(a.dilations[1], s.kw - 1, what), 1, what);
  s.hp = checked_add(checked_add(s.h, a.pads[0], what), a.pads[2], what);
  s.wp = checked_add(checked_add(s.w, a.pads[1], what), a.pads[3], what);
  if (s.hp < eh || s.wp < ew)
    fail("kernel " + shape_text({eh, ew}) + " (dilated) larger than the padded input " + shape_text({s.hp, s.wp}));
  s.ho = (s.hp - eh) / a.strides[0] + 1;
  s.wo = (s.wp - ew) / a.strides[1] + 1;
  const int64_t count = checked_mul(checked_mul(checked_mul(s.n, s.m, what), s.ho, what), s.wo, what);
  if (count > std::numeric_limits<int32_t>::max()) fail("output of more than 2^31 - 1 elements (a native kernel limit)");
  // int32 accumulation of uint8 x int8 products stays exact up to 2^31 / (255 * 128) terms
  const int64_t cg4 = (s.cg + 3) / 4 * 4;
  if (checked_mul(checked_mul(cg4, s.kh, what), s.kw, what) > 65536)
    fail("reduction longer than 65536 terms overflows int32 accumulation (a native kernel limit)");
  return s;
}

int64_t packed_groups(const ConvShape& s, const ConvAttrs& a) { return KLayout::of(s, a).depthwise ? 1 : a.group; }

KLayout KLayout::of(const ConvShape& s, const ConvAttrs& a) {
  KLayout k;
  if (s.cg == 1 && s.m == a.group) {
    k.depthwise = true;
    k.cg4 = 1;
    k.k4 = (s.kh * s.kw + 1) / 2;
    return k;
  }
  k.span = a.group == 1 && a.dilations[1] == 1 && s.cg % 4 != 0;
  k.cg4 = k.span ? s.cg : (s.cg + 3) / 4 * 4;
  k.row_quads = k.span ? (s.kw * s.cg + 3) / 4 : k.cg4 / 4;
  k.k4 = k.span ? s.kh * k.row_quads : s.kh * s.kw * k.row_quads;
  return k;
}

void PackedWeights::pack(const ConvShape& s, const KLayout& layout, int64_t group, int64_t real,
                         const std::function<int8_t(int64_t, int64_t, int64_t, int64_t, int64_t)>& value) {
  groups = group;
  real_lanes = real;
  lanes = (real_lanes + int64_t(kTileLanes) - 1) / int64_t(kTileLanes) * int64_t(kTileLanes);
  k4 = layout.k4;
  const std::string what = "packed weights";
  const int64_t bytes = checked_mul(checked_mul(checked_mul(groups, lanes, what), k4, what), 4, what);
  if (bytes > (int64_t(1) << 30)) fail("packed weights over 1 GiB (a native kernel limit)");
  data.assign(size_t(bytes), 0);  // depthwise: 64 bytes per tap pair and block of 32 lanes, the same size
  sums.assign(size_t(groups * lanes), 0);
  const int64_t tap_groups = (s.kw + 3) / 4, lane_words = s.kh * tap_groups;
  tap_words.assign(layout.depthwise ? size_t(lanes * lane_words) : 0, 0);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t lane = 0; lane < real_lanes; ++lane) {
      int8_t* block = data.data() + (g * lanes + lane / int64_t(kTileLanes) * int64_t(kTileLanes)) * k4 * 4;
      const int64_t l = lane % int64_t(kTileLanes);
      int32_t sum = 0;
      for (int64_t i = 0; i < s.kh; ++i)
        for (int64_t j = 0; j < s.kw; ++j)
          for (int64_t c = 0; c < s.cg; ++c) {
            const int8_t v = value(g, lane, c, i, j);
            if (layout.depthwise) {
              const int64_t t = i * s.kw + j;
              block[t / 2 * 64 + int64_t(depthwise_byte(size_t(l), size_t(t % 2)))] = v;
              int8_t* word = reinterpret_cast<int8_t*>(&tap_words[size_t(lane * lane_words + i * tap_groups + j / 4)]);
              word[j % 4] = v;
            } else {
              const int64_t k = layout.index(s, i, j, c);
              block[k / 4 * int64_t(kLaneStep) + l * 4 + k % 4] = v;
            }
            sum += v;
          }
      sums[size_t(g * lanes + lane)] = sum;
    }
  // both layouts keep what vpmaddubsw adds together in adjacent bytes (even, odd)
  int32_t max_pair = 0;
  for (size_t i = 0; i + 1 < data.size(); i += 2)
    max_pair = std::max(max_pair, std::abs(int32_t(data[i])) + std::abs(int32_t(data[i + 1])));
  plan = Int16Plan::of(max_pair);
}

std::vector<float> sample_scales(const Tensor& scale, int64_t n, const std::string& what) {
  expect_type(scale, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, what);
  if (!scale.shape.empty() && scale.shape != std::vector<int64_t>{n, 1, 1, 1})
    fail(what + " must be a scalar [] or one value per sample [N=" + std::to_string(n) + ", 1, 1, 1], got " +
         shape_text(scale.shape));
  const float* v = scale.as<float>();
  for (int64_t i = 0; i < scale.count; ++i)
    if (!(v[i] > 0.0f) || std::isinf(v[i])) fail(what + " holds a step that is not a positive finite number");
  std::vector<float> out(static_cast<size_t>(n));
  if (scale.shape.empty())
    std::fill(out.begin(), out.end(), v[0]);
  else
    std::copy(v, v + n, out.begin());
  return out;
}

void RequantAttrs::read(const OrtKernelInfo* info) {
  qmin = attr_int(info, "qmin");
  qmax = attr_int(info, "qmax");
  if (qmin > qmax) fail("attributes qmin=" + std::to_string(qmin) + " > qmax=" + std::to_string(qmax));
}

RequantAttrs::Codes RequantAttrs::output_codes(const Tensor& y_zero_point) const {
  Codes codes;
  codes.zero_point = scalar_zero_point(y_zero_point, "input y_zero_point");
  codes.is_signed = y_zero_point.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
  const int64_t lo = codes.is_signed ? -128 : 0, hi = codes.is_signed ? 127 : 255;
  if (qmin < lo || qmax > hi)
    fail("attributes qmin=" + std::to_string(qmin) + ", qmax=" + std::to_string(qmax) + " are outside y_zero_point's type range [" +
         std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return codes;
}

void* ConvInputs::allocate_output(OrtKernelContext* context) const {
  return output(context, 0, {s.n, s.m, s.ho, s.wo});
}

void* ConvInputs::lane_row(void* y, int64_t n, int64_t m) const {
  const int64_t at = (n * s.m + m) * s.ho * s.wo;  // < 2^31: checked in ConvShape::of
  return requant ? static_cast<void*>(static_cast<uint8_t*>(y) + at) : static_cast<void*>(static_cast<float*>(y) + at);
}

void ConvInputs::set_output(TileOutput& out, int64_t relu) const {
  out.relu = int(relu);
  if (!requant) return;
  out.codes = true;
  out.codes_signed = y_signed;
  out.code_step = y_scale;
  out.zero_point = y_zero_point;
  out.code_lo = float(requant->qmin - y_zero_point);
  out.code_hi = float(requant->qmax - y_zero_point);
  // The ReLU folded into the code range, one max / min less per vector, where the codes stay the same
  // (y_scale > 0, so y / y_scale keeps order and sign): with code_lo >= 0 the clamp maps every y < 0,
  // -0 and NaN to code_lo as the ReLU's 0 (or NaN) then the clamp did; ReLU6's y > 6 becomes
  // min(y / y_scale, 6 / y_scale), the same float, where 6 / y_scale >= code_lo (else the clamp's
  // order would differ).
  if (out.relu && out.code_lo >= 0.0f) {
    const float six = 6.0f / y_scale;  // as the epilogue divides 6.0f
    if (out.relu == 1) {
      out.relu = 0;
    } else if (six >= out.code_lo) {
      out.relu = 0;
      out.code_hi = std::min(out.code_hi, six);
    }
  }
}

ConvInputs conv_inputs(OrtKernelContext* context, const ConvAttrs& attrs, ONNXTensorElementDataType w_type,
                       const RequantAttrs* requant) {
  size_t count = 0;
  check(api->KernelContext_GetInputCount(context, &count));
  if (requant && count != 7)
    fail("takes 7 inputs (x_codes, x_scale, w_codes, w_scale, bias, y_scale, y_zero_point), got " + std::to_string(count));
  if (!requant && count != 5)
    fail("takes 5 inputs (x_codes, x_scale, w_codes, w_scale, bias), got " + std::to_string(count));
  ConvInputs in;
  in.x = input(context, 0, "input x_codes");
  const Tensor x_scale = input(context, 1, "input x_scale");
  in.w = input(context, 2, "input w_codes");
  in.w_scale = input(context, 3, "input w_scale");
  in.bias = input(context, 4, "input bias");
  expect_codes(in.x, "input x_codes");
  expect_type(in.w, w_type, "input w_codes");
  expect_type(in.w_scale, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "input w_scale");
  expect_type(in.bias, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "input bias");
  in.s = ConvShape::of(in.x, in.w.shape, attrs);
  expect_shape(in.w_scale, {in.s.m}, "input w_scale");
  expect_shape(in.bias, {in.s.m}, "input bias");
  in.xs = sample_scales(x_scale, in.s.n, "input x_scale");
  if (requant) {
    in.requant = requant;
    const Tensor y_scale = input(context, 5, "input y_scale");
    const Tensor zero_point = input(context, 6, "input y_zero_point");
    in.y_scale = scalar_step(y_scale, "input y_scale");
    const RequantAttrs::Codes codes = requant->output_codes(zero_point);
    in.y_zero_point = codes.zero_point;
    in.y_signed = codes.is_signed;
  }
  return in;
}

namespace {

#if defined(__x86_64__)
// A 16 x 16 byte transpose in four unpack steps: v[j] holds channel j of 16 pixels (each 128-bit
// half of a ymm its own 16), and on return pixel 2u's 16 channels are in out[2u], pixel 2u + 1's in
// out[2u + 1].  Generic over the register type: each step's unpack is passed in.
#define QX_TRANSPOSE16(V, LO8, HI8, LO16, HI16, LO32, HI32, LO64, HI64)                          \
  {                                                                                          \
    V t[16];                                                                                 \
    /* t[j], t[j + 8]: channels 2j, 2j + 1 of pixels 0-7, 8-15 */                            \
    for (int j = 0; j < 8; ++j) t[j] = LO8(v[2 * j], v[2 * j + 1]), t[j + 8] = HI8(v[2 * j], v[2 * j + 1]); \
    /* v[4m + s]: channels 4m .. 4m + 3 of pixels 4s .. 4s + 3 */                            \
    for (int m = 0; m < 4; ++m)                                                              \
      for (int h = 0; h < 2; ++h)                                                            \
        v[4 * m + 2 * h] = LO16(t[2 * m + 8 * h], t[2 * m + 1 + 8 * h]),                     \
                  v[4 * m + 2 * h + 1] = HI16(t[2 * m + 8 * h], t[2 * m + 1 + 8 * h]);       \
    /* t[8o + u]: channels 8o .. 8o + 7 of pixels 2u, 2u + 1 */                              \
    for (int o = 0; o < 2; ++o)                                                              \
      for (int s = 0; s < 4; ++s)                                                            \
        t[8 * o + 2 * s] = LO32(v[8 * o + s], v[8 * o + 4 + s]),                             \
                  t[8 * o + 2 * s + 1] = HI32(v[8 * o + s], v[8 * o + 4 + s]);               \
    for (int u = 0; u < 8; ++u) out[2 * u] = LO64(t[u], t[8 + u]), out[2 * u + 1] = HI64(t[u], t[8 + u]); \
  }

// 16 channels (rows ``plane`` apart) of pixels [x, count), 16 at a time: pixel i's 16 bytes (plus
// ``add``) stored at dst + pixel_at[i].  Returns the pixels done.
int64_t sixteen_rows(const uint8_t* __restrict in, int64_t plane, int64_t x, int64_t count, uint8_t add,
                     uint8_t* __restrict dst, const int64_t* __restrict pixel_at) {
  const __m128i offset = _mm_set1_epi8(static_cast<char>(add));
  for (; x + 16 <= count; x += 16) {
    __m128i v[16], out[16];
    for (int j = 0; j < 16; ++j)
      v[j] = _mm_add_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + j * plane + x)), offset);
    QX_TRANSPOSE16(__m128i, _mm_unpacklo_epi8, _mm_unpackhi_epi8, _mm_unpacklo_epi16, _mm_unpackhi_epi16,
                   _mm_unpacklo_epi32, _mm_unpackhi_epi32, _mm_unpacklo_epi64, _mm_unpackhi_epi64)
    for (int i = 0; i < 16; ++i) _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + pixel_at[x + i]), out[i]);
  }
  return x;
}

// sixteen_rows 32 pixels at a time, from pixel 0
__attribute__((target("avx2"))) int64_t sixteen_rows_avx2(const uint8_t* __restrict in, int64_t plane, int64_t count,
                                                          uint8_t add, uint8_t* __restrict dst,
                                                          const int64_t* __restrict pixel_at) {
  const __m256i offset = _mm256_set1_epi8(static_cast<char>(add));
  int64_t x = 0;
  for (; x + 32 <= count; x += 32) {
    __m256i v[16], out[16];
    for (int j = 0; j < 16; ++j)
      v[j] = _mm256_add_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + j * plane + x)), offset);
    QX_TRANSPOSE16(__m256i, _mm256_unpacklo_epi8, _mm256_unpackhi_epi8, _mm256_unpacklo_epi16, _mm256_unpackhi_epi16,
                   _mm256_unpacklo_epi32, _mm256_unpackhi_epi32, _mm256_unpacklo_epi64, _mm256_unpackhi_epi64)
    for (int i = 0; i < 16; ++i) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + pixel_at[x + i]), _mm256_castsi256_si128(out[i]));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + pixel_at[x + 16 + i]), _mm256_extracti128_si256(out[i], 1));
    }
  }
  return x;
}
#undef QX_TRANSPOSE16

// ``rows`` (1 to 4) channels (``plane`` apart) of pixels [x, count), 16 at a time (quad_words16), each
// pixel's word stored at out + pixel_at[i]; its bytes past ``rows`` are gaps in the pixel and get
// ``add`` (the value every gap holds).  Returns the pixels done.
int64_t quad_rows(const uint8_t* __restrict r0, int64_t plane, int64_t rows, int64_t x, int64_t count, uint8_t add,
                  uint8_t* __restrict out, const int64_t* __restrict pixel_at) {
  for (; x + 16 <= count; x += 16) {
    __m128i words[4];
    quad_words16(r0, plane, rows, x, add, words);
    const uint8_t* bytes = reinterpret_cast<const uint8_t*>(words);
    for (int64_t i = 0; i < 16; ++i) std::memcpy(out + pixel_at[x + i], bytes + 4 * i, 4);
  }
  return x;
}
#endif

// whether channels c .. c + count - 1 land side by side
bool side_by_side(const int64_t* at, int64_t c, int64_t count) {
  for (int64_t k = 1; k < count; ++k)
    if (at[c + k] != at[c] + k) return false;
  return true;
}

}  // namespace

void nhwc_pixels(Isa isa, const uint8_t* __restrict in, int64_t plane, int64_t count, int64_t channels,
                 const int64_t* __restrict at, int64_t pixel_bytes, uint8_t add, uint8_t* __restrict out,
                 const int64_t* __restrict pixel_at) {
  // channels [c, c + group): pixels [x, count) byte by byte
  const auto finish = [&](int64_t c, int64_t group, int64_t x) {
    for (; x < count; ++x)
      for (int64_t k = c; k < c + group; ++k) out[pixel_at[x] + at[k]] = uint8_t(in[k * plane + x] + add);
  };
  int64_t limit = channels;
#if defined(__x86_64__)
  // a pixel with no gaps whose last 1-3 channels are no quad of their own (the span layout's 3-channel
  // stem): their words go first, each spilling its 1-3 gap bytes (``add``) into the bytes after the
  // pixel, which are padding (holding ``add``) or later pixels' (rewritten after: by this run's next
  // words, in order, or by the runs below).  The words stop 3 pixels short of the task's end, whose
  // spill could reach the next task's pixels; the pixels left go byte by byte.
  if (pixel_bytes == channels && channels % 4 != 0) {
    limit = channels - channels % 4;
    const int64_t words = std::max<int64_t>(count - 3, 0);
    finish(limit, channels % 4, quad_rows(in + limit * plane, plane, channels % 4, 0, words, add, out + at[limit], pixel_at));
  }
#endif
  for (int64_t c = 0; c < limit;) {
#if defined(__x86_64__)
    if (c + 16 <= limit && side_by_side(at, c, 16)) {
      const uint8_t* rows = in + c * plane;
      int64_t x = isa != Isa::Scalar ? sixteen_rows_avx2(rows, plane, count, add, out + at[c], pixel_at) : 0;
      finish(c, 16, sixteen_rows(rows, plane, x, count, add, out + at[c], pixel_at));
      c += 16;
      continue;
    }
    // up to 4 side by side, then gaps to a 4-byte word (channels of a group padded to 4, the stem's 3)
    int64_t rows = 1;
    while (rows < 4 && c + rows < limit && at[c + rows] == at[c] + rows) ++rows;
    if (rows == 4 || (at[c] + 4 <= pixel_bytes && (c + rows == limit || at[c + rows] >= at[c] + 4))) {
      finish(c, rows, quad_rows(in + c * plane, plane, rows, 0, count, add, out + at[c], pixel_at));
      c += rows;
      continue;
    }
#else
    (void)isa, (void)pixel_bytes;
#endif
    finish(c, 1, 0);
    c += 1;
  }
}

void block_output(const ConvOutput& output, const PackedWeights& w, uint8_t offset, int64_t n, int64_t g,
                  int64_t block, TileOutput& out) {
  output(n, g, block * int64_t(kTileLanes), out);
  const int32_t* sums = w.sums.data() + g * w.lanes + block * int64_t(kTileLanes);
  for (size_t l = 0; l < kTileLanes; ++l) out.correction[l] = int32_t(offset) * sums[l];
}

void run_conv(OrtKernelContext* context, Isa isa, const ConvShape& s, const ConvAttrs& a, const Tensor& x,
              const PackedWeights& w, bool dup16, const ConvOutput& output) {
  if (run_pointwise(context, isa, s, a, x, w, output) || run_depthwise_planes(context, isa, s, a, x, w, dup16, output))
    return;
  const uint8_t offset = code_offset(x);
  const KLayout layout = KLayout::of(s, a);
  const int64_t cg4 = layout.cg4, groups = w.groups;
  const int64_t pt = a.pads[0], pl = a.pads[1];
  const int64_t hp = s.hp, wp = s.wp;
  const auto what = [&] { return "padded input " + shape_text({s.n, s.c, hp, wp}); };
  const int64_t pixel_bytes = checked_mul(a.group, cg4, what);
  const int64_t image_bytes = checked_mul(checked_mul(hp, wp, what), pixel_bytes, what);
  if (image_bytes > (int64_t(1) << 30) || checked_mul(s.n, image_bytes, what) > (int64_t(1) << 31))
    fail(what() + " too large for the native conv: over 1 GiB per sample or 2 GiB in all (a native kernel limit)");
  // reused across runs (a fresh multi-MB buffer per run costs page faults); the lambdas below run on
  // other threads, so they use the pointer, never the thread_local itself.  One per thread: runs on
  // other threads (concurrent Run() calls) have their own.
  thread_local std::vector<uint8_t> scratch;
  // + 64: a span layout's last quad, and a depthwise block's 32-byte loads, read past the end
  const size_t scratch_bytes = size_t(s.n * image_bytes + 64);
  if (pixel_bytes != s.c) {
    scratch.assign(scratch_bytes, offset);  // channels of a group padded apart: every byte, gaps too
  } else {
    // only the bytes no input code lands on: the padding rows and columns, and the tail
    scratch.resize(scratch_bytes);
    const auto pad = [&](int64_t at, int64_t pixels) {
      std::memset(scratch.data() + at, offset, size_t(pixels * pixel_bytes));
    };
    for (int64_t n = 0; n < s.n; ++n) {
      const int64_t image = n * image_bytes;
      pad(image, pt * wp);
      pad(image + (pt + s.h) * wp * pixel_bytes, (hp - pt - s.h) * wp);
      for (int64_t r = pt; r < pt + s.h && wp > s.w; ++r) {
        pad(image + r * wp * pixel_bytes, pl);
        pad(image + (r * wp + pl + s.w) * pixel_bytes, wp - pl - s.w);
      }
    }
    std::memset(scratch.data() + s.n * image_bytes, offset, 64);
  }
  uint8_t* const nhwc = scratch.data();
  std::vector<int64_t> channel_at(size_t(s.c));  // input channel -> byte within an NHWC pixel
  for (int64_t c = 0; c < s.c; ++c) channel_at[size_t(c)] = c / s.cg * cg4 + c % s.cg;
  const uint8_t* src = static_cast<const uint8_t*>(x.data);
  // tasks of up to 256 pixels of a sample's plane; pixel_at: each one's byte in the padded NHWC image
  constexpr int64_t kSpan = 256;
  const int64_t plane = s.h * s.w, spans = (plane + kSpan - 1) / kSpan;
  parallel_for(context, size_t(s.n * spans), [&](size_t task) {
    const int64_t n = int64_t(task) / spans, first = int64_t(task) % spans * kSpan;
    const int64_t count = std::min(kSpan, plane - first);
    int64_t pixel_at[kSpan];
    // row by row: a row's pixels are pixel_bytes apart, the next row's first (wp - w) pixels on
    int64_t x = first % s.w, at = ((first / s.w + pt) * wp + pl + x) * pixel_bytes;
    for (int64_t i = 0; i < count;) {
      const int64_t run = std::min(count - i, s.w - x);
      for (int64_t k = 0; k < run; ++k) pixel_at[i + k] = at + k * pixel_bytes;
      i += run, at += (run + wp - s.w) * pixel_bytes, x = 0;
    }
    nhwc_pixels(isa, src + n * s.c * plane + first, plane, count, s.c, channel_at.data(), pixel_bytes, offset,
                nhwc + n * image_bytes, pixel_at);
  });
  // byte offset of each k quad (depthwise: each tap, an even count) from a pixel's window origin
  std::vector<int32_t> k_offset(size_t(layout.depthwise ? 2 * layout.k4 : layout.k4));
  if (layout.depthwise) {
    size_t q = 0;
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t j = 0; j < s.kw; ++j)
        k_offset[q++] = int32_t((i * a.dilations[0] * wp + j * a.dilations[1]) * pixel_bytes);
    if (q < k_offset.size()) k_offset[q] = k_offset[0];  // an odd tap count: the last pair's zero weights
  } else {
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
  }
  const int64_t pixels = s.ho * s.wo, tile = int64_t(kTilePixels), blocks = w.lanes / int64_t(kTileLanes);
  // tasks of 64 to 256 output pixels: larger ones while 64 tasks are left (a task sets up its block's
  // 32 output rows first, a fifth of a small-K conv's time with 64 pixels)
  int64_t chunk = 8 * tile;
  const auto tasks_of = [&](int64_t c) { return s.n * groups * blocks * ((pixels + c - 1) / c); };
  while (chunk < 32 * tile && tasks_of(2 * chunk) >= 64) chunk *= 2;
  const int64_t chunks = (pixels + chunk - 1) / chunk;
  const size_t tasks = size_t(s.n * groups * blocks * chunks);
  parallel_for(context, tasks, [&](size_t task) {
    const int64_t t = int64_t(task);
    const int64_t n = t / (groups * blocks * chunks), g = t / (blocks * chunks) % groups;
    const int64_t block = t / chunks % blocks, first = t % chunks * chunk;
    // a depthwise block's first channel; else the group's first byte
    const int64_t first_byte = layout.depthwise ? block * int64_t(kTileLanes) / (dup16 ? 2 : 1) : g * cg4;
    const uint8_t* image = nhwc + n * image_bytes + first_byte;
    const size_t live = size_t(std::min(int64_t(kTileLanes), w.real_lanes - block * int64_t(kTileLanes)));
    const int8_t* weights = w.data.data() + (g * w.lanes + block * int64_t(kTileLanes)) * w.k4 * 4;
    TileOutput out;
    block_output(output, w, offset, n, g, block, out);
    // the window origin of output pixel (oy, ox): counted along, not divided per pixel
    // (a stride is only ever multiplied out where there is a second output row / column: a single one
    // allows any stride, whose product could overflow)
    const int64_t row_bytes = s.ho > 1 ? a.strides[0] * wp * pixel_bytes : 0;
    const int64_t col_bytes = s.wo > 1 ? a.strides[1] * pixel_bytes : 0;
    int64_t oy = first / s.wo, ox = first % s.wo;
    for (int64_t p0 = first; p0 < std::min(pixels, first + chunk); p0 += tile) {
      const int64_t count = std::min(tile, pixels - p0);
      const uint8_t* pixel[kTilePixels];
      for (int64_t p = 0; p < tile; ++p) {
        if (p >= count) {  // past the end: a real pixel again, never written
          pixel[p] = pixel[0];
          continue;
        }
        pixel[p] = image + oy * row_bytes + ox * col_bytes;
        if (++ox == s.wo) ox = 0, ++oy;
      }
      if (layout.depthwise)
        depthwise_tile(isa, pixel, k_offset.data(), weights, size_t(w.k4), w.plan, dup16, out, size_t(p0), size_t(count));
      else
        conv_tile(isa, pixel, k_offset.data(), weights, size_t(w.k4), w.plan, live, out, size_t(p0), size_t(count));
    }
  });
}

}  // namespace qx
