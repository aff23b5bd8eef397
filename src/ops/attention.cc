// Causal grouped-query attention over the block-addressed KV cache (the plain, two-pass
// version: scores, softmax, weighted sum). FlashAttention's tiled online softmax replaces it later.
#include <cmath>
#include <cstring>

#include "core/assert.h"
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
  const int32_t hd = c.head_dim, bs = c.block_size, n_kv = c.n_head_kv;
  const int32_t group = a.n_head / n_kv;
  const int64_t se = a.kv->slot_elems();
  const int64_t n_items = static_cast<int64_t>(a.batch->n_tokens()) * a.n_head;

  pool.run([&](int ith, int nth) {
    float* sc = a.scores + static_cast<int64_t>(ith) * a.max_ctx;
    int64_t i0, i1;
    split_range(n_items, ith, nth, &i0, &i1);
    for (int64_t it = i0; it < i1; ++it) {
      const int32_t t = static_cast<int32_t>(it / a.n_head);
      const int32_t h = static_cast<int32_t>(it % a.n_head);
      const int32_t kvh = h / group;
      const BatchSeq& s = a.batch->seqs[a.batch->seq[t]];
      const int32_t n_ctx = a.batch->pos[t] + 1;
      QILIN_ASSERT(n_ctx <= a.max_ctx);
      const float* q = a.q + (static_cast<int64_t>(t) * a.n_head + h) * hd;

      float mx = -INFINITY;
      for (int32_t p = 0; p < n_ctx; ++p) {
        const float* kp = a.kv->k_block(a.layer, s.block_table[p / bs]) + (p % bs) * se + kvh * hd;
        float d = 0.0f;
        for (int32_t i = 0; i < hd; ++i) d += q[i] * kp[i];
        sc[p] = d * a.scale;
        mx = sc[p] > mx ? sc[p] : mx;
      }
      double sum = 0.0;
      for (int32_t p = 0; p < n_ctx; ++p) {
        sc[p] = std::exp(sc[p] - mx);
        sum += sc[p];
      }
      const float inv = static_cast<float>(1.0 / sum);
      float* o = a.out + (static_cast<int64_t>(t) * a.n_head + h) * hd;
      for (int32_t i = 0; i < hd; ++i) o[i] = 0.0f;
      for (int32_t p = 0; p < n_ctx; ++p) {
        const float* vp = a.kv->v_block(a.layer, s.block_table[p / bs]) + (p % bs) * se + kvh * hd;
        const float wgt = sc[p] * inv;
        for (int32_t i = 0; i < hd; ++i) o[i] += wgt * vp[i];
      }
    }
  });
}

}  // namespace qilin
