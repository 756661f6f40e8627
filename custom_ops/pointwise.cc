// Pointwise convs (1x1, stride 1, no padding, one group) on the AVX-512 VNNI path, vectorised over
// pixels instead of output channels: a zmm holds 16 pixels x 4 input channels of the activations (a
// [quad][pixel][4] copy of the NCHW codes) and each output lane's 4 weights are broadcast against it,
// so one accumulator is 16 pixels of one output channel: stored straight to its NCHW row.  The
// channel-vectorised tile (gemm.cc) must transpose every 8 x 8 block of its sums for that, which
// costs more than the dot products themselves when K is short (MobileNetV2's 16- to 160-channel
// expansions).  Same integer sums, same float epilogue (order and operations) as gemm.cc's tiles.
#include <algorithm>
#include <cstring>

#include "conv.h"
#include "pixel_rows.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace qx {

#if defined(__x86_64__) || defined(__i386__)

namespace {

constexpr int64_t kVec = 16;  // pixels per zmm

// Up to 4 channel planes (``plane`` apart) of ``count`` pixels into one 4-byte word a pixel, contiguous,
// plus ``add``: 16 pixels at a time (quad_words16; a missing channel's byte gets ``add``, which the
// scratch holds there anyway), the tail byte by byte (a missing channel's byte left as it is).
void quad_words(const uint8_t* __restrict in, int64_t plane, int64_t count, int64_t channels, uint8_t add,
                uint8_t* __restrict out) {
  int64_t x = 0;
  for (; x + 16 <= count; x += 16) {
    __m128i words[4];
    quad_words16(in, plane, channels, x, add, words);
    for (int64_t i = 0; i < 4; ++i) _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 4 * x) + i, words[i]);
  }
  for (; x < count; ++x)
    for (int64_t c = 0; c < channels; ++c) out[4 * x + c] = uint8_t(in[c * plane + x] + add);
}

// acc[r][v] = lane_start + the 4-channel dot products of pixels v * 16 .. + 15 with weight lane lanes[r], over
// all k4 quads; act: the activations of quad 0 at the first pixel, quad_bytes apart.
template <int kRows, int kVecs>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) inline void pointwise_sums(
    const uint8_t* act, int64_t quad_bytes, const int8_t* w, const int* lanes, int64_t k4, const TileOutput& tile,
    __m512i (&out)[kRows][kVecs]) {
  // one flat local array, its loops fully unrolled: GCC then keeps it in registers (with the caller's
  // 2-D array it moved every accumulator to another register each quad)
  constexpr int kAcc = kRows * kVecs;
  __m512i acc[kAcc];
#pragma GCC unroll 16
  for (int i = 0; i < kAcc; ++i) acc[i] = lane_start(tile, lanes[i / kVecs]);
  int32_t offset[kRows];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) offset[r] = 4 * lanes[r];
  for (int64_t q = 0; q < k4; ++q, act += quad_bytes, w += kLaneStep) {
    __m512i a[kVecs];
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) a[v] = _mm512_loadu_si512(act + v * 64);
#pragma GCC unroll 16
    for (int i = 0; i < kAcc; ++i) {
      int32_t word;
      std::memcpy(&word, w + offset[i / kVecs], 4);
      acc[i] = _mm512_dpbusd_epi32(acc[i], a[i % kVecs], _mm512_set1_epi32(word));
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < kAcc; ++i) out[i / kVecs][i % kVecs] = acc[i];
}

// Pixels [p, p + 16 kVecs) of output lanes l0 .. l0 + 3, or (kPairs, POST) of output channels
// l0 .. l0 + 3 of a block: their even lanes and their odd ones (c + 16), combined.
template <bool kPairs, int kVecs>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void pointwise_step(
    const uint8_t* act, int64_t quad_bytes, const int8_t* w, int64_t k4, const TileOutput& out, int l0, int64_t p,
    int64_t pixels) {
  constexpr int half = int(kTileLanes) / 2, rows = kPairs ? 8 : 4;
  const int lanes[8] = {l0, l0 + 1, l0 + 2, l0 + 3, half + l0, half + l0 + 1, half + l0 + 2, half + l0 + 3};
  __m512i acc[rows][kVecs];
  pointwise_sums<rows, kVecs>(act + 4 * p, quad_bytes, w, lanes, k4, out, acc);
  for (int r = 0; r < 4; ++r) {
    if (out.row[l0 + r] == nullptr) continue;
    const Lane16 e = lane16(out, l0 + r);
    for (int v = 0; v < kVecs && p + v * kVec < pixels; ++v)
      store_lane16(acc[r][v], acc[kPairs ? r + 4 : r][v], kPairs, e, p + v * kVec, row_mask16(pixels - p - v * kVec));
  }
}

