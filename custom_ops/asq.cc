#include "asq.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "ops.h"

namespace qx {

namespace {

// y may be nullptr: the node leaves that output out (the exporter does: its convs take the codes).
// y = clipped q * step, from the float q as the body (a -0 from rounding stays -0).
// ``add``: the stored codes' zero point (0 or 128), added to the clipped code.
template <typename T>
inline void quantize_run(const float* x, float step, float lo, float hi, float add, float* y, T* codes, size_t count) {
  if (y == nullptr) {
    for (size_t i = 0; i < count; ++i) {
      float q = std::nearbyint(x[i] / step);  // division, as QuantizeLinear and the body: not x * (1 / step)
      q = q < lo ? lo : (q > hi ? hi : q);
      codes[i] = T(q + add);
    }
    return;
  }
  for (size_t i = 0; i < count; ++i) {
    float q = std::nearbyint(x[i] / step);
    q = q < lo ? lo : (q > hi ? hi : q);
    codes[i] = T(q + add);
    y[i] = q * step;
  }
}

#if defined(__x86_64__) || defined(__i386__)
// 16 values as quantize_run: round half to even (roundscale keeps a -0, as nearbyint), clipped with
// max(lo, q) / min(hi, q) (which return q when both are zeros, as the compares above), the code as the
// integer q + add; its low byte is the int8 / uint8 code.
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void quantize16(const float* x, __m512 s, __m512 lo,
                                                                           __m512 hi, __m512 add, float* y,
                                                                           uint8_t* codes, __mmask16 m) {
  const __m512 t = _mm512_div_ps(_mm512_maskz_loadu_ps(m, x), s);
  const __m512 q = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
  _mm_mask_storeu_epi8(codes, m, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_add_ps(q, add))));
  if (y) _mm512_mask_storeu_ps(y, m, _mm512_mul_ps(q, s));
}

template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void quantize_avx512(const float* x, float s, float lo, float hi,
                                                                         float add, float* y, T* c, size_t n) {
  const __m512 vs = _mm512_set1_ps(s), vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi), vadd = _mm512_set1_ps(add);
  uint8_t* codes = reinterpret_cast<uint8_t*>(c);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) quantize16(x + i, vs, vlo, vhi, vadd, y ? y + i : nullptr, codes + i, 0xFFFF);
  if (i < n) quantize16(x + i, vs, vlo, vhi, vadd, y ? y + i : nullptr, codes + i, __mmask16((1u << (n - i)) - 1));
}

// 8 values as quantize16, their integer codes returned
__attribute__((target("avx2"))) inline __m256i quantize8(const float* x, __m256 s, __m256 lo, __m256 hi, __m256 add,
                                                         float* y) {
  const __m256 t = _mm256_div_ps(_mm256_loadu_ps(x), s);
  const __m256 q = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
  if (y) _mm256_storeu_ps(y, _mm256_mul_ps(q, s));
  return _mm256_cvtps_epi32(_mm256_add_ps(q, add));
}

// 32 values a step (the codes packed to bytes: every code is in its type's range, so the saturating
// packs change nothing), the tail as quantize_run
template <typename T>
__attribute__((target("avx2"))) void quantize_avx2(const float* x, float s, float lo, float hi, float add, float* y,
                                                  T* c, size_t n) {
  const __m256 vs = _mm256_set1_ps(s), vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi), vadd = _mm256_set1_ps(add);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256i q[4];
    for (size_t v = 0; v < 4; ++v) q[v] = quantize8(x + i + 8 * v, vs, vlo, vhi, vadd, y ? y + i + 8 * v : nullptr);
    const __m256i lo16 = _mm256_packs_epi32(q[0], q[1]), hi16 = _mm256_packs_epi32(q[2], q[3]);
    const __m256i bytes = std::is_signed_v<T> ? _mm256_packs_epi16(lo16, hi16) : _mm256_packus_epi16(lo16, hi16);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + i), _mm256_permutevar8x32_epi32(bytes, order));
  }
  quantize_run(x + i, s, lo, hi, add, y ? y + i : nullptr, c + i, n - i);
}
#endif

