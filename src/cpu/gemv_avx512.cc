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
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <type_traits>

#include "cpu/gemv.h"
#include "cpu/quants.h"

namespace qilin::avx512 {
namespace {

constexpr int64_t kChunkBlocks = 128;  // activation blocks prepared per pass (4096 elements)
constexpr int64_t kChunkFloats = 2048;  // float activation elements converted per pass
constexpr int kRows = 4;
constexpr int64_t kPrefetchRows = 16;  // software prefetch distance  // weight rows per pass: shares activation loads, 4 independent chains

inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }
inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m512i load512(const void* p) { return _mm512_load_si512(p); }

// Four f16 fields `stride` bytes apart packed into 64 bits (general-purpose registers: no
// gather, no per-block broadcast).
// Blocks at and past cnt (a row's last, partial group) read as zero.
inline uint64_t load_f16x4(const uint8_t* p, size_t stride, int cnt) {
  uint64_t v = 0;
  for (int k = 0; k < cnt; ++k) {
    uint16_t h;
    std::memcpy(&h, p + k * stride, 2);
    v |= static_cast<uint64_t>(h) << (16 * k);
  }
  return v;
}
// Two 32-bit fields (Q4_1's adjacent d and m) `stride` bytes apart packed into 64 bits.
inline uint64_t load_u32x2(const uint8_t* p, size_t stride, int cnt) {
  uint32_t a = 0, b = 0;
  if (cnt > 0) std::memcpy(&a, p, 4);
  if (cnt > 1) std::memcpy(&b, p + stride, 4);
  return a | static_cast<uint64_t>(b) << 32;
}

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

// R rows over the nb blocks of one prepared chunk; y[r] is set (add: accumulated, for chunks
// after the first).
template <class F, int R>
void quant_rows(const uint8_t* w, size_t ws, int64_t nb, const typename F::Act& a, float* y,
                bool add, const char* pf_end) {
  __m512 acc[R];
  __m256 mins[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps(), mins[r] = _mm256_setzero_ps();
  const int64_t full = nb / 4;
  // The R rows are read side by side, which the hardware prefetchers follow poorly; one linear
  // software-prefetch cursor walks the rows kPrefetchRows ahead at the same pace instead,
  // stopping at pf_end (the end of the call's matrix: prefetching past it is wasted traffic).
  const char* pf = reinterpret_cast<const char*>(w) + kPrefetchRows * ws;
  for (int64_t g = 0; g < full; ++g) {
    if (pf < pf_end) {
      for (size_t o = 0; o < R * 4 * F::kBytes; o += 64) _mm_prefetch(pf + o, _MM_HINT_T0);
      pf += R * 4 * F::kBytes;
    }
    for (int r = 0; r < R; ++r) F::group(w + r * ws + 4 * g * F::kBytes, a, g, acc[r], mins[r]);
  }
  if (const int rem = static_cast<int>(nb % 4)) {
    // The last 1..3 blocks: missing blocks load as zero (no read past the row; their zero
    // scales add nothing, and the activation's padding is zero too).
    for (int r = 0; r < R; ++r) F::group(w + r * ws + 4 * full * F::kBytes, a, full, acc[r], mins[r], rem);
  }
  for (int r = 0; r < R; ++r) {
    const float v = F::finish(acc[r], mins[r]);
    y[r] = add ? y[r] + v : v;
  }
}

template <class F>
void gemv_quant(int64_t n, const void* w, size_t ws, int64_t n_rows, const void* a, float* y) {
  const int64_t nb = n / kQK;
  if (nb == 0) std::fill(y, y + n_rows, 0.0f);
  typename F::Act act;  // on the stack: no allocation per call
  for (int64_t c0 = 0; c0 < nb; c0 += kChunkBlocks) {
    const int64_t cn = std::min(kChunkBlocks, nb - c0);
    F::prepare(static_cast<const typename F::BY*>(a) + c0, cn, act);
    const uint8_t* wc = static_cast<const uint8_t*>(w) + c0 * F::kBytes;
    const char* end = reinterpret_cast<const char*>(wc) + n_rows * ws;
    int64_t r = 0;
    for (; r + kRows <= n_rows; r += kRows) {
      quant_rows<F, kRows>(wc + r * ws, ws, cn, act, y + r, c0 > 0, end);
    }
    for (; r < n_rows; ++r) quant_rows<F, 1>(wc + r * ws, ws, cn, act, y + r, c0 > 0, end);
  }
}

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

// R rows x n columns against an f32 activation; two accumulators per row (2R chains).
template <class L, int R>
void float_rows(const uint8_t* w, size_t ws, int64_t n, const float* a, float* y, bool add,
                const char* pf_end) {
  using T = typename L::T;
  const T* row[R];
  __m512 acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) {
    row[r] = reinterpret_cast<const T*>(w + r * ws);
    acc0[r] = _mm512_setzero_ps(), acc1[r] = _mm512_setzero_ps();
  }
  // The R rows are read side by side, which the hardware prefetchers follow poorly; one linear
  // software-prefetch cursor walks the rows kPrefetchRows ahead at the same pace instead,
  // stopping at pf_end (the end of the call's matrix: prefetching past it is wasted traffic).
  const char* pf = reinterpret_cast<const char*>(w) + kPrefetchRows * ws;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 a0 = _mm512_loadu_ps(a + i), a1 = _mm512_loadu_ps(a + i + 16);
    if (pf < pf_end) {
      for (size_t o = 0; o < R * 32 * sizeof(T); o += 64) _mm_prefetch(pf + o, _MM_HINT_T0);
      pf += R * 32 * sizeof(T);
    }
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
    for (int r = 0; r < R; ++r) acc1[r] = _mm512_fmadd_ps(L::maskload(m, row[r] + i), a0, acc1[r]);
  }
  for (int r = 0; r < R; ++r) {
    const float v = _mm512_reduce_add_ps(_mm512_add_ps(acc0[r], acc1[r]));
    y[r] = add ? y[r] + v : v;
  }
}

