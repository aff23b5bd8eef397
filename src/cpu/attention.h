// The attention kernels for one group of query heads that share a KV head (grouped-query
// attention), over positions reached through a block table. One call reads each K and V slot
// of the group once, whatever the group size. Scalar reference plus per-ISA versions.
// The flash kernels also take a block of consecutive query rows of one sequence (causal: row r
// sees one position more than row r - 1) and a KV range, so that prefill reads each K/V tile
// once for rows x heads query vectors and decode can split the context across threads.
#pragma once

#include <cstdint>
#include <limits>

#include "cpu/kv_types.h"
#include "cpu/isa.h"

namespace qilin {

struct AttnTask {
  const float* q = nullptr;  // head g of row r at q + r * q_stride + g * head_dim, RoPE applied
  float* out = nullptr;      // head g of row r at out + r * out_stride + g * head_dim
  int32_t n_q = 1;           // heads per row (a GQA group, n_head / n_head_kv)
  int32_t n_rows = 1;        // consecutive query rows of one sequence (flash kernels only)
  int64_t q_stride = 0;      // elements from one row's q to the next's (n_rows > 1)
  int64_t out_stride = 0;    // elements from one row's out to the next's (n_rows > 1)
  int32_t head_dim = 0;
  int32_t n_ctx = 0;                     // row r attends to positions [0, n_ctx + r)
  float scale = 1.0f;                    // applied to q.k before the softmax
  // The layer's K and V pools, [n_blocks, block_size, n_head_kv] rows of head_dim values in
  // kv_type's format (cpu/kv_types.h), read in place: no gather, no conversion of the pool.
  const void* k = nullptr;
  const void* v = nullptr;
  KvType kv_type = KvType::F32;
  const int32_t* block_table = nullptr;  // position p lives in block block_table[p / block_size]
  int32_t block_size = 16;
  int64_t slot_elems = 0;   // n_head_kv * head_dim
  int64_t head_offset = 0;  // kv_head * head_dim within a slot
  // Flash-decoding (flash kernels only): attend to [kv_begin, kv_end) of each row's range and,
  // when ml is set, leave the output unnormalised: out = sum_p e^(s_p - m) v_p, with the
  // running max m and sum l = sum_p e^(s_p - m) of query vector i = r * n_q + g in
  // ml[2i], ml[2i + 1] (m = -inf, l = 0, out = 0 when the range is empty for that row).
  // Partial results of disjoint ranges merge with attention_merge.
  int32_t kv_begin = 0;
  int32_t kv_end = std::numeric_limits<int32_t>::max();
  float* ml = nullptr;  // [n_rows * n_q, 2] or null (normalised output)
};

// Byte addresses of a task's K/V rows: position p's row of the task's KV head starts at
// k + offset(p) (and v + offset(p)).
struct KvRows {
  const uint8_t* k;
  const uint8_t* v;
  const int32_t* table;
  int32_t block_size;
  int64_t row_bytes, slot_bytes, head_bytes;
  explicit KvRows(const AttnTask& t)
      : k(static_cast<const uint8_t*>(t.k)),
        v(static_cast<const uint8_t*>(t.v)),
        table(t.block_table),
        block_size(t.block_size),
        row_bytes(static_cast<int64_t>(kv_row_bytes(t.kv_type, t.head_dim))),
        slot_bytes(t.slot_elems / t.head_dim * row_bytes),
        head_bytes(t.head_offset / t.head_dim * row_bytes) {}
  int64_t offset(int32_t p) const {
    return (static_cast<int64_t>(table[p / block_size]) * block_size + p % block_size) *
               slot_bytes + head_bytes;
  }
};

// scores: scratch of at least n_q * n_ctx floats (two-pass kernels; flash kernels ignore it).
// Two-pass kernels take one row (n_rows == 1) over its whole range.
using AttnFn = void (*)(const AttnTask& task, float* scores);

void attention_ref(const AttnTask& task, float* scores);
// FlashAttention reference: keys in tiles with an online softmax (running max and sum,
// rescaling the partial output when the max grows); needs no scores scratch. Any n_rows, KV
// range and partial output.
void attention_flash_ref(const AttnTask& task, float* scores);
// The best two-pass kernel for `isa` that handles this head_dim (else the reference).
AttnFn attention_kernel(Isa isa, int32_t head_dim);
// The best flash kernel for `isa` and head_dim (else the flash reference). For Avx512 on a CPU
// with AVX512_BF16 that is avx512::attention_flash_bf16dot, whose BF16 decode is not exact on
// the cache's values (q and the softmax weights are rounded to bf16).
AttnFn attention_flash_kernel(Isa isa, int32_t head_dim);
// Query rows per flash task that the kernel for `isa` uses best with n_q heads per row (its
// register tile); callers may pass fewer or more.
int32_t attention_flash_rows(Isa isa, int32_t n_q);

// Merges n_parts partial results of disjoint KV ranges (each as written with AttnTask::ml) for
// n_vec query vectors: out[i] = sum_j e^(m_j - M) o_j[i] / sum_j e^(m_j - M) l_j.
// o: [n_parts][n_vec][head_dim], ml: [n_parts][n_vec][2]; vector i = r * n_q + g goes to
// out + r * out_stride + g * head_dim.
void attention_merge(const float* o, const float* ml, int32_t n_parts, int32_t n_vec,
                     int32_t head_dim, int32_t n_q, int64_t out_stride, float* out);

namespace avx512 {
void attention(const AttnTask& task, float* scores);        // head_dim % 16 == 0
void attention_flash(const AttnTask& task, float* scores);  // head_dim % 16 == 0, <= 256
// attention_flash, except for decode tasks (n_rows * n_q <= 4) of a BF16 cache with
// head_dim % 32 == 0: VDPBF16PS on the rows as stored, with q and each key's softmax weight
// rounded to bf16 (nearest even, relative error <= 2^-8 each). Against exact attention with q
// so rounded, each output element is off by at most about 2^-7 x sum_p w_p |v_p| (the weights'
// rounding, normalised by their rounded sum) plus float rounding. Needs cpu_has_avx512_bf16().
void attention_flash_bf16dot(const AttnTask& task, float* scores);
int32_t attention_flash_rows(int32_t n_q);
}  // namespace avx512
namespace avx2 {
void attention(const AttnTask& task, float* scores);        // head_dim % 8 == 0
void attention_flash(const AttnTask& task, float* scores);  // head_dim % 8 == 0, <= 256
int32_t attention_flash_rows(int32_t n_q);
}  // namespace avx2

}  // namespace qilin
