// Shared helpers for tests that need the default model: they fail (never skip) when it is
// missing, and say how to fetch it.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "cpu/quants.h"
#include "formats/gguf.h"

#include "model/llama.h"
#include "model/tokenizer.h"

namespace qilin::test {

inline std::string default_model_path() {
  return std::string(QILIN_MODEL_DIR) + "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// Use as: ASSERT_TRUE(model_present()) << ...; the message names the fix.
inline ::testing::AssertionResult model_present() {
  const std::string p = default_model_path();
  if (access(p.c_str(), R_OK) == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "model " << p << " is missing: run scripts/fetch_model.sh";
}

// The default model and its tokenizer, loaded once per fixture. Use as
// ASSERT_NO_FATAL_FAILURE(load_default(&model_, &tok_)).
inline void load_default(std::unique_ptr<LlamaModel>* model, std::unique_ptr<Tokenizer>* tok) {
  ASSERT_TRUE(model_present());
  auto m = LlamaModel::load(default_model_path());
  ASSERT_TRUE(m.is_ok()) << m.status().message();
  *model = std::move(*m);
  auto t = Tokenizer::from_gguf((*model)->gguf());
  ASSERT_TRUE(t.is_ok()) << t.status().message();
  *tok = std::move(*t);
}

// The default model's weights dequantized to F32 (our dequantizer and GGUF writer), written
// once per test process to a temporary folder and removed at exit. With F32 weights nothing
// re-quantizes activations, so differently batched runs agree to float rounding (~1e-6)
// instead of the ~1 logit that 8-bit activation rounding can amplify last-bit differences to.
// Returns "" (after a failed assertion) when it cannot be made.
inline std::string f32_model_path() {
  static std::string path;
  if (!path.empty()) return path;
  EXPECT_TRUE(model_present());
  auto q = GgufFile::open(default_model_path());
  EXPECT_TRUE(q.is_ok()) << q.status().message();
  if (!q.is_ok()) return "";
  GgufWriter w;
  for (const auto& [key, value] : (*q)->kvs()) {
    w.set(key, key == "general.file_type" ? GgufValue::of_u32(0) : value);
  }
  std::vector<std::vector<float>> data;
  data.reserve((*q)->tensors().size());
  for (const GgufTensorInfo& t : (*q)->tensors()) {
    const int64_t n_row = t.ne[0], n_rows = t.n_elements() / t.ne[0];
    std::vector<float>& d = data.emplace_back(t.n_elements());
    for (int64_t r = 0; r < n_rows; ++r) {
      dequantize_row_ref(t.type, t.data + r * row_bytes(t.type, n_row), d.data() + r * n_row,
                         n_row);
    }
    w.add_tensor(t.name, DType::F32, std::vector<int64_t>(t.ne, t.ne + t.n_dims), d.data(),
                 d.size() * sizeof(float));
  }
  char dir[] = "/tmp/qilin-f32-XXXXXX";
  EXPECT_NE(mkdtemp(dir), nullptr);
  const std::string p = std::string(dir) + "/smollm2-f32.gguf";
  Status st = w.write(p);
  EXPECT_TRUE(st.is_ok()) << st.message();
  if (!st.is_ok()) return "";
  path = p;
  static std::string* cleanup = &path;
  std::atexit([] {
    unlink(cleanup->c_str());
    rmdir(cleanup->substr(0, cleanup->rfind('/')).c_str());
  });
  return path;
}

}  // namespace qilin::test
