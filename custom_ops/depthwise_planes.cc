// Depthwise convs on the AVX-512 VNNI path (with VBMI), vectorised over output pixels instead of
// channels: one zmm holds 16 output pixels x 4 taps of one kernel row, picked by vpermb straight out
// of one 64-byte load of the channel's NCHW plane (the padding merged in as code 0), so a vpdpbusd
// adds those 4 taps of 16 pixels against the channel's 4 weights, broadcast.  An accumulator is 16
// pixels of one channel, stored straight to its NCHW row (pixel_rows.h): no copy of the input and none
// of the depthwise tile's [pixel][lane] transposes.  Rows of up to 8 output pixels are packed 16 / wo
// to a vector.  Same integer sums, same float epilogue as the depthwise tile.
#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <tuple>
#include <vector>

#include "conv.h"
#include "pixel_rows.h"

namespace qx {

#if defined(__x86_64__) || defined(__i386__)

namespace {

constexpr int64_t kVec = 16;  // output pixels per zmm
constexpr int64_t kMaxWindows = int64_t(1) << 18;

// Every vector's windows ([vector][kernel row][tap group]) and outputs; the same for every channel.
// Window k of vector i is the 64 bytes at plane + origin[i] + offset[k]; byte 4p + t of the vector is
// its byte index[4p + t] (pixel p's tap t) where keep[] has it, else padding (code 0).  load[] masks
// the bytes outside the plane (never read).
struct PlaneVectors {
  int64_t per_vector = 0;  // windows per vector: kernel rows x tap groups
  alignas(64) uint8_t index[64] = {};
  std::vector<int64_t> origin, offset;
  std::vector<uint64_t> keep, load;   // per window
  std::vector<uint8_t> clean;         // per vector: every window's taps and loads inside the plane (no masks)
  std::vector<int64_t> first, count;  // each vector's first output pixel (NCHW) and how many it holds
};

// false when one 64-byte load cannot hold a vector's windows (large strides or dilations): the tile runs
bool plan_vectors(const ConvShape& s, const ConvAttrs& a, PlaneVectors& v) {
  const int64_t sh = a.strides[0], sw = a.strides[1], dh = a.dilations[0], dw = a.dilations[1];
  const int64_t pt = a.pads[0], pl = a.pads[1], plane = s.h * s.w, groups = (s.kw + 3) / 4;
  const int64_t cols = std::min(s.wo, kVec);
  // a step that cannot fit a 64-byte window, tested before any product (a stride or dilation that
  // never applies -- one output column, a 1-wide kernel -- may be any size)
  if ((cols > 1 && sw > 63) || (s.kw > 1 && dw > 21)) return false;
  const int64_t tap = s.kw > 1 ? dw : 0;
  int64_t rows = s.wo <= kVec / 2 ? std::min(kVec / s.wo, s.ho) : 1;
  const auto extent = [&](int64_t r) { return (r - 1) * sh * s.w + (cols - 1) * sw + 3 * tap; };
  while (rows > 1 && extent(rows) > 63) --rows;
  if (extent(rows) > 63) return false;
  for (int64_t p = 0; p < rows * cols && p < kVec; ++p)
    for (int64_t t = 0; t < 4; ++t) v.index[4 * p + t] = uint8_t(p / cols * sh * s.w + p % cols * sw + t * tap);
  v.per_vector = s.kh * groups;
  // a plan's size bound (16 bytes of masks a window; 1024 x 1024 at 3x3 is 196608 windows): larger
  // planes run the tile
  const int64_t vectors = (s.ho + rows - 1) / rows * ((s.wo + cols - 1) / cols);
  if (vectors > kMaxWindows / v.per_vector) return false;
  for (int64_t ky = 0; ky < s.kh; ++ky)
    for (int64_t g = 0; g < groups; ++g) v.offset.push_back(ky * dh * s.w + 4 * g * tap);
  for (int64_t oy = 0; oy < s.ho; oy += rows)
    for (int64_t ox = 0; ox < s.wo; ox += cols) {
      const int64_t pixels = rows > 1 ? std::min(rows, s.ho - oy) * s.wo : std::min(cols, s.wo - ox);
      v.origin.push_back((oy * sh - pt) * s.w + ox * sw - pl);
      v.first.push_back(oy * s.wo + ox);
      v.count.push_back(pixels);
      bool clean = true;
      for (int64_t ky = 0; ky < s.kh; ++ky)
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t base = v.origin.back() + v.offset[size_t(ky * groups + g)];
          uint64_t keep = 0, load = 0;
          for (int64_t b = 0; b < 64; ++b) {
            const int64_t p = b / 4, kx = 4 * g + b % 4;
            const int64_t iy = (oy + p / cols) * sh - pt + ky * dh, ix = (ox + p % cols) * sw - pl + kx * dw;
            const bool real = p < pixels && kx < s.kw;  // the others have zero weights or are never stored
            const bool inside = iy >= 0 && iy < s.h && ix >= 0 && ix < s.w;
            if (real && inside) keep |= uint64_t(1) << b;
            if (base + b >= 0 && base + b < plane) load |= uint64_t(1) << b;
            clean = clean && (inside || !real);
          }
          clean = clean && load == ~uint64_t(0);
          v.keep.push_back(keep);
          v.load.push_back(load);
        }
      v.clean.push_back(clean);
    }
  // clean vectors first, so that plane_run's groups of 4 are all clean or all masked (any order of
  // vectors gives the same outputs)
  std::vector<size_t> order(v.first.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_partition(order.begin(), order.end(), [&](size_t i) { return v.clean[i] != 0; });
  PlaneVectors sorted = v;
  for (size_t i = 0; i < order.size(); ++i) {
    const size_t from = order[i], per = size_t(v.per_vector);
    sorted.origin[i] = v.origin[from], sorted.first[i] = v.first[from], sorted.count[i] = v.count[from];
    sorted.clean[i] = v.clean[from];
    std::copy_n(v.keep.begin() + long(from * per), per, sorted.keep.begin() + long(i * per));
    std::copy_n(v.load.begin() + long(from * per), per, sorted.load.begin() + long(i * per));
  }
  v = std::move(sorted);
  return true;
}

// The plan of a shape, made once per thread and reused (planning a 112 x 112 plane is thousands of
// windows); the calling thread's, read-only while its tasks run.
const PlaneVectors* cached_plan(const ConvShape& s, const ConvAttrs& a) {
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, std::vector<int64_t>, std::vector<int64_t>,
                         std::vector<int64_t>>;
  thread_local std::map<Key, PlaneVectors> plans;
  Key key{s.h, s.w, s.kh, s.kw, a.strides, a.dilations, a.pads};
  auto found = plans.find(key);
  if (found == plans.end()) {
    PlaneVectors v;
    if (!plan_vectors(s, a, v)) v.first.clear();  // remembered as "cannot"
    if (plans.size() >= 16) plans.clear();  // a bound for endless shapes; nothing else holds a pointer now
    found = plans.emplace(std::move(key), std::move(v)).first;
  }
  return found->second.first.empty() ? nullptr : &found->second;
}

// Vectors i .. i + kVecs - 1 of one channel plane (independent accumulators hide vpdpbusd's latency),
// the even lane's words and (kPairs, POST) the odd lane's; ``offset``: every byte's activation offset
// (xor'ed into the codes, the padding's value; kXor false: it is 0, int8 codes only have one).
// kMasked: with the windows' masks, else (clean vectors) plain loads and permutes.  kPer: windows per
// vector when known at compile time (3: a 3x3 kernel), so that every window's masks sit at a constant
// offset from the first vector's; 0: v.per_vector.
template <bool kPairs, int kVecs, bool kMasked, bool kXor, int kPer>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi"))) void plane_step(
    const uint8_t* plane, const PlaneVectors& v, const int32_t* even, const int32_t* odd, __m512i offset,
    const TileOutput& out, int l, size_t i) {
  const __m512i index = _mm512_load_si512(v.index);
  const int64_t per = kPer ? kPer : v.per_vector;
  const uint64_t* keep = v.keep.data() + i * size_t(per);  // window k of vector i + j: [j * per + k]
  const uint64_t* load = v.load.data() + i * size_t(per);
  const int64_t* offsets = v.offset.data();
  const uint8_t* base[kVecs];
  // (the unrolled loops let GCC keep the accumulators in registers: it spilled them every window)
  __m512i acc_e[kVecs], acc_o[kVecs];
#pragma GCC unroll 4
  for (int j = 0; j < kVecs; ++j) {
    base[j] = plane + v.origin[i + size_t(j)];  // may lie before the plane: masked
    acc_e[j] = lane_start(out, l), acc_o[j] = kPairs ? lane_start(out, l + int(kTileLanes) / 2) : acc_e[j];
  }
#pragma GCC unroll 4
  for (int64_t k = 0; k < per; ++k) {
    const __m512i we = _mm512_set1_epi32(even[k]);
    const __m512i wo = kPairs ? _mm512_set1_epi32(odd[k]) : we;
#pragma GCC unroll 4
    for (int j = 0; j < kVecs; ++j) {
      const uint8_t* at = base[j] + offsets[k];
      __m512i x;
      if (kMasked) {
        // the padding bytes zeroed, then every byte + the offset: the padding the offset, code 0
        const __m512i bytes = _mm512_maskz_loadu_epi8(load[j * per + k], at);
        x = _mm512_maskz_permutexvar_epi8(keep[j * per + k], index, bytes);
        if (kXor) x = _mm512_xor_si512(x, offset);
      } else {
        const __m512i bytes = _mm512_loadu_si512(at);
        x = _mm512_permutexvar_epi8(index, kXor ? _mm512_xor_si512(bytes, offset) : bytes);
      }
      acc_e[j] = _mm512_dpbusd_epi32(acc_e[j], x, we);
      keep_in_register(acc_e[j]);
      if (kPairs) acc_o[j] = _mm512_dpbusd_epi32(acc_o[j], x, wo), keep_in_register(acc_o[j]);
    }
  }
  const Lane16 e = lane16(out, l);
#pragma GCC unroll 4
  for (int j = 0; j < kVecs; ++j)
    store_lane16(acc_e[j], acc_o[j], kPairs, e, v.first[i + size_t(j)], row_mask16(v.count[i + size_t(j)]));
}

template <bool kPairs, bool kXor, int kPer>
__attribute__((target("avx512f"))) void plane_run(const uint8_t* plane, const PlaneVectors& v, const int32_t* even,
                                                  const int32_t* odd, uint8_t offset, const TileOutput& out, int l) {
  const __m512i bytes = _mm512_set1_epi8(char(offset));
  size_t i = 0;
  for (; i + 4 <= v.first.size(); i += 4) {
    if (v.clean[i] && v.clean[i + 1] && v.clean[i + 2] && v.clean[i + 3])
      plane_step<kPairs, 4, false, kXor, kPer>(plane, v, even, odd, bytes, out, l, i);
    else
      plane_step<kPairs, 4, true, kXor, kPer>(plane, v, even, odd, bytes, out, l, i);
  }
  for (; i < v.first.size(); ++i)
    v.clean[i] ? plane_step<kPairs, 1, false, kXor, kPer>(plane, v, even, odd, bytes, out, l, i)
               : plane_step<kPairs, 1, true, kXor, kPer>(plane, v, even, odd, bytes, out, l, i);
}

using PlaneRun = void (*)(const uint8_t*, const PlaneVectors&, const int32_t*, const int32_t*, uint8_t,
                          const TileOutput&, int);

template <int kPer>
PlaneRun plane_run_for(bool pairs, bool xor_offset) {
  return pairs ? (xor_offset ? plane_run<true, true, kPer> : plane_run<true, false, kPer>)
               : (xor_offset ? plane_run<false, true, kPer> : plane_run<false, false, kPer>);
}

}  // namespace

