// AVX-512 (BW/VL + VNNI) kernels for Qilin's 4-bit formats (quants_int4.h): two 32-element
// activation blocks per ZMM; QI4 codes (unsigned) dot Q8_1 with VPDPBUSD, NF4 codes become
// int16 by two byte shuffles and dot the sign-extended Q8_0 activations with VPDPWSSD.
// Integer sums are exact per activation block; only the f32 sum order differs from scalar.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "core/fp16.h"
#include "cpu/quants.h"
#include "cpu/quants_int4.h"
#include "cpu/quants_int4_driver.h"

namespace qilin::avx512 {
namespace {

inline float f16(uint16_t h) { return _cvtsh_ss(h); }
inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m512i load_2x256(const void* a, const void* b) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(load256(a)), load256(b), 1);
}
// Lanes 0..7 scaled by da, 8..15 by db (the two activation blocks of a ZMM).
inline __m512 scales_2(float da, float db) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(da)), _mm256_set1_ps(db), 1);
}
// 32 code bytes -> [low nibbles, high nibbles] as 64 bytes 0..15.
inline __m512i split_nibbles(__m256i raw) {
  const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(raw), _mm256_srli_epi16(raw, 4), 1);
  return _mm512_and_si512(both, _mm512_set1_epi8(0x0f));
}

// NF4 code bytes -> int16 values dotted with the activation bytes at the same positions; the
// unpacks work per 128-bit lane, so lanes 0..7 still hold the first 32 elements.
inline __m512i dot_nf4(__m512i idx, __m512i a) {
  const __m512i tab_lo = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kNf4Bytes.lo)));
  const __m512i tab_hi = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kNf4Bytes.hi)));
  const __m512i lo = _mm512_shuffle_epi8(tab_lo, idx);
  const __m512i hi = _mm512_shuffle_epi8(tab_hi, idx);
  const __m512i sgn = _mm512_movm_epi8(_mm512_cmplt_epi8_mask(a, _mm512_setzero_si512()));
  const __m512i p = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_unpacklo_epi8(lo, hi),
                                        _mm512_unpacklo_epi8(a, sgn));
  return _mm512_dpwssd_epi32(p, _mm512_unpackhi_epi8(lo, hi), _mm512_unpackhi_epi8(a, sgn));
}

template <int G>
float vec_dot_qi4(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const BlockQI4<G>*>(w);
  const auto* y = static_cast<const BlockQ8_1*>(a);
  __m512 acc = _mm512_setzero_ps();
  __m256 acc1 = _mm256_setzero_ps();
  float zsum = 0.0f;
  for (int64_t g = 0; g < n / G; ++g, y += G / kQK) {
    const float d = f16(x[g].d);
    float s_a = 0.0f;
    if constexpr (G == 32) {
      const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[g].qs));
      const __m256i q = _mm256_and_si256(
          _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1),
          _mm256_set1_epi8(0x0f));
      const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, load256(y[0].qs));
      acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * f16(y[0].d)), acc1);
      s_a = f16(y[0].s);
    } else {
      // Blocks h and h + G/64 share the bytes qs[32h .. 32h + 31] (low and high nibbles).
      for (int h = 0; h < G / 64; ++h) {
        const __m512i q = split_nibbles(load256(x[g].qs + 32 * h));
        const BlockQ8_1& ya = y[h];
        const BlockQ8_1& yb = y[h + G / 64];
        const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, load_2x256(ya.qs, yb.qs));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scales_2(d * f16(ya.d), d * f16(yb.d)), acc);
      }
      for (int k = 0; k < G / kQK; ++k) s_a += f16(y[k].s);
    }
    zsum += d * static_cast<float>(x[g].z) * s_a;
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc, _mm512_zextps256_ps512(acc1))) - zsum;
}

inline __m512 nf4_block(__m512 acc, float d, const uint8_t* qs, const BlockQ8_0* y) {
  const __m512i s = dot_nf4(split_nibbles(load256(qs)), load_2x256(y[0].qs, y[1].qs));
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scales_2(d * f16(y[0].d), d * f16(y[1].d)), acc);
}

// The AVX-512 kernels of quants_int4_driver.h.
struct Kernels {
  using Acc = __m512;
  static constexpr bool kPairs = true;
  static Acc zero() { return _mm512_setzero_ps(); }
  static Acc add(Acc a, Acc b) { return _mm512_add_ps(a, b); }
  static Acc nf4_block(Acc acc, float d, const uint8_t* qs, const BlockQ8_0* y) {
    return avx512::nf4_block(acc, d, qs, y);
  }
  static float sum(Acc acc) { return _mm512_reduce_add_ps(acc); }
  template <int G>
  static float qi4(int64_t n, const void* w, const void* a) {
    return vec_dot_qi4<G>(n, w, a);
  }
};

}  // namespace

QILIN_DEFINE_INT4_DOTS(Kernels)

}  // namespace qilin::avx512
