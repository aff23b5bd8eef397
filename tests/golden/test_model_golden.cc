// The Llama forward pass against llama.cpp: last-position logits (top-100) and 64 greedy tokens
// for five prompts. Fixtures: tests/golden/model/*.json, made by gen_model_fixtures.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "cpu/quants.h"
#include "engine/generator.h"
#include "model/llama.h"
#include "test_util.h"

namespace qilin {
namespace {

nlohmann::json load_fixture(const std::string& name) {
  std::ifstream in(std::string(QILIN_TEST_DATA_DIR) + "/golden/model/" + name);
  EXPECT_TRUE(in.good()) << "missing fixture tests/golden/model/" << name;
  return nlohmann::json::parse(in);
}

int32_t argmax(const float* v, int32_t n) {
  return static_cast<int32_t>(std::max_element(v, v + n) - v);
}

// A generator over `model` with room for the fixtures' prompts and 64 tokens.
std::unique_ptr<Generator> make_generator(const LlamaModel& model) {
  GeneratorConfig gc;
  gc.kv_type = KvType::F32;  // as the fixtures (gen_model_fixtures.py: F32 KV cache)
  gc.n_ctx = 512;
  gc.n_threads = 2;
  auto g = Generator::create(model, gc);
  EXPECT_TRUE(g.is_ok()) << g.status().message();
  return g.is_ok() ? std::move(*g) : nullptr;
}

// Decodes greedily from the generator's state while it agrees with `want`; returns how many
// tokens matched (want.size() when all did).
size_t greedy_prefix(Generator& g, const std::vector<int32_t>& want) {
  const int32_t n_vocab = g.model().hparams().n_vocab;
  for (size_t i = 0; i < want.size(); ++i) {
    int32_t t = argmax(g.logits(), n_vocab);
    if (t != want[i] || !g.feed(&t, 1).is_ok()) return i;
  }
  return want.size();
}

class ModelGolden : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(test::model_present());
    auto m = LlamaModel::load(test::default_model_path());
    ASSERT_TRUE(m.is_ok()) << m.status().message();
    model_ = std::move(*m);
    fixture_ = load_fixture("smollm2_q4_1.json");
  }
  std::unique_ptr<LlamaModel> model_;
  nlohmann::json fixture_;
};

// Tolerance: llama.cpp and Qilin run the same quantized arithmetic (Q4_1 weights against Q8_1
// activations, Q8_0 output head against Q8_0 activations) but sum in different orders and use
// different exp/sin/cos. Re-quantizing activations to 8 bits in every matmul of 30 layers
// amplifies 1e-7-sized differences into visible ones: llama.cpp itself moves by up to 0.66 on
// these prompts when only its KV cache goes from F32 to F16, and by 0.34 between batched and
// token-by-token prompts, with a mean shift over the top 100 of up to 0.156
// (check_reference_spread.py). Our own SIMD and scalar kernels differ from each other by as
// much. We allow 1.0 per logit (1.5x the max spread), a mean of 0.4 (2.5x the mean spread) and
// require the same top-1 token; ModelGoldenF32 below checks the same forward pass to 1e-3.
TEST_F(ModelGolden, LastPositionLogitsMatchLlamaCpp) {
  auto g = make_generator(*model_);
  ASSERT_NE(g, nullptr);
  const int32_t n_vocab = model_->hparams().n_vocab;
  for (const auto& c : fixture_["cases"]) {
    SCOPED_TRACE(c["prompt"].get<std::string>());
    g->reset();
    std::vector<int32_t> toks = c["tokens"].get<std::vector<int32_t>>();
    ASSERT_TRUE(g->feed(toks).is_ok());
    const float* logits = g->logits();
    const auto ids = c["top_ids"].get<std::vector<int32_t>>();
    const auto ref = c["top_logits"].get<std::vector<float>>();
    for (int32_t i = 0; i < n_vocab; ++i) ASSERT_TRUE(std::isfinite(logits[i])) << "logit " << i;
    EXPECT_EQ(argmax(logits, n_vocab), ids[0]);
    const float tol = 1.0f;
    float max_err = 0, sum_err = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      const float err = std::fabs(logits[ids[i]] - ref[i]);
      max_err = std::max(max_err, err);
      sum_err += err;
      EXPECT_NEAR(logits[ids[i]], ref[i], tol) << "token " << ids[i] << " (rank " << i << ")";
    }
    const float mean_err = sum_err / ids.size();
    EXPECT_LE(mean_err, 0.4f);
    std::printf("  |logit - llama.cpp| over top-100: max %.4f, mean %.4f\n", max_err, mean_err);
  }
}

