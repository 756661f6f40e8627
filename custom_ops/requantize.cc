// qexport.Requantize native kernel (signature and semantics: qexport/ops/requantize.py): 8-bit codes
// of one quantizer to 8-bit codes of another.  The 256 possible outputs are computed once per run with
// the body's float operations (DequantizeLinear, Max, QuantizeLinear as MLAS does it, Clip), then every
// input byte is looked up: vpermi2b 64 bytes at a time on AVX-512 VBMI, pshufb over 16-entry slices on
// AVX2, a byte loop otherwise.
#include <immintrin.h>

#include <algorithm>
#include <string>

#include "isa.h"
#include "ops.h"

namespace qx {

namespace {

constexpr size_t kChunk = size_t(1) << 16;  // bytes per parallel task

using Table = RequantTable;

struct TableSpec {
  bool x_signed;
  int32_t x_zero_point;
  float x_scale;
  bool relu;
  float y_scale;
  int32_t y_zero_point;
  float code_lo, code_hi;  // qmin and qmax less the output zero point
};

// The table, indexed by the input byte: the body's DequantizeLinear, Max and QuantizeLinear + Clip
// (divide, clamp to the code range less the zero point, round half to even: gemm.h's requantize).
inline void fill_run(const TableSpec& s, Table& t) {
  for (int b = 0; b < 256; ++b) {
    const int32_t code = s.x_signed ? int32_t(int8_t(uint8_t(b))) : b;
    float v = float(code - s.x_zero_point) * s.x_scale;
    if (s.relu && v < 0.0f) v = 0.0f;
    float q = v / s.y_scale;
    q = q > s.code_lo ? q : s.code_lo;
    q = q < s.code_hi ? q : s.code_hi;
    t.code[b] = uint8_t(int32_t(__builtin_nearbyintf(q)) + s.y_zero_point);
  }
}

#if defined(__x86_64__) || defined(__i386__)
// with SSE4.1 in the target nearbyintf is one roundss; without, a libm call that saves and restores the
// floating-point environment (256 of them were most of a small tensor's time)
__attribute__((target("avx2"))) void fill_avx2(const TableSpec& s, Table& t) { fill_run(s, t); }
#endif

void fill_table(Isa isa, const TableSpec& s, Table& t) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa != Isa::Scalar) return fill_avx2(s, t);
#endif
  fill_run(s, t);
}

void map_scalar(const Table& t, const uint8_t* x, uint8_t* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = t.code[x[i]];
}

#if defined(__x86_64__) || defined(__i386__)

// 64 table entries each: t0 = 0-63, t1 = 64-127, t2 = 128-191, t3 = 192-255
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) inline __m512i lookup64(__m512i v, __m512i t0, __m512i t1,
                                                                                 __m512i t2, __m512i t3) {
  const __m512i low = _mm512_permutex2var_epi8(t0, v, t1);  // bits 0-6 of each byte pick the entry
  const __m512i high = _mm512_permutex2var_epi8(t2, v, t3);
  return _mm512_mask_blend_epi8(_mm512_movepi8_mask(v), low, high);  // bit 7: which half
}

__attribute__((target("avx512f,avx512bw,avx512vbmi"))) void map_avx512(const Table& t, const uint8_t* x, uint8_t* y,
                                                                        size_t n) {
  const __m512i t0 = _mm512_load_si512(t.code), t1 = _mm512_load_si512(t.code + 64);
  const __m512i t2 = _mm512_load_si512(t.code + 128), t3 = _mm512_load_si512(t.code + 192);
  size_t i = 0;
  for (; i + 64 <= n; i += 64) _mm512_storeu_si512(y + i, lookup64(_mm512_loadu_si512(x + i), t0, t1, t2, t3));
  if (i < n) {
    const __mmask64 tail = ~0ull >> (64 - (n - i));  // 0 < n - i < 64
    _mm512_mask_storeu_epi8(y + i, tail, lookup64(_mm512_maskz_loadu_epi8(tail, x + i), t0, t1, t2, t3));
  }
}

