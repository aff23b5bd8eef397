// Private: the per-ISA kernel entry points behind matmul_kernels(). Only quants.cc (the
// dispatcher, after checking the CPU) and the tests' dispatch table reach them.
// NOTE: calling an avx2:: or avx512:: function on a CPU without that ISA is undefined (SIGILL).
#pragma once

#include <cstdint>

namespace qilin {

// Each namespace has the same set: vec_dot_<weight>_<activation>(n, w, a) and the activation
// converters quantize_row_<type>(src, dst, n). Signatures match VecDotFn / QuantizeRowFn.
#define QILIN_DECLARE_ISA_KERNELS                                   \
  float vec_dot_q4_0_q8_0(int64_t n, const void* w, const void* a); \
  float vec_dot_q4_1_q8_1(int64_t n, const void* w, const void* a); \
  float vec_dot_q8_0_q8_0(int64_t n, const void* w, const void* a); \
  float vec_dot_f16_f16(int64_t n, const void* w, const void* a);   \
  float vec_dot_bf16_bf16(int64_t n, const void* w, const void* a); \
  float vec_dot_f32_f32(int64_t n, const void* w, const void* a);   \
  void quantize_row_q8_0(const float* src, void* dst, int64_t n);   \
  void quantize_row_q8_1(const float* src, void* dst, int64_t n);   \
  void quantize_row_f16(const float* src, void* dst, int64_t n);    \
  void quantize_row_bf16(const float* src, void* dst, int64_t n);

namespace scalar {
QILIN_DECLARE_ISA_KERNELS
}  // namespace scalar
namespace avx2 {
QILIN_DECLARE_ISA_KERNELS
}  // namespace avx2
namespace avx512 {
QILIN_DECLARE_ISA_KERNELS
}  // namespace avx512

#undef QILIN_DECLARE_ISA_KERNELS

}  // namespace qilin
