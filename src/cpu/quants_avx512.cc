// AVX-512 (F/BW/VL/DQ + VNNI) kernels: quantized dot products with VPDPBUSD on two 32-element
// blocks per ZMM register, float dot products with masked tails, and activation converters.
// NOTE: no AVX512_BF16 instruction is used: cpu_supports(Avx512) does not require it, and
// VCVTNEPS2BF16 / VDPBF16PS flush subnormals, which ggml's reference rounding does not.
// GCC 12.1/12.2's AVX-512 headers trip -W(maybe-)uninitialized inside their own intrinsics
// (GCC PR105593, fixed in 12.3); the warnings point into the header, not at this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cmath>
#include <cstddef>
#include <cstring>

#include "core/fp16.h"
#include "cpu/quants.h"
#include "cpu/quants_driver.h"
#include "cpu/quants_impl.h"

namespace qilin::avx512 {
namespace {

using quants_driver::load_f16x8_strided;

inline float f16(uint16_t h) { return _cvtsh_ss(h); }

inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

// Two consecutive 32-byte runs (e.g. the qs of blocks i and i+1) as one ZMM.
inline __m512i load_2x256(const void* a, const void* b) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(load256(a)), load256(b), 1);
}

// Nibbles of two Q4 blocks -> 64 bytes 0..15 laid out as [A elements 0..31, B elements 0..31],
// matching two Q8 activation blocks: build [qsA, qsA, qsB, qsB], shift the copies that should
// hold the high nibbles, then mask.
inline __m512i unpack_nibbles_2(const uint8_t* qa, const uint8_t* qb) {
  const __m256i ab = _mm256_inserti128_si256(_mm256_castsi128_si256(load128(qa)), load128(qb), 1);
  const __m512i dup = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3),
                                               _mm512_castsi256_si512(ab));
  const __m512i sh = _mm512_srlv_epi64(dup, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
  return _mm512_and_si512(sh, _mm512_set1_epi8(0x0f));
}

inline __m256i unpack_nibbles_1(const uint8_t* q) {
  const __m128i t = load128(q);
  const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

// Per-lane block scales: lanes 0..7 belong to the first block, 8..15 to the second.
inline __m512 scales_2(float da, float db) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(da)), _mm256_set1_ps(db), 1);
}

inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

// The signed x signed product via the u8 x s8 VPDPBUSD: (x + 128) . y - 128 * sum(y), where
// x + 128 is x ^ 0x80 read as unsigned, and 128 * sum(y) is one more VPDPBUSD with 0x80 bytes.
inline __m512i dot_s8s8(__m512i x, __m512i y) {
  const __m512i k80 = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(x, k80), y);
  return _mm512_sub_epi32(p, _mm512_dpbusd_epi32(_mm512_setzero_si512(), k80, y));
}
inline __m256i dot_s8s8(__m256i x, __m256i y) {
  const __m256i k80 = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_xor_si256(x, k80), y);
  return _mm256_sub_epi32(p, _mm256_dpbusd_epi32(_mm256_setzero_si256(), k80, y));
}

// (q - 8) . y = q . y - 8 * sum(y) with q in 0..15 as the unsigned operand.
inline __m512i dot_q4_s8(__m512i q, __m512i y) {
  const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, y);
  return _mm512_sub_epi32(p, _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(8), y));
}
inline __m256i dot_q4_s8(__m256i q, __m256i y) {
  const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, y);
  return _mm256_sub_epi32(p, _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(8), y));
}

// roundf (halves away from zero) for |v| < 2^23, bit-exact: truncate, then step away from zero
// when the (exactly computed) dropped fraction is >= 0.5.
inline __m512i round_away(__m512 v) {
  const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m512 frac = _mm512_abs_ps(_mm512_sub_ps(v, t));
  const __mmask16 up = _mm512_cmp_ps_mask(frac, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
  const __m512 step = _mm512_or_ps(_mm512_and_ps(v, _mm512_set1_ps(-0.0f)), _mm512_set1_ps(1.0f));
  return _mm512_cvttps_epi32(_mm512_mask_add_ps(t, up, t, step));
}

inline int quantize_block_q8(const float* x, int8_t* qs, uint16_t* d_out, float* d_f32) {
  const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
  const float d = amax / 127.0f;
  float id = d != 0.0f ? 1.0f / d : 0.0f;
  if (std::isinf(id)) id = 0.0f;  // subnormal scale: as quantize_row_ref (see quants.cc)
  *d_out = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);  // F16C: as fp32_to_fp16, bit for bit
  *d_f32 = d;
  const __m512 vid = _mm512_set1_ps(id);
  const __m512i q0 = round_away(_mm512_mul_ps(v0, vid));
  const __m512i q1 = round_away(_mm512_mul_ps(v1, vid));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(qs), _mm512_cvtepi32_epi8(q0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + 16), _mm512_cvtepi32_epi8(q1));
  return _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
}

