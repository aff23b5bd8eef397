// Tile matrix products for prompt processing: many activation rows against many weight rows,
// so each loaded (and unpacked) weight block is used for several tokens and each activation
// block for several weight rows. Generation (one token) keeps using the vec_dot kernels.
// NOTE: every SIMD gemm must agree with gemm_ref (per-pair vec_dot) within float rounding.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu/quants.h"

namespace qilin {

// c[t * ldc + r] = dot(weight row r, activation row t) for r < n_rows, t < n_tok.
// w: n_rows weight rows of n elements in the weight type, w_stride bytes apart.
// a: n_tok activation rows already converted to the kernel's vec_dot_type, a_stride apart.
using GemmFn = void (*)(int64_t n, const void* w, size_t w_stride, int64_t n_rows,
                        const void* a, size_t a_stride, int64_t n_tok, float* c, int64_t ldc);

// Null when there is no tiled kernel for this weight type and ISA (callers fall back to
// vec_dot per pair). Isa must be supported by the CPU to be called.
GemmFn gemm_kernel(DType weight, Isa isa);
inline GemmFn gemm_kernel(DType weight) { return gemm_kernel(weight, cpu_best_isa()); }

// The reference every tiled kernel is tested against: vec_dot of `isa` per (row, token) pair.
void gemm_ref(const MatmulKernels& k, int64_t n, const void* w, size_t w_stride,
              int64_t n_rows, const void* a, size_t a_stride, int64_t n_tok, float* c,
              int64_t ldc);

// Weights that do not change while registered (a loaded model's tensors). The quantized gemms
// keep such weights in their packed layout after the first call (a one-time copy about the size
// of the weights) instead of repacking them on every call, which dominates when a call has few
// tokens (batched decoding). Unregistering drops what was packed from the range; raw buffers
// that are never registered are repacked per call as before.
void gemm_register_immutable(const void* begin, size_t bytes);
void gemm_unregister_immutable(const void* begin);

namespace gemm_cache {
// The packed copy of n_rows weight rows at w (row_bytes_packed each), or null if w is not in a
// registered range. pack(dst) fills a new copy on first use. Thread-safe.
const uint8_t* get(const void* w, size_t w_stride, int64_t n_rows, int64_t n, int kind,
                   size_t row_bytes_packed, void (*pack)(const void* ctx, uint8_t* dst),
                   const void* ctx);
}  // namespace gemm_cache

// Sub-dispatchers, one per family (gemm_quant.cc: Q4_0, Q4_1, Q8_0 and Qilin's QI4_G32/64/128,
// NF4, NF4_DQ; gemm_float.cc: F16, BF16, F32). Null for types they do not cover.
GemmFn gemm_quant_kernel(DType weight, Isa isa);
GemmFn gemm_float_kernel(DType weight, Isa isa);

}  // namespace qilin
