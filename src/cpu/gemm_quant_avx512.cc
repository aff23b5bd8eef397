// AVX-512 VNNI tiled gemms for Q4_0 x Q8_0, Q4_1 x Q8_1 and Q8_0 x Q8_0. Each call repacks
// weights and activations into the block-per-lane layout of gemm_quant_impl.h (16 blocks per
// ZMM), then a 4-row x 3-token microkernel runs 8 VPDPBUSDs per group of 16 blocks per pair
// and one convert + scale + FMA per group, keeping 12 int32 and 12 float accumulators in ZMMs.
// NOTE: VPDPBUSD multiplies unsigned by signed bytes, so weights are packed unsigned (Q4 nibbles
// 0..15, Q8_0 ^ 0x80) and the offset is removed exactly via the activations' per-block sums.
// GCC 12.1/12.2's AVX-512 headers trip -W(maybe-)uninitialized inside their own intrinsics
// (GCC PR105593, fixed in 12.3); the warnings point into the header, not at this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/gemm_quant_impl.h"
#include "cpu/quants.h"

namespace qilin::avx512 {
namespace {

using gemm_quant::GroupPlan;

constexpr int kLanes = 16;
constexpr size_t kVec = 64;         // bytes per ZMM
constexpr int kTileRows = 4;        // microkernel tile: 4 + 1 loaded + 12 + 12 accumulators
constexpr int kTileToks = 3;        //   fit the 32 ZMMs
// Packed activations per slice: 480 KB at n = 1536 (L2). Every slice widens the weights again,
// so a serving step of 128 prompt tokens plus the decodes stays one slice (128 split it in two:
// pp with 144-token batches 2743 -> 2830 t/s, pp512 unchanged).
constexpr int64_t kTokSlice = 256;
constexpr int64_t kRowSlice = 64;   // packed weights per slice: 120 KB at n = 1536

enum class Kind { Q4_0, Q4_1, Q8_0 };

// Per weight type: source block sizes, where qs starts, and the activation correction.
template <Kind K>
struct Traits;
template <>
struct Traits<Kind::Q4_0> {
  static constexpr DType kW = DType::Q4_0, kA = DType::Q8_0;
  static constexpr size_t kWBytes = sizeof(BlockQ4_0), kABytes = sizeof(BlockQ8_0);
  static constexpr size_t kWQs = 2, kAQs = 2;
  static constexpr int kCorr = 8;  // nibble q stands for q - 8
};
template <>
struct Traits<Kind::Q4_1> {
  static constexpr DType kW = DType::Q4_1, kA = DType::Q8_1;
  static constexpr size_t kWBytes = sizeof(BlockQ4_1), kABytes = sizeof(BlockQ8_1);
  static constexpr size_t kWQs = 4, kAQs = 4;
  static constexpr int kCorr = 0;  // the minimum enters as m * s instead
};
template <>
struct Traits<Kind::Q8_0> {
  static constexpr DType kW = DType::Q8_0, kA = DType::Q8_0;
  static constexpr size_t kWBytes = sizeof(BlockQ8_0), kABytes = sizeof(BlockQ8_0);
  static constexpr size_t kWQs = 2, kAQs = 2;
  static constexpr int kCorr = 128;  // weights packed as w ^ 0x80 = w + 128 unsigned
};

// Thread-local packing buffers, 64-byte aligned; they grow to the largest call seen and are
// then reused, so steady-state calls allocate nothing.
uint8_t* scratch(int which, size_t bytes) {
  thread_local std::vector<uint8_t> buf[3];
  std::vector<uint8_t>& b = buf[which];
  if (b.size() < bytes + 64) b.resize(bytes + 64);
  const uintptr_t p = reinterpret_cast<uintptr_t>(b.data());
  return reinterpret_cast<uint8_t*>((p + 63) & ~uintptr_t{63});
}

inline __m512i load(const uint8_t* p) { return _mm512_loadu_si512(p); }
inline void store(uint8_t* p, __m512i v) { _mm512_storeu_si512(p, v); }

// Transposes 4x4 dwords within each 128-bit lane: afterwards r[k] lane i holds dword k of
// every input's lane i, in input order.
inline void transpose4_in_lanes(__m512i* r) {
  const __m512i t0 = _mm512_unpacklo_epi32(r[0], r[1]), t1 = _mm512_unpackhi_epi32(r[0], r[1]);
  const __m512i t2 = _mm512_unpacklo_epi32(r[2], r[3]), t3 = _mm512_unpackhi_epi32(r[2], r[3]);
  r[0] = _mm512_unpacklo_epi64(t0, t2);
  r[1] = _mm512_unpackhi_epi64(t0, t2);
  r[2] = _mm512_unpacklo_epi64(t1, t3);
  r[3] = _mm512_unpackhi_epi64(t1, t3);
}

// 16 blocks' 32 qs bytes (block b at qs + b * stride) -> out[k] lane b = dword k of block b.
// Input j holds blocks j, 4+j, 8+j, 12+j in its 128-bit lanes, so after the in-lane transpose
// dword 4i + j is block 4i + j: the natural order, no permute needed.
inline void transpose_q8_group(const uint8_t* qs, size_t stride, __m512i* out) {
  __m512i lo[4], hi[4];
  for (int j = 0; j < 4; ++j) {
    const __m512i x0 = _mm512_inserti64x4(
        _mm512_castsi256_si512(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + j * stride))),
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + (4 + j) * stride)), 1);
    const __m512i x1 = _mm512_inserti64x4(
        _mm512_castsi256_si512(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + (8 + j) * stride))),
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + (12 + j) * stride)), 1);
    lo[j] = _mm512_shuffle_i32x4(x0, x1, _MM_SHUFFLE(2, 0, 2, 0));  // dwords 0..3 of each
    hi[j] = _mm512_shuffle_i32x4(x0, x1, _MM_SHUFFLE(3, 1, 3, 1));  // dwords 4..7 of each
  }
  transpose4_in_lanes(lo);
  transpose4_in_lanes(hi);
  for (int k = 0; k < 4; ++k) {
    out[k] = lo[k];
    out[4 + k] = hi[k];
  }
}