bool run_depthwise_planes(OrtKernelContext* context, Isa isa, const ConvShape& s, const ConvAttrs& a, const Tensor& x,
                          const PackedWeights& w, bool dup16, const ConvOutput& output) {
  if (isa != Isa::Avx512Vnni || !has_avx512vbmi() || !KLayout::of(s, a).depthwise) return false;
  const PlaneVectors* plan = cached_plan(s, a);
  if (plan == nullptr) return false;
  const PlaneVectors& v = *plan;
  const uint8_t offset = code_offset(x);
  const uint8_t* src = static_cast<const uint8_t*>(x.data);
  const int64_t in_plane = s.h * s.w, words = v.per_vector;
  const int64_t per_block = dup16 ? int64_t(kTileLanes) / 2 : int64_t(kTileLanes);
  const int32_t* const tap_words = w.tap_words.data();  // kh * kw_groups words per lane, packed once
  // tasks of 8 channels (a block's output rows set up once per task)
  constexpr int64_t kChannels = 8;
  const int64_t chunks = (s.c + kChannels - 1) / kChannels;
  const PlaneRun run = words == 3 ? plane_run_for<3>(dup16, offset != 0) : plane_run_for<0>(dup16, offset != 0);
  parallel_for(context, size_t(s.n * chunks), [&](size_t task) {
    const int64_t n = int64_t(task) / chunks, c0 = int64_t(task) % chunks * kChannels;
    const int64_t block = c0 / per_block;
    TileOutput out;
    block_output(output, w, offset, n, 0, block, out);
    for (int64_t c = c0; c < std::min(s.c, c0 + kChannels); ++c) {
      const uint8_t* plane = src + (n * s.c + c) * in_plane;
      const int l = int(c % per_block);
      const int32_t* even = tap_words + (block * int64_t(kTileLanes) + l) * words;
      run(plane, v, even, dup16 ? even + int64_t(kTileLanes) / 2 * words : nullptr, offset, out, l);
    }
  });
  return true;
}

#else

bool run_depthwise_planes(OrtKernelContext*, Isa, const ConvShape&, const ConvAttrs&, const Tensor&,
                          const PackedWeights&, bool, const ConvOutput&) {
  return false;
}

#endif

}  // namespace qx
