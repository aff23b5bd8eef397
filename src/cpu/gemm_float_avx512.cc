// AVX-512 tiled gemm for F16 / BF16 / F32 weights: a 4-row x 6-token register tile (24 ZMM
// accumulators), weights widened to f32 once per 16-element step and used for 6 tokens, and a
// 6-token block of activations widened to f32 once into a stack buffer and used for every row.
// The tile loops, edge tiles and driver over these operations are gemm_float_driver.h's.
// GCC 12.1/12.2's AVX-512 headers trip -W(maybe-)uninitialized inside their own intrinsics
// (GCC PR105593, fixed in 12.3); the warnings point into the header, not at this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "cpu/gemm_float_driver.h"
#include "cpu/gemm_float_impl.h"

namespace qilin::avx512 {
namespace {

// Loaders that widen 16 stored elements to f32; the masked forms read zeros past the mask.
struct F16 {
  using T = uint16_t;
  static __m512 load(const T* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static __m512 maskload(__mmask16 m, const T* p) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
};
struct BF16 {  // bf16 is the top half of an f32: widen by shifting (no AVX512_BF16 needed)
  using T = uint16_t;
  static __m512 widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static __m512 load(const T* p) {
    return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static __m512 maskload(__mmask16 m, const T* p) { return widen(_mm256_maskz_loadu_epi16(m, p)); }
};
struct F32 {
  using T = float;
  static __m512 load(const T* p) { return _mm512_loadu_ps(p); }
  static __m512 maskload(__mmask16 m, const T* p) { return _mm512_maskz_loadu_ps(m, p); }
};

// The AVX-512 half of gemm_float_driver.h.
struct Simd {
  // Register tile: 4 x 6 accumulators + 4 widened weights + 1 activation = 29 of 32 ZMM, 4
  // conversions per 24 FMAs. Measured on Zen 5 against 3 x 8 and 2 x 12: 4 x 6 is fastest.
  static constexpr int kRows = 4;  // <= 4: one reduce4 per token
  static constexpr int kToks = 6;
  // Activation elements widened per pass: 6 x 1024 floats = 24 KiB, so the buffer stays in L1
  // beside the streaming weights.
  static constexpr int64_t kChunk = 1024;
  static constexpr int kLanes = 16;
  static constexpr size_t kAlign = 64;
  using F16 = avx512::F16;
  using BF16 = avx512::BF16;
  using F32 = avx512::F32;

  using V = __m512;
  static V zero() { return _mm512_setzero_ps(); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V load_x(const float* p) { return _mm512_load_ps(p); }
  static void store_x(float* p, V v) { _mm512_store_ps(p, v); }

  template <class W>
  static V partial(const typename W::T* p, int64_t rem) {
    return W::maskload(static_cast<__mmask16>((1u << rem) - 1), p);
  }

  // Horizontal sums of four vectors at once: [sum a, sum b, sum c, sum d]. Interleaving pairs
  // before adding costs ~9 instructions for four sums instead of ~8 each.
  static __m128 reduce4(V a, V b, V c, V d) {
    // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] and the same for c, d
    const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    // per lane: [a, b, c, d] partial sums
    const __m512 abcd = _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))),
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))));
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(abcd), _mm512_extractf32x8_ps(abcd, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  }

  template <int MR>
  static void store_sums(__m128 s, float* ct, bool add) {
    const __mmask8 m = static_cast<__mmask8>((1u << MR) - 1);
    if (add) s = _mm_add_ps(s, _mm_maskz_loadu_ps(m, ct));
    _mm_mask_storeu_ps(ct, m, s);
  }
};

}  // namespace

QILIN_DEFINE_GEMM_FLOAT(Simd)

}  // namespace qilin::avx512
