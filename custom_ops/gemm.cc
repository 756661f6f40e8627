#include "gemm.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace qx {

Int16Plan Int16Plan::of(int32_t max_pair) {
  Int16Plan plan;
  if (max_pair <= 0) {  // all weights zero: nothing can overflow
    plan.run = 1 << 20;
    return plan;
  }
  plan.run = size_t(32767 / (255 * max_pair));
  if (plan.run == 0) {  // a nibble is at most 15; max_pair <= 256 keeps run >= 8
    plan.split = true;
    plan.run = size_t(32767 / (15 * max_pair));
  }
  return plan;
}

namespace {

inline uint32_t word_at(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

void store_scalar(const int32_t* c, const TileOutput& out, size_t p0, size_t count) {
  const size_t lanes = out.post_pairs ? kTileLanes / 2 : kTileLanes;
  for (size_t l = 0; l < lanes; ++l) {
    if (out.row[l] == nullptr) continue;
    for (size_t p = 0; p < count; ++p) {
      const int32_t* at = c + p * kTileLanes;
      float sum = float(at[l] - out.correction[l]);
      if (out.post_pairs) sum = sum + float(at[l + lanes] - out.correction[l + lanes]) * kSqrtHalf;
      float y = sum * out.scale[l] + out.bias[l];
      if (out.relu && y < 0.0f) y = 0.0f;  // NaN and -0 stay, as the body's Max(y, 0)
      if (out.relu == 6 && y > 6.0f) y = 6.0f;
      if (!out.codes)
        static_cast<float*>(out.row[l])[p0 + p] = y;
      else
        static_cast<uint8_t*>(out.row[l])[p0 + p] = uint8_t(requantize(y, out));  // int8: the same byte
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

// col[l]: the 8 pixels of lane lane0 + l, requantized (as requantize) and stored as 8 bytes
__attribute__((target("avx2"))) inline void store_codes(const __m256* col, const TileOutput& out, size_t lane0,
                                                        size_t p0, size_t count) {
  const __m256 step = _mm256_set1_ps(out.code_step);
  const __m256 lo = _mm256_set1_ps(out.code_lo), hi = _mm256_set1_ps(out.code_hi);
  const __m256i zero_point = _mm256_set1_epi32(out.zero_point);
  for (size_t l = 0; l < 8; ++l) {
    uint8_t* row = static_cast<uint8_t*>(out.row[lane0 + l]);
    if (row == nullptr) continue;
    // maxps / minps return their second operand for a NaN: lo, as requantize
    const __m256 t = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(col[l], step), lo), hi);
    const __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(t), zero_point);  // MXCSR: round half to even
    const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    const __m128i bytes = out.codes_signed ? _mm_packs_epi16(words, words) : _mm_packus_epi16(words, words);
    if (count == kTilePixels) {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(row + p0), bytes);
    } else {
      alignas(16) uint8_t b[16];
      _mm_store_si128(reinterpret_cast<__m128i*>(b), bytes);
      std::memcpy(row + p0, b, count);
    }
  }
}

// y[p] holds 8 floats of lanes lane0 .. lane0 + 7 for pixel p: stored transposed, to the rows of
// those lanes at p0 (the first ``count`` pixels).
__attribute__((target("avx2"))) inline void transpose_store(const __m256* y, const TileOutput& out, size_t lane0,
                                                            size_t p0, size_t count) {
  const __m256 t0 = _mm256_unpacklo_ps(y[0], y[1]), t1 = _mm256_unpackhi_ps(y[0], y[1]);
  const __m256 t2 = _mm256_unpacklo_ps(y[2], y[3]), t3 = _mm256_unpackhi_ps(y[2], y[3]);
  const __m256 t4 = _mm256_unpacklo_ps(y[4], y[5]), t5 = _mm256_unpackhi_ps(y[4], y[5]);
  const __m256 t6 = _mm256_unpacklo_ps(y[6], y[7]), t7 = _mm256_unpackhi_ps(y[6], y[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  const __m256 col[8] = {
      _mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
      _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
      _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
      _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
  if (out.codes) return store_codes(col, out, lane0, p0, count);
  // lane i of the mask is set for pixels i < count
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(count)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  for (size_t l = 0; l < 8; ++l) {
    float* row = static_cast<float*>(out.row[lane0 + l]);
    if (row == nullptr) continue;
    if (count == kTilePixels)
      _mm256_storeu_ps(row + p0, col[l]);
    else
      _mm256_maskstore_ps(row + p0, mask, col[l]);
  }
}

__attribute__((target("avx2"))) void store_avx2(const int32_t* c, const TileOutput& out, size_t p0, size_t count) {
  const size_t octets = out.post_pairs ? 2 : 4;
  for (size_t o = 0; o < octets; ++o) {
    const size_t l0 = 8 * o;
    bool any = false;
    for (size_t l = 0; l < 8; ++l) any = any || out.row[l0 + l] != nullptr;
    if (!any) continue;
    const __m256 scale = _mm256_loadu_ps(out.scale + l0), bias = _mm256_loadu_ps(out.bias + l0);
    const __m256i corr = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(out.correction + l0));
    // the odd sums' corrections (lanes 16-23, 24-31) exist only with post_pairs, where l0 is 0 or 8
    const __m256i corr_odd = out.post_pairs
                                 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(out.correction + l0 + 16))
                                 : _mm256_setzero_si256();
    __m256 y[8];
    for (size_t p = 0; p < kTilePixels; ++p) {
      const int32_t* at = c + p * kTileLanes + l0;
      __m256 sum = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(at)), corr));
      if (out.post_pairs) {
        const __m256i odd = _mm256_sub_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(at + 16)), corr_odd);
        sum = _mm256_add_ps(sum, _mm256_mul_ps(_mm256_cvtepi32_ps(odd), _mm256_set1_ps(kSqrtHalf)));
      }
      const __m256 v = _mm256_add_ps(_mm256_mul_ps(sum, scale), bias);
      // max(0, v) / min(6, v) return their second operand v for a NaN (max: a zero of either sign too)
      y[p] = out.relu ? _mm256_max_ps(_mm256_setzero_ps(), v) : v;
      if (out.relu == 6) y[p] = _mm256_min_ps(_mm256_set1_ps(6.0f), y[p]);
    }
    transpose_store(y, out, l0, p0, count);
  }
}