// Greedy decoding, two ways.
// Teacher-forced: we feed llama.cpp's 64 greedy tokens one by one and at every step compare our
// argmax with llama.cpp's. Where llama.cpp's own top-2 gap exceeds kDecisive (above the 0.66 its
// logits move under benign changes, see check_reference_spread.py) the choice is not a numerical
// coin flip and we must make the same one; 320 decisions across the five prompts.
// Free-running: our own greedy continuation must equal llama.cpp's up to the first step where
// llama.cpp's gap is below kDecisive; past a near-tie the two texts may part (the SmolLM2
// prompts here hit 8-14 near-ties of gap < 0.3 in 64 tokens, and 0.005-0.22 at the points where
// we part), and we report how long they stay identical.
constexpr float kDecisive = 0.7f;

TEST_F(ModelGolden, GreedyDecisionsMatchLlamaCppTeacherForced) {
  auto g = make_generator(*model_);
  ASSERT_NE(g, nullptr);
  const int32_t n_vocab = model_->hparams().n_vocab;
  int decisive = 0, agreed_all = 0, total = 0;
  for (const auto& c : fixture_["cases"]) {
    SCOPED_TRACE(c["prompt"].get<std::string>());
    g->reset();
    ASSERT_TRUE(g->feed(c["tokens"].get<std::vector<int32_t>>()).is_ok());
    const auto want = c["greedy"].get<std::vector<int32_t>>();
    const auto gap = c["greedy_gap"].get<std::vector<float>>();
    for (size_t i = 0; i < want.size(); ++i) {
      const int32_t t = argmax(g->logits(), n_vocab);
      ++total;
      agreed_all += t == want[i];
      if (gap[i] > kDecisive) {
        ++decisive;
        EXPECT_EQ(t, want[i]) << "step " << i << ", llama.cpp's top-2 gap " << gap[i];
      }
      ASSERT_TRUE(g->feed(&want[i], 1).is_ok());
    }
  }
  std::printf("  agreed on %d/%d greedy steps (%d decisive steps, all must agree)\n", agreed_all,
              total, decisive);
  EXPECT_GE(decisive, 200);  // the fixture must keep testing something
}

TEST_F(ModelGolden, FreeRunningGreedyPartsOnlyAtNearTies) {
  auto g = make_generator(*model_);
  ASSERT_NE(g, nullptr);
  int identical = 0, index = 0;
  for (const auto& c : fixture_["cases"]) {
    SCOPED_TRACE(c["prompt"].get<std::string>());
    g->reset();
    ASSERT_TRUE(g->feed(c["tokens"].get<std::vector<int32_t>>()).is_ok());
    const auto want = c["greedy"].get<std::vector<int32_t>>();
    const auto gap = c["greedy_gap"].get<std::vector<float>>();
    const size_t first_diff = greedy_prefix(*g, want);
    size_t first_near_tie = want.size();
    for (size_t i = 0; i < want.size(); ++i) {
      if (gap[i] <= kDecisive) {
        first_near_tie = i;
        break;
      }
    }
    std::printf("  prompt %d: identical for %zu/%zu tokens (llama.cpp's first near-tie: %zu)\n",
                index++, first_diff, want.size(), first_near_tie);
    EXPECT_GE(first_diff, first_near_tie) << "parted from llama.cpp on a decisive step";
    if (first_diff < want.size()) {
      EXPECT_LE(gap[first_diff], kDecisive) << "parted at step " << first_diff;
    }
    identical += first_diff == want.size();
  }
  std::printf("  %d/5 prompts identical for all 64 tokens\n", identical);
}

// The same weights dequantized to F32 (our dequantizer and GGUF writer here; gguf-py's for
// the llama.cpp fixture). With F32 weights nothing re-quantizes activations, so float rounding
// differences stay ~1e-6 and greedy text must match llama.cpp exactly: the criterion of
// at least 4 of 5 prompts identical for 64 tokens, and logits within 1e-3.
class ModelGoldenF32 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    path_ = new std::string(test::f32_model_path());
    ASSERT_FALSE(path_->empty());
  }
  static void TearDownTestSuite() {
    delete path_;
    path_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(path_, nullptr);
    auto m = LlamaModel::load(*path_);
    ASSERT_TRUE(m.is_ok()) << m.status().message();
    model_ = std::move(*m);
    fixture_ = load_fixture("smollm2_f32.json");
  }
  static std::string* path_;
  std::unique_ptr<LlamaModel> model_;
  nlohmann::json fixture_;
};
std::string* ModelGoldenF32::path_ = nullptr;

