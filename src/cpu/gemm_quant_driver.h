// Private: the ISA-independent half of the tiled quantized gemms (gemm_quant_impl.h's packed
// layout): the weight and activation row packers, the tile loop and its edge tiles, and the
// driver (token slices, row slices, the next slice's prefetch, the packed-weight cache). Written
// once over an ISA's struct `S` of group packers and the R x T microkernel: gemm_quant_avx2.cc
// and _avx512.cc include this file, define S and instantiate the driver with
// QILIN_DEFINE_GEMM_QUANT(S), each compiled with its own flags.
// NOTE: everything here has internal linkage, so the two ISA files' copies never merge.
//
// S provides: kLanes, kVec (bytes per vector), kTileRows, kTileToks, kTokSlice, kRowSlice;
// kQ8Xor (0, or 0x80: Q8_0 weights packed unsigned as w + 128); kCacheWeights (registered
// weights packed once and kept; then also compact_row_bytes, compact_row, compact_widen);
// Acc, zero(); TailGather, tail_gather(plan, type), pack_tail<kQ4, kXor, kCorr, kX>;
// pack_q4_group, pack_q8_group<kXor, kCorr>, store_headers<kX>; group_step<K, R, T> and
// store_tile<R, T> (both force-inlined into tile()).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/gemm_quant_impl.h"
#include "cpu/quants.h"

namespace qilin::gemm_quant {
namespace {

// Per weight type: source block sizes and where qs starts.
template <Kind K>
struct Traits;
template <>
struct Traits<Kind::Q4_0> {
  static constexpr DType kW = DType::Q4_0, kA = DType::Q8_0;
  static constexpr size_t kWBytes = sizeof(BlockQ4_0), kABytes = sizeof(BlockQ8_0);
  static constexpr size_t kWQs = 2, kAQs = 2;
};
template <>
struct Traits<Kind::Q4_1> {
  static constexpr DType kW = DType::Q4_1, kA = DType::Q8_1;
  static constexpr size_t kWBytes = sizeof(BlockQ4_1), kABytes = sizeof(BlockQ8_1);
  static constexpr size_t kWQs = 4, kAQs = 4;
};
template <>
struct Traits<Kind::Q8_0> {
  static constexpr DType kW = DType::Q8_0, kA = DType::Q8_0;
  static constexpr size_t kWBytes = sizeof(BlockQ8_0), kABytes = sizeof(BlockQ8_0);
  static constexpr size_t kWQs = 2, kAQs = 2;
};

// The activations' correction factor: the packed weights' unsigned offset. Q4_0's nibble q
// stands for q - 8; Q8_0 weights packed as w ^ 0x80 = w + 128; Q4_1's minimum enters as m * s
// instead, and signed Q8_0 weights (S::kQ8Xor == 0) have no offset to undo.
template <class S, Kind K>
constexpr int kCorr = K == Kind::Q4_0                          ? 8
                      : (K == Kind::Q8_0 && S::kQ8Xor == 0x80) ? 128
                                                               : 0;

// Thread-local packing buffers, 64-byte aligned; they grow to the largest call seen and are
// then reused, so steady-state calls allocate nothing.
uint8_t* scratch(int which, size_t bytes) {
  thread_local std::vector<uint8_t> buf[3];
  std::vector<uint8_t>& b = buf[which];
  if (b.size() < bytes + 64) b.resize(bytes + 64);
  const uintptr_t p = reinterpret_cast<uintptr_t>(b.data());
  return reinterpret_cast<uint8_t*>((p + 63) & ~uintptr_t{63});
}

template <class S, Kind K>
void pack_weight_row(const GroupPlan& plan, const typename S::TailGather& tail, const uint8_t* src,
                     uint8_t* dst) {
  using T = Traits<K>;
  for (int64_t g = 0; g < plan.n_full; ++g, src += S::kLanes * T::kWBytes, dst += plan.full_bytes) {
    if constexpr (K == Kind::Q8_0) {
      S::template pack_q8_group<S::kQ8Xor, 0>(src + T::kWQs, T::kWBytes, dst);
    } else {
      S::pack_q4_group(src + T::kWQs, T::kWBytes, dst);
    }
    // x is only read for Q4_1 (m); the other types leave it unwritten.
    S::template store_headers<K == Kind::Q4_1>(src, T::kWBytes, dst + 8 * S::kVec);
  }
  if (plan.tail_steps > 0) {
    S::template pack_tail<K != Kind::Q8_0, K == Kind::Q8_0 ? S::kQ8Xor : 0, 0, K == Kind::Q4_1>(
        tail, src, dst);
  }
}

// A weight row of type wt (Traits<K>::kW, or a 4-bit type run as K) into the packed layout.
template <class S, Kind K>
void pack_weight(DType wt, const GroupPlan& plan, const typename S::TailGather& tail,
                 const uint8_t* src, uint8_t* dst) {
  if (wt == Traits<K>::kW) return pack_weight_row<S, K>(plan, tail, src, dst);
  const int64_t nk = (plan.n_full * S::kLanes + plan.tail_real) * kQK;
  const int64_t n = nk == int4_kernel_len(wt, nk) ? nk : nk / 2;
  pack_int4_row(plan, wt, K == Kind::Q8_0 ? S::kQ8Xor : 0, src, n, dst);
}

// Activations: x holds Q8_1's s (Q4_1) or the correction -kCorr * (the lane's byte sum).
template <class S, Kind K>
void pack_act_row(const GroupPlan& plan, const typename S::TailGather& tail, const uint8_t* src,
                  uint8_t* dst) {
  using T = Traits<K>;
  for (int64_t g = 0; g < plan.n_full; ++g, src += S::kLanes * T::kABytes, dst += plan.full_bytes) {
    S::template pack_q8_group<0, kCorr<S, K>>(src + T::kAQs, T::kABytes, dst);
    S::template store_headers<K == Kind::Q4_1>(src, T::kABytes, dst + 8 * S::kVec);
  }
  if (plan.tail_steps > 0) {
    S::template pack_tail<false, 0, kCorr<S, K>, K == Kind::Q4_1>(tail, src, dst);
  }
}

// c[t * ldc + r] = dot(packed weight row r, packed token t) for r < R, t < T.
template <class S, Kind K, int R, int T>
void tile(const GroupPlan& plan, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* c,
          int64_t ldc) {
  typename S::Acc acc[R][T];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) acc[r][t] = S::zero();
  }
  for (int64_t g = 0; g < plan.n_full; ++g, w += plan.full_bytes, a += plan.full_bytes) {
    S::template group_step<K, R, T>(8, w, ws, a, as, acc);
  }
  if (plan.tail_steps > 0) S::template group_step<K, R, T>(plan.tail_steps, w, ws, a, as, acc);
  S::template store_tile<R, T>(acc, c, ldc);
}

