// AVX2 tiled gemms for Q4_0 x Q8_0, Q4_1 x Q8_1 and Q8_0 x Q8_0 (no VNNI: VPMADDUBSW). Same
// packed block-per-lane layout as the AVX-512 file with 8 blocks per YMM, and a 2-row x 3-token
// microkernel. Q4 products are summed in int16 over a whole group (8 steps x 2 x 15 x 128 =
// 30720 < 2^15, so VPMADDUBSW never saturates and the int16 sums never wrap) and widened once.
// NOTE: Q8_0 x Q8_0 uses the sign trick |w| * (a * sign(w)); it is exact because quantize_act
// never produces -128 (|q| <= 127), so neither the negation nor VPMADDUBSW's pair sum
// (<= 2 * 128 * 127) overflows.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/gemm_quant_impl.h"
#include "cpu/quants.h"

namespace qilin::avx2 {
namespace {

using gemm_quant::GroupPlan;

constexpr int kLanes = 8;
constexpr size_t kVec = 32;  // bytes per YMM
constexpr int kTileRows = 2;
constexpr int kTileToks = 3;
constexpr int64_t kTokSlice = 128;
constexpr int64_t kRowSlice = 64;

enum class Kind { Q4_0, Q4_1, Q8_0 };

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
  static constexpr int kCorr = 0;  // signed weights: no offset to undo
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

inline __m256i load(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
inline void store(uint8_t* p, __m256i v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
inline __m128i load128(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}
// 16 bytes at lo into the low 128-bit lane, 16 bytes at hi into the high one.
inline __m256i load_2x128(const uint8_t* lo, const uint8_t* hi) {
  return _mm256_inserti128_si256(_mm256_castsi128_si256(load128(lo)), load128(hi), 1);
}

// Transposes 4x4 dwords within each 128-bit lane: afterwards r[k] lane i holds dword k of
// every input's lane i, in input order.
inline void transpose4_in_lanes(__m256i* r) {
  const __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]), t1 = _mm256_unpackhi_epi32(r[0], r[1]);
  const __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]), t3 = _mm256_unpackhi_epi32(r[2], r[3]);
  r[0] = _mm256_unpacklo_epi64(t0, t2);
  r[1] = _mm256_unpackhi_epi64(t0, t2);
  r[2] = _mm256_unpacklo_epi64(t1, t3);
  r[3] = _mm256_unpackhi_epi64(t1, t3);
}

// 8 blocks' 32 qs bytes (block b at qs + b * stride) -> out[k] lane b = dword k of block b.
// Input j holds blocks j and 4+j in its 128-bit lanes, so the result is in natural order.
inline void transpose_q8_group(const uint8_t* qs, size_t stride, __m256i* out) {
  __m256i lo[4], hi[4];
  for (int j = 0; j < 4; ++j) {
    lo[j] = load_2x128(qs + j * stride, qs + (4 + j) * stride);
    hi[j] = load_2x128(qs + j * stride + 16, qs + (4 + j) * stride + 16);
  }
  transpose4_in_lanes(lo);
  transpose4_in_lanes(hi);
  for (int k = 0; k < 4; ++k) {
    out[k] = lo[k];
    out[4 + k] = hi[k];
  }
}

// 8 Q4 blocks' 16 qs bytes -> 8 steps of nibbles as bytes (qs dword k = unpacked dwords k and
// 4+k in its low and high nibbles).
inline void pack_q4_group(const uint8_t* qs, size_t stride, uint8_t* dst) {
  __m256i r[4];
  for (int j = 0; j < 4; ++j) r[j] = load_2x128(qs + j * stride, qs + (4 + j) * stride);
  transpose4_in_lanes(r);
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  for (int k = 0; k < 4; ++k) {
    store(dst + k * kVec, _mm256_and_si256(r[k], m4));
    store(dst + (4 + k) * kVec, _mm256_and_si256(_mm256_srli_epi32(r[k], 4), m4));
  }
}

