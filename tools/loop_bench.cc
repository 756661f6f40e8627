// Inner loops alone, to size what bounds two kernels on an AVX-512 VNNI + VBMI CPU
// (docs/bench_notes.md, sixth session):
//   1. AsqQuantize's quantizing pass: x / step rounded and clipped to codes, with the division it
//      needs for exactness, with a multiplication instead (inexact: only a bound), and only reading x;
//      on 113 k values (in L2) and 1.2 M (in L3).
//   2. One step of POST's channel tile for 8 pixels x 16 output lanes: two vpdpbusd (the even and
//      odd weight matrices, today), a vpermb gather + one vpdpbusd (a lane-permuted sparse layout
//      that would skip the zero weights), one vpdpbusd (LSQ).
//
//   g++ -O3 -std=c++17 tools/loop_bench.cc -o /tmp/loop_bench && /tmp/loop_bench
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <vector>

namespace {

#define QX_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi"), noinline))

template <bool kDivide>
QX_AVX512 void quantize(const float* x, float step, uint8_t* codes, size_t n) {
  const __m512 s = _mm512_set1_ps(kDivide ? step : 1.0f / step), lo = _mm512_setzero_ps(), hi = _mm512_set1_ps(15.0f);
  for (size_t i = 0; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m512 t = kDivide ? _mm512_div_ps(v, s) : _mm512_mul_ps(v, s);
    const __m512 q = _mm512_min_ps(hi, _mm512_max_ps(lo, t));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i),
                     _mm512_cvtepi32_epi8(_mm512_cvt_roundps_epi32(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
  }
}

QX_AVX512 void read_only(const float* x, float, uint8_t* codes, size_t n) {
  __m512 a = _mm512_setzero_ps(), b = a;
  for (size_t i = 0; i + 32 <= n; i += 32)
    a = _mm512_add_ps(a, _mm512_loadu_ps(x + i)), b = _mm512_add_ps(b, _mm512_loadu_ps(x + i + 16));
  codes[0] = _mm512_reduce_add_ps(_mm512_add_ps(a, b)) > 0.0f;
}

// steps of 8 pixels: weights (and gather indices) cycle through 64 steps' worth, activations stay in L1
QX_AVX512 void two_dpbusd(const uint8_t* x, const int8_t* w, int steps, int32_t* out) {
  __m512i e[8], o[8];
  for (int p = 0; p < 8; ++p) e[p] = o[p] = _mm512_setzero_si512();
  for (int s = 0; s < steps; ++s) {
    const __m512i we = _mm512_loadu_si512(w + 128 * (s & 63)), wo = _mm512_loadu_si512(w + 128 * (s & 63) + 64);
    for (int p = 0; p < 8; ++p) {
      const __m512i a = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(x + 4 * (s & 255) + 1024 * p));
      e[p] = _mm512_dpbusd_epi32(e[p], a, we), o[p] = _mm512_dpbusd_epi32(o[p], a, wo);
    }
  }
  for (int p = 0; p < 8; ++p) _mm512_storeu_si512(out + 16 * p, _mm512_add_epi32(e[p], o[p]));
}

QX_AVX512 void gather_dpbusd(const uint8_t* x, const int8_t* w, int steps, int32_t* out) {
  __m512i e[8];
  for (int p = 0; p < 8; ++p) e[p] = _mm512_setzero_si512();
  for (int s0 = 0; s0 < steps; s0 += 16) {
    __m512i block[8];  // each pixel's 64 input bytes, gathered from 16 times
    for (int p = 0; p < 8; ++p) block[p] = _mm512_loadu_si512(x + 64 * ((s0 >> 4) & 15) + 1024 * p);
    for (int s = s0; s < s0 + 16; ++s) {
      const __m512i wv = _mm512_loadu_si512(w + 128 * (s & 63)), index = _mm512_loadu_si512(w + 128 * (s & 63) + 64);
      for (int p = 0; p < 8; ++p) e[p] = _mm512_dpbusd_epi32(e[p], _mm512_permutexvar_epi8(index, block[p]), wv);
    }
  }
  for (int p = 0; p < 8; ++p) _mm512_storeu_si512(out + 16 * p, e[p]);
}

QX_AVX512 void one_dpbusd(const uint8_t* x, const int8_t* w, int steps, int32_t* out) {
  __m512i e[8];
  for (int p = 0; p < 8; ++p) e[p] = _mm512_setzero_si512();
  for (int s = 0; s < steps; ++s) {
    const __m512i wv = _mm512_loadu_si512(w + 128 * (s & 63));
    for (int p = 0; p < 8; ++p) {
      const __m512i a = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(x + 4 * (s & 255) + 1024 * p));
      e[p] = _mm512_dpbusd_epi32(e[p], a, wv);
    }
  }
  for (int p = 0; p < 8; ++p) _mm512_storeu_si512(out + 16 * p, e[p]);
}

template <typename F>
double best_us(F f, int repeats) {
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto t = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t).count());
  }
  return best;
}

}  // namespace

int main() {
  if (!__builtin_cpu_supports("avx512vnni") || !__builtin_cpu_supports("avx512vbmi")) {
    std::puts("loop_bench: this CPU lacks AVX-512 VNNI or VBMI; nothing to measure");
    return 0;
  }
  std::puts("| quantizing pass | values | divide us | multiply us | read only us |\n|---|---:|---:|---:|---:|");
  for (size_t n : {size_t(112896), size_t(1204224)}) {
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = float(i * 7919 % 1000) * 0.013f;
    std::vector<uint8_t> codes(n);
    const auto run = [&](auto f) { return best_us([&] { f(x.data(), 0.37f, codes.data(), n); }, 300); };
    std::printf("| %s | %zu | %.1f | %.1f | %.1f |\n", n < 200000 ? "in L2" : "in L3", n, run(quantize<true>),
                run(quantize<false>), run(read_only));
  }
  alignas(64) static uint8_t act[16384];
  alignas(64) static int8_t weights[16384];
  alignas(64) static int32_t out[128];
  for (int i = 0; i < 16384; ++i) act[i] = uint8_t(i * 7 % 16), weights[i] = int8_t(i * 13 % 17 - 8);
  const int steps = 1 << 16;
  const auto step_ns = [&](auto f) { return best_us([&] { f(act, weights, steps, out); }, 50) * 1e3 / steps; };
  std::puts("\n| tile step, 8 pixels x 16 lanes | ns |\n|---|---:|");
  std::printf("| two vpdpbusd (POST today) | %.3f |\n", step_ns(two_dpbusd));
  std::printf("| vpermb + vpdpbusd (lane-permuted POST) | %.3f |\n", step_ns(gather_dpbusd));
  std::printf("| one vpdpbusd (LSQ) | %.3f |\n", step_ns(one_dpbusd));
  std::printf("\n(checksum %d)\n", out[3]);  // the sums are used
  return 0;
}
