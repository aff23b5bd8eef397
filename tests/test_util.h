// Shared helpers for tests that need the default model: they fail (never skip) when it is
// missing, and say how to fetch it.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <memory>
#include <string>

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

}  // namespace qilin::test