// Block headers (first 4 bytes: d low, Q4_1's m / Q8_1's s high) as floats.
inline void split_headers(__m256i h, __m256* d, __m256* x) {
  // packus per 128-bit lane: [d0..3 x0..3 | d4..7 x4..7]; then gather the 64-bit quarters.
  const __m256i p =
      _mm256_packus_epi32(_mm256_and_si256(h, _mm256_set1_epi32(0xffff)), _mm256_srli_epi32(h, 16));
  const __m256i q = _mm256_permute4x64_epi64(p, _MM_SHUFFLE(3, 1, 2, 0));
  *d = _mm256_cvtph_ps(_mm256_castsi256_si128(q));
  *x = _mm256_cvtph_ps(_mm256_extracti128_si256(q, 1));
}

// The headers of 8 consecutive blocks.
inline void load_headers(const uint8_t* blocks, size_t stride, __m256* d, __m256* x) {
  const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                         _mm256_set1_epi32(static_cast<int>(stride)));
  split_headers(_mm256_i32gather_epi32(reinterpret_cast<const int*>(blocks), idx, 1), d, x);
}

inline __m256i dot_bytes(__m256i ones_u8, __m256i a) {  // per-dword sums of 4 signed bytes
  return _mm256_madd_epi16(_mm256_maddubs_epi16(ones_u8, a), _mm256_set1_epi16(1));
}

// The tail group's gather indices and lane masks as vectors, built once per call.
struct TailGather {
  int steps = 0;
  __m256i valid, first;  // all-ones lanes
  __m256i header, offset[gemm_quant::kMaxTailSteps], shift[gemm_quant::kMaxTailSteps];
};

TailGather tail_gather(const GroupPlan& plan, DType type) {
  const gemm_quant::TailLayout t = gemm_quant::plan_tail(plan, type);
  TailGather g;
  g.steps = plan.tail_steps;
  alignas(32) int32_t valid[kLanes], first[kLanes];
  for (int lane = 0; lane < kLanes; ++lane) {
    valid[lane] = t.valid[lane] ? -1 : 0;
    first[lane] = t.first[lane] ? -1 : 0;
  }
  g.valid = _mm256_load_si256(reinterpret_cast<const __m256i*>(valid));
  g.first = _mm256_load_si256(reinterpret_cast<const __m256i*>(first));
  g.header = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.header));
  for (int k = 0; k < gemm_quant::kMaxTailSteps; ++k) {
    g.offset[k] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.offset[k]));
    g.shift[k] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.shift[k]));
  }
  return g;
}

// Packs a tail group (src = its first block) with masked gathers: padding lanes read nothing
// and get zero scales. kCorr != 0 writes the activation correction into x; kX writes the
// header's second f16 (m or s) in first lanes.
template <bool kQ4, int kCorr, bool kX>
void pack_tail(const TailGather& g, const uint8_t* src, uint8_t* dst) {
  const auto* base = reinterpret_cast<const int*>(src);
  const __m256i zero = _mm256_setzero_si256();
  __m256i sum = zero;
  for (int k = 0; k < g.steps; ++k) {
    __m256i v = _mm256_mask_i32gather_epi32(zero, base, g.offset[k], g.valid, 1);
    if constexpr (kQ4)
      v = _mm256_and_si256(_mm256_srlv_epi32(v, g.shift[k]), _mm256_set1_epi8(0x0f));
    store(dst + k * kVec, v);
    if constexpr (kCorr != 0) sum = _mm256_add_epi32(sum, dot_bytes(_mm256_set1_epi8(1), v));
  }
  __m256 d, x;
  split_headers(_mm256_mask_i32gather_epi32(zero, base, g.header, g.valid, 1), &d, &x);
  uint8_t* xp = dst + (g.steps + 1) * kVec;
  _mm256_storeu_ps(reinterpret_cast<float*>(dst + g.steps * kVec), d);
  if constexpr (kCorr != 0) store(xp, _mm256_mullo_epi32(sum, _mm256_set1_epi32(-kCorr)));
  if constexpr (kX) {
    _mm256_storeu_ps(reinterpret_cast<float*>(xp), _mm256_and_ps(x, _mm256_castsi256_ps(g.first)));
  }
}