template <class L>
void float_chunk(int64_t n, const uint8_t* w, size_t ws, int64_t n_rows, const float* a, float* y,
                 bool add) {
  const char* end = reinterpret_cast<const char*>(w) + n_rows * ws;
  int64_t r = 0;
  for (; r + kRows <= n_rows; r += kRows) {
    float_rows<L, kRows>(w + r * ws, ws, n, a, y + r, add, end);
  }
  for (; r < n_rows; ++r) float_rows<L, 1>(w + r * ws, ws, n, a, y + r, add, end);
}

// F16 / BF16: the activation (same type as the weight) is widened to f32 once per chunk, so each
// weight vector costs one conversion instead of two.
template <class L>
void gemv_half(int64_t n, const void* w, size_t ws, int64_t n_rows, const void* a, float* y) {
  if (n == 0) std::fill(y, y + n_rows, 0.0f);
  const auto* ah = static_cast<const uint16_t*>(a);
  alignas(64) float af[kChunkFloats];
  for (int64_t c0 = 0; c0 < n; c0 += kChunkFloats) {
    const int64_t cn = std::min(kChunkFloats, n - c0);
    int64_t i = 0;
    for (; i + 16 <= cn; i += 16) _mm512_store_ps(af + i, L::load(ah + c0 + i));
    if (i < cn) {
      const __mmask16 m = static_cast<__mmask16>((1u << (cn - i)) - 1);
      _mm512_mask_storeu_ps(af + i, m, L::maskload(m, ah + c0 + i));
    }
    float_chunk<L>(cn, static_cast<const uint8_t*>(w) + c0 * 2, ws, n_rows, af, y, c0 > 0);
  }
}

}  // namespace

void gemv_q4_0_q8_0(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, float* y) {
  gemv_quant<Q4<false>>(n, w, ws, nr, a, y);
}
void gemv_q4_1_q8_1(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, float* y) {
  gemv_quant<Q4<true>>(n, w, ws, nr, a, y);
}
void gemv_q8_0_q8_0(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, float* y) {
  gemv_quant<Q8>(n, w, ws, nr, a, y);
}
void gemv_f16_f16(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, float* y) {
  gemv_half<LoadF16>(n, w, ws, nr, a, y);
}
void gemv_bf16_bf16(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, float* y) {
  gemv_half<LoadBF16>(n, w, ws, nr, a, y);
}
void gemv_f32_f32(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, float* y) {
  if (n == 0) std::fill(y, y + nr, 0.0f);
  float_chunk<LoadF32>(n, static_cast<const uint8_t*>(w), ws, nr, static_cast<const float*>(a), y,
                       false);
}

}  // namespace qilin::avx512
