// Integer 2-D convolution engine shared by PostConv and IntConv: activation codes (int8 / uint8, zero
// point 0) times int8 weights, int32 accumulation, a float epilogue per op.
//
// The input is copied once to a padded NHWC uint8 image (codes + offset, offset 128 for int8 codes;
// borders hold the offset, i.e. code 0), channels of each group padded to a multiple of 4.  K is
// ordered (kernel row, kernel column, channel), so 4 consecutive k are 4 channels of one input pixel:
// one 4-byte load broadcast against 32 weight lanes, with no im2col buffer at all.  The offset is
// taken back out with the weight lane sums.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common.h"
#include "gemm.h"

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

namespace qx {

struct ConvAttrs {
  int64_t group = 1;
  std::vector<int64_t> strides, pads, dilations;  // [sh, sw], [top, left, bottom, right], [dh, dw]
  // validated: strides / dilations 2 values >= 1, pads 4 values >= 0 (absent: Conv's defaults),
  // group >= 1 (absent: 1, unless ``group_required``: the op's function body needs the attribute)
  void read(const OrtKernelInfo* info, bool group_required);
};

struct ConvShape {
  int64_t n, c, h, w, m, cg, kh, kw, ho, wo;
  int64_t hp, wp;  // padded input size
  // x [N, C, H, W] and a weight of [M, C / group, kh, kw]: output size, validated in checked 64-bit
  // arithmetic (any sizes; what the kernel cannot run is a "native kernel limit" error)
  static ConvShape of(const Tensor& x, const std::vector<int64_t>& w_shape, const ConvAttrs& attrs);
  int64_t outputs() const { return n * m * ho * wo; }  // checked in of()
};

// How K = (kernel row, kernel column, channel) is cut into the tile's 4-byte groups ("quads").
// A depthwise conv (one input and one output channel per group) has no quads: its channels are
// packed contiguously (1 byte per group) and it runs depthwise_tile over its kernel taps.
// Usually each quad is 4 channels of one input pixel, a group's channels padded to a multiple of 4.
// With one group, no column dilation and channels not a multiple of 4 (a 3-channel image stem), a
// kernel row's kw * C bytes are contiguous in the NHWC image and are cut into quads directly: 6 quads
// per 7x7 row of 3 channels instead of 7.
struct KLayout {
  bool depthwise = false;
  bool span = false;
  int64_t cg4 = 0;        // bytes of one group in an NHWC pixel
  int64_t row_quads = 0;  // quads per kernel row (span) or per kernel position
  int64_t k4 = 0;         // quads in all (depthwise: tap pairs)
  static KLayout of(const ConvShape& s, const ConvAttrs& a);
  int64_t index(const ConvShape& s, int64_t i, int64_t j, int64_t c) const {
    return span ? i * row_quads * 4 + j * s.cg + c : (i * s.kw + j) * cg4 + c;
  }
};

// Weights of one conv packed for conv_tile: per group, output lanes (what a kernel accumulates:
// one per output channel, or two for POST's even and odd sums) padded to a multiple of 32, in
// blocks [k4][32 lanes][4] with k in (kh, kw, channel) order and zero padding; and each lane's sum
// (to take the activation offset back out).
// A depthwise conv packs as one group whose lanes are its channels (see depthwise.cc).
struct PackedWeights {
  int64_t groups = 0, lanes = 0, real_lanes = 0, k4 = 0;  // lanes per group: padded, holding weights
  std::vector<int8_t> data;
  std::vector<int32_t> sums;
  // depthwise only: each lane's weights as one 4-byte word per kernel row and group of 4 taps (kx = 4g ..
  // 4g + 3, zeros past kw), what depthwise_planes.cc broadcasts; kh * ceil(kw / 4) words per lane
  std::vector<int32_t> tap_words;
  Int16Plan plan;  // for the AVX2 paths, from the largest pair of weight magnitudes
  // value(g, lane, channel_in_group, i, j) for lanes 0..real_lanes-1 of each group (depthwise: g = 0,
  // channel 0)
  void pack(const ConvShape& s, const KLayout& layout, int64_t group, int64_t real_lanes,
            const std::function<int8_t(int64_t g, int64_t lane, int64_t c, int64_t i, int64_t j)>& value);
};

// Groups as the kernels see them: 1 for a depthwise conv (its channels are the lanes), else the attribute.
int64_t packed_groups(const ConvShape& s, const ConvAttrs& a);

// Fills the row pointers (at pixel 0), scales and biases of lanes [lane0, lane0 + 32) of group g (of
// packed_groups) for sample n; run_conv adds the offset corrections and runs every pixel tile into it.
using ConvOutput = std::function<void(int64_t n, int64_t g, int64_t lane0, TileOutput& out)>;

// What the conv kernels add to activation codes x: int8 codes run as uint8 + 128 (the unsigned operand
// of vpdpbusd / vpmaddubsw), which the corrections below take back out; uint8 codes as they are.
inline uint8_t code_offset(const Tensor& x) { return x.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 ? 128 : 0; }

// The output of lanes [block * 32, + 32) of group g for sample n: ``output``'s rows, scales and biases,
// and the corrections that take the activation ``offset`` back out of the sums.
void block_output(const ConvOutput& output, const PackedWeights& w, uint8_t offset, int64_t n, int64_t g,
                  int64_t block, TileOutput& out);

#if defined(__x86_64__)
// ``rows`` (1 to 4) channels (``plane`` apart from r0) of pixels x .. x + 15, plus ``add``, interleaved
// in SSE2 registers into 16 four-byte words, pixel x + i's in word i (words[i / 4], lane i % 4); a
// word's bytes past ``rows`` are ``add``.
inline void quad_words16(const uint8_t* r0, int64_t plane, int64_t rows, int64_t x, uint8_t add, __m128i (&words)[4]) {
  const __m128i offset = _mm_set1_epi8(static_cast<char>(add));
  const auto load = [&](int64_t r) {
    return r < rows ? _mm_add_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r0 + r * plane + x)), offset)
                    : offset;
  };
  const __m128i a = load(0), b = load(1), c = load(2), d = load(3);
  const __m128i ab_lo = _mm_unpacklo_epi8(a, b), ab_hi = _mm_unpackhi_epi8(a, b);
  const __m128i cd_lo = _mm_unpacklo_epi8(c, d), cd_hi = _mm_unpackhi_epi8(c, d);
  words[0] = _mm_unpacklo_epi16(ab_lo, cd_lo), words[1] = _mm_unpackhi_epi16(ab_lo, cd_lo);
  words[2] = _mm_unpacklo_epi16(ab_hi, cd_hi), words[3] = _mm_unpackhi_epi16(ab_hi, cd_hi);
}
#endif