template <typename T>
void quantize(Isa isa, const float* x, float s, float lo, float hi, float add, float* y, T* c, size_t n) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa == Isa::Avx512Vnni) return quantize_avx512(x, s, lo, hi, add, y, c, n);
  if (isa == Isa::Avx2) return quantize_avx2(x, s, lo, hi, add, y, c, n);
#endif
  quantize_run(x, s, lo, hi, add, y, c, n);
}

// The adapter's first layer with its bias, a[h] = b1[h] + sum_k feats[k] * w1[k][h], summed as
// onnxruntime's MLAS SGEMM does: K in blocks of kMatMulStrideK, each block a chain of fused
// multiply-adds from 0, added in order to C, which starts at the bias where onnxruntime has fused
// MatMul + Add into a Gemm (``bias_first``), else at the first block (the bias added last).
// Vectorised across h (and blocked over rows, each weight load serving kBlockRows rows), each a[h] in
// that same order.  (With C over 256 the function body itself then differs between optimisation
// levels in a step's last bit.)
constexpr int64_t kMatMulStrideK = 256;
constexpr int64_t kBlockRows = 6, kBlockUnits = 64;
using Part = float[kBlockRows][kBlockUnits];

// The sum of one K block [k0, k1) of rows r0 .. r0 + height - 1 and hidden units h0 .. h0 + width - 1
// into out (rows ``stride`` floats apart), each a chain of fused multiply-adds from 0 in k order.
__attribute__((always_inline)) inline void block_sums(const float* feats, int64_t c, const float* w1, int64_t hidden,
                                                      int64_t height, int64_t width, int64_t k0, int64_t k1,
                                                      float* out, int64_t stride) {
  for (int64_t r = 0; r < height; ++r)
    for (int64_t h = 0; h < width; ++h) {
      float acc = 0.0f;
      for (int64_t k = k0; k < k1; ++k) acc = std::fma(feats[r * c + k], w1[k * hidden + h], acc);
      out[r * stride + h] = acc;
    }
}

#if defined(__x86_64__) || defined(__i386__)
// The rows of a block (rows past ``height`` repeat row 0; their sums are dropped).
inline void block_rows(const float* feats, int64_t c, int64_t height, const float* (&rows)[kBlockRows]) {
  for (int64_t r = 0; r < kBlockRows; ++r) rows[r] = feats + (r < height ? r * c : 0);
}

// kRows (6, or 1 for a single row: batch 1's channel means) rows x 16 hidden units in 2 kRows ymm
// accumulators: each weight load serves kRows rows.  The same fused multiply-add chain per (row, unit)
// as block_sums.
template <int kRows>
__attribute__((target("avx2,fma"))) void block_sums_avx2(const float* feats, int64_t c, const float* w1, int64_t hidden,
                                                        int64_t height, int64_t k0, int64_t k1, Part& part) {
  const float* f[kBlockRows];
  block_rows(feats, c, height, f);
  __m256 acc[kRows][2];
  for (auto& row : acc) row[0] = row[1] = _mm256_setzero_ps();
  for (int64_t k = k0; k < k1; ++k) {
    const __m256 lo = _mm256_loadu_ps(w1 + k * hidden), hi = _mm256_loadu_ps(w1 + k * hidden + 8);
    for (int64_t r = 0; r < kRows; ++r) {
      const __m256 v = _mm256_set1_ps(f[r][k]);
      acc[r][0] = _mm256_fmadd_ps(v, lo, acc[r][0]), acc[r][1] = _mm256_fmadd_ps(v, hi, acc[r][1]);
    }
  }
  // constant row indices (a loop to ``height`` would make GCC keep acc in memory)
  for (int64_t r = 0; r < kRows; ++r) {
    _mm256_storeu_ps(part[r], acc[r][0]);
    _mm256_storeu_ps(part[r] + 8, acc[r][1]);
  }
}

