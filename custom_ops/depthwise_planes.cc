// Depthwise convs on the AVX-512 VNNI path (with VBMI), vectorised over output pixels instead of
// channels: each channel's codes are copied to a padded plane, and one zmm holds 16 output pixels x 4
// taps of one kernel row -- vpermb picks every pixel's 4 window bytes out of one 64-byte load -- so a
// vpdpbusd adds those 4 taps of 16 pixels against the channel's 4 weights, broadcast.  An accumulator
// is 16 pixels of one channel, stored straight to its NCHW row (pixel_rows.h): none of the depthwise
// tile's [pixel][lane] transposes.  Rows of up to 8 output pixels are packed 16 / wo to a vector.
// Same integer sums, same float epilogue as the depthwise tile.
#include <algorithm>
#include <cstring>
#include <vector>

#include "conv.h"
#include "pixel_rows.h"

namespace qx {

#if defined(__x86_64__) || defined(__i386__)

namespace {

constexpr int64_t kVec = 16;  // output pixels per zmm

// Where the vectors of one plane start and what they cover (the same for every channel).
struct PlaneVectors {
  int64_t wp = 0, plane_bytes = 0, kw_groups = 0;
  alignas(64) uint8_t index[64] = {};  // byte 4p + t: pixel p's tap t, from the vector's window origin
  std::vector<int64_t> origin;         // byte of each vector's window origin in the padded plane
  std::vector<int64_t> first, count;   // its first output pixel (NCHW) and how many it holds
};

// false when one 64-byte load cannot hold a vector's windows (large strides or dilations)
bool plan_vectors(const ConvShape& s, const ConvAttrs& a, PlaneVectors& v) {
  const int64_t sh = a.strides[0], sw = a.strides[1], dh = a.dilations[0];
  int64_t dw = a.dilations[1];
  v.wp = s.wp;
  v.kw_groups = (s.kw + 3) / 4;
  const int64_t cols = std::min(s.wo, kVec);
  // a step that cannot fit a 64-byte window, tested before any product (a stride or dilation that
  // never applies -- one output column, a 1-wide kernel -- may be any size)
  if ((cols > 1 && sw > 63) || (s.kw > 1 && dw > 21)) return false;
  if (s.kw == 1) dw = 0;
  int64_t rows = s.wo <= kVec / 2 ? std::min(kVec / s.wo, s.ho) : 1;
  const auto extent = [&](int64_t r) { return (r - 1) * sh * v.wp + (cols - 1) * sw + 3 * dw; };
  while (rows > 1 && extent(rows) > 63) --rows;
  if (extent(rows) > 63) return false;
  for (int64_t p = 0; p < rows * cols && p < kVec; ++p)
    for (int64_t t = 0; t < 4; ++t)
      v.index[4 * p + t] = uint8_t(p / cols * sh * v.wp + p % cols * sw + t * dw);
  for (int64_t oy = 0; oy < s.ho; oy += rows)
    for (int64_t ox = 0; ox < s.wo; ox += cols) {
      v.origin.push_back(oy * sh * v.wp + ox * sw);
      v.first.push_back(oy * s.wo + ox);
      v.count.push_back(rows > 1 ? std::min(rows, s.ho - oy) * s.wo : std::min(cols, s.wo - ox));
    }
  // the last load of the last vector reads 64 bytes from its last kernel row's last tap group
  const int64_t last = v.origin.back() + (s.kh - 1) * dh * v.wp + 4 * (v.kw_groups - 1) * dw + 64;
  v.plane_bytes = std::max(s.hp * v.wp, last);
  return true;
}

// The weights of one packed lane as one 4-byte word per kernel row and group of 4 taps (kx = 4g ..
// 4g + 3, zeros past kw), read back from the depthwise tile's layout (PackedWeights::pack).
void lane_words(const PackedWeights& w, const ConvShape& s, int64_t lane, int64_t kw_groups, int32_t* words) {
  const int64_t block = lane / int64_t(kTileLanes), l = lane % int64_t(kTileLanes);
  const int8_t* packed = w.data.data() + block * int64_t(kTileLanes) * w.k4 * 4;
  for (int64_t ky = 0; ky < s.kh; ++ky)
    for (int64_t g = 0; g < kw_groups; ++g) {
      int8_t bytes[4] = {};
      for (int64_t t = 0; t < 4 && 4 * g + t < s.kw; ++t) {
        const int64_t tap = ky * s.kw + 4 * g + t;
        bytes[t] = packed[tap / 2 * 64 + int64_t(depthwise_byte(size_t(l), size_t(tap % 2)))];
      }
      std::memcpy(&words[ky * kw_groups + g], bytes, 4);
    }
}

// One input row into the padded plane, int8 codes + 128 (``flip`` 128: the sign bit flipped).  Locals
// and restrict: byte stores may alias anything, which would reload every captured value per byte.
void copy_row(const uint8_t* __restrict in, uint8_t* __restrict out, int64_t count, uint8_t flip) {
  if (flip == 0) {
    std::memcpy(out, in, size_t(count));
    return;
  }
  for (int64_t i = 0; i < count; ++i) out[i] = uint8_t(in[i] ^ flip);
}

// All vectors of one channel plane: kVecs vectors at a time (independent accumulators hide vpdpbusd's
// latency), the even lane's words and (kPairs, POST) the odd lane's.
template <bool kPairs, int kVecs>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi"))) void plane_step(
    const uint8_t* plane, const PlaneVectors& v, const ConvShape& s, const ConvAttrs& a, const int32_t* even,
    const int32_t* odd, const TileOutput& out, int l, size_t i) {
  const __m512i index = _mm512_load_si512(v.index);
  __m512i acc_e[kVecs], acc_o[kVecs];
  for (int j = 0; j < kVecs; ++j) acc_e[j] = acc_o[j] = _mm512_setzero_si512();
  // (a dilation only ever multiplied out where the kernel has a second row / tap group)
  const int64_t row = s.kh > 1 ? a.dilations[0] * v.wp : 0, group = v.kw_groups > 1 ? 4 * a.dilations[1] : 0;
  for (int64_t ky = 0; ky < s.kh; ++ky)
    for (int64_t g = 0; g < v.kw_groups; ++g) {
      const int64_t at = ky * row + g * group, word = ky * v.kw_groups + g;
      const __m512i we = _mm512_set1_epi32(even[word]);
      const __m512i wo = kPairs ? _mm512_set1_epi32(odd[word]) : we;
      for (int j = 0; j < kVecs; ++j) {
        const __m512i x = _mm512_permutexvar_epi8(index, _mm512_loadu_si512(plane + v.origin[i + j] + at));
        acc_e[j] = _mm512_dpbusd_epi32(acc_e[j], x, we);
        if (kPairs) acc_o[j] = _mm512_dpbusd_epi32(acc_o[j], x, wo);
      }
    }
  for (int j = 0; j < kVecs; ++j)
    store_lane16(acc_e[j], acc_o[j], kPairs, out, l, v.first[i + j], row_mask16(v.count[i + j]));
}

template <bool kPairs>
void plane_run(const uint8_t* plane, const PlaneVectors& v, const ConvShape& s, const ConvAttrs& a, const int32_t* even,
               const int32_t* odd, const TileOutput& out, int l) {
  size_t i = 0;
  for (; i + 4 <= v.origin.size(); i += 4) plane_step<kPairs, 4>(plane, v, s, a, even, odd, out, l, i);
  for (; i < v.origin.size(); ++i) plane_step<kPairs, 1>(plane, v, s, a, even, odd, out, l, i);
}

}  // namespace

