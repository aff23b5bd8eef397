// ZeRO data-parallel LoRA fine-tuning on real MPI ranks (ctest runs this under mpiexec
// --oversubscribe with 2 and 4 ranks) on a tiny random Llama written to a GGUF per rank:
// - stages 0-3, with and without optimizer offload, give after a few steps the weights one
//   process gets on the combined batch (the ordinary fine-tuning loop, computed on each rank);
// - each rank's parameter, gradient and optimizer-state allocations equal ZeRO's formulas;
// - the bytes handed to each collective per step equal what the stage must move.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <random>

#include "dist/comm.h"
#include "mpi/test_world.h"
#include "mpi/tiny_llama.h"
#include "train/finetune.h"
#include "train/zero.h"

namespace qilin::train {
namespace {

Communicator& world() { return test::mpi_test_world(); }

// LoRA rank 4 on all seven projections of tiny_llama.h's model: 3712 parameters a layer,
// Psi = 7424 (a multiple of 2 and 4: no padding).
const LlamaModel& tiny_model() {
  static std::unique_ptr<LlamaModel> model = [] {
    auto m = test::tiny_llama();
    EXPECT_TRUE(m.is_ok()) << m.status().message();
    return std::move(*m);
  }();
  return *model;
}

constexpr int64_t kPsi = 7424;
constexpr int kSteps = 3;

std::vector<Example> data() {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int32_t> tok(0, 95);
  std::vector<Example> out(16);
  for (Example& e : out) {
    for (int i = 0; i < 12; ++i) e.tokens.push_back(tok(rng));
    e.targets.assign(e.tokens.begin() + 1, e.tokens.end());
    e.targets.push_back(-1);
  }
  return out;
}

FinetuneConfig config(int32_t global_batch, Precision prec) {
  FinetuneConfig c;
  c.lora.rank = 4;
  c.adam.lr = 1e-2f;
  c.adam.weight_decay = 0.01f;
  c.steps = kSteps;
  c.grad_accum = global_batch;
  c.warmup = 0;
  c.clip_norm = 0.5;  // small enough that it clips: the global norm must be right
  c.precision = prec;
  return c;
}

struct Trained {
  std::vector<float> weights;  // every layer's A and B, in order
  CommStats comm;              // the last step's payload bytes
  ZeroMemory memory;
  float loss = 0;
};

// Fine-tunes kSteps steps: data-parallel over the world when stage >= 0, else one process.
Trained train_run(int stage, bool offload, int32_t global_batch, Precision prec,
                  Communicator* comm) {
  FinetuneConfig c = config(global_batch, prec);
  c.zero_stage = stage;
  c.offload_optimizer = offload;
  c.comm = comm;
  auto f = Finetuner::create(tiny_model(), c, data(), {});
  EXPECT_TRUE(f.is_ok()) << f.status().message();
  Trained r;
  if (!f.is_ok()) return r;
  if ((*f)->zero()) r.memory = (*f)->zero()->memory();
  Status s = (*f)->run([&](const StepLog& log) { r.loss = log.loss; });
  EXPECT_TRUE(s.is_ok()) << s.message();
  for (const LoraLayer<float>& l : (*f)->model().lora()) {
    for (int p = 0; p < kNumProj; ++p) {
      r.weights.insert(r.weights.end(), l.A[p].begin(), l.A[p].end());
      r.weights.insert(r.weights.end(), l.B[p].begin(), l.B[p].end());
    }
  }
  if ((*f)->zero()) r.comm = (*f)->zero()->step_comm();
  return r;
}

// ||a - b|| / ||b||.
double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    d += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    m += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(d / m);
}

// Tolerances on ||w - w_ref|| / ||w_ref||. FP32: the ranks' gradients are summed in another
// order than one process accumulates them; measured at most 2.1e-5 on 4 ranks, then 2.0e-4 once
// the LoRA backward summed dy B with 8 partial sums (one element in thousands, whose gradient is
// near zero, moves by up to 6e-4 of the largest weight: AdamW divides by the gradient's own size,
// so rounding-order noise there is amplified). BF16: each rank's gradients are rounded to 16 bits before they are
// summed, where one process rounds the sum; measured at most 1.6e-2. One rank's slice of the
// batch alone is 0.2-0.3 away, which a missing or doubled rank, a wrong average or a wrong global
// norm would resemble.
constexpr double kTolF32 = 1e-3;
constexpr double kTolBf16 = 3e-2;

// One example a step: one process's loop then accumulates nothing, and ZeRO on one rank does the
// same arithmetic in the same order, whatever the stage.
TEST(Zero, OneRankIsTheOneProcessLoopBitForBit) {
  const int32_t batch = 1;
  const Trained ref = train_run(-1, false, batch, Precision::F32, nullptr);
  for (int stage = 0; stage <= 3; ++stage) {
    for (bool offload : {false, true}) {
      const Trained z = train_run(stage, offload, batch, Precision::F32, nullptr);
      EXPECT_EQ(z.weights, ref.weights) << "stage " << stage << " offload " << offload;
    }
  }
}

TEST(Zero, EveryStageGivesTheOneProcessWeightsOnTheCombinedBatch) {
  Communicator& c = world();
  const int n = c.size();
  const int32_t batch = 2 * n;  // two examples a rank: local accumulation too
  const Trained ref = train_run(-1, false, batch, Precision::F32, nullptr);
  // The test can fail: one rank's slice alone gives other weights.
  const Trained slice = train_run(-1, false, 2, Precision::F32, nullptr);
  EXPECT_GT(rel_l2(slice.weights, ref.weights), 0.1);
  for (int stage = 0; stage <= 3; ++stage) {
    for (bool offload : {false, true}) {
      const Trained z = train_run(stage, offload, batch, Precision::F32, &c);
      const double d = rel_l2(z.weights, ref.weights);
      EXPECT_LT(d, kTolF32) << "stage " << stage << " offload " << offload;
      EXPECT_NEAR(z.loss, ref.loss, 1e-4 * std::fabs(ref.loss));
      if (c.rank() == 0) std::printf("fp32 stage %d offload %d: %.2e\n", stage, offload, d);
    }
  }
  // BF16: against ZeRO's own one-rank run (16-bit gradients there too).
  const Trained ref16 = train_run(0, false, batch, Precision::BF16, nullptr);
  for (int stage = 0; stage <= 3; ++stage) {
    for (bool offload : {false, true}) {
      const Trained z = train_run(stage, offload, batch, Precision::BF16, &c);
      const double d = rel_l2(z.weights, ref16.weights);
      EXPECT_LT(d, kTolBf16) << "stage " << stage << " offload " << offload;
      if (c.rank() == 0) std::printf("bf16 stage %d offload %d: %.2e\n", stage, offload, d);
    }
  }
}

TEST(Zero, MemoryPerRankIsZeroFormula) {
  Communicator& c = world();
  const int n = c.size();
  const size_t psi = kPsi;
  // ZeRO's mixed-precision Adam (BF16 parameters and gradients, FP32 master, m, v): 16Ψ,
  // 4Ψ + 12Ψ/N, 2Ψ + 14Ψ/N, 16Ψ/N; offload moves the 12Ψ (/N) to the host.
  const size_t want16[4] = {16 * psi, 4 * psi + 12 * psi / n, 2 * psi + 14 * psi / n, 16 * psi / n};
  // FP32: 4-byte parameters and gradients, the parameters their own master (K = 8), unless
  // offloaded (the host then keeps an FP32 master: K = 12).
  const size_t want32[4] = {16 * psi, 8 * psi + 8 * psi / n, 4 * psi + 12 * psi / n, 16 * psi / n};
  const size_t want32_off[4] = {20 * psi, 8 * psi + 12 * psi / n, 4 * psi + 16 * psi / n,
                                20 * psi / n};
  for (int stage = 0; stage <= 3; ++stage) {
    for (bool offload : {false, true}) {
      for (Precision prec : {Precision::BF16, Precision::F32}) {
        auto f = Finetuner::create(tiny_model(),
                                   [&] {
                                     FinetuneConfig cf = config(n, prec);
                                     cf.zero_stage = stage;
                                     cf.offload_optimizer = offload;
                                     cf.comm = &c;
                                     return cf;
                                   }(),
                                   data(), {});
        ASSERT_TRUE(f.is_ok()) << f.status().message();
        const ZeroMemory m = (*f)->zero()->memory();
        EXPECT_EQ((*f)->zero()->n_params(), kPsi);
        const size_t want = prec == Precision::BF16 ? want16[stage]
                            : offload               ? want32_off[stage]
                                                    : want32[stage];
        EXPECT_EQ(m.formula_terms(), want)
            << "stage " << stage << " offload " << offload << " " << precision_name(prec);
        const ZeroFormula zf = zero_formula(stage, prec, offload, kPsi, n);
        EXPECT_EQ(m.params, static_cast<size_t>(zf.params));
        EXPECT_EQ(m.grads, static_cast<size_t>(zf.grads));
        EXPECT_EQ(m.optimizer, static_cast<size_t>(zf.optimizer));
        EXPECT_EQ(m.optimizer_on_host, offload);
        EXPECT_EQ(m.host_grads, offload ? (stage == 0 ? 4 * psi : 4 * psi / n) : 0u);
      }
    }
  }
}

TEST(Zero, BytesPerStepAreWhatTheStageMustMove) {
  Communicator& c = world();
  const int n = c.size();
  const uint64_t psi = kPsi, scalars = 4 * sizeof(float);  // loss, tokens, overflow, |g|^2
  double ring[4] = {};
  for (int32_t local : {1, 2}) {
    for (int stage = 0; stage <= 3; ++stage) {
      const Trained z = train_run(stage, false, local * n, Precision::BF16, &c);
      const CommStats& s = z.comm;
      // Stage 0: gradients all-reduced once. 1: reduce-scattered once, parameters all-gathered.
      // 2: each micro-batch's gradients reduce-scattered as backward ends; 3: also each layer
      // gathered for every forward and every backward. All in FP32 (4 bytes an element).
      EXPECT_EQ(s.all_reduce, (stage == 0 ? 4 * psi : 0) + scalars) << stage;
      EXPECT_EQ(s.reduce_scatter, stage == 0 ? 0 : 4 * psi * (stage >= 2 ? local : 1)) << stage;
      EXPECT_EQ(s.all_gather, stage == 0   ? 0
                              : stage <= 2 ? 4 * psi / n
                                           : 2 * local * 4 * psi / n)
          << stage;
      if (local == 1) ring[stage] = ring_bytes(s, n);
    }
  }
  // On the wire (ring algorithms): 2Ψ(N-1)/N elements for stages 0-2, 3Ψ(N-1)/N for stage 3.
  const double base = 2.0 * 4 * psi * (n - 1) / n;
  for (int stage = 0; stage <= 2; ++stage) EXPECT_NEAR(ring[stage] / base, 1.0, 0.01) << stage;
  EXPECT_NEAR(ring[3] / ring[0], 1.5, 0.01);
  if (c.rank() == 0) {
    std::printf("ring bytes per step on %d ranks: %.0f %.0f %.0f %.0f (stage 3 / stage 0 = %.3f)\n",
                n, ring[0], ring[1], ring[2], ring[3], ring[3] / ring[0]);
  }
}

}  // namespace
}  // namespace qilin::train