inline __m128i load128(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}

// 16 Q4 blocks' 16 qs bytes -> 8 steps of nibbles as bytes. qs dword k holds elements 4k..4k+3
// in its low nibbles and 16+4k..19+4k in its high nibbles, i.e. unpacked dwords k and 4+k.
inline void pack_q4_group(const uint8_t* qs, size_t stride, uint8_t* dst) {
  __m512i r[4];
  for (int j = 0; j < 4; ++j) {
    __m512i v = _mm512_castsi128_si512(load128(qs + j * stride));
    v = _mm512_inserti32x4(v, load128(qs + (4 + j) * stride), 1);
    v = _mm512_inserti32x4(v, load128(qs + (8 + j) * stride), 2);
    r[j] = _mm512_inserti32x4(v, load128(qs + (12 + j) * stride), 3);
  }
  transpose4_in_lanes(r);
  const __m512i m4 = _mm512_set1_epi8(0x0f);
  for (int k = 0; k < 4; ++k) {
    store(dst + k * kVec, _mm512_and_si512(r[k], m4));
    store(dst + (4 + k) * kVec, _mm512_and_si512(_mm512_srli_epi32(r[k], 4), m4));
  }
}

// The first 4 bytes of 16 blocks: the f16 scale d in the low half, Q4_1's m / Q8_1's s in the
// high half. One gather instead of 32 scalar loads.
inline __m512i gather_headers(const uint8_t* blocks, size_t stride) {
  const __m512i idx =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(static_cast<int>(stride)));
  return _mm512_i32gather_epi32(idx, blocks, 1);
}
inline __m512 low_f16(__m512i h) { return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h)); }
inline __m512 high_f16(__m512i h) { return low_f16(_mm512_srli_epi32(h, 16)); }

