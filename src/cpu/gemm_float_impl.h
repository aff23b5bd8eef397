// Private: the per-ISA tiled float gemms behind gemm_float_kernel(). Only gemm_float.cc (after
// the CPU check) and the tests/benchmarks' per-ISA loops reach them.
// NOTE: calling an avx2:: or avx512:: function on a CPU without that ISA is undefined (SIGILL).
#pragma once

#include <cstddef>
#include <cstdint>

namespace qilin {

// Signatures match GemmFn. Weights and activations share the type named in the function
// (activations are what matmul_kernels(type, isa)->quantize_act produced).
#define QILIN_DECLARE_GEMM_FLOAT                                                                \
  void gemm_f16_f16(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,   \
                    size_t a_stride, int64_t n_tok, float* c, int64_t ldc);                     \
  void gemm_bf16_bf16(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a, \
                      size_t a_stride, int64_t n_tok, float* c, int64_t ldc);                   \
  void gemm_f32_f32(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,   \
                    size_t a_stride, int64_t n_tok, float* c, int64_t ldc);

namespace avx2 {
QILIN_DECLARE_GEMM_FLOAT
}  // namespace avx2
namespace avx512 {
QILIN_DECLARE_GEMM_FLOAT
}  // namespace avx512

#undef QILIN_DECLARE_GEMM_FLOAT

}  // namespace qilin
