// qexport.AddRequant native kernel (signature and semantics: qexport/ops/add_requant.py): two code
// tensors dequantized, added and quantized again in one pass, with the function body's float
// operations in its order (DequantizeLinear's (code - zero point) * step, one float add, QuantizeLinear
// as MLAS does it: divide, clamp to the code range less the zero point -- NaN to its low end --, round
// half to even).  16 values a step on AVX-512, 8 on AVX2.  Broadcasting as numpy: equal shapes run as
// one flat range; otherwise row by row over the last axis.  The optional output y, the codes
// dequantized (after a ReLU with relu=1), is written from each task's codes while they are in cache.
#include <immintrin.h>

#include <algorithm>
#include <string>
#include <vector>

#include "isa.h"
#include "ops.h"

namespace qx {

namespace {

constexpr size_t kChunk = size_t(1) << 16;  // values per parallel task (equal shapes)

struct AddSpec {
  bool a_signed, b_signed;
  int32_t a_zero, b_zero, y_zero;
  float a_scale, b_scale, y_scale;
  float lo, hi;  // qmin and qmax less the output zero point
};

inline uint8_t add_one(const AddSpec& s, uint8_t a, uint8_t b) {
  const int32_t ca = s.a_signed ? int32_t(int8_t(a)) : int32_t(a);
  const int32_t cb = s.b_signed ? int32_t(int8_t(b)) : int32_t(b);
  const float fa = float(ca - s.a_zero) * s.a_scale;
  const float fb = float(cb - s.b_zero) * s.b_scale;
  float t = (fa + fb) / s.y_scale;
  t = t > s.lo ? t : s.lo;
  t = t < s.hi ? t : s.hi;
  return uint8_t(int32_t(__builtin_nearbyintf(t)) + s.y_zero);
}

// a[i * sa] + b[i * sb] for i < n (a stride of 0: one value broadcast along the row)
inline void add_run(const AddSpec& s, const uint8_t* a, size_t sa, const uint8_t* b, size_t sb, uint8_t* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = add_one(s, a[i * sa], b[i * sb]);
}

#if defined(__x86_64__) || defined(__i386__)

// SSE4.1 in the target makes nearbyintf one roundss (else a libm call per value)
__attribute__((target("avx2"))) void add_run_sse41(const AddSpec& s, const uint8_t* a, size_t sa, const uint8_t* b,
                                                   size_t sb, uint8_t* y, size_t n) {
  add_run(s, a, sa, b, sb, y, n);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void add_avx512(const AddSpec& s, const uint8_t* a,
                                                                     const uint8_t* b, uint8_t* y, size_t n) {
  const __m512i az = _mm512_set1_epi32(s.a_zero), bz = _mm512_set1_epi32(s.b_zero), yz = _mm512_set1_epi32(s.y_zero);
  const __m512 as = _mm512_set1_ps(s.a_scale), bs = _mm512_set1_ps(s.b_scale), ys = _mm512_set1_ps(s.y_scale);
  const __m512 lo = _mm512_set1_ps(s.lo), hi = _mm512_set1_ps(s.hi);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m128i ra = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i));
    const __m128i rb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i));
    const __m512i ca = s.a_signed ? _mm512_cvtepi8_epi32(ra) : _mm512_cvtepu8_epi32(ra);
    const __m512i cb = s.b_signed ? _mm512_cvtepi8_epi32(rb) : _mm512_cvtepu8_epi32(rb);
    const __m512 fa = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(ca, az)), as);
    const __m512 fb = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(cb, bz)), bs);
    __m512 t = _mm512_div_ps(_mm512_add_ps(fa, fb), ys);
    t = _mm512_min_ps(_mm512_max_ps(t, lo), hi);  // maxps: a NaN t gives lo
    const __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(t), yz);  // round half to even (MXCSR)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), _mm512_cvtepi32_epi8(q));
  }
  add_run_sse41(s, a + i, 1, b + i, 1, y + i, n - i);
}

