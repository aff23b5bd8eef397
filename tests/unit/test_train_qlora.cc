// QLoRA and the training-memory features on SmolLM2: the base kept quantized (its input
// gradient through dequantized tiles against a dense reference), BF16/FP16 loss curves against
// FP32, FP16's loss scaler in the loop (an injected inf skips exactly its step), activation
// checkpointing (gradients identical to the stored run), paged AdamW states (bit-identical to
// unpaged under a budget below the state size).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "cpu/quants.h"
#include "test_util.h"
#include "train/finetune.h"
#include "ops/backward.h"
#include "ops/train_ops.h"
#include "train/paged_adamw.h"
#include "train/lora_trainer.h"

namespace qilin::train {
namespace {

class TrainQLora : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    test::load_default(&model_, &tok_);
    if (!model_) return;
    auto ex = load_jsonl(std::string(QILIN_TEST_DATA_DIR) + "/data/finetune_brackets.jsonl", *tok_, nullptr, 128);
    ASSERT_TRUE(ex.is_ok()) << ex.status().message();
    train_.assign(ex->begin(), ex->begin() + 40);
    eval_.assign(ex->begin() + 40, ex->end());
  }
  static void TearDownTestSuite() {
    model_.reset();
    tok_.reset();
  }
  void SetUp() override { ASSERT_TRUE(model_) << "the default model did not load"; }
  static FinetuneConfig config(int64_t steps) {
    FinetuneConfig c;
    c.lora.rank = 8;
    c.lora.alpha = 16;
    c.adam.lr = 1e-3f;
    c.steps = steps;
    c.warmup = 2;
    c.n_threads = 2;
    c.seed = 5;
    return c;
  }
  static std::vector<float> losses(const FinetuneConfig& c, std::vector<StepLog>* logs = nullptr) {
    auto ft = Finetuner::create(*model_, c, train_, eval_);
    EXPECT_TRUE(ft.is_ok()) << ft.status().message();
    if (!ft.is_ok()) return {};
    std::vector<float> out;
    EXPECT_TRUE((*ft)->run([&](const StepLog& s) {
                       out.push_back(s.loss);
                       if (logs) logs->push_back(s);
                     }).is_ok());
    return out;
  }
  static std::unique_ptr<LlamaModel> model_;
  static std::unique_ptr<Tokenizer> tok_;
  static std::vector<Example> train_, eval_;
};
std::unique_ptr<LlamaModel> TrainQLora::model_;
std::unique_ptr<Tokenizer> TrainQLora::tok_;
std::vector<Example> TrainQLora::train_, TrainQLora::eval_;

