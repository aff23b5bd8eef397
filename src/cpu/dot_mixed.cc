// Dispatch for dot_mixed.h.
#include "cpu/dot_mixed.h"

namespace qilin {

DotF16F32Fn dot_f16_f32_kernel(Isa isa) {
  return isa == Isa::Avx512 ? avx512::dot_f16_f32 : nullptr;
}

DotF16F32RowsFn dot_f16_f32_rows_kernel(Isa isa) {
  return isa == Isa::Avx512 ? avx512::dot_f16_f32_rows : nullptr;
}

}  // namespace qilin