using TileFn = void (*)(const GroupPlan&, const uint8_t*, size_t, const uint8_t*, size_t, float*,
                        int64_t);

// Edge tiles (fewer rows or tokens than the full tile): f[rows - 1][toks - 1].
template <class S, Kind K>
struct EdgeTiles {
  TileFn f[S::kTileRows][S::kTileToks];
  template <int R, int... T>
  constexpr void fill_row(std::integer_sequence<int, T...>) {
    ((f[R][T] = tile<S, K, R + 1, T + 1>), ...);
  }
  template <int... R>
  constexpr void fill(std::integer_sequence<int, R...>) {
    (fill_row<R>(std::make_integer_sequence<int, S::kTileToks>{}), ...);
  }
  constexpr EdgeTiles() : f{} { fill(std::make_integer_sequence<int, S::kTileRows>{}); }
};

// Token slices outermost: each slice's activations are packed once and reused by every row;
// each row slice is packed (or widened from the cache) once per token slice and then stays in
// L1/L2 across the slice. wt: the weights' type, Traits<K>::kW or one of Qilin's 4-bit types
// run as kernel K (pack_int4_row).
template <class S, Kind K>
void gemm(DType wt, int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,
          size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {
  using Tr = Traits<K>;
  constexpr int kTileRows = S::kTileRows, kTileToks = S::kTileToks;
  constexpr int64_t kTokSlice = S::kTokSlice, kRowSlice = S::kRowSlice;
  static constexpr EdgeTiles<S, K> kEdge;
  // NF4 runs on rows of 2n (gemm_quant_impl.h): activations are read with each block twice.
  const bool dup = wt != Tr::kW && int4_kernel_len(wt, n) != n;
  const GroupPlan plan = plan_groups(dup ? 2 * n : n, S::kLanes);
  typename S::TailGather w_tail, a_tail;
  if (plan.tail_steps > 0) {
    if (wt == Tr::kW) w_tail = S::tail_gather(plan, Tr::kW);
    a_tail = S::tail_gather(plan, Tr::kA);
  }
  const size_t pb = plan.row_bytes;
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* ab = static_cast<const uint8_t*>(a);
  // Registered (immutable) weights: packed once, kept (gemm.h, gemm_register_immutable). The
  // cache keeps Q4 weights compact (S::compact_row), widened per slice.
  constexpr bool kCompact = K != Kind::Q8_0;
  size_t cb = pb;  // bytes per cached row
  const uint8_t* cached = nullptr;
  if constexpr (S::kCacheWeights) {
    struct PackCtx {
      const GroupPlan* plan;
      const typename S::TailGather* tail;
      const uint8_t* w;
      size_t stride;
      int64_t n_rows;
      DType wt;
    } ctx{&plan, &w_tail, wb, w_stride, n_rows, wt};
    if constexpr (kCompact) cb = S::compact_row_bytes(plan);
    cached = gemm_cache::get(
        w, w_stride, n_rows, n,
        static_cast<int>(K) + 100 * S::kLanes + (kCompact ? 1000 : 0) +
            10000 * static_cast<int>(wt),
        cb,
        [](const void* p, uint8_t* dst) {
          const auto& c = *static_cast<const PackCtx*>(p);
          if constexpr (kCompact) {
            constexpr size_t kVec = S::kVec;
            std::vector<uint8_t> full(c.plan->row_bytes + kVec);
            uint8_t* f = reinterpret_cast<uint8_t*>(
                (reinterpret_cast<uintptr_t>(full.data()) + kVec - 1) & ~uintptr_t{kVec - 1});
            const size_t rb = S::compact_row_bytes(*c.plan);
            for (int64_t r = 0; r < c.n_rows; ++r) {
              pack_weight<S, K>(c.wt, *c.plan, *c.tail, c.w + r * c.stride, f);
              S::compact_row(*c.plan, f, dst + r * rb);
            }
          } else {
            for (int64_t r = 0; r < c.n_rows; ++r) {
              pack_weight<S, K>(c.wt, *c.plan, *c.tail, c.w + r * c.stride,
                                dst + r * c.plan->row_bytes);
            }
          }
        },
        &ctx);
  }
  uint8_t* a_dup = dup ? scratch(2, row_bytes(Tr::kA, 2 * n)) : nullptr;
  uint8_t* pa = scratch(0, pb * static_cast<size_t>(std::min(n_tok, kTokSlice)));
  uint8_t* pw_scratch = scratch(1, pb * static_cast<size_t>(std::min(n_rows, kRowSlice)));
  for (int64_t t0 = 0; t0 < n_tok; t0 += kTokSlice) {
    const int64_t nt = std::min(kTokSlice, n_tok - t0);
    for (int64_t t = 0; t < nt; ++t) {
      const uint8_t* at = ab + (t0 + t) * a_stride;
      if (dup) {
        nf4_duplicate_act(at, n, a_dup);
        at = a_dup;
      }
      pack_act_row<S, K>(plan, a_tail, at, pa + t * pb);
    }
    for (int64_t r0 = 0; r0 < n_rows; r0 += kRowSlice) {
      const int64_t nr = std::min(kRowSlice, n_rows - r0);
      const uint8_t* pw = pw_scratch;
      if (cached) {
        // One sequential pass into L2 first: the tiles then read kTileRows rows at a time from
        // cache (interleaved streams from DRAM measured slower than one stream).
        if constexpr (S::kCacheWeights && kCompact) {
          S::compact_widen(plan, cached + r0 * cb, nr, pw_scratch);
        } else {
          std::memcpy(pw_scratch, cached + r0 * pb, static_cast<size_t>(nr) * pb);
        }
      } else {
        for (int64_t r = 0; r < nr; ++r) {
          pack_weight<S, K>(wt, plan, w_tail, wb + (r0 + r) * w_stride, pw_scratch + r * pb);
        }
      }
      // The next row slice's bytes (cached or source) stream into L2 while these tiles compute.
      SlicePrefetch next;
      if (r0 + kRowSlice < n_rows) {
        const int64_t nr_next = std::min(kRowSlice, n_rows - r0 - kRowSlice);
        const int64_t calls = (nr + kTileRows - 1) / kTileRows * ((nt + kTileToks - 1) / kTileToks);
        next = cached ? SlicePrefetch(cached + (r0 + kRowSlice) * cb,
                                      static_cast<size_t>(nr_next) * cb, calls)
                      : SlicePrefetch(wb + (r0 + kRowSlice) * w_stride,
                                      static_cast<size_t>(nr_next) * w_stride, calls);
      }
      for (int64_t r = 0; r < nr; r += kTileRows) {
        const int tr = static_cast<int>(std::min<int64_t>(kTileRows, nr - r));
        for (int64_t t = 0; t < nt; t += kTileToks) {
          next.step();
          const int tt = static_cast<int>(std::min<int64_t>(kTileToks, nt - t));
          float* ct = c + (t0 + t) * ldc + r0 + r;
          if (tr == kTileRows && tt == kTileToks) {
            tile<S, K, kTileRows, kTileToks>(plan, pw + r * pb, pb, pa + t * pb, pb, ct, ldc);
          } else {
            kEdge.f[tr - 1][tt - 1](plan, pw + r * pb, pb, pa + t * pb, pb, ct, ldc);
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace qilin::gemm_quant

// The entry points of gemm_quant_impl.h for an ISA's S, inside that ISA's namespace.
#define QILIN_DEFINE_GEMM_QUANT(S)                                                                 \
  void gemm_q4_0_q8_0(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,    \
                      size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {                     \
    gemm_quant::gemm<S, gemm_quant::Kind::Q4_0>(DType::Q4_0, n, w, w_stride, n_rows, a, a_stride,  \
                                                n_tok, c, ldc);                                    \
  }                                                                                                \
  void gemm_q4_1_q8_1(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,    \
                      size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {                     \
    gemm_quant::gemm<S, gemm_quant::Kind::Q4_1>(DType::Q4_1, n, w, w_stride, n_rows, a, a_stride,  \
                                                n_tok, c, ldc);                                    \
  }                                                                                                \
  void gemm_q8_0_q8_0(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,    \
                      size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {                     \
    gemm_quant::gemm<S, gemm_quant::Kind::Q8_0>(DType::Q8_0, n, w, w_stride, n_rows, a, a_stride,  \
                                                n_tok, c, ldc);                                    \
  }                                                                                                \
  void gemm_qi4_g32_q8_1(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a, \
                         size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {                  \
    gemm_quant::gemm<S, gemm_quant::Kind::Q4_1>(DType::QI4_G32, n, w, w_stride, n_rows, a,         \
                                                a_stride, n_tok, c, ldc);                          \
  }                                                                                                \
  void gemm_qi4_g64_q8_1(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a, \
                         size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {                  \
    gemm_quant::gemm<S, gemm_quant::Kind::Q4_1>(DType::QI4_G64, n, w, w_stride, n_rows, a,         \
                                                a_stride, n_tok, c, ldc);                          \
  }                                                                                                \
  void gemm_qi4_g128_q8_1(int64_t n, const void* w, size_t w_stride, int64_t n_rows,               \
                          const void* a, size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {  \
    gemm_quant::gemm<S, gemm_quant::Kind::Q4_1>(DType::QI4_G128, n, w, w_stride, n_rows, a,        \
                                                a_stride, n_tok, c, ldc);                          \
  }                                                                                                \
  void gemm_nf4_q8_0(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,     \
                     size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {                      \
    gemm_quant::gemm<S, gemm_quant::Kind::Q8_0>(DType::NF4, n, w, w_stride, n_rows, a, a_stride,   \
                                                n_tok, c, ldc);                                    \
  }                                                                                                \
  void gemm_nf4dq_q8_0(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,   \
                       size_t a_stride, int64_t n_tok, float* c, int64_t ldc) {                    \
    gemm_quant::gemm<S, gemm_quant::Kind::Q8_0>(DType::NF4_DQ, n, w, w_stride, n_rows, a,          \
                                                a_stride, n_tok, c, ldc);                          \
  }