// dx += dy W through the tiles (F32, BF16) and y = x W^T through the quantized gemm, against
// plain loops over the NF4+DQ weights dequantized whole.
TEST_F(TrainQLora, QuantizedBaseProductsMatchTheDequantizedWeights) {
  ThreadPool pool(2);
  const int64_t n = 37;  // not a multiple of any tile
  for (Precision prec : {Precision::F32, Precision::BF16}) {
    // Layer 3's down projection (in 1536, out 576: the last tile is partial), requantized.
    const WeightView& src = model_->layers()[3].w_down;
    const int64_t in = src.n_in, out = src.n_out;
    std::vector<float> w(static_cast<size_t>(in * out)), row(static_cast<size_t>(in));
    const size_t rb = row_bytes(DType::NF4_DQ, in);
    std::vector<uint8_t> qw(rb * static_cast<size_t>(out));
    for (int64_t r = 0; r < out; ++r) {
      dequantize_row_ref(src.type, src.data + r * src.row_bytes, row.data(), in);
      quantize_row_ref(DType::NF4_DQ, row.data(), qw.data() + r * rb, in);
      dequantize_row_ref(DType::NF4_DQ, qw.data() + r * rb, w.data() + r * in, in);
    }
    const WeightView qv{DType::NF4_DQ, qw.data(), in, out, rb};
    const DType tile = prec == Precision::BF16 ? DType::BF16 : DType::F32;
    MatmulBackwardScratch scratch;
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0, 1);
    std::vector<float> dy(static_cast<size_t>(n * out)), x(static_cast<size_t>(n * in));
    for (float& v : dy) v = nd(rng);
    for (float& v : x) v = nd(rng);
    std::vector<float> dx(static_cast<size_t>(n * in), 0.5f), want(dx);
    matmul_backward_input(pool, qv, nullptr, dy.data(), n, dx.data(), tile, scratch);
    linear_backward(dy.data(), x.data(), w.data(), n, in, out, want.data(), static_cast<float*>(nullptr));
    double err = 0, ref = 0;
    for (size_t i = 0; i < dx.size(); ++i) {
      err = std::max(err, double(std::fabs(dx[i] - want[i])));
      ref = std::max(ref, double(std::fabs(want[i])));
    }
    // F32 tiles: rounding only; BF16 tiles: the weights' 8-bit mantissas (dy stays F32 here).
    EXPECT_LT(err, (prec == Precision::F32 ? 1e-5 : 1e-2) * ref) << precision_name(prec);
    std::vector<float> y(static_cast<size_t>(n * out)), yw(y.size());
    std::vector<uint8_t> act(matmul_scratch_bytes(qv.type, in, n));
    matmul(pool, qv, x.data(), n, y.data(), act.data());
    linear_forward(x.data(), w.data(), n, in, out, yw.data());
    err = ref = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      err = std::max(err, double(std::fabs(y[i] - yw[i])));
      ref = std::max(ref, double(std::fabs(yw[i])));
    }
    EXPECT_LT(err, 2e-2 * ref);  // the gemm's Q8_0 activations
  }
  // A row that no block of the type divides is refused, naming the tensor.
  BaseConfig bad_base;
  bad_base.quantized = true;
  bad_base.requant = DType::QI4_G128;
  auto bad = LoraTrainer::create(*model_, LoraConfig{}, bad_base, Precision::F32, pool);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("blk.0.attn_q.weight"), std::string::npos) << bad.status().message();
}

TEST_F(TrainQLora, QLoraOnNf4LearnsTheFormat) {
  FinetuneConfig c = config(16);
  c.quantized_base = true;
  c.base_type = DType::NF4_DQ;
  c.precision = Precision::BF16;
  auto ft = Finetuner::create(*model_, c, train_, eval_);
  ASSERT_TRUE(ft.is_ok()) << ft.status().message();
  EXPECT_LT((*ft)->base_bytes(), 90u << 20);  // 4.5 bits a weight and the Q8_0 embedding
  EXPECT_FALSE((*ft)->uses_model_weights());  // requantized: its own copy
  const float before = (*ft)->evaluate();
  ASSERT_TRUE((*ft)->run(nullptr).is_ok());
  const float after = (*ft)->evaluate();
  std::printf("  QLoRA (NF4+DQ, bf16) held-out loss %.3f -> %.3f\n", before, after);
  EXPECT_LT(after, 0.5f * before);
}