__attribute__((target("avx2"))) void map_avx2(const Table& t, const uint8_t* x, uint8_t* y, size_t n) {
  __m256i slice[16];  // entries 16k .. 16k + 15, in both 128-bit halves (pshufb looks up per half)
  for (int k = 0; k < 16; ++k)
    slice[k] = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t.code + 16 * k)));
  const __m256i low_nibble = _mm256_set1_epi8(0x0f);
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
    const __m256i lo = _mm256_and_si256(v, low_nibble);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low_nibble);
    __m256i r = _mm256_setzero_si256();
    for (int k = 0; k < 16; ++k) {
      const __m256i pick = _mm256_cmpeq_epi8(hi, _mm256_set1_epi8(char(k)));
      r = _mm256_or_si256(r, _mm256_and_si256(pick, _mm256_shuffle_epi8(slice[k], lo)));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), r);
  }
  map_scalar(t, x + i, y + i, n - i);
}

#endif

void map_codes(Isa isa, const Table& t, const uint8_t* x, uint8_t* y, size_t n) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa == Isa::Avx512Vnni && has_avx512vbmi()) return map_avx512(t, x, y, n);
  if (isa == Isa::Avx2 || isa == Isa::Avx512Vnni) return map_avx2(t, x, y, n);
#endif
  map_scalar(t, x, y, n);
}

// The node's two quantizers (inputs 1-4), validated, and its table.
RequantTable quantizer_table(const Tensor& x_scale_in, const Tensor& x_zero, const Tensor& y_scale_in, const Tensor& y_zero,
                             const RequantAttrs& requant, bool relu, ONNXTensorElementDataType& x_type) {
  const float x_scale = scalar_step(x_scale_in, "input x_scale");
  const int32_t x_zero_point = scalar_zero_point(x_zero, "input x_zero_point");
  x_type = x_zero.type;
  const float y_scale = scalar_step(y_scale_in, "input y_scale");
  const int32_t y_zero_point = requant.output_codes(y_zero).zero_point;
  const TableSpec spec{x_type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, x_zero_point, x_scale, relu, y_scale, y_zero_point,
                       float(requant.qmin - y_zero_point), float(requant.qmax - y_zero_point)};
  RequantTable table;
  fill_table(active_isa(), spec, table);
  return table;
}

const char* const kInputs[] = {"input x_codes", "input x_scale", "input x_zero_point", "input y_scale",
                               "input y_zero_point"};

}  // namespace

RequantizeKernel::RequantizeKernel(const OrtKernelInfo* info) : node(node_name(info)) {
  relu = relu_attr(info, true, false);
  requant.read(info);
  // constant quantizers (what the exporter writes): the table is made once, here
  Tensor q[4];
  for (size_t i = 1; i <= 4; ++i) {
    int constant = 0;
    const OrtValue* value = nullptr;
    OrtStatus* status = api->KernelInfoGetConstantInput_tensor(info, i, &constant, &value);
    if (status) {
      api->ReleaseStatus(status);
      return;
    }
    if (!constant || value == nullptr) return;
    q[i - 1] = describe(value, kInputs[i]);
  }
  table = quantizer_table(q[0], q[1], q[2], q[3], requant, relu != 0, x_type);
  constant_table = true;
}

void RequantizeKernel::compute(OrtKernelContext* context) {
  size_t count = 0;
  check(api->KernelContext_GetInputCount(context, &count));
  if (count != 5) fail("takes 5 inputs (x_codes, x_scale, x_zero_point, y_scale, y_zero_point), got " + std::to_string(count));
  const Tensor x = input(context, 0, kInputs[0]);
  expect_codes(x, kInputs[0]);
  ONNXTensorElementDataType zero_type = x_type;
  RequantTable run_table;
  if (!constant_table) {
    Tensor q[4];
    for (size_t i = 1; i <= 4; ++i) q[i - 1] = input(context, i, kInputs[i]);
    run_table = quantizer_table(q[0], q[1], q[2], q[3], requant, relu != 0, zero_type);
  }
  if (zero_type != x.type)
    fail(std::string("input x_zero_point must have x_codes' type (") + type_name(x.type) + "), got " + type_name(zero_type));
  const RequantTable& t = constant_table ? table : run_table;

  uint8_t* y = static_cast<uint8_t*>(output(context, 0, x.shape));
  const size_t n = size_t(x.count);
  if (n == 0) return;
  const Isa isa = active_isa();
  const uint8_t* xs = x.as<uint8_t>();
  parallel_for(context, (n + kChunk - 1) / kChunk, [&](size_t task) {
    const size_t at = task * kChunk;
    map_codes(isa, t, xs + at, y + at, std::min(kChunk, n - at));
  });
}

}  // namespace qx
