// Matrix x vector for generation: many weight rows against ONE activation row. Unlike the
// per-row vec_dot, a gemv prepares the activation once per call (scales converted to f32,
// quantized values laid out to match the weight's unpacked blocks, integer offset terms
// pre-summed) and runs several weight rows together so every activation load is shared.
// NOTE: every gemv must agree with vec_dot per row within float rounding (tests/unit/test_gemv.cc).
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu/quants.h"

namespace qilin {

// y[r] = dot(weight row r, a) for r < n_rows.
// w: n_rows weight rows of n elements in the weight type, w_stride bytes apart.
// a: one activation row already converted to the weight's vec_dot_type (matmul_kernels()).
using GemvFn = void (*)(int64_t n, const void* w, size_t w_stride, int64_t n_rows,
                        const void* a, float* y);

// Null for Scalar, for weight types without a gemv, and for an ISA the CPU lacks (callers fall
// back to vec_dot per row).
GemvFn gemv_kernel(DType weight, Isa isa);
inline GemvFn gemv_kernel(DType weight) { return gemv_kernel(weight, cpu_best_isa()); }

// Private: the per-ISA entry points behind gemv_kernel(), one set per namespace. Calling one on a
// CPU without its ISA is undefined (SIGILL); go through gemv_kernel().
#define QILIN_DECLARE_GEMV_KERNELS                                                              \
  void gemv_q4_0_q8_0(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, float* y); \
  void gemv_q4_1_q8_1(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, float* y); \
  void gemv_q8_0_q8_0(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, float* y); \
  void gemv_f16_f16(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, float* y);   \
  void gemv_bf16_bf16(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, float* y); \
  void gemv_f32_f32(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, float* y);
namespace avx2 {
QILIN_DECLARE_GEMV_KERNELS
}  // namespace avx2
namespace avx512 {
QILIN_DECLARE_GEMV_KERNELS
}  // namespace avx512
#undef QILIN_DECLARE_GEMV_KERNELS

}  // namespace qilin