// Pixels [p0, p1) (a multiple of 16 apart) of one 32-lane block, 4 output lanes at a time: 64 pixels
// per step (POST: 4 channels' even and odd lanes, 32 pixels), then 16 at a time for the rest.
void pointwise_block(const uint8_t* act, int64_t quad_bytes, const int8_t* w, int64_t k4, const TileOutput& out,
                     int64_t p0, int64_t p1, int64_t pixels) {
  const bool pairs = out.post_pairs;
  const int lanes = pairs ? int(kTileLanes) / 2 : int(kTileLanes);
  const int64_t full = (pairs ? 2 : 4) * kVec;
  for (int l0 = 0; l0 < lanes; l0 += 4) {
    if (out.row[l0] == nullptr) continue;
    int64_t p = p0;
    for (; p + full <= p1; p += full)
      pairs ? pointwise_step<true, 2>(act, quad_bytes, w, k4, out, l0, p, pixels)
            : pointwise_step<false, 4>(act, quad_bytes, w, k4, out, l0, p, pixels);
    for (; p < p1; p += kVec)
      pairs ? pointwise_step<true, 1>(act, quad_bytes, w, k4, out, l0, p, pixels)
            : pointwise_step<false, 1>(act, quad_bytes, w, k4, out, l0, p, pixels);
  }
}

}  // namespace

bool run_pointwise(OrtKernelContext* context, Isa isa, const ConvShape& s, const ConvAttrs& a, const Tensor& x,
                   const PackedWeights& w, const ConvOutput& output) {
  const bool pointwise = s.kh == 1 && s.kw == 1 && a.group == 1 && a.strides == std::vector<int64_t>{1, 1} &&
                         a.pads == std::vector<int64_t>{0, 0, 0, 0};
  // one channel in and out packs as a depthwise conv (KLayout::of): not this kernel's layout
  if (isa != Isa::Avx512Vnni || !pointwise || w.groups != 1 || KLayout::of(s, a).depthwise) return false;
  const uint8_t offset = code_offset(x);
  const int64_t pixels = s.h * s.w, k4 = w.k4;
  // tasks of up to 256 pixels (a multiple of every step), the last one's up to 15 tail pixels computed,
  // never stored
  const int64_t padded = (pixels + kVec - 1) / kVec * kVec, chunk = std::min<int64_t>(padded, 16 * kVec);
  if (8 * (padded - pixels) > pixels) return false;  // over 1/8 wasted (7 x 7): the channel tile
  const auto what = [&] { return "pointwise activations of input " + shape_text(x.shape); };
  const int64_t sample_bytes = checked_mul(checked_mul(k4, padded, what), 4, what);
  if (checked_mul(s.n, sample_bytes, what) > (int64_t(1) << 31))
    fail(what() + " over 2 GiB (a native kernel limit)");
  thread_local std::vector<uint8_t> scratch;  // as run_conv's: one per calling thread, reused
  // padding channels (zero weights) and tail pixels (never stored) may hold anything: offset, say
  scratch.assign(size_t(s.n * sample_bytes), offset);
  uint8_t* const act = scratch.data();
  const uint8_t* src = static_cast<const uint8_t*>(x.data);
  parallel_for(context, size_t(s.n * k4), [&](size_t task) {
    const int64_t n = int64_t(task) / k4, q = int64_t(task) % k4;
    quad_words(src + (n * s.c + 4 * q) * pixels, pixels, pixels, std::min<int64_t>(4, s.c - 4 * q), offset,
               act + n * sample_bytes + q * padded * 4);
  });
  const int64_t blocks = w.lanes / int64_t(kTileLanes), chunks = (padded + chunk - 1) / chunk;
  parallel_for(context, size_t(s.n * blocks * chunks), [&](size_t task) {
    const int64_t t = int64_t(task);
    const int64_t n = t / (blocks * chunks), block = t / chunks % blocks, first = t % chunks * chunk;
    TileOutput out;
    block_output(output, w, offset, n, 0, block, out);
    pointwise_block(act + n * sample_bytes, padded * 4, w.data.data() + block * int64_t(kTileLanes) * k4 * 4, k4, out,
                    first, std::min(padded, first + chunk), pixels);
  });
  return true;
}

#else

bool run_pointwise(OrtKernelContext*, Isa, const ConvShape&, const ConvAttrs&, const Tensor&, const PackedWeights&,
                   const ConvOutput&) {
  return false;
}

#endif

}  // namespace qx
