// AVX2 kernels for Qilin's 4-bit formats (quants_int4.h): QI4 codes are unsigned, so they dot
// the Q8_1 activations with maddubs directly; NF4 codes become int16 through two 16-byte
// lookups (low and high bytes of kNf4Int) interleaved with the sign-extended activations, then
// pmaddwd. Per 32-element block the integer sum is exact (< 2^24) before its f32 scaling.
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "core/fp16.h"
#include "cpu/quants.h"
#include "cpu/quants_int4.h"
#include "cpu/quants_int4_driver.h"

namespace qilin::avx2 {
namespace {

inline float f16(uint16_t h) { return _cvtsh_ss(h); }
inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// u8 (codes 0..15) x s8 in 8 i32 lanes; pair sums stay far below maddubs' saturation.
inline __m256i dot_u4s8(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

// Code bytes 0..15 (any order within each 128-bit lane) -> NF4 int16 values dotted with the
// activation bytes at the same positions: the unpacks interleave code and activation alike.
inline __m256i dot_nf4(__m256i idx, __m256i a) {
  const __m256i tab_lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kNf4Bytes.lo)));
  const __m256i tab_hi = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kNf4Bytes.hi)));
  const __m256i lo = _mm256_shuffle_epi8(tab_lo, idx);
  const __m256i hi = _mm256_shuffle_epi8(tab_hi, idx);
  const __m256i sgn = _mm256_cmpgt_epi8(_mm256_setzero_si256(), a);
  const __m256i p0 = _mm256_madd_epi16(_mm256_unpacklo_epi8(lo, hi), _mm256_unpacklo_epi8(a, sgn));
  const __m256i p1 = _mm256_madd_epi16(_mm256_unpackhi_epi8(lo, hi), _mm256_unpackhi_epi8(a, sgn));
  return _mm256_add_epi32(p0, p1);
}

template <int G>
float vec_dot_qi4(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const BlockQI4<G>*>(w);
  const auto* y = static_cast<const BlockQ8_1*>(a);
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  __m256 acc = _mm256_setzero_ps();
  float zsum = 0.0f;
  for (int64_t g = 0; g < n / G; ++g, y += G / kQK) {
    const float d = f16(x[g].d);
    __m256i q[G / kQK];  // the group's codes, one register per activation block
    if constexpr (G == 32) {
      const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[g].qs));
      q[0] = _mm256_and_si256(
          _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1), m4);
    } else {
      for (int h = 0; h < G / 64; ++h) {
        const __m256i raw = load256(x[g].qs + 32 * h);
        q[h] = _mm256_and_si256(raw, m4);
        q[h + G / 64] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
      }
    }
    float s_a = 0.0f;
    for (int k = 0; k < G / kQK; ++k) {
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u4s8(q[k], load256(y[k].qs))),
                            _mm256_set1_ps(d * f16(y[k].d)), acc);
      s_a += f16(y[k].s);
    }
    zsum += d * static_cast<float>(x[g].z) * s_a;
  }
  return hsum(acc) - zsum;
}

inline __m256 nf4_block(__m256 acc, float d, const uint8_t* qs, const BlockQ8_0* y) {
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m256i raw = load256(qs);
  const __m256i s0 = dot_nf4(_mm256_and_si256(raw, m4), load256(y[0].qs));
  const __m256i s1 = dot_nf4(_mm256_and_si256(_mm256_srli_epi16(raw, 4), m4), load256(y[1].qs));
  acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), _mm256_set1_ps(d * f16(y[0].d)), acc);
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1), _mm256_set1_ps(d * f16(y[1].d)), acc);
}

// The AVX2 kernels of quants_int4_driver.h.
struct Kernels {
  using Acc = __m256;
  static constexpr bool kPairs = false;
  static Acc zero() { return _mm256_setzero_ps(); }
  static Acc nf4_block(Acc acc, float d, const uint8_t* qs, const BlockQ8_0* y) {
    return avx2::nf4_block(acc, d, qs, y);
  }
  static float sum(Acc acc) { return hsum(acc); }
  template <int G>
  static float qi4(int64_t n, const void* w, const void* a) {
    return vec_dot_qi4<G>(n, w, a);
  }
};

}  // namespace

QILIN_DEFINE_INT4_DOTS(Kernels)

}  // namespace qilin::avx2
