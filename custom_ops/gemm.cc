#include "gemm.h"

#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace qx {

namespace {

inline uint32_t word_at(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

void tile_scalar(const uint8_t* const* pixel, const int32_t* k_offset, const int8_t* w, size_t k4, int32_t* c) {
  for (size_t p = 0; p < kTilePixels; ++p) {
    int32_t acc[kTileLanes] = {};
    for (size_t q = 0; q < k4; ++q) {
      const uint8_t* a = pixel[p] + k_offset[q];
      const int8_t* wq = w + q * kLaneStep;
      for (size_t l = 0; l < kTileLanes; ++l)
        for (size_t j = 0; j < 4; ++j) acc[l] += int32_t(a[j]) * int32_t(wq[4 * l + j]);
    }
    std::memcpy(c + p * kTileLanes, acc, sizeof(acc));
  }
}

#if defined(__x86_64__) || defined(__i386__)

// 16 accumulators in named registers (an array of them gets copied every step by the compiler).
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void tile_vnni(const uint8_t* const* pixel,
                                                                       const int32_t* k_offset, const int8_t* w,
                                                                       size_t k4, int32_t* c) {
  static_assert(kTilePixels == 8 && kTileLanes == 32, "tile_vnni is written for 8 x 32 tiles");
  __m512i c00 = _mm512_setzero_si512(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  __m512i c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
  const uint8_t *p0 = pixel[0], *p1 = pixel[1], *p2 = pixel[2], *p3 = pixel[3];
  const uint8_t *p4 = pixel[4], *p5 = pixel[5], *p6 = pixel[6], *p7 = pixel[7];
  for (size_t q = 0; q < k4; ++q, w += kLaneStep) {
    const __m512i w0 = _mm512_loadu_si512(w);
    const __m512i w1 = _mm512_loadu_si512(w + 64);
    const int32_t k = k_offset[q];
    __m512i a;
#define QX_PIXEL(P, lo, hi)                                   \
    a = _mm512_set1_epi32(static_cast<int>(word_at(P + k))); \
    lo = _mm512_dpbusd_epi32(lo, a, w0);                      \
    hi = _mm512_dpbusd_epi32(hi, a, w1);
    QX_PIXEL(p0, c00, c01) QX_PIXEL(p1, c10, c11) QX_PIXEL(p2, c20, c21) QX_PIXEL(p3, c30, c31)
    QX_PIXEL(p4, c40, c41) QX_PIXEL(p5, c50, c51) QX_PIXEL(p6, c60, c61) QX_PIXEL(p7, c70, c71)
#undef QX_PIXEL
  }
  const __m512i out[16] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71};
  for (size_t i = 0; i < 16; ++i) _mm512_storeu_si512(c + 16 * i, out[i]);
}

// AVX2 has no u8 x s8 dot product without int16 saturation (vpmaddubsw), so both sides are widened
// to int16 and multiplied pairwise (vpmaddwd, exact): lane pairs hold (k0+k1, k2+k3) per weight lane
// and are summed when stored.
__attribute__((target("avx2"))) void tile_avx2(const uint8_t* const* pixel, const int32_t* k_offset, const int8_t* w,
                                              size_t k4, int32_t* c) {
  for (size_t p = 0; p < kTilePixels; ++p) {
    __m256i acc[8];
    for (auto& v : acc) v = _mm256_setzero_si256();
    for (size_t q = 0; q < k4; ++q) {
      const uint8_t* a = pixel[p] + k_offset[q];
      const int64_t a4 = int64_t(a[0]) | int64_t(a[1]) << 16 | int64_t(a[2]) << 32 | int64_t(a[3]) << 48;
      const __m256i av = _mm256_set1_epi64x(a4);
      const int8_t* wq = w + q * kLaneStep;
      for (size_t v = 0; v < 8; ++v) {
        const __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wq + 16 * v)));
        acc[v] = _mm256_add_epi32(acc[v], _mm256_madd_epi16(wv, av));
      }
    }
    alignas(32) int32_t pairs[8][8];
    for (size_t v = 0; v < 8; ++v) _mm256_store_si256(reinterpret_cast<__m256i*>(pairs[v]), acc[v]);
    for (size_t v = 0; v < 8; ++v)
      for (size_t l = 0; l < 4; ++l) c[p * kTileLanes + 4 * v + l] = pairs[v][2 * l] + pairs[v][2 * l + 1];
  }
}

#endif

}  // namespace

void conv_tile(Isa isa, const uint8_t* const* pixel, const int32_t* k_offset, const int8_t* w, size_t k4, int32_t* c) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa == Isa::Avx512Vnni) return tile_vnni(pixel, k_offset, w, k4, c);
  if (isa == Isa::Avx2) return tile_avx2(pixel, k_offset, w, k4, c);
#endif
  tile_scalar(pixel, k_offset, w, k4, c);
}

}  // namespace qx