// kRows (6, or 1) rows x up to 64 hidden units (kVecs zmm per row, the last masked to ``width``): each
// row of w1 is read once, contiguously, per block of rows.  The same chain per (row, unit) as block_sums.
template <int kVecs, int kRows>
__attribute__((target("avx512f"))) void block_sums_avx512(const float* feats, int64_t c, const float* w1,
                                                          int64_t hidden, int64_t height, int64_t width, int64_t k0,
                                                          int64_t k1, Part& part) {
  const float* f[kBlockRows];
  block_rows(feats, c, height, f);
  const __mmask16 last = __mmask16((1u << (width - 16 * (kVecs - 1))) - 1u);
  __m512 acc[kRows][kVecs];
  for (auto& row : acc)
    for (auto& v : row) v = _mm512_setzero_ps();
  for (int64_t k = k0; k < k1; ++k) {
    const float* w = w1 + k * hidden;
    __m512 wv[kVecs];
    for (int v = 0; v < kVecs; ++v)
      wv[v] = v + 1 < kVecs ? _mm512_loadu_ps(w + 16 * v) : _mm512_maskz_loadu_ps(last, w + 16 * v);
    for (int64_t r = 0; r < kRows; ++r) {
      const __m512 x = _mm512_set1_ps(f[r][k]);
      for (int v = 0; v < kVecs; ++v) acc[r][v] = _mm512_fmadd_ps(x, wv[v], acc[r][v]);
    }
  }
  for (int64_t r = 0; r < kRows; ++r)  // all kRows rows, as in block_sums_avx2
    for (int v = 0; v < kVecs; ++v) _mm512_storeu_ps(part[r] + 16 * v, acc[r][v]);
}

// block_sums_avx512 for ``width`` units (1 to 64)
template <int kRows>
__attribute__((target("avx512f"))) inline void avx512_sums(const float* feats, int64_t c, const float* w1,
                                                           int64_t hidden, int64_t height, int64_t width, int64_t k0,
                                                           int64_t k1, Part& part) {
  switch ((width + 15) / 16) {
    case 1: return block_sums_avx512<1, kRows>(feats, c, w1, hidden, height, width, k0, k1, part);
    case 2: return block_sums_avx512<2, kRows>(feats, c, w1, hidden, height, width, k0, k1, part);
    case 3: return block_sums_avx512<3, kRows>(feats, c, w1, hidden, height, width, k0, k1, part);
    default: return block_sums_avx512<4, kRows>(feats, c, w1, hidden, height, width, k0, k1, part);
  }
}
#endif

// One feature row (batch 1's channel means): the first layer is a GEMV that reads all of w1 once,
// from memory (MobileNetV2's 53 adapters hold 10.9 MB).  So it is read in order, whole rows of w1 at a
// time, into one accumulator per unit (up to 256 units a pass on AVX-512, 112 on AVX2): about 3x faster
// from memory than 64-unit column slices.  The same fused multiply-add chain per unit over k0 .. k1 - 1.
#if defined(__x86_64__) || defined(__i386__)
template <int kVecs>
__attribute__((target("avx512f"))) void stream_avx512(const float* f, const float* w1, int64_t hidden, int64_t width,
                                                      int64_t k0, int64_t k1, float* part) {
  const __mmask16 last = __mmask16((1u << (width - 16 * (kVecs - 1))) - 1u);
  __m512 acc[kVecs];
#pragma GCC unroll 16
  for (auto& v : acc) v = _mm512_setzero_ps();
  for (int64_t k = k0; k < k1; ++k) {
    const float* w = w1 + k * hidden;
    const __m512 x = _mm512_set1_ps(f[k]);
#pragma GCC unroll 16
    for (int v = 0; v < kVecs; ++v)
      acc[v] = _mm512_fmadd_ps(x, v + 1 < kVecs ? _mm512_loadu_ps(w + 16 * v) : _mm512_maskz_loadu_ps(last, w + 16 * v),
                               acc[v]);
  }
#pragma GCC unroll 16
  for (int v = 0; v + 1 < kVecs; ++v) _mm512_storeu_ps(part + 16 * v, acc[v]);
  _mm512_mask_storeu_ps(part + 16 * (kVecs - 1), last, acc[kVecs - 1]);
}

template <int kVecs>
__attribute__((target("avx2,fma"))) void stream_avx2(const float* f, const float* w1, int64_t hidden, int64_t width,
                                                    int64_t k0, int64_t k1, float* part) {
  // lane i of the last vector is loaded and stored for i < its width
  const __m256i last = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(width - 8 * (kVecs - 1))),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  __m256 acc[kVecs];
