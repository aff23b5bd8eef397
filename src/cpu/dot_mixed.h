// Decode-path dot products of a half-precision weight row with an F32 activation row. For one
// token the activation is the same for every row, so converting it to F16 (vec_dot_f16_f16's
// contract) costs a conversion per element per row: as much as the weights' own. Keeping it in
// F32 halves the conversions and is more accurate. Null where no SIMD version exists.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu/isa.h"

namespace qilin {

using DotF16F32Fn = float (*)(int64_t n, const void* w, const float* a);
DotF16F32Fn dot_f16_f32_kernel(Isa isa);

// y[r] = dot(row r, a) for `rows` rows `stride` bytes apart, read as two sequential streams:
// row r of the first half together with row r of the second, sharing the activation loads.
// One core's single stream of F16 rows reads ~8% below its bandwidth on the Zen 5 VM; two
// far-apart streams read at the plain-read rate (docs/benchmarks.md, Bandwidth/f16_rows).
using DotF16F32RowsFn = void (*)(int64_t n, const void* w, size_t stride, int64_t rows,
                                 const float* a, float* y);
DotF16F32RowsFn dot_f16_f32_rows_kernel(Isa isa);

namespace avx512 {
float dot_f16_f32(int64_t n, const void* w, const float* a);
void dot_f16_f32_rows(int64_t n, const void* w, size_t stride, int64_t rows, const float* a,
                      float* y);
}  // namespace avx512

}  // namespace qilin