// Same data, seed and base: BF16 and FP16 (loss-scaled) losses follow FP32's step by step.
TEST_F(TrainQLora, SixteenBitLossCurvesTrackFp32) {
  FinetuneConfig c = config(8);
  const std::vector<float> f32 = losses(c);
  c.precision = Precision::BF16;
  const std::vector<float> bf16 = losses(c);
  c.precision = Precision::F16;
  // From the default 2^16 this task's gradients overflow FP16 on the first two steps (the
  // scaler skips them and settles at 2^15: checked below), which would shift the curve by two
  // steps; a start at 2^12 compares step for step.
  std::vector<StepLog> logs;
  FinetuneConfig c3 = c;
  c3.steps = 3;
  losses(c3, &logs);
  ASSERT_EQ(logs.size(), 3u);
  EXPECT_TRUE(logs[0].skipped);
  EXPECT_FALSE(logs.back().skipped);
  EXPECT_EQ(logs.back().loss_scale, 32768.0f);
  logs.clear();
  c.loss_scale_init = 4096.0f;
  const std::vector<float> f16 = losses(c, &logs);
  ASSERT_EQ(f32.size(), 8u);
  ASSERT_EQ(bf16.size(), 8u);
  ASSERT_EQ(f16.size(), 8u);
  // BF16 keeps 8 mantissa bits, so its curve is a noisy copy of FP32's whose per-step error is
  // a random variable: the unit below is 5% of the FP32 loss + 0.05 (the curve falls from ~5
  // to ~0.3 over these steps). Measured over seeds 1-8 with this test's job (2026-12-08), the
  // worst step of a seed reached 1.02 units with the LoRA trainer of the time (seed 4) and
  // 1.25 with the Decoder's (seed 5), and no seed's mean over its steps exceeded 0.32 in
  // either; scripts/precision_sweep.sh measures the same for `qilin finetune`'s version of the
  // job (worst 0.70 and 0.75 there). So: every step within 2 units, the mean
  // within 0.5 (a lost master copy or a missed rounding moves both far past that). FP16 keeps
  // 11 bits: every step within 0.4 units (2% of the loss + 0.02), as before.
  double bf16_sum = 0;
  for (size_t i = 0; i < f32.size(); ++i) {
    std::printf("  step %zu: fp32 %.4f  bf16 %.4f  fp16 %.4f (scale %g%s)\n", i + 1, f32[i], bf16[i], f16[i],
                logs[i].loss_scale, logs[i].skipped ? ", skipped" : "");
    EXPECT_FALSE(logs[i].skipped);
    const double unit = 0.05 * f32[i] + 0.05;
    bf16_sum += std::fabs(bf16[i] - f32[i]) / unit;
    EXPECT_NEAR(bf16[i], f32[i], 2 * unit) << "step " << i + 1;
    EXPECT_NEAR(f16[i], f32[i], 0.02 * f32[i] + 0.02) << "step " << i + 1;
  }
  EXPECT_LT(bf16_sum / static_cast<double>(f32.size()), 0.5);
  EXPECT_LT(f32.back(), 0.6f * f32.front());  // the curve moves: tracking it means something
}

// An inf injected into one gradient skips exactly that step (the adapter does not move) and,
// hysteresis 2, the second overflow in a row halves the scale.
TEST_F(TrainQLora, InjectedInfSkipsExactlyThatStepAndHalvesTheScale) {
  FinetuneConfig c = config(5);
  c.precision = Precision::F16;
  c.loss_scale_init = 4096.0f;  // below this task's natural overflows (see above)
  c.loss_scale_hysteresis = 1;
  std::vector<float> before_b;
  std::unique_ptr<Finetuner>* self = nullptr;
  c.grad_hook = [&](int64_t step, std::vector<LoraLayer<float>>& g) {
    if (step == 3) {
      g[7].B[kUp][5] = std::numeric_limits<float>::infinity();
      before_b = (*self)->model().lora()[7].B[kUp];
    }
  };
  auto ft = Finetuner::create(*model_, c, train_, eval_);
  ASSERT_TRUE(ft.is_ok());
  self = &*ft;
  std::vector<StepLog> logs;
  ASSERT_TRUE((*ft)->run([&](const StepLog& s) {
                     logs.push_back(s);
                     if (s.step == 3) {
                       EXPECT_EQ((*ft)->model().lora()[7].B[kUp], before_b) << "a skipped step moved B";
                     }
                   }).is_ok());
  ASSERT_EQ(logs.size(), 5u);
  for (const StepLog& s : logs) EXPECT_EQ(s.skipped, s.step == 3) << "step " << s.step;
  EXPECT_EQ(logs[2].loss_scale, 4096.0f);
  EXPECT_EQ(logs[3].loss_scale, 2048.0f);  // halved by step 3's overflow (hysteresis 1)
  EXPECT_EQ((*ft)->loss_scaler().skipped(), 1);

  // The default hysteresis 2: one overflow only skips; a second in a row halves.
  c.loss_scale_hysteresis = 2;
  c.grad_hook = [&](int64_t step, std::vector<LoraLayer<float>>& g) {
    if (step == 2 || step == 3) g[0].A[kQ][0] = std::numeric_limits<float>::quiet_NaN();
  };
  logs.clear();
  auto ft2 = Finetuner::create(*model_, c, train_, eval_);
  ASSERT_TRUE(ft2.is_ok());
  ASSERT_TRUE((*ft2)->run([&](const StepLog& s) { logs.push_back(s); }).is_ok());
  ASSERT_EQ(logs.size(), 5u);
  for (const StepLog& s : logs) EXPECT_EQ(s.skipped, s.step == 2 || s.step == 3) << "step " << s.step;
  EXPECT_EQ(logs[2].loss_scale, 4096.0f);  // after one overflow: unchanged
  EXPECT_EQ(logs[3].loss_scale, 2048.0f);  // after the second
}

