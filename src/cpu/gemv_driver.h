// Private: the ISA-independent half of the gemv kernels (gemv.h): activation chunking, the row
// blocks (kRows rows sharing each activation load, then single rows), the software prefetch
// cursor, and the entry points. Written once over an ISA's struct `S`: gemv_avx2.cc and
// _avx512.cc include this file first, define their block formats, float loaders and S, then
// instantiate the driver with QILIN_DEFINE_GEMV(S), each compiled with its own flags.
// NOTE: everything here has internal linkage, so the two ISA files' copies never merge.
//
// S provides: Acc (a row's accumulator vector; the Q4_1 minimum terms are one __m256), zero();
// kPrefetch (walk a prefetch cursor kPrefetchRows rows ahead); the block formats Q4_0, Q4_1,
// Q8_0 (BY, Act, kBytes, prepare, group, finish) and float loaders F16, BF16, F32 (T);
// float_rows<L, R> and widen<L> (a chunk of 16-bit activations to f32).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "cpu/quants.h"

namespace qilin::gemv_driver {
namespace {

constexpr int64_t kChunkBlocks = 128;   // activation blocks prepared per pass (4096 elements)
constexpr int64_t kChunkFloats = 2048;  // float activation elements converted per pass
constexpr int kRows = 4;  // weight rows per pass: shares activation loads, 4 independent chains
constexpr int64_t kPrefetchRows = 16;  // software prefetch distance (S::kPrefetch)

// Four f16 fields `stride` bytes apart packed into 64 bits (general-purpose registers: no
// gather, no per-block scalar conversion or broadcast).
// Blocks at and past cnt (a row's last, partial group) read as zero.
inline uint64_t load_f16x4(const uint8_t* p, size_t stride, int cnt) {
  uint64_t v = 0;
  for (int k = 0; k < cnt; ++k) {
    uint16_t h;
    std::memcpy(&h, p + k * stride, 2);
    v |= static_cast<uint64_t>(h) << (16 * k);
  }
  return v;
}
// Two 32-bit fields (Q4_1's adjacent d and m) `stride` bytes apart packed into 64 bits.
inline uint64_t load_u32x2(const uint8_t* p, size_t stride, int cnt) {
  uint32_t a = 0, b = 0;
  if (cnt > 0) std::memcpy(&a, p, 4);
  if (cnt > 1) std::memcpy(&b, p + stride, 4);
  return a | static_cast<uint64_t>(b) << 32;
}

// The R rows of a block are read side by side, which the hardware prefetchers follow poorly;
// one linear software-prefetch cursor walks the rows kPrefetchRows ahead at the same pace
// instead (kStep bytes per step), stopping at pf_end (the end of the call's matrix: prefetching
// past it is wasted traffic).
template <size_t kStep>
inline __attribute__((always_inline)) void prefetch_step(const char*& pf, const char* pf_end) {
  if (pf < pf_end) {
    for (size_t o = 0; o < kStep; o += 64) _mm_prefetch(pf + o, _MM_HINT_T0);
    pf += kStep;
  }
}

// R rows over the nb blocks of one prepared chunk; y[r] is set (add: accumulated, for chunks
// after the first).
template <class S, class F, int R>
void quant_rows(const uint8_t* w, size_t ws, int64_t nb, const typename F::Act& a, float* y,
                bool add, const char* pf_end) {
  typename S::Acc acc[R];
  __m256 mins[R];
  for (int r = 0; r < R; ++r) acc[r] = S::zero(), mins[r] = _mm256_setzero_ps();
  const int64_t full = nb / 4;
  [[maybe_unused]] const char* pf = reinterpret_cast<const char*>(w) + kPrefetchRows * ws;
  for (int64_t g = 0; g < full; ++g) {
    if constexpr (S::kPrefetch) prefetch_step<R * 4 * F::kBytes>(pf, pf_end);
    for (int r = 0; r < R; ++r) F::group(w + r * ws + 4 * g * F::kBytes, a, g, acc[r], mins[r]);
  }
  if (const int rem = static_cast<int>(nb % 4)) {
    // The last 1..3 blocks: missing blocks are skipped or load as zero (no read past the row;
    // their zero scales add nothing, and the activation's padding is zero too).
    for (int r = 0; r < R; ++r) {
      F::group(w + r * ws + 4 * full * F::kBytes, a, full, acc[r], mins[r], rem);
    }
  }
  for (int r = 0; r < R; ++r) {
    const float v = F::finish(acc[r], mins[r]);
    y[r] = add ? y[r] + v : v;
  }
}

template <class S, class F>
void gemv_quant(int64_t n, const void* w, size_t ws, int64_t n_rows, const void* a, float* y) {
  const int64_t nb = n / kQK;
  if (nb == 0) std::fill(y, y + n_rows, 0.0f);
  typename F::Act act;  // on the stack: no allocation per call
  for (int64_t c0 = 0; c0 < nb; c0 += kChunkBlocks) {
    const int64_t cn = std::min(kChunkBlocks, nb - c0);
    F::prepare(static_cast<const typename F::BY*>(a) + c0, cn, act);
    const uint8_t* wc = static_cast<const uint8_t*>(w) + c0 * F::kBytes;
    const char* end = reinterpret_cast<const char*>(wc) + n_rows * ws;
    int64_t r = 0;
    for (; r + kRows <= n_rows; r += kRows) {
      quant_rows<S, F, kRows>(wc + r * ws, ws, cn, act, y + r, c0 > 0, end);
    }
    for (; r < n_rows; ++r) quant_rows<S, F, 1>(wc + r * ws, ws, cn, act, y + r, c0 > 0, end);
  }
}

// Float weights against an f32 activation, kRows rows at a time (S::float_rows).
template <class S, class L>
void float_chunk(int64_t n, const uint8_t* w, size_t ws, int64_t n_rows, const float* a, float* y,
                 bool add) {
  const char* end = reinterpret_cast<const char*>(w) + n_rows * ws;
  int64_t r = 0;
  for (; r + kRows <= n_rows; r += kRows) {
    S::template float_rows<L, kRows>(w + r * ws, ws, n, a, y + r, add, end);
  }
  for (; r < n_rows; ++r) S::template float_rows<L, 1>(w + r * ws, ws, n, a, y + r, add, end);
}

// F16 / BF16: the activation (same type as the weight) is widened to f32 once per chunk, so each
// weight vector costs one conversion instead of two.
template <class S, class L>
void gemv_half(int64_t n, const void* w, size_t ws, int64_t n_rows, const void* a, float* y) {
  if (n == 0) std::fill(y, y + n_rows, 0.0f);
  const auto* ah = static_cast<const uint16_t*>(a);
  alignas(64) float af[kChunkFloats];
  for (int64_t c0 = 0; c0 < n; c0 += kChunkFloats) {
    const int64_t cn = std::min(kChunkFloats, n - c0);
    S::template widen<L>(ah + c0, cn, af);
    float_chunk<S, L>(cn, static_cast<const uint8_t*>(w) + c0 * 2, ws, n_rows, af, y, c0 > 0);
  }
}

}  // namespace
}  // namespace qilin::gemv_driver

