// AVX-512 training attention: 16 query vectors x 16 keys per tile (train_attention_impl.h).
// exp() is vec_avx512.h's polynomial (about 2 ulp), not libm's.
// GCC 12.1/12.2's AVX-512 headers trip -W(maybe-)uninitialized inside their own intrinsics
// (GCC PR105593, fixed in 12.3); the warnings point into the header, not at this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "cpu/vec_avx512.h"

namespace qilin {
namespace {

struct Simd {
  static constexpr int kL = 16;       // lanes: query vectors, and keys per tile
  static constexpr int kAccRows = 8;  // output rows per accumulate step: 16 P + 8 acc ZMM
  using V = __m512;
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V exp(V x) { return avx512::exp_ps(x); }
  static __m512i load_i(const int32_t* p) { return _mm512_loadu_si512(p); }
  // Lanes whose row t sees key j (j <= t).
  static __mmask16 visible(int64_t j, __m512i t) {
    return _mm512_cmp_epi32_mask(_mm512_set1_epi32(static_cast<int32_t>(j)), t, _MM_CMPINT_LE);
  }
  static V select(__mmask16 m, V a, V b) { return _mm512_mask_blend_ps(m, b, a); }
};

}  // namespace
}  // namespace qilin

#include "cpu/train_attention_impl.h"

namespace qilin::avx512 {
const TrainAttnKernels kTrainAttnKernels = {Simd::kL, ta_forward<Simd>, ta_backward<Simd>};
}  // namespace qilin::avx512
