// AVX-512 (F/BW/VL/DQ + VNNI) gemv kernels: one activation row against many weight rows.
// Quantized weights: the activation is prepared once per call (per chunk of kChunkBlocks) so that
// the per-row work is only unpack, VPDPBUSD, convert and one FMA per four blocks (Q4) or two
// blocks (Q8_0); four rows run together and share every activation load. Float weights: the
// activation is converted to f32 once and each weight vector costs one convert and one FMA.
// GCC 12.1/12.2's AVX-512 headers trip -W(maybe-)uninitialized inside their own intrinsics
// (GCC PR105593, fixed in 12.3); the warnings point into the header, not at this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// The chunking, row blocks, prefetch cursor and entry points are gemv_driver.h's.
#include <immintrin.h>

#include <cstddef>
#include <cstring>
#include <type_traits>

#include "cpu/gemv.h"
#include "cpu/gemv_driver.h"
#include "cpu/quants.h"

namespace qilin::avx512 {
namespace {

using gemv_driver::kChunkBlocks;
using gemv_driver::kPrefetchRows;
using gemv_driver::load_f16x4;
using gemv_driver::load_u32x2;
using gemv_driver::prefetch_step;

inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }
inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m512i load512(const void* p) { return _mm512_load_si512(p); }

// ---- Q4_0 / Q4_1 weights: four blocks per ZMM ----
// The weight's 4 x 16 nibble bytes are loaded as [qsA qsB qsC qsD]; the low nibbles are then
// elements 0..15 of each block and the high nibbles elements 16..31. The activation is stored in
// that order once per call (lo: first halves, hi: second halves), so no per-row shuffle is
// needed and dword lane l belongs to block l / 4.
struct ActQ4 {
  alignas(64) int8_t lo[kChunkBlocks / 4][64];
  alignas(64) int8_t hi[kChunkBlocks / 4][64];
  alignas(64) int32_t corr[kChunkBlocks / 4][16];  // Q4_0: 8 * sum of the bytes of each lane
  alignas(64) float s[kChunkBlocks * 2];           // Q4_0: d per block; Q4_1: d, s per block
};

template <bool kMin>  // false: Q4_0 x Q8_0; true: Q4_1 x Q8_1
struct Q4 {
  using BX = std::conditional_t<kMin, BlockQ4_1, BlockQ4_0>;
  using BY = std::conditional_t<kMin, BlockQ8_1, BlockQ8_0>;
  using Act = ActQ4;
  static constexpr size_t kBytes = sizeof(BX);
  static constexpr size_t kQs = offsetof(BX, qs);

  // nb <= kChunkBlocks; the last group is padded with zero blocks.
  static void prepare(const BY* y, int64_t nb, Act& a) {
    for (int64_t g = 0; g < (nb + 3) / 4; ++g) {
      for (int k = 0; k < 4; ++k) {
        const int64_t b = 4 * g + k;
        const bool real = b < nb;
        if (real) {
          std::memcpy(a.lo[g] + 16 * k, y[b].qs, 16);
          std::memcpy(a.hi[g] + 16 * k, y[b].qs + 16, 16);
        } else {
          std::memset(a.lo[g] + 16 * k, 0, 16);
          std::memset(a.hi[g] + 16 * k, 0, 16);
        }
        if constexpr (kMin) {
          a.s[2 * b] = real ? _cvtsh_ss(y[b].d) : 0.0f;
          a.s[2 * b + 1] = real ? _cvtsh_ss(y[b].s) : 0.0f;
        } else {
          a.s[b] = real ? _cvtsh_ss(y[b].d) : 0.0f;
        }
      }
      if constexpr (!kMin) {
        // (q - 8) . y = q . y - 8 * sum(y): the second term is the same for every weight row.
        const __m512i k8 = _mm512_set1_epi8(8);
        const __m512i c = _mm512_dpbusd_epi32(_mm512_setzero_si512(), k8, load512(a.lo[g]));
        _mm512_store_si512(a.corr[g], _mm512_dpbusd_epi32(c, k8, load512(a.hi[g])));
      }
    }
  }

