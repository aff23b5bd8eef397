// AVX-512 VNNI tiled gemms for Q4_0 x Q8_0, Q4_1 x Q8_1 and Q8_0 x Q8_0. Each call repacks
// weights and activations into the block-per-lane layout of gemm_quant_impl.h (16 blocks per
// ZMM), then a 4-row x 3-token microkernel runs 8 VPDPBUSDs per group of 16 blocks per pair
// and one convert + scale + FMA per group, keeping 12 int32 and 12 float accumulators in ZMMs.
// NOTE: VPDPBUSD multiplies unsigned by signed bytes, so weights are packed unsigned (Q4 nibbles
// 0..15, Q8_0 ^ 0x80) and the offset is removed exactly via the activations' per-block sums.
// The packing loops, tiles, slicing and weight cache around these are gemm_quant_driver.h's.
// GCC 12.1/12.2's AVX-512 headers trip -W(maybe-)uninitialized inside their own intrinsics
// (GCC PR105593, fixed in 12.3); the warnings point into the header, not at this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/gemm_quant_driver.h"
#include "cpu/gemm_quant_impl.h"
#include "cpu/quants.h"

namespace qilin::avx512 {
namespace {

using gemm_quant::GroupPlan;
using gemm_quant::Kind;

inline __m512i load(const uint8_t* p) { return _mm512_loadu_si512(p); }
inline void store(uint8_t* p, __m512i v) { _mm512_storeu_si512(p, v); }
inline __m128i load128(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}

// Transposes 4x4 dwords within each 128-bit lane: afterwards r[k] lane i holds dword k of
// every input's lane i, in input order.
inline void transpose4_in_lanes(__m512i* r) {
  const __m512i t0 = _mm512_unpacklo_epi32(r[0], r[1]), t1 = _mm512_unpackhi_epi32(r[0], r[1]);
  const __m512i t2 = _mm512_unpacklo_epi32(r[2], r[3]), t3 = _mm512_unpackhi_epi32(r[2], r[3]);
  r[0] = _mm512_unpacklo_epi64(t0, t2);
  r[1] = _mm512_unpackhi_epi64(t0, t2);
  r[2] = _mm512_unpacklo_epi64(t1, t3);
  r[3] = _mm512_unpackhi_epi64(t1, t3);
}

// 16 blocks' 32 qs bytes (block b at qs + b * stride) -> out[k] lane b = dword k of block b.
// Input j holds blocks j, 4+j, 8+j, 12+j in its 128-bit lanes, so after the in-lane transpose
// dword 4i + j is block 4i + j: the natural order, no permute needed.
inline void transpose_q8_group(const uint8_t* qs, size_t stride, __m512i* out) {
  __m512i lo[4], hi[4];
  for (int j = 0; j < 4; ++j) {
    const __m512i x0 = _mm512_inserti64x4(
        _mm512_castsi256_si512(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + j * stride))),
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + (4 + j) * stride)), 1);
    const __m512i x1 = _mm512_inserti64x4(
        _mm512_castsi256_si512(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + (8 + j) * stride))),
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + (12 + j) * stride)), 1);
    lo[j] = _mm512_shuffle_i32x4(x0, x1, _MM_SHUFFLE(2, 0, 2, 0));  // dwords 0..3 of each
    hi[j] = _mm512_shuffle_i32x4(x0, x1, _MM_SHUFFLE(3, 1, 3, 1));  // dwords 4..7 of each
  }
  transpose4_in_lanes(lo);
  transpose4_in_lanes(hi);
  for (int k = 0; k < 4; ++k) {
    out[k] = lo[k];
    out[4 + k] = hi[k];
  }
}

inline __m512 low_f16(__m512i h) { return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h)); }
inline __m512 high_f16(__m512i h) { return low_f16(_mm512_srli_epi32(h, 16)); }