template <Kind K>
void pack_weight_row(const GroupPlan& plan, const TailGather& tail, const uint8_t* src,
                     uint8_t* dst) {
  using T = Traits<K>;
  for (int64_t g = 0; g < plan.n_full; ++g, src += kLanes * T::kWBytes, dst += plan.full_bytes) {
    if constexpr (K == Kind::Q8_0) {
      __m256i v[8];
      transpose_q8_group(src + T::kWQs, T::kWBytes, v);
      for (int k = 0; k < 8; ++k) store(dst + k * kVec, v[k]);
    } else {
      pack_q4_group(src + T::kWQs, T::kWBytes, dst);
    }
    __m256 d, x;
    load_headers(src, T::kWBytes, &d, &x);
    _mm256_storeu_ps(reinterpret_cast<float*>(dst + 8 * kVec), d);
    // x is only read for Q4_1 (m); the other types leave it unwritten.
    if constexpr (K == Kind::Q4_1) _mm256_storeu_ps(reinterpret_cast<float*>(dst + 9 * kVec), x);
  }
  if (plan.tail_steps > 0) pack_tail<K != Kind::Q8_0, 0, K == Kind::Q4_1>(tail, src, dst);
}

// A weight row of type wt (Tr::kW, or a 4-bit type run as K) into the packed layout.
template <Kind K>
void pack_weight(DType wt, const GroupPlan& plan, const TailGather& tail, const uint8_t* src,
                 uint8_t* dst) {
  if (wt == Traits<K>::kW) return pack_weight_row<K>(plan, tail, src, dst);
  const int64_t nk = (plan.n_full * kLanes + plan.tail_real) * kQK;
  const int64_t n = nk == gemm_quant::int4_kernel_len(wt, nk) ? nk : nk / 2;
  gemm_quant::pack_int4_row(plan, wt, K == Kind::Q8_0 ? 0 : 0, src, n, dst);
}

template <Kind K>
void pack_act_row(const GroupPlan& plan, const TailGather& tail, const uint8_t* src, uint8_t* dst) {
  using T = Traits<K>;
  for (int64_t g = 0; g < plan.n_full; ++g, src += kLanes * T::kABytes, dst += plan.full_bytes) {
    __m256i v[8];
    transpose_q8_group(src + T::kAQs, T::kABytes, v);
    for (int k = 0; k < 8; ++k) store(dst + k * kVec, v[k]);
    __m256 d, x;
    load_headers(src, T::kABytes, &d, &x);
    _mm256_storeu_ps(reinterpret_cast<float*>(dst + 8 * kVec), d);
    if constexpr (K == Kind::Q4_1) {
      _mm256_storeu_ps(reinterpret_cast<float*>(dst + 9 * kVec), x);  // s
    } else if constexpr (T::kCorr != 0) {
      __m256i sum = _mm256_setzero_si256();
      for (int k = 0; k < 8; ++k) sum = _mm256_add_epi32(sum, dot_bytes(_mm256_set1_epi8(1), v[k]));
      store(dst + 9 * kVec, _mm256_mullo_epi32(sum, _mm256_set1_epi32(-T::kCorr)));
    }
  }
  if (plan.tail_steps > 0) pack_tail<false, T::kCorr, K == Kind::Q4_1>(tail, src, dst);
}

