// qexport.AsqQuantize native kernel (signature and semantics: qexport/ops/asq_quantize.py): per sample,
// the adapter on the channel means gives the step, then x / step is rounded half to even and clipped.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "asq.h"
#include "ops.h"

namespace qx {

namespace {

// A channel's mean exactly as onnxruntime's ReduceMean computes it (the function body's), which sums
// each row with Eigen on 4-float SSE packets: the first a values one by one until the address is
// 16-byte aligned (a = 0 to 3), then two packet sums r0 / r1 over 8 values a step, r0 + r1, one more
// packet if 4 are left, the packet folded as (r[0] + r[2]) + (r[1] + r[3]), then the a head values
// and the tail values added in order, and the sum divided by the count.  The result depends on the
// row's address, which the kernel sees as the body does.  (A plain 16-lane sum, used before, differed
// in the last bit for 22 of the sizes 1 to 79, 7 x 7 among them.)
#if defined(__x86_64__) || defined(__i386__)
using Pack = __m128;
inline Pack load4(const float* x) { return _mm_loadu_ps(x); }
inline Pack add4(Pack a, Pack b) { return _mm_add_ps(a, b); }
inline float fold4(Pack r) {
  const __m128 t = _mm_add_ps(r, _mm_movehl_ps(r, r));  // r0 + r2, r1 + r3
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}
#else
struct Pack {
  float v[4];
};
inline Pack load4(const float* x) { return {{x[0], x[1], x[2], x[3]}}; }
inline Pack add4(Pack a, Pack b) { return {{a.v[0] + b.v[0], a.v[1] + b.v[1], a.v[2] + b.v[2], a.v[3] + b.v[3]}}; }
inline float fold4(Pack r) { return (r.v[0] + r.v[2]) + (r.v[1] + r.v[3]); }
#endif

// One row's sum in that order, in steps, so that several rows' chains can run interleaved (each
// chain waits on its adds: four rows keep eight in flight).
struct RowSum {
  const float* x;
  size_t count, head, pairs, packs;
  Pack r0{}, r1{};
  RowSum(const float* row, size_t n) : x(row), count(n) {
    head = std::min<size_t>((4 - (reinterpret_cast<uintptr_t>(x) / sizeof(float)) % 4) % 4, count);
    pairs = (count - head) / 8 * 8, packs = (count - head) / 4 * 4;
    if (packs > 0) r0 = load4(x + head);
    if (packs > 4) r1 = load4(x + head + 4);
  }
  // the packet pairs from value ``from`` (>= 8) to ``to`` of the aligned part
  void run(size_t from, size_t to) {
    const float* p = x + head;
    for (size_t i = from; i < to; i += 8) r0 = add4(r0, load4(p + i)), r1 = add4(r1, load4(p + i + 4));
  }
  float mean() {
    float sum;
    if (packs == 0) {
      sum = x[0];
      for (size_t i = 1; i < count; ++i) sum += x[i];
    } else {
      if (packs > 4) {
        r0 = add4(r0, r1);
        if (packs > pairs) r0 = add4(r0, load4(x + head + pairs));
      }
      sum = fold4(r0);
      for (size_t i = 0; i < head; ++i) sum += x[i];
      for (size_t i = head + packs; i < count; ++i) sum += x[i];
    }
    return sum / float(count);
  }
};

// the means of ``rows`` (1 to 4) rows from x, count values apart, into out; with 4 rows their chains
// run interleaved while every row has packet pairs left (fewer rows: a sample's last channels)
void means(const float* x, size_t count, size_t rows, float* out) {
  const auto row = [&](size_t j) { return RowSum(x + count * std::min(j, rows - 1), count); };
  RowSum r[4] = {row(0), row(1), row(2), row(3)};
  size_t common = 8;
  if (rows == 4) {
    common = std::min(std::min(r[0].pairs, r[1].pairs), std::min(r[2].pairs, r[3].pairs));
    for (size_t i = 8; i < common; i += 8) r[0].run(i, i + 8), r[1].run(i, i + 8), r[2].run(i, i + 8), r[3].run(i, i + 8);
  }
  for (size_t j = 0; j < rows; ++j) {
    r[j].run(std::max<size_t>(8, common), r[j].pairs);
    out[j] = r[j].mean();
  }
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
  if (hw > 0) {
    const size_t rows = size_t(n * c);
    // at batch 1 the adapter's weights come next, from memory: each task asks for its share of them
    // now, so that they stream in while the means are summed
    const size_t tasks = (rows + 3) / 4, lines = n == 1 ? size_t(in.w1.count) * sizeof(float) / 64 : 0;
    const char* w1 = static_cast<const char*>(in.w1.data);
    parallel_for(context, tasks, [&](size_t t) {
      for (size_t i = t * lines / tasks; i < (t + 1) * lines / tasks; ++i) __builtin_prefetch(w1 + 64 * i, 0, 2);
      means(xs + 4 * t * size_t(hw), size_t(hw), std::min<size_t>(4, rows - 4 * t), feats.data() + 4 * t);
    });
  }
  std::vector<char> special(size_t(n), 0);
  const std::vector<float> hid = asq_hidden(context, isa, in, feats.data(), n, true);  // [N, C] means: a Gemm
  for (int64_t r = 0; r < n; ++r)
    asq_step(isa, in, hid.data() + r * in.hidden, feats.data() + r * c, sample_step + r, &special[size_t(r)]);
  if (hw == 0 || c == 0) return;
  const size_t bytes = in.is_signed ? sizeof(int8_t) : sizeof(uint8_t);
  // one step per sample over its C x H x W contiguous values: tasks of 8192 of them, not one per
  // channel (a 7 x 7 plane is 3 vectors and a masked tail)
  const size_t values = size_t(c * hw), chunk = 8192, chunks = (values + chunk - 1) / chunk;
  parallel_for(context, size_t(n) * chunks, [&](size_t t) {
    const size_t sample = t / chunks, first = t % chunks * chunk;
    const size_t at = sample * values + first;
    asq_quantize_run(isa, in, xs + at, sample_step[sample], special[sample] != 0, qmin, qmax, y ? y + at : nullptr,
                     static_cast<uint8_t*>(codes) + at * bytes, std::min(chunk, values - first));
  });
}

}  // namespace qx
