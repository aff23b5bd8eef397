// LoRA training on the real model's shapes: the training forward gives the inference logits,
// the gemm backend gives the same gradients as the plain loops, and AdamW on the adapters
// lowers the loss of a sentence the model did not know.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/generator.h"
#include "train/gemm_linear.h"
#include "train/optimizer.h"
#include "test_util.h"

namespace qilin::train {
namespace {

TEST(TrainModel, TrainingForwardGivesTheInferenceLogits) {
  const std::string path = test::f32_model_path();
  ASSERT_FALSE(path.empty());
  auto model = LlamaModel::load(path);
  ASSERT_TRUE(model.is_ok());
  auto tok = Tokenizer::from_gguf((*model)->gguf());
  ASSERT_TRUE(tok.is_ok());
  const std::vector<int32_t> p = (*tok)->encode("The quick brown fox jumps over the lazy dog", true, true);
  const int64_t n = static_cast<int64_t>(p.size());
  ThreadPool pool(2);
  auto m = lora_llama_from(**model, LoraConfig{});
  m->init_lora(1);  // B = 0: the adapted model is the base
  GemmLinear fast(*m, pool);
  m->set_fast_linear(&fast);
  std::vector<int32_t> targets(p.begin() + 1, p.end());
  targets.push_back(-1);
  std::vector<float> logits;
  m->forward(p.data(), targets.data(), n, &logits);

  GeneratorConfig gc;
  gc.kv_type = KvType::F32;  // the training forward keeps K and V in F32
  gc.n_ctx = 64;
  gc.n_threads = 2;
  auto g = Generator::create(**model, gc);
  ASSERT_TRUE(g.is_ok());
  ASSERT_TRUE((*g)->feed(p).is_ok());
  const int32_t V = (*model)->hparams().n_vocab;
  const float* want = (*g)->logits();  // last position
  double max_err = 0;
  for (int32_t i = 0; i < V; ++i) max_err = std::max(max_err, double(std::fabs(logits[(n - 1) * V + i] - want[i])));
  // Same weights; RoPE angles by pow() here and by repeated products in inference.
  EXPECT_LT(max_err, 2e-3);
}

TEST(TrainModel, GemmBackendGivesThePlainLoopsGradients) {
  LlamaShape s;
  s.n_vocab = 37;
  s.n_embd = 32;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_head_kv = 2;
  s.head_dim = 8;
  s.n_ff = 48;
  s.n_rot = 8;
  s.tied_output = true;
  auto make = [&] {
    auto m = std::make_unique<LoraLlama<float>>(s, LoraConfig{});
    m->init_random_base(3, 0.3f);
    m->init_lora(4, 0.2f);
    return m;
  };
  auto plain = make(), fast = make();
  ThreadPool pool(2);
  GemmLinear gl(*fast, pool);
  fast->set_fast_linear(&gl);
  const int32_t tokens[9] = {1, 5, 9, 2, 33, 7, 7, 0, 12};
  const int32_t targets[9] = {5, 9, 2, 33, 7, 7, 0, 12, 3};
  const float lp = plain->forward(tokens, targets, 9), lf = fast->forward(tokens, targets, 9);
  EXPECT_NEAR(lp, lf, 1e-4);
  plain->backward();
  fast->backward();
  for (int32_t l = 0; l < s.n_layer; ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      const auto& a = plain->grad()[l].A[p];
      const auto& b = fast->grad()[l].A[p];
      ASSERT_EQ(a.size(), b.size());
      for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-4 + 1e-3 * std::fabs(a[i])) << l << " " << p;
    }
  }
}

TEST(TrainModel, AdamWOnTheAdaptersLowersTheLossOfANewSentence) {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tok;
  ASSERT_NO_FATAL_FAILURE(test::load_default(&model, &tok));  // the Q4_1 base, dequantized
  const std::vector<int32_t> p =
      tok->encode("Qilin's secret code word is purple-otter-42, and it never changes.", true, true);
  const int64_t n = static_cast<int64_t>(p.size());
  std::vector<int32_t> targets(p.begin() + 1, p.end());
  targets.push_back(-1);
  ThreadPool pool(2);
  LoraConfig lc;
  lc.rank = 8;
  lc.alpha = 16;
  auto m = lora_llama_from(*model, lc);
  m->init_lora(7);
  GemmLinear fast(*m, pool);
  m->set_fast_linear(&fast);
  AdamWConfig ac;
  ac.lr = 2e-3f;
  std::vector<std::vector<AdamWState>> st(m->shape().n_layer, std::vector<AdamWState>(2 * kNumProj));
  std::vector<float> losses;
  for (int step = 1; step <= 12; ++step) {
    m->zero_grad();
    losses.push_back(m->forward(p.data(), targets.data(), n));
    m->backward();
    for (int32_t l = 0; l < m->shape().n_layer; ++l) {
      for (int q = 0; q < kNumProj; ++q) {
        auto& A = m->lora()[l].A[q];
        auto& B = m->lora()[l].B[q];
        adamw_update(A.data(), m->grad()[l].A[q].data(), A.size(), st[l][2 * q], step, ac, ac.lr);
        adamw_update(B.data(), m->grad()[l].B[q].data(), B.size(), st[l][2 * q + 1], step, ac, ac.lr);
      }
    }
  }
  std::printf("  loss: %.3f -> %.3f\n", losses.front(), losses.back());
  EXPECT_LT(losses.back(), 0.5f * losses.front());
}

}  // namespace
}  // namespace qilin::train