#pragma GCC unroll 16
  for (auto& v : acc) v = _mm256_setzero_ps();
  for (int64_t k = k0; k < k1; ++k) {
    const float* w = w1 + k * hidden;
    const __m256 x = _mm256_set1_ps(f[k]);
#pragma GCC unroll 16
    for (int v = 0; v < kVecs; ++v)
      acc[v] = _mm256_fmadd_ps(x, v + 1 < kVecs ? _mm256_loadu_ps(w + 8 * v) : _mm256_maskload_ps(w + 8 * v, last),
                               acc[v]);
  }
#pragma GCC unroll 16
  for (int v = 0; v + 1 < kVecs; ++v) _mm256_storeu_ps(part + 8 * v, acc[v]);
  _mm256_maskstore_ps(part + 8 * (kVecs - 1), last, acc[kVecs - 1]);
}

#endif

// Units [u0, u1) of one K block [k0, k1) of one feature row f into part (u1 - u0 floats).
void stream_block(Isa isa, const float* f, const float* w1, int64_t hidden, int64_t u0, int64_t u1, int64_t k0,
                  int64_t k1, float* part) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa == Isa::Avx512Vnni || isa == Isa::Avx2) {
    // AVX2 has 16 ymm: 14 accumulators, the broadcast and the last vector's mask (more would spill)
    const int64_t lanes = isa == Isa::Avx512Vnni ? 16 : 8, span = isa == Isa::Avx512Vnni ? 16 * lanes : 14 * lanes;
    for (int64_t h0 = u0; h0 < u1; h0 += span) {
      const int64_t width = std::min(span, u1 - h0);
      const float* w = w1 + h0;
      float* p = part + (h0 - u0);
      const int64_t vecs = (width + lanes - 1) / lanes;
#define QX_CASE(V, F)                   \
  case V:                               \
    F<V>(f, w, hidden, width, k0, k1, p); \
    break;
#define QX_CASES(F)                                                                                              \
  QX_CASE(1, F) QX_CASE(2, F) QX_CASE(3, F) QX_CASE(4, F) QX_CASE(5, F) QX_CASE(6, F) QX_CASE(7, F) QX_CASE(8, F) \
  QX_CASE(9, F) QX_CASE(10, F) QX_CASE(11, F) QX_CASE(12, F) QX_CASE(13, F) QX_CASE(14, F)
      if (isa == Isa::Avx512Vnni) {
        switch (vecs) {
          QX_CASES(stream_avx512)
          QX_CASE(15, stream_avx512) QX_CASE(16, stream_avx512)
        }
      } else {
        switch (vecs) { QX_CASES(stream_avx2) }
      }
#undef QX_CASES
#undef QX_CASE
    }
    return;
  }
#endif
  block_sums(f, 0, w1 + u0, hidden, 1, u1 - u0, k0, k1, part, 0);
}

enum class HiddenPath { Scalar, Avx2, Avx512 };

