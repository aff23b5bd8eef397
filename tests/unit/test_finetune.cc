// Fine-tuning end to end on SmolLM2: data masking, a task the base model does not follow
// (answers wrapped in <<...>>, tests/data/finetune_brackets.jsonl: 40 training and 8 held-out
// questions) learned by LoRA and followed on the held-out questions through the exported
// adapter at inference; the adapter applied at inference gives the training logits; a run
// resumed from a checkpoint repeats the uninterrupted losses exactly, also after kill -9.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <fstream>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <random>
#include <sstream>

#include "engine/generator.h"
#include "test_util.h"
#include "train/finetune.h"

namespace qilin::train {
namespace {

std::string data_path() { return std::string(QILIN_TEST_DATA_DIR) + "/data/finetune_brackets.jsonl"; }

std::string temp_dir() {
  char dir[] = "/tmp/qilin-ft-XXXXXX";
  EXPECT_NE(mkdtemp(dir), nullptr);
  return dir;
}

class Finetune : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(test::load_default(&model_, &tok_));
    auto ex = load_jsonl(data_path(), *tok_, nullptr, 128);
    ASSERT_TRUE(ex.is_ok()) << ex.status().message();
    ASSERT_EQ(ex->size(), 48u);
    train_.assign(ex->begin(), ex->begin() + 40);
    eval_.assign(ex->begin() + 40, ex->end());
  }
  FinetuneConfig config(int64_t steps) {
    FinetuneConfig c;
    c.lora.rank = 8;
    c.lora.alpha = 16;
    c.adam.lr = 1e-3f;
    c.steps = steps;
    c.warmup = 5;
    c.n_threads = 2;
    c.seed = 3;
    return c;
  }
  // Greedy answer of the model (with whatever adapter it has) to a held-out prompt.
  std::string answer(const LlamaModel& m, const std::string& prompt, int n) {
    GeneratorConfig gc;
    gc.n_ctx = 128;
    gc.n_threads = 2;
    auto g = Generator::create(m, gc);
    EXPECT_TRUE(g.is_ok());
    EXPECT_TRUE((*g)->feed(tok_->encode(prompt, true, true)).is_ok());
    std::string out;
    for (int i = 0; i < n; ++i) {
      const float* l = (*g)->logits();
      const int32_t t = static_cast<int32_t>(std::max_element(l, l + m.hparams().n_vocab) - l);
      if (tok_->is_eog(t)) break;
      out += tok_->token_to_piece(t);
      EXPECT_TRUE((*g)->feed(&t, 1).is_ok());
    }
    return out;
  }
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<Tokenizer> tok_;
  std::vector<Example> train_, eval_;
};

TEST_F(Finetune, DataMasksEverythingButTheCompletion) {
  const Example& e = train_[0];  // "Question: What is the capital of France?\nAnswer:" " <<Paris>>"
  const std::vector<int32_t> prompt = tok_->encode("Question: What is the capital of France?\nAnswer:", true, true);
  ASSERT_GT(e.tokens.size(), prompt.size());
  for (size_t i = 0; i + 1 < prompt.size(); ++i) EXPECT_EQ(e.targets[i], -1) << i;
  // From the last prompt token on, every target is the next token, and the last is EOS.
  for (size_t i = prompt.size() - 1; i + 1 < e.tokens.size(); ++i) EXPECT_EQ(e.targets[i], e.tokens[i + 1]);
  EXPECT_EQ(e.tokens.back(), tok_->eos());
  EXPECT_EQ(e.targets.back(), -1);
  // Packing never learns across examples.
  const std::vector<Example> packed = pack({train_[0], train_[1]}, 128);
  ASSERT_EQ(packed.size(), 1u);
  EXPECT_EQ(packed[0].targets[train_[0].tokens.size() - 1], -1);
  // Bad lines are named.
  const std::string bad = temp_dir() + "/bad.jsonl";
  std::ofstream(bad) << "{\"prompt\": \"hi\", \"completion\": \"there\"}\n{\"prompt\": 3}\n";
  auto r = load_jsonl(bad, *tok_, nullptr, 64);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("line 2"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("\"prompt\""), std::string::npos) << r.status().message();
}

