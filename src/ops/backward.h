// The operators only training needs, beside the forward ones of ops.h: the input gradient of a
// linear layer for any weight type, and causal attention over one training sequence (forward
// saving the log-sum-exp, and its backward). model/transformer.h's backward_layer runs them.
#pragma once

#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "cpu/train_attention.h"
#include "ops/ops.h"

namespace qilin {

// Scratch of matmul_backward_input, grown on first use and then reused.
struct MatmulBackwardScratch {
  std::vector<uint8_t> tile, act;  // a tile of W^T in the tile type; converted activations
  std::vector<float> rows, dyc, tmp;
  std::vector<uint16_t> codes;
};

// The input gradient of y = x W^T: dx[n, w.n_in] += dy[n, w.n_out] W, for any weight type.
// wt, when given, is W^T in F32 ([w.n_in rows of w.n_out]: a copy made once, dense training's
// fast path). Otherwise W is read 128 rows at a time, dequantized and transposed into a tile of
// tile_type (F32, BF16 or F16) that the float gemm multiplies, so no dense copy of a quantized
// W ever exists (QLoRA).
void matmul_backward_input(ThreadPool& pool, const WeightView& w, const WeightView* wt,
                           const float* dy, int64_t n, float* dx, DType tile_type,
                           MatmulBackwardScratch& s);

// out [n, H, hd] and lse [n, H] of causal grouped-query attention over one sequence (rows at
// positions 0..n-1), threads splitting the work: the kernels k (cpu/train_attention.h), or the
// reference loops of ops/train_ops.h when k is null.
void train_attention_forward(ThreadPool& pool, const TrainAttnKernels* k, const TrainAttnArgs& a,
                             float* out, float* lse);
// Its backward: ADDS to dq [n, H, hd], dk and dv [n, Hkv, hd]. Each thread adds to its own dk,
// dv in `part` ([threads, 2, n * Hkv * hd]), summed in thread order after (deterministic).
void train_attention_backward(ThreadPool& pool, const TrainAttnKernels* k,
                              const TrainAttnArgs& a, const float* out, const float* lse,
                              const float* dout, float* dq, float* dk, float* dv,
                              std::vector<float>& part);

}  // namespace qilin
