// `qilin quantize` end to end: bit-exact with llama.cpp's llama-quantize on Q8_0/Q4_0/Q4_1
// (fixture from tests/golden/gen_quantize_fixtures.py, which also ran llama.cpp on Qilin's
// files), every Qilin type loads and runs in LlamaModel close to the F32 model, and bad input
// or a kill leaves no output file.
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "formats/gguf.h"
#include "quant/quantize.h"
#include "test_util.h"

namespace qilin {
namespace {

struct CliResult {
  int code;
  std::string out;
};

CliResult run_cli(const std::string& args) {
  const std::string cmd = std::string(QILIN_CLI_PATH) + " " + args + " 2>&1";
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

// The names in a directory, but . and ..
std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    while (const dirent* e = readdir(d)) {
      const std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(n);
    }
    closedir(d);
  }
  return names;
}

bool exists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0;
}

// The fixture's checksum (gen_quantize_fixtures.py): sum_i u64_i * (2i + 1) + bytes, mod 2^64.
std::string checksum(const uint8_t* p, size_t n) {
  uint64_t h = n;
  for (size_t i = 0; i * 8 < n; ++i) {
    uint64_t w = 0;
    std::memcpy(&w, p + i * 8, std::min<size_t>(8, n - i * 8));
    h += w * (2 * i + 1);
  }
  char s[17];
  std::snprintf(s, sizeof s, "%016llx", static_cast<unsigned long long>(h));
  return s;
}

class QuantTool : public ::testing::Test {
 protected:
  void SetUp() override {
    char d[] = "/tmp/qilin-quant-XXXXXX";
    ASSERT_NE(mkdtemp(d), nullptr);
    dir_ = d;
  }
  void TearDown() override {
    const std::string cmd = "rm -rf '" + dir_ + "'";
    EXPECT_EQ(std::system(cmd.c_str()), 0);
  }
  std::string dir_;
};

TEST_F(QuantTool, BitExactWithLlamaQuantize) {
  std::ifstream f(std::string(QILIN_TEST_DATA_DIR) + "/golden/quants/quantize_llama.json");
  ASSERT_TRUE(f.good()) << "fixture missing: run tests/golden/gen_quantize_fixtures.py";
  const nlohmann::json fx = nlohmann::json::parse(f);
  const std::string f32 = test::f32_model_path();
  ASSERT_FALSE(f32.empty());
  {
    auto in = GgufFile::open(f32);
    ASSERT_TRUE(in.is_ok());
    for (const GgufTensorInfo& t : (*in)->tensors()) {  // the same input as llama-quantize's
      ASSERT_EQ(checksum(t.data, t.size), fx["f32_input"][t.name]["sum"].get<std::string>())
          << t.name;
    }
  }
  for (const char* type : {"q8_0", "q4_0", "q4_1"}) {
    const nlohmann::json& want = fx["types"][type];
    EXPECT_TRUE(want["qilin_tensors_equal"].get<bool>()) << type;
    EXPECT_EQ(want["llama_cpp_runs_qilin_output_max_abs_logit_diff"].get<double>(), 0.0) << type;
    const std::string out = dir_ + "/" + type + ".gguf";
    const CliResult r = run_cli("quantize " + f32 + " " + out + " --type " + type + " -q -t 2");
    ASSERT_EQ(r.code, 0) << r.out;
    auto q = GgufFile::open(out);
    ASSERT_TRUE(q.is_ok()) << q.status().message();
    ASSERT_EQ((*q)->tensors().size(), want["tensors"].size());
    for (const GgufTensorInfo& t : (*q)->tensors()) {
      const nlohmann::json& w = want["tensors"][t.name];
      EXPECT_EQ(dtype_name(t.type), w["type"].get<std::string>()) << type << " " << t.name;
      EXPECT_EQ(checksum(t.data, t.size), w["sum"].get<std::string>()) << type << " " << t.name;
    }
    auto ft = (*q)->get_int("general.file_type");
    ASSERT_TRUE(ft.is_ok());
    EXPECT_EQ(*ft, std::string(type) == "q8_0" ? 7 : std::string(type) == "q4_0" ? 2 : 3);
  }
}

