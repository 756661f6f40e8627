// qexport.AsqQuantize native kernel (signature and semantics: qexport/ops/asq_quantize.py): per sample,
// the adapter on the channel means gives the step, then x / step is rounded half to even and clipped.
#include <cstddef>
#include <string>
#include <vector>

#include "asq.h"
#include "ops.h"

namespace qx {

namespace {

// Channel mean with 16 running partial sums (vectorisable without reassociating one sum).
inline float mean_run(const float* x, size_t count) {
  float part[16] = {};
  size_t i = 0;
  for (; i + 16 <= count; i += 16)
    for (size_t j = 0; j < 16; ++j) part[j] += x[i + j];
  for (; i < count; ++i) part[i % 16] += x[i];
  for (size_t width = 8; width > 0; width /= 2)
    for (size_t j = 0; j < width; ++j) part[j] += part[j + width];
  return part[0] / float(count);
}

__attribute__((target("avx512f"))) float mean_avx512(const float* x, size_t n) { return mean_run(x, n); }
__attribute__((target("avx2"))) float mean_avx2(const float* x, size_t n) { return mean_run(x, n); }

float mean(Isa isa, const float* x, size_t n) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa == Isa::Avx512Vnni) return mean_avx512(x, n);
  if (isa == Isa::Avx2) return mean_avx2(x, n);
#endif
  return mean_run(x, n);
}

}  // namespace

void AsqQuantizeKernel::compute(OrtKernelContext* context) {
  const Isa isa = active_isa();
  const AsqInputs in = AsqInputs::read(context, 4, 1, false, qmin, qmax);
  const Tensor& x = in.x;
  const int64_t n = x.shape[0], c = in.channels;
  const int64_t hw = checked_mul(x.shape[2], x.shape[3], [&] { return "input x shape " + shape_text(x.shape); });
  float* y = static_cast<float*>(output(context, 0, x.shape));
  void* codes = output(context, 1, x.shape);
  float* sample_step = static_cast<float*>(output(context, 2, {n, 1, 1, 1}));
  if (n == 0) return;
  const float* xs = x.as<float>();
  // channel means; over no pixels onnxruntime's ReduceMean gives 0 (what the body sees)
  std::vector<float> feats(size_t(n * c), 0.0f);
  if (hw > 0) parallel_for(context, size_t(n * c), [&](size_t i) { feats[i] = mean(isa, xs + i * size_t(hw), size_t(hw)); });
  std::vector<char> special(size_t(n), 0);
  const std::vector<float> hid = asq_hidden(context, isa, in, feats.data(), n, true);  // [N, C] means: a Gemm
  for (int64_t r = 0; r < n; ++r)
    asq_step(isa, in, hid.data() + r * in.hidden, feats.data() + r * c, sample_step + r, &special[size_t(r)]);
  if (hw == 0 || c == 0) return;
  const size_t bytes = in.is_signed ? sizeof(int8_t) : sizeof(uint8_t);
  parallel_for(context, size_t(n * c), [&](size_t i) {
    const int64_t sample = int64_t(i) / c;
    const size_t at = i * size_t(hw);
    asq_quantize_run(isa, in, xs + at, sample_step[sample], special[size_t(sample)] != 0, qmin, qmax,
                     y ? y + at : nullptr, static_cast<uint8_t*>(codes) + at * bytes, size_t(hw));
  });
}

}  // namespace qx
