// qexport.AsqQuantize native kernel (signature and semantics: qexport/ops/asq_quantize.py): per sample,
// the adapter on the channel means gives the step, then x / step is rounded half to even and clipped.
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "ops.h"

namespace qx {

namespace {

// y may be nullptr: the node leaves that output out (the exporter does: its convs take the codes).
// y = clipped q * step, from the float q as the body (a -0 from rounding stays -0).
template <typename T>
inline void quantize_run(const float* x, float step, float lo, float hi, float* y, T* codes, size_t count) {
  if (y == nullptr) {
    for (size_t i = 0; i < count; ++i) {
      float q = std::nearbyint(x[i] / step);  // division, as QuantizeLinear and the body: not x * (1 / step)
      q = q < lo ? lo : (q > hi ? hi : q);
      codes[i] = T(q);
    }
    return;
  }
  for (size_t i = 0; i < count; ++i) {
    float q = std::nearbyint(x[i] / step);
    q = q < lo ? lo : (q > hi ? hi : q);
    codes[i] = T(q);
    y[i] = q * step;
  }
}

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

template <typename T>
__attribute__((target("avx512f"))) void quantize_avx512(const float* x, float s, float lo, float hi, float* y, T* c,
                                                      size_t n) {
  quantize_run(x, s, lo, hi, y, c, n);
}

template <typename T>
__attribute__((target("avx2"))) void quantize_avx2(const float* x, float s, float lo, float hi, float* y, T* c, size_t n) {
  quantize_run(x, s, lo, hi, y, c, n);
}

template <typename T>
void quantize(Isa isa, const float* x, float s, float lo, float hi, float* y, T* c, size_t n) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa == Isa::Avx512Vnni) return quantize_avx512(x, s, lo, hi, y, c, n);
  if (isa == Isa::Avx2) return quantize_avx2(x, s, lo, hi, y, c, n);
#endif
  quantize_run(x, s, lo, hi, y, c, n);
}

// The adapter's first layer, a[h] = sum_k feats[k] * w1[k][h] accumulated over k in order with fused
// multiply-adds (as onnxruntime's MatMul, MLAS): vectorised across h, each a[h] in the same order.
inline void hidden_run(const float* feats, const float* w1, int64_t c, int64_t hidden, float* a) {
  for (int64_t h = 0; h < hidden; ++h) a[h] = 0.0f;
  for (int64_t k = 0; k < c; ++k) {
    const float f = feats[k];
    const float* row = w1 + k * hidden;
    for (int64_t h = 0; h < hidden; ++h) a[h] = std::fma(f, row[h], a[h]);
  }
}

// with FMA in the target, std::fma is one instruction (else a libm call per product)
__attribute__((target("avx512f,fma"))) void hidden_avx512(const float* f, const float* w, int64_t c, int64_t h, float* a) {
  hidden_run(f, w, c, h, a);
}
__attribute__((target("avx2,fma"))) void hidden_avx2(const float* f, const float* w, int64_t c, int64_t h, float* a) {
  hidden_run(f, w, c, h, a);
}

void hidden_layer(Isa isa, const float* feats, const float* w1, int64_t c, int64_t hidden, float* a) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa == Isa::Avx512Vnni) return hidden_avx512(feats, w1, c, hidden, a);
  if (isa == Isa::Avx2) return hidden_avx2(feats, w1, c, hidden, a);
#endif
  hidden_run(feats, w1, c, hidden, a);
}

// A sample whose step is not a positive finite number, or whose x holds NaN or infinities (a channel
// mean is not finite), element by element as the function body: round(x / step) is NaN for 0 / 0,
// inf / inf and NaN, and then y is NaN and the code 0 (onnxruntime's Cast of a NaN to an 8-bit type);
// otherwise the clipped code, and y = q * step (which may be inf or NaN with an infinite step).
template <typename T>
void quantize_special(const float* x, float step, float lo, float hi, float* y, T* codes, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    float q = std::nearbyint(x[i] / step);
    if (std::isnan(q)) {
      codes[i] = T(0);
      if (y) y[i] = q * step;
      continue;
    }
    q = q < lo ? lo : (q > hi ? hi : q);
    codes[i] = T(q);
    if (y) y[i] = q * step;
  }
}

// The adapter's ReLU and the body's Max(beta, 1e-8): NaN goes through, as in onnxruntime's Relu and Max.
inline float relu(float v) { return v < 0.0f ? 0.0f : v; }

}  // namespace

AsqQuantizeKernel::AsqQuantizeKernel(const OrtKernelInfo* info) : node(node_name(info)) {
  qmin = attr_int(info, "qmin");  // both required: the function body reads them
  qmax = attr_int(info, "qmax");
  if (qmin >= qmax || qmin < -128 || qmax > 255)
    fail("attributes qmin=" + std::to_string(qmin) + ", qmax=" + std::to_string(qmax) + " are not an 8-bit code range");
}

