// Training arithmetic around the gradients: AdamW (FP32 states, decoupled weight decay, as
// PyTorch's torch.optim.AdamW), global-norm gradient clipping, a warmup + cosine learning-rate
// schedule, and dynamic loss scaling for FP16 compute (skip a step whose unscaled gradients
// hold inf/NaN and lower the scale; raise it after a run of clean steps).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace qilin::train {

struct AdamWConfig {
  float lr = 1e-4f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float weight_decay = 0.0f;
};

// One parameter tensor's AdamW state.
struct AdamWState {
  std::vector<float> m, v;  // first and second moments, FP32
};

// p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p), with mhat = m / (1 - b1^t), vhat likewise,
// t = step (1-based). PyTorch order: decay first (p *= 1 - lr*wd), then the Adam update.
// m and v [n] are this tensor's moments (zero before the first step).
inline void adamw_step(float* p, const float* g, int64_t n, float* m, float* v, int64_t step,
                       const AdamWConfig& c, float lr) {
  const double bc1 = 1.0 - std::pow(static_cast<double>(c.beta1), static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(c.beta2), static_cast<double>(step));
  const float step_size = static_cast<float>(lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  for (int64_t i = 0; i < n; ++i) {
    p[i] *= 1.0f - lr * c.weight_decay;
    m[i] = c.beta1 * m[i] + (1.0f - c.beta1) * g[i];
    v[i] = c.beta2 * v[i] + (1.0f - c.beta2) * g[i] * g[i];
    const float denom = std::sqrt(v[i]) / bc2_sqrt + c.eps;
    p[i] -= step_size * m[i] / denom;
  }
}
inline void adamw_update(float* p, const float* g, int64_t n, AdamWState& st, int64_t step,
                         const AdamWConfig& c, float lr) {
  if (st.m.size() != static_cast<size_t>(n)) {
    st.m.assign(n, 0.0f);
    st.v.assign(n, 0.0f);
  }
  adamw_step(p, g, n, st.m.data(), st.v.data(), step, c, lr);
}

// Learning rate at `step` (0-based): linear warmup to peak over warmup steps, then cosine
// decay to min_lr at total steps.
inline float lr_at(int64_t step, int64_t warmup, int64_t total, float peak, float min_lr) {
  if (warmup > 0 && step < warmup) return peak * static_cast<float>(step + 1) / warmup;
  if (total <= warmup) return peak;
  const double t = std::min(1.0, static_cast<double>(step - warmup) / (total - warmup));
  return static_cast<float>(min_lr + 0.5 * (peak - min_lr) * (1.0 + std::cos(M_PI * t)));
}

// Global L2 norm over several gradient tensors; scales them down to max_norm when above.
// Returns the norm before clipping.
inline double clip_global_norm(const std::vector<std::pair<float*, int64_t>>& grads, double max_norm) {
  double ss = 0;
  for (const auto& [g, n] : grads) {
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(g[i]) * g[i];
  }
  const double norm = std::sqrt(ss);
  if (max_norm > 0 && norm > max_norm) {
    const float s = static_cast<float>(max_norm / (norm + 1e-6));
    for (const auto& [g, n] : grads) {
      for (int64_t i = 0; i < n; ++i) g[i] *= s;
    }
  }
  return norm;
}

// Dynamic loss scaling (DeepSpeed's and Megatron's rules): start at 2^16; after
// growth_interval consecutive clean steps double the scale; an overflowing step is skipped,
// and once `hysteresis` overflows have happened since the scale last grew, that overflow and
// every further one halves it (never below min_scale). Growing restores the hysteresis.
class LossScaler {
 public:
  explicit LossScaler(float initial = 65536.0f, int growth_interval = 1000, int hysteresis = 2,
                      float min_scale = 1.0f)
      : scale_(initial), growth_interval_(growth_interval), hysteresis_(hysteresis),
        min_scale_(min_scale), overflows_left_(hysteresis) {}
  float scale() const { return scale_; }
  // Divides the gradients by the scale; returns false (the step must be skipped) if any is
  // inf or NaN after unscaling, and updates the scale either way.
  bool unscale_and_check(const std::vector<std::pair<float*, int64_t>>& grads) {
    bool finite = true;
    const float inv = 1.0f / scale_;
    for (const auto& [g, n] : grads) {
      for (int64_t i = 0; i < n; ++i) {
        g[i] *= inv;
        if (!std::isfinite(g[i])) finite = false;
      }
    }
    return record(finite);
  }
  // Moves the scale after a step whose gradients were (not) all finite, as above; returns
  // finite. For callers that unscale and check themselves (data-parallel training checks
  // every rank's shard).
  bool record(bool finite) {
    if (finite) {
      if (++clean_ >= growth_interval_) {
        scale_ *= 2.0f;
        clean_ = 0;
        overflows_left_ = hysteresis_;
      }
      return true;
    }
    ++skipped_;
    clean_ = 0;
    overflows_left_ = std::max(overflows_left_ - 1, 0);
    if (overflows_left_ == 0) scale_ = std::max(min_scale_, scale_ * 0.5f);
    return false;
  }
  int64_t skipped() const { return skipped_; }
  // Everything that decides future scales, for checkpoints.
  struct State {
    float scale = 0;
    int clean = 0, overflows_left = 0;
    int64_t skipped = 0;
  };
  State state() const { return {scale_, clean_, overflows_left_, skipped_}; }
  void set_state(const State& s) {
    scale_ = s.scale;
    clean_ = s.clean;
    overflows_left_ = s.overflows_left;
    skipped_ = s.skipped;
  }

 private:
  float scale_;
  int growth_interval_;
  int hysteresis_;
  float min_scale_;
  int overflows_left_;
  int clean_ = 0;
  int64_t skipped_ = 0;
};

}  // namespace qilin::train
