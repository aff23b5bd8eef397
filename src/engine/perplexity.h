// Perplexity over a token stream, llama.cpp's llama-perplexity method: non-overlapping
// windows of n_ctx tokens, the first token of each window replaced by BOS (when the model
// adds one), and only the second half of each window scored (each scored token sees at least
// n_ctx / 2 tokens of context). Reports the running estimate per window and the final
// perplexity with its standard error.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/llama.h"
#include "model/tokenizer.h"
#include "qilin/status.h"

namespace qilin {

struct PerplexityOptions {
  int32_t n_ctx = 512;    // window length in tokens
  int32_t n_batch = 512;  // tokens per forward call
  int32_t n_chunks = -1;  // windows to evaluate (-1: all that fit)
  int n_threads = 1;
  bool flash_attn = false;
  KvType kv_type = kDefaultKvType;  // --kv-type: the quality cost of a cache format shows here
};

struct PerplexityResult {
  std::vector<double> running_ppl;  // estimate after each window
  double ppl = 0;
  double ppl_stderr = 0;  // standard error of the estimate (as llama.cpp prints it)
  double mean_nll = 0;    // mean negative log-likelihood per scored token (nats)
  int64_t n_scored = 0;   // tokens scored
  int32_t n_chunks = 0;
};

// progress(done, total, running_ppl) after each window; may be empty.
Result<PerplexityResult> perplexity(const LlamaModel& model, const Tokenizer& tok,
                                    std::vector<int32_t> tokens, const PerplexityOptions& opt,
                                    const std::function<void(int, int, double)>& progress = {});

}  // namespace qilin