void AsqQuantizeKernel::compute(OrtKernelContext* context) {
  const Isa isa = active_isa();
  size_t inputs = 0;
  check(api->KernelContext_GetInputCount(context, &inputs));
  if (inputs != 7) fail("takes 7 inputs (x, step, zero_point, w1, b1, w2, b2), got " + std::to_string(inputs));
  const Tensor x = input(context, 0, "input x");
  const Tensor step = input(context, 1, "input step");
  const Tensor zero = input(context, 2, "input zero_point");
  const Tensor w1 = input(context, 3, "input w1"), b1 = input(context, 4, "input b1");
  const Tensor w2 = input(context, 5, "input w2"), b2 = input(context, 6, "input b2");
  expect_type(x, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "input x");
  expect_rank(x, 4, "input x");
  expect_type(step, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "input step");
  expect_type(w1, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "input w1");
  expect_type(b1, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "input b1");
  expect_type(w2, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "input w2");
  expect_type(b2, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "input b2");
  const bool is_signed = zero.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
  if (!is_signed && zero.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8)
    fail(std::string("input zero_point must be int8 or uint8, got ") + type_name(zero.type));
  expect_shape(zero, {}, "input zero_point");
  if ((is_signed ? zero.as<int8_t>()[0] : zero.as<uint8_t>()[0]) != 0) fail("input zero_point must be 0");
  if (is_signed ? (qmin < -128 || qmax > 127) : (qmin < 0 || qmax > 255))
    fail("code range qmin=" + std::to_string(qmin) + ", qmax=" + std::to_string(qmax) + " does not fit the codes' type " +
         type_name(zero.type));
  expect_shape(step, {}, "input step");
  const float step0 = step.as<float>()[0];
  if (!(step0 > 0.0f) || std::isinf(step0)) fail("input step must be a positive finite number");
  const int64_t n = x.shape[0], c = x.shape[1];
  const int64_t hw = checked_mul(x.shape[2], x.shape[3], "input x shape " + shape_text(x.shape));
  if (w1.shape.size() != 2 || w1.shape[0] != c)
    fail("input w1 must be [C=" + std::to_string(c) + ", hidden], got " + shape_text(w1.shape));
  const int64_t hidden = w1.shape[1];
  expect_shape(b1, {hidden}, "input b1");
  expect_shape(w2, {hidden, 1}, "input w2");
  expect_shape(b2, {1}, "input b2");

  float* y = static_cast<float*>(output(context, 0, x.shape));
  void* codes = output(context, 1, x.shape);
  float* sample_step = static_cast<float*>(output(context, 2, {n, 1, 1, 1}));
  if (n == 0) return;
  const float* xs = x.as<float>();
  // channel means; over no pixels onnxruntime's ReduceMean gives 0 (what the body sees)
  std::vector<float> feats(size_t(n * c), 0.0f);
  if (hw > 0) parallel_for(context, size_t(n * c), [&](size_t i) { feats[i] = mean(isa, xs + i * size_t(hw), size_t(hw)); });
  // the adapter in the body's order: (sum_k feats * w1) + b1, relu, (sum_h hidden * w2) + b2, relu,
  // max with 1e-8; products accumulated with fused multiply-adds, as onnxruntime's MatMul (MLAS)
  const float* pw1 = w1.as<float>();
  const float* pb1 = b1.as<float>();
  const float* pw2 = w2.as<float>();
  const float b20 = b2.as<float>()[0];
  std::vector<char> special(size_t(n), 0);
  std::vector<float> a(static_cast<size_t>(hidden), 0.0f);
  for (int64_t s = 0; s < n; ++s) {
    hidden_layer(isa, feats.data() + s * c, pw1, c, hidden, a.data());
    float z = 0.0f;
    for (int64_t h = 0; h < hidden; ++h) z = std::fma(relu(a[size_t(h)] + pb1[h]), pw2[h], z);
    const float r = relu(z + b20);
    const float beta = std::isnan(r) ? r : (r > 1e-8f ? r : 1e-8f);
    sample_step[s] = step0 * beta;
    bool finite = std::isfinite(sample_step[s]) && sample_step[s] > 0.0f;
    for (int64_t k = 0; k < c && finite; ++k) finite = std::isfinite(feats[size_t(s * c + k)]);
    special[size_t(s)] = !finite;
  }
  if (hw == 0 || c == 0) return;
  const float lo = float(qmin), hi = float(qmax);
  parallel_for(context, size_t(n * c), [&](size_t i) {
    const int64_t sample = int64_t(i) / c;
    const float s = sample_step[sample];
    const size_t at = i * size_t(hw);
    float* yi = y ? y + at : nullptr;
    if (special[size_t(sample)]) {
      if (is_signed)
        quantize_special(xs + at, s, lo, hi, yi, static_cast<int8_t*>(codes) + at, size_t(hw));
      else
        quantize_special(xs + at, s, lo, hi, yi, static_cast<uint8_t*>(codes) + at, size_t(hw));
    } else if (is_signed) {
      quantize(isa, xs + at, s, lo, hi, yi, static_cast<int8_t*>(codes) + at, size_t(hw));
    } else {
      quantize(isa, xs + at, s, lo, hi, yi, static_cast<uint8_t*>(codes) + at, size_t(hw));
    }
  });
}

}  // namespace qx
