// Generator and generate(): no heap allocation per decoded token after warm-up, stop strings
// cut the text, context limits give errors, and seeded sampling is reproducible.
#include <gtest/gtest.h>

#include "alloc_counter.h"
#include "engine/generator.h"
#include "test_util.h"

namespace qilin {
namespace {

class GeneratorTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(test::load_default(&model_, &tok_)); }
  std::unique_ptr<Generator> make(int32_t n_ctx = 256) {
    GeneratorConfig gc;
    gc.n_ctx = n_ctx;
    gc.n_threads = 2;
    auto g = Generator::create(*model_, gc);
    EXPECT_TRUE(g.is_ok()) << g.status().message();
    return std::move(*g);
  }
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(GeneratorTest, DecodingAllocatesNothingPerToken) {
  auto g = make();
  SamplingParams sp;
  sp.seed = 7;
  Sampler sampler(sp, model_->hparams().n_vocab);
  const std::vector<int32_t> prompt = tok_->encode("Once upon a time", true, true);
  GenerateOptions opt;
  opt.ignore_eos = true;
  auto ignore = [](std::string_view) { return true; };
  auto run = [&](int32_t n) {
    g->reset();
    sampler.reset();
    opt.max_tokens = n;
    return test::count_allocations([&] { ASSERT_TRUE(generate(*g, *tok_, sampler, prompt, opt, ignore).is_ok()); });
  };
  run(8);  // warm-up
  const long short_run = run(8);
  const long long_run = run(40);
  // Whatever a call allocates once (its text buffer), 32 more tokens must not add to it.
  EXPECT_EQ(long_run, short_run) << "allocations grow with the number of generated tokens";
}

TEST_F(GeneratorTest, SameSeedSameTextAndStopStringsCut) {
  auto g = make();
  SamplingParams sp;
  sp.seed = 1234;
  sp.temperature = 0.9f;
  const std::vector<int32_t> prompt = tok_->encode("The best thing about summer is", true, true);
  GenerateOptions opt;
  opt.max_tokens = 24;
  opt.ignore_eos = true;
  std::string a, b;
  Sampler s1(sp, model_->hparams().n_vocab);
  ASSERT_TRUE(generate(*g, *tok_, s1, prompt, opt, [&](std::string_view t) { a += t; return true; }).is_ok());
  g->reset();
  Sampler s2(sp, model_->hparams().n_vocab);
  ASSERT_TRUE(generate(*g, *tok_, s2, prompt, opt, [&](std::string_view t) { b += t; return true; }).is_ok());
  EXPECT_EQ(a, b);
  ASSERT_GE(a.size(), 6u);

  // Stop at a string taken from the middle of that text: output is the text before it.
  const std::string stop = a.substr(a.size() / 2, 3);
  const size_t cut = a.find(stop);
  g->reset();
  Sampler s3(sp, model_->hparams().n_vocab);
  opt.stop = {stop};
  std::string c;
  auto st = generate(*g, *tok_, s3, prompt, opt, [&](std::string_view t) { c += t; return true; });
  ASSERT_TRUE(st.is_ok());
  EXPECT_EQ(st->stop_reason, "stop");
  EXPECT_EQ(c, a.substr(0, cut));
}

TEST_F(GeneratorTest, PromptLongerThanContextIsAnError) {
  auto g = make(32);
  Sampler s(SamplingParams{}, model_->hparams().n_vocab);
  std::vector<int32_t> prompt(40, 28);
  auto st = generate(*g, *tok_, s, prompt, GenerateOptions{}, [](std::string_view) { return true; });
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.status().message().find("context holds 32"), std::string::npos) << st.status().message();
  EXPECT_EQ(g->n_past(), 0);  // nothing was fed
}

}  // namespace
}  // namespace qilin