// 16 accumulators in named registers (an array of them gets copied every step by the compiler).
// kHigh: lanes 16-31 hold weights (not with 16 output channels or fewer: half the work saved).
template <bool kHigh>
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
    const __m512i w1 = kHigh ? _mm512_loadu_si512(w + 64) : w0;
    const int32_t k = k_offset[q];
    __m512i a;
#define QX_PIXEL(P, lo, hi)                                   \
    a = _mm512_set1_epi32(static_cast<int>(word_at(P + k))); \
    lo = _mm512_dpbusd_epi32(lo, a, w0);                      \
    keep_in_register(lo);                                     \
    if (kHigh) hi = _mm512_dpbusd_epi32(hi, a, w1), keep_in_register(hi);
    QX_PIXEL(x0, c00, c01) QX_PIXEL(x1, c10, c11) QX_PIXEL(x2, c20, c21) QX_PIXEL(x3, c30, c31)
    QX_PIXEL(x4, c40, c41) QX_PIXEL(x5, c50, c51) QX_PIXEL(x6, c60, c61) QX_PIXEL(x7, c70, c71)
#undef QX_PIXEL
  }
  // epilogue, vectorised over lanes: 16 outputs x 8 pixels per half, transposed to rows of 8 floats
  const __m512i lo[8] = {c00, c10, c20, c30, c40, c50, c60, c70}, hi[8] = {c01, c11, c21, c31, c41, c51, c61, c71};
  const __m512i corr_lo = _mm512_loadu_si512(out.correction), corr_hi = _mm512_loadu_si512(out.correction + 16);
  const int halves = out.post_pairs || !kHigh ? 1 : 2;
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
      __m512 r = out.relu ? _mm512_max_ps(_mm512_setzero_ps(), v) : v;  // as in store_avx2
      if (out.relu == 6) r = _mm512_min_ps(_mm512_set1_ps(6.0f), r);
      _mm512_store_ps(y[p], r);
    }
    for (int part = 0; part < 2; ++part) {
      __m256 r[8];
      for (int p = 0; p < 8; ++p) r[p] = _mm256_load_ps(y[p] + 8 * part);
      transpose_store(r, out, size_t(16 * h + 8 * part), p0, count);
    }
  }
}

