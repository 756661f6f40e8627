// The integer tiles at the heart of the conv kernels, on an NHWC uint8 image:
//   conv_tile (an implicit GEMM): c[p][l] = sum_q sum_j act[p][4q + j] * w[q][l][j] for 8 output
//     pixels p and 32 weight lanes l, act[p][4q .. 4q + 3] = the 4 bytes at pixel[p] + k_offset[q]
//     (4 channels of one input pixel); w: int8 packed [k4][32 lanes][4] (what vpdpbusd reads);
//   depthwise_tile: c[p][l] = sum_t image[pixel[p] + tap[t] + channel(l)] * w(t, l), one input
//     channel per lane (see depthwise.cc for its packing).
// c: int32 [8][32], exact integer arithmetic on every path (AVX-512 VNNI, AVX2, scalar).
#pragma once

#include <cstddef>
#include <cstdint>

#include "isa.h"

namespace qx {

// Pins a loop-carried vector accumulator (ymm / zmm) to its register at this point of a kernel's loop.
// Without it GCC computes a step's products into fresh registers and copies every accumulator back
// with a vmovdqa each step (tile_avx2_int16: 8 copies to 16 multiply-adds; tile_vnni with 16 lanes: 16
// to 8 vpdpbusd; the depthwise planes kernel with POST pairs: 16 to 32).
template <typename V>
__attribute__((always_inline)) inline void keep_in_register(V& v) {
#if defined(__x86_64__) || defined(__i386__)
  __asm__("" : "+v"(v));
#else
  (void)v;
#endif
}

constexpr size_t kTilePixels = 8;
constexpr size_t kTileLanes = 32;
constexpr size_t kLaneStep = kTileLanes * 4;  // bytes of w per 4 values of k

// Where a tile's sums go: y[l][p0 + p] = float(c[p][l] - correction[l]) * scale[l] + bias[l] for the
// lanes with a row; with post_pairs, lane l < 16 writes (float(even) + float(odd) * 0.70710677) *
// scale[l] + bias[l] with even = lane l, odd = lane l + 16 (POST's combine).  Float operations in
// this order, unfused, exactly as the ops' function bodies.  With ``codes`` (the *Requant ops) y is
// then quantized as onnxruntime's QuantizeLinear and a Clip do it (see requantize) and one byte is
// stored per value.
struct TileOutput {
  void* row[kTileLanes] = {};  // output row of each lane: float, or int8 / uint8 codes (nullptr: a padding lane)
  float scale[kTileLanes] = {};
  float bias[kTileLanes] = {};
  int32_t correction[kTileLanes] = {};  // activation offset x lane weight sum
  bool post_pairs = false;
  // 1 or 6: then y < 0 ? 0 : y (NaN and -0 stay, as the body's Max(y, 0)); 6: then y > 6 ? 6 : y too
  // (NaN stays, as the body's Min(y, 6))
  int relu = 0;
  bool codes = false;
  bool codes_signed = false;  // int8 codes, else uint8
  float code_step = 1.0f;     // y_scale
  float code_lo = 0.0f, code_hi = 0.0f;  // the code range less the zero point (qmin - zp, qmax - zp)
  int32_t zero_point = 0;
};

// The code of y: t = y / step, clamped to [lo, hi] (a NaN to lo, as MLAS's maxps), rounded half to
// even, plus the zero point: QuantizeLinear (MLAS: divide, clamp, convert) then Clip to [qmin, qmax],
// in one step (rounding is monotonic and the bounds are integers, so clamping first is the same).
inline int32_t requantize(float y, const TileOutput& out) {
  float t = y / out.code_step;
  t = t > out.code_lo ? t : out.code_lo;
  t = t < out.code_hi ? t : out.code_hi;
  return int32_t(__builtin_nearbyintf(t)) + out.zero_point;
}

constexpr float kSqrtHalf = 0.70710677f;  // float32(1 / sqrt 2): the POST combine's constant

// How the AVX2 paths may keep sums in int16 (vpmaddubsw) and stay exact.  vpmaddubsw adds two
// uint8 x int8 products into an int16 that saturates: with activations up to 255 and pairs of weights
// whose magnitudes add up to at most ``max_pair``, ``run`` = 32767 / (255 x max_pair) pairs can be
// added in int16 before widening to int32.  When even one pair can overflow (8-bit weights), the
// activation bytes are split into nibbles (each <= 15) and each half runs with its own bound.
struct Int16Plan {
  bool split = false;
  size_t run = 1;  // pairs (quads for conv_tile) summed in int16 between widenings
  static Int16Plan of(int32_t max_pair);
};

// ``live``: lanes holding weights (the rest are zero padding, skipped where a path can).
void conv_tile(Isa isa, const uint8_t* const* pixel, const int32_t* k_offset, const int8_t* w, size_t k4,
               const Int16Plan& plan, size_t live, const TileOutput& out, size_t p0, size_t count);

// Where weight (lane, tap 2i + s) of a depthwise block sits in the 64 bytes of tap pair i: the order in
// which vpunpcklbw / vpunpckhbw interleave two taps' channel bytes.
inline size_t depthwise_byte(size_t lane, size_t s) { return 32 * (lane / 8 % 2) + 16 * (lane / 16) + 2 * (lane % 8) + s; }

// ``tap``: byte offsets of the kernel taps (an even count, the last one repeated with zero weights when
// the kernel has an odd number); ``dup16``: lanes 16-31 read the channels of lanes 0-15 (POST's odd
// sums), else lane l reads channel l.
void depthwise_tile(Isa isa, const uint8_t* const* pixel, const int32_t* tap, const int8_t* w, size_t pairs,
                    const Int16Plan& plan, bool dup16, const TileOutput& out, size_t p0, size_t count);

// The epilogue of the scalar and AVX2 paths: c int32 [8][32] -> the output rows.
void store_tile(Isa isa, const int32_t* c, const TileOutput& out, size_t p0, size_t count);

}  // namespace qx
