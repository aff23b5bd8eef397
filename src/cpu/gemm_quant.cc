// Tiled kernels for Q4_0, Q4_1 and Q8_0 weights (placeholder: none yet, vec_dot fallback).
#include "cpu/gemm.h"

namespace qilin {

GemmFn gemm_quant_kernel(DType, Isa) { return nullptr; }

}  // namespace qilin
