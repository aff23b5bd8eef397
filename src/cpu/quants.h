// Quantized block formats (llama.cpp's exact layouts) with scalar reference conversions and
// dot products, plus the per-ISA kernel table picked at run time from the CPU's features.
// NOTE: every SIMD kernel must agree with the scalar reference; tests run every ISA the CPU has.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "cpu/isa.h"

namespace qilin {

constexpr int kQK = 32;  // elements per block of the 32-element formats

#pragma pack(push, 1)
struct BlockQ4_0 {
  uint16_t d;       // f16 scale
  uint8_t qs[16];   // nibbles: element j in low nibble of qs[j], element j+16 in high nibble
};
struct BlockQ4_1 {
  uint16_t d;       // f16 scale
  uint16_t m;       // f16 minimum
  uint8_t qs[16];
};
struct BlockQ8_0 {
  uint16_t d;       // f16 scale
  int8_t qs[32];
};
struct BlockQ8_1 {
  uint16_t d;       // f16 scale
  uint16_t s;       // f16 of d * sum(qs)
  int8_t qs[32];
};
#pragma pack(pop)
static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ8_1) == 36);

// Scalar references. n must be a multiple of the type's block size.
// dequantize: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q8_1, the formats of quants_k.h (Q5_0, Q5_1,
// IQ4_NL, Q2_K..Q6_K, Q8_K, IQ4_XS) and the 4-bit types of quants_int4.h.
void dequantize_row_ref(DType type, const void* src, float* dst, int64_t n);
// quantize from F32 with llama.cpp's reference rounding: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
// Q8_0, Q8_1, Q8_K, IQ4_NL, Q4_K, Q5_K, Q6_K (no importance matrix).
// (and the quants_int4.h types with their own references).
void quantize_row_ref(DType type, const float* src, void* dst, int64_t n);

// Dot product of one weight row (type `weight`) with one activation row already converted to
// `vec_dot_type`; n elements.
using VecDotFn = float (*)(int64_t n, const void* w, const void* a);
// Converts an F32 activation row to vec_dot_type.
using QuantizeRowFn = void (*)(const float* src, void* dst, int64_t n);

struct MatmulKernels {
  DType weight;
  DType vec_dot_type;  // Q4_0->Q8_0, Q4_1->Q8_1, Q8_0->Q8_0, F16->F16, BF16->BF16, F32->F32;
                       // quants_k.h's types -> F32 (a generic dequantizing dot, no SIMD yet)
  VecDotFn vec_dot;
  QuantizeRowFn quantize_act;
};
// Null if the weight type has no kernel. Isa must be supported by the CPU to be called.
const MatmulKernels* matmul_kernels(DType weight, Isa isa);
inline const MatmulKernels* matmul_kernels(DType weight) {
  return matmul_kernels(weight, cpu_best_isa());
}

}  // namespace qilin
