// Private: the tiled float gemm (gemm_float_impl.h) written once over an ISA's struct `S` of
// vector operations: the MR x NR register tile, its edge-tile table, the widening of a token
// block's activations and the driver (token blocks outermost, rows in chunks of kChunk
// elements). gemm_float_avx2.cc and _avx512.cc include this file, define S and instantiate it
// with QILIN_DEFINE_GEMM_FLOAT(S), each compiled with its own flags.
// NOTE: everything here has internal linkage, so the two ISA files' copies never merge.
// NOTE: widening f16/bf16 activations to f32 is exact, so the products are those of vec_dot.
//
// S provides: kRows (<= 4: one reduce4 per token), kToks, kChunk, kLanes, kAlign; V, zero(),
// fma(a, b, c), load_x / store_x (aligned f32), partial<W>(p, rem) (rem < kLanes elements, zeros
// past them), reduce4(a, b, c, d) -> [sum a, sum b, sum c, sum d], store_sums<MR>(s, c, add);
// the loaders F16, BF16, F32 (T, load(p): kLanes elements widened to f32).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>

namespace qilin::gemm_float_driver {
namespace {

// Widens kc activation elements to f32 in dst and zeroes dst up to the next multiple of kLanes,
// so the tile's last step can load whole vectors (the weights' partial lanes are zero too).
template <class S, class W>
void widen_act(const typename W::T* src, float* dst, int64_t kc) {
  int64_t k = 0;
  for (; k + S::kLanes <= kc; k += S::kLanes) S::store_x(dst + k, W::load(src + k));
  if (k < kc) S::store_x(dst + k, S::template partial<W>(src + k, kc - k));
}

// c[t * ldc + r] (+)= sum_k w[r][k] * x[t][k] for r < MR, t < NR, k < kc.
// w: MR rows, w_stride bytes apart. x: NR rows of the widened buffer, x_ld floats apart.
template <class S, class W, int MR, int NR>
void tile(int64_t kc, const uint8_t* w, size_t w_stride, const float* x, int64_t x_ld, float* c,
          int64_t ldc, bool add) {
  using T = typename W::T;
  using V = typename S::V;
  const T* wr[MR];
  for (int r = 0; r < MR; ++r) wr[r] = reinterpret_cast<const T*>(w + r * w_stride);
  // Rows >= MR stay zero; they only fill reduce4's unused inputs.
  V acc[4][NR];
  for (int r = 0; r < 4; ++r)
    for (int t = 0; t < NR; ++t) acc[r][t] = S::zero();

  int64_t k = 0;
  for (; k + S::kLanes <= kc; k += S::kLanes) {
    V wv[MR];
    for (int r = 0; r < MR; ++r) wv[r] = W::load(wr[r] + k);
    for (int t = 0; t < NR; ++t) {
      const V xv = S::load_x(x + t * x_ld + k);
      for (int r = 0; r < MR; ++r) acc[r][t] = S::fma(wv[r], xv, acc[r][t]);
    }
  }
  if (k < kc) {
    V wv[MR];
    for (int r = 0; r < MR; ++r) wv[r] = S::template partial<W>(wr[r] + k, kc - k);
    for (int t = 0; t < NR; ++t) {
      const V xv = S::load_x(x + t * x_ld + k);  // zero-padded past kc
      for (int r = 0; r < MR; ++r) acc[r][t] = S::fma(wv[r], xv, acc[r][t]);
    }
  }

  for (int t = 0; t < NR; ++t) {
    S::template store_sums<MR>(S::reduce4(acc[0][t], acc[1][t], acc[2][t], acc[3][t]), c + t * ldc,
                               add);
  }
}

using TileFn = void (*)(int64_t, const uint8_t*, size_t, const float*, int64_t, float*, int64_t,
                        bool);

// tiles[mr - 1][nt - 1] for the partial tiles at the row and token edges.
template <class S, class W>
struct TileTable {
  TileFn f[S::kRows][S::kToks];
  template <int MR, int... NR>
  static constexpr void fill_row(TileFn* row, std::integer_sequence<int, NR...>) {
    ((row[NR] = tile<S, W, MR, NR + 1>), ...);
  }
  template <int... MR>
  constexpr void fill(std::integer_sequence<int, MR...>) {
    (fill_row<MR + 1>(f[MR], std::make_integer_sequence<int, S::kToks>{}), ...);
  }
  constexpr TileTable() : f{} { fill(std::make_integer_sequence<int, S::kRows>{}); }
};

// Token blocks outermost: each kToks-token block is widened once and then meets every weight
// row of the call, so the caller's row range should fit in L2 (it is re-read once per block).
// Rows longer than kChunk are summed in passes, adding into c.
template <class S, class W>
void gemm(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a, size_t a_stride,
          int64_t n_tok, float* c, int64_t ldc) {
  using T = typename W::T;
  constexpr int kRows = S::kRows, kToks = S::kToks;
  constexpr int64_t kChunk = S::kChunk;
  static constexpr TileTable<S, W> kTiles;
  alignas(S::kAlign) float buf[kToks][kChunk];
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* ab = static_cast<const uint8_t*>(a);
  for (int64_t t0 = 0; t0 < n_tok; t0 += kToks) {
    const int nt = static_cast<int>(std::min<int64_t>(kToks, n_tok - t0));
    for (int64_t k0 = 0; k0 < n; k0 += kChunk) {
      const int64_t kc = std::min(kChunk, n - k0);
      for (int t = 0; t < nt; ++t) {
        widen_act<S, W>(reinterpret_cast<const T*>(ab + (t0 + t) * a_stride) + k0, buf[t], kc);
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
}  // namespace qilin::gemm_float_driver

// The entry points of gemm_float_impl.h for an ISA's S, inside that ISA's namespace.
#define QILIN_DEFINE_GEMM_FLOAT(S)                                                              \
  void gemm_f16_f16(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,   \
                    size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {                    \
    gemm_float_driver::gemm<S, S::F16>(n, w, w_stride, n_rows, a, a_stride, n_tok, c, ldc);     \
  }                                                                                             \
  void gemm_bf16_bf16(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a, \
                      size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {                  \
    gemm_float_driver::gemm<S, S::BF16>(n, w, w_stride, n_rows, a, a_stride, n_tok, c, ldc);    \
  }                                                                                             \
  void gemm_f32_f32(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,   \
                    size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {                    \
    gemm_float_driver::gemm<S, S::F32>(n, w, w_stride, n_rows, a, a_stride, n_tok, c, ldc);     \
  }