// a[r][h] of ``rows`` feature rows of c values, for hidden units [u0, u1).  Loop order: unit slice,
// then K block, then blocks of kBlockRows rows, so one slice of w1 (256 x 64 floats) serves every
// row while it is in cache.  Each a[r][h] still sums its K blocks in order.
template <HiddenPath kPath>
__attribute__((always_inline)) inline void hidden_run(const float* feats, int64_t rows, const float* w1, const float* b1,
                                                      bool bias_first, int64_t c, int64_t hidden, int64_t u0,
                                                      int64_t u1, float* a) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = u0; h < u1; ++h) a[r * hidden + h] = bias_first ? b1[h] : 0.0f;
  // the AVX2 block is 16 units wide; a narrower remainder goes the scalar way
  const int64_t unit_step = kPath == HiddenPath::Avx2 ? 16 : kBlockUnits;
  Part part;
  for (int64_t h0 = u0; h0 < u1; h0 += unit_step) {
    const int64_t width = std::min(unit_step, u1 - h0);
    for (int64_t k0 = 0; k0 < c; k0 += kMatMulStrideK) {
      const int64_t k1 = std::min(c, k0 + kMatMulStrideK);
      for (int64_t r0 = 0; r0 < rows; r0 += kBlockRows) {
        const int64_t height = std::min(kBlockRows, rows - r0);
        const float* f = feats + r0 * c;
#if defined(__x86_64__) || defined(__i386__)
        if constexpr (kPath == HiddenPath::Avx512) {
          if (height == 1)
            avx512_sums<1>(f, c, w1 + h0, hidden, height, width, k0, k1, part);
          else
            avx512_sums<kBlockRows>(f, c, w1 + h0, hidden, height, width, k0, k1, part);
        } else if (kPath == HiddenPath::Avx2 && width == 16) {
          if (height == 1)
            block_sums_avx2<1>(f, c, w1 + h0, hidden, height, k0, k1, part);
          else
            block_sums_avx2<kBlockRows>(f, c, w1 + h0, hidden, height, k0, k1, part);
        } else
#endif
          block_sums(f, c, w1 + h0, hidden, height, width, k0, k1, part[0], kBlockUnits);
        for (int64_t r = 0; r < height; ++r)
          for (int64_t h = 0; h < width; ++h) {
            float& v = a[(r0 + r) * hidden + h0 + h];
            v = !bias_first && k0 == 0 ? part[r][h] : v + part[r][h];
          }
      }
    }
  }
  if (!bias_first)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t h = u0; h < u1; ++h) a[r * hidden + h] = a[r * hidden + h] + b1[h];
}

// with FMA in the target, std::fma is one instruction (else a libm call per product)
__attribute__((target("avx2,fma"))) void hidden_avx2(const float* f, int64_t rows, const float* w, const float* b,
                                                    bool first, int64_t c, int64_t h, int64_t u0, int64_t u1,
                                                    float* a) {
  hidden_run<HiddenPath::Avx2>(f, rows, w, b, first, c, h, u0, u1, a);
}

__attribute__((target("avx512f,fma"))) void hidden_avx512(const float* f, int64_t rows, const float* w,
                                                         const float* b, bool first, int64_t c, int64_t h, int64_t u0,
                                                         int64_t u1, float* a) {
  hidden_run<HiddenPath::Avx512>(f, rows, w, b, first, c, h, u0, u1, a);
}

// The adapter's ReLU and the body's Max(beta, 1e-8): NaN goes through, as in onnxruntime's Relu and Max.
inline float relu(float v) { return v < 0.0f ? 0.0f : v; }

// The second layer of one row, sum_h relu(a[h]) * w2[h] as one fused multiply-add chain (a GEMV of
// K = hidden, one block while hidden <= 256).
__attribute__((always_inline)) inline float second_run(const float* a, const float* w2, int64_t hidden) {
  float z = 0.0f;
  for (int64_t h = 0; h < hidden; ++h) z = std::fma(relu(a[h]), w2[h], z);
  return z;
}

__attribute__((target("avx2,fma"))) float second_fma(const float* a, const float* w2, int64_t hidden) {
  return second_run(a, w2, hidden);
}

// No NaN or infinity among n floats (branch-free, so it vectorises).
inline bool all_finite(const float* x, int64_t n) {
  uint32_t worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof bits);
    worst = std::max(worst, bits & 0x7fffffffu);
  }
  return worst < 0x7f800000u;
}

// A sample whose step is not a positive finite number, or whose x holds NaN or infinities (a channel
// mean is not finite), element by element as the function body: round(x / step) is NaN for 0 / 0,
// inf / inf and NaN, and then y is NaN and the code 0 (onnxruntime's Cast of a NaN to an 8-bit type);
// otherwise the clipped code, and y = q * step (which may be inf or NaN with an infinite step).
template <typename T>
void quantize_special(const float* x, float step, float lo, float hi, float add, float* y, T* codes, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    float q = std::nearbyint(x[i] / step);
    if (std::isnan(q)) {
      codes[i] = T(0);
      if (y) y[i] = q * step;
      continue;
    }
    q = q < lo ? lo : (q > hi ? hi : q);
    codes[i] = T(q + add);
    if (y) y[i] = q * step;
  }
}

}  // namespace