TEST_F(ModelGoldenF32, LogitsAndGreedyTextMatchLlamaCpp) {
  auto g = make_generator(*model_);
  ASSERT_NE(g, nullptr);
  const int32_t n_vocab = model_->hparams().n_vocab;
  int identical = 0, index = 0;
  for (const auto& c : fixture_["cases"]) {
    SCOPED_TRACE(c["prompt"].get<std::string>());
    g->reset();
    ASSERT_TRUE(g->feed(c["tokens"].get<std::vector<int32_t>>()).is_ok());
    const auto ids = c["top_ids"].get<std::vector<int32_t>>();
    const auto ref = c["top_logits"].get<std::vector<float>>();
    const float* logits = g->logits();
    EXPECT_EQ(argmax(logits, n_vocab), ids[0]);
    float max_err = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      max_err = std::max(max_err, std::fabs(logits[ids[i]] - ref[i]));
      // Measured: 1e-5. Summation order (SIMD lanes, threads) is all that differs; 1e-3 leaves
      // room for other kernels while catching any real error (a wrong op moves logits by > 0.1).
      EXPECT_NEAR(logits[ids[i]], ref[i], 1e-3f) << "token " << ids[i];
    }
    const auto want = c["greedy"].get<std::vector<int32_t>>();
    const size_t first_diff = greedy_prefix(*g, want);
    std::printf("  prompt %d: max |logit - llama.cpp| %.5f, greedy identical for %zu/%zu\n",
                index++, max_err, first_diff, want.size());
    identical += first_diff == want.size();
  }
  EXPECT_GE(identical, 4);
}

// On F32 weights the prefill path (tiled gemm kernels) and the decode path (vec_dot per row)
// differ only by summation order, so token-by-token decoding must reproduce a one-shot prefill
// to float precision: the cache written by either path is read back at the right slots.
TEST_F(ModelGoldenF32, DecodeStepsMatchOneShotPrefill) {
  GeneratorConfig gc;
  gc.n_ctx = 128;
  gc.n_threads = 2;
  gc.block_size = 4;  // several blocks even for a short prompt
  gc.kv_type = KvType::F32;  // float precision: F16 K/V would round the two paths apart
  auto one_shot = Generator::create(*model_, gc);
  auto stepwise = Generator::create(*model_, gc);
  ASSERT_TRUE(one_shot.is_ok() && stepwise.is_ok());
  const auto toks = fixture_["cases"][4]["tokens"].get<std::vector<int32_t>>();
  ASSERT_TRUE((*one_shot)->feed(toks).is_ok());
  const int32_t half = static_cast<int32_t>(toks.size() / 2);
  ASSERT_TRUE((*stepwise)->feed(toks.data(), half).is_ok());  // prefill half, then decode
  for (size_t i = half; i < toks.size(); ++i) ASSERT_TRUE((*stepwise)->feed(&toks[i], 1).is_ok());
  const float* a = (*one_shot)->logits();
  const float* b = (*stepwise)->logits();
  for (int32_t i = 0; i < model_->hparams().n_vocab; ++i) ASSERT_NEAR(a[i], b[i], 1e-3f) << i;
}

// The flash attention path (tiled online softmax) against the naive two-pass one on F32
// weights, where nothing re-quantizes: same logits to float precision, prefill and decode.
TEST_F(ModelGoldenF32, FlashAttentionMatchesNaive) {
  GeneratorConfig gc;
  gc.n_ctx = 256;
  gc.n_threads = 2;
  gc.kv_type = KvType::F32;  // as above
  gc.flash_attn = false;
  auto naive = Generator::create(*model_, gc);
  gc.flash_attn = true;
  auto flash = Generator::create(*model_, gc);
  ASSERT_TRUE(naive.is_ok() && flash.is_ok());
  const auto toks = fixture_["cases"][4]["tokens"].get<std::vector<int32_t>>();
  ASSERT_TRUE((*naive)->feed(toks).is_ok());
  ASSERT_TRUE((*flash)->feed(toks).is_ok());
  const int32_t n_vocab = model_->hparams().n_vocab;
  for (int step = 0; step < 8; ++step) {  // prefill, then decode steps
    const float* a = (*naive)->logits();
    const float* b = (*flash)->logits();
    for (int32_t i = 0; i < n_vocab; ++i) ASSERT_NEAR(a[i], b[i], 1e-3f) << "step " << step;
    int32_t t = argmax(a, n_vocab);
    ASSERT_TRUE((*naive)->feed(&t, 1).is_ok());
    ASSERT_TRUE((*flash)->feed(&t, 1).is_ok());
  }
}

}  // namespace
}  // namespace qilin