  // Blocks 4g..4g+3 of one row (p points at block 4g) into acc (and the minimum terms, Q4_1).
  static void group(const uint8_t* p, const Act& a, int64_t g, __m512& acc, __m256& mins,
                    int cnt = 4) {
    // Branches on cnt vanish in the full-group loop (cnt == 4 is a constant there).
    __m512i v = _mm512_castsi128_si512(load128(p + kQs));
    if (cnt > 1) v = _mm512_inserti32x4(v, load128(p + kBytes + kQs), 1);
    if (cnt > 2) v = _mm512_inserti32x4(v, load128(p + 2 * kBytes + kQs), 2);
    if (cnt > 3) v = _mm512_inserti32x4(v, load128(p + 3 * kBytes + kQs), 3);
    if (cnt < 4) v = _mm512_maskz_mov_epi32(static_cast<__mmask16>((1u << (4 * cnt)) - 1), v);
    const __m512i m = _mm512_set1_epi8(0x0f);
    __m512i dp = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(v, m),
                                     load512(a.lo[g]));
    dp = _mm512_dpbusd_epi32(dp, _mm512_and_si512(_mm512_srli_epi16(v, 4), m), load512(a.hi[g]));
    __m512 sc;
    if constexpr (kMin) {
      // [d0 m0 d1 m1 | d2 m2 d3 m3] x [da0 sa0 ...]: even lanes scale, odd lanes minimum terms.
      const __m256 dm = _mm256_mul_ps(
          _mm256_cvtph_ps(_mm_set_epi64x(static_cast<long long>(load_u32x2(p + 2 * kBytes, kBytes, cnt - 2)),
                                         static_cast<long long>(load_u32x2(p, kBytes, cnt)))),
          _mm256_load_ps(a.s + 8 * g));
      mins = _mm256_add_ps(mins, dm);
      sc = _mm512_permutexvar_ps(
          _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6),
          _mm512_zextps256_ps512(dm));
    } else {
      dp = _mm512_sub_epi32(dp, load512(a.corr[g]));
      const __m128 d = _mm_mul_ps(
          _mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<long long>(load_f16x4(p, kBytes, cnt)))),
          _mm_load_ps(a.s + 4 * g));
      sc = _mm512_permutexvar_ps(
          _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
          _mm512_zextps128_ps512(d));
    }
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), sc, acc);
  }

  static float finish(__m512 acc, __m256 mins) {
    float s = _mm512_reduce_add_ps(acc);
    if constexpr (kMin) s += _mm512_mask_reduce_add_ps(0xaa, _mm512_zextps256_ps512(mins));
    return s;
  }
};

// ---- Q8_0 weights: two blocks per ZMM, four blocks per step ----
struct ActQ8 {
  alignas(64) int8_t q[kChunkBlocks][32];
  alignas(64) int32_t corr[kChunkBlocks / 2][16];  // 128 * sum of the bytes of each lane
  alignas(64) float s[kChunkBlocks];
};

struct Q8 {
  using BX = BlockQ8_0;
  using BY = BlockQ8_0;
  using Act = ActQ8;
  static constexpr size_t kBytes = sizeof(BX);
  static constexpr size_t kQs = offsetof(BX, qs);

  static void prepare(const BY* y, int64_t nb, Act& a) {
    const int64_t padded = (nb + 3) / 4 * 4;
    for (int64_t b = 0; b < padded; ++b) {
      if (b < nb) {
        std::memcpy(a.q[b], y[b].qs, 32);
        a.s[b] = _cvtsh_ss(y[b].d);
      } else {
        std::memset(a.q[b], 0, 32);
        a.s[b] = 0.0f;
      }
    }
    // x . y = (x + 128) . y - 128 * sum(y) lets VPDPBUSD (u8 x s8) take signed x; the second
    // term is the same for every weight row.
    const __m512i k80 = _mm512_set1_epi8(static_cast<char>(0x80));
    for (int64_t h = 0; h < padded / 2; ++h) {
      _mm512_store_si512(a.corr[h],
                         _mm512_dpbusd_epi32(_mm512_setzero_si512(), k80, load512(a.q[2 * h])));
    }
  }

  static void group(const uint8_t* p, const Act& a, int64_t g, __m512& acc, __m256&,
                    int cnt = 4) {
    const __m512i k80 = _mm512_set1_epi8(static_cast<char>(0x80));
    // Branches on cnt vanish in the full-group loop (cnt == 4 is a constant there); missing
    // blocks are zero.
    __m512i x01 = _mm512_zextsi256_si512(load256(p + kQs));
    if (cnt > 1) x01 = _mm512_inserti64x4(x01, load256(p + kBytes + kQs), 1);
    __m512i x23 = _mm512_setzero_si512();
    if (cnt > 2) x23 = _mm512_zextsi256_si512(load256(p + 2 * kBytes + kQs));
    if (cnt > 3) x23 = _mm512_inserti64x4(x23, load256(p + 3 * kBytes + kQs), 1);
    const __m512i dp01 =
        _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(x01, k80),
                                             load512(a.q[4 * g])),
                         load512(a.corr[2 * g]));
    const __m512i dp23 =
        _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(x23, k80),
                                             load512(a.q[4 * g + 2])),
                         load512(a.corr[2 * g + 1]));
    const __m512 d = _mm512_zextps128_ps512(
        _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<long long>(load_f16x4(p, kBytes, cnt)))),
                   _mm_load_ps(a.s + 4 * g)));
    const __m512i lo = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp01), _mm512_permutexvar_ps(lo, d), acc);
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp23),
                          _mm512_permutexvar_ps(_mm512_add_epi32(lo, _mm512_set1_epi32(2)), d),
                          acc);
  }

  static float finish(__m512 acc, __m256) { return _mm512_reduce_add_ps(acc); }
};

