// Tensor- and pipeline-parallel SmolLM2 (Q4_1 as shipped, and an F32 copy) on real MPI ranks
// against the same model in one process (computed on rank 0 before the split): a prompt in
// chunks of 8 rows (so the pipeline cuts micro-batches), then 32 greedy steps fed the
// reference's tokens. Every step's logits must agree within a tolerance of the largest
// reference logit, and the argmax (the greedy token) must be identical.
// 2 ranks: TP 2, PP 2; 4 ranks: TP 2 x PP 2, PP 4 (uneven stages); --tp-exact on both: 0.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "dist/comm.h"
#include "engine/beam_search.h"
#include "engine/generator.h"
#include "model/parallel_llama.h"
#include "mpi/test_world.h"
#include "test_util.h"

namespace qilin {
namespace {

// Tolerances, relative to the largest reference logit (measured maxima in
// docs/parallelism.md). F32 weights: nothing re-quantizes, so the split changes only the
// order of float sums (row-parallel partials all-reduced; micro-batches change the kernels'
// row blocking). Q4_1: every matmul re-quantizes its input to 8 bits, which turns such
// last-bit differences into whole quantization steps, as between prefill and decode in one
// process (test_llama_batch.cc allows 1.0 absolute there); the greedy tokens must still agree.
constexpr double kTolF32 = 1e-4;
constexpr double kTolQ4 = 0.1;
constexpr int kSteps = 32;

Communicator& world() { return test::mpi_test_world(); }

int argmax(const float* v, int32_t n) { return static_cast<int>(std::max_element(v, v + n) - v); }

GeneratorConfig config() {
  GeneratorConfig gc;
  gc.n_ctx = 128;
  gc.n_batch = 8;
  gc.prefix_cache = false;
  // Two-pass attention computes a row alike however the rows around it are cut (as in
  // test_llama_batch.cc). With FlashAttention, cutting a prompt into micro-batches moves row
  // blocks, and on Q4_1 that once flipped a near tie (reference margin 0.28 logit, PP 4).
  gc.flash_attn = false;
  // An F32 cache: the F16 default rounds K and V, which amplifies the split's last-bit
  // differences as 8-bit activations do (F32 weights: 4e-4 instead of 2e-6).
  gc.kv_type = KvType::F32;
  return gc;
}

// The F32 copy of the default model, written once by rank 0 (test_util.h), its path sent to
// the others.
std::string f32_path() {
  static std::string path = [] {
    std::string p = world().rank() == 0 ? test::f32_model_path() : "";
    float len = static_cast<float>(p.size());
    EXPECT_TRUE(world().broadcast(&len, 1, 0).is_ok());
    std::vector<float> chars(static_cast<size_t>(len));
    for (size_t i = 0; i < p.size(); ++i) chars[i] = static_cast<float>(p[i]);
    EXPECT_TRUE(world().broadcast(chars.data(), static_cast<int64_t>(chars.size()), 0).is_ok());
    p.assign(chars.size(), ' ');
    for (size_t i = 0; i < chars.size(); ++i) p[i] = static_cast<char>(chars[i]);
    return p;
  }();
  return path;
}

struct Reference {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tok;
  std::vector<int32_t> prompt, tokens;     // tokens[s]: the greedy token after step s
  std::vector<std::vector<float>> logits;  // [kSteps + 1][n_vocab] (rank 0 only)
};

// The model and, on rank 0, what it computes in one process: the prompt (a sentence, in
// chunks of 8 rows, so the pipeline cuts micro-batches), then kSteps greedy tokens.
Reference& reference(const std::string& path) {
  // Never destroyed: a model's destructor needs the gemm cache, a static of its own.
  static auto* refs = new std::map<std::string, Reference>();
  Reference& r = (*refs)[path];
  if (r.model) return r;
  auto m = LlamaModel::load(path, WeightPlacement::Mapped);
  EXPECT_TRUE(m.is_ok()) << m.status().message();
  r.model = std::move(*m);
  auto tok = Tokenizer::from_gguf(r.model->gguf());
  EXPECT_TRUE(tok.is_ok());
  r.tok = std::move(*tok);
  r.prompt =
      r.tok->encode("The three largest cities of France are Paris, Marseille and", true, false);
  if (world().rank() != 0) return r;
  const int32_t n_vocab = r.model->hparams().n_vocab;
  auto g = Generator::create(*r.model, config());
  EXPECT_TRUE(g.is_ok());
  EXPECT_TRUE((*g)->feed(r.prompt).is_ok());
  for (int s = 0; s <= kSteps; ++s) {
    const float* l = (*g)->logits();
    r.logits.emplace_back(l, l + n_vocab);
    r.tokens.push_back(argmax(l, n_vocab));
    if (s < kSteps) {
      EXPECT_TRUE((*g)->feed(&r.tokens.back(), 1).is_ok());
    }
  }
  return r;
}

// Runs the reference's prompt and tokens through the model split by o; on rank 0 checks
// every step's logits against the one-process ones and that the greedy tokens agree.
void check(const std::string& path, const ParallelOptions& o, double tol) {
  Reference& ref = reference(path);
  ASSERT_TRUE(ref.model);
  LlamaModel& model = *ref.model;
  const int32_t n_vocab = model.hparams().n_vocab;
  auto par = ParallelLlama::create(model, world(), o);
  ASSERT_TRUE(par.is_ok()) << par.status().message();
  ThreadPool pool(1);
  if (!(*par)->driver()) {
    Status s = (*par)->follow(pool);
    ASSERT_TRUE(s.is_ok()) << s.message();
    return;
  }
  model.set_distributed(*par);
  auto g = Generator::create(model, config());
  ASSERT_TRUE(g.is_ok()) << g.status().message();
  double worst = 0;
  int mismatched = 0;
  Status fed = (*g)->feed(ref.prompt);
  for (int s = 0; fed.is_ok() && s <= kSteps; ++s) {
    const float* l = (*g)->logits();
    double big = 0, diff = 0;
    for (int32_t i = 0; i < n_vocab; ++i) {
      big = std::max(big, std::fabs(static_cast<double>(ref.logits[s][i])));
      const double d = std::fabs(static_cast<double>(l[i]) - ref.logits[s][i]);
      diff = std::isnan(d) ? 1e30 : std::max(diff, d);
    }
    worst = std::max(worst, diff / big);
    if (argmax(l, n_vocab) != ref.tokens[s]) {
      std::vector<float> sorted = ref.logits[s];
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
      std::printf("step %d: token %d instead of %d; reference margin %.3f, largest diff %.3f\n", s,
                  argmax(l, n_vocab), ref.tokens[s], sorted[0] - sorted[1], diff);
      ++mismatched;
    }
    if (s < kSteps) fed = (*g)->feed(&ref.tokens[s], 1);
  }
  model.set_distributed(nullptr);
  ASSERT_TRUE(fed.is_ok()) << fed.message();
  ASSERT_TRUE((*par)->finish().is_ok());
  std::printf(
      "%s tp %d pp %d: max |logit - reference| = %.3g of the largest logit over %d "
      "steps; %d greedy tokens differ\n",
      path.substr(path.rfind('/') + 1).c_str(), o.tp, o.pp, worst, kSteps + 1, mismatched);
  EXPECT_LE(worst, tol);
  EXPECT_EQ(mismatched, 0);
}

void check_both(const ParallelOptions& o) {
  ASSERT_TRUE(test::model_present());
  check(test::default_model_path(), o, kTolQ4);
  check(f32_path(), o, kTolF32);
}

TEST(ParallelLlama, TensorParallel) {
  if (world().size() != 2) GTEST_SKIP() << "runs on 2 ranks";
  check_both({.tp = 2, .pp = 1, .stage_first = {}, .micro_batches = 0});
}

// --tp-exact: every rank computes whole dot products, so the logits are one process's bit for
// bit, even with Q4_1's 8-bit activations.
TEST(ParallelLlama, TensorParallelExact) {
  ASSERT_TRUE(test::model_present());
  if (world().size() == 2) {
    check(test::default_model_path(),
          {.tp = 2, .pp = 1, .stage_first = {}, .micro_batches = 0, .exact = true}, 0.0);
  }
  if (world().size() == 4) {
    check(test::default_model_path(),
          {.tp = 2, .pp = 2, .stage_first = {}, .micro_batches = 1, .exact = true}, 0.0);
  }
}

TEST(ParallelLlama, PipelineParallel) {
  if (world().size() == 2) check_both({.tp = 1, .pp = 2, .stage_first = {}, .micro_batches = 0});
  if (world().size() == 4) {
    check_both({.tp = 1, .pp = 4, .stage_first = {0, 5, 17, 26}, .micro_batches = 0});
  }
}

TEST(ParallelLlama, TensorTimesPipeline) {
  if (world().size() != 4) GTEST_SKIP() << "runs on 4 ranks";
  check_both({.tp = 2, .pp = 2, .stage_first = {}, .micro_batches = 3});
}

// Beam search forks sequences: every beam step copies the shared, partly filled last block on
// write, and the other ranks must repeat those copies (F32 weights: the beams' scores agree to
// float rounding, so the hypotheses must be the same tokens).
TEST(ParallelLlama, BeamSearchCopiesBlocksOnEveryRank) {
  Reference& ref = reference(f32_path());
  ASSERT_TRUE(ref.model);
  BeamSearchOptions bo;
  bo.n_beams = 3;
  bo.max_tokens = 20;
  bo.ignore_eos = true;
  bo.flash_attn = false;
  bo.kv_type = KvType::F32;
  std::vector<BeamHypothesis> want;
  if (world().rank() == 0) {
    BeamSearchStats st;
    auto h = beam_search(*ref.model, *ref.tok, ref.prompt, bo, &st);
    ASSERT_TRUE(h.is_ok()) << h.status().message();
    ASSERT_GT(st.block_copies, 0);
    want = *h;
  }
  ParallelOptions o{.tp = 2, .pp = world().size() / 2, .stage_first = {}, .micro_batches = 0};
  auto par = ParallelLlama::create(*ref.model, world(), o);
  ASSERT_TRUE(par.is_ok()) << par.status().message();
  if (!(*par)->driver()) {
    ThreadPool pool(1);
    Status s = (*par)->follow(pool);
    ASSERT_TRUE(s.is_ok()) << s.message();
    return;
  }
  ref.model->set_distributed(*par);
  auto got = beam_search(*ref.model, *ref.tok, ref.prompt, bo, nullptr);
  ref.model->set_distributed(nullptr);
  ASSERT_TRUE((*par)->finish().is_ok());
  ASSERT_TRUE(got.is_ok()) << got.status().message();
  ASSERT_EQ(got->size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ((*got)[i].tokens, want[i].tokens) << "hypothesis " << i;
    EXPECT_NEAR((*got)[i].logprob, want[i].logprob, 1e-3) << "hypothesis " << i;
  }
}

TEST(ParallelLlama, RefusesSplitsTheModelCannotTake) {
  // SmolLM2 has 3 KV heads: tensor parallelism over 4 ranks would split a group.
  ASSERT_TRUE(test::model_present());
  LlamaModel& model = *reference(test::default_model_path()).model;
  auto p = ParallelLlama::create(
      model, world(), {.tp = world().size(), .pp = 1, .stage_first = {}, .micro_batches = 0});
  if (world().size() <= 3) {
    ASSERT_TRUE(p.is_ok()) << p.status().message();
    if ((*p)->driver()) {
      ASSERT_TRUE((*p)->finish().is_ok());
    } else {
      ThreadPool pool(1);
      ASSERT_TRUE((*p)->follow(pool).is_ok());
    }
  } else {
    ASSERT_FALSE(p.is_ok());
    EXPECT_NE(p.status().message().find("--tp 4 is more than the model's 3 KV heads"),
              std::string::npos)
        << p.status().message();
  }
  auto q = ParallelLlama::create(model, world(),
                                 {.tp = 1, .pp = 1, .stage_first = {}, .micro_batches = 0});
  ASSERT_FALSE(q.is_ok());
  EXPECT_NE(q.status().message().find("needs 1 ranks (mpirun -np 1)"), std::string::npos)
      << q.status().message();
}

}  // namespace
}  // namespace qilin
