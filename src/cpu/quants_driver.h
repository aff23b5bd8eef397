// Private: the ISA-independent pieces of quants_avx2.cc and quants_avx512.cc: the strided f16
// scale loader and the Q8_0 / Q8_1 activation row drivers over an ISA's struct `S`
// (quantize_block_q8(x, qs, d_out, d_f32) -> sum of the codes; to_f16(float), bit for bit
// fp32_to_fp16). Included only from those files (it needs AVX and F16C), each compiled with its
// own flags.
// NOTE: everything here has internal linkage, so the two ISA files' copies never merge.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "cpu/quants.h"

namespace qilin::quants_driver {
namespace {

// The f16 fields at p, p + stride, ..., p + 7 * stride as 8 floats. The halves are combined in
// general-purpose registers (free ports while the vector ops run) and converted once:
// per-block scalar conversions and broadcasts were the largest cost of the block loop, and
// gathers are slow on CPUs with the GDS fix.
inline __m256 load_f16x8_strided(const void* base, size_t offset, size_t stride) {
  const uint8_t* p = static_cast<const uint8_t*>(base) + offset;
  uint64_t lo = 0, hi = 0;
  for (int k = 0; k < 4; ++k) {
    uint16_t a, b;
    std::memcpy(&a, p + k * stride, 2);
    std::memcpy(&b, p + (k + 4) * stride, 2);
    lo |= static_cast<uint64_t>(a) << (16 * k);
    hi |= static_cast<uint64_t>(b) << (16 * k);
  }
  return _mm256_cvtph_ps(_mm_set_epi64x(static_cast<long long>(hi), static_cast<long long>(lo)));
}

template <class S>
void quantize_row_q8_0(const float* src, void* dst, int64_t n) {
  BlockQ8_0* y = static_cast<BlockQ8_0*>(dst);
  for (int64_t i = 0; i < n / kQK; ++i) {
    float d;
    S::quantize_block_q8(src + i * kQK, y[i].qs, &y[i].d, &d);
  }
}

// Q8_1's s = d * sum(q) carries a Q4_1 weight's minimum into vec_dot (m * s).
template <class S>
void quantize_row_q8_1(const float* src, void* dst, int64_t n) {
  BlockQ8_1* y = static_cast<BlockQ8_1*>(dst);
  for (int64_t i = 0; i < n / kQK; ++i) {
    float d;
    const int sum = S::quantize_block_q8(src + i * kQK, y[i].qs, &y[i].d, &d);
    y[i].s = S::to_f16(static_cast<float>(sum) * d);
  }
}

}  // namespace
}  // namespace qilin::quants_driver