// The tail group's gather indices and lane masks as vectors, built once per call.
struct TailGather {
  int steps = 0;
  __mmask16 valid = 0, first = 0;
  __m512i header, offset[gemm_quant::kMaxTailSteps], shift[gemm_quant::kMaxTailSteps];
};

TailGather tail_gather(const GroupPlan& plan, DType type) {
  const gemm_quant::TailLayout t = gemm_quant::plan_tail(plan, type);
  TailGather g;
  g.steps = plan.tail_steps;
  for (int lane = 0; lane < kLanes; ++lane) {
    if (t.valid[lane]) g.valid |= static_cast<__mmask16>(1u << lane);
    if (t.first[lane]) g.first |= static_cast<__mmask16>(1u << lane);
  }
  g.header = _mm512_loadu_si512(t.header);
  for (int k = 0; k < gemm_quant::kMaxTailSteps; ++k) {
    g.offset[k] = _mm512_loadu_si512(t.offset[k]);
    g.shift[k] = _mm512_loadu_si512(t.shift[k]);
  }
  return g;
}

// Packs a tail group (src = its first block) with masked gathers: padding lanes read nothing
// and get zero scales, so whatever their data holds contributes 0. kCorr != 0 writes the
// activation correction into x; kX writes the header's second f16 (m or s) in first lanes.
template <bool kQ4, uint8_t kXor, int kCorr, bool kX>
void pack_tail(const TailGather& g, const uint8_t* src, uint8_t* dst) {
  const __m512i zero = _mm512_setzero_si512();
  __m512i sum = zero;
  for (int k = 0; k < g.steps; ++k) {
    __m512i v = _mm512_mask_i32gather_epi32(zero, g.valid, g.offset[k], src, 1);
    if constexpr (kQ4)
      v = _mm512_and_si512(_mm512_srlv_epi32(v, g.shift[k]), _mm512_set1_epi8(0x0f));
    if constexpr (kXor != 0) v = _mm512_xor_si512(v, _mm512_set1_epi8(static_cast<char>(kXor)));
    store(dst + k * kVec, v);
    if constexpr (kCorr != 0) sum = _mm512_dpbusd_epi32(sum, _mm512_set1_epi8(1), v);
  }
  const __m512i h = _mm512_mask_i32gather_epi32(zero, g.valid, g.header, src, 1);
  uint8_t* x = dst + (g.steps + 1) * kVec;
  _mm512_storeu_ps(dst + g.steps * kVec, low_f16(h));
  if constexpr (kCorr != 0) store(x, _mm512_mullo_epi32(sum, _mm512_set1_epi32(-kCorr)));
  if constexpr (kX) _mm512_storeu_ps(x, high_f16(_mm512_maskz_mov_epi32(g.first, h)));
}

template <Kind K>
void pack_weight_row(const GroupPlan& plan, const TailGather& tail, const uint8_t* src,
                     uint8_t* dst) {
  using T = Traits<K>;
  for (int64_t g = 0; g < plan.n_full; ++g, src += kLanes * T::kWBytes, dst += plan.full_bytes) {
    if constexpr (K == Kind::Q8_0) {
      __m512i v[8];
      transpose_q8_group(src + T::kWQs, T::kWBytes, v);
      const __m512i k80 = _mm512_set1_epi8(static_cast<char>(0x80));
      for (int k = 0; k < 8; ++k) store(dst + k * kVec, _mm512_xor_si512(v[k], k80));
    } else {
      pack_q4_group(src + T::kWQs, T::kWBytes, dst);
    }
    const __m512i h = gather_headers(src, T::kWBytes);
    _mm512_storeu_ps(dst + 8 * kVec, low_f16(h));
    // x is only read for Q4_1 (m); the other types leave it unwritten.
    if constexpr (K == Kind::Q4_1) _mm512_storeu_ps(dst + 9 * kVec, high_f16(h));
  }
  if (plan.tail_steps > 0) {
    pack_tail<K != Kind::Q8_0, K == Kind::Q8_0 ? 0x80 : 0, 0, K == Kind::Q4_1>(tail, src, dst);
  }
}

