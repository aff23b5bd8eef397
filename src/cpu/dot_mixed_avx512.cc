// AVX-512 F16-weight x F32-activation dot: four independent accumulators (64 elements per
// step) to cover FMA latency, a 16-wide step, then a masked tail.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "cpu/dot_mixed.h"

namespace qilin::avx512 {

float dot_f16_f32(int64_t n, const void* w, const float* a) {
  const auto* x = static_cast<const uint16_t*>(w);
  auto load_w = [](const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  };
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    acc0 = _mm512_fmadd_ps(load_w(x + i), _mm512_loadu_ps(a + i), acc0);
    acc1 = _mm512_fmadd_ps(load_w(x + i + 16), _mm512_loadu_ps(a + i + 16), acc1);
    acc2 = _mm512_fmadd_ps(load_w(x + i + 32), _mm512_loadu_ps(a + i + 32), acc2);
    acc3 = _mm512_fmadd_ps(load_w(x + i + 48), _mm512_loadu_ps(a + i + 48), acc3);
  }
  for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(load_w(x + i), _mm512_loadu_ps(a + i), acc0);
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 wv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, x + i));
    acc1 = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, a + i), acc1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}

}  // namespace qilin::avx512