// Logits of a fixed prompt (last 16 positions) of the model at `path`.
std::vector<float> prompt_logits(const std::string& path, int32_t* n_vocab) {
  auto m = LlamaModel::load(path, WeightPlacement::Mapped);
  EXPECT_TRUE(m.is_ok()) << m.status().message();
  if (!m.is_ok()) return {};
  ThreadPool pool(2);
  auto kv = KvCache::create((*m)->kv_config(64));
  std::vector<int32_t> table{0, 1, 2, 3};
  Workspace ws = (*m)->make_workspace(64, 64, 64, 2);
  Batch b;
  b.seqs.push_back({table.data(), 4});
  for (int i = 0; i < 48; ++i) b.add(1 + (i * 7919) % 20000, i, 0, i >= 32);
  auto out = (*m)->forward(b, **kv, ws, pool);
  EXPECT_TRUE(out.is_ok());
  *n_vocab = (*m)->hparams().n_vocab;
  return std::vector<float>(*out, *out + 16 * *n_vocab);
}

// Every Qilin type runs in LlamaModel and stays close to the F32 model: the cosine of the
// logit rows, and the F32 model's top token ranked high. Also the bits per weight it reports.
TEST_F(QuantTool, QilinTypesLoadAndRunCloseToF32) {
  const std::string f32 = test::f32_model_path();
  ASSERT_FALSE(f32.empty());
  int32_t n_vocab = 0;
  const std::vector<float> ref = prompt_logits(f32, &n_vocab);
  ASSERT_FALSE(ref.empty());
  for (const char* type : {"int4-g32", "int4-g64", "int4-g128", "nf4", "nf4-dq"}) {
    const std::string out = dir_ + "/" + type + ".gguf";
    const CliResult r = run_cli("quantize " + f32 + " " + out + " --type " + type + " -q -t 2");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("bits per weight"), std::string::npos) << r.out;
    const std::vector<float> got = prompt_logits(out, &n_vocab);
    ASSERT_EQ(got.size(), ref.size()) << type;
    double cos_min = 1.0;
    for (int row = 0; row < 16; ++row) {
      double ab = 0, aa = 0, bb = 0;
      for (int32_t v = 0; v < n_vocab; ++v) {
        const double a = ref[row * n_vocab + v], b = got[row * n_vocab + v];
        ASSERT_TRUE(std::isfinite(b)) << type;
        ab += a * b, aa += a * a, bb += b * b;
      }
      cos_min = std::min(cos_min, ab / std::sqrt(aa * bb));
    }
    GTEST_LOG_(INFO) << type << ": min cosine of logit rows vs F32 " << cos_min;
    EXPECT_GT(cos_min, 0.95) << type;
  }
}

TEST_F(QuantTool, BadInputNamesFileTensorAndTypeAndWritesNothing) {
  // A GGUF whose weight is IQ2_XXS, which Qilin cannot read.
  GgufWriter w;
  w.set("general.architecture", GgufValue::of_string("llama"));
  std::vector<uint8_t> iq2(2 * 66, 0);
  w.add_tensor("blk.0.ffn_up.weight", DType::IQ2_XXS, {256, 2}, iq2.data(), iq2.size());
  const std::string in = dir_ + "/bad.gguf", out = dir_ + "/out.gguf";
  ASSERT_TRUE(w.write(in).is_ok());
  CliResult r = run_cli("quantize " + in + " " + out + " --type q4_0");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find(in), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("blk.0.ffn_up.weight"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("IQ2_XXS"), std::string::npos) << r.out;
  EXPECT_FALSE(exists(out));
  r = run_cli("quantize " + in + " " + out + " --type q3_k");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("unknown quantization type 'q3_k'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("nf4-dq"), std::string::npos) << r.out;  // lists the valid ones
  r = run_cli("quantize /nonexistent/in.gguf " + out + " --type q4_0");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("/nonexistent/in.gguf"), std::string::npos) << r.out;
  EXPECT_FALSE(exists(out));
}

