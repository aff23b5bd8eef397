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

void dot_f16_f32_rows(int64_t n, const void* w, size_t stride, int64_t rows, const float* a,
                      float* y) {
  const auto* base = static_cast<const uint8_t*>(w);
  const int64_t h = rows / 2;
  auto row = [&](int64_t r) { return reinterpret_cast<const uint16_t*>(base + r * stride); };
  auto load_w = [](const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  };
  for (int64_t r = 0; r < h; ++r) {
    const uint16_t* x = row(r);
    const uint16_t* z = row(r + h);
    __m512 x0 = _mm512_setzero_ps(), x1 = x0, z0 = x0, z1 = x0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
      const __m512 a0 = _mm512_loadu_ps(a + i), a1 = _mm512_loadu_ps(a + i + 16);
      x0 = _mm512_fmadd_ps(load_w(x + i), a0, x0);
      x1 = _mm512_fmadd_ps(load_w(x + i + 16), a1, x1);
      z0 = _mm512_fmadd_ps(load_w(z + i), a0, z0);
      z1 = _mm512_fmadd_ps(load_w(z + i + 16), a1, z1);
    }
    for (; i < n; i += 16) {
      const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (n - i)) - 1);
      const __m512 av = _mm512_maskz_loadu_ps(m, a + i);
      x0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, x + i)), av, x0);
      z0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, z + i)), av, z0);
    }
    y[r] = _mm512_reduce_add_ps(_mm512_add_ps(x0, x1));
    y[r + h] = _mm512_reduce_add_ps(_mm512_add_ps(z0, z1));
  }
  if (rows % 2 != 0) y[rows - 1] = dot_f16_f32(n, row(rows - 1), a);
}

}  // namespace qilin::avx512
