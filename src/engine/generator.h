// Generator: one sequence's life on one model: a block table over the KV cache, prompt
// processing in chunks of n_batch, then token-by-token decoding. generate() adds sampling,
// stop conditions (EOS, stop strings, max tokens), streaming and timings on top.
// NOTE: after warm-up, decoding a token allocates nothing: Batch, block table, workspace and
// text buffers keep their capacity.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/thread_pool.h"
#include "engine/sampler.h"
#include "kv/block_manager.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "ops/batch.h"
#include "ops/kv_cache.h"
#include "qilin/status.h"

namespace qilin {

struct GeneratorConfig {
  int32_t n_ctx = 4096;     // tokens the sequence may hold
  int32_t n_batch = 512;    // prompt tokens per forward call
  int n_threads = 1;
  int32_t block_size = 16;
  // Full blocks of K/V stay cached after reset() (until their slots are needed) and a later
  // prompt that starts with the same tokens skips their prefill. Off for benchmarks that
  // re-feed one prompt.
  bool prefix_cache = true;
  // --attn flash|naive: FlashAttention (row-blocked tiles, split-KV decode; at least as fast
  // as the two-pass kernel from 512 to 8k tokens and in decode) or the naive two-pass kernel.
  bool flash_attn = true;
  KvType kv_type = kDefaultKvType;  // --kv-type: the KV cache's element format
};

class Generator {
 public:
  static Result<std::unique_ptr<Generator>> create(const LlamaModel& model,
                                                   const GeneratorConfig& config);

  // Appends tokens to the sequence and runs them; the last one's logits become logits().
  // Fails, changing nothing, if they would not fit in the context.
  Status feed(const int32_t* tokens, int32_t n);
  Status feed(const std::vector<int32_t>& tokens) {
    return feed(tokens.data(), static_cast<int32_t>(tokens.size()));
  }
  const float* logits() const { return last_logits_; }  // [n_vocab], valid after feed()
  int32_t n_past() const { return n_past_; }
  // Tokens the sequence holds, in order (what the cache contains).
  const std::vector<int32_t>& tokens() const { return tokens_; }
  // Prompt tokens whose prefill the prefix cache saved, since creation.
  int64_t prefix_hit_tokens() const { return blocks_->stats().prefix_hit_tokens; }
  const BlockManager& blocks() const { return *blocks_; }
  // Keeps the first n tokens and forgets the rest (their slots are overwritten later).
  void truncate(int32_t n);
  int32_t n_ctx() const { return cfg_.n_ctx; }
  void reset();  // forgets the sequence and frees its blocks
  ThreadPool& pool() { return *pool_; }
  const LlamaModel& model() const { return model_; }

 private:
  Generator(const LlamaModel& model, const GeneratorConfig& config);
  const LlamaModel& model_;
  GeneratorConfig cfg_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<KvCache> kv_;
  std::unique_ptr<BlockManager> blocks_;  // one sequence, kSeq
  std::vector<BlockCopy> copies_;
  Workspace ws_;
  Batch batch_;
  int32_t n_past_ = 0;
  std::vector<int32_t> tokens_;  // [n_past]
  const float* last_logits_ = nullptr;
};

struct GenerateOptions {
  int32_t max_tokens = 128;            // < 0: until EOS or the context is full
  std::vector<std::string> stop;       // stop strings (not printed)
  bool ignore_eos = false;
};

struct GenerateStats {
  int32_t n_prompt = 0;
  double prompt_ms = 0;
  int32_t n_generated = 0;
  double gen_ms = 0;
  std::string stop_reason;  // "eos", "stop", "length", "context", "cancelled"
};

// Feeds `prompt` (after what the generator already holds), then samples until a stop
// condition. on_text receives printable text as soon as it is final (held back while it could
// still be the start of a stop string or an incomplete UTF-8 sequence); returning false stops.
// The last sampled token is fed too, so a chat can continue from the generator's state.
Result<GenerateStats> generate(Generator& gen, const Tokenizer& tok, Sampler& sampler,
                               const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                               const std::function<bool(std::string_view)>& on_text);

}  // namespace qilin
