// The operators of the Llama forward pass on CPU. Each takes plain pointers with shapes written
// beside them; multi-threaded ops take the ThreadPool. Numerics follow llama.cpp's CPU backend
// where that is cheap (RMSNorm sums in double, RoPE angles built by repeated multiplication).
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "core/thread_pool.h"
#include "ops/batch.h"
#include "ops/kv_cache.h"

namespace qilin {

// A 2-D weight as stored in the file: n_out rows of n_in elements of `type`.
struct WeightView {
  DType type = DType::F32;
  const uint8_t* data = nullptr;  // [n_out, row_bytes]
  int64_t n_in = 0;
  int64_t n_out = 0;
  size_t row_bytes = 0;
};

// out = x / sqrt(mean(x^2) + eps) * w, for one row of n; out may alias x.
void rms_norm(const float* x, const float* w, float* out, int64_t n, float eps);
// The 1 / sqrt(mean(x^2) + eps) that rms_norm multiplies by (its backward's saved statistic).
float rms_norm_rstd(const float* x, int64_t n, float eps);

// out = silu(g) * u elementwise; out may alias g.
void swiglu(const float* g, const float* u, float* out, int64_t n);

struct RopeParams {
  int32_t n_rot = 0;               // rotated dimensions per head (<= head_dim)
  float freq_base = 10000.0f;
  float freq_scale = 1.0f;         // 1 / linear scaling factor
  const float* freq_factors = nullptr;  // [n_rot / 2] or null (Llama-3.1 style rope_freqs)
  bool neox = false;               // false: rotate pairs (2i, 2i+1) as llama; true: (i, i + n_rot/2)
};
// Rotates x [n_head, head_dim] in place for position pos.
void rope(float* x, int32_t n_head, int32_t head_dim, int32_t pos, const RopeParams& p);
// The inverse rotation (rope's backward: the rotation is orthogonal).
void rope_inverse(float* x, int32_t n_head, int32_t head_dim, int32_t pos, const RopeParams& p);

// Bytes of scratch that matmul needs for n_tokens activation rows of n_in elements.
size_t matmul_scratch_bytes(DType weight_type, int64_t n_in, int64_t n_tokens);
// y[n_tokens, n_out] = x[n_tokens, n_in] · W^T. scratch holds the converted activations.
// Returns false if the weight type has no kernel (checked at load, so this is an invariant).
void matmul(ThreadPool& pool, const WeightView& w, const float* x, int64_t n_tokens, float* y,
            void* scratch);
// Several weights applied to the same input (Q/K/V; gate/up): activations are converted once
// and one pool wake-up covers all rows. y[i]: [n_tokens, w[i].n_out]. The weights must share
// type and n_in (matmul_can_group); at most kMaxGroup of them.
constexpr int kMaxGroup = 4;
bool matmul_can_group(const WeightView* w, int n_w);
void matmul_group(ThreadPool& pool, const WeightView* w, int n_w, const float* x,
                  int64_t n_tokens, float* const* y, void* scratch);

struct AttentionArgs {
  const float* q = nullptr;   // [n_tokens, n_head, head_dim], RoPE applied
  float* out = nullptr;       // [n_tokens, n_head, head_dim]
  const KvCache* kv = nullptr;
  int32_t layer = 0;
  const Batch* batch = nullptr;
  int32_t n_head = 0;
  float scale = 1.0f;         // 1 / sqrt(head_dim)
  float* scores = nullptr;    // [n_threads, n_head / n_head_kv, max_ctx] scratch (naive only)
  bool flash = false;         // tiled online softmax (no scores scratch) instead of two passes
  int32_t max_ctx = 0;
  // Flash only, sized for max_tokens rows and up to max_threads threads:
  int32_t max_threads = 1;
  int32_t* row_blocks = nullptr;  // [max_tokens + 1] first row of each row block
  float* partial = nullptr;       // flash-decoding partial results, attention_flash_partial_floats
};
// Causal attention of every row over positions [0, pos] of its sequence, read from the cache
// through the sequence's block table. Grouped-query: head h reads KV head h / (n_head / n_head_kv).
void attention(ThreadPool& pool, const AttentionArgs& a);
// Floats of AttentionArgs::partial for n_threads: split-KV partial outputs plus (max, sum) per
// query vector, a fixed number of parts per thread (independent of the context length).
size_t attention_flash_partial_floats(int n_threads, int32_t group, int32_t head_dim);

// Writes k, v [n_tokens, n_head_kv, head_dim] into each row's slot (block of pos, pos % block).
void kv_store(KvCache& kv, int32_t layer, const Batch& batch, const float* k, const float* v);

}  // namespace qilin
