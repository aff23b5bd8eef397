// Causal grouped-query attention over the block-addressed KV cache (the plain, two-pass
// version: scores, softmax, weighted sum; kernels in cpu/attention.h). FlashAttention's tiled
// online softmax replaces it later.
#include <cmath>
#include <cstring>

#include "core/assert.h"
#include "cpu/attention.h"
#include "ops/ops.h"

namespace qilin {

void kv_store(KvCache& kv, int32_t layer, const Batch& batch, const float* k, const float* v) {
  const int32_t bs = kv.config().block_size;
  const int64_t se = kv.slot_elems();
  for (int32_t t = 0; t < batch.n_tokens(); ++t) {
    const BatchSeq& s = batch.seqs[batch.seq[t]];
    const int32_t p = batch.pos[t];
    QILIN_ASSERT(p / bs < s.n_blocks);
    const int32_t block = s.block_table[p / bs];
    std::memcpy(kv.k_block(layer, block) + (p % bs) * se, k + t * se, se * sizeof(float));
    std::memcpy(kv.v_block(layer, block) + (p % bs) * se, v + t * se, se * sizeof(float));
  }
}

void attention(ThreadPool& pool, const AttentionArgs& a) {
  const KvCacheConfig& c = a.kv->config();
  const int32_t hd = c.head_dim, n_kv = c.n_head_kv;
  const int32_t group = a.n_head / n_kv;
  const AttnFn kernel =
      a.flash ? attention_flash_kernel(cpu_best_isa(), hd) : attention_kernel(cpu_best_isa(), hd);
  // One work item = (row, KV head): the group of query heads that read the same K/V slots.
  const int64_t n_items = static_cast<int64_t>(a.batch->n_tokens()) * n_kv;

  pool.run([&](int ith, int nth) {
    float* sc = a.scores + static_cast<int64_t>(ith) * group * a.max_ctx;
    AttnTask t;
    t.n_q = group;
    t.head_dim = hd;
    t.scale = a.scale;
    t.k = a.kv->k_block(a.layer, 0);
    t.v = a.kv->v_block(a.layer, 0);
    t.block_size = c.block_size;
    t.slot_elems = a.kv->slot_elems();
    // Items are dealt round-robin: a causal prompt's later rows attend further, so contiguous
    // ranges would give the last thread most of the work.
    for (int64_t it = ith; it < n_items; it += nth) {
      const int32_t row = static_cast<int32_t>(it / n_kv);
      const int32_t kvh = static_cast<int32_t>(it % n_kv);
      const BatchSeq& s = a.batch->seqs[a.batch->seq[row]];
      t.n_ctx = a.batch->pos[row] + 1;
      QILIN_ASSERT(t.n_ctx <= a.max_ctx);
      t.q = a.q + (static_cast<int64_t>(row) * a.n_head + kvh * group) * hd;
      t.out = a.out + (static_cast<int64_t>(row) * a.n_head + kvh * group) * hd;
      t.block_table = s.block_table;
      t.head_offset = static_cast<int64_t>(kvh) * hd;
      kernel(t, sc);
    }
  });
}

}  // namespace qilin