inline __m128 sum_to_128(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// The AVX-512 half of gemm_quant_driver.h.
struct Simd {
  static constexpr int kLanes = 16;
  static constexpr size_t kVec = 64;   // bytes per ZMM
  static constexpr int kTileRows = 4;  // microkernel tile: 4 + 1 loaded + 12 + 12 accumulators
  static constexpr int kTileToks = 3;  //   fit the 32 ZMMs
  // Packed activations per slice: 480 KB at n = 1536 (L2). Every slice widens the weights
  // again, so a serving step of 128 prompt tokens plus the decodes stays one slice (128 split it
  // in two: pp with 144-token batches 2743 -> 2830 t/s, pp512 unchanged).
  static constexpr int64_t kTokSlice = 256;
  static constexpr int64_t kRowSlice = 64;  // packed weights per slice: 120 KB at n = 1536
  static constexpr uint8_t kQ8Xor = 0x80;   // VPDPBUSD's unsigned operand
  static constexpr bool kCacheWeights = true;

  using Acc = __m512;
  static Acc zero() { return _mm512_setzero_ps(); }

  // The tail group's gather indices and lane masks as vectors, built once per call.
  struct TailGather {
    int steps = 0;
    __mmask16 valid = 0, first = 0;
    __m512i header, offset[gemm_quant::kMaxTailSteps], shift[gemm_quant::kMaxTailSteps];
  };

  static TailGather tail_gather(const GroupPlan& plan, DType type) {
    const gemm_quant::TailLayout t = gemm_quant::plan_tail(plan, type);
    TailGather g;
    g.steps = plan.tail_steps;
    for (int lane = 0; lane < kLanes; ++lane) {
      if (t.valid[lane]) g.valid |= static_cast<__mmask16>(1u << lane);
      if (t.first[lane]) g.first |= static_cast<__mmask16>(1u << lane);
    }
    g.header = _mm512_loadu_si512(t.header);
    for (int k = 0; k < gemm_quant::kMaxTailSteps; ++k) {
      g.offset[k] = _mm512_loadu_si512(t.offset[k]);
      g.shift[k] = _mm512_loadu_si512(t.shift[k]);
    }
    return g;
  }

  // Packs a tail group (src = its first block) with masked gathers: padding lanes read nothing
  // and get zero scales, so whatever their data holds contributes 0. kCorr != 0 writes the
  // activation correction into x; kX writes the header's second f16 (m or s) in first lanes.
  template <bool kQ4, uint8_t kXor, int kCorr, bool kX>
  static void pack_tail(const TailGather& g, const uint8_t* src, uint8_t* dst) {
    const __m512i zero = _mm512_setzero_si512();
    __m512i sum = zero;
    for (int k = 0; k < g.steps; ++k) {
      __m512i v = _mm512_mask_i32gather_epi32(zero, g.valid, g.offset[k], src, 1);
      if constexpr (kQ4)
        v = _mm512_and_si512(_mm512_srlv_epi32(v, g.shift[k]), _mm512_set1_epi8(0x0f));
      if constexpr (kXor != 0) v = _mm512_xor_si512(v, _mm512_set1_epi8(static_cast<char>(kXor)));
      store(dst + k * kVec, v);
      if constexpr (kCorr != 0) sum = _mm512_dpbusd_epi32(sum, _mm512_set1_epi8(1), v);
    }
    const __m512i h = _mm512_mask_i32gather_epi32(zero, g.valid, g.header, src, 1);
    uint8_t* x = dst + (g.steps + 1) * kVec;
    _mm512_storeu_ps(dst + g.steps * kVec, low_f16(h));
    if constexpr (kCorr != 0) store(x, _mm512_mullo_epi32(sum, _mm512_set1_epi32(-kCorr)));
    if constexpr (kX) _mm512_storeu_ps(x, high_f16(_mm512_maskz_mov_epi32(g.first, h)));
  }

  // 16 Q4 blocks' 16 qs bytes -> 8 steps of nibbles as bytes. qs dword k holds elements
  // 4k..4k+3 in its low nibbles and 16+4k..19+4k in its high nibbles, i.e. unpacked dwords k
  // and 4+k.
  static void pack_q4_group(const uint8_t* qs, size_t stride, uint8_t* dst) {
    __m512i r[4];
    for (int j = 0; j < 4; ++j) {
      __m512i v = _mm512_castsi128_si512(load128(qs + j * stride));
      v = _mm512_inserti32x4(v, load128(qs + (4 + j) * stride), 1);
      v = _mm512_inserti32x4(v, load128(qs + (8 + j) * stride), 2);
      r[j] = _mm512_inserti32x4(v, load128(qs + (12 + j) * stride), 3);
    }
    transpose4_in_lanes(r);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    for (int k = 0; k < 4; ++k) {
      store(dst + k * kVec, _mm512_and_si512(r[k], m4));
      store(dst + (4 + k) * kVec, _mm512_and_si512(_mm512_srli_epi32(r[k], 4), m4));
    }
  }

  // 16 Q8 blocks' qs -> 8 steps, each byte ^ kXor; kCorr != 0: x = -kCorr * (the lane's byte
  // sum; lane b = block b, so these are the block sums).
  template <uint8_t kXor, int kCorr>
  static void pack_q8_group(const uint8_t* qs, size_t stride, uint8_t* dst) {
    __m512i v[8];
    transpose_q8_group(qs, stride, v);
    if constexpr (kXor != 0) {
      const __m512i k = _mm512_set1_epi8(static_cast<char>(kXor));
      for (int s = 0; s < 8; ++s) store(dst + s * kVec, _mm512_xor_si512(v[s], k));
    } else {
      for (int s = 0; s < 8; ++s) store(dst + s * kVec, v[s]);
    }
    if constexpr (kCorr != 0) {
      __m512i sum = _mm512_setzero_si512();
      for (int s = 0; s < 8; ++s) sum = _mm512_dpbusd_epi32(sum, _mm512_set1_epi8(1), v[s]);
      store(dst + 9 * kVec, _mm512_mullo_epi32(sum, _mm512_set1_epi32(-kCorr)));
    }
  }

  // The first 4 bytes of 16 blocks (one gather instead of 32 scalar loads): the f16 scale d to
  // dst, and (kX) Q4_1's m / Q8_1's s from the high half to dst + kVec.
  template <bool kX>
  static void store_headers(const uint8_t* blocks, size_t stride, uint8_t* dst) {
    const __m512i idx =
        _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                           _mm512_set1_epi32(static_cast<int>(stride)));
    const __m512i h = _mm512_i32gather_epi32(idx, blocks, 1);
    _mm512_storeu_ps(dst, low_f16(h));
    if constexpr (kX) _mm512_storeu_ps(dst + kVec, high_f16(h));
  }

  // One group (`steps` dot steps) of an R-row x T-token tile: integer dots per lane (= per
  // block in a full group), then acc += float(dot) * (d_w * d_a) [+ m_w * s_a], all lane-wise.
  template <Kind K, int R, int T>
  static inline __attribute__((always_inline)) void group_step(int steps, const uint8_t* w,
                                                               size_t ws, const uint8_t* a,
                                                               size_t as, __m512 (&acc)[R][T]) {
    __m512i dot[R][T];
    for (int t = 0; t < T; ++t) {
      const __m512i init =
          K == Kind::Q4_1 ? _mm512_setzero_si512() : load(a + t * as + (steps + 1) * kVec);
      for (int r = 0; r < R; ++r) dot[r][t] = init;
    }
    for (int k = 0; k < steps; ++k) {
      __m512i wv[R];
      for (int r = 0; r < R; ++r) wv[r] = load(w + r * ws + k * kVec);
      for (int t = 0; t < T; ++t) {
        const __m512i av = load(a + t * as + k * kVec);
        for (int r = 0; r < R; ++r) dot[r][t] = _mm512_dpbusd_epi32(dot[r][t], wv[r], av);
      }
    }
    __m512 dw[R];
    for (int r = 0; r < R; ++r) dw[r] = _mm512_loadu_ps(w + r * ws + steps * kVec);
    for (int t = 0; t < T; ++t) {
      const __m512 da = _mm512_loadu_ps(a + t * as + steps * kVec);
      for (int r = 0; r < R; ++r) {
        acc[r][t] =
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r][t]), _mm512_mul_ps(dw[r], da), acc[r][t]);
      }
    }
    if constexpr (K == Kind::Q4_1) {
      for (int t = 0; t < T; ++t) {
        const __m512 s = _mm512_loadu_ps(a + t * as + (steps + 1) * kVec);
        for (int r = 0; r < R; ++r) {
          acc[r][t] =
              _mm512_fmadd_ps(_mm512_loadu_ps(w + r * ws + (steps + 1) * kVec), s, acc[r][t]);
        }
      }
    }
  }

  // Four rows' sums of one token land in one XMM (a 4-way horizontal-add tree), stored at once.
  template <int R, int T>
  static inline __attribute__((always_inline)) void store_tile(const __m512 (&acc)[R][T], float* c,
                                                               int64_t ldc) {
    static_assert(R <= 4);
    for (int t = 0; t < T; ++t) {
      __m128 s[4];
      // NOTE: the pragma keeps the one-token edge tiles' accumulators in registers (without it,
      // inlined from here, GCC keeps them on the stack).
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) s[r] = r < R ? sum_to_128(acc[r][t]) : _mm_setzero_ps();
      const __m128 v = _mm_hadd_ps(_mm_hadd_ps(s[0], s[1]), _mm_hadd_ps(s[2], s[3]));
      _mm_mask_storeu_ps(c + t * ldc, static_cast<__mmask8>((1u << R) - 1), v);
    }
  }

  // The cache keeps Q4 weights compact: a full group's 8 steps of nibbles-as-bytes become 4
  // steps of two nibbles (step k low, step 4 + k high), d and x verbatim, the tail group
  // verbatim. Every call widens its 64-row slices back into L2 (compact_widen) instead of a
  // plain copy: 0.6x the bytes from DRAM, where batched decode spends most of its gemm time.
  static constexpr size_t kCompactGroup = 6 * kVec;  // 4 nibble steps + d + x (full: 10 * kVec)
  static size_t compact_row_bytes(const GroupPlan& p) {
    return p.row_bytes - static_cast<size_t>(p.n_full) * (p.full_bytes - kCompactGroup);
  }
  static void compact_row(const GroupPlan& p, const uint8_t* full, uint8_t* dst) {
    for (int64_t g = 0; g < p.n_full; ++g, full += p.full_bytes, dst += kCompactGroup) {
      for (int k = 0; k < 4; ++k) {
        store(dst + k * kVec, _mm512_or_si512(load(full + k * kVec),
                                              _mm512_slli_epi16(load(full + (4 + k) * kVec), 4)));
      }
      std::memcpy(dst + 4 * kVec, full + 8 * kVec, 2 * kVec);
    }
    std::memcpy(dst, full, p.row_bytes - static_cast<size_t>(p.n_full) * p.full_bytes);
  }
  static void compact_widen(const GroupPlan& p, const uint8_t* src, int64_t n_rows, uint8_t* dst) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const size_t tail = p.row_bytes - static_cast<size_t>(p.n_full) * p.full_bytes;
    for (int64_t r = 0; r < n_rows; ++r) {
      for (int64_t g = 0; g < p.n_full; ++g, src += kCompactGroup, dst += p.full_bytes) {
        for (int k = 0; k < 4; ++k) {
          const __m512i v = load(src + k * kVec);
          store(dst + k * kVec, _mm512_and_si512(v, m4));
          store(dst + (4 + k) * kVec, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
        }
        store(dst + 8 * kVec, load(src + 4 * kVec));
        store(dst + 9 * kVec, load(src + 5 * kVec));
      }
      std::memcpy(dst, src, tail);
      src += tail;
      dst += tail;
    }
  }
};

}  // namespace

QILIN_DEFINE_GEMM_QUANT(Simd)

}  // namespace qilin::avx512
