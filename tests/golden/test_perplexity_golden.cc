// `qilin perplexity`'s computation against llama.cpp's llama-perplexity on the same text,
// windows and weights (fixture: gen_perplexity_fixtures.py). F32 weights must agree to float
// rounding; the Q4_1 file within the spread that 8-bit activation rounding gives llama.cpp
// itself (check_reference_spread.py: its logits move by up to 0.66 with the KV cache type).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/perplexity.h"
#include "test_util.h"

namespace qilin {
namespace {

class PerplexityGolden : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ifstream in(std::string(QILIN_TEST_DATA_DIR) + "/golden/model/perplexity.json");
    ASSERT_TRUE(in.good()) << "missing fixture tests/golden/model/perplexity.json";
    fixture_ = nlohmann::json::parse(in);
    const std::string text_path = fixture_["text"];
    std::ifstream t(text_path, std::ios::binary);
    ASSERT_TRUE(t.good()) << text_path << " is missing: install Debian's python3.11-doc "
                          << "(scripts/install_deps.sh does)";
    std::stringstream ss;
    ss << t.rdbuf();
    text_ = ss.str();
  }
  PerplexityResult run(const std::string& model_path) {
    auto m = LlamaModel::load(model_path);
    EXPECT_TRUE(m.is_ok()) << m.status().message();
    auto tok = Tokenizer::from_gguf((*m)->gguf());
    EXPECT_TRUE(tok.is_ok());
    PerplexityOptions po;
    po.kv_type = KvType::F32;  // as the fixture (llama-perplexity -ctk f32 -ctv f32)
    po.n_ctx = fixture_["ctx"];
    po.n_batch = po.n_ctx;
    po.n_chunks = fixture_["chunks"];
    po.n_threads = 2;
    auto r = perplexity(**m, **tok, (*tok)->encode(text_, true, false), po);
    EXPECT_TRUE(r.is_ok()) << r.status().message();
    return r.is_ok() ? *r : PerplexityResult{};
  }
  nlohmann::json fixture_;
  std::string text_;
};

TEST_F(PerplexityGolden, F32WeightsMatchLlamaPerplexity) {
  const PerplexityResult r = run(test::f32_model_path());
  const nlohmann::json& want = fixture_["f32"];
  ASSERT_EQ(r.running_ppl.size(), want["running_ppl"].size());
  for (size_t i = 0; i < r.running_ppl.size(); ++i) {
    // llama.cpp prints 4 decimals.
    EXPECT_NEAR(r.running_ppl[i], want["running_ppl"][i].get<double>(), 2e-4 * r.running_ppl[i] + 1e-4)
        << "window " << i + 1;
  }
  EXPECT_NEAR(r.ppl, want["ppl"].get<double>(), 2e-4 * r.ppl + 1e-4);
  EXPECT_NEAR(r.ppl_stderr, want["ppl_stderr"].get<double>(), 2e-3 * r.ppl_stderr + 1e-5);
  std::printf("  F32: qilin %.4f +/- %.5f, llama.cpp %.4f +/- %.5f\n", r.ppl, r.ppl_stderr,
              want["ppl"].get<double>(), want["ppl_stderr"].get<double>());
}

TEST_F(PerplexityGolden, ShippedQ41MatchesLlamaPerplexityWithinItsRoundingSpread) {
  const PerplexityResult r = run(test::default_model_path());
  const nlohmann::json& want = fixture_["q4_1"];
  ASSERT_EQ(r.running_ppl.size(), want["running_ppl"].size());
  // llama.cpp's own spread on this file: switching only its KV cache from F32 to F16 moves
  // window 1's estimate from 22.194 to 22.555 (1.6%) and the final one from 13.8106 to
  // 13.7431 (0.5%); measured here: 2.0% and 0.44%. So each running estimate within 3% and the
  // final one within 1%, twice llama.cpp's own spread. A wrong slot or position moves them by
  // tens of percent (and the F32 test above pins the arithmetic to 2e-4).
  for (size_t i = 0; i < r.running_ppl.size(); ++i) {
    EXPECT_NEAR(r.running_ppl[i], want["running_ppl"][i].get<double>(), 0.03 * r.running_ppl[i])
        << "window " << i + 1;
  }
  EXPECT_NEAR(r.ppl, want["ppl"].get<double>(), 0.01 * r.ppl);
  std::printf("  Q4_1: qilin %.4f +/- %.5f, llama.cpp %.4f +/- %.5f\n", r.ppl, r.ppl_stderr,
              want["ppl"].get<double>(), want["ppl_stderr"].get<double>());
}

TEST(Perplexity, RefusesATextShorterThanTwoWindows) {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tok;
  ASSERT_NO_FATAL_FAILURE(test::load_default(&model, &tok));
  PerplexityOptions po;
  po.n_ctx = 64;
  auto r = perplexity(*model, *tok, std::vector<int32_t>(100, 5), po);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("100 tokens"), std::string::npos) << r.status().message();
}

}  // namespace
}  // namespace qilin
