// AVX2 + FMA + F16C kernels: dot products (8-bit integer maddubs for the quantized types) and
// activation converters. Compiled with -mavx2 -mfma -mf16c; reached only through
// matmul_kernels(), which checks the CPU first.
// NOTE: the activation quantizers are bit-exact with quantize_row_ref (same f32 operations,
// roundf emulated exactly); the dot products differ from the scalar ones only in f32 sum order.
#include <immintrin.h>

#include <cmath>
#include <cstddef>
#include <cstring>

#include "core/fp16.h"
#include "cpu/quants.h"
#include "cpu/quants_driver.h"
#include "cpu/quants_impl.h"

namespace qilin::avx2 {
namespace {

using quants_driver::load_f16x8_strided;

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline int hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

inline float f16(uint16_t h) { return _cvtsh_ss(h); }

// 16 bytes of nibbles -> 32 bytes 0..15 in element order: the low nibbles are elements 0..15
// and the high nibbles 16..31, which is exactly the layout of the Q8 activation block.
inline __m256i unpack_nibbles(const uint8_t* qs) {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

// Sum of u8 x s8 products in 8 i32 lanes. maddubs saturates at 16 bits, but |u| <= 128 and
// |s| <= 127 keep each pair sum within 2 * 128 * 127 = 32512.
inline __m256i dot_u8s8(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

// Signed x signed: move x's sign onto y so the unsigned operand is |x|.
inline __m256i dot_s8s8(__m256i x, __m256i y) {
  return dot_u8s8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// One block's integer dot product as 8 f32 lanes (exact: |sum| < 2^24), before scaling.
inline __m256 idot_q4_0(const BlockQ4_0& x, const BlockQ8_0& y) {
  const __m256i q = _mm256_sub_epi8(unpack_nibbles(x.qs), _mm256_set1_epi8(8));
  return _mm256_cvtepi32_ps(dot_s8s8(q, load256(y.qs)));
}
inline __m256 idot_q4_1(const BlockQ4_1& x, const BlockQ8_1& y) {
  return _mm256_cvtepi32_ps(dot_u8s8(unpack_nibbles(x.qs), load256(y.qs)));
}
inline __m256 idot_q8_0(const BlockQ8_0& x, const BlockQ8_0& y) {
  return _mm256_cvtepi32_ps(dot_s8s8(load256(x.qs), load256(y.qs)));
}

// sum_b (d_w[b] * d_a[b]) * idot(b) [+ m_w[b] * s_a[b] when kMin]. Eight blocks per step share
// one vector of scale products; two accumulators let consecutive FMAs overlap. The scale
// product is the same f32 multiply as the scalar kernel's, so only the sum order differs.
template <typename BX, typename BY, __m256 (*IDot)(const BX&, const BY&), bool kMin>
float vec_dot_blocks(int64_t n, const void* w, const void* a) {
  const BX* x = static_cast<const BX*>(w);
  const BY* y = static_cast<const BY*>(a);
  const int64_t nb = n / kQK;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), mins = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= nb; i += 8) {
    const __m256 d = _mm256_mul_ps(load_f16x8_strided(x + i, offsetof(BX, d), sizeof(BX)),
                                   load_f16x8_strided(y + i, offsetof(BY, d), sizeof(BY)));
    if constexpr (kMin) {
      mins = _mm256_fmadd_ps(load_f16x8_strided(x + i, offsetof(BX, m), sizeof(BX)),
                             load_f16x8_strided(y + i, offsetof(BY, s), sizeof(BY)), mins);
    }
    // Broadcast scale k with immediate shuffles of each duplicated half: no index constants
    // to set up per call, which matters for short rows (576 elements = 18 blocks).
    const __m256 d_lo = _mm256_permute2f128_ps(d, d, 0x00),
                 d_hi = _mm256_permute2f128_ps(d, d, 0x11);
    acc0 = _mm256_fmadd_ps(IDot(x[i + 0], y[i + 0]), _mm256_shuffle_ps(d_lo, d_lo, 0x00), acc0);
    acc1 = _mm256_fmadd_ps(IDot(x[i + 1], y[i + 1]), _mm256_shuffle_ps(d_lo, d_lo, 0x55), acc1);
    acc0 = _mm256_fmadd_ps(IDot(x[i + 2], y[i + 2]), _mm256_shuffle_ps(d_lo, d_lo, 0xaa), acc0);
    acc1 = _mm256_fmadd_ps(IDot(x[i + 3], y[i + 3]), _mm256_shuffle_ps(d_lo, d_lo, 0xff), acc1);
    acc0 = _mm256_fmadd_ps(IDot(x[i + 4], y[i + 4]), _mm256_shuffle_ps(d_hi, d_hi, 0x00), acc0);
    acc1 = _mm256_fmadd_ps(IDot(x[i + 5], y[i + 5]), _mm256_shuffle_ps(d_hi, d_hi, 0x55), acc1);
    acc0 = _mm256_fmadd_ps(IDot(x[i + 6], y[i + 6]), _mm256_shuffle_ps(d_hi, d_hi, 0xaa), acc0);
    acc1 = _mm256_fmadd_ps(IDot(x[i + 7], y[i + 7]), _mm256_shuffle_ps(d_hi, d_hi, 0xff), acc1);
  }
  float summs = 0.0f;
  for (; i < nb; ++i) {
    acc0 = _mm256_fmadd_ps(IDot(x[i], y[i]), _mm256_set1_ps(f16(x[i].d) * f16(y[i].d)), acc0);
    if constexpr (kMin) summs += f16(x[i].m) * f16(y[i].s);
  }
  float sum = hsum(_mm256_add_ps(acc0, acc1));
  if constexpr (kMin) sum += hsum(mins) + summs;
  return sum;
}

// roundf (halves away from zero) for |v| < 2^23: truncate, then step away from zero when the
// dropped fraction is >= 0.5. v - trunc(v) is exact, so this matches roundf bit for bit, which
// _mm256_round_ps's round-half-even would not.
inline __m256i round_away(__m256 v) {
  const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m256 sign = _mm256_and_ps(v, _mm256_set1_ps(-0.0f));
  const __m256 frac = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(v, t));
  const __m256 up = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
  const __m256 step = _mm256_and_ps(up, _mm256_or_ps(sign, _mm256_set1_ps(1.0f)));
  return _mm256_cvttps_epi32(_mm256_add_ps(t, step));
}

// One 32-element block to int8 codes with the reference's scale; returns sum(codes).
inline int quantize_block_q8(const float* x, int8_t* qs, uint16_t* d_out, float* d_f32) {
  __m256 v[4];
  __m256 amax = _mm256_setzero_ps();
  for (int k = 0; k < 4; ++k) {
    v[k] = _mm256_loadu_ps(x + 8 * k);
    amax = _mm256_max_ps(amax, _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v[k]));
  }
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  const float d = _mm_cvtss_f32(m) / 127.0f;
  float id = d != 0.0f ? 1.0f / d : 0.0f;
  if (std::isinf(id)) id = 0.0f;  // subnormal scale: as quantize_row_ref (see quants.cc)
  *d_out = fp32_to_fp16(d);
  *d_f32 = d;
  const __m256 vid = _mm256_set1_ps(id);
  __m256i q[4];
  for (int k = 0; k < 4; ++k) q[k] = round_away(_mm256_mul_ps(v[k], vid));
  const __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
  // packs interleave 128-bit lanes; the permute restores element order.
  const __m256i q16a = _mm256_packs_epi32(q[0], q[1]);
  const __m256i q16b = _mm256_packs_epi32(q[2], q[3]);
  const __m256i q8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(q16a, q16b),
                                                 _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs), q8);
  return hsum_i32(sum);
}

