// AVX2 tiled gemms for Q4_0 x Q8_0, Q4_1 x Q8_1 and Q8_0 x Q8_0 (no VNNI: VPMADDUBSW). Same
// packed block-per-lane layout as the AVX-512 file with 8 blocks per YMM, and a 2-row x 3-token
// microkernel. Q4 products are summed in int16 over a whole group (8 steps x 2 x 15 x 128 =
// 30720 < 2^15, so VPMADDUBSW never saturates and the int16 sums never wrap) and widened once.
// The packing loops, tiles and slicing around these micro-kernels are gemm_quant_driver.h's.
// NOTE: Q8_0 x Q8_0 uses the sign trick |w| * (a * sign(w)); it is exact because quantize_act
// never produces -128 (|q| <= 127), so neither the negation nor VPMADDUBSW's pair sum
// (<= 2 * 128 * 127) overflows.
#include <immintrin.h>

#include <cstdint>

#include "cpu/gemm_quant_driver.h"
#include "cpu/gemm_quant_impl.h"
#include "cpu/quants.h"

namespace qilin::avx2 {
namespace {

using gemm_quant::GroupPlan;
using gemm_quant::Kind;

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

// Block headers (first 4 bytes: d low, Q4_1's m / Q8_1's s high) as floats.
inline void split_headers(__m256i h, __m256* d, __m256* x) {
  // packus per 128-bit lane: [d0..3 x0..3 | d4..7 x4..7]; then gather the 64-bit quarters.
  const __m256i p =
      _mm256_packus_epi32(_mm256_and_si256(h, _mm256_set1_epi32(0xffff)), _mm256_srli_epi32(h, 16));
  const __m256i q = _mm256_permute4x64_epi64(p, _MM_SHUFFLE(3, 1, 2, 0));
  *d = _mm256_cvtph_ps(_mm256_castsi256_si128(q));
  *x = _mm256_cvtph_ps(_mm256_extracti128_si256(q, 1));
}

inline __m256i dot_bytes(__m256i ones_u8, __m256i a) {  // per-dword sums of 4 signed bytes
  return _mm256_madd_epi16(_mm256_maddubs_epi16(ones_u8, a), _mm256_set1_epi16(1));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// The AVX2 half of gemm_quant_driver.h.
struct Simd {
  static constexpr int kLanes = 8;
  static constexpr size_t kVec = 32;  // bytes per YMM
  static constexpr int kTileRows = 2;
  static constexpr int kTileToks = 3;
  static constexpr int64_t kTokSlice = 128;
  static constexpr int64_t kRowSlice = 64;
  static constexpr uint8_t kQ8Xor = 0;  // signed Q8_0 weights (the sign trick below)
  static constexpr bool kCacheWeights = false;

  using Acc = __m256;
  static Acc zero() { return _mm256_setzero_ps(); }

  // The tail group's gather indices and lane masks as vectors, built once per call.
  struct TailGather {
    int steps = 0;
    __m256i valid, first;  // all-ones lanes
    __m256i header, offset[gemm_quant::kMaxTailSteps], shift[gemm_quant::kMaxTailSteps];
  };

  static TailGather tail_gather(const GroupPlan& plan, DType type) {
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
  template <bool kQ4, uint8_t kXor, int kCorr, bool kX>
  static void pack_tail(const TailGather& g, const uint8_t* src, uint8_t* dst) {
    static_assert(kXor == 0, "AVX2 keeps Q8_0 weights signed");
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

  // 8 Q4 blocks' 16 qs bytes -> 8 steps of nibbles as bytes (qs dword k = unpacked dwords k and
  // 4+k in its low and high nibbles).
  static void pack_q4_group(const uint8_t* qs, size_t stride, uint8_t* dst) {
    __m256i r[4];
    for (int j = 0; j < 4; ++j) r[j] = load_2x128(qs + j * stride, qs + (4 + j) * stride);
    transpose4_in_lanes(r);
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    for (int k = 0; k < 4; ++k) {
      store(dst + k * kVec, _mm256_and_si256(r[k], m4));
      store(dst + (4 + k) * kVec, _mm256_and_si256(_mm256_srli_epi32(r[k], 4), m4));
    }
  }

  // 8 Q8 blocks' qs -> 8 steps; kCorr != 0: x = -kCorr * (the lane's byte sum).
  template <uint8_t kXor, int kCorr>
  static void pack_q8_group(const uint8_t* qs, size_t stride, uint8_t* dst) {
    static_assert(kXor == 0, "AVX2 keeps Q8_0 weights signed");
    __m256i v[8];
    transpose_q8_group(qs, stride, v);
    for (int k = 0; k < 8; ++k) store(dst + k * kVec, v[k]);
    if constexpr (kCorr != 0) {
      __m256i sum = _mm256_setzero_si256();
      for (int k = 0; k < 8; ++k) sum = _mm256_add_epi32(sum, dot_bytes(_mm256_set1_epi8(1), v[k]));
      store(dst + 9 * kVec, _mm256_mullo_epi32(sum, _mm256_set1_epi32(-kCorr)));
    }
  }

  // The headers of 8 consecutive blocks: d at dst, and (kX) m or s at dst + kVec.
  template <bool kX>
  static void store_headers(const uint8_t* blocks, size_t stride, uint8_t* dst) {
    const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                           _mm256_set1_epi32(static_cast<int>(stride)));
    __m256 d, x;
    split_headers(_mm256_i32gather_epi32(reinterpret_cast<const int*>(blocks), idx, 1), &d, &x);
    _mm256_storeu_ps(reinterpret_cast<float*>(dst), d);
    if constexpr (kX) _mm256_storeu_ps(reinterpret_cast<float*>(dst + kVec), x);
  }

  // One group of an R x T tile; see the AVX-512 file. Q4: int16 sums over the group, widened by
  // VPMADDWD at the end. Q8_0: each step widened to int32 at once (one VPMADDUBSW pair sum can
  // already reach 32512).
  template <Kind K, int R, int T>
  static inline __attribute__((always_inline)) void group_step(int steps, const uint8_t* w,
                                                               size_t ws, const uint8_t* a,
                                                               size_t as, __m256 (&acc)[R][T]) {
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

  template <int R, int T>
  static inline __attribute__((always_inline)) void store_tile(const __m256 (&acc)[R][T], float* c,
                                                               int64_t ldc) {
    for (int t = 0; t < T; ++t) {
      for (int r = 0; r < R; ++r) c[t * ldc + r] = hsum(acc[r][t]);
    }
  }
};

}  // namespace

QILIN_DEFINE_GEMM_QUANT(Simd)

}  // namespace qilin::avx2
