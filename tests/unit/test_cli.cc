// The qilin program as a user meets it: real processes, real model, exit codes and messages.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <unistd.h>

#include "formats/gguf.h"
#include "test_util.h"

namespace qilin {
namespace {

struct CliResult {
  int code;
  std::string out;  // stdout and stderr together
};

CliResult run_cli(const std::string& args, const std::string& env = "") {
  const std::string cmd = env + " " + QILIN_CLI_PATH + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  EXPECT_NE(p, nullptr);
  CliResult r{-1, ""};
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

TEST(Cli, HelpOnEverySubcommand) {
  for (const char* sub : {"run", "chat", "bench"}) {
    CliResult r = run_cli(std::string(sub) + " --help");
    EXPECT_EQ(r.code, 0) << sub;
    EXPECT_NE(r.out.find("--model"), std::string::npos) << sub << ": " << r.out;
  }
}

TEST(Cli, MissingDefaultModelSaysHowToFetch) {
  CliResult r = run_cli("run -p hi", "QILIN_MODELS=/nonexistent");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("scripts/fetch_model.sh"), std::string::npos) << r.out;
}

TEST(Cli, UnreadableModelFileIsNamed) {
  CliResult r = run_cli("run -m /nonexistent/x.gguf -p hi");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("/nonexistent/x.gguf"), std::string::npos) << r.out;
}

TEST(Cli, DeviceMapAndParallelErrorsNameTheValue) {
  CliResult r = run_cli("run -p hi -n 1 --device-map 0-14:cpu,15-30:cpu");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("--device-map entry '15-30:cpu': layer 30 does not exist"),
            std::string::npos) << r.out;
  r = run_cli("run -p hi -n 1 --device-map 0-14:cpu,15-29:cuda:0");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("15-29:cuda:0: this build runs layers on cpu only"), std::string::npos)
      << r.out;
  r = run_cli("run -p hi -n 1 --pp 2 --device-map 0-14:stage:1,15-29:stage:3");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("stage:3: there are 2 pipeline stages"), std::string::npos) << r.out;
  // All layers on the CPU of this one process is a valid map: it runs.
  r = run_cli("run -p hi -n 1 --device-map 0-14:cpu,15-29:cpu");
  EXPECT_EQ(r.code, 0) << r.out;
  // One process cannot be two tensor-parallel ranks: it says how to start them.
  r = run_cli("run -p hi -n 1 --tp 2");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("needs 2 ranks (mpirun -np 2)"), std::string::npos) << r.out;
}

TEST(Cli, InvalidFlagValuesAreRejected) {
  CliResult r = run_cli("run -p hi -t 0");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--threads"), std::string::npos) << r.out;
  r = run_cli("run -p hi --top-p 1.5");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("top_p must be in (0, 1], got 1.5"), std::string::npos) << r.out;
  r = run_cli("bench -o xml");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("xml"), std::string::npos) << r.out;
}

TEST(Cli, ZeroOptionErrorsNameTheValue) {
  const std::string ft = "finetune -o /tmp/qilin-zero-cli --data " +
                         std::string(QILIN_TEST_DATA_DIR) + "/data/finetune_brackets.jsonl ";
  CliResult r = run_cli(ft + "--zero 4");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("--zero: the stage must be 0, 1, 2 or 3, got 4"), std::string::npos) << r.out;
  r = run_cli(ft + "--zero 1 --offload-optimizer nvme");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("the only target is cpu, got 'nvme'"), std::string::npos) << r.out;
  r = run_cli(ft + "--offload-optimizer cpu");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("--offload-optimizer needs --zero"), std::string::npos) << r.out;
  r = run_cli(ft + "--zero 2 --resume");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("do not combine with --zero"), std::string::npos) << r.out;
}

TEST(Cli, PromptLongerThanContextIsReported) {
  ASSERT_TRUE(test::model_present());
  std::string words;
  for (int i = 0; i < 40; ++i) words += "word ";
  CliResult r = run_cli("run -c 16 -n 4 -p '" + words + "'");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("context holds 16"), std::string::npos) << r.out;
}

TEST(Cli, RunGeneratesAndPrintsTimings) {
  ASSERT_TRUE(test::model_present());
  CliResult r = run_cli("run --chat -p 'What is 12 times 7?' -n 12 --temp 0 -t 2");
  ASSERT_EQ(r.code, 0) << r.out;
  // llama.cpp's greedy answer to this prompt starts with "12 times 7" (fixture prompt 1).
  EXPECT_NE(r.out.find("12 times 7"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("load time:"), std::string::npos);
  EXPECT_NE(r.out.find("tokens/s"), std::string::npos);
}

TEST(Cli, AttentionSwitchSelectsKernelAndRejectsUnknown) {
  ASSERT_TRUE(test::model_present());
  // Greedy answers of both kernels agree on this prompt (they match to 1e-3 on F32 weights,
  // ModelGoldenF32.FlashAttentionMatchesNaive; 12 tokens of Q4_1 here).
  CliResult flash = run_cli("run --attn flash --chat -p 'What is 12 times 7?' -n 6 --temp 0 -t 2");
  CliResult naive = run_cli("run --attn naive --chat -p 'What is 12 times 7?' -n 6 --temp 0 -t 2");
  ASSERT_EQ(flash.code, 0) << flash.out;
  ASSERT_EQ(naive.code, 0) << naive.out;
  EXPECT_EQ(flash.out.substr(0, flash.out.find("load time")),
            naive.out.substr(0, naive.out.find("load time")));
  CliResult bad = run_cli("run --attn fast -p hi");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.out.find("fast"), std::string::npos) << bad.out;
}