// One group of an R x T tile; see the AVX-512 file. Q4: int16 sums over the group, widened by
// VPMADDWD at the end. Q8_0: each step widened to int32 at once (one VPMADDUBSW pair sum can
// already reach 32512).
template <Kind K, int R, int T>
inline __attribute__((always_inline)) void group_step(int steps, const uint8_t* w, size_t ws,
                                                      const uint8_t* a, size_t as,
                                                      __m256 (&acc)[R][T]) {
  const __m256i ones16 = _mm256_set1_epi16(1);
  __m256i dot[R][T];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) dot[r][t] = _mm256_setzero_si256();
  }
  for (int k = 0; k < steps; ++k) {
    __m256i wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load(w + r * ws + k * kVec);
    if constexpr (K == Kind::Q8_0) {
      __m256i wabs[R];
      for (int r = 0; r < R; ++r) wabs[r] = _mm256_abs_epi8(wv[r]);
      for (int t = 0; t < T; ++t) {
        const __m256i av = load(a + t * as + k * kVec);
        for (int r = 0; r < R; ++r) {
          const __m256i p = _mm256_maddubs_epi16(wabs[r], _mm256_sign_epi8(av, wv[r]));
          dot[r][t] = _mm256_add_epi32(dot[r][t], _mm256_madd_epi16(p, ones16));
        }
      }
    } else {
      for (int t = 0; t < T; ++t) {
        const __m256i av = load(a + t * as + k * kVec);
        for (int r = 0; r < R; ++r) {
          dot[r][t] = _mm256_add_epi16(dot[r][t], _mm256_maddubs_epi16(wv[r], av));
        }
      }
    }
  }
  __m256 dw[R];
  for (int r = 0; r < R; ++r)
    dw[r] = _mm256_loadu_ps(reinterpret_cast<const float*>(w + r * ws + steps * kVec));
  for (int t = 0; t < T; ++t) {
    const __m256 da = _mm256_loadu_ps(reinterpret_cast<const float*>(a + t * as + steps * kVec));
    __m256i corr = _mm256_setzero_si256();
    if constexpr (K == Kind::Q4_0) corr = load(a + t * as + (steps + 1) * kVec);
    for (int r = 0; r < R; ++r) {
      __m256i d32 = dot[r][t];
      if constexpr (K != Kind::Q8_0) d32 = _mm256_madd_epi16(d32, ones16);
      if constexpr (K == Kind::Q4_0) d32 = _mm256_add_epi32(d32, corr);
      acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d32), _mm256_mul_ps(dw[r], da), acc[r][t]);
    }
  }
  if constexpr (K == Kind::Q4_1) {
    for (int t = 0; t < T; ++t) {
      const __m256 s =
          _mm256_loadu_ps(reinterpret_cast<const float*>(a + t * as + (steps + 1) * kVec));
      for (int r = 0; r < R; ++r) {
        const __m256 m =
            _mm256_loadu_ps(reinterpret_cast<const float*>(w + r * ws + (steps + 1) * kVec));
        acc[r][t] = _mm256_fmadd_ps(m, s, acc[r][t]);
      }
    }
  }
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

template <Kind K, int R, int T>
void tile(const GroupPlan& plan, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* c,
          int64_t ldc) {
  __m256 acc[R][T];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  }
  for (int64_t g = 0; g < plan.n_full; ++g, w += plan.full_bytes, a += plan.full_bytes) {
    group_step<K, R, T>(8, w, ws, a, as, acc);
  }
  if (plan.tail_steps > 0) group_step<K, R, T>(plan.tail_steps, w, ws, a, as, acc);
  for (int t = 0; t < T; ++t) {
    for (int r = 0; r < R; ++r) c[t * ldc + r] = hsum(acc[r][t]);
  }
}

using TileFn = void (*)(const GroupPlan&, const uint8_t*, size_t, const uint8_t*, size_t, float*,
                        int64_t);

template <Kind K>
TileFn edge_tile(int rows, int toks) {
  static_assert(kTileRows == 2 && kTileToks == 3, "update the table");
  static constexpr TileFn kTable[kTileRows][kTileToks] = {
      {tile<K, 1, 1>, tile<K, 1, 2>, tile<K, 1, 3>},
      {tile<K, 2, 1>, tile<K, 2, 2>, tile<K, 2, 3>},
  };
  return kTable[rows - 1][toks - 1];
}

// Token slices outermost, as in the AVX-512 file.
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
  uint8_t* a_dup = dup ? scratch(2, row_bytes(Tr::kA, 2 * n)) : nullptr;
  uint8_t* pa = scratch(0, pb * static_cast<size_t>(std::min(n_tok, kTokSlice)));
  uint8_t* pw = scratch(1, pb * static_cast<size_t>(std::min(n_rows, kRowSlice)));
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
      for (int64_t r = 0; r < nr; ++r) {
        pack_weight<K>(wt, plan, w_tail, wb + (r0 + r) * w_stride, pw + r * pb);
      }
      // The next row slice's source rows stream into L2 while these tiles compute.
      gemm_quant::SlicePrefetch next;
      if (r0 + kRowSlice < n_rows) {
        const int64_t nr_next = std::min(kRowSlice, n_rows - r0 - kRowSlice);
        next = gemm_quant::SlicePrefetch(wb + (r0 + kRowSlice) * w_stride,
                                         static_cast<size_t>(nr_next) * w_stride,
                                         (nr + kTileRows - 1) / kTileRows *
                                             ((nt + kTileToks - 1) / kTileToks));
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

}  // namespace qilin::avx2