// A weight row of type wt (Tr::kW, or a 4-bit type run as K) into the packed layout.
template <Kind K>
void pack_weight(DType wt, const GroupPlan& plan, const TailGather& tail, const uint8_t* src,
                 uint8_t* dst) {
  if (wt == Traits<K>::kW) return pack_weight_row<K>(plan, tail, src, dst);
  const int64_t nk = (plan.n_full * kLanes + plan.tail_real) * kQK;
  const int64_t n = nk == gemm_quant::int4_kernel_len(wt, nk) ? nk : nk / 2;
  gemm_quant::pack_int4_row(plan, wt, K == Kind::Q8_0 ? 0x80 : 0, src, n, dst);
}

template <Kind K>
void pack_act_row(const GroupPlan& plan, const TailGather& tail, const uint8_t* src, uint8_t* dst) {
  using T = Traits<K>;
  for (int64_t g = 0; g < plan.n_full; ++g, src += kLanes * T::kABytes, dst += plan.full_bytes) {
    __m512i v[8];
    transpose_q8_group(src + T::kAQs, T::kABytes, v);
    for (int k = 0; k < 8; ++k) store(dst + k * kVec, v[k]);
    const __m512i h = gather_headers(src, T::kABytes);
    _mm512_storeu_ps(dst + 8 * kVec, low_f16(h));
    if constexpr (K == Kind::Q4_1) {
      _mm512_storeu_ps(dst + 9 * kVec, high_f16(h));  // s
    } else {
      // Lane b = block b, so the per-lane byte sums are the block sums.
      __m512i sum = _mm512_setzero_si512();
      for (int k = 0; k < 8; ++k) sum = _mm512_dpbusd_epi32(sum, _mm512_set1_epi8(1), v[k]);
      store(dst + 9 * kVec, _mm512_mullo_epi32(sum, _mm512_set1_epi32(-T::kCorr)));
    }
  }
  if (plan.tail_steps > 0) pack_tail<false, 0, T::kCorr, K == Kind::Q4_1>(tail, src, dst);
}

// One group (`steps` dot steps) of an R-row x T-token tile: integer dots per lane (= per block
// in a full group), then acc += float(dot) * (d_w * d_a) [+ m_w * s_a], all lane-wise.
template <Kind K, int R, int T>
inline __attribute__((always_inline)) void group_step(int steps, const uint8_t* w, size_t ws,
                                                      const uint8_t* a, size_t as,
                                                      __m512 (&acc)[R][T]) {
  __m512i dot[R][T];
  for (int t = 0; t < T; ++t) {
    const __m512i init =
        K == Kind::Q4_1 ? _mm512_setzero_si512() : load(a + t * as + (steps + 1) * kVec);
    for (int r = 0; r < R; ++r) dot[r][t] = init;
  }
  for (int k = 0; k < steps; ++k) {
    __m512i wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load(w + r * ws + k * kVec);
    for (int t = 0; t < T; ++t) {
      const __m512i av = load(a + t * as + k * kVec);
      for (int r = 0; r < R; ++r) dot[r][t] = _mm512_dpbusd_epi32(dot[r][t], wv[r], av);
    }
  }
  __m512 dw[R];
  for (int r = 0; r < R; ++r) dw[r] = _mm512_loadu_ps(w + r * ws + steps * kVec);
  for (int t = 0; t < T; ++t) {
    const __m512 da = _mm512_loadu_ps(a + t * as + steps * kVec);
    for (int r = 0; r < R; ++r) {
      acc[r][t] =
          _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r][t]), _mm512_mul_ps(dw[r], da), acc[r][t]);
    }
  }
  if constexpr (K == Kind::Q4_1) {
    for (int t = 0; t < T; ++t) {
      const __m512 s = _mm512_loadu_ps(a + t * as + (steps + 1) * kVec);
      for (int r = 0; r < R; ++r) {
        acc[r][t] = _mm512_fmadd_ps(_mm512_loadu_ps(w + r * ws + (steps + 1) * kVec), s, acc[r][t]);
      }
    }
  }
}