// The block quantizer of quants_driver.h's Q8_0 / Q8_1 activation rows.
struct Q8 {
  static int quantize_block_q8(const float* x, int8_t* qs, uint16_t* d_out, float* d_f32) {
    return avx2::quantize_block_q8(x, qs, d_out, d_f32);
  }
  static uint16_t to_f16(float f) { return fp32_to_fp16(f); }
};

// ggml's f32 -> bf16 on 8 lanes: quiet NaNs, round to nearest even (incl. subnormals, unlike
// VCVTNEPS2BF16, which flushes them). Result in the low 16 bits of each i32 lane.
inline __m256i bf16_round(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                            _mm256_set1_epi32(0x7f800000));
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r =
      _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd)), 16);
  const __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(64));
  return _mm256_blendv_epi8(r, q, is_nan);
}

inline __m256 load_bf16x8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

inline __m256 load_f16x8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

}  // namespace

float vec_dot_q4_0_q8_0(int64_t n, const void* w, const void* a) {
  return vec_dot_blocks<BlockQ4_0, BlockQ8_0, idot_q4_0, false>(n, w, a);
}

// Q8_1's s = d_a * sum(q_a) carries the weights' minimum: sum_j m * a_j = m * s.
float vec_dot_q4_1_q8_1(int64_t n, const void* w, const void* a) {
  return vec_dot_blocks<BlockQ4_1, BlockQ8_1, idot_q4_1, true>(n, w, a);
}

