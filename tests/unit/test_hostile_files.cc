// Hostile and damaged files (issue 15's findings): each test reproduces one way a crafted
// GGUF, LoRA adapter or fine-tuning checkpoint once crashed Qilin, aborted it, or cost it
// memory out of proportion to the file, and checks that it is now a Status naming the problem.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/printable.h"
#include "formats/gguf.h"
#include "model/llama.h"
#include "model/lora_adapter.h"
#include "mpi/tiny_llama.h"
#include "quant/quantize.h"
#include "train/finetune.h"

namespace qilin {
namespace {

using train::Example;
using train::FinetuneConfig;
using train::Finetuner;

std::string temp_dir() {
  char dir[] = "/tmp/qilin-hostile-XXXXXX";
  EXPECT_NE(mkdtemp(dir), nullptr);
  return dir;
}

const LlamaModel& tiny_model() {
  static const std::unique_ptr<LlamaModel> model = [] {
    auto m = test::tiny_llama();
    EXPECT_TRUE(m.is_ok()) << m.status().message();
    return std::move(*m);
  }();
  return *model;
}

// Raw little-endian GGUF bytes, for headers no writer would produce.
struct RawGguf {
  std::vector<uint8_t> b;
  void u32(uint32_t v) { put(&v, 4); }
  void u64(uint64_t v) { put(&v, 8); }
  void str(const std::string& s) {
    u64(s.size());
    put(s.data(), s.size());
  }
  void put(const void* p, size_t n) {
    const auto* c = static_cast<const uint8_t*>(p);
    b.insert(b.end(), c, c + n);
  }
  void header(uint64_t n_tensors, uint64_t n_kv) {
    put("GGUF", 4);
    u32(3);
    u64(n_tensors);
    u64(n_kv);
  }
};

// Resident memory (VmRSS) and its peak (VmHWM) of this process, in bytes.
size_t proc_status_bytes(const char* field) {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return 0;
  char line[256];
  unsigned long long kib = 0;
  const size_t n = std::strlen(field);
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::strncmp(line, field, n) == 0 && std::sscanf(line + n, ": %llu kB", &kib) == 1) break;
  }
  std::fclose(f);
  return static_cast<size_t>(kib) * 1024;
}

