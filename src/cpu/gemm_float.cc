// Tiled kernels for F16, BF16 and F32 weights: picks the per-ISA gemm. No scalar tile (the
// caller's vec_dot-per-pair fallback is already the scalar reference).
#include "cpu/gemm.h"
#include "cpu/gemm_float_impl.h"

namespace qilin {

GemmFn gemm_float_kernel(DType weight, Isa isa) {
  if (!cpu_supports(isa)) return nullptr;
  switch (isa) {
    case Isa::Avx512:
      if (weight == DType::F16) return avx512::gemm_f16_f16;
      if (weight == DType::BF16) return avx512::gemm_bf16_bf16;
      if (weight == DType::F32) return avx512::gemm_f32_f32;
      return nullptr;
    case Isa::Avx2:
      if (weight == DType::F16) return avx2::gemm_f16_f16;
      if (weight == DType::BF16) return avx2::gemm_bf16_bf16;
      if (weight == DType::F32) return avx2::gemm_f32_f32;
      return nullptr;
    case Isa::Scalar:
      return nullptr;
  }
  return nullptr;
}

}  // namespace qilin