__attribute__((target("avx2"))) void add_avx2(const AddSpec& s, const uint8_t* a, const uint8_t* b, uint8_t* y,
                                              size_t n) {
  const __m256i az = _mm256_set1_epi32(s.a_zero), bz = _mm256_set1_epi32(s.b_zero), yz = _mm256_set1_epi32(s.y_zero);
  const __m256 as = _mm256_set1_ps(s.a_scale), bs = _mm256_set1_ps(s.b_scale), ys = _mm256_set1_ps(s.y_scale);
  const __m256 lo = _mm256_set1_ps(s.lo), hi = _mm256_set1_ps(s.hi);
  // byte 0 of each 32-bit lane to the low 4 bytes of its 128-bit half, then the two halves together
  const __m256i low_bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                             0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i join = _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i ra = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(a + i));
    const __m128i rb = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + i));
    const __m256i ca = s.a_signed ? _mm256_cvtepi8_epi32(ra) : _mm256_cvtepu8_epi32(ra);
    const __m256i cb = s.b_signed ? _mm256_cvtepi8_epi32(rb) : _mm256_cvtepu8_epi32(rb);
    const __m256 fa = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(ca, az)), as);
    const __m256 fb = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(cb, bz)), bs);
    __m256 t = _mm256_div_ps(_mm256_add_ps(fa, fb), ys);
    t = _mm256_min_ps(_mm256_max_ps(t, lo), hi);  // maxps: a NaN t gives lo
    const __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(t), yz);
    const __m256i packed = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(q, low_bytes), join);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(y + i), _mm256_castsi256_si128(packed));
  }
  add_run_sse41(s, a + i, 1, b + i, 1, y + i, n - i);
}

#endif

// a flat range of equal-shaped inputs
void add_flat(Isa isa, const AddSpec& s, const uint8_t* a, const uint8_t* b, uint8_t* y, size_t n) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa == Isa::Avx512Vnni) return add_avx512(s, a, b, y, n);
  if (isa == Isa::Avx2) return add_avx2(s, a, b, y, n);
#endif
  add_run(s, a, 1, b, 1, y, n);
}

// a row with a stride of 0 (broadcast) on either side
void add_strided(Isa isa, const AddSpec& s, const uint8_t* a, size_t sa, const uint8_t* b, size_t sb, uint8_t* y,
                 size_t n) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa != Isa::Scalar) return add_run_sse41(s, a, sa, b, sb, y, n);
#endif
  add_run(s, a, sa, b, sb, y, n);
}

// y[i] = DequantizeLinear(max(codes[i], floor)): (code - zero point) * step, one rounding, as
// onnxruntime's; floor: the zero point for a ReLU (exactly Relu of the dequantized value, which is
// never -0 or NaN), else the lowest code.  Plain loops: GCC vectorises them for each target.
template <bool kSigned>
inline void dequantize_run(const uint8_t* codes, int32_t floor, int32_t zero, float step, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const int32_t c = kSigned ? int32_t(int8_t(codes[i])) : int32_t(codes[i]);
    y[i] = float((c > floor ? c : floor) - zero) * step;
  }
}

#if defined(__x86_64__) || defined(__i386__)
template <bool kSigned>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void dequantize_avx512(const uint8_t* codes, int32_t floor,
                                                                            int32_t zero, float step, float* y,
                                                                            size_t n) {
  dequantize_run<kSigned>(codes, floor, zero, step, y, n);
}
template <bool kSigned>
__attribute__((target("avx2"))) void dequantize_avx2(const uint8_t* codes, int32_t floor, int32_t zero, float step,
                                                     float* y, size_t n) {
  dequantize_run<kSigned>(codes, floor, zero, step, y, n);
}
#endif

void dequantize(Isa isa, bool is_signed, const uint8_t* codes, int32_t floor, int32_t zero, float step, float* y,
                size_t n) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa == Isa::Avx512Vnni)
    return is_signed ? dequantize_avx512<true>(codes, floor, zero, step, y, n)
                     : dequantize_avx512<false>(codes, floor, zero, step, y, n);
  if (isa == Isa::Avx2)
    return is_signed ? dequantize_avx2<true>(codes, floor, zero, step, y, n)
                     : dequantize_avx2<false>(codes, floor, zero, step, y, n);
#endif
  is_signed ? dequantize_run<true>(codes, floor, zero, step, y, n) : dequantize_run<false>(codes, floor, zero, step, y, n);
}

// a zero point [] of ``codes``' type
int32_t zero_point_of(const Tensor& t, ONNXTensorElementDataType codes, const char* what, const char* codes_name) {
  expect_shape(t, {}, what);
  if (t.type != codes)
    fail(std::string(what) + " must have " + codes_name + "' type (" + type_name(codes) + "), got " + type_name(t.type));
  return scalar_zero_point(t, what);
}

}  // namespace

AddRequantKernel::AddRequantKernel(const OrtKernelInfo* info) : node(node_name(info)) {
  requant.read(info);
  relu = relu_attr(info, false, false) == 1;
}

