// The AVX-512 epilogue of kernels vectorised over pixels (pointwise.cc, depthwise_planes.cc): 16 pixels
// of one output lane's integer sums, the float epilogue of gemm.cc's tiles (same operations, same
// order) and a masked store straight to the lane's NCHW row.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "gemm.h"

namespace qx {

// One output lane's epilogue, its constants read from the TileOutput once, before any store: the
// codes are stored through a uint8_t pointer, which may alias anything, so reading them from the
// TileOutput at every vector made GCC reload (and rebroadcast) each one after every store.
struct Lane16 {
  __m512 scale, bias, step, lo, hi;
  __m512i zero_point;
  void* row;
  int relu;
  bool codes;
};

__attribute__((target("avx512f"))) inline Lane16 lane16(const TileOutput& out, int l) {
  return {_mm512_set1_ps(out.scale[l]), _mm512_set1_ps(out.bias[l]), _mm512_set1_ps(out.code_step),
          _mm512_set1_ps(out.code_lo), _mm512_set1_ps(out.code_hi), _mm512_set1_epi32(out.zero_point),
          out.row[l], out.relu, out.codes};
}

// Pixels p .. p + 15 of lane e (those in ``mask``), their integer sums combined into ``sum`` (exact):
// y = sum * scale + bias, then the ReLU, and the float or (codes) the requantized code (gemm.h's
// requantize) stored to the lane's row.
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void store_row16(__m512 sum, const Lane16& e, int64_t p,
                                                                            __mmask16 mask) {
  const __m512 v = _mm512_add_ps(_mm512_mul_ps(sum, e.scale), e.bias);
  __m512 y = e.relu ? _mm512_max_ps(_mm512_setzero_ps(), v) : v;  // NaN stays, as gemm.cc
  if (e.relu == 6) y = _mm512_min_ps(_mm512_set1_ps(6.0f), y);
  if (!e.codes) return _mm512_mask_storeu_ps(static_cast<float*>(e.row) + p, mask, y);
  // maxps / minps give their second operand for a NaN: lo; round half to even (MXCSR); the code's
  // low byte is its int8 / uint8 value
  const __m512 t = _mm512_min_ps(_mm512_max_ps(_mm512_div_ps(y, e.step), e.lo), e.hi);
  const __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(t), e.zero_point);
  _mm_mask_storeu_epi8(static_cast<uint8_t*>(e.row) + p, mask, _mm512_cvtepi32_epi8(q));
}

inline __mmask16 row_mask16(int64_t count) { return count >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1); }

// 16 pixels' sums of lane e, or (pairs, POST) of its even lane and odd lane (l + 16) combined as gemm.cc
// does, stored by store_row16.  The accumulators started at minus their lane's correction (what
// gemm.cc's tiles subtract at the end: the same int32, one vpsubd less per vector).
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void store_lane16(__m512i even, __m512i odd, bool pairs,
                                                                             const Lane16& e, int64_t p, __mmask16 mask) {
  __m512 sum = _mm512_cvtepi32_ps(even);
  if (pairs) sum = _mm512_add_ps(sum, _mm512_mul_ps(_mm512_cvtepi32_ps(odd), _mm512_set1_ps(kSqrtHalf)));
  store_row16(sum, e, p, mask);
}

// the accumulator store_lane16 wants for lane l: minus its correction
__attribute__((target("avx512f"))) inline __m512i lane_start(const TileOutput& out, int l) {
  return _mm512_set1_epi32(-out.correction[l]);
}

}  // namespace qx

#endif