// The entry points of gemv.h for an ISA's S, inside that ISA's namespace.
#define QILIN_DEFINE_GEMV(S)                                                                      \
  void gemv_q4_0_q8_0(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, float* y) { \
    gemv_driver::gemv_quant<S, S::Q4_0>(n, w, ws, nr, a, y);                                      \
  }                                                                                               \
  void gemv_q4_1_q8_1(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, float* y) { \
    gemv_driver::gemv_quant<S, S::Q4_1>(n, w, ws, nr, a, y);                                      \
  }                                                                                               \
  void gemv_q8_0_q8_0(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, float* y) { \
    gemv_driver::gemv_quant<S, S::Q8_0>(n, w, ws, nr, a, y);                                      \
  }                                                                                               \
  void gemv_f16_f16(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, float* y) {   \
    gemv_driver::gemv_half<S, S::F16>(n, w, ws, nr, a, y);                                        \
  }                                                                                               \
  void gemv_bf16_bf16(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, float* y) { \
    gemv_driver::gemv_half<S, S::BF16>(n, w, ws, nr, a, y);                                       \
  }                                                                                               \
  void gemv_f32_f32(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, float* y) {   \
    if (n == 0) std::fill(y, y + nr, 0.0f);                                                       \
    gemv_driver::float_chunk<S, S::F32>(n, static_cast<const uint8_t*>(w), ws, nr,                \
                                        static_cast<const float*>(a), y, false);                  \
  }
