// Sampler: turns one row of logits into a token through a fixed chain of small stages,
// penalties -> top-k -> top-p -> min-p -> temperature -> pick, with llama.cpp's semantics.
// It also reports log-probabilities under the model's own distribution (logprobs()).
// NOTE: all buffers are sized in the constructor; sample(), accept() and logprobs() never
// allocate.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "qilin/status.h"

namespace qilin {

struct SamplingParams {
  float temperature = 0.8f;  // <= 0: greedy (argmax after penalties); other stages skipped
  int32_t top_k = 40;        // <= 0 disables
  float top_p = 0.95f;       // in (0, 1]; 1 disables
  float min_p = 0.05f;       // in [0, 1]; 0 disables
  // Penalties look at the last repeat_last_n accepted tokens (0 disables all three).
  float repeat_penalty = 1.0f;     // > 0; 1 disables. Divides positive logits, multiplies negative.
  int32_t repeat_last_n = 64;      // >= 0
  float frequency_penalty = 0.0f;  // logit -= count * frequency_penalty
  float presence_penalty = 0.0f;   // logit -= presence_penalty if count > 0
  uint64_t seed = 0xC0FFEE;

  // Names the first bad field and its value, e.g. "top_p must be in (0, 1], got 1.5".
  Status validate() const;
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;  // natural log, of the model's distribution before sampling transforms
};

class Sampler {
 public:
  // The most alternatives logprobs() reports (OpenAI's top_logprobs limit).
  static constexpr int32_t kMaxTopLogprobs = 20;

  // Returned by sample() when no token can be picked: every logit is NaN. Callers must treat
  // it as a model failure (stop the request with an error), never feed it to the tokenizer.
  static constexpr int32_t kNoToken = -1;

  // params must be valid (validate() is asserted); n_vocab > 0.
  Sampler(const SamplingParams& params, int32_t n_vocab);

  // logits: [n_vocab], left unchanged. Deterministic for a given seed, history and logits.
  // NaN logits are never picked; +inf logits share all the probability; if every logit is
  // -inf they are treated as equal. Returns kNoToken only when every logit is NaN.
  int32_t sample(const float* logits);

  // Records a generated (or prompt) token for the penalties' window of the last repeat_last_n.
  void accept(int32_t token);

  // Log-probabilities under the softmax of the raw logits (no penalties, no temperature):
  // returns token's, and writes the top.size() (<= kMaxTopLogprobs) most likely tokens into
  // top, best first (larger logit, then lower id); NaN logits are never among them, so fewer
  // are written when fewer are not NaN. *n_top receives how many. logits: [n_vocab].
  // One pass for the log-sum-exp and one partial selection into top; allocates nothing.
  float logprobs(const float* logits, int32_t token, std::span<TokenLogprob> top,
                 int32_t* n_top) const;

  // Clears the penalty history and reseeds the generator with params.seed.
  void reset();

  // The tokens the last sample() call chose among and the probability each had, best first
  // when a sorting stage ran (else in id order). For logprobs, diagnostics and tests. Greedy
  // leaves one candidate with probability 1; kNoToken leaves none.
  std::span<const int32_t> candidates() const { return {cand_.data(), size_t(n_cand_)}; }
  std::span<const double> candidate_probs() const { return {probs_.data(), size_t(n_cand_)}; }

  const SamplingParams& params() const { return params_; }
  int32_t n_vocab() const { return n_vocab_; }

 private:
  void apply_penalties();
  void top_k(int32_t k);
  void sort_candidates();
  void top_p(float p);
  void min_p(float p);
  int32_t pick();
  double uniform01();  // in [0, 1), 53 random bits; same on every standard library

  SamplingParams params_;
  int32_t n_vocab_;
  std::mt19937_64 rng_;

  std::vector<float> logits_;  // [n_vocab] working copy: penalties and temperature land here
  std::vector<int32_t> cand_;  // [n_vocab] candidate ids; only the first n_cand_ are live
  int32_t n_cand_ = 0;
  bool sorted_ = false;        // cand_[0, n_cand_) ordered by logit desc, then id asc
  std::vector<double> probs_;  // [n_vocab] softmax over cand_[0, n_cand_) (scratch before pick)

  std::vector<int32_t> ring_;  // [repeat_last_n] last accepted tokens, oldest at ring_head_
  int32_t ring_head_ = 0;
  int32_t ring_size_ = 0;
  std::vector<int32_t> counts_;  // [n_vocab] occurrences of each token in ring_
};

}  // namespace qilin
