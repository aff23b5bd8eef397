// Perplexity: see perplexity.h.
#include "engine/perplexity.h"

#include <algorithm>
#include <cmath>

#include "core/thread_pool.h"
#include "kv/block_allocator.h"
#include "ops/batch.h"
#include "ops/kv_cache.h"

namespace qilin {

Result<PerplexityResult> perplexity(const LlamaModel& model, const Tokenizer& tok,
                                    std::vector<int32_t> tokens, const PerplexityOptions& opt,
                                    const std::function<void(int, int, double)>& progress) {
  const int32_t n_ctx = opt.n_ctx;
  if (n_ctx < 4) return errorf("perplexity: the window (--ctx-size) must be at least 4 tokens, got %d", n_ctx);
  if (opt.n_batch < 1) return errorf("perplexity: batch size must be >= 1, got %d", opt.n_batch);
  if (opt.n_threads < 1) return errorf("perplexity: thread count must be >= 1, got %d", opt.n_threads);
  const int64_t n_max = static_cast<int64_t>(tokens.size()) / n_ctx;
  if (n_max < 1 || static_cast<int64_t>(tokens.size()) < 2 * n_ctx) {
    return errorf("perplexity: the text has %zu tokens; it needs at least 2 x %d (two windows)",
                  tokens.size(), n_ctx);
  }
  const int32_t n_chunks = static_cast<int32_t>(opt.n_chunks < 0 ? n_max : std::min<int64_t>(opt.n_chunks, n_max));
  const int32_t n_vocab = model.hparams().n_vocab;
  const int32_t block_size = 16;
  auto kv = KvCache::create(model.kv_config(n_ctx, block_size, opt.kv_type));
  QILIN_TRY(kv);
  BlockAllocator alloc((*kv)->config().n_blocks, block_size);
  std::vector<int32_t> table;
  if (!alloc.reserve(table, n_ctx)) return errorf("perplexity: KV cache sizing error");
  const int32_t n_batch = std::min(opt.n_batch, n_ctx);
  const int32_t first = n_ctx / 2;
  // Logit rows wanted per call: at most the rows of the call that are scored.
  Workspace ws = model.make_workspace(n_batch, n_batch, n_ctx, opt.n_threads);
  ws.flash_attn = opt.flash_attn;
  ThreadPool pool(opt.n_threads);
  Batch batch;
  const bool add_bos = tok.add_bos() && tok.bos() >= 0;

  PerplexityResult res;
  double nll = 0, nll2 = 0;
  int64_t count = 0;
  std::vector<double> row_lp;
  for (int32_t c = 0; c < n_chunks; ++c) {
    const int64_t start = static_cast<int64_t>(c) * n_ctx;
    for (int32_t b0 = 0; b0 < n_ctx; b0 += n_batch) {
      const int32_t nb = std::min(n_batch, n_ctx - b0);
      batch.clear();
      batch.seqs.push_back({table.data(), static_cast<int32_t>(table.size())});
      for (int32_t i = 0; i < nb; ++i) {
        const int32_t pos = b0 + i;
        const int32_t t = pos == 0 && add_bos ? tok.bos() : tokens[start + pos];
        // Logits at positions first .. n_ctx - 2 predict tokens first + 1 .. n_ctx - 1.
        batch.add(t, pos, 0, pos >= first && pos <= n_ctx - 2);
      }
      auto out = model.forward(batch, **kv, ws, pool);
      QILIN_TRY(out);
      const float* l = *out;
      for (int32_t i = 0; i < nb; ++i) {
        const int32_t pos = b0 + i;
        if (pos < first || pos > n_ctx - 2) continue;
        const int32_t target = tokens[start + pos + 1];
        const float mx = *std::max_element(l, l + n_vocab);
        double sum = 0;
        for (int32_t v = 0; v < n_vocab; ++v) sum += std::exp(static_cast<double>(l[v]) - mx);
        const double v = std::log(sum) + mx - l[target];  // -log p(target)
        nll += v;
        nll2 += v * v;
        ++count;
        l += n_vocab;
      }
    }
    res.running_ppl.push_back(std::exp(nll / count));
    if (progress) progress(c + 1, n_chunks, res.running_ppl.back());
  }
  res.n_chunks = n_chunks;
  res.n_scored = count;
  res.mean_nll = nll / count;
  res.ppl = std::exp(res.mean_nll);
  // llama.cpp's estimate: the standard error of the mean NLL, carried through exp().
  const double var = nll2 / count - res.mean_nll * res.mean_nll;
  res.ppl_stderr = var > 0 && count > 1 ? std::sqrt(var / (count - 1)) * res.ppl : 0;
  return res;
}

}  // namespace qilin