float vec_dot_q8_0_q8_0(int64_t n, const void* w, const void* a) {
  return vec_dot_blocks<BlockQ8_0, BlockQ8_0, idot_q8_0, false>(n, w, a);
}

// The float dot products keep four accumulators (32 elements per iteration) to cover FMA
// latency, then 8 at a time, then a scalar tail for n % 8.
#define QILIN_FLOAT_DOT(LOAD, TO_F32, T)                                                         \
  const T* x = static_cast<const T*>(w);                                                         \
  const T* y = static_cast<const T*>(a);                                                         \
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),                \
                   _mm256_setzero_ps()};                                                         \
  int64_t i = 0;                                                                                 \
  for (; i + 32 <= n; i += 32) {                                                                 \
    for (int k = 0; k < 4; ++k)                                                                  \
      acc[k] = _mm256_fmadd_ps(LOAD(x + i + 8 * k), LOAD(y + i + 8 * k), acc[k]);                \
  }                                                                                              \
  for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(LOAD(x + i), LOAD(y + i), acc[0]);         \
  float sum = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))); \
  for (; i < n; ++i) sum += TO_F32(x[i]) * TO_F32(y[i]);                                         \
  return sum;

float vec_dot_f16_f16(int64_t n, const void* w, const void* a) {
  QILIN_FLOAT_DOT(load_f16x8, f16, uint16_t)
}

float vec_dot_bf16_bf16(int64_t n, const void* w, const void* a) {
  QILIN_FLOAT_DOT(load_bf16x8, bf16_to_fp32, uint16_t)
}

float vec_dot_f32_f32(int64_t n, const void* w, const void* a) {
  QILIN_FLOAT_DOT(_mm256_loadu_ps, static_cast<float>, float)
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
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), h);
  }
  for (; i < n; ++i) y[i] = fp32_to_fp16(src[i]);
}

void quantize_row_bf16(const float* src, void* dst, int64_t n) {
  uint16_t* y = static_cast<uint16_t*>(dst);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    // packus works within 128-bit lanes; permute4x64 puts the four 64-bit groups in order.
    const __m256i p = _mm256_packus_epi32(bf16_round(_mm256_loadu_ps(src + i)),
                                          bf16_round(_mm256_loadu_ps(src + i + 8)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), _mm256_permute4x64_epi64(p, 0xd8));
  }
  for (; i < n; ++i) y[i] = fp32_to_bf16(src[i]);
}

}  // namespace qilin::avx2