// Lanes 16 * half .. + 15 of every pixel of tile c: padding lanes, whose zero weights give zero sums.
void zero_half(int32_t* c, size_t half) {
  for (size_t p = 0; p < kTilePixels; ++p) std::memset(c + p * kTileLanes + 16 * half, 0, 16 * sizeof(int32_t));
}

// AVX2 has no uint8 x int8 dot product into int32: vpmaddubsw sums 2 products into a saturating int16,
// kept exact by Int16Plan: ``run`` quads summed in int16, then vpmaddwd by 1 widens them to int32.
// With 8-bit weights (tile_avx2_split) the activation's low and high nibbles go apart, the high sums
// widened with vpmaddwd by 16: lanes 16 at a time (two ymm of 8 lanes x 4 bytes), 4 pixels at a time,
// 8 int32 accumulators, weights read as memory operands (they stay in L1).
__attribute__((target("avx2"))) void tile_avx2_split(const uint8_t* const* pixel, const int32_t* k_offset,
                                                    const int8_t* w, size_t k4, size_t run, size_t live, int32_t* c) {
  const __m256i ones = _mm256_set1_epi16(1), sixteen = _mm256_set1_epi16(16), nibble = _mm256_set1_epi8(0x0F);
  for (size_t half = 0; half < 2; ++half) {
    if (16 * half >= live) {
      zero_half(c, half);
      continue;
    }
    const int8_t* wh = w + 64 * half;
    for (size_t pg = 0; pg < kTilePixels; pg += 4) {
      __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00,
              a31 = a00;
      const uint8_t *x0 = pixel[pg], *x1 = pixel[pg + 1], *x2 = pixel[pg + 2], *x3 = pixel[pg + 3];
      for (size_t q0 = 0; q0 < k4; q0 += run) {
        const size_t q1 = std::min(k4, q0 + run);
#define QX_PIXEL(X, A0, A1)                                                                                  \
  {                                                                                                          \
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, t0 = s0, t1 = s0;                                          \
    for (size_t q = q0; q < q1; ++q) {                                                                       \
      const __m256i a = _mm256_set1_epi32(static_cast<int>(word_at(X + k_offset[q])));                      \
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wh + q * kLaneStep));           \
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wh + q * kLaneStep + 32));      \
      const __m256i lo = _mm256_and_si256(a, nibble), hi = _mm256_and_si256(_mm256_srli_epi16(a, 4), nibble); \
      s0 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, w0), s0);                                               \
      s1 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, w1), s1);                                               \
      t0 = _mm256_add_epi16(_mm256_maddubs_epi16(hi, w0), t0);                                               \
      t1 = _mm256_add_epi16(_mm256_maddubs_epi16(hi, w1), t1);                                               \
      keep_in_register(s0), keep_in_register(s1), keep_in_register(t0), keep_in_register(t1);                \
    }                                                                                                        \
    A0 = _mm256_add_epi32(A0, _mm256_add_epi32(_mm256_madd_epi16(s0, ones), _mm256_madd_epi16(t0, sixteen))); \
    A1 = _mm256_add_epi32(A1, _mm256_add_epi32(_mm256_madd_epi16(s1, ones), _mm256_madd_epi16(t1, sixteen))); \
  }
        QX_PIXEL(x0, a00, a01) QX_PIXEL(x1, a10, a11) QX_PIXEL(x2, a20, a21) QX_PIXEL(x3, a30, a31)
#undef QX_PIXEL
      }
      int32_t* at = c + pg * kTileLanes + 16 * half;
      const __m256i acc[8] = {a00, a01, a10, a11, a20, a21, a30, a31};
      for (size_t i = 0; i < 8; ++i)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(at + i / 2 * kTileLanes + 8 * (i % 2)), acc[i]);
    }
  }
}