// Recomputing each block in backward gives the stored run's gradients bit for bit (FP32 over
// the dense base, BF16 over the NF4 base), and holds far fewer bytes between the passes.
TEST_F(TrainQLora, CheckpointedActivationsGiveIdenticalGradients) {
  const Example& e = train_[0];
  for (bool quant : {false, true}) {
    FinetuneConfig c = config(1);
    c.quantized_base = quant;
    c.base_type = DType::NF4_DQ;
    c.precision = quant ? Precision::BF16 : Precision::F32;
    std::vector<LoraLayer<float>> grads[2];
    size_t saved[2];
    for (int ck = 0; ck < 2; ++ck) {
      c.checkpoint_activations = ck == 1;
      auto ft = Finetuner::create(*model_, c, train_, eval_);
      ASSERT_TRUE(ft.is_ok());
      LoraTrainer& m = (*ft)->model();
      for (auto& l : m.lora()) {  // B nonzero, so every path of the gradient carries signal
        for (auto& b : l.B) {
          for (size_t i = 0; i < b.size(); ++i) b[i] = 0.01f * static_cast<float>((i * 7919) % 13) - 0.06f;
        }
      }
      m.zero_grad();
      m.forward(e.tokens.data(), e.targets.data(), static_cast<int64_t>(e.tokens.size()));
      saved[ck] = m.saved_bytes();
      m.backward();
      grads[ck] = m.grad();
    }
    std::printf("  %s: saved activations %zu bytes, %zu checkpointed\n", quant ? "nf4/bf16" : "f32", saved[0], saved[1]);
    EXPECT_LT(saved[1] * 8, saved[0]);
    for (size_t l = 0; l < grads[0].size(); ++l) {
      for (int p = 0; p < kNumProj; ++p) {
        ASSERT_EQ(grads[0][l].A[p], grads[1][l].A[p]) << "layer " << l << " proj " << p;
        ASSERT_EQ(grads[0][l].B[p], grads[1][l].B[p]) << "layer " << l << " proj " << p;
      }
    }
    double norm = 0;
    for (float g : grads[0][5].A[kV]) norm += g * g;
    EXPECT_GT(norm, 0);
  }
}

