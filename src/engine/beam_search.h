// Beam search over the paged KV cache: every beam is a sequence of one BlockManager. The
// prompt is computed once; beams fork from it and from each other, sharing all full blocks,
// and a beam's first write into a shared, partially filled block copies that block only.
// Each step decodes all live beams in one batch.
#pragma once

#include <cstdint>
#include <vector>

#include "model/llama.h"
#include "model/tokenizer.h"
#include "qilin/status.h"

namespace qilin {

struct BeamSearchOptions {
  int32_t n_beams = 4;
  int32_t max_tokens = 64;     // generated tokens per hypothesis at most
  float length_penalty = 1.0f;  // score = sum of log-probabilities / length^length_penalty
  bool ignore_eos = false;
  int32_t n_threads = 1;
  int32_t n_batch = 512;       // prompt tokens per forward call
  int32_t block_size = 16;
  bool flash_attn = true;
  KvType kv_type = kDefaultKvType;
};

struct BeamHypothesis {
  std::vector<int32_t> tokens;  // generated tokens (an end-of-generation token not included)
  double logprob = 0;           // sum of the tokens' log-probabilities (the EOS's included)
  double score = 0;             // logprob / length^length_penalty
  bool finished = false;        // ended with an end-of-generation token
};

struct BeamSearchStats {
  int32_t steps = 0;
  int32_t block_copies = 0;     // copy-on-write copies performed
  int32_t peak_blocks = 0;      // KV blocks in use at most (shared blocks counted once)
  int32_t unshared_blocks = 0;  // what the same beams would hold with no sharing, at that peak
};

// Best hypotheses first (at most n_beams). Errors name the option at fault.
Result<std::vector<BeamHypothesis>> beam_search(const LlamaModel& model, const Tokenizer& tok,
                                                const std::vector<int32_t>& prompt,
                                                const BeamSearchOptions& opt,
                                                BeamSearchStats* stats = nullptr);

}  // namespace qilin