AsqKernel::AsqKernel(const OrtKernelInfo* info) : node(node_name(info)) {
  qmin = attr_int(info, "qmin");
  qmax = attr_int(info, "qmax");
  if (qmin >= qmax || qmin < -128 || qmax > 255)
    fail("attributes qmin=" + std::to_string(qmin) + ", qmax=" + std::to_string(qmax) + " are not an 8-bit code range");
}

AsqInputs AsqInputs::read(OrtKernelContext* context, size_t x_rank, int64_t channel_axis, bool offset_allowed,
                          int64_t qmin, int64_t qmax) {
  size_t inputs = 0;
  check(api->KernelContext_GetInputCount(context, &inputs));
  if (inputs != 7) fail("takes 7 inputs (x, step, zero_point, w1, b1, w2, b2), got " + std::to_string(inputs));
  AsqInputs in;
  in.x = input(context, 0, "input x");
  const Tensor step = input(context, 1, "input step");
  const Tensor zero = input(context, 2, "input zero_point");
  in.w1 = input(context, 3, "input w1"), in.b1 = input(context, 4, "input b1");
  in.w2 = input(context, 5, "input w2"), in.b2 = input(context, 6, "input b2");
  expect_type(in.x, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "input x");
  if (x_rank) expect_rank(in.x, x_rank, "input x");
  if (in.x.shape.empty()) fail("input x must have a channel axis, got a scalar");
  expect_type(step, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "input step");
  for (const auto& [t, what] : {std::pair<const Tensor*, const char*>{&in.w1, "input w1"}, {&in.b1, "input b1"},
                                {&in.w2, "input w2"}, {&in.b2, "input b2"}})
    expect_type(*t, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, what);
  in.is_signed = zero.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
  if (!in.is_signed && zero.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8)
    fail(std::string("input zero_point must be int8 or uint8, got ") + type_name(zero.type));
  expect_shape(zero, {}, "input zero_point");
  const int zp = in.is_signed ? zero.as<int8_t>()[0] : zero.as<uint8_t>()[0];
  const bool offset = offset_allowed && !in.is_signed && zp == 128 && qmin < 0;
  if (zp != 0 && !offset)
    fail(offset_allowed ? "input zero_point must be 0, or uint8 128 with a signed code range (qmin < 0)"
                        : "input zero_point must be 0");
  in.zero_point = uint8_t(zp);
  const int64_t lo = qmin + zp, hi = qmax + zp;  // the stored codes
  if (in.is_signed ? (lo < -128 || hi > 127) : (lo < 0 || hi > 255))
    fail("code range qmin=" + std::to_string(qmin) + ", qmax=" + std::to_string(qmax) + " with zero point " +
         std::to_string(zp) + " does not fit the codes' type " + type_name(zero.type));
  expect_shape(step, {}, "input step");
  in.step = step.as<float>()[0];
  if (!(in.step > 0.0f) || std::isinf(in.step)) fail("input step must be a positive finite number");
  const int64_t axis = channel_axis < 0 ? int64_t(in.x.shape.size()) + channel_axis : channel_axis;
  in.channels = in.x.shape[size_t(axis)];
  if (in.w1.shape.size() != 2 || in.w1.shape[0] != in.channels)
    fail("input w1 must be [C=" + std::to_string(in.channels) + ", hidden], got " + shape_text(in.w1.shape));
  in.hidden = in.w1.shape[1];
  expect_shape(in.b1, {in.hidden}, "input b1");
  expect_shape(in.w2, {in.hidden, 1}, "input w2");
  expect_shape(in.b2, {1}, "input b2");
  return in;
}

namespace {

// hidden units [u0, u1) of ``rows`` rows into hid (row stride: hidden)
void hidden_units(Isa isa, const AsqInputs& in, const float* feats, int64_t rows, bool bias_first, int64_t u0,
                  int64_t u1, float* hid) {
  const float* w1 = in.w1.as<float>();
  const float* b1 = in.b1.as<float>();
#if defined(__x86_64__) || defined(__i386__)
  if (isa == Isa::Avx512Vnni) return hidden_avx512(feats, rows, w1, b1, bias_first, in.channels, in.hidden, u0, u1, hid);
  if (isa == Isa::Avx2) return hidden_avx2(feats, rows, w1, b1, bias_first, in.channels, in.hidden, u0, u1, hid);
#endif
  hidden_run<HiddenPath::Scalar>(feats, rows, w1, b1, bias_first, in.channels, in.hidden, u0, u1, hid);
}

}  // namespace