TEST(Cli, BenchJsonHasBothTests) {
  ASSERT_TRUE(test::model_present());
  CliResult r = run_cli("bench -p 16 -n 4 -r 2 -t 1 -o json 2>/dev/null");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("\"test\": \"pp16\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"test\": \"tg4\""), std::string::npos) << r.out;
}

TEST(Cli, BenchPrefixRowAndWeightPlacement) {
  ASSERT_TRUE(test::model_present());
  CliResult r = run_cli("bench -p 40 --prefix 32 -n 0 -r 1 -t 1 -o json --mmap 2>/dev/null");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("\"test\": \"pp40 (first 32 cached)\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"weights\": \"mapped\""), std::string::npos) << r.out;
  CliResult bad = run_cli("bench -p 16 --prefix 16 -n 0");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.out.find("--prefix 16"), std::string::npos) << bad.out;
  CliResult both = run_cli("bench --mmap --no-mmap -p 16 -n 0");
  EXPECT_NE(both.code, 0) << both.out;
}

TEST(Cli, RunBeamSearchPrintsHypotheses) {
  ASSERT_TRUE(test::model_present());
  CliResult r = run_cli("run --beam 3 -p 'The capital of France is' -n 8 -t 2");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("beam search: 3 beams"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("#3 score"), std::string::npos) << r.out;
  CliResult bad = run_cli("run --beam 0 -p hi");
  EXPECT_NE(bad.code, 0);
}

TEST(Cli, ChatHoldsATwoTurnConversationAndReusesTheCache) {
  ASSERT_TRUE(test::model_present());
  CliResult r = run_cli("chat --temp 0 -n 8 -t 2 < /dev/null");
  ASSERT_EQ(r.code, 0) << r.out;  // end of input quits cleanly
  r = run_cli("chat --temp 0 -n 8 -t 2", "printf 'Hello there\\nAnd again\\n' |");
  ASSERT_EQ(r.code, 0) << r.out;
  // One stats line per turn: "[prompt N tokens ...". The first turn runs the system prompt and
  // the message; the second only what follows the cached prefix (its own turn, a few tokens).
  std::vector<int> prompt_tokens;
  for (size_t at = 0; (at = r.out.find("[prompt ", at)) != std::string::npos; ++at) {
    prompt_tokens.push_back(std::atoi(r.out.c_str() + at + 8));
  }
  ASSERT_EQ(prompt_tokens.size(), 2u) << r.out;
  EXPECT_GT(prompt_tokens[0], 25);  // SmolLM2's default system message alone is ~20 tokens
  EXPECT_LT(prompt_tokens[1], 20);
}

TEST(Cli, UnsupportedChatTemplateIsRefusedClearly) {
  ASSERT_TRUE(test::model_present());
  // The default model with its template swapped for one of a family we do not render.
  auto f = GgufFile::open(test::default_model_path());
  ASSERT_TRUE(f.is_ok()) << f.status().message();
  GgufWriter w;
  for (const auto& [key, value] : (*f)->kvs()) w.set(key, value);
  w.set("tokenizer.chat_template",
        GgufValue::of_string("{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
                             "{{ m['content'] }}<end_of_turn>\n{% endfor %}"));
  for (const GgufTensorInfo& t : (*f)->tensors()) {
    w.add_tensor(t.name, t.type, std::vector<int64_t>(t.ne, t.ne + t.n_dims), t.data, t.size);
  }
  char dir[] = "/tmp/qilin-cli-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/gemma-template.gguf";
  ASSERT_TRUE(w.write(path).is_ok());
  CliResult r = run_cli("chat -m " + path + " < /dev/null");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("not supported"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("<start_of_turn>"), std::string::npos) << "should quote the template: " << r.out;
  r = run_cli("run --chat -m " + path + " -p hi");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("not supported"), std::string::npos) << r.out;
  // Without --chat the same model runs: only the template is refused.
  r = run_cli("run -m " + path + " -p hi -n 2");
  EXPECT_EQ(r.code, 0) << r.out;
  unlink(path.c_str());
  rmdir(dir);
}

}  // namespace
}  // namespace qilin
