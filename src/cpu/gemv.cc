// gemv_kernel(): the one run-time dispatch point for the single-activation-row kernels.
#include "cpu/gemv.h"

namespace qilin {

GemvFn gemv_kernel(DType weight, Isa isa) {
  if (isa == Isa::Scalar || !cpu_supports(isa)) return nullptr;
  const bool z = isa == Isa::Avx512;
  switch (weight) {
    case DType::Q4_0:
      return z ? avx512::gemv_q4_0_q8_0 : avx2::gemv_q4_0_q8_0;
    case DType::Q4_1:
      return z ? avx512::gemv_q4_1_q8_1 : avx2::gemv_q4_1_q8_1;
    case DType::Q8_0:
      return z ? avx512::gemv_q8_0_q8_0 : avx2::gemv_q8_0_q8_0;
    case DType::F16:
      return z ? avx512::gemv_f16_f16 : avx2::gemv_f16_f16;
    case DType::BF16:
      return z ? avx512::gemv_bf16_bf16 : avx2::gemv_bf16_bf16;
    case DType::F32:
      return z ? avx512::gemv_f32_f32 : avx2::gemv_f32_f32;
    default:
      return nullptr;
  }
}

}  // namespace qilin
