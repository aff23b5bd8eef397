// Sampler stages. Candidates are a list of token ids (cand_) that each stage shrinks in place;
// logits_ holds the (penalised, later temperature-scaled) logit of every id.
// NOTE: ties are broken by lower token id everywhere, so results never depend on how
// std::nth_element or std::sort happen to order equal keys.

#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/assert.h"

namespace qilin {

Status SamplingParams::validate() const {
  if (std::isnan(temperature) || std::isinf(temperature)) {
    return errorf("temperature must be a finite number, got %g", double(temperature));
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return errorf("top_p must be in (0, 1], got %g", double(top_p));
  }
  if (!(min_p >= 0.0f && min_p <= 1.0f)) {
    return errorf("min_p must be in [0, 1], got %g", double(min_p));
  }
  if (!(repeat_penalty > 0.0f) || std::isinf(repeat_penalty)) {
    return errorf("repeat_penalty must be a finite number > 0, got %g", double(repeat_penalty));
  }
  if (repeat_last_n < 0) {
    return errorf("repeat_last_n must be >= 0, got %d", int(repeat_last_n));
  }
  if (!std::isfinite(frequency_penalty)) {
    return errorf("frequency_penalty must be a finite number, got %g", double(frequency_penalty));
  }
  if (!std::isfinite(presence_penalty)) {
    return errorf("presence_penalty must be a finite number, got %g", double(presence_penalty));
  }
  return Status::ok();
}

Sampler::Sampler(const SamplingParams& params, int32_t n_vocab)
    : params_(params),
      n_vocab_(n_vocab),
      rng_(params.seed),
      logits_(n_vocab),
      cand_(n_vocab),
      probs_(n_vocab),
      ring_(params.repeat_last_n),
      counts_(n_vocab, 0) {
  QILIN_ASSERT(n_vocab > 0);
  QILIN_ASSERT(params.validate().is_ok());
}

void Sampler::reset() {
  rng_.seed(params_.seed);
  std::fill(counts_.begin(), counts_.end(), 0);
  ring_head_ = 0;
  ring_size_ = 0;
}

void Sampler::accept(int32_t token) {
  QILIN_ASSERT(token >= 0 && token < n_vocab_);
  const int32_t n = params_.repeat_last_n;
  if (n == 0) return;
  if (ring_size_ == n) {  // full: the oldest entry leaves the window
    counts_[ring_[ring_head_]]--;
    ring_[ring_head_] = token;
    ring_head_ = (ring_head_ + 1) % n;
  } else {
    ring_[(ring_head_ + ring_size_) % n] = token;
    ring_size_++;
  }
  counts_[token]++;
}

void Sampler::apply_penalties() {
  const SamplingParams& p = params_;
  if (ring_size_ == 0) return;
  if (p.repeat_penalty == 1.0f && p.frequency_penalty == 0.0f && p.presence_penalty == 0.0f) {
    return;
  }
  // Each distinct token in the window is penalised once. The ring may hold a token many times,
  // so its count is negated after the first visit to mark it done, then restored; this needs
  // no extra buffer and touches only the window, never the whole vocabulary.
  for (int32_t i = 0; i < ring_size_; ++i) {
    const int32_t t = ring_[i];
    const int32_t count = counts_[t];
    if (count <= 0) continue;
    float& l = logits_[t];
    // Dividing a negative logit would raise its probability, hence the two cases.
    l = l <= 0.0f ? l * p.repeat_penalty : l / p.repeat_penalty;
    l -= float(count) * p.frequency_penalty + p.presence_penalty;
    counts_[t] = -count;
  }
  for (int32_t i = 0; i < ring_size_; ++i) {
    const int32_t t = ring_[i];
    if (counts_[t] < 0) counts_[t] = -counts_[t];
  }
}

namespace {

// Order for "best first": larger logit, then lower id.
struct ByLogitDesc {
  const float* logits;
  bool operator()(int32_t a, int32_t b) const {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  }
};

// exp(l - max) that stays sane when max is infinite: the maximum always weighs 1, so +inf
// logits split the mass among themselves and an all -inf row becomes uniform.
inline double weight(float l, float max) {
  return l == max ? 1.0 : std::exp(double(l) - double(max));
}

}  // namespace

void Sampler::sort_candidates() {
  if (sorted_) return;
  std::sort(cand_.begin(), cand_.begin() + n_cand_, ByLogitDesc{logits_.data()});
  sorted_ = true;
}

void Sampler::top_k(int32_t k) {
  if (k <= 0 || k >= n_cand_) return;
  // Selecting the k best and sorting only those avoids sorting the whole vocabulary.
  ByLogitDesc cmp{logits_.data()};
  std::nth_element(cand_.begin(), cand_.begin() + k, cand_.begin() + n_cand_, cmp);
  std::sort(cand_.begin(), cand_.begin() + k, cmp);
  n_cand_ = k;
  sorted_ = true;
}

void Sampler::top_p(float p) {
  if (p >= 1.0f || n_cand_ <= 1) return;
  sort_candidates();
  const float max = logits_[cand_[0]];
  double sum = 0.0;
  for (int32_t i = 0; i < n_cand_; ++i) {
    probs_[i] = weight(logits_[cand_[i]], max);
    sum += probs_[i];
  }
  // Keep the shortest prefix whose probability mass reaches p (at least one token).
  double cum = 0.0;
  for (int32_t i = 0; i < n_cand_; ++i) {
    cum += probs_[i] / sum;
    if (cum >= double(p)) {
      n_cand_ = i + 1;
      return;
    }
  }
}

void Sampler::min_p(float p) {
  if (p <= 0.0f || n_cand_ <= 1) return;
  float max = logits_[cand_[0]];
  if (!sorted_) {
    for (int32_t i = 1; i < n_cand_; ++i) max = std::max(max, logits_[cand_[i]]);
  }
  // prob_i >= p * prob_max  <=>  exp(l_i - l_max) >= p; compaction keeps the order.
  int32_t kept = 0;
  for (int32_t i = 0; i < n_cand_; ++i) {
    const int32_t t = cand_[i];
    if (weight(logits_[t], max) >= double(p)) cand_[kept++] = t;
  }
  n_cand_ = kept;  // never 0: the maximum always has weight 1 >= p
}

double Sampler::uniform01() {
  // std::uniform_real_distribution is allowed to differ between standard libraries; taking the
  // top 53 bits ourselves keeps a seed's sequence identical everywhere.
  return double(rng_() >> 11) * 0x1.0p-53;
}

int32_t Sampler::pick() {
  float max = -std::numeric_limits<float>::infinity();
  for (int32_t i = 0; i < n_cand_; ++i) max = std::max(max, logits_[cand_[i]]);
  double sum = 0.0;
  for (int32_t i = 0; i < n_cand_; ++i) {
    probs_[i] = weight(logits_[cand_[i]], max);
    sum += probs_[i];
  }
  for (int32_t i = 0; i < n_cand_; ++i) probs_[i] /= sum;  // kept for candidate_probs()
  const double u = uniform01();
  double cum = 0.0;
  for (int32_t i = 0; i < n_cand_; ++i) {
    cum += probs_[i];
    if (u < cum) return cand_[i];
  }
  // Rounding can leave the total just below u; the last candidate with weight owns that gap.
  for (int32_t i = n_cand_ - 1; i > 0; --i) {
    if (probs_[i] > 0.0) return cand_[i];
  }
  return cand_[0];
}

float Sampler::logprobs(const float* logits, int32_t token, std::span<TokenLogprob> top,
                        int32_t* n_top) const {
  QILIN_ASSERT(token >= 0 && token < n_vocab_);
  QILIN_ASSERT(top.size() <= size_t(kMaxTopLogprobs));
  // NOTE: the same operations in the same order as the engine's former per-token code, so
  // reported values stay bit-identical: a float maximum (std::max_element), the sum in double.
  const float mx = *std::max_element(logits, logits + n_vocab_);
  double sum = 0;
  for (int32_t i = 0; i < n_vocab_; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  const double lse = mx + std::log(sum);
  // Partial selection: top[0, n) stays sorted best first. Ids arrive in increasing order, so a
  // newcomer beats an equal logit never, a smaller one always: a strict > decides.
  const int32_t k = static_cast<int32_t>(top.size());
  int32_t n = 0;
  for (int32_t i = 0; i < n_vocab_ && k > 0; ++i) {
    const float v = logits[i];
    if (std::isnan(v)) continue;
    if (n == k && !(v > logits[top[k - 1].token])) continue;
    int32_t j = n < k ? n++ : k - 1;
    for (; j > 0 && v > logits[top[j - 1].token]; --j) top[j] = top[j - 1];
    top[j].token = i;
  }
  for (int32_t j = 0; j < n; ++j) top[j].logprob = static_cast<float>(logits[top[j].token] - lse);
  *n_top = n;
  return static_cast<float>(logits[token] - lse);
}

int32_t Sampler::sample(const float* logits) {
  const SamplingParams& p = params_;
  const bool penalties = ring_size_ > 0 && (p.repeat_penalty != 1.0f || p.frequency_penalty != 0.0f ||
                                            p.presence_penalty != 0.0f);
  if (p.temperature <= 0.0f && !penalties) {
    // Greedy without penalties: one pass over the row, no working copy (a serving step samples
    // every sequence on one thread while the others wait). The same choice as below: NaN never
    // wins (comparisons with it are false), the lowest id wins ties (strict >).
    int32_t best = kNoToken;
    float best_v = 0.0f;
    for (int32_t t = 0; t < n_vocab_; ++t) {
      const float v = logits[t];
      if (v > best_v || (best == kNoToken && !std::isnan(v))) {
        best = t;
        best_v = v;
      }
    }
    sorted_ = false;
    n_cand_ = best == kNoToken ? 0 : 1;
    cand_[0] = best;
    probs_[0] = 1.0;
    return best;
  }
  std::memcpy(logits_.data(), logits, sizeof(float) * size_t(n_vocab_));
  apply_penalties();

  // NaN compares false with everything, so it would poison sorting and the softmax: drop it.
  n_cand_ = 0;
  for (int32_t t = 0; t < n_vocab_; ++t) {
    if (!std::isnan(logits_[t])) cand_[n_cand_++] = t;
  }
  sorted_ = false;
  if (n_cand_ == 0) return kNoToken;

  if (p.temperature <= 0.0f) {
    int32_t best = cand_[0];
    for (int32_t i = 1; i < n_cand_; ++i) {
      if (logits_[cand_[i]] > logits_[best]) best = cand_[i];  // strict: lowest id wins ties
    }
    cand_[0] = best;
    probs_[0] = 1.0;
    n_cand_ = 1;
    return best;
  }

  top_k(p.top_k);
  top_p(p.top_p);
  min_p(p.min_p);
  for (int32_t i = 0; i < n_cand_; ++i) logits_[cand_[i]] /= p.temperature;
  return pick();
}

}  // namespace qilin
