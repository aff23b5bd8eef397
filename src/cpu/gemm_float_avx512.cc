// AVX-512 tiled gemm for F16 / BF16 / F32 weights: a 4-row x 6-token register tile (24 ZMM
// accumulators), weights widened to f32 once per 16-element step and used for 6 tokens, and a
// 6-token block of activations widened to f32 once into a stack buffer and used for every row.
// NOTE: widening f16/bf16 activations to f32 is exact, so the products are those of vec_dot.
// GCC 12.1/12.2's AVX-512 headers trip -W(maybe-)uninitialized inside their own intrinsics
// (GCC PR105593, fixed in 12.3); the warnings point into the header, not at this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "cpu/gemm_float_impl.h"

namespace qilin::avx512 {
namespace {

// Register tile: 4 x 6 accumulators + 4 widened weights + 1 activation = 29 of 32 ZMM, 4
// conversions per 24 FMAs. Measured on Zen 5 against 3 x 8 and 2 x 12: 4 x 6 is fastest.
constexpr int kRows = 4;  // <= 4: one reduce4 per token
constexpr int kToks = 6;
// Activation elements widened per pass: 6 x 1024 floats = 24 KiB, so the buffer stays in L1
// beside the streaming weights. Rows longer than this are summed in passes, adding into c.
constexpr int64_t kChunk = 1024;

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

inline __mmask16 tail_mask(int64_t rem) { return static_cast<__mmask16>((1u << rem) - 1); }

// Horizontal sums of four vectors at once: [sum a, sum b, sum c, sum d]. Interleaving pairs
// before adding costs ~9 instructions for four sums instead of ~8 each.
inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
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

// Widens kc activation elements to f32 in dst and zeroes dst up to the next multiple of 16, so
// the tile's last step can load whole vectors (the weights' masked lanes are zero too).
template <class W>
void widen_act(const typename W::T* src, float* dst, int64_t kc) {
  int64_t k = 0;
  for (; k + 16 <= kc; k += 16) _mm512_store_ps(dst + k, W::load(src + k));
  if (k < kc) _mm512_store_ps(dst + k, W::maskload(tail_mask(kc - k), src + k));
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
  __m512 acc[4][NR];
  for (int r = 0; r < 4; ++r)
    for (int t = 0; t < NR; ++t) acc[r][t] = _mm512_setzero_ps();

  int64_t k = 0;
  for (; k + 16 <= kc; k += 16) {
    __m512 wv[MR];
    for (int r = 0; r < MR; ++r) wv[r] = W::load(wr[r] + k);
    for (int t = 0; t < NR; ++t) {
      const __m512 xv = _mm512_load_ps(x + t * x_ld + k);
      for (int r = 0; r < MR; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  if (k < kc) {
    const __mmask16 m = tail_mask(kc - k);
    __m512 wv[MR];
    for (int r = 0; r < MR; ++r) wv[r] = W::maskload(m, wr[r] + k);
    for (int t = 0; t < NR; ++t) {
      const __m512 xv = _mm512_load_ps(x + t * x_ld + k);  // zero-padded past kc
      for (int r = 0; r < MR; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }

  const __mmask8 m = static_cast<__mmask8>((1u << MR) - 1);
  for (int t = 0; t < NR; ++t) {
    __m128 s = reduce4(acc[0][t], acc[1][t], acc[2][t], acc[3][t]);
    float* ct = c + t * ldc;
    if (add) s = _mm_add_ps(s, _mm_maskz_loadu_ps(m, ct));
    _mm_mask_storeu_ps(ct, m, s);
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

// Token blocks outermost: each 6-token block is widened once and then meets every weight row of
// the call, so the caller's row range should fit in L2 (it is re-read once per 6 tokens).
template <class W>
void gemm(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a, size_t a_stride,
          int64_t n_tok, float* c, int64_t ldc) {
  using T = typename W::T;
  static constexpr TileTable<W> kTiles;
  alignas(64) float buf[kToks][kChunk];
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

}  // namespace qilin::avx512
