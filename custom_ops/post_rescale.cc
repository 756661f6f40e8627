// qexport.PostRescale native kernel (signature and semantics: qexport/ops/post_rescale.py): POST's
// integer matmul sums to float, y = (float(even) + float(odd) * 0.70710677) * (x_scale * w_scale[m]) +
// bias[m], the function body's float operations in its order, each rounded (no fused multiply-add), in
// one pass instead of seven; 16 values a step on AVX-512, 8 on AVX2.
#include <immintrin.h>

#include <vector>

#include "gemm.h"
#include "isa.h"
#include "ops.h"

namespace qx {

namespace {

// columns [from, m) of one row: even sums at acc, odd ones at acc + m
inline void post_rescale_run(const int32_t* acc, float x_scale, const float* w_scale, const float* bias, float* y,
                             size_t from, size_t m) {
  for (size_t i = from; i < m; ++i) {
    const float combined = float(acc[i]) + float(acc[m + i]) * kSqrtHalf;
    y[i] = combined * (x_scale * w_scale[i]) + bias[i];
  }
}

void post_rescale_scalar(const int32_t* acc, float x_scale, const float* w_scale, const float* bias, float* y,
                         size_t m) {
  post_rescale_run(acc, x_scale, w_scale, bias, y, 0, m);
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx512f"))) void post_rescale_avx512(const int32_t* acc, float x_scale, const float* w_scale,
                                                            const float* bias, float* y, size_t m) {
  const __m512 xs = _mm512_set1_ps(x_scale), half = _mm512_set1_ps(kSqrtHalf);
  size_t i = 0;
  for (; i + 16 <= m; i += 16) {
    const __m512 even = _mm512_cvtepi32_ps(_mm512_loadu_si512(acc + i));
    const __m512 odd = _mm512_cvtepi32_ps(_mm512_loadu_si512(acc + m + i));
    const __m512 combined = _mm512_add_ps(even, _mm512_mul_ps(odd, half));
    const __m512 scale = _mm512_mul_ps(xs, _mm512_loadu_ps(w_scale + i));
    _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_mul_ps(combined, scale), _mm512_loadu_ps(bias + i)));
  }
  post_rescale_run(acc, x_scale, w_scale, bias, y, i, m);
}

__attribute__((target("avx2"))) void post_rescale_avx2(const int32_t* acc, float x_scale, const float* w_scale,
                                                       const float* bias, float* y, size_t m) {
  const __m256 xs = _mm256_set1_ps(x_scale), half = _mm256_set1_ps(kSqrtHalf);
  size_t i = 0;
  for (; i + 8 <= m; i += 8) {
    const __m256 even = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + i)));
    const __m256 odd = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + m + i)));
    const __m256 combined = _mm256_add_ps(even, _mm256_mul_ps(odd, half));
    const __m256 scale = _mm256_mul_ps(xs, _mm256_loadu_ps(w_scale + i));
    _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_mul_ps(combined, scale), _mm256_loadu_ps(bias + i)));
  }
  post_rescale_run(acc, x_scale, w_scale, bias, y, i, m);
}
#endif

}  // namespace

PostRescaleKernel::PostRescaleKernel(const OrtKernelInfo* info) : node(node_name(info)) {}

void PostRescaleKernel::compute(OrtKernelContext* context) {
  const Isa isa = active_isa();
  const Tensor acc = input(context, 0, "PostRescale input acc");
  const Tensor x_scale = input(context, 1, "PostRescale input x_scale");
  const Tensor w_scale = input(context, 2, "PostRescale input w_scale");
  const Tensor bias = input(context, 3, "PostRescale input bias");
  expect_type(acc, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, "PostRescale input acc");
  for (const auto& [t, what] : {std::pair<const Tensor*, const char*>{&x_scale, "PostRescale input x_scale"},
                                {&w_scale, "PostRescale input w_scale"}, {&bias, "PostRescale input bias"}})
    expect_type(*t, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, what);
  if (acc.shape.empty() || acc.shape.back() % 2 != 0)
    fail("PostRescale input acc must have shape [..., 2M] (the even sums, then the odd ones), got " +
         shape_text(acc.shape));
  const int64_t m = acc.shape.back() / 2;
  expect_shape(w_scale, {m}, "PostRescale input w_scale");
  expect_shape(bias, {m}, "PostRescale input bias");
  std::vector<int64_t> out_shape = acc.shape, step_shape = acc.shape;
  out_shape.back() = m;
  step_shape.back() = 1;
  if (!x_scale.shape.empty())
    expect_shape(x_scale, step_shape, "PostRescale input x_scale ([], or acc's shape with its last dimension 1)");
  float* y = static_cast<float*>(output(context, 0, out_shape));
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < acc.shape.size(); ++i) rows *= acc.shape[i];  // acc.count fits: so does this
  if (rows == 0 || m == 0) return;
  auto* run = post_rescale_scalar;
#if defined(__x86_64__) || defined(__i386__)
  if (isa == Isa::Avx512Vnni) run = post_rescale_avx512;
  if (isa == Isa::Avx2) run = post_rescale_avx2;
#endif
  const int32_t* a = acc.as<int32_t>();
  const float *xs = x_scale.as<float>(), *ws = w_scale.as<float>(), *b = bias.as<float>();
  const bool per_row = !x_scale.shape.empty();
  parallel_rows(context, rows, m, [&](int64_t r) {
    run(a + size_t(r * 2 * m), per_row ? xs[r] : xs[0], ws, b, y + size_t(r * m), size_t(m));
  });
}

}  // namespace qx
