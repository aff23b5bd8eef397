// AVX2 16-bit rounding (see round16.h): FP16 through F16C, BF16 as the reference's integer
// rounding on 8 lanes; the last n % 8 elements through the scalar reference.
#include <immintrin.h>

#include "core/fp16.h"
#include "cpu/quants_impl.h"
#include "cpu/round16.h"

namespace qilin::avx2 {
namespace {

inline __m256 round_f16_8(__m256 v) {
  return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

// As avx512's: integer rounding to the top 16 bits; NaN keeps its top bits, quiet bit set.
inline __m256 round_bf16_8(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  // |u| as an integer is below 2^31, so the signed compare is the unsigned one.
  const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                         _mm256_set1_epi32(0x7f800000));
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i hi = _mm256_set1_epi32(static_cast<int32_t>(0xffff0000u));
  const __m256i r =
      _mm256_and_si256(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd)), hi);
  const __m256i q = _mm256_or_si256(_mm256_and_si256(u, hi), _mm256_set1_epi32(0x400000));
  return _mm256_castsi256_ps(_mm256_blendv_epi8(r, q, nan));
}

void round_f16(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, round_f16_8(_mm256_loadu_ps(x + i)));
  for (; i < n; ++i) x[i] = fp16_to_fp32(fp32_to_fp16(x[i]));
}
void round_bf16(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, round_bf16_8(_mm256_loadu_ps(x + i)));
  for (; i < n; ++i) x[i] = bf16_to_fp32(fp32_to_bf16(x[i]));
}
void from_f16(const uint16_t* h, float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(x + i,
                     _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
  }
  for (; i < n; ++i) x[i] = fp16_to_fp32(h[i]);
}
void from_bf16(const uint16_t* h, float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i w =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i)));
    _mm256_storeu_ps(x + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
  }
  for (; i < n; ++i) x[i] = bf16_to_fp32(h[i]);
}

}  // namespace

const Round16Kernels kRound16Kernels = {round_f16, round_bf16,       from_f16,
                                        from_bf16, quantize_row_f16, quantize_row_bf16};

}  // namespace qilin::avx2