// The directory's names once a killed writer's temp files are gone: the named fallback's are
// removed by the reaper process (core/atomic_file.h) just after the kill, so wait up to ~5 s.
std::vector<std::string> settled_list(const std::string& dir, const std::string& keep) {
  std::vector<std::string> names = list_dir(dir);
  for (int i = 0; i < 500; ++i) {
    bool only_keep = true;
    for (const std::string& n : names) only_keep = only_keep && n == keep;
    if (only_keep) break;
    usleep(10000);
    names = list_dir(dir);
  }
  return names;
}

// SIGKILL at moments spread over the run: the output path either does not exist or holds the
// complete file, and nothing else is left in the directory (core/atomic_file.h), with the
// unnamed O_TMPFILE file and with the named-temp-file fallback.
TEST_F(QuantTool, KillLeavesNoPartialOutput) {
  const std::string f32 = test::f32_model_path();
  ASSERT_FALSE(f32.empty());
  auto in = GgufFile::open(f32);
  ASSERT_TRUE(in.is_ok());
  const std::string out = dir_ + "/killed.gguf";
  for (const char* named : {"0", "1"}) {
  int killed_mid_run = 0;
  for (int delay_ms : {10, 40, 80, 150, 250, 400, 600, 900}) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      setenv("QILIN_ATOMIC_NAMED_TEMP", named, 1);
      execl(QILIN_CLI_PATH, QILIN_CLI_PATH, "quantize", f32.c_str(), out.c_str(), "--type",
            "nf4-dq", "-q", "-t", "1", static_cast<char*>(nullptr));
      _exit(127);
    }
    usleep(delay_ms * 1000);
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    for (const std::string& name : settled_list(dir_, "killed.gguf")) {
      EXPECT_EQ(name, "killed.gguf") << "left after a kill at " << delay_ms << " ms, named temp "
                                     << named;
    }
    if (!exists(out)) {
      killed_mid_run += WIFSIGNALED(status);
      continue;
    }
    auto q = GgufFile::open(out);  // present: must be whole
    ASSERT_TRUE(q.is_ok()) << "after a kill at " << delay_ms << " ms: " << q.status().message();
    EXPECT_EQ((*q)->tensors().size(), (*in)->tensors().size());
    ASSERT_EQ(unlink(out.c_str()), 0);
  }
  EXPECT_GT(killed_mid_run, 0) << "every run finished before its kill (named temp " << named << ")";
  }
}

// SIGKILL while the output is being written (the moment the process holds a file in the
// output directory open, seen through /proc/PID/fd), over an existing output: the old file
// stays as it was and no partial or temp file remains.
TEST_F(QuantTool, KillDuringTheWriteLeavesNothingBehind) {
  const std::string f32 = test::f32_model_path();
  ASSERT_FALSE(f32.empty());
  const std::string out = dir_ + "/out.gguf";
  for (const char* named : {"0", "1"}) {
  SCOPED_TRACE(std::string("named temp ") + named);
  {
    std::ofstream old(out);
    old << "the previous output";
  }
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    setenv("QILIN_ATOMIC_NAMED_TEMP", named, 1);
    execl(QILIN_CLI_PATH, QILIN_CLI_PATH, "quantize", f32.c_str(), out.c_str(), "--type", "f32",
          "-q", "-t", "1", static_cast<char*>(nullptr));
    _exit(127);
  }
  const std::string fd_dir = "/proc/" + std::to_string(pid) + "/fd";
  bool seen = false, reaped = false;
  int status = 0;
  for (int i = 0; i < 200000 && !seen; ++i) {  // up to ~20 s
    for (const std::string& fd : list_dir(fd_dir)) {
      char target[4096];
      const ssize_t len = readlink((fd_dir + "/" + fd).c_str(), target, sizeof target - 1);
      if (len > 0 && std::string(target, len).rfind(dir_ + "/", 0) == 0) seen = true;
    }
    if (!seen) {
      reaped = waitpid(pid, &status, WNOHANG) == pid;
      if (reaped) break;  // finished (or failed) unseen
      usleep(100);
    }
  }
  if (!reaped) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  ASSERT_TRUE(seen) << "never saw the output being written";
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "finished before the kill";
  EXPECT_EQ(settled_list(dir_, "out.gguf"), std::vector<std::string>{"out.gguf"});
  std::ifstream in(out);
  const std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(content, "the previous output");
  }
}

}  // namespace
}  // namespace qilin