// A 16.5 MB file holding one UINT8 array once cost ~1.8 GB (a GgufValue per byte). The header's
// memory is now charged against a budget of 64 MiB + 8x the file size. The parse runs in a child
// process, whose peak RSS starts at its current RSS (this process's earlier peaks do not hide it).
TEST(HostileGguf, LargeScalarArrayIsBoundedByTheMemoryBudget) {
  constexpr uint64_t kCount = 16'500'000;
  RawGguf g;
  g.header(0, 1);
  g.str("junk.bytes");
  g.u32(9);  // ARRAY
  g.u32(0);  // of UINT8
  g.u64(kCount);
  g.b.resize(g.b.size() + kCount, 7);
  std::fflush(nullptr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const size_t before = proc_status_bytes("VmRSS");
    auto f = GgufFile::parse(g.b.data(), g.b.size(), "big-array.gguf");
    const size_t grown = proc_status_bytes("VmHWM") - before;
    const std::string m = f.is_ok() ? "" : f.status().message();
    std::fprintf(stderr, "parse: %s; peak RSS grew %zu MiB\n", f.is_ok() ? "ok" : m.c_str(),
                 grown >> 20);
    int code = 0;
    if (f.is_ok() || m.find("big-array.gguf") == std::string::npos ||
        m.find("junk.bytes") == std::string::npos || m.find("limit") == std::string::npos) {
      code |= 1;
    }
    // The budget is ~200 MB for this file; allow allocator slack, far below the old 1.8 GB.
    if (grown > (size_t{400} << 20)) code |= 2;
    _exit(code);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "the parse died (signal " << WTERMSIG(status) << ")";
  EXPECT_EQ(WEXITSTATUS(status) & 1, 0) << "the parse did not fail with a message naming the "
                                           "file, the key and the limit (see stderr)";
  EXPECT_EQ(WEXITSTATUS(status) & 2, 0) << "parsing grew the peak RSS by more than 400 MiB";
}

// The same kind of array inside the budget still parses (the limit is not a blanket refusal).
TEST(HostileGguf, ArrayWithinTheBudgetParses) {
  constexpr uint64_t kCount = 200'000;  // ~19 MB of GgufValues, under the 64 MiB floor
  RawGguf g;
  g.header(0, 1);
  g.str("tokenizer.ggml.token_type");
  g.u32(9);
  g.u32(5);  // INT32
  g.u64(kCount);
  for (uint64_t i = 0; i < kCount; ++i) g.u32(1);
  auto f = GgufFile::parse(g.b.data(), g.b.size());
  ASSERT_TRUE(f.is_ok()) << f.status().message();
  EXPECT_EQ((*f)->kvs()[0].second.array.size(), kCount);
}

TEST(HostileGguf, MetadataKeyCountIsCapped) {
  constexpr uint64_t kKeys = 70'000;
  RawGguf g;
  g.header(0, kKeys);
  for (uint64_t i = 0; i < kKeys; ++i) {
    g.str("k" + std::to_string(i));
    g.u32(0);  // UINT8
    g.put("\x01", 1);
  }
  auto f = GgufFile::parse(g.b.data(), g.b.size(), "many-keys.gguf");
  ASSERT_FALSE(f.is_ok());
  EXPECT_NE(f.status().message().find("KV count 70000 exceeds the limit"), std::string::npos)
      << f.status().message();
}

// Terminal escape sequences in a file's strings reach the user only escaped.
TEST(HostileGguf, FileStringsAreEscapedInErrors) {
  GgufWriter w;
  w.set("general.architecture", GgufValue::of_string("evil\x1b]0;owned\x07\x1b[2J"));
  const std::string path = temp_dir() + "/escape.gguf";
  ASSERT_TRUE(w.write(path).is_ok());
  auto m = LlamaModel::load(path);
  ASSERT_FALSE(m.is_ok());
  const std::string msg = m.status().message();
  EXPECT_EQ(msg.find('\x1b'), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\x07'), std::string::npos) << msg;
  EXPECT_NE(msg.find("evil\\x1b]0;owned\\x07\\x1b[2J"), std::string::npos) << msg;
}

TEST(Printable, EscapesControlsAndInvalidUtf8KeepsText) {
  EXPECT_EQ(printable("plain ascii"), "plain ascii");
  EXPECT_EQ(printable("caf\xC3\xA9 \xE4\xB8\xAD \xF0\x9F\x98\x80"), "caf\xC3\xA9 \xE4\xB8\xAD \xF0\x9F\x98\x80");
  EXPECT_EQ(printable("a\x1b[31mb"), "a\\x1b[31mb");
  EXPECT_EQ(printable("a\nb\tc\x7f"), "a\\x0ab\\x09c\\x7f");
  EXPECT_EQ(printable("a\nb", 0, /*keep_newlines=*/true), "a\nb");
  EXPECT_EQ(printable("\xC2\x9B" "2J"), "\\xc2\\x9b2J");  // C1 CSI as UTF-8
  EXPECT_EQ(printable("\x9b" "2J"), "\\x9b2J");           // raw 8-bit CSI, not UTF-8
  EXPECT_EQ(printable("\xC0\xAF"), "\\xc0\\xaf");         // overlong '/'
  EXPECT_EQ(printable("\xED\xA0\x80"), "\\xed\\xa0\\x80");  // surrogate
  EXPECT_EQ(printable("\xE4\xB8"), "\\xe4\\xb8");         // truncated sequence
  EXPECT_EQ(printable("abcdef", 3), "abc...");
}

// A LoRA adapter whose tensors have a type Qilin cannot dequantize once reached
// dequantize_row_ref's assertion (an abort); it is now an error naming the tensor and type.
TEST(HostileLora, UnreadableTensorTypesAreErrors) {
  const LlamaModel& model = tiny_model();
  const int64_t E = model.hparams().n_embd, r = 4;
  for (DType type : {DType::I8, DType::I32, DType::F64}) {
    const size_t esz = dtype_info(type).block_bytes;
    std::vector<uint8_t> a(E * r * esz, 0), b(r * E * esz, 0);
    GgufWriter w;
    w.set("general.architecture", GgufValue::of_string("llama"));
    w.set("general.type", GgufValue::of_string("adapter"));
    w.set("adapter.type", GgufValue::of_string("lora"));
    w.set("adapter.lora.alpha", GgufValue::of_f32(8));
    w.add_tensor("blk.0.attn_q.weight.lora_a", type, {E, r}, a.data(), a.size());
    w.add_tensor("blk.0.attn_q.weight.lora_b", type, {r, E}, b.data(), b.size());
    const std::string path = temp_dir() + "/adapter.gguf";
    ASSERT_TRUE(w.write(path).is_ok());
    auto ad = load_lora_adapter(path, model, 1.0f);
    ASSERT_FALSE(ad.is_ok()) << dtype_name(type);
    const std::string m = ad.status().message();
    EXPECT_NE(m.find("blk.0.attn_q.weight.lora_a"), std::string::npos) << m;
    EXPECT_NE(m.find(std::string("type ") + dtype_name(type)), std::string::npos) << m;
  }
}

// The model loader, quantize and merge go through the same check (GgufFile::check_readable).
TEST(HostileModel, UnreadableEmbeddingTypeIsAnError) {
  constexpr int64_t E = 64, V = 96;
  std::vector<int32_t> embd(E * V, 0);
  std::vector<float> norm(E, 1.0f);
  GgufWriter w;
  w.set("general.architecture", GgufValue::of_string("llama"));
  w.set("llama.embedding_length", GgufValue::of_u32(E));
  w.set("llama.block_count", GgufValue::of_u32(1));  // the embedding is checked first
  w.set("llama.attention.head_count", GgufValue::of_u32(4));
  w.set("llama.feed_forward_length", GgufValue::of_u32(96));
  w.add_tensor("token_embd.weight", DType::I32, {E, V}, embd.data(), embd.size() * 4);
  w.add_tensor("output_norm.weight", DType::F32, {E}, norm.data(), norm.size() * 4);
  const std::string dir = temp_dir();
  ASSERT_TRUE(w.write(dir + "/m.gguf").is_ok());
  auto m = LlamaModel::load(dir + "/m.gguf");
  ASSERT_FALSE(m.is_ok());
  EXPECT_NE(m.status().message().find("'token_embd.weight' has type I32"), std::string::npos)
      << m.status().message();

  auto f = GgufFile::open(dir + "/m.gguf");
  ASSERT_TRUE(f.is_ok());
  QuantizeOptions opt;
  opt.target = DType::Q8_0;
  auto q = quantize_gguf(**f, dir + "/out.gguf", opt);
  ASSERT_FALSE(q.is_ok());
  EXPECT_NE(q.status().message().find("has type I32, which qilin quantize cannot read"),
            std::string::npos)
      << q.status().message();
  EXPECT_NE(access((dir + "/out.gguf").c_str(), F_OK), 0) << "a failed quantize left its output";
}

// ---- fine-tuning checkpoints ----

std::vector<Example> tiny_data() {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int32_t> tok(0, 95);
  std::vector<Example> out(8);
  for (Example& e : out) {
    for (int i = 0; i < 10; ++i) e.tokens.push_back(tok(rng));
    e.targets.assign(e.tokens.begin() + 1, e.tokens.end());
    e.targets.push_back(-1);
  }
  return out;
}

FinetuneConfig tiny_config() {
  FinetuneConfig c;
  c.lora.rank = 4;
  c.steps = 2;
  c.warmup = 0;
  return c;
}

// Rewrites the GGUF at `in` to `out` with key `key` set to `value` (tensors copied).
void rewrite_with(const std::string& in, const std::string& out, const std::string& key,
                  GgufValue value) {
  auto f = GgufFile::open(in);
  ASSERT_TRUE(f.is_ok()) << f.status().message();
  GgufWriter w;
  for (const auto& [k, v] : (*f)->kvs()) w.set(k, k == key ? value : v);
  for (const GgufTensorInfo& t : (*f)->tensors()) {
    w.add_tensor(t.name, t.type, std::vector<int64_t>(t.ne, t.ne + t.n_dims), t.data, t.size);
  }
  ASSERT_TRUE(w.write(out).is_ok());
}

// step and cursor were cast to int64 unchecked: a cursor of 2^63 + 5 became negative and the
// next step indexed the training data out of bounds.
TEST(HostileCheckpoint, PositionsAreRangeChecked) {
  const std::string dir = temp_dir();
  {
    auto ft = Finetuner::create(tiny_model(), tiny_config(), tiny_data(), {});
    ASSERT_TRUE(ft.is_ok()) << ft.status().message();
    ASSERT_TRUE((*ft)->run(nullptr).is_ok());
    ASSERT_TRUE((*ft)->save_checkpoint(dir + "/good.ckpt").is_ok());
  }
  struct Case {
    const char* key;
    GgufValue value;
  } cases[] = {
      {"qilin.ft.cursor", GgufValue::of_u64((uint64_t{1} << 63) + 5)},
      {"qilin.ft.step", GgufValue::of_u64(~uint64_t{0})},
      {"qilin.ft.updates", GgufValue::of_u64(1000)},
      {"qilin.ft.skipped", GgufValue::of_u64(1000)},
      {"qilin.ft.loss_scale_clean", GgufValue::of_u64(uint64_t{1} << 40)},
      {"qilin.ft.loss_scale", GgufValue::of_f32(-1.0f)},
  };
  for (const Case& c : cases) {
    rewrite_with(dir + "/good.ckpt", dir + "/bad.ckpt", c.key, c.value);
    auto ft = Finetuner::create(tiny_model(), tiny_config(), tiny_data(), {});
    ASSERT_TRUE(ft.is_ok());
    Status st = (*ft)->load_checkpoint(dir + "/bad.ckpt");
    ASSERT_FALSE(st.is_ok()) << c.key;
    EXPECT_NE(st.message().find(c.key), std::string::npos) << st.message();
  }
  // The unmodified checkpoint still loads.
  auto ft = Finetuner::create(tiny_model(), tiny_config(), tiny_data(), {});
  ASSERT_TRUE(ft.is_ok());
  EXPECT_TRUE((*ft)->load_checkpoint(dir + "/good.ckpt").is_ok());
}

// A checkpoint tensor of an unreadable type is an error, not an assertion.
TEST(HostileCheckpoint, TensorTypesGoThroughTheOneCheck) {
  const std::string dir = temp_dir();
  {
    auto ft = Finetuner::create(tiny_model(), tiny_config(), tiny_data(), {});
    ASSERT_TRUE(ft.is_ok());
    ASSERT_TRUE((*ft)->save_checkpoint(dir + "/good.ckpt").is_ok());
  }
  auto f = GgufFile::open(dir + "/good.ckpt");
  ASSERT_TRUE(f.is_ok());
  GgufWriter w;
  for (const auto& [k, v] : (*f)->kvs()) w.set(k, v);
  for (const GgufTensorInfo& t : (*f)->tensors()) {
    // Same bytes, relabelled I32 (4 bytes an element, like F32).
    const DType type = t.name == "blk.0.attn_q.a" ? DType::I32 : t.type;
    w.add_tensor(t.name, type, std::vector<int64_t>(t.ne, t.ne + t.n_dims), t.data, t.size);
  }
  ASSERT_TRUE(w.write(dir + "/bad.ckpt").is_ok());
  auto ft = Finetuner::create(tiny_model(), tiny_config(), tiny_data(), {});
  ASSERT_TRUE(ft.is_ok());
  Status st = (*ft)->load_checkpoint(dir + "/bad.ckpt");
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("'blk.0.attn_q.a' has type I32"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace qilin
