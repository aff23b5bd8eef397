// gemm_kernel(): picks the family's tiled kernel; gemm_ref(): per-pair vec_dot reference.
#include "cpu/gemm.h"

namespace qilin {

GemmFn gemm_kernel(DType weight, Isa isa) {
  if (GemmFn f = gemm_quant_kernel(weight, isa)) return f;
  return gemm_float_kernel(weight, isa);
}

void gemm_ref(const MatmulKernels& k, int64_t n, const void* w, size_t w_stride,
              int64_t n_rows, const void* a, size_t a_stride, int64_t n_tok, float* c,
              int64_t ldc) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* ab = static_cast<const uint8_t*>(a);
  for (int64_t t = 0; t < n_tok; ++t) {
    for (int64_t r = 0; r < n_rows; ++r) {
      c[t * ldc + r] = k.vec_dot(n, wb + r * w_stride, ab + t * a_stride);
    }
  }
}

}  // namespace qilin