bool run_depthwise_planes(OrtKernelContext* context, Isa isa, const ConvShape& s, const ConvAttrs& a, const Tensor& x,
                          const PackedWeights& w, bool dup16, const ConvOutput& output) {
  if (isa != Isa::Avx512Vnni || !has_avx512vbmi() || !KLayout::of(s, a).depthwise) return false;
  // small planes: the per-channel setup (plane copy, a few vectors) costs more than the tile's
  // transposes (tools/conv_bench.py, Zen 4: at 7 x 7 the tile is faster for both ops, at 14 x 14 for
  // IntConv only, from 28 x 28 on this kernel)
  if (s.ho * s.wo < (dup16 ? 128 : 256)) return false;
  PlaneVectors v;
  if (!plan_vectors(s, a, v)) return false;
  const uint8_t offset = code_offset(x);
  const uint8_t* src = static_cast<const uint8_t*>(x.data);
  const int64_t pt = a.pads[0], pl = a.pads[1], in_plane = s.h * s.w, words = s.kh * v.kw_groups;
  const int64_t per_block = dup16 ? int64_t(kTileLanes) / 2 : int64_t(kTileLanes);
  // every channel's weight words (and its odd lane's, POST), once per call
  std::vector<int32_t> even(size_t(s.c * words)), odd(size_t(dup16 ? s.c * words : 0));
  for (int64_t c = 0; c < s.c; ++c) {
    const int64_t lane = c / per_block * int64_t(kTileLanes) + c % per_block;
    lane_words(w, s, lane, v.kw_groups, even.data() + c * words);
    if (dup16) lane_words(w, s, lane + int64_t(kTileLanes) / 2, v.kw_groups, odd.data() + c * words);
  }
  // tasks of 8 channels (a block's output rows set up once per task)
  constexpr int64_t kChannels = 8;
  const int64_t chunks = (s.c + kChannels - 1) / kChannels;
  parallel_for(context, size_t(s.n * chunks), [&](size_t task) {
    const int64_t n = int64_t(task) / chunks, c0 = int64_t(task) % chunks * kChannels;
    const int64_t block = c0 / per_block;
    TileOutput out;
    block_output(output, w, offset, n, 0, block, out);
    // the padded plane, the padding the activation offset (code 0), int8 codes + 128 (as run_conv's
    // NHWC copy); one buffer per thread, reused
    thread_local std::vector<uint8_t> buffer;
    for (int64_t c = c0; c < std::min(s.c, c0 + kChannels); ++c) {
      buffer.assign(size_t(v.plane_bytes), offset);
      uint8_t* plane = buffer.data();
      const uint8_t* in = src + (n * s.c + c) * in_plane;
      for (int64_t h = 0; h < s.h; ++h) copy_row(in + h * s.w, plane + (h + pt) * v.wp + pl, s.w, offset);
      const int l = int(c % per_block);
      if (dup16)
        plane_run<true>(plane, v, s, a, even.data() + c * words, odd.data() + c * words, out, l);
      else
        plane_run<false>(plane, v, s, a, even.data() + c * words, nullptr, out, l);
    }
  });
  return true;
}

#else

bool run_depthwise_planes(OrtKernelContext*, Isa, const ConvShape&, const ConvAttrs&, const Tensor&,
                          const PackedWeights&, bool, const ConvOutput&) {
  return false;
}

#endif

}  // namespace qx
