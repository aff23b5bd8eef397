// Decode-path dot products of a half-precision weight row with an F32 activation row. For one
// token the activation is the same for every row, so converting it to F16 (vec_dot_f16_f16's
// contract) costs a conversion per element per row: as much as the weights' own. Keeping it in
// F32 halves the conversions and is more accurate. Null where no SIMD version exists.
#pragma once

#include <cstdint>

#include "cpu/quants.h"

namespace qilin {

using DotF16F32Fn = float (*)(int64_t n, const void* w, const float* a);
DotF16F32Fn dot_f16_f32_kernel(Isa isa);

namespace avx512 {
float dot_f16_f32(int64_t n, const void* w, const float* a);
}  // namespace avx512

}  // namespace qilin