inline __m128 sum_to_128(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// c[t * ldc + r] = dot(packed weight row r, packed token t) for r < R, t < T.
template <Kind K, int R, int T>
void tile(const GroupPlan& plan, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* c,
          int64_t ldc) {
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  for (int64_t g = 0; g < plan.n_full; ++g, w += plan.full_bytes, a += plan.full_bytes) {
    group_step<K, R, T>(8, w, ws, a, as, acc);
  }
  if (plan.tail_steps > 0) group_step<K, R, T>(plan.tail_steps, w, ws, a, as, acc);
  // Four rows' sums of one token land in one XMM (a 4-way horizontal-add tree), stored at once.
  static_assert(R <= 4);
  for (int t = 0; t < T; ++t) {
    __m128 s[4];
    for (int r = 0; r < 4; ++r) s[r] = r < R ? sum_to_128(acc[r][t]) : _mm_setzero_ps();
    const __m128 v = _mm_hadd_ps(_mm_hadd_ps(s[0], s[1]), _mm_hadd_ps(s[2], s[3]));
    _mm_mask_storeu_ps(c + t * ldc, static_cast<__mmask8>((1u << R) - 1), v);
  }
}

using TileFn = void (*)(const GroupPlan&, const uint8_t*, size_t, const uint8_t*, size_t, float*,
                        int64_t);

// Edge tiles (fewer rows or tokens than the full tile) by size.
template <Kind K>
TileFn edge_tile(int rows, int toks) {
  static_assert(kTileRows == 4 && kTileToks == 3, "update the table");
  static constexpr TileFn kTable[kTileRows][kTileToks] = {
      {tile<K, 1, 1>, tile<K, 1, 2>, tile<K, 1, 3>},
      {tile<K, 2, 1>, tile<K, 2, 2>, tile<K, 2, 3>},
      {tile<K, 3, 1>, tile<K, 3, 2>, tile<K, 3, 3>},
      {tile<K, 4, 1>, tile<K, 4, 2>, tile<K, 4, 3>},
  };
  return kTable[rows - 1][toks - 1];
}

// The cache keeps Q4 weights compact: a full group's 8 steps of nibbles-as-bytes become 4
// steps of two nibbles (step k low, step 4 + k high), d and x verbatim, the tail group
// verbatim. Every call widens its 64-row slices back into L2 (compact_widen) instead of a
// plain copy: 0.6x the bytes from DRAM, where batched decode spends most of its gemm time.
constexpr size_t kCompactGroup = 6 * kVec;  // 4 nibble steps + d + x (full: 10 * kVec)
size_t compact_row_bytes(const GroupPlan& p) {
  return p.row_bytes - static_cast<size_t>(p.n_full) * (p.full_bytes - kCompactGroup);
}
void compact_row(const GroupPlan& p, const uint8_t* full, uint8_t* dst) {
  for (int64_t g = 0; g < p.n_full; ++g, full += p.full_bytes, dst += kCompactGroup) {
    for (int k = 0; k < 4; ++k) {
      store(dst + k * kVec,
            _mm512_or_si512(load(full + k * kVec), _mm512_slli_epi16(load(full + (4 + k) * kVec), 4)));
    }
    std::memcpy(dst + 4 * kVec, full + 8 * kVec, 2 * kVec);
  }
  std::memcpy(dst, full, p.row_bytes - static_cast<size_t>(p.n_full) * p.full_bytes);
}
void compact_widen(const GroupPlan& p, const uint8_t* src, int64_t n_rows, uint8_t* dst) {
  const __m512i m4 = _mm512_set1_epi8(0x0f);
  const size_t tail = p.row_bytes - static_cast<size_t>(p.n_full) * p.full_bytes;
  for (int64_t r = 0; r < n_rows; ++r) {
    for (int64_t g = 0; g < p.n_full; ++g, src += kCompactGroup, dst += p.full_bytes) {
      for (int k = 0; k < 4; ++k) {
        const __m512i v = load(src + k * kVec);
        store(dst + k * kVec, _mm512_and_si512(v, m4));
        store(dst + (4 + k) * kVec, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
      }
      store(dst + 8 * kVec, load(src + 4 * kVec));
      store(dst + 9 * kVec, load(src + 5 * kVec));
    }
    std::memcpy(dst, src, tail);
    src += tail;
    dst += tail;
  }
}

// Token slices outermost: each slice's activations are packed once and reused by every row;
// each row slice is packed once per token slice and then stays in L1/L2 across the slice.
// wt: the weights' type, Tr::kW or one of Qilin's 4-bit types run as kernel K
// (gemm_quant::pack_int4_row).
template <Kind K>
void gemm(DType wt, int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,
          size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {
  using Tr = Traits<K>;
  // NF4 runs on rows of 2n (gemm_quant_impl.h): activations are read with each block twice.
  const bool dup = wt != Tr::kW && gemm_quant::int4_kernel_len(wt, n) != n;
  const GroupPlan plan = gemm_quant::plan_groups(dup ? 2 * n : n, kLanes);
  TailGather w_tail, a_tail;
  if (plan.tail_steps > 0) {
    if (wt == Tr::kW) w_tail = tail_gather(plan, Tr::kW);
    a_tail = tail_gather(plan, Tr::kA);
  }
  const size_t pb = plan.row_bytes;
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* ab = static_cast<const uint8_t*>(a);
  // Registered (immutable) weights: packed once, kept (gemm.h, gemm_register_immutable).
  struct PackCtx {
    const GroupPlan* plan;
    const TailGather* tail;
    const uint8_t* w;
    size_t stride;
    int64_t n_rows;
    DType wt;
  } ctx{&plan, &w_tail, wb, w_stride, n_rows, wt};
  constexpr bool kCompact = K != Kind::Q8_0;
  const size_t cb = kCompact ? compact_row_bytes(plan) : pb;  // bytes per cached row
  const uint8_t* cached = gemm_cache::get(
      w, w_stride, n_rows, n,
      static_cast<int>(K) + 100 * kLanes + (kCompact ? 1000 : 0) + 10000 * static_cast<int>(wt), cb,
      [](const void* p, uint8_t* dst) {
        const auto& c = *static_cast<const PackCtx*>(p);
        if constexpr (kCompact) {
          std::vector<uint8_t> full(c.plan->row_bytes + kVec);
          uint8_t* f = reinterpret_cast<uint8_t*>(
              (reinterpret_cast<uintptr_t>(full.data()) + kVec - 1) & ~uintptr_t{kVec - 1});
          const size_t rb = compact_row_bytes(*c.plan);
          for (int64_t r = 0; r < c.n_rows; ++r) {
            pack_weight<K>(c.wt, *c.plan, *c.tail, c.w + r * c.stride, f);
            compact_row(*c.plan, f, dst + r * rb);
          }
        } else {
          for (int64_t r = 0; r < c.n_rows; ++r) {
            pack_weight<K>(c.wt, *c.plan, *c.tail, c.w + r * c.stride, dst + r * c.plan->row_bytes);
          }
        }
      },
      &ctx);
  uint8_t* a_dup = dup ? scratch(2, row_bytes(Tr::kA, 2 * n)) : nullptr;
  uint8_t* pa = scratch(0, pb * static_cast<size_t>(std::min(n_tok, kTokSlice)));
  uint8_t* pw_scratch = scratch(1, pb * static_cast<size_t>(std::min(n_rows, kRowSlice)));
  for (int64_t t0 = 0; t0 < n_tok; t0 += kTokSlice) {
    const int64_t nt = std::min(kTokSlice, n_tok - t0);
    for (int64_t t = 0; t < nt; ++t) {
      const uint8_t* at = ab + (t0 + t) * a_stride;
      if (dup) {
        gemm_quant::nf4_duplicate_act(at, n, a_dup);
        at = a_dup;
      }
      pack_act_row<K>(plan, a_tail, at, pa + t * pb);
    }
    for (int64_t r0 = 0; r0 < n_rows; r0 += kRowSlice) {
      const int64_t nr = std::min(kRowSlice, n_rows - r0);
      const uint8_t* pw = pw_scratch;
      if (cached) {
        // One sequential pass into L2 first: the tiles then read 4 rows at a time from cache
        // (four interleaved streams from DRAM measured slower here than one stream).
        if constexpr (kCompact) {
          compact_widen(plan, cached + r0 * cb, nr, pw_scratch);
        } else {
          std::memcpy(pw_scratch, cached + r0 * pb, static_cast<size_t>(nr) * pb);
        }
      } else {
        for (int64_t r = 0; r < nr; ++r) {
          pack_weight<K>(wt, plan, w_tail, wb + (r0 + r) * w_stride, pw_scratch + r * pb);
        }
      }
      // The next row slice's bytes (cached or source) stream into L2 while these tiles compute.
      gemm_quant::SlicePrefetch next;
      if (r0 + kRowSlice < n_rows) {
        const int64_t nr_next = std::min(kRowSlice, n_rows - r0 - kRowSlice);
        const int64_t calls = (nr + kTileRows - 1) / kTileRows * ((nt + kTileToks - 1) / kTileToks);
        next = cached ? gemm_quant::SlicePrefetch(cached + (r0 + kRowSlice) * cb,
                                                  static_cast<size_t>(nr_next) * cb, calls)
                      : gemm_quant::SlicePrefetch(wb + (r0 + kRowSlice) * w_stride,
                                                  static_cast<size_t>(nr_next) * w_stride, calls);
      }
      for (int64_t r = 0; r < nr; r += kTileRows) {
        const int tr = static_cast<int>(std::min<int64_t>(kTileRows, nr - r));
        for (int64_t t = 0; t < nt; t += kTileToks) {
          next.step();
          const int tt = static_cast<int>(std::min<int64_t>(kTileToks, nt - t));
          float* ct = c + (t0 + t) * ldc + r0 + r;
          if (tr == kTileRows && tt == kTileToks) {
            tile<K, kTileRows, kTileToks>(plan, pw + r * pb, pb, pa + t * pb, pb, ct, ldc);
          } else {
            edge_tile<K>(tr, tt)(plan, pw + r * pb, pb, pa + t * pb, pb, ct, ldc);
          }
        }
      }
    }
  }
}

}  // namespace

void gemm_q4_0_q8_0(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,
                    size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {
  gemm<Kind::Q4_0>(DType::Q4_0, n, w, w_stride, n_rows, a, a_stride, n_tok, c, ldc);
}

void gemm_q4_1_q8_1(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,
                    size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {
  gemm<Kind::Q4_1>(DType::Q4_1, n, w, w_stride, n_rows, a, a_stride, n_tok, c, ldc);
}

void gemm_q8_0_q8_0(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,
                    size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {
  gemm<Kind::Q8_0>(DType::Q8_0, n, w, w_stride, n_rows, a, a_stride, n_tok, c, ldc);
}

void gemm_qi4_g32_q8_1(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,
                       size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {
  gemm<Kind::Q4_1>(DType::QI4_G32, n, w, w_stride, n_rows, a, a_stride, n_tok, c, ldc);
}

void gemm_qi4_g64_q8_1(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,
                       size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {
  gemm<Kind::Q4_1>(DType::QI4_G64, n, w, w_stride, n_rows, a, a_stride, n_tok, c, ldc);
}

void gemm_qi4_g128_q8_1(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,
                        size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {
  gemm<Kind::Q4_1>(DType::QI4_G128, n, w, w_stride, n_rows, a, a_stride, n_tok, c, ldc);
}

void gemm_nf4_q8_0(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,
                   size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {
  gemm<Kind::Q8_0>(DType::NF4, n, w, w_stride, n_rows, a, a_stride, n_tok, c, ldc);
}

void gemm_nf4dq_q8_0(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,
                     size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {
  gemm<Kind::Q8_0>(DType::NF4_DQ, n, w, w_stride, n_rows, a, a_stride, n_tok, c, ldc);
}

}  // namespace qilin::avx512
