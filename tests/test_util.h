// Shared helpers for tests that need the default model: they fail (never skip) when it is
// missing, and say how to fetch it.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "formats/gguf.h"
#include "quant/quantize.h"

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

// The default model's weights dequantized to F32 (the model quantizer at --type f32), written
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
  char dir[] = "/tmp/qilin-f32-XXXXXX";
  EXPECT_NE(mkdtemp(dir), nullptr);
  const std::string p = std::string(dir) + "/smollm2-f32.gguf";
  QuantizeOptions opt;
  opt.target = DType::F32;  // every tensor, the embedding table too (`qilin quantize --type f32`)
  auto st = quantize_gguf(**q, p, opt);
  EXPECT_TRUE(st.is_ok()) << st.status().message();
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
