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

// The epilogue of the scalar and AVX2 paths (c: int32 [8][32]).
void finish(const int32_t* c, const TileOutput& out, size_t p0, size_t count) {
  const size_t lanes = out.post_pairs ? kTileLanes / 2 : kTileLanes;
  for (size_t l = 0; l < lanes; ++l) {
    if (out.row[l] == nullptr) continue;
    for (size_t p = 0; p < count; ++p) {
      const int32_t* at = c + p * kTileLanes;
      float sum = float(at[l] - out.correction[l]);
      if (out.post_pairs) sum = sum + float(at[l + lanes] - out.correction[l + lanes]) * kSqrtHalf;
      const float y = sum * out.scale[l] + out.bias[l];
      out.row[l][p0 + p] = out.relu && y < 0.0f ? 0.0f : y;  // NaN and -0 stay, as the body's Max(y, 0)
    }
  }
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
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void tile_vnni(
    const uint8_t* const* pixel, const int32_t* k_offset, const int8_t* w, size_t k4, const TileOutput& out, size_t p0,
    size_t count) {
  static_assert(kTilePixels == 8 && kTileLanes == 32, "tile_vnni is written for 8 x 32 tiles");
  __m512i c00 = _mm512_setzero_si512(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  __m512i c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
  const uint8_t *x0 = pixel[0], *x1 = pixel[1], *x2 = pixel[2], *x3 = pixel[3];
  const uint8_t *x4 = pixel[4], *x5 = pixel[5], *x6 = pixel[6], *x7 = pixel[7];
  for (size_t q = 0; q < k4; ++q, w += kLaneStep) {
    const __m512i w0 = _mm512_loadu_si512(w);
    const __m512i w1 = _mm512_loadu_si512(w + 64);
    const int32_t k = k_offset[q];
    __m512i a;
#define QX_PIXEL(P, lo, hi)                                   \
    a = _mm512_set1_epi32(static_cast<int>(word_at(P + k))); \
    lo = _mm512_dpbusd_epi32(lo, a, w0);                      \
    hi = _mm512_dpbusd_epi32(hi, a, w1);
    QX_PIXEL(x0, c00, c01) QX_PIXEL(x1, c10, c11) QX_PIXEL(x2, c20, c21) QX_PIXEL(x3, c30, c31)
    QX_PIXEL(x4, c40, c41) QX_PIXEL(x5, c50, c51) QX_PIXEL(x6, c60, c61) QX_PIXEL(x7, c70, c71)
#undef QX_PIXEL
  }
  // epilogue, vectorised over lanes: 16 outputs x 8 pixels per half, transposed to rows of 8 floats
  const __m512i lo[8] = {c00, c10, c20, c30, c40, c50, c60, c70}, hi[8] = {c01, c11, c21, c31, c41, c51, c61, c71};
  const __m512i corr_lo = _mm512_loadu_si512(out.correction), corr_hi = _mm512_loadu_si512(out.correction + 16);
  const int halves = out.post_pairs ? 1 : 2;
  for (int h = 0; h < halves; ++h) {
    const __m512 scale = _mm512_loadu_ps(out.scale + 16 * h), bias = _mm512_loadu_ps(out.bias + 16 * h);
    alignas(64) float y[8][16];
    for (int p = 0; p < 8; ++p) {
      __m512 sum;
      if (out.post_pairs) {
        const __m512 even = _mm512_cvtepi32_ps(_mm512_sub_epi32(lo[p], corr_lo));
        const __m512 odd = _mm512_cvtepi32_ps(_mm512_sub_epi32(hi[p], corr_hi));
        sum = _mm512_add_ps(even, _mm512_mul_ps(odd, _mm512_set1_ps(kSqrtHalf)));
      } else {
        sum = _mm512_cvtepi32_ps(_mm512_sub_epi32(h ? hi[p] : lo[p], h ? corr_hi : corr_lo));
      }
      const __m512 v = _mm512_add_ps(_mm512_mul_ps(sum, scale), bias);
      // max(0, v) returns its second operand v for a NaN or a zero of either sign: v < 0 ? 0 : v
      _mm512_store_ps(y[p], out.relu ? _mm512_max_ps(_mm512_setzero_ps(), v) : v);
    }
    // 8 x 16 -> 16 x 8: two 8 x 8 transposes of ymm halves
    for (int part = 0; part < 2; ++part) {
      __m256 r[8];
      for (int p = 0; p < 8; ++p) r[p] = _mm256_load_ps(y[p] + 8 * part);
      const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
      const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
      const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
      const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      const __m256 col[8] = {
          _mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
          _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
          _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
          _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
      const __mmask8 mask = __mmask8((1u << count) - 1);
      for (int l = 0; l < 8; ++l) {
        float* row = out.row[16 * h + 8 * part + l];
        if (row == nullptr) continue;
        if (count == 8)
          _mm256_storeu_ps(row + p0, col[l]);
        else
          _mm256_mask_storeu_ps(row + p0, mask, col[l]);
      }
    }
  }
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

void conv_tile(Isa isa, const uint8_t* const* pixel, const int32_t* k_offset, const int8_t* w, size_t k4,
               const TileOutput& out, size_t p0, size_t count) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa == Isa::Avx512Vnni) return tile_vnni(pixel, k_offset, w, k4, out, p0, count);
#endif
  alignas(64) int32_t c[kTilePixels * kTileLanes];
#if defined(__x86_64__) || defined(__i386__)
  if (isa == Isa::Avx2)
    tile_avx2(pixel, k_offset, w, k4, c);
  else
#endif
    tile_scalar(pixel, k_offset, w, k4, c);
  finish(c, out, p0, count);
}

}  // namespace qx
