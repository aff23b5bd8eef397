// AVX2 + FMA + F16C gemv kernels: one activation row against many weight rows, one block per
// YMM. The activation's scales are converted to f32 once per call (per chunk of kChunkBlocks),
// Q4_0's integer offset term 8 * sum(y) is summed once instead of per row, and four rows run
// together so every activation load is shared. Float weights: the activation is widened to f32
// once, so each weight vector costs one conversion and one FMA.
// The chunking, row blocks and entry points around these are gemv_driver.h's.
#include <immintrin.h>

#include <cstddef>
#include <cstring>
#include <type_traits>

#include "cpu/gemv.h"
#include "cpu/gemv_driver.h"
#include "cpu/quants.h"

namespace qilin::avx2 {
namespace {

using gemv_driver::kChunkBlocks;
using gemv_driver::load_f16x4;
using gemv_driver::load_u32x2;

// NOTE: no inline helpers from shared headers (core/fp16.h): a copy compiled here with AVX2
// flags may be the one the linker keeps for every caller.
inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 16 bytes of nibbles -> 32 bytes 0..15 in element order (low nibbles are elements 0..15).
inline __m256i unpack_nibbles(const uint8_t* qs) {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

// u8 x s8 products summed into 8 i32 lanes; |u| <= 128 keeps maddubs' 16-bit pair sums exact.
inline __m256i dot_u8s8(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

struct Act {
  alignas(32) int8_t q[kChunkBlocks][32];
  alignas(32) int32_t corr[kChunkBlocks][8];  // Q4_0: 8 * sum of the bytes of each lane
  alignas(32) float s[kChunkBlocks * 2];      // d per block (Q4_1: d, s per block)
};

enum class Fmt { Q4_0, Q4_1, Q8_0 };

template <Fmt kF>
struct Quant {
  static constexpr bool kMin = kF == Fmt::Q4_1;
  using BX = std::conditional_t<kF == Fmt::Q4_0, BlockQ4_0,
                                std::conditional_t<kF == Fmt::Q4_1, BlockQ4_1, BlockQ8_0>>;
  using BY = std::conditional_t<kMin, BlockQ8_1, BlockQ8_0>;
  using Act = avx2::Act;
  static constexpr size_t kBytes = sizeof(BX);
  static constexpr size_t kQs = offsetof(BX, qs);

  // nb <= kChunkBlocks; padded to a multiple of 4 with zero blocks.
  static void prepare(const BY* y, int64_t nb, Act& a) {
    for (int64_t b = 0; b < (nb + 3) / 4 * 4; ++b) {
      const bool real = b < nb;
      if (real) {
        std::memcpy(a.q[b], y[b].qs, 32);
      } else {
        std::memset(a.q[b], 0, 32);
      }
      if constexpr (kMin) {
        a.s[2 * b] = real ? _cvtsh_ss(y[b].d) : 0.0f;
        a.s[2 * b + 1] = real ? _cvtsh_ss(y[b].s) : 0.0f;
      } else {
        a.s[b] = real ? _cvtsh_ss(y[b].d) : 0.0f;
      }
      if constexpr (kF == Fmt::Q4_0) {
        // (q - 8) . y = q . y - 8 * sum(y): the second term is the same for every weight row.
        _mm256_store_si256(reinterpret_cast<__m256i*>(a.corr[b]),
                           dot_u8s8(_mm256_set1_epi8(8), load256(a.q[b])));
      }
    }
  }

  static __m256i idot(const uint8_t* blk, const Act& a, int64_t b) {
    const __m256i y = _mm256_load_si256(reinterpret_cast<const __m256i*>(a.q[b]));
    if constexpr (kF == Fmt::Q8_0) {
      // Signed x signed: move x's sign onto y so the unsigned operand is |x|.
      const __m256i x = load256(blk + kQs);
      return dot_u8s8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
    } else {
      const __m256i d = dot_u8s8(unpack_nibbles(blk + kQs), y);
      if constexpr (kF == Fmt::Q4_0) {
        return _mm256_sub_epi32(d, _mm256_load_si256(reinterpret_cast<const __m256i*>(a.corr[b])));
      }
      return d;
    }
  }

  // Blocks 4g..4g+3 of one row (p points at block 4g) into acc (and the minimum terms, Q4_1).
  static void group(const uint8_t* p, const Act& a, int64_t g, __m256& acc, __m256& mins,
                    int cnt = 4) {
    __m256 s01, s23;  // scale products, each duplicated in both halves for immediate shuffles
    if constexpr (kMin) {
      // [d0 m0 d1 m1 | d2 m2 d3 m3] x [da0 sa0 ...]: even lanes scale, odd lanes minimum terms.
      const __m256 dm = _mm256_mul_ps(
          _mm256_cvtph_ps(_mm_set_epi64x(static_cast<long long>(load_u32x2(p + 2 * kBytes, kBytes, cnt - 2)),
                                         static_cast<long long>(load_u32x2(p, kBytes, cnt)))),
          _mm256_load_ps(a.s + 8 * g));
      mins = _mm256_add_ps(mins, dm);
      s01 = _mm256_permute2f128_ps(dm, dm, 0x00);
      s23 = _mm256_permute2f128_ps(dm, dm, 0x11);
    } else {
      const __m128 d = _mm_mul_ps(
          _mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<long long>(load_f16x4(p, kBytes, cnt)))),
          _mm_load_ps(a.s + 4 * g));
      s01 = _mm256_set_m128(d, d);
      s23 = _mm256_permute_ps(s01, 0xee);  // lanes 2, 3 moved down: same shuffles as s01
    }
    const int64_t b = 4 * g;
    // Shuffle immediates must be constants: even = lane 0, odd = lane 1 (Q4_1: lane 2).
    const __m256 sc0 = _mm256_shuffle_ps(s01, s01, 0x00);
    const __m256 sc1 = kMin ? _mm256_shuffle_ps(s01, s01, 0xaa) : _mm256_shuffle_ps(s01, s01, 0x55);
    const __m256 sc2 = _mm256_shuffle_ps(s23, s23, 0x00);
    const __m256 sc3 = kMin ? _mm256_shuffle_ps(s23, s23, 0xaa) : _mm256_shuffle_ps(s23, s23, 0x55);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(idot(p, a, b)), sc0, acc);
    if (cnt > 1) acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(idot(p + kBytes, a, b + 1)), sc1, acc);
    if (cnt > 2) acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(idot(p + 2 * kBytes, a, b + 2)), sc2, acc);
    if (cnt > 3) acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(idot(p + 3 * kBytes, a, b + 3)), sc3, acc);
  }

  static float finish(__m256 acc, __m256 mins) {
    float s = hsum(acc);
    if constexpr (kMin) {
      // odd lanes hold m_w * s_a
      s += hsum(_mm256_and_ps(mins, _mm256_castsi256_ps(_mm256_setr_epi32(0, -1, 0, -1, 0, -1, 0, -1))));
    }
    return s;
  }
};

