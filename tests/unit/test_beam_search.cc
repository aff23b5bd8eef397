// Beam search over the shared paged KV cache, on the real model. The references are
// independent of the sharing: one beam must be greedy decoding by the Generator, and every
// hypothesis's log-probability must equal the one recomputed by teacher forcing its tokens
// through a fresh, unshared cache (a wrong copy-on-write would change the K/V a beam sees).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "engine/beam_search.h"
#include "engine/generator.h"
#include "kv/block_allocator.h"
#include "test_util.h"

namespace qilin {
namespace {

class BeamSearchTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(test::load_default(&model_, &tok_)); }

  // Sum of log p(tokens[i] | prompt, tokens[<i]) from one prefill of prompt + tokens with
  // logits on every row, in its own cache.
  double teacher_forced_logprob(const std::vector<int32_t>& prompt,
                                const std::vector<int32_t>& tokens, bool with_eos) {
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), tokens.begin(), tokens.end());
    const int32_t n = static_cast<int32_t>(all.size());
    auto kv = KvCache::create(model_->kv_config(n + 16, 16));
    EXPECT_TRUE(kv.is_ok());
    BlockAllocator alloc((*kv)->config().n_blocks, 16);
    std::vector<int32_t> table;
    EXPECT_TRUE(alloc.reserve(table, n));
    Workspace ws = model_->make_workspace(n, n, n, 2);
    // Two-pass attention: it computes a row alike whatever the batch around it. FlashAttention
    // row blocks and decode rows round differently (~1e-6), which Q4_1's 8-bit activations
    // amplify past this test's tolerance (flash vs naive: test_attention_model.cc).
    ws.flash_attn = false;
    ThreadPool pool(2);
    Batch b;
    b.seqs.push_back({table.data(), static_cast<int32_t>(table.size())});
    for (int32_t i = 0; i < n; ++i) b.add(all[i], i, 0, true);
    auto out = model_->forward(b, **kv, ws, pool);
    EXPECT_TRUE(out.is_ok());
    const int32_t nv = model_->hparams().n_vocab;
    auto logp = [&](int32_t row, int32_t token) {
      const float* l = *out + static_cast<size_t>(row) * nv;
      const float mx = *std::max_element(l, l + nv);
      double s = 0;
      for (int32_t i = 0; i < nv; ++i) s += std::exp(static_cast<double>(l[i]) - mx);
      return l[token] - mx - std::log(s);
    };
    double total = 0;
    const int32_t p = static_cast<int32_t>(prompt.size());
    for (size_t i = 0; i < tokens.size(); ++i) total += logp(p - 1 + static_cast<int32_t>(i), tokens[i]);
    if (with_eos) total += logp(n - 1, tok_->eos());
    return total;
  }

  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(BeamSearchTest, OneBeamIsGreedyDecoding) {
  const std::vector<int32_t> prompt = tok_->encode("The capital of France is", true, true);
  BeamSearchOptions bo;
  bo.n_beams = 1;
  bo.max_tokens = 12;
  bo.ignore_eos = true;
  bo.n_threads = 2;
  auto hyps = beam_search(*model_, *tok_, prompt, bo);
  ASSERT_TRUE(hyps.is_ok()) << hyps.status().message();
  ASSERT_EQ(hyps->size(), 1u);

  GeneratorConfig gc;
  gc.n_ctx = 128;
  gc.n_threads = 2;
  auto g = Generator::create(*model_, gc);
  ASSERT_TRUE(g.is_ok());
  ASSERT_TRUE((*g)->feed(prompt).is_ok());
  std::vector<int32_t> greedy;
  for (int i = 0; i < 12; ++i) {
    const float* l = (*g)->logits();
    const int32_t t = static_cast<int32_t>(std::max_element(l, l + model_->hparams().n_vocab) - l);
    greedy.push_back(t);
    ASSERT_TRUE((*g)->feed(&t, 1).is_ok());
  }
  EXPECT_EQ((*hyps)[0].tokens, greedy);
}

TEST_F(BeamSearchTest, HypothesesMatchTeacherForcingThroughAnUnsharedCache) {
  // A prompt whose length is not a multiple of the block size: beams fork inside a partially
  // filled block, so copy-on-write happens on the first step.
  const std::vector<int32_t> prompt =
      tok_->encode("The harbour was quiet before dawn. The fishermen checked their nets, the "
                   "gulls waited on the posts, and the old lighthouse keeper climbed the stairs "
                   "once more. Write one sentence about the sea and the wind:", true, true);
  ASSERT_NE(prompt.size() % 16, 0u);
  ASSERT_GE(prompt.size(), 32u);  // full blocks for the beams to share
  BeamSearchOptions bo;
  bo.n_beams = 4;
  bo.max_tokens = 24;
  bo.n_threads = 2;
  bo.flash_attn = false;  // as teacher_forced_logprob
  BeamSearchStats st;
  auto hyps = beam_search(*model_, *tok_, prompt, bo, &st);
  ASSERT_TRUE(hyps.is_ok()) << hyps.status().message();
  ASSERT_EQ(hyps->size(), 4u);
  EXPECT_GT(st.block_copies, 0);
  EXPECT_LT(st.peak_blocks, st.unshared_blocks);  // the prompt's blocks are shared
  for (size_t i = 0; i < hyps->size(); ++i) {
    const BeamHypothesis& h = (*hyps)[i];
    SCOPED_TRACE(i);
    ASSERT_FALSE(h.tokens.empty());
    if (i > 0) {
      EXPECT_GE((*hyps)[i - 1].score, h.score);  // best first
    }
    const double want = teacher_forced_logprob(prompt, h.tokens, h.finished);
    EXPECT_NEAR(h.logprob, want, 1e-3 * std::max(1.0, std::fabs(want)));
    const double len = static_cast<double>(h.tokens.size() + (h.finished ? 1 : 0));
    EXPECT_NEAR(h.score, h.logprob / len, 1e-9);
  }
  // Distinct hypotheses.
  for (size_t i = 0; i < hyps->size(); ++i) {
    for (size_t j = i + 1; j < hyps->size(); ++j) EXPECT_NE((*hyps)[i].tokens, (*hyps)[j].tokens);
  }
}

TEST_F(BeamSearchTest, BadOptionsAreRefusedByName) {
  const std::vector<int32_t> prompt = {1, 2, 3};
  BeamSearchOptions bo;
  bo.n_beams = 0;
  auto r = beam_search(*model_, *tok_, prompt, bo);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("n_beams"), std::string::npos);
  bo.n_beams = 2;
  auto e = beam_search(*model_, *tok_, {}, bo);
  ASSERT_FALSE(e.is_ok());
  EXPECT_NE(e.status().message().find("empty"), std::string::npos);
}

}  // namespace
}  // namespace qilin
