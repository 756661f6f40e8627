// The integer tile at the heart of the conv kernels (an implicit GEMM on an NHWC uint8 image):
//   c[p][l] = sum_q sum_j act[p][4q + j] * w[q][l][j]   for 8 output pixels p and 32 weight lanes l,
// act[p][4q .. 4q + 3] = the 4 bytes at pixel[p] + k_offset[q] (4 channels of one input pixel);
// w: int8 weights packed [k4][32 lanes][4] (what vpdpbusd reads); c: int32 [8][32].
// Exact integer arithmetic on every path (AVX-512 VNNI, AVX2, scalar).
#pragma once

#include <cstddef>
#include <cstdint>

#include "isa.h"

namespace qx {

constexpr size_t kTilePixels = 8;
constexpr size_t kTileLanes = 32;
constexpr size_t kLaneStep = kTileLanes * 4;  // bytes of w per 4 values of k

// Where a tile's sums go: y[l][p0 + p] = float(c[p][l] - correction[l]) * scale[l] + bias[l] for the
// lanes with a row; with post_pairs, lane l < 16 writes (float(even) + float(odd) * 0.70710677) *
// scale[l] + bias[l] with even = lane l, odd = lane l + 16 (POST's combine).  Float operations in
// this order, unfused, exactly as the ops' function bodies.
struct TileOutput {
  float* row[kTileLanes] = {};  // output row of each lane (nullptr: a padding lane, not written)
  float scale[kTileLanes] = {};
  float bias[kTileLanes] = {};
  int32_t correction[kTileLanes] = {};  // activation offset x lane weight sum
  bool post_pairs = false;
  bool relu = false;  // then y < 0 ? 0 : y (NaN and -0 stay, as the body's Max(y, 0))
};

constexpr float kSqrtHalf = 0.70710677f;  // float32(1 / sqrt 2): the POST combine's constant

void conv_tile(Isa isa, const uint8_t* const* pixel, const int32_t* k_offset, const int8_t* w, size_t k4,
               const TileOutput& out, size_t p0, size_t count);

}  // namespace qx
