// AVX2 tiled gemm for F16 / BF16 / F32 weights: a 3-row x 4-token register tile (12 YMM
// accumulators), weights widened to f32 once per 8-element step and used for 4 tokens, and a
// 4-token block of activations widened to f32 once into a stack buffer and used for every row.
// NOTE: widening f16/bf16 activations to f32 is exact, so the products are those of vec_dot.
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

#include "cpu/gemm_float_impl.h"

namespace qilin::avx2 {
namespace {

// Register tile: 3 x 4 accumulators + 3 widened weights + 1 activation = all 16 YMM. (4 x 3
// needs 17 and GCC spills an accumulator through the stack every step: ~60% of the speed;
// 2 x 6 converts fewer weights but is ~12% slower on Zen 5.)
constexpr int kRows = 3;  // <= 4: one reduce4 per token
constexpr int kToks = 4;
// Activation elements widened per pass: 4 x 1536 floats = 24 KiB (fits L1 beside the weights).
// Rows longer than this are summed in passes, adding into c.
constexpr int64_t kChunk = 1536;

// Loaders that widen 8 stored elements to f32. Tails (< 8 elements) go through a zero-padded
// copy: AVX2 has no masked 16-bit load, and the tail is rare (model rows are multiples of 32).
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

template <class W>
__m256 load_partial(const typename W::T* p, int64_t rem) {
  typename W::T tmp[8] = {};
  std::memcpy(tmp, p, static_cast<size_t>(rem) * sizeof(tmp[0]));
  return W::load(tmp);
}

// Horizontal sums of four vectors at once: [sum a, sum b, sum c, sum d].
inline __m128 reduce4(__m256 a, __m256 b, __m256 c, __m256 d) {
  // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] and the same for c, d
  const __m256 ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
  const __m256 cd = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
  // per lane: [a, b, c, d] partial sums
  const __m256 abcd = _mm256_add_ps(
      _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(ab), _mm256_castps_pd(cd))),
      _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(ab), _mm256_castps_pd(cd))));
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// Widens kc activation elements to f32 in dst and zeroes dst up to the next multiple of 8.
template <class W>
void widen_act(const typename W::T* src, float* dst, int64_t kc) {
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) _mm256_store_ps(dst + k, W::load(src + k));
  if (k < kc) _mm256_store_ps(dst + k, load_partial<W>(src + k, kc - k));
}

// c[t * ldc + r] (+)= sum_k w[r][k] * x[t][k] for r < MR, t < NR, k < kc.
// w: MR rows, w_stride bytes apart. x: NR rows of the widened buffer, x_ld floats apart.
template <class W, int MR, int NR>
void tile(int64_t kc, const uint8_t* w, size_t w_stride, const float* x, int64_t x_ld, float* c,
          int64_t ldc, bool add) {
  using T = typename W::T;
  const T* wr[MR];
  for (int r = 0; r < MR; ++r) wr[r] = reinterpret_cast<const T*>(w + r * w_stride);
  // Rows >= MR stay zero; they only fill reduce4's unused inputs.
  __m256 acc[4][NR];
  for (int r = 0; r < 4; ++r)
    for (int t = 0; t < NR; ++t) acc[r][t] = _mm256_setzero_ps();

  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) {
    __m256 wv[MR];
    for (int r = 0; r < MR; ++r) wv[r] = W::load(wr[r] + k);
    for (int t = 0; t < NR; ++t) {
      for (int r = 0; r < MR; ++r)
        acc[r][t] = _mm256_fmadd_ps(wv[r], _mm256_load_ps(x + t * x_ld + k), acc[r][t]);
    }
  }
  if (k < kc) {
    __m256 wv[MR];
    for (int r = 0; r < MR; ++r) wv[r] = load_partial<W>(wr[r] + k, kc - k);
    for (int t = 0; t < NR; ++t) {
      const __m256 xv = _mm256_load_ps(x + t * x_ld + k);  // zero-padded past kc
      for (int r = 0; r < MR; ++r) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }

  for (int t = 0; t < NR; ++t) {
    const __m128 s = reduce4(acc[0][t], acc[1][t], acc[2][t], acc[3][t]);
    float* ct = c + t * ldc;
    alignas(16) float sums[4];
    _mm_store_ps(sums, s);
    for (int r = 0; r < MR; ++r) ct[r] = add ? ct[r] + sums[r] : sums[r];
  }
}

using TileFn = void (*)(int64_t, const uint8_t*, size_t, const float*, int64_t, float*, int64_t,
                        bool);

// tiles[mr - 1][nt - 1] for the partial tiles at the row and token edges.
template <class W>
struct TileTable {
  TileFn f[kRows][kToks];
  template <int MR, int... NR>
  static constexpr void fill_row(TileFn* row, std::integer_sequence<int, NR...>) {
    ((row[NR] = tile<W, MR, NR + 1>), ...);
  }
  template <int... MR>
  constexpr void fill(std::integer_sequence<int, MR...>) {
    (fill_row<MR + 1>(f[MR], std::make_integer_sequence<int, kToks>{}), ...);
  }
  constexpr TileTable() : f{} { fill(std::make_integer_sequence<int, kRows>{}); }
};

// Token blocks outermost: each 4-token block is widened once and then meets every weight row of
// the call, so the caller's row range should fit in L2 (it is re-read once per 4 tokens).
template <class W>
void gemm(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a, size_t a_stride,
          int64_t n_tok, float* c, int64_t ldc) {
  using T = typename W::T;
  static constexpr TileTable<W> kTiles;
  alignas(32) float buf[kToks][kChunk];
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* ab = static_cast<const uint8_t*>(a);
  for (int64_t t0 = 0; t0 < n_tok; t0 += kToks) {
    const int nt = static_cast<int>(std::min<int64_t>(kToks, n_tok - t0));
    for (int64_t k0 = 0; k0 < n; k0 += kChunk) {
      const int64_t kc = std::min(kChunk, n - k0);
      for (int t = 0; t < nt; ++t) {
        widen_act<W>(reinterpret_cast<const T*>(ab + (t0 + t) * a_stride) + k0, buf[t], kc);
      }
      for (int64_t r0 = 0; r0 < n_rows; r0 += kRows) {
        const int mr = static_cast<int>(std::min<int64_t>(kRows, n_rows - r0));
        kTiles.f[mr - 1][nt - 1](kc, wb + r0 * w_stride + k0 * sizeof(T), w_stride, buf[0], kChunk,
                                 c + t0 * ldc + r0, ldc, k0 > 0);
      }
    }
  }
}

}  // namespace

void gemm_f16_f16(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,
                  size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {
  gemm<F16>(n, w, w_stride, n_rows, a, a_stride, n_tok, c, ldc);
}

void gemm_bf16_bf16(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,
                    size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {
  gemm<BF16>(n, w, w_stride, n_rows, a, a_stride, n_tok, c, ldc);
}

void gemm_f32_f32(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,
                  size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {
  gemm<F32>(n, w, w_stride, n_rows, a, a_stride, n_tok, c, ldc);
}

}  // namespace qilin::avx2