TEST(TrainPagedAdamW, BudgetBelowTheStatesIsBitIdenticalToUnpaged) {
  const std::vector<int64_t> sizes = {1000, 37, 4096, 1, 2500, 777};
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0, 1);
  std::vector<std::vector<float>> p(sizes.size()), q(sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    p[i].resize(sizes[i]);
    for (float& v : p[i]) v = nd(rng);
    q[i] = p[i];
  }
  std::vector<AdamWState> ref(sizes.size());
  const int64_t page = 512;  // 4 KiB of m and v per page
  auto paged = PagedAdamW::create(sizes, 3 * page * 8, "", page);
  ASSERT_TRUE(paged.is_ok());
  AdamWConfig c;
  c.weight_decay = 0.01f;
  for (int step = 1; step <= 4; ++step) {
    for (size_t i = 0; i < sizes.size(); ++i) {
      std::vector<float> g(sizes[i]);
      for (float& v : g) v = nd(rng);
      adamw_update(p[i].data(), g.data(), sizes[i], ref[i], step, c, 1e-2f);
      ASSERT_TRUE((*paged)->update(i, q[i].data(), g.data(), step, c, 1e-2f).is_ok());
    }
  }
  for (size_t i = 0; i < sizes.size(); ++i) {
    ASSERT_EQ(p[i], q[i]) << "tensor " << i;
    std::vector<float> m, v;
    ASSERT_TRUE((*paged)->get(i, &m, &v).is_ok());
    EXPECT_EQ(m, ref[i].m);
    EXPECT_EQ(v, ref[i].v);
  }
  const PagedAdamW::Stats st = (*paged)->stats();
  EXPECT_EQ(st.resident_slots, 3);
  EXPECT_LT(st.resident_bytes, st.state_bytes / 4);
  EXPECT_GT(st.page_outs, 0);
  EXPECT_GT(st.page_ins, 0);
  // A budget below one page is refused, naming it.
  auto tiny = PagedAdamW::create(sizes, 100, "", page);
  ASSERT_FALSE(tiny.is_ok());
  EXPECT_NE(tiny.status().message().find("100 bytes"), std::string::npos) << tiny.status().message();
}

TEST_F(TrainQLora, PagedOptimizerTrainsBitIdenticallyAndResumes) {
  FinetuneConfig c = config(4);
  std::vector<float> free_losses, paged_losses;
  std::vector<LoraLayer<float>> free_w, paged_w;
  {
    auto ft = Finetuner::create(*model_, c, train_, eval_);
    ASSERT_TRUE(ft.is_ok());
    ASSERT_TRUE((*ft)->run([&](const StepLog& s) { free_losses.push_back(s.loss); }).is_ok());
    free_w = (*ft)->model().lora();
  }
  c.optimizer_memory_bytes = 2u << 20;  // the states take 18.6 MiB
  const std::string ck = testing::TempDir() + "/paged-checkpoint.gguf";
  {
    FinetuneConfig c2 = c;
    c2.steps = 2;
    c2.checkpoint_every = 2;
    c2.checkpoint_path = ck;
    auto ft = Finetuner::create(*model_, c2, train_, eval_);
    ASSERT_TRUE(ft.is_ok());
    EXPECT_LT((*ft)->optimizer_stats().resident_bytes, (*ft)->optimizer_stats().state_bytes / 8);
    ASSERT_TRUE((*ft)->run([&](const StepLog& s) { paged_losses.push_back(s.loss); }).is_ok());
    EXPECT_GT((*ft)->optimizer_stats().page_outs, 0);
  }
  {
    auto ft = Finetuner::create(*model_, c, train_, eval_);
    ASSERT_TRUE(ft.is_ok());
    ASSERT_TRUE((*ft)->load_checkpoint(ck).is_ok());
    ASSERT_TRUE((*ft)->run([&](const StepLog& s) { paged_losses.push_back(s.loss); }).is_ok());
    paged_w = (*ft)->model().lora();
  }
  EXPECT_EQ(paged_losses, free_losses);
  for (size_t l = 0; l < free_w.size(); ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      ASSERT_EQ(free_w[l].A[p], paged_w[l].A[p]);
      ASSERT_EQ(free_w[l].B[p], paged_w[l].B[p]);
    }
  }
}

}  // namespace
}  // namespace qilin::train
