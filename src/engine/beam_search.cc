// Beam search: see beam_search.h. Hypothesis rules follow the common (Hugging Face) ones:
// each step every live beam proposes its 2 * n_beams best next tokens; candidates are ranked by
// total log-probability; an end-of-generation candidate within the first n_beams ranks
// finishes a hypothesis, the others continue; the search stops when n_beams hypotheses are
// finished and no live beam can score above the worst of them, or at max_tokens.
#include "engine/beam_search.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/thread_pool.h"
#include "kv/block_manager.h"
#include "ops/batch.h"
#include "ops/kv_cache.h"

namespace qilin {
namespace {

struct Beam {
  SeqId id;
  std::vector<int32_t> tokens;
  double logprob;
};

struct Candidate {
  double logprob;  // of the whole beam with this token
  int32_t beam;
  int32_t token;
};

double length_norm(double logprob, size_t length, float penalty) {
  return logprob / std::pow(static_cast<double>(std::max<size_t>(length, 1)), penalty);
}

// log-softmax of one logits row, in double.
void log_softmax(const float* logits, int32_t n, std::vector<double>* out) {
  out->resize(n);
  const float mx = *std::max_element(logits, logits + n);
  double sum = 0;
  for (int32_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  const double lse = mx + std::log(sum);
  for (int32_t i = 0; i < n; ++i) (*out)[i] = logits[i] - lse;
}

}  // namespace

Result<std::vector<BeamHypothesis>> beam_search(const LlamaModel& model, const Tokenizer& tok,
                                                const std::vector<int32_t>& prompt,
                                                const BeamSearchOptions& opt,
                                                BeamSearchStats* stats) {
  const int32_t n_vocab = model.hparams().n_vocab;
  if (opt.n_beams < 1 || opt.n_beams > 64) {
    return errorf("beam search: n_beams must be in [1, 64], got %d", opt.n_beams);
  }
  if (opt.max_tokens < 1) return errorf("beam search: max_tokens must be >= 1, got %d", opt.max_tokens);
  if (opt.n_threads < 1) return errorf("beam search: thread count must be >= 1, got %d", opt.n_threads);
  if (opt.n_batch < 1) return errorf("beam search: batch size must be >= 1, got %d", opt.n_batch);
  if (prompt.empty()) return errorf("beam search: the prompt is empty");
  for (int32_t t : prompt) {
    if (t < 0 || t >= n_vocab) return errorf("beam search: token id %d is outside [0, %d)", t, n_vocab);
  }
  BeamSearchStats st;
  const int32_t n_prompt = static_cast<int32_t>(prompt.size());
  const int32_t n_beams = opt.n_beams;
  const int32_t bs = opt.block_size;
  const int32_t max_len = n_prompt + opt.max_tokens;
  auto blocks_for = [bs](int32_t n) { return (n + bs - 1) / bs; };
  // The prompt once, plus every beam's own blocks at full length: enough in the worst case
  // (no sharing beyond the prompt), so allocation below cannot fail.
  const int32_t n_blocks = blocks_for(n_prompt) + n_beams * (blocks_for(max_len) + 1);
  auto kv = KvCache::create(model.kv_config(n_blocks * bs, bs, opt.kv_type));
  QILIN_TRY(kv);
  BlockManager mgr((*kv)->config().n_blocks, bs, /*prefix_caching=*/false);
  ThreadPool pool(opt.n_threads);
  const int32_t rows = std::max(std::min(opt.n_batch, n_prompt), n_beams);
  Workspace ws = model.make_workspace(rows, n_beams, max_len, opt.n_threads);
  ws.flash_attn = opt.flash_attn;
  Batch batch;
  std::vector<float> logits(static_cast<size_t>(n_beams) * n_vocab);  // [n_beams, n_vocab]

  // The prompt, once.
  int32_t cached = 0;
  if (!mgr.add_sequence(0, prompt.data(), n_prompt, &cached).ok()) {
    return errorf("beam search: the KV cache cannot hold the prompt");
  }
  for (int32_t done = 0; done < n_prompt;) {
    const int32_t chunk = std::min(n_prompt - done, rows);
    batch.clear();
    const std::vector<int32_t>& table = mgr.block_table(0);
    batch.seqs.push_back({table.data(), static_cast<int32_t>(table.size())});
    for (int32_t i = 0; i < chunk; ++i) {
      batch.add(prompt[done + i], done + i, 0, done + i == n_prompt - 1);
    }
    auto out = model.forward(batch, **kv, ws, pool);
    QILIN_TRY(out);
    std::copy(*out, *out + n_vocab, logits.begin());
    done += chunk;
  }
  mgr.mark_computed(0, n_prompt);

  std::vector<Beam> beams = {{0, {}, 0.0}};
  std::vector<BeamHypothesis> finished;
  SeqId next_id = 1;
  std::vector<double> lp;
  std::vector<int32_t> order(n_vocab);
  std::vector<BlockCopy> copies;
  for (int32_t step = 0; step < opt.max_tokens; ++step) {
    // Every live beam proposes its 2 * n_beams best tokens.
    std::vector<Candidate> cands;
    const int32_t per_beam = std::min(2 * n_beams, n_vocab);
    for (int32_t b = 0; b < static_cast<int32_t>(beams.size()); ++b) {
      log_softmax(logits.data() + static_cast<size_t>(b) * n_vocab, n_vocab, &lp);
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + per_beam, order.end(),
                        [&](int32_t x, int32_t y) { return lp[x] > lp[y] || (lp[x] == lp[y] && x < y); });
      for (int32_t i = 0; i < per_beam; ++i) {
        cands.push_back({beams[b].logprob + lp[order[i]], b, order[i]});
      }
    }
    std::stable_sort(cands.begin(), cands.end(),
                     [](const Candidate& x, const Candidate& y) { return x.logprob > y.logprob; });
    std::vector<Candidate> chosen;
    for (size_t rank = 0; rank < cands.size() && static_cast<int32_t>(chosen.size()) < n_beams; ++rank) {
      const Candidate& c = cands[rank];
      if (!opt.ignore_eos && tok.is_eog(c.token)) {
        if (static_cast<int32_t>(rank) < n_beams) {
          const std::vector<int32_t>& t = beams[c.beam].tokens;
          finished.push_back({t, c.logprob, length_norm(c.logprob, t.size() + 1, opt.length_penalty), true});
        }
        continue;
      }
      chosen.push_back(c);
    }
    st.steps = step + 1;
    // Done when n_beams hypotheses are finished and the best live beam cannot overtake them
    // (its score with this step's token, the usual heuristic).
    if (static_cast<int32_t>(finished.size()) >= n_beams) {
      std::vector<double> scores;
      for (const BeamHypothesis& h : finished) scores.push_back(h.score);
      std::sort(scores.rbegin(), scores.rend());
      const double worst_kept = scores[n_beams - 1];
      if (chosen.empty() ||
          length_norm(chosen[0].logprob, step + 1, opt.length_penalty) <= worst_kept) {
        beams.clear();
        break;
      }
    }
    if (chosen.empty()) {
      beams.clear();
      break;
    }

    // New beams. A parent's extra children fork from it first (sharing every block); its
    // first child then continues the parent's own sequence, and parents with no child end.
    std::vector<int32_t> n_children(beams.size(), 0);
    for (const Candidate& c : chosen) ++n_children[c.beam];
    for (size_t b = 0; b < beams.size(); ++b) {
      if (n_children[b] == 0) mgr.free(beams[b].id);
    }
    std::vector<Beam> next(chosen.size());
    std::vector<uint8_t> parent_taken(beams.size(), 0);
    // Pass 1: forks for all but each parent's first child.
    std::vector<uint8_t> is_first(chosen.size(), 0);
    for (size_t i = 0; i < chosen.size(); ++i) {
      const int32_t p = chosen[i].beam;
      if (!parent_taken[p]) {
        parent_taken[p] = 1;
        is_first[i] = 1;
        continue;
      }
      next[i].id = next_id++;
      mgr.fork(beams[p].id, next[i].id);
    }
    // Pass 2: the appends, forked children first so the parent's partial block is copied for
    // them while it is shared, then written in place by the first child.
    for (int pass = 0; pass < 2; ++pass) {
      for (size_t i = 0; i < chosen.size(); ++i) {
        if (is_first[i] != (pass == 1)) continue;
        const Candidate& c = chosen[i];
        if (is_first[i]) next[i].id = beams[c.beam].id;
        next[i].tokens = beams[c.beam].tokens;
        next[i].tokens.push_back(c.token);
        next[i].logprob = c.logprob;
        copies.clear();
        if (!mgr.append(next[i].id, &c.token, 1, &copies).ok()) {
          return errorf("beam search: KV cache exhausted (internal sizing error)");
        }
        model.copy_kv_blocks(**kv, copies);
        st.block_copies += static_cast<int32_t>(copies.size());
      }
    }
    beams = std::move(next);
    const BlockManagerStats ms = mgr.stats();
    if (ms.used > st.peak_blocks) {
      st.peak_blocks = ms.used;
      st.unshared_blocks = 0;
      for (const Beam& b : beams) {
        st.unshared_blocks += blocks_for(n_prompt + static_cast<int32_t>(b.tokens.size()));
      }
    }

    // One batch: every beam's new token.
    batch.clear();
    for (size_t i = 0; i < beams.size(); ++i) {
      const std::vector<int32_t>& table = mgr.block_table(beams[i].id);
      batch.seqs.push_back({table.data(), static_cast<int32_t>(table.size())});
      batch.add(beams[i].tokens.back(), n_prompt + step, static_cast<int32_t>(i), true);
    }
    auto out = model.forward(batch, **kv, ws, pool);
    QILIN_TRY(out);
    std::copy(*out, *out + beams.size() * static_cast<size_t>(n_vocab), logits.begin());
    for (const Beam& b : beams) mgr.mark_computed(b.id, n_prompt + step + 1);
  }
  for (const Beam& b : beams) {
    finished.push_back({b.tokens, b.logprob, length_norm(b.logprob, b.tokens.size(), opt.length_penalty), false});
  }
  std::stable_sort(finished.begin(), finished.end(),
                   [](const BeamHypothesis& x, const BeamHypothesis& y) { return x.score > y.score; });
  if (static_cast<int32_t>(finished.size()) > n_beams) finished.resize(n_beams);
  if (stats) *stats = st;
  return finished;
}

}  // namespace qilin
