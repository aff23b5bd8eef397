// AVX-512 16-bit rounding (see round16.h): FP16 through F16C's VCVTPS2PH / VCVTPH2PS (round to
// nearest even, exact widening), BF16 as the reference's integer rounding on 16 lanes.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "cpu/quants_impl.h"
#include "cpu/round16.h"

namespace qilin::avx512 {
namespace {

constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

inline __mmask16 tail(int64_t rem) { return static_cast<__mmask16>((1u << rem) - 1); }

inline __m512 round_f16_16(__m512 v) { return _mm512_cvtph_ps(_mm512_cvtps_ph(v, kRound)); }

// fp32_to_bf16 then back: the top 16 bits after adding 0x7fff + (bit 16); NaN keeps its top
// bits and gets the quiet bit (bit 22).
inline __m512 round_bf16_16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i hi = _mm512_set1_epi32(static_cast<int32_t>(0xffff0000u));
  const __m512i r =
      _mm512_and_si512(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd)), hi);
  const __m512i q = _mm512_or_si512(_mm512_and_si512(u, hi), _mm512_set1_epi32(0x400000));
  return _mm512_castsi512_ps(_mm512_mask_blend_epi32(nan, r, q));
}

template <__m512 (*F)(__m512)>
void round_rows(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, F(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 m = tail(n - i);
    _mm512_mask_storeu_ps(x + i, m, F(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

inline __m512 widen_f16(__m256i h) { return _mm512_cvtph_ps(h); }
inline __m512 widen_bf16(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <__m512 (*W)(__m256i)>
void widen_rows(const uint16_t* h, float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(x + i, W(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i))));
  }
  if (i < n) {
    const __mmask16 m = tail(n - i);
    _mm512_mask_storeu_ps(x + i, m, W(_mm256_maskz_loadu_epi16(m, h + i)));
  }
}

}  // namespace

const Round16Kernels kRound16Kernels = {round_rows<round_f16_16>, round_rows<round_bf16_16>,
                                        widen_rows<widen_f16>,    widen_rows<widen_bf16>,
                                        quantize_row_f16,         quantize_row_bf16};

}  // namespace qilin::avx512
