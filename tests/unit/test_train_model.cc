// LoRA training on the real model's shapes: the training forward gives the inference logits,
// the trainer (the model's Decoder with a Tape) gives the double-precision reference's loss and
// gradients, and AdamW on the adapters lowers the loss of a sentence the model did not know.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/generator.h"
#include "reference/random_decoder.h"
#include "train/optimizer.h"
#include "test_util.h"

namespace qilin::train {
namespace {

// The last position's logits of the trainer's forward (LoRA B = 0: the base) against the
// inference Generator's on the same tokens: the max absolute difference.
double training_vs_inference(const LlamaModel& model, const BaseConfig& base) {
  auto tok = Tokenizer::from_gguf(model.gguf());
  EXPECT_TRUE(tok.is_ok());
  if (!tok.is_ok()) return 1e9;
  const std::vector<int32_t> p = (*tok)->encode("The quick brown fox jumps over the lazy dog", true, true);
  const int64_t n = static_cast<int64_t>(p.size());
  ThreadPool pool(2);
  auto made = LoraTrainer::create(model, LoraConfig{}, base, Precision::F32, pool);
  EXPECT_TRUE(made.is_ok()) << made.status().message();
  if (!made.is_ok()) return 1e9;
  LoraTrainer* m = made->get();
  m->init_lora(1);  // B = 0: the adapted model is the base
  std::vector<int32_t> targets(p.begin() + 1, p.end());
  targets.push_back(-1);
  std::vector<float> logits;
  m->forward(p.data(), targets.data(), n, &logits);

  GeneratorConfig gc;
  gc.kv_type = KvType::F32;  // the training forward keeps K and V in F32
  gc.n_ctx = 64;
  gc.n_threads = 2;
  auto g = Generator::create(model, gc);
  EXPECT_TRUE(g.is_ok());
  if (!g.is_ok() || !(*g)->feed(p).is_ok()) return 1e9;
  const int32_t V = model.hparams().n_vocab;
  const float* want = (*g)->logits();  // last position
  double max_err = 0;
  for (int32_t i = 0; i < V; ++i) max_err = std::max(max_err, double(std::fabs(logits[(n - 1) * V + i] - want[i])));
  return max_err;
}

TEST(TrainModel, TrainingForwardGivesTheInferenceLogits) {
  const std::string path = test::f32_model_path();
  ASSERT_FALSE(path.empty());
  auto model = LlamaModel::load(path);
  ASSERT_TRUE(model.is_ok());
  // The same layers (Decoder::forward_layer); attention by the training kernels, not the cache.
  EXPECT_LT(training_vs_inference(**model, BaseConfig{}), 2e-3);
}

// A quantized base kept as loaded (QLoRA's path): the forward is still inference's, quantized
// products and all (before issue 16 the training graph was its own and differed here by 0.5).
TEST(TrainModel, TrainingForwardOverAQuantizedBaseGivesTheInferenceLogits) {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tok;
  ASSERT_NO_FATAL_FAILURE(test::load_default(&model, &tok));  // Q4_1
  BaseConfig keep;
  keep.quantized = true;
  EXPECT_LT(training_vs_inference(*model, keep), 2e-3);
}

TEST(TrainModel, TrainerGivesTheReferenceGradients) {
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
  RandomDecoder rd(s, LoraConfig{}, 3, 0.3);
  ThreadPool pool(2);
  auto fast = rd.trainer(LoraConfig{}, pool, 4, 0.2f);
  LoraLlamaRef<double>* plain = rd.ref.get();
  const int32_t tokens[9] = {1, 5, 9, 2, 33, 7, 7, 0, 12};
  const int32_t targets[9] = {5, 9, 2, 33, 7, 7, 0, 12, 3};
  const double lp = plain->forward(tokens, targets, 9);
  const float lf = fast->forward(tokens, targets, 9);
  EXPECT_NEAR(lp, lf, 1e-4);
  plain->backward();
  fast->backward();
  for (int32_t l = 0; l < s.n_layer; ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      for (auto which : {&LoraLayer<double>::A, &LoraLayer<double>::B}) {
        const auto& a = (plain->grad()[l].*which)[p];
        const auto& b = which == &LoraLayer<double>::A ? fast->grad()[l].A[p] : fast->grad()[l].B[p];
        ASSERT_EQ(a.size(), b.size());
        for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-4 + 1e-3 * std::fabs(a[i])) << l << " " << p;
      }
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
  auto made = LoraTrainer::create(*model, lc, BaseConfig{}, Precision::F32, pool);
  ASSERT_TRUE(made.is_ok()) << made.status().message();
  LoraTrainer* m = made->get();
  m->init_lora(7);
  AdamWConfig ac;
  ac.lr = 2e-3f;
  std::vector<std::vector<AdamWState>> st(m->hparams().n_layer, std::vector<AdamWState>(2 * kNumProj));
  std::vector<float> losses;
  for (int step = 1; step <= 12; ++step) {
    m->zero_grad();
    losses.push_back(m->forward(p.data(), targets.data(), n));
    m->backward();
    for (int32_t l = 0; l < m->hparams().n_layer; ++l) {
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
