// Tiled kernels for F16, BF16 and F32 weights (placeholder: none yet, vec_dot fallback).
#include "cpu/gemm.h"

namespace qilin {

GemmFn gemm_float_kernel(DType, Isa) { return nullptr; }

}  // namespace qilin