// The block quantizer of quants_driver.h's Q8_0 / Q8_1 activation rows.
struct Q8 {
  static int quantize_block_q8(const float* x, int8_t* qs, uint16_t* d_out, float* d_f32) {
    return avx512::quantize_block_q8(x, qs, d_out, d_f32);
  }
  static uint16_t to_f16(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
};

// ggml's f32 -> bf16 on 16 lanes (see quants_avx2.cc): quiet NaNs, round to nearest even.
inline __m256i bf16_round(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __mmask16 is_nan = _mm512_cmpgt_epu32_mask(
      _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
  const __m512i hi = _mm512_srli_epi32(u, 16);
  const __m512i odd = _mm512_and_si512(hi, _mm512_set1_epi32(1));
  const __m512i r =
      _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd)), 16);
  const __m512i q = _mm512_or_si512(hi, _mm512_set1_epi32(64));
  return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(is_nan, r, q));
}

inline __m512 f16x16_to_f32(__m256i h) { return _mm512_cvtph_ps(h); }
inline __m512 bf16x16_to_f32(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Integer dot products of blocks b and b+1 as 16 f32 lanes (8 per block; exact, |sum| < 2^24),
// and of one block as 8 lanes for an odd last block.
inline __m512 idot2_q4_0(const BlockQ4_0* x, const BlockQ8_0* y) {
  return _mm512_cvtepi32_ps(
      dot_q4_s8(unpack_nibbles_2(x[0].qs, x[1].qs), load_2x256(y[0].qs, y[1].qs)));
}
inline __m256 idot1_q4_0(const BlockQ4_0& x, const BlockQ8_0& y) {
  return _mm256_cvtepi32_ps(dot_q4_s8(unpack_nibbles_1(x.qs), load256(y.qs)));
}
inline __m512 idot2_q4_1(const BlockQ4_1* x, const BlockQ8_1* y) {
  return _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(
      _mm512_setzero_si512(), unpack_nibbles_2(x[0].qs, x[1].qs), load_2x256(y[0].qs, y[1].qs)));
}
inline __m256 idot1_q4_1(const BlockQ4_1& x, const BlockQ8_1& y) {
  return _mm256_cvtepi32_ps(
      _mm256_dpbusd_epi32(_mm256_setzero_si256(), unpack_nibbles_1(x.qs), load256(y.qs)));
}
inline __m512 idot2_q8_0(const BlockQ8_0* x, const BlockQ8_0* y) {
  return _mm512_cvtepi32_ps(dot_s8s8(load_2x256(x[0].qs, x[1].qs), load_2x256(y[0].qs, y[1].qs)));
}
inline __m256 idot1_q8_0(const BlockQ8_0& x, const BlockQ8_0& y) {
  return _mm256_cvtepi32_ps(dot_s8s8(load256(x.qs), load256(y.qs)));
}

// sum_b (d_w[b] * d_a[b]) * idot(b) [+ m_w[b] * s_a[b] when kMin]: eight blocks per step share
// one vector of scale products (the scalar kernel's f32 multiply, so only the sum order
// differs), spread to block pairs with one permute each; then pairs, then one odd block.
template <typename BX, typename BY, __m512 (*IDot2)(const BX*, const BY*),
          __m256 (*IDot1)(const BX&, const BY&), bool kMin>
float vec_dot_blocks(int64_t n, const void* w, const void* a) {
  const BX* x = static_cast<const BX*>(w);
  const BY* y = static_cast<const BY*>(a);
  const int64_t nb = n / kQK;
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  __m256 mins = _mm256_setzero_ps();
  const __m512i pair = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  int64_t i = 0;
  for (; i + 8 <= nb; i += 8) {
    const __m512 d = _mm512_zextps256_ps512(
        _mm256_mul_ps(load_f16x8_strided(x + i, offsetof(BX, d), sizeof(BX)),
                      load_f16x8_strided(y + i, offsetof(BY, d), sizeof(BY))));
    if constexpr (kMin) {
      mins = _mm256_fmadd_ps(load_f16x8_strided(x + i, offsetof(BX, m), sizeof(BX)),
                             load_f16x8_strided(y + i, offsetof(BY, s), sizeof(BY)), mins);
    }
    acc0 = _mm512_fmadd_ps(IDot2(x + i + 0, y + i + 0), _mm512_permutexvar_ps(pair, d), acc0);
    acc1 = _mm512_fmadd_ps(IDot2(x + i + 2, y + i + 2),
                           _mm512_permutexvar_ps(_mm512_add_epi32(pair, _mm512_set1_epi32(2)), d),
                           acc1);
    acc0 = _mm512_fmadd_ps(IDot2(x + i + 4, y + i + 4),
                           _mm512_permutexvar_ps(_mm512_add_epi32(pair, _mm512_set1_epi32(4)), d),
                           acc0);
    acc1 = _mm512_fmadd_ps(IDot2(x + i + 6, y + i + 6),
                           _mm512_permutexvar_ps(_mm512_add_epi32(pair, _mm512_set1_epi32(6)), d),
                           acc1);
  }
  float summs = 0.0f;
  for (; i + 2 <= nb; i += 2) {
    acc0 = _mm512_fmadd_ps(IDot2(x + i, y + i),
                           scales_2(f16(x[i].d) * f16(y[i].d), f16(x[i + 1].d) * f16(y[i + 1].d)),
                           acc0);
    if constexpr (kMin) summs += f16(x[i].m) * f16(y[i].s) + f16(x[i + 1].m) * f16(y[i + 1].s);
  }
  __m256 tail = _mm256_setzero_ps();
  if (i < nb) {
    tail = _mm256_mul_ps(IDot1(x[i], y[i]), _mm256_set1_ps(f16(x[i].d) * f16(y[i].d)));
    if constexpr (kMin) summs += f16(x[i].m) * f16(y[i].s);
  }
  float sum = hsum(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_zextps256_ps512(tail)));
  if constexpr (kMin) sum += _mm512_reduce_add_ps(_mm512_zextps256_ps512(mins)) + summs;
  return sum;
}

}  // namespace

