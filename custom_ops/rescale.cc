// qexport.Rescale native kernel (signature and semantics: qexport/ops/rescale.py): an integer matmul's
// int32 sums to float, y = float(acc) * w_scale[n] * row_step[r] + bias[n], the function body's four
// float operations in its order, each rounded (no fused multiply-add), in one pass instead of four;
// 16 values a step on AVX-512, 8 on AVX2.
#include <immintrin.h>

#include <vector>

#include "isa.h"
#include "ops.h"

namespace qx {

namespace {

// values [from, n) of one row
inline void rescale_run(const int32_t* acc, const float* w_scale, float step, const float* bias, float* y, size_t from,
                        size_t n) {
  for (size_t i = from; i < n; ++i) y[i] = float(acc[i]) * w_scale[i] * step + bias[i];
}

void rescale_scalar(const int32_t* acc, const float* w_scale, float step, const float* bias, float* y, size_t n) {
  rescale_run(acc, w_scale, step, bias, y, 0, n);
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx512f"))) void rescale_avx512(const int32_t* acc, const float* w_scale, float step,
                                                       const float* bias, float* y, size_t n) {
  const __m512 s = _mm512_set1_ps(step);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(acc + i)), _mm512_loadu_ps(w_scale + i));
    _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_mul_ps(v, s), _mm512_loadu_ps(bias + i)));
  }
  rescale_run(acc, w_scale, step, bias, y, i, n);
}

__attribute__((target("avx2"))) void rescale_avx2(const int32_t* acc, const float* w_scale, float step,
                                                  const float* bias, float* y, size_t n) {
  const __m256 s = _mm256_set1_ps(step);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + i));
    const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(a), _mm256_loadu_ps(w_scale + i));
    _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_mul_ps(v, s), _mm256_loadu_ps(bias + i)));
  }
  rescale_run(acc, w_scale, step, bias, y, i, n);
}
#endif

}  // namespace

RescaleKernel::RescaleKernel(const OrtKernelInfo* info) : node(node_name(info)) {}

void RescaleKernel::compute(OrtKernelContext* context) {
  const Isa isa = active_isa();
  const Tensor acc = input(context, 0, "Rescale input acc");
  const Tensor w_scale = input(context, 1, "Rescale input w_scale");
  const Tensor row_step = input(context, 2, "Rescale input row_step");
  const Tensor bias = input(context, 3, "Rescale input bias");
  expect_type(acc, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, "Rescale input acc");
  for (const auto& [t, what] : {std::pair<const Tensor*, const char*>{&w_scale, "Rescale input w_scale"},
                                {&row_step, "Rescale input row_step"}, {&bias, "Rescale input bias"}})
    expect_type(*t, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, what);
  if (acc.shape.empty()) fail("Rescale input acc must have shape [..., N] (an integer matmul's sums), got []");
  const int64_t n = acc.shape.back();
  expect_shape(w_scale, {n}, "Rescale input w_scale");
  expect_shape(bias, {n}, "Rescale input bias");
  std::vector<int64_t> step_shape = acc.shape;
  step_shape.back() = 1;
  expect_shape(row_step, step_shape, "Rescale input row_step (acc's shape with its last dimension 1)");
  float* y = static_cast<float*>(output(context, 0, acc.shape));
  if (acc.count == 0) return;
  auto* run = rescale_scalar;
#if defined(__x86_64__) || defined(__i386__)
  if (isa == Isa::Avx512Vnni) run = rescale_avx512;
  if (isa == Isa::Avx2) run = rescale_avx2;
#endif
  const int32_t* a = acc.as<int32_t>();
  const float *ws = w_scale.as<float>(), *steps = row_step.as<float>(), *b = bias.as<float>();
  parallel_rows(context, row_step.count, n, [&](int64_t r) {
    run(a + size_t(r * n), ws, steps[r], b, y + size_t(r * n), size_t(n));
  });
}

}  // namespace qx