TEST_F(Finetune, LearnsAnAnswerFormatAndFollowsItOnHeldOutQuestions) {
  const char* held_out[] = {"Question: What is the capital of Canada?\nAnswer:",
                            "Question: What color is coal?\nAnswer:",
                            "Question: What is the opposite of big?\nAnswer:"};
  for (const char* q : held_out) {
    EXPECT_EQ(answer(*model_, q, 6).find("<<"), std::string::npos) << "the base already follows the format";
  }
  auto ft = Finetuner::create(*model_, config(60), train_, eval_);
  ASSERT_TRUE(ft.is_ok()) << ft.status().message();
  const float before = (*ft)->evaluate();
  std::vector<float> losses;
  ASSERT_TRUE((*ft)->run([&](const StepLog& s) { losses.push_back(s.loss); }).is_ok());
  const float after = (*ft)->evaluate();
  std::printf("  held-out loss %.3f -> %.3f; train loss %.3f -> %.3f\n", before, after, losses.front(), losses.back());
  EXPECT_LT(after, 0.5f * before);

  // Export, reload as an inference adapter, and answer the held-out questions.
  const std::string dir = temp_dir();
  ASSERT_TRUE((*ft)->save_gguf_adapter(dir + "/adapter.gguf").is_ok());
  ASSERT_TRUE((*ft)->save_peft(dir + "/peft", "SmolLM2-135M-Instruct").is_ok());
  auto ad = load_lora_adapter(dir + "/adapter.gguf", *model_, 1.0f);
  ASSERT_TRUE(ad.is_ok()) << ad.status().message();
  ASSERT_TRUE(model_->set_adapter(std::make_shared<const LoraAdapter>(std::move(*ad))).is_ok());
  int followed = 0;
  for (const char* q : held_out) {
    const std::string a = answer(*model_, q, 12);
    std::printf("  %s ->%s\n", std::string(q + 10, std::strchr(q, '\n')).c_str(), a.c_str());
    followed += a.rfind(" <<", 0) == 0 && a.find(">>") != std::string::npos;
  }
  EXPECT_EQ(followed, 3);
  // The PEFT files exist and the safetensors header names PEFT's tensors.
  std::ifstream st(dir + "/peft/adapter_model.safetensors", std::ios::binary);
  std::string head(4096, '\0');
  st.read(head.data(), head.size());
  EXPECT_NE(head.find("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), std::string::npos);
  std::ifstream cfg(dir + "/peft/adapter_config.json");
  std::string cj((std::istreambuf_iterator<char>(cfg)), std::istreambuf_iterator<char>());
  EXPECT_NE(cj.find("\"peft_type\": \"LORA\""), std::string::npos) << cj;
}

TEST_F(Finetune, InferenceAdapterGivesTheTrainingLogits) {
  // F32 weights: the inference kernels and the training forward then agree to rounding.
  auto f32 = LlamaModel::load(test::f32_model_path());
  ASSERT_TRUE(f32.is_ok());
  auto ft = Finetuner::create(**f32, config(8), train_, eval_);
  ASSERT_TRUE(ft.is_ok());
  ASSERT_TRUE((*ft)->run(nullptr).is_ok());
  const Example& e = eval_[0];
  std::vector<float> train_logits;
  (*ft)->model().forward(e.tokens.data(), e.targets.data(), static_cast<int64_t>(e.tokens.size()), &train_logits);
  const std::string dir = temp_dir();
  ASSERT_TRUE((*ft)->save_gguf_adapter(dir + "/adapter.gguf").is_ok());
  auto ad = load_lora_adapter(dir + "/adapter.gguf", **f32, 1.0f);
  ASSERT_TRUE(ad.is_ok()) << ad.status().message();
  ASSERT_TRUE((*f32)->set_adapter(std::make_shared<const LoraAdapter>(std::move(*ad))).is_ok());
  GeneratorConfig gc;
  gc.kv_type = KvType::F32;  // the training forward keeps K and V in F32
  gc.n_ctx = 128;
  gc.n_threads = 2;
  auto g = Generator::create(**f32, gc);
  ASSERT_TRUE(g.is_ok());
  ASSERT_TRUE((*g)->feed(e.tokens).is_ok());
  const int32_t V = (*f32)->hparams().n_vocab;
  const float* last = train_logits.data() + (e.tokens.size() - 1) * V;
  double max_err = 0;
  for (int32_t i = 0; i < V; ++i) max_err = std::max(max_err, double(std::fabs(last[i] - (*g)->logits()[i])));
  EXPECT_LT(max_err, 2e-3);
  // And the adapter does change the model (the check above is not vacuous).
  ASSERT_TRUE((*f32)->set_adapter(nullptr).is_ok());
  auto g0 = Generator::create(**f32, gc);
  ASSERT_TRUE((*g0)->feed(e.tokens).is_ok());
  double moved = 0;
  for (int32_t i = 0; i < V; ++i) moved = std::max(moved, double(std::fabs(last[i] - (*g0)->logits()[i])));
  EXPECT_GT(moved, 0.05);
}

TEST_F(Finetune, ResumedRunRepeatsTheUninterruptedLosses) {
  std::vector<float> straight, resumed;
  {
    auto ft = Finetuner::create(*model_, config(6), train_, eval_);
    ASSERT_TRUE(ft.is_ok());
    ASSERT_TRUE((*ft)->run([&](const StepLog& s) { straight.push_back(s.loss); }).is_ok());
  }
  const std::string ck = temp_dir() + "/checkpoint.gguf";
  // A run stopped after step 3, its checkpoint written then. (Warmup is 5 steps, so the
  // learning rates of steps 1-3 do not depend on the planned total.)
  {
    FinetuneConfig c = config(3);
    c.checkpoint_every = 3;
    c.checkpoint_path = ck;
    auto ft = Finetuner::create(*model_, c, train_, eval_);
    ASSERT_TRUE(ft.is_ok());
    ASSERT_TRUE((*ft)->run([&](const StepLog& s) { resumed.push_back(s.loss); }).is_ok());
  }
  {
    auto ft = Finetuner::create(*model_, config(6), train_, eval_);
    ASSERT_TRUE(ft.is_ok());
    ASSERT_TRUE((*ft)->load_checkpoint(ck).is_ok());
    EXPECT_EQ((*ft)->step(), 3);
    ASSERT_TRUE((*ft)->run([&](const StepLog& s) { resumed.push_back(s.loss); }).is_ok());
  }
  ASSERT_EQ(resumed.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(resumed[i], straight[i]) << "step " << i + 1;
}


// `qilin finetune` with stderr to log; kill_after_ms > 0: SIGKILL then. Returns the wait status.
int run_finetune_cli(const std::vector<std::string>& args, const std::string& log, int kill_after_ms) {
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, STDERR_FILENO);
    dup2(fd, STDOUT_FILENO);
    std::vector<char*> argv = {const_cast<char*>(QILIN_CLI_PATH)};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(QILIN_CLI_PATH, argv.data());
    _exit(127);
  }
  if (kill_after_ms > 0) {
    usleep(kill_after_ms * 1000);
    kill(pid, SIGKILL);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> v;
  DIR* d = opendir(dir.c_str());
  while (const dirent* e = d ? readdir(d) : nullptr) {
    if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") v.push_back(e->d_name);
  }
  if (d) closedir(d);
  return v;
}

// "step K/N  loss X" lines of a log: K -> the line's loss text.
std::map<int, std::string> step_losses(const std::string& log) {
  std::ifstream in(log);
  std::map<int, std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    int k = 0, n = 0;
    char loss[32];
    if (std::sscanf(line.c_str(), "step %d/%d  loss %31s", &k, &n, loss) == 3) out[k] = loss;
  }
  return out;
}

// SIGKILL at random moments of a run that checkpoints every step: the checkpoint is always
// a whole, loadable file holding at least the last step the run reported (a kill loses at most
// the step in progress, one checkpoint interval), --resume goes on from it, and the steps after
// each resume print the uninterrupted run's losses.
TEST_F(Finetune, KillNineNeverCorruptsTheCheckpointAndResumeContinues) {
  const std::string dir = temp_dir();
  auto args = [&](const std::string& out, bool resume) {
    std::vector<std::string> a = {"finetune", "-m", test::default_model_path(), "--data", data_path(), "-o", out,
                                  "--steps", "8", "--checkpoint-every", "1", "--seq-len", "64", "--val-fraction",
                                  "0", "--lr", "1e-3", "--warmup", "2", "-t", "1", "--base-type", "keep"};
    if (resume) a.push_back("--resume");
    return a;
  };
  ASSERT_EQ(run_finetune_cli(args(dir + "/straight", false), dir + "/straight.log", 0), 0);
  const std::map<int, std::string> want = step_losses(dir + "/straight.log");
  ASSERT_EQ(want.size(), 8u);
  const std::string out = dir + "/killed", ck = out + "/checkpoint.gguf";
  int kills = 0, resumed_runs = 0;
  // Start-up takes ~0.6 s and a step ~0.4 s here: kills land in the first steps of each run.
  std::random_device rd;
  std::uniform_int_distribution<int> pick(900, 2000);
  std::vector<int> delays;
  for (int i = 0; i < 4; ++i) delays.push_back(pick(rd));
  for (int delay_ms : delays) {
    SCOPED_TRACE("kill at " + std::to_string(delay_ms) + " ms");
    const bool resume = access(ck.c_str(), R_OK) == 0;
    const std::string log = dir + "/run" + std::to_string(delay_ms) + ".log";
    const int status = run_finetune_cli(args(out, resume), log, delay_ms);
    kills += WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    int last_reported = 0;  // a step's line is printed after its checkpoint is written
    for (const auto& [k, loss] : step_losses(log)) {
      EXPECT_EQ(loss, want.at(k)) << "step " << k << " after a resume";
      resumed_runs += resume;
      last_reported = std::max(last_reported, k);
    }
    if (access(ck.c_str(), R_OK) != 0) {  // killed before the first checkpoint
      EXPECT_EQ(last_reported, 0);
      continue;
    }
    auto f = GgufFile::open(ck);
    ASSERT_TRUE(f.is_ok()) << "after a kill at " << delay_ms << " ms: " << f.status().message();
    auto step = (*f)->get_uint("qilin.ft.step");
    ASSERT_TRUE(step.is_ok());
    EXPECT_LE(*step, 8u);
    EXPECT_GE(*step, static_cast<uint64_t>(last_reported)) << "the kill lost a reported step";
    for (const std::string& name : list_dir(out)) {
      EXPECT_EQ(name.find(".tmp."), std::string::npos) << "temp file left: " << name;
    }
  }
  EXPECT_GT(kills, 0) << "every run finished before its kill";
  // The last resume runs to the end.
  const int status = run_finetune_cli(args(out, access(ck.c_str(), R_OK) == 0), dir + "/last.log", 0);
  ASSERT_EQ(status, 0);
  for (const auto& [k, loss] : step_losses(dir + "/last.log")) EXPECT_EQ(loss, want.at(k)) << "step " << k;
  auto f = GgufFile::open(ck);
  ASSERT_TRUE(f.is_ok());
  EXPECT_EQ(*(*f)->get_uint("qilin.ft.step"), 8u);
  std::printf("  %d runs killed mid-way; %d steps checked after resumes\n", kills, resumed_runs);
}

}  // namespace
}  // namespace qilin::train
