// Shared helpers for tests that need the default model: they fail (never skip) when it is
// missing, and say how to fetch it.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

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

}  // namespace qilin::test
