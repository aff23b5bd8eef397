// qilin merge: a model with the adapter merged in gives the logits of the base with the adapter
// applied unmerged (F32: to float rounding; requantized to Q8_0: to its rounding), keeps every
// untouched tensor bit for bit and the base's types by default, and names bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include <sys/stat.h>

#include "engine/generator.h"
#include "test_util.h"
#include "model/lora_adapter.h"
#include "train/merge.h"

namespace qilin::train {
namespace {

LoraAdapter random_adapter(const LlamaModel& m, int32_t r, float scale, uint32_t seed) {
  LoraAdapter a;
  a.rank = r;
  a.scale = scale;
  const int32_t L = m.hparams().n_layer;
  a.A.resize(L);
  a.B.resize(L);
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0, 0.05f);
  for (int32_t l = 0; l < L; ++l) {
    const LlamaLayer& w = m.layers()[l];
    const WeightView* v[kLoraNumProj] = {&w.wq, &w.wk, &w.wv, &w.wo, &w.w_gate, &w.w_up, &w.w_down};
    for (int p = 0; p < kLoraNumProj; ++p) {
      if (p == kLoraK) continue;  // one projection left out: merge must leave it as it was
      a.A[l][p].resize(static_cast<size_t>(r * v[p]->n_in));
      a.B[l][p].resize(static_cast<size_t>(v[p]->n_out * r));
      for (float& x : a.A[l][p]) x = nd(rng);
      for (float& x : a.B[l][p]) x = nd(rng);
    }
  }
  return a;
}

std::vector<float> last_logits(const LlamaModel& m, const std::vector<int32_t>& tokens) {
  GeneratorConfig gc;
  gc.n_ctx = 64;
  gc.n_threads = 2;
  gc.kv_type = KvType::F32;  // F16 K/V would round the merged and unmerged runs differently
  auto g = Generator::create(m, gc);
  EXPECT_TRUE(g.is_ok());
  EXPECT_TRUE((*g)->feed(tokens).is_ok());
  return std::vector<float>((*g)->logits(), (*g)->logits() + m.hparams().n_vocab);
}

double mean_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d += std::fabs(a[i] - b[i]);
  return d / a.size();
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, double(std::fabs(a[i] - b[i])));
  return d;
}

std::string temp_dir() {
  char dir[] = "/tmp/qilin-merge-XXXXXX";
  EXPECT_NE(mkdtemp(dir), nullptr);
  return dir;
}

// --lora's spelling, shared by run/chat/bench/serve and merge.
TEST(TrainMerge, LoraSpecSplitsFileAndScale) {
  std::string file;
  float mult = 0;
  split_lora_spec("out/adapter.gguf", &file, &mult);
  EXPECT_EQ(file, "out/adapter.gguf");
  EXPECT_EQ(mult, 1.0f);
  split_lora_spec("out/adapter.gguf:0.5", &file, &mult);
  EXPECT_EQ(file, "out/adapter.gguf");
  EXPECT_EQ(mult, 0.5f);
  split_lora_spec("C:/a.gguf:-2", &file, &mult);  // the last colon only
  EXPECT_EQ(file, "C:/a.gguf");
  EXPECT_EQ(mult, -2.0f);
  split_lora_spec("dir:x/a.gguf", &file, &mult);  // not a number: part of the file name
  EXPECT_EQ(file, "dir:x/a.gguf");
  EXPECT_EQ(mult, 1.0f);
  split_lora_spec("a.gguf:", &file, &mult);
  EXPECT_EQ(file, "a.gguf:");
  EXPECT_EQ(mult, 1.0f);
}