std::vector<float> asq_hidden(OrtKernelContext* context, Isa isa, const AsqInputs& in, const float* feats,
                              int64_t rows, bool bias_first) {
  // with C = 0 the rows have no features, as the body's MatMul over K = 0
  const int64_t c = in.channels, hidden = in.hidden;
  const auto what = [] { return std::string("rows x hidden units of the adapter"); };
  std::vector<float> hid(size_t(checked_mul(rows, hidden, what)));
  if (rows == 1) {  // one task per K block and 256 units, summed in K order as hidden_run
    const int64_t k_blocks = (c + kMatMulStrideK - 1) / kMatMulStrideK, span = 256;
    const int64_t spans = (hidden + span - 1) / span;
    std::vector<float> part(size_t(k_blocks * hidden));
    const float* w1 = in.w1.as<float>();
    parallel_for(context, size_t(k_blocks * spans), [&](size_t t) {
      const int64_t kb = int64_t(t) / spans, u0 = int64_t(t) % spans * span;
      stream_block(isa, feats, w1, hidden, u0, std::min(hidden, u0 + span), kb * kMatMulStrideK,
                   std::min(c, (kb + 1) * kMatMulStrideK), part.data() + kb * hidden + u0);
    });
    const float* b1 = in.b1.as<float>();
    for (int64_t h = 0; h < hidden; ++h) {
      float a = bias_first ? b1[h] : 0.0f;
      for (int64_t kb = 0; kb < k_blocks; ++kb) a = !bias_first && kb == 0 ? part[size_t(h)] : a + part[size_t(kb * hidden + h)];
      hid[size_t(h)] = bias_first ? a : a + b1[h];
    }
    return hid;
  }
  const int64_t row_block = 48, unit_block = 64, row_tasks = (rows + row_block - 1) / row_block;
  const int64_t unit_tasks = std::max<int64_t>(1, (hidden + unit_block - 1) / unit_block);
  parallel_for(context, size_t(row_tasks * unit_tasks), [&](size_t t) {
    const int64_t r0 = int64_t(t) / unit_tasks * row_block, u0 = int64_t(t) % unit_tasks * unit_block;
    hidden_units(isa, in, feats + r0 * c, std::min(rows - r0, row_block), bias_first, u0,
                 std::min(hidden, u0 + unit_block), hid.data() + r0 * hidden);
  });
  return hid;
}

void asq_step(Isa isa, const AsqInputs& in, const float* hid, const float* feats, float* step, char* special) {
  // the rest of the body's order: relu, (sum_h hidden * w2) + b2, relu, max with 1e-8
  const float* w2 = in.w2.as<float>();
#if defined(__x86_64__) || defined(__i386__)
  const float z = isa != Isa::Scalar ? second_fma(hid, w2, in.hidden) : second_run(hid, w2, in.hidden);
#else
  const float z = second_run(hid, w2, in.hidden);
#endif
  const float v = relu(z + in.b2.as<float>()[0]);
  const float beta = std::isnan(v) ? v : (v > 1e-8f ? v : 1e-8f);
  *step = in.step * beta;
  *special = !(std::isfinite(*step) && *step > 0.0f && all_finite(feats, in.channels));
}

void asq_quantize_run(Isa isa, const AsqInputs& in, const float* x, float step, bool special, int64_t qmin,
                      int64_t qmax, float* y, void* codes, size_t count) {
  const float lo = float(qmin), hi = float(qmax), add = float(in.zero_point);
  if (special) {
    if (in.is_signed)
      quantize_special(x, step, lo, hi, add, y, static_cast<int8_t*>(codes), count);
    else
      quantize_special(x, step, lo, hi, add, y, static_cast<uint8_t*>(codes), count);
  } else if (in.is_signed) {
    quantize(isa, x, step, lo, hi, add, y, static_cast<int8_t*>(codes), count);
  } else {
    quantize(isa, x, step, lo, hi, add, y, static_cast<uint8_t*>(codes), count);
  }
}

}  // namespace qx
