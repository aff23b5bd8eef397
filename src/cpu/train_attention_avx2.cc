// AVX2 training attention: 8 query vectors x 8 keys per tile (train_attention_impl.h).
// exp() is vec_avx2.h's polynomial (about 2 ulp; its arguments here are never positive).
#include <immintrin.h>

#include "cpu/vec_avx2.h"

namespace qilin {
namespace {

struct Simd {
  static constexpr int kL = 8;        // lanes: query vectors, and keys per tile
  static constexpr int kAccRows = 4;  // output rows per accumulate step: 8 P + 4 acc YMM
  using V = __m256;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V exp(V x) { return avx2::exp_ps(x); }
  static __m256i load_i(const int32_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  // Lanes whose row t sees key j (t > j - 1), as an all-ones float mask.
  static V visible(int64_t j, __m256i t) {
    return _mm256_castsi256_ps(
        _mm256_cmpgt_epi32(t, _mm256_set1_epi32(static_cast<int32_t>(j - 1))));
  }
  static V select(V m, V a, V b) { return _mm256_blendv_ps(b, a, m); }
};

}  // namespace
}  // namespace qilin

#include "cpu/train_attention_impl.h"

namespace qilin::avx2 {
const TrainAttnKernels kTrainAttnKernels = {Simd::kL, ta_forward<Simd>, ta_backward<Simd>};
}  // namespace qilin::avx2