// Without the nibble split: per group of ``run`` quads, the 4 pixels' int16 sums stay in 8
// registers and each weight load serves all 4 pixels; the group's sums are widened (vpmaddwd by 1)
// into the int32 tile c in memory.
__attribute__((target("avx2"))) void tile_avx2_int16(const uint8_t* const* pixel, const int32_t* k_offset,
                                                    const int8_t* w, size_t k4, size_t run, size_t live, int32_t* c) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (size_t half = 0; half < 2; ++half) {
    if (16 * half >= live) {
      zero_half(c, half);
      continue;
    }
    const int8_t* wh = w + 64 * half;
    for (size_t pg = 0; pg < kTilePixels; pg += 4) {
      const uint8_t *x0 = pixel[pg], *x1 = pixel[pg + 1], *x2 = pixel[pg + 2], *x3 = pixel[pg + 3];
      __m256i* out = reinterpret_cast<__m256i*>(c + pg * kTileLanes + 16 * half);  // 4 rows of 32 int32
      for (size_t q0 = 0; q0 < k4; q0 += run) {
        const size_t q1 = std::min(k4, q0 + run);
        __m256i s00 = _mm256_setzero_si256(), s01 = s00, s10 = s00, s11 = s00, s20 = s00, s21 = s00, s30 = s00,
                s31 = s00;
        for (size_t q = q0; q < q1; ++q) {
          const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wh + q * kLaneStep));
          const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wh + q * kLaneStep + 32));
          const int32_t k = k_offset[q];
          __m256i a;
#define QX_PIXEL(X, S0, S1)                                             \
  a = _mm256_set1_epi32(static_cast<int>(word_at(X + k)));              \
  S0 = _mm256_add_epi16(_mm256_maddubs_epi16(a, w0), S0);               \
  S1 = _mm256_add_epi16(_mm256_maddubs_epi16(a, w1), S1);               \
  keep_in_register(S0), keep_in_register(S1);
          QX_PIXEL(x0, s00, s01) QX_PIXEL(x1, s10, s11) QX_PIXEL(x2, s20, s21) QX_PIXEL(x3, s30, s31)
#undef QX_PIXEL
        }
        const __m256i sums[8] = {s00, s01, s10, s11, s20, s21, s30, s31};
        for (size_t i = 0; i < 8; ++i) {
          __m256i* at = out + i / 2 * (kTileLanes / 8) + i % 2;
          const __m256i wide = _mm256_madd_epi16(sums[i], ones);
          _mm256_storeu_si256(at, q0 == 0 ? wide : _mm256_add_epi32(_mm256_loadu_si256(at), wide));
        }
      }
      if (k4 == 0)
        for (size_t i = 0; i < 8; ++i) _mm256_storeu_si256(out + i / 2 * (kTileLanes / 8) + i % 2, _mm256_setzero_si256());
    }
  }
}

#endif

}  // namespace

void store_tile(Isa isa, const int32_t* c, const TileOutput& out, size_t p0, size_t count) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa != Isa::Scalar) return store_avx2(c, out, p0, count);
#endif
  store_scalar(c, out, p0, count);
}

void conv_tile(Isa isa, const uint8_t* const* pixel, const int32_t* k_offset, const int8_t* w, size_t k4,
               const Int16Plan& plan, size_t live, const TileOutput& out, size_t p0, size_t count) {
  alignas(64) int32_t c[kTilePixels * kTileLanes];
#if defined(__x86_64__) || defined(__i386__)
  if (isa == Isa::Avx512Vnni) {
    if (live > kTileLanes / 2)
      return tile_vnni<true>(pixel, k_offset, w, k4, out, p0, count);
    return tile_vnni<false>(pixel, k_offset, w, k4, out, p0, count);
  }
  if (isa == Isa::Avx2) {
    if (plan.split)
      tile_avx2_split(pixel, k_offset, w, k4, plan.run, live, c);
    else
      tile_avx2_int16(pixel, k_offset, w, k4, plan.run, live, c);
    return store_avx2(c, out, p0, count);
  }
#endif
  (void)plan;
  (void)live;
  tile_scalar(pixel, k_offset, w, k4, c);
  store_scalar(c, out, p0, count);
}

}  // namespace qx
