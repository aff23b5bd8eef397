// The attention kernel for one group of query heads that share a KV head (grouped-query
// attention), over positions reached through a block table. One call reads each K and V slot
// of the group once, whatever the group size. Scalar reference plus per-ISA versions.
#pragma once

#include <cstdint>

#include "cpu/quants.h"

namespace qilin {

struct AttnTask {
  const float* q = nullptr;    // [n_q, head_dim] query heads of the group, RoPE applied
  float* out = nullptr;        // [n_q, head_dim]
  int32_t n_q = 1;             // heads in the group (n_head / n_head_kv)
  int32_t head_dim = 0;
  int32_t n_ctx = 0;           // attends to positions [0, n_ctx)
  float scale = 1.0f;          // applied to q.k before the softmax
  const float* k = nullptr;    // the layer's K pool [n_blocks, block_size, slot_elems]
  const float* v = nullptr;    // the layer's V pool, same shape
  const int32_t* block_table = nullptr;  // position p lives in block block_table[p / block_size]
  int32_t block_size = 16;
  int64_t slot_elems = 0;      // n_head_kv * head_dim
  int64_t head_offset = 0;     // kv_head * head_dim within a slot
};

// scores: scratch of at least n_q * n_ctx floats.
using AttnFn = void (*)(const AttnTask& task, float* scores);

void attention_ref(const AttnTask& task, float* scores);
// FlashAttention reference: keys in tiles with an online softmax (running max and sum,
// rescaling the partial output when the max grows); needs no scores scratch.
void attention_flash_ref(const AttnTask& task, float* scores);
// The best two-pass kernel for `isa` that handles this head_dim (else the reference).
AttnFn attention_kernel(Isa isa, int32_t head_dim);
// The best flash kernel for `isa` and head_dim (else the flash reference).
AttnFn attention_flash_kernel(Isa isa, int32_t head_dim);

namespace avx512 {
void attention(const AttnTask& task, float* scores);  // head_dim % 16 == 0
void attention_flash(const AttnTask& task, float* scores);  // head_dim % 16 == 0
}  // namespace avx512
namespace avx2 {
void attention(const AttnTask& task, float* scores);  // head_dim % 8 == 0
}  // namespace avx2

}  // namespace qilin