TEST(TrainMerge, MergedF32ModelGivesTheUnmergedAdapterLogits) {
  auto m = LlamaModel::load(test::f32_model_path());
  ASSERT_TRUE(m.is_ok());
  auto tok = Tokenizer::from_gguf((*m)->gguf());
  ASSERT_TRUE(tok.is_ok());
  const std::vector<int32_t> p = (*tok)->encode("The capital of France is", true, true);
  const std::vector<float> base = last_logits(**m, p);
  auto ad = std::make_shared<const LoraAdapter>(random_adapter(**m, 4, 0.5f, 9));
  const std::string out = temp_dir() + "/merged.gguf";
  auto rep = merge_lora(**m, *ad, out, DType::F32, /*keep_type=*/true, 2);
  ASSERT_TRUE(rep.is_ok()) << rep.status().message();
  EXPECT_EQ(rep->merged, 30 * 6);
  EXPECT_EQ(rep->type, DType::F32);
  ASSERT_TRUE((*m)->set_adapter(ad).is_ok());
  const std::vector<float> unmerged = last_logits(**m, p);
  auto mm = LlamaModel::load(out);
  ASSERT_TRUE(mm.is_ok()) << mm.status().message();
  const std::vector<float> merged = last_logits(**mm, p);
  std::printf("  adapter moves the logits by %.3f; merged vs unmerged %.2e\n", max_diff(base, unmerged),
              max_diff(merged, unmerged));
  EXPECT_GT(max_diff(base, unmerged), 0.5);
  EXPECT_LT(max_diff(merged, unmerged), 2e-3);
  // Untouched tensors are the input's bytes.
  for (const char* name : {"blk.3.attn_k.weight", "token_embd.weight", "blk.0.attn_norm.weight"}) {
    const GgufTensorInfo* a = (*m)->gguf().find_tensor(name);
    const GgufTensorInfo* b = (*mm)->gguf().find_tensor(name);
    ASSERT_TRUE(a && b) << name;
    ASSERT_EQ(a->size, b->size);
    EXPECT_EQ(std::memcmp(a->data, b->data, a->size), 0) << name;
  }
}

// Writes `ad` as finetune does (llama.cpp's GGUF LoRA layout, alpha = scale * rank).
void write_adapter(const LoraAdapter& ad, const std::string& path) {
  GgufWriter w;
  w.set("general.architecture", GgufValue::of_string("llama"));
  w.set("general.type", GgufValue::of_string("adapter"));
  w.set("adapter.type", GgufValue::of_string("lora"));
  w.set("adapter.lora.alpha", GgufValue::of_f32(ad.scale * ad.rank));
  const int64_t r = ad.rank;
  for (size_t l = 0; l < ad.A.size(); ++l) {
    for (int p = 0; p < kLoraNumProj; ++p) {
      if (ad.A[l][p].empty()) continue;
      const std::string base = "blk." + std::to_string(l) + "." + lora_proj_gguf_name(p) + ".weight";
      const int64_t in = static_cast<int64_t>(ad.A[l][p].size()) / r, out = static_cast<int64_t>(ad.B[l][p].size()) / r;
      w.add_tensor(base + ".lora_a", DType::F32, {in, r}, ad.A[l][p].data(), ad.A[l][p].size() * 4);
      w.add_tensor(base + ".lora_b", DType::F32, {r, out}, ad.B[l][p].data(), ad.B[l][p].size() * 4);
    }
  }
  ASSERT_TRUE(w.write(path).is_ok());
}

std::string run_cli(const std::string& args, int* rc) {
  const std::string cmd = std::string(QILIN_CLI_PATH) + " " + args + " 2>&1";
  FILE* f = popen(cmd.c_str(), "r");
  std::string text(8192, '\0');
  text.resize(std::fread(text.data(), 1, text.size(), f));
  *rc = pclose(f);
  return text;
}

