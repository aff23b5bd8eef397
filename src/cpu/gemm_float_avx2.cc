// AVX2 tiled gemm for F16 / BF16 / F32 weights: a 3-row x 4-token register tile (12 YMM
// accumulators), weights widened to f32 once per 8-element step and used for 4 tokens, and a
// 4-token block of activations widened to f32 once into a stack buffer and used for every row.
// The tile loops, edge tiles and driver over these operations are gemm_float_driver.h's.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "cpu/gemm_float_driver.h"
#include "cpu/gemm_float_impl.h"

namespace qilin::avx2 {
namespace {

// Loaders that widen 8 stored elements to f32. Tails (< 8 elements) go through a zero-padded
// copy (Simd::partial): AVX2 has no masked 16-bit load, and the tail is rare (model rows are
// multiples of 32).
struct F16 {
  using T = uint16_t;
  static __m256 load(const T* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
};
struct BF16 {  // bf16 is the top half of an f32: widen by shifting
  using T = uint16_t;
  static __m256 load(const T* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
};
struct F32 {
  using T = float;
  static __m256 load(const T* p) { return _mm256_loadu_ps(p); }
};

// The AVX2 half of gemm_float_driver.h.
struct Simd {
  // Register tile: 3 x 4 accumulators + 3 widened weights + 1 activation = all 16 YMM. (4 x 3
  // needs 17 and GCC spills an accumulator through the stack every step: ~60% of the speed;
  // 2 x 6 converts fewer weights but is ~12% slower on Zen 5.)
  static constexpr int kRows = 3;  // <= 4: one reduce4 per token
  static constexpr int kToks = 4;
  // Activation elements widened per pass: 4 x 1536 floats = 24 KiB (fits L1 beside the weights).
  static constexpr int64_t kChunk = 1536;
  static constexpr int kLanes = 8;
  static constexpr size_t kAlign = 32;
  using F16 = avx2::F16;
  using BF16 = avx2::BF16;
  using F32 = avx2::F32;

  using V = __m256;
  static V zero() { return _mm256_setzero_ps(); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V load_x(const float* p) { return _mm256_load_ps(p); }
  static void store_x(float* p, V v) { _mm256_store_ps(p, v); }

  template <class W>
  static V partial(const typename W::T* p, int64_t rem) {
    typename W::T tmp[8] = {};
    std::memcpy(tmp, p, static_cast<size_t>(rem) * sizeof(tmp[0]));
    return W::load(tmp);
  }

  // Horizontal sums of four vectors at once: [sum a, sum b, sum c, sum d].
  static __m128 reduce4(V a, V b, V c, V d) {
    // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] and the same for c, d
    const __m256 ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    const __m256 cd = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
    // per lane: [a, b, c, d] partial sums
    const __m256 abcd = _mm256_add_ps(
        _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(ab), _mm256_castps_pd(cd))),
        _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(ab), _mm256_castps_pd(cd))));
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
  }

  template <int MR>
  static void store_sums(__m128 s, float* ct, bool add) {
    alignas(16) float sums[4];
    _mm_store_ps(sums, s);
    for (int r = 0; r < MR; ++r) ct[r] = add ? ct[r] + sums[r] : sums[r];
  }
};

}  // namespace

QILIN_DEFINE_GEMM_FLOAT(Simd)

}  // namespace qilin::avx2
