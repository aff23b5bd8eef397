// Prefix caching end to end on the real model: a prompt whose leading blocks are found in the
// cache skips their prefill and still produces the logits of a run that computed everything.
#include <gtest/gtest.h>

#include <vector>

#include "engine/generator.h"
#include "test_util.h"

namespace qilin {
namespace {

class PrefixCache : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(test::load_default(&model_, &tok_)); }
  std::unique_ptr<Generator> make(bool prefix_cache) {
    GeneratorConfig gc;
    gc.n_ctx = 512;
    gc.n_threads = 2;
    gc.prefix_cache = prefix_cache;
    auto g = Generator::create(*model_, gc);
    EXPECT_TRUE(g.is_ok()) << g.status().message();
    return std::move(*g);
  }
  std::vector<int32_t> tokens(const std::string& text) { return tok_->encode(text, true, true); }
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(PrefixCache, HitGivesTheLogitsOfAFullPrefill) {
  const std::string system =
      "You are a careful assistant. Answer in plain words, cite no sources you have not read, "
      "and say so when you do not know. Keep answers short unless asked for detail.";
  const std::vector<int32_t> first = tokens(system + " Question: what is a prime number?");
  const std::vector<int32_t> second = tokens(system + " Question: why is the sky blue at noon?");
  const int32_t n_vocab = model_->hparams().n_vocab;

  auto cached = make(true);
  ASSERT_TRUE(cached->feed(first).is_ok());
  cached->reset();
  ASSERT_TRUE(cached->feed(second).is_ok());
  // The shared system prompt spans at least two full 16-token blocks.
  const int64_t hit = cached->prefix_hit_tokens();
  EXPECT_GE(hit, 32);
  EXPECT_EQ(hit % 16, 0);
  const std::vector<float> with_hit(cached->logits(), cached->logits() + n_vocab);

  auto fresh = make(false);
  ASSERT_TRUE(fresh->feed(second).is_ok());
  EXPECT_EQ(fresh->prefix_hit_tokens(), 0);
  const std::vector<float> without(fresh->logits(), fresh->logits() + n_vocab);
  // Same K/V for the cached positions, and each row's arithmetic does not depend on which
  // other rows share its batch, so the logits are the same bits.
  EXPECT_EQ(with_hit, without);

  // Decoding on from both gives the same tokens too.
  for (int step = 0; step < 8; ++step) {
    const int32_t a = static_cast<int32_t>(
        std::max_element(cached->logits(), cached->logits() + n_vocab) - cached->logits());
    const int32_t b = static_cast<int32_t>(
        std::max_element(fresh->logits(), fresh->logits() + n_vocab) - fresh->logits());
    ASSERT_EQ(a, b) << "step " << step;
    ASSERT_TRUE(cached->feed(&a, 1).is_ok());
    ASSERT_TRUE(fresh->feed(&b, 1).is_ok());
  }
}

TEST_F(PrefixCache, TruncatedAndReusedSequenceStaysCorrect) {
  // A chat edits its history: truncate into a computed block, continue differently, then
  // a new prompt equal to the original must not hit the rewritten block.
  const std::vector<int32_t> p = tokens(
      "The quick brown fox jumps over the lazy dog while the cat watches from the old wooden "
      "fence near the red barn at the edge of the field, and the farmer, who has seen all of "
      "this before, keeps mending his nets.");
  ASSERT_GE(p.size(), 34u);
  auto g = make(true);
  ASSERT_TRUE(g->feed(p).is_ok());
  g->truncate(20);  // inside the second block
  const std::vector<int32_t> other = tokens(" Meanwhile, far away, a ship sailed.");
  ASSERT_TRUE(g->feed(other).is_ok());
  g->reset();
  ASSERT_TRUE(g->feed(p).is_ok());
  const std::vector<float> got(g->logits(), g->logits() + model_->hparams().n_vocab);
  EXPECT_EQ(g->prefix_hit_tokens(), 16);  // block 0 only: block 1 was rewritten

  auto fresh = make(false);
  ASSERT_TRUE(fresh->feed(p).is_ok());
  const std::vector<float> want(fresh->logits(), fresh->logits() + model_->hparams().n_vocab);
  EXPECT_EQ(got, want);
}

}  // namespace
}  // namespace qilin