// Through the CLI: the F32 base merged into Q8_0 (--type) gives the unmerged adapter's logits up
// to Q8_0's rounding; merged without --type, the Q4_1 base keeps every tensor's type; bad
// input is named and leaves no output.
TEST(TrainMerge, CliMergesIntoAChosenOrTheBaseType) {
  auto m = LlamaModel::load(test::f32_model_path());
  ASSERT_TRUE(m.is_ok());
  auto tok = Tokenizer::from_gguf((*m)->gguf());
  ASSERT_TRUE(tok.is_ok());
  const std::string dir = temp_dir();
  ASSERT_NO_FATAL_FAILURE(write_adapter(random_adapter(**m, 4, 0.5f, 11), dir + "/adapter.gguf"));
  int rc = 0;
  std::string log = run_cli("merge -m " + test::f32_model_path() + " --lora " + dir + "/adapter.gguf:1.0 -o " + dir +
                                "/q8.gguf --type q8_0 -t 2", &rc);
  ASSERT_EQ(rc, 0) << log;
  const std::vector<int32_t> p = (*tok)->encode("The capital of France is", true, true);
  const std::vector<float> base = last_logits(**m, p);
  auto loaded = load_lora_adapter(dir + "/adapter.gguf", **m, 1.0f);
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().message();
  ASSERT_TRUE((*m)->set_adapter(std::make_shared<const LoraAdapter>(std::move(*loaded))).is_ok());
  const std::vector<float> unmerged = last_logits(**m, p);
  auto q8 = LlamaModel::load(dir + "/q8.gguf");
  ASSERT_TRUE(q8.is_ok()) << q8.status().message();
  EXPECT_EQ((*q8)->gguf().find_tensor("blk.0.attn_q.weight")->type, DType::Q8_0);
  const std::vector<float> merged = last_logits(**q8, p);
  // Q8_0 weights (and the Q8_0 activations their kernels use) move the logits by themselves:
  // the merged model may differ from the unmerged F32 one by that much, not more.
  QuantizeOptions qo;
  qo.target = DType::Q8_0;
  ASSERT_TRUE(quantize_gguf((*m)->gguf(), dir + "/base_q8.gguf", qo).is_ok());
  auto bq8 = LlamaModel::load(dir + "/base_q8.gguf");
  ASSERT_TRUE(bq8.is_ok());
  const std::vector<float> base_q8 = last_logits(**bq8, p);
  auto ad_q8 = load_lora_adapter(dir + "/adapter.gguf", **bq8, 1.0f);
  ASSERT_TRUE(ad_q8.is_ok());
  ASSERT_TRUE((*bq8)->set_adapter(std::make_shared<const LoraAdapter>(std::move(*ad_q8))).is_ok());
  const std::vector<float> unmerged_q8 = last_logits(**bq8, p);
  // Against the same adapter unmerged on the Q8_0 base, merging leaves Q8_0's rounding of the
  // new weights: far less than the adapter's own effect there (dropping it would fail).
  const double moved = mean_diff(base_q8, unmerged_q8), err = mean_diff(merged, unmerged_q8);
  std::printf("  Q8_0: the adapter moves the logits by %.3f on average; merged vs unmerged %.3f "
              "(vs unmerged on F32 %.3f; Q8_0 alone moves them %.3f)\n",
              moved, err, mean_diff(merged, unmerged), mean_diff(base_q8, base));
  EXPECT_LT(err, 0.5 * moved);  // measured 0.36: these logits are sensitive (Q8_0 alone moves them 0.6)

  std::unique_ptr<LlamaModel> q41;
  std::unique_ptr<Tokenizer> tok41;
  ASSERT_NO_FATAL_FAILURE(test::load_default(&q41, &tok41));
  log = run_cli("merge -m " + test::default_model_path() + " --lora " + dir + "/adapter.gguf -o " + dir +
                    "/q41.gguf -t 2", &rc);
  ASSERT_EQ(rc, 0) << log;
  auto mm = LlamaModel::load(dir + "/q41.gguf");
  ASSERT_TRUE(mm.is_ok()) << mm.status().message();
  for (const GgufTensorInfo& t : q41->gguf().tensors()) {
    const GgufTensorInfo* u = (*mm)->gguf().find_tensor(t.name);
    ASSERT_NE(u, nullptr) << t.name;
    EXPECT_EQ(u->type, t.type) << t.name;
  }
  log = run_cli("merge -m " + test::default_model_path() + " --lora /nonexistent/a.gguf -o " + dir + "/bad.gguf", &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(log.find("/nonexistent/a.gguf"), std::string::npos) << log;
  struct stat st;
  EXPECT_NE(stat((dir + "/bad.gguf").c_str(), &st), 0);
}

}  // namespace
}  // namespace qilin::train