// Channel planes (NCHW codes, ``plane`` apart) of ``count`` pixels into NHWC pixels of pixel_bytes:
// channel c of pixel i goes to out[pixel_at[i] + at[c]], plus ``add``, which the bytes no channel
// lands on (channels of a group padded to 4) must already hold.  Sixteen channels that land side by
// side are transposed 32 pixels at a time in ymm registers (not on the scalar path) and 16 at a time
// in SSE2 (x86-64's baseline); up to four, with gaps to a 4-byte word or a gapless pixel's last 1-3
// (spilling into the bytes after it, written after), 16 pixels at a time in SSE2.
void nhwc_pixels(Isa isa, const uint8_t* __restrict in, int64_t plane, int64_t count, int64_t channels,
                 const int64_t* __restrict at, int64_t pixel_bytes, uint8_t add, uint8_t* __restrict out,
                 const int64_t* __restrict pixel_at);

// A pointwise conv (1x1, stride 1, no padding, one group) on the AVX-512 VNNI path, vectorised over
// pixels (pointwise.cc); false (nothing done) for any other conv or path.
bool run_pointwise(OrtKernelContext* context, Isa isa, const ConvShape& s, const ConvAttrs& attrs, const Tensor& x,
                   const PackedWeights& w, const ConvOutput& output);

// A depthwise conv on the AVX-512 VNNI path with VBMI, vectorised over output pixels of each channel
// plane (depthwise_planes.cc); false (nothing done) for any other conv or path, or strides and
// dilations too wide for it.  ``dup16`` as run_conv's.
bool run_depthwise_planes(OrtKernelContext* context, Isa isa, const ConvShape& s, const ConvAttrs& attrs,
                          const Tensor& x, const PackedWeights& w, bool dup16, const ConvOutput& output);

// ``dup16``: lanes 16-31 of a depthwise block read the channels of lanes 0-15 (PostConv's odd sums).
void run_conv(OrtKernelContext* context, Isa isa, const ConvShape& s, const ConvAttrs& attrs, const Tensor& x,
              const PackedWeights& w, bool dup16, const ConvOutput& output);

// The *Requant ops' output quantizer: attributes qmin / qmax, both required (the bodies' Clip reads
// them), qmin <= qmax.
struct RequantAttrs {
  int64_t qmin = 0, qmax = 0;
  void read(const OrtKernelInfo* info);
  // The output codes of y_zero_point's type (int8 or uint8 []): its value and signedness, with qmin /
  // qmax checked inside that type's range.
  struct Codes {
    int32_t zero_point = 0;
    bool is_signed = false;
  };
  Codes output_codes(const Tensor& y_zero_point) const;
};

// The five inputs of every qexport conv op (x_codes, x_scale, w_codes, w_scale, bias), validated
// exactly as the ops' schema says: x_codes int8/uint8 [N, C, H, W]; x_scale float32 [] or [N, 1, 1, 1]
// holding positive finite steps; w_codes ``w_type`` [M, C/group, kh, kw]; w_scale, bias float32 [M].
// With ``requant`` (the *Requant ops) two more: y_scale float32 [] (positive, finite) and
// y_zero_point int8 / uint8 [] (the codes' type), with qmin <= qmax inside that type's range.
struct ConvInputs {
  Tensor x, w, w_scale, bias;
  ConvShape s;
  std::vector<float> xs;  // the activation step of each sample
  const RequantAttrs* requant = nullptr;
  float y_scale = 1.0f;
  int32_t y_zero_point = 0;
  bool y_signed = false;
  // The output [N, M, H', W'], float32 or (requant) codes; ``lane_row(y, n, m)`` the row of channel m
  // of sample n in it.
  void* allocate_output(OrtKernelContext* context) const;
  void* lane_row(void* y, int64_t n, int64_t m) const;
  // the output fields of a tile: relu and, with requant, the quantizer
  void set_output(TileOutput& out, int64_t relu) const;
};
ConvInputs conv_inputs(OrtKernelContext* context, const ConvAttrs& attrs, ONNXTensorElementDataType w_type,
                       const RequantAttrs* requant);

// Per-sample activation step: [] (one for all) or [N, 1, 1, 1] (one per sample), positive and finite.
std::vector<float> sample_scales(const Tensor& scale, int64_t n, const std::string& what);

}  // namespace qx