// ---- Float weights ----
struct LoadF16 {
  using T = uint16_t;
  static __m512 load(const T* p) { return _mm512_cvtph_ps(load256(p)); }
  static __m512 maskload(__mmask16 m, const T* p) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
};
struct LoadBF16 {
  using T = uint16_t;
  static __m512 widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static __m512 load(const T* p) { return widen(load256(p)); }
  static __m512 maskload(__mmask16 m, const T* p) { return widen(_mm256_maskz_loadu_epi16(m, p)); }
};
struct LoadF32 {
  using T = float;
  static __m512 load(const T* p) { return _mm512_loadu_ps(p); }
  static __m512 maskload(__mmask16 m, const T* p) { return _mm512_maskz_loadu_ps(m, p); }
};

// The AVX-512 half of gemv_driver.h.
struct Simd {
  using Acc = __m512;
  static Acc zero() { return _mm512_setzero_ps(); }
  static constexpr bool kPrefetch = true;
  using Q4_0 = Q4<false>;
  using Q4_1 = Q4<true>;
  using Q8_0 = Q8;
  using F16 = LoadF16;
  using BF16 = LoadBF16;
  using F32 = LoadF32;

  // R rows x n columns against an f32 activation; two accumulators per row (2R chains), one
  // masked step for n % 16, a prefetch cursor kPrefetchRows rows ahead (gemv_driver.h).
  template <class L, int R>
  static void float_rows(const uint8_t* w, size_t ws, int64_t n, const float* a, float* y,
                         bool add, const char* pf_end) {
    using T = typename L::T;
    const T* row[R];
    __m512 acc0[R], acc1[R];
    for (int r = 0; r < R; ++r) {
      row[r] = reinterpret_cast<const T*>(w + r * ws);
      acc0[r] = _mm512_setzero_ps(), acc1[r] = _mm512_setzero_ps();
    }
    const char* pf = reinterpret_cast<const char*>(w) + kPrefetchRows * ws;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
      const __m512 a0 = _mm512_loadu_ps(a + i), a1 = _mm512_loadu_ps(a + i + 16);
      prefetch_step<R * 32 * sizeof(T)>(pf, pf_end);
      for (int r = 0; r < R; ++r) {
        acc0[r] = _mm512_fmadd_ps(L::load(row[r] + i), a0, acc0[r]);
        acc1[r] = _mm512_fmadd_ps(L::load(row[r] + i + 16), a1, acc1[r]);
      }
    }
    for (; i + 16 <= n; i += 16) {
      const __m512 a0 = _mm512_loadu_ps(a + i);
      for (int r = 0; r < R; ++r) acc0[r] = _mm512_fmadd_ps(L::load(row[r] + i), a0, acc0[r]);
    }
    if (i < n) {  // masked-off lanes load as zero and add nothing
      const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
      const __m512 a0 = _mm512_maskz_loadu_ps(m, a + i);
      for (int r = 0; r < R; ++r) {
        acc1[r] = _mm512_fmadd_ps(L::maskload(m, row[r] + i), a0, acc1[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      const float v = _mm512_reduce_add_ps(_mm512_add_ps(acc0[r], acc1[r]));
      y[r] = add ? y[r] + v : v;
    }
  }

  // cn 16-bit activation elements to f32 (16 at a time, then one masked step).
  template <class L>
  static void widen(const uint16_t* src, int64_t cn, float* dst) {
    int64_t i = 0;
    for (; i + 16 <= cn; i += 16) _mm512_store_ps(dst + i, L::load(src + i));
    if (i < cn) {
      const __mmask16 m = static_cast<__mmask16>((1u << (cn - i)) - 1);
      _mm512_mask_storeu_ps(dst + i, m, L::maskload(m, src + i));
    }
  }
};

}  // namespace

QILIN_DEFINE_GEMV(Simd)

}  // namespace qilin::avx512
