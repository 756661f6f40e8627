// The depthwise tile (one input channel per output channel: MobileNet's 3x3 convs).  Channels are
// contiguous in the NHWC image, so a lane reads its own channel's byte at each kernel tap: 32 lanes are
// one 32-byte load per tap, with no 4-channel padding and no wasted lanes.
//
// Packing (per 32-lane block, see PackedWeights::pack): taps in pairs, 64 bytes per pair, in the order
// vpunpcklbw / vpunpckhbw interleave two taps' channel bytes (depthwise_byte).
#include <algorithm>
#include <cstring>

#include "gemm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace qx {

namespace {

void depthwise_scalar(const uint8_t* const* pixel, const int32_t* tap, const int8_t* w, size_t pairs, bool dup16,
                      int32_t* c) {
  for (size_t p = 0; p < kTilePixels; ++p)
    for (size_t l = 0; l < kTileLanes; ++l) {
      const size_t channel = dup16 ? l % 16 : l;
      int32_t acc = 0;
      for (size_t i = 0; i < pairs; ++i)
        for (size_t s = 0; s < 2; ++s)
          acc += int32_t(pixel[p][tap[2 * i + s] + int64_t(channel)]) * int32_t(w[64 * i + depthwise_byte(l, s)]);
      c[p * kTileLanes + l] = acc;
    }
}

#if defined(__x86_64__) || defined(__i386__)

// Per pixel: two taps' 32 channel bytes interleaved (vpunpck{l,h}bw), vpmaddubsw against the weight
// pairs, ``run`` pairs summed in int16 (Int16Plan), then sign-extended into 4 x 8 int32 lanes.
template <bool kSplit>
__attribute__((target("avx2"))) void depthwise_avx2(const uint8_t* const* pixel, const int32_t* tap, const int8_t* w,
                                                   size_t pairs, size_t run, bool dup16, int32_t* c) {
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  for (size_t p = 0; p < kTilePixels; ++p) {
    const uint8_t* x = pixel[p];
    // lanes 0-7, 8-15, 16-23, 24-31
    __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    for (size_t i0 = 0; i0 < pairs; i0 += run) {
      const size_t i1 = std::min(pairs, i0 + run);
      __m256i s_lo = _mm256_setzero_si256(), s_hi = s_lo, t_lo = s_lo, t_hi = s_lo;
      for (size_t i = i0; i < i1; ++i) {
        __m256i v0, v1;
        if (dup16) {
          v0 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + tap[2 * i])));
          v1 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + tap[2 * i + 1])));
        } else {
          v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + tap[2 * i]));
          v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + tap[2 * i + 1]));
        }
        const __m256i lo = _mm256_unpacklo_epi8(v0, v1), hi = _mm256_unpackhi_epi8(v0, v1);
        const __m256i w_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 64 * i));
        const __m256i w_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 64 * i + 32));
        if (kSplit) {
          s_lo = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(lo, nibble), w_lo), s_lo);
          s_hi = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(hi, nibble), w_hi), s_hi);
          t_lo = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(lo, 4), nibble), w_lo), t_lo);
          t_hi = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(hi, 4), nibble), w_hi), t_hi);
          keep_in_register(t_lo), keep_in_register(t_hi);
        } else {
          s_lo = _mm256_add_epi16(_mm256_maddubs_epi16(lo, w_lo), s_lo);
          s_hi = _mm256_add_epi16(_mm256_maddubs_epi16(hi, w_hi), s_hi);
        }
        keep_in_register(s_lo), keep_in_register(s_hi);
      }
      // s_lo: lanes 0-7 | 16-23, s_hi: lanes 8-15 | 24-31
      acc0 = _mm256_add_epi32(acc0, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(s_lo)));
      acc2 = _mm256_add_epi32(acc2, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s_lo, 1)));
      acc1 = _mm256_add_epi32(acc1, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(s_hi)));
      acc3 = _mm256_add_epi32(acc3, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s_hi, 1)));
      if (kSplit) {
        acc0 = _mm256_add_epi32(acc0, _mm256_slli_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(t_lo)), 4));
        acc2 = _mm256_add_epi32(acc2, _mm256_slli_epi32(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(t_lo, 1)), 4));
        acc1 = _mm256_add_epi32(acc1, _mm256_slli_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(t_hi)), 4));
        acc3 = _mm256_add_epi32(acc3, _mm256_slli_epi32(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(t_hi, 1)), 4));
      }
    }
    __m256i* at = reinterpret_cast<__m256i*>(c + p * kTileLanes);
    _mm256_storeu_si256(at, acc0);
    _mm256_storeu_si256(at + 1, acc1);
    _mm256_storeu_si256(at + 2, acc2);
    _mm256_storeu_si256(at + 3, acc3);
  }
}

#endif

}  // namespace

void depthwise_tile(Isa isa, const uint8_t* const* pixel, const int32_t* tap, const int8_t* w, size_t pairs,
                    const Int16Plan& plan, bool dup16, const TileOutput& out, size_t p0, size_t count) {
  alignas(64) int32_t c[kTilePixels * kTileLanes];
#if defined(__x86_64__) || defined(__i386__)
  if (isa != Isa::Scalar) {  // AVX-512 machines run the AVX2 code: a depthwise conv is bound by its loads
    if (plan.split)
      depthwise_avx2<true>(pixel, tap, w, pairs, plan.run, dup16, c);
    else
      depthwise_avx2<false>(pixel, tap, w, pairs, plan.run, dup16, c);
    return store_tile(isa, c, out, p0, count);
  }
#endif
  (void)plan;
  depthwise_scalar(pixel, tap, w, pairs, dup16, c);
  store_tile(isa, c, out, p0, count);
}

}  // namespace qx