void AddRequantKernel::compute(OrtKernelContext* context) {
  size_t count = 0;
  check(api->KernelContext_GetInputCount(context, &count));
  if (count != 8)
    fail("takes 8 inputs (a_codes, a_scale, a_zero_point, b_codes, b_scale, b_zero_point, y_scale, y_zero_point), got " +
         std::to_string(count));
  const Tensor a = input(context, 0, "input a_codes");
  const Tensor b = input(context, 3, "input b_codes");
  expect_codes(a, "input a_codes");
  expect_codes(b, "input b_codes");
  AddSpec s{};
  s.a_signed = a.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
  s.b_signed = b.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
  s.a_scale = scalar_step(input(context, 1, "input a_scale"), "input a_scale");
  s.a_zero = zero_point_of(input(context, 2, "input a_zero_point"), a.type, "input a_zero_point", "a_codes");
  s.b_scale = scalar_step(input(context, 4, "input b_scale"), "input b_scale");
  s.b_zero = zero_point_of(input(context, 5, "input b_zero_point"), b.type, "input b_zero_point", "b_codes");
  s.y_scale = scalar_step(input(context, 6, "input y_scale"), "input y_scale");
  const RequantAttrs::Codes y_codes = requant.output_codes(input(context, 7, "input y_zero_point"));
  s.y_zero = y_codes.zero_point;
  s.lo = float(requant.qmin - s.y_zero);
  s.hi = float(requant.qmax - s.y_zero);

  // the broadcast shape, numpy's rules (axes aligned from the last)
  const size_t rank = std::max(a.shape.size(), b.shape.size());
  std::vector<int64_t> shape(rank), da(rank, 1), db(rank, 1);
  std::copy(a.shape.begin(), a.shape.end(), da.begin() + int64_t(rank - a.shape.size()));
  std::copy(b.shape.begin(), b.shape.end(), db.begin() + int64_t(rank - b.shape.size()));
  for (size_t i = 0; i < rank; ++i) {
    if (da[i] != db[i] && da[i] != 1 && db[i] != 1)
      fail("inputs a_codes " + shape_text(a.shape) + " and b_codes " + shape_text(b.shape) + " do not broadcast");
    shape[i] = da[i] == 1 ? db[i] : da[i];
  }
  uint8_t* y = static_cast<uint8_t*>(output(context, 0, shape));
  size_t outputs = 0;
  check(api->KernelContext_GetOutputCount(context, &outputs));
  float* yf = outputs > 1 ? static_cast<float*>(output(context, 1, shape)) : nullptr;  // nullptr: not asked for
  int64_t total = 1;
  for (int64_t d : shape) total *= d;  // <= 2^31 - 1: output() checked it
  if (total == 0) return;
  const Isa isa = active_isa();
  const int32_t floor = relu ? s.y_zero : requant.qmin;
  // the dequantized output of the codes just written to y[at, at + n)
  const auto dequantized = [&](size_t at, size_t n) {
    if (yf != nullptr) dequantize(isa, y_codes.is_signed, y + at, floor, s.y_zero, s.y_scale, yf + at, n);
  };
  const uint8_t* ap = a.as<uint8_t>();
  const uint8_t* bp = b.as<uint8_t>();
  if (da == db) {
    const size_t n = size_t(total);
    parallel_for(context, (n + kChunk - 1) / kChunk, [&](size_t task) {
      const size_t at = task * kChunk;
      add_flat(isa, s, ap + at, bp + at, y + at, std::min(kChunk, n - at));
      dequantized(at, std::min(kChunk, n - at));
    });
    return;
  }
  // row by row over the last axis; an input's stride along an axis is 0 where it is broadcast
  std::vector<int64_t> sa(rank, 0), sb(rank, 0);
  for (int64_t i = int64_t(rank) - 1, ma = 1, mb = 1; i >= 0; --i) {
    sa[size_t(i)] = da[size_t(i)] == 1 ? 0 : ma;
    sb[size_t(i)] = db[size_t(i)] == 1 ? 0 : mb;
    ma *= da[size_t(i)];
    mb *= db[size_t(i)];
  }
  const int64_t row = rank ? shape[rank - 1] : 1;
  const size_t step_a = rank ? size_t(sa[rank - 1]) : 0, step_b = rank ? size_t(sb[rank - 1]) : 0;
  parallel_for(context, size_t(total / row), [&](size_t r) {
    int64_t rest = int64_t(r), offset_a = 0, offset_b = 0;
    for (int64_t i = int64_t(rank) - 2; i >= 0; --i) {
      const int64_t index = rest % shape[size_t(i)];
      rest /= shape[size_t(i)];
      offset_a += index * sa[size_t(i)];
      offset_b += index * sb[size_t(i)];
    }
    uint8_t* out = y + r * size_t(row);
    if (step_a == 1 && step_b == 1)
      add_flat(isa, s, ap + offset_a, bp + offset_b, out, size_t(row));
    else
      add_strided(isa, s, ap + offset_a, step_a, bp + offset_b, step_b, out, size_t(row));
    dequantized(r * size_t(row), size_t(row));
  });
}

}  // namespace qx
