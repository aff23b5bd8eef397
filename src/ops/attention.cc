// Causal grouped-query attention over the block-addressed KV cache (kernels in
// cpu/attention.h). Two paths: the two-pass kernel, one work item per (row, KV head); and
// FlashAttention, one work item per (block of consecutive rows of one sequence, KV head), so
// each K/V tile is read once for rows x heads query vectors. With too few items to keep the
// threads busy on a long context (decode), each item's KV range is split into chunks whose
// partial results (unnormalised output, running max, sum) are merged by log-sum-exp
// (flash-decoding). Scratch is independent of the context length.
#include "cpu/attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "core/assert.h"
#include "ops/ops.h"

namespace qilin {
namespace {

// Split the KV range only when items are fewer than this many per thread...
constexpr int64_t kSplitItemsPerThread = 2;
// ...the longest row attends to at least this many positions, and each chunk keeps this many.
constexpr int32_t kSplitMinCtx = 256;
constexpr int32_t kSplitMinChunk = 128;
// Partial results the split may make per thread (bounds the scratch).
constexpr int32_t kPartsPerThread = 4;

int32_t max_vecs_per_item(int32_t group) {
  // attention_flash_rows gives at most max(lanes, group) vectors per block; 64 (four AVX-512
  // lane groups) is the widest kernel.
  return std::max<int32_t>(64, group);
}

void attention_two_pass(ThreadPool& pool, const AttentionArgs& a) {
  const KvCacheConfig& c = a.kv->config();
  const int32_t hd = c.head_dim, n_kv = c.n_head_kv;
  const int32_t group = a.n_head / n_kv;
  const AttnFn kernel = attention_kernel(cpu_best_isa(), hd);
  // One work item = (row, KV head): the group of query heads that read the same K/V slots.
  const int64_t n_items = static_cast<int64_t>(a.batch->n_tokens()) * n_kv;
  pool.run([&](int ith, int nth) {
    float* sc = a.scores + static_cast<int64_t>(ith) * group * a.max_ctx;
    AttnTask t;
    t.n_q = group;
    t.head_dim = hd;
    t.scale = a.scale;
    t.k = a.kv->k_pool(a.layer);
    t.v = a.kv->v_pool(a.layer);
    t.kv_type = a.kv->type();
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

void attention_flash(ThreadPool& pool, const AttentionArgs& a) {
  const KvCacheConfig& c = a.kv->config();
  const int32_t hd = c.head_dim, n_kv = c.n_head_kv;
  const int32_t group = a.n_head / n_kv;
  const Isa isa = cpu_best_isa();
  const AttnFn kernel = attention_flash_kernel(isa, hd);
  const int32_t rows = std::min(attention_flash_rows(isa, group),
                                std::max<int32_t>(1, max_vecs_per_item(group) / group));
  const Batch& b = *a.batch;
  const int32_t n = b.n_tokens();
  const int64_t row_stride = static_cast<int64_t>(a.n_head) * hd;

  // Row blocks: runs of rows of one sequence at consecutive positions, cut every `rows` rows.
  // Row i of a block then attends to one position more than row i - 1. Any other batch
  // (rows out of order, interleaved sequences) falls back to smaller blocks, down to 1 row.
  int32_t n_blocks = 0;
  int32_t hi_max = 0;  // the longest range any row attends to
  for (int32_t r = 0; r < n;) {
    const int32_t start = r++;
    while (r < n && r - start < rows && b.seq[r] == b.seq[start] && b.pos[r] == b.pos[r - 1] + 1) {
      ++r;
    }
    a.row_blocks[n_blocks++] = start;
    hi_max = std::max(hi_max, b.pos[r - 1] + 1);
  }
  a.row_blocks[n_blocks] = n;
  QILIN_ASSERT(hi_max <= a.max_ctx);
  const int64_t n_items = static_cast<int64_t>(n_blocks) * n_kv;
  const int nth = pool.size();
  QILIN_ASSERT(nth <= a.max_threads);

  // The task of item `it` (block-major, then KV head), KV range left whole.
  auto item_task = [&](int64_t it) {
    const int32_t blk = static_cast<int32_t>(it / n_kv), kvh = static_cast<int32_t>(it % n_kv);
    const int32_t r0 = a.row_blocks[blk];
    AttnTask t;
    t.n_q = group;
    t.n_rows = a.row_blocks[blk + 1] - r0;
    t.q_stride = row_stride;
    t.out_stride = row_stride;
    t.head_dim = hd;
    t.n_ctx = b.pos[r0] + 1;
    t.scale = a.scale;
    t.k = a.kv->k_pool(a.layer);
    t.v = a.kv->v_pool(a.layer);
    t.kv_type = a.kv->type();
    t.block_table = b.seqs[b.seq[r0]].block_table;
    t.block_size = c.block_size;
    t.slot_elems = a.kv->slot_elems();
    t.head_offset = static_cast<int64_t>(kvh) * hd;
    t.q = a.q + r0 * row_stride + static_cast<int64_t>(kvh) * group * hd;
    t.out = a.out + r0 * row_stride + static_cast<int64_t>(kvh) * group * hd;
    return t;
  };

  // Chunks per item for flash-decoding: as many as keep every thread busy (a multiple of the
  // thread count in all, where one fits the parts budget), none shorter than kSplitMinChunk.
  int32_t n_chunks = 1;
  if (nth > 1 && n_items < kSplitItemsPerThread * nth && hi_max >= kSplitMinCtx) {
    const int32_t budget = static_cast<int32_t>(kPartsPerThread * nth / n_items);
    const int32_t by_len = hi_max / kSplitMinChunk;
    const int32_t cap = std::max(1, std::min(budget, by_len));
    n_chunks = cap;
    for (int32_t ch = cap; ch >= 2; --ch) {
      if ((n_items * ch) % nth == 0) {
        n_chunks = ch;
        break;
      }
    }
  }

  std::atomic<int64_t> next{0};
  if (n_chunks == 1) {
    // Dynamic scheduling, last blocks first: in a prompt they attend furthest, so the cheap
    // early blocks fill in at the end.
    pool.run([&](int, int) {
      for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n_items;
           i = next.fetch_add(1, std::memory_order_relaxed)) {
        kernel(item_task(n_items - 1 - i), nullptr);
      }
    });
    return;
  }

  // Flash-decoding: part = (item, chunk); chunk j of an item covers positions
  // [j * len / n, (j + 1) * len / n) of its longest row's range, cut at 16-key tiles.
  const int64_t n_parts = n_items * n_chunks;
  const int32_t vec_max = max_vecs_per_item(group);
  QILIN_ASSERT(n_parts <= static_cast<int64_t>(kPartsPerThread) * a.max_threads);
  auto bound = [&](int32_t len, int32_t j) {
    return j == n_chunks ? len
                         : static_cast<int32_t>(static_cast<int64_t>(len) * j / n_chunks) & ~15;
  };
  pool.run([&](int, int) {
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n_parts;
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      const int64_t it = i / n_chunks;
      const int32_t j = static_cast<int32_t>(i % n_chunks);
      AttnTask t = item_task(it);
      const int32_t len = t.n_ctx + t.n_rows - 1;
      const int64_t first = (it * n_chunks * vec_max + j * t.n_rows * group);  // in vectors
      t.kv_begin = bound(len, j);
      t.kv_end = bound(len, j + 1);
      t.out_stride = static_cast<int64_t>(group) * hd;
      t.out = a.partial + first * hd;
      t.ml = a.partial + n_parts * vec_max * hd + first * 2;
      kernel(t, nullptr);
    }
  });
  // Merge on the calling thread: fewer than 2 items per thread, a few KB in all. An item's
  // parts are consecutive: [n_chunks][n_vec][hd] outputs and [n_chunks][n_vec][2] (m, l).
  for (int64_t it = 0; it < n_items; ++it) {
    const AttnTask t = item_task(it);
    const int64_t first = it * n_chunks * vec_max;
    attention_merge(a.partial + first * hd, a.partial + n_parts * vec_max * hd + first * 2,
                    n_chunks, t.n_rows * group, hd, group, row_stride, t.out);
  }
}

}  // namespace

void kv_store(KvCache& kv, int32_t layer, const Batch& batch, const float* k, const float* v) {
  const KvCacheConfig& c = kv.config();
  const int32_t bs = c.block_size, hd = c.head_dim;
  const int64_t se = kv.slot_elems();
  const size_t rb = kv.row_bytes();
  for (int32_t t = 0; t < batch.n_tokens(); ++t) {
    const BatchSeq& s = batch.seqs[batch.seq[t]];
    const int32_t p = batch.pos[t];
    QILIN_ASSERT(p / bs < s.n_blocks);
    const int32_t block = s.block_table[p / bs];
    uint8_t* ks = kv.k_slot(layer, block, p % bs);
    uint8_t* vs = kv.v_slot(layer, block, p % bs);
    // One row per KV head: Q8_0 blocks and FP8 scales never straddle two heads.
    for (int32_t h = 0; h < c.n_head_kv; ++h) {
      kv_quantize_row(c.type, k + t * se + h * hd, hd, ks + h * rb);
      kv_quantize_row(c.type, v + t * se + h * hd, hd, vs + h * rb);
    }
  }
}

size_t attention_flash_partial_floats(int n_threads, int32_t group, int32_t head_dim) {
  return static_cast<size_t>(kPartsPerThread) * std::max(n_threads, 1) * max_vecs_per_item(group) *
         (head_dim + 2);
}

void attention(ThreadPool& pool, const AttentionArgs& a) {
  if (a.flash) {
    attention_flash(pool, a);
  } else {
    attention_two_pass(pool, a);
  }
}

}  // namespace qilin