// ---- Float weights ----
struct LoadF16 {
  using T = uint16_t;
  static __m256 load(const T* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static float one(T v) { return _cvtsh_ss(v); }
};
struct LoadBF16 {
  using T = uint16_t;
  static __m256 load(const T* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static float one(T v) {
    const uint32_t u = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};
struct LoadF32 {
  using T = float;
  static __m256 load(const T* p) { return _mm256_loadu_ps(p); }
  static float one(T v) { return v; }
};


// The AVX2 half of gemv_driver.h.
struct Simd {
  using Acc = __m256;
  static Acc zero() { return _mm256_setzero_ps(); }
  static constexpr bool kPrefetch = false;
  using Q4_0 = Quant<Fmt::Q4_0>;
  using Q4_1 = Quant<Fmt::Q4_1>;
  using Q8_0 = Quant<Fmt::Q8_0>;
  using F16 = LoadF16;
  using BF16 = LoadBF16;
  using F32 = LoadF32;

  // R rows x n columns against an f32 activation; two accumulators per row (2R chains), then a
  // scalar tail for n % 8.
  template <class L, int R>
  static void float_rows(const uint8_t* w, size_t ws, int64_t n, const float* a, float* y,
                         bool add, const char* /*pf_end*/) {
    using T = typename L::T;
    const T* row[R];
    __m256 acc0[R], acc1[R];
    for (int r = 0; r < R; ++r) {
      row[r] = reinterpret_cast<const T*>(w + r * ws);
      acc0[r] = _mm256_setzero_ps(), acc1[r] = _mm256_setzero_ps();
    }
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      const __m256 a0 = _mm256_loadu_ps(a + i), a1 = _mm256_loadu_ps(a + i + 8);
      for (int r = 0; r < R; ++r) {
        acc0[r] = _mm256_fmadd_ps(L::load(row[r] + i), a0, acc0[r]);
        acc1[r] = _mm256_fmadd_ps(L::load(row[r] + i + 8), a1, acc1[r]);
      }
    }
    for (; i + 8 <= n; i += 8) {
      const __m256 a0 = _mm256_loadu_ps(a + i);
      for (int r = 0; r < R; ++r) acc0[r] = _mm256_fmadd_ps(L::load(row[r] + i), a0, acc0[r]);
    }
    for (int r = 0; r < R; ++r) {
      float v = hsum(_mm256_add_ps(acc0[r], acc1[r]));
      for (int64_t j = i; j < n; ++j) v += L::one(row[r][j]) * a[j];
      y[r] = add ? y[r] + v : v;
    }
  }

  // cn 16-bit activation elements to f32 (8 at a time, then one by one).
  template <class L>
  static void widen(const uint16_t* src, int64_t cn, float* dst) {
    int64_t i = 0;
    for (; i + 8 <= cn; i += 8) _mm256_store_ps(dst + i, L::load(src + i));
    for (; i < cn; ++i) dst[i] = L::one(src[i]);
  }
};

}  // namespace

QILIN_DEFINE_GEMV(Simd)

}  // namespace qilin::avx2
