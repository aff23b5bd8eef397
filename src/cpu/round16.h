// Training's 16-bit precision (train/precision.h) on whole buffers: F32 values rounded in place
// to the nearest FP16 / BF16 value (round to nearest even), and 16-bit codes widened to F32.
// Scalar reference: core/fp16.h per element; the SIMD versions (F16C for FP16, integer
// rounding for BF16) agree with it bit for bit, NaN, infinity, subnormals and overflow included.
// NOTE: no AVX512_BF16 instruction: VCVTNEPS2BF16 flushes subnormal inputs to zero, which the
// reference rounding does not.
#pragma once

#include <cstdint>

#include "cpu/quants.h"

namespace qilin {

struct Round16Kernels {
  void (*round_f16)(float* x, int64_t n);                     // x = fp16_to_fp32(fp32_to_fp16(x))
  void (*round_bf16)(float* x, int64_t n);                    // x = bf16_to_fp32(fp32_to_bf16(x))
  void (*from_f16)(const uint16_t* h, float* x, int64_t n);   // x = fp16_to_fp32(h)
  void (*from_bf16)(const uint16_t* h, float* x, int64_t n);  // x = bf16_to_fp32(h)
  QuantizeRowFn to_f16;   // F32 -> FP16 codes (the matmul activation converters)
  QuantizeRowFn to_bf16;  // F32 -> BF16 codes
};
// Every Isa has a table; isa must be supported by the CPU for its functions to be called.
const Round16Kernels& round16_kernels(Isa isa);
// The CPU's best, chosen once.
const Round16Kernels& round16_kernels();

namespace scalar {
extern const Round16Kernels kRound16Kernels;
}  // namespace scalar
namespace avx2 {
extern const Round16Kernels kRound16Kernels;
}  // namespace avx2
namespace avx512 {
extern const Round16Kernels kRound16Kernels;
}  // namespace avx512

}  // namespace qilin