float vec_dot_q4_0_q8_0(int64_t n, const void* w, const void* a) {
  return vec_dot_blocks<BlockQ4_0, BlockQ8_0, idot2_q4_0, idot1_q4_0, false>(n, w, a);
}

// Q8_1's s = d_a * sum(q_a) carries the weights' minimum: sum_j m * a_j = m * s.
float vec_dot_q4_1_q8_1(int64_t n, const void* w, const void* a) {
  return vec_dot_blocks<BlockQ4_1, BlockQ8_1, idot2_q4_1, idot1_q4_1, true>(n, w, a);
}

float vec_dot_q8_0_q8_0(int64_t n, const void* w, const void* a) {
  return vec_dot_blocks<BlockQ8_0, BlockQ8_0, idot2_q8_0, idot1_q8_0, false>(n, w, a);
}

// Float dots: four ZMM accumulators (64 elements per iteration) to cover FMA latency, then 16 at
// a time, then one masked step for n % 16 (masked-off lanes load as zero and add nothing).
#define QILIN_FLOAT_DOT(T, LOAD, MASKLOAD)                                                 \
  const T* x = static_cast<const T*>(w);                                                   \
  const T* y = static_cast<const T*>(a);                                                   \
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),          \
                   _mm512_setzero_ps()};                                                   \
  int64_t i = 0;                                                                           \
  for (; i + 64 <= n; i += 64) {                                                           \
    for (int k = 0; k < 4; ++k)                                                            \
      acc[k] = _mm512_fmadd_ps(LOAD(x + i + 16 * k), LOAD(y + i + 16 * k), acc[k]);        \
  }                                                                                        \
  for (; i + 16 <= n; i += 16) acc[0] = _mm512_fmadd_ps(LOAD(x + i), LOAD(y + i), acc[0]); \
  if (i < n) {                                                                             \
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);                       \
    acc[1] = _mm512_fmadd_ps(MASKLOAD(m, x + i), MASKLOAD(m, y + i), acc[1]);              \
  }                                                                                        \
  return hsum(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));

namespace {
inline __m512 load_f16(const uint16_t* p) { return f16x16_to_f32(load256(p)); }
inline __m512 maskload_f16(__mmask16 m, const uint16_t* p) {
  return f16x16_to_f32(_mm256_maskz_loadu_epi16(m, p));
}
inline __m512 load_bf16(const uint16_t* p) { return bf16x16_to_f32(load256(p)); }
inline __m512 maskload_bf16(__mmask16 m, const uint16_t* p) {
  return bf16x16_to_f32(_mm256_maskz_loadu_epi16(m, p));
}
inline __m512 maskload_f32(__mmask16 m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
}  // namespace

float vec_dot_f16_f16(int64_t n, const void* w, const void* a) {
  QILIN_FLOAT_DOT(uint16_t, load_f16, maskload_f16)
}

float vec_dot_bf16_bf16(int64_t n, const void* w, const void* a) {
  QILIN_FLOAT_DOT(uint16_t, load_bf16, maskload_bf16)
}

float vec_dot_f32_f32(int64_t n, const void* w, const void* a) {
  QILIN_FLOAT_DOT(float, _mm512_loadu_ps, maskload_f32)
}

#undef QILIN_FLOAT_DOT

void quantize_row_q8_0(const float* src, void* dst, int64_t n) {
  quants_driver::quantize_row_q8_0<Q8>(src, dst, n);
}

void quantize_row_q8_1(const float* src, void* dst, int64_t n) {
  quants_driver::quantize_row_q8_1<Q8>(src, dst, n);
}

void quantize_row_f16(const float* src, void* dst, int64_t n) {
  uint16_t* y = static_cast<uint16_t*>(dst);
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(src + i), kRound));
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm256_mask_storeu_epi16(y + i, m, _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, src + i), kRound));
  }
}

void quantize_row_bf16(const float* src, void* dst, int64_t n) {
  uint16_t* y = static_cast<uint16_t*>(dst);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), bf16_round(_mm512_loadu_ps(src + i)));
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm256_mask_storeu_epi16(y + i, m, bf16_round(_mm512_maskz_loadu_ps(m, src + i)));
  }
}

}  // namespace qilin::avx512
