// What the HTTP server needs from the Engine, as an interface: the real Engine in `qilin serve`
// (EngineBackend), a scripted fake in the HTTP tests, which can then provoke every submit error
// and timing without a model running.
#pragma once

#include <algorithm>
#include <cstdint>

#include "engine/engine.h"

namespace qilin::server {

class Backend {
 public:
  virtual ~Backend() = default;
  // Same contract as Engine::submit / cancel / metrics.
  virtual SubmitResult submit(RequestParams params, EventFn on_event) = 0;
  virtual void cancel(RequestId id) = 0;
  virtual EngineMetrics metrics() const = 0;
  // The most tokens each of n choices may generate after an n_prompt-token prompt (what a
  // chat request without max_tokens gets); < 1 when the prompt alone does not fit.
  virtual int32_t max_new_tokens(int32_t n_prompt, int32_t n) const = 0;
};

class EngineBackend final : public Backend {
 public:
  explicit EngineBackend(Engine& engine) : engine_(engine), n_blocks_(engine.metrics().kv.total) {}
  SubmitResult submit(RequestParams params, EventFn on_event) override {
    return engine_.submit(std::move(params), std::move(on_event));
  }
  void cancel(RequestId id) override { engine_.cancel(id); }
  EngineMetrics metrics() const override { return engine_.metrics(); }
  // NOTE: mirrors Engine::submit's limits: prompt + max_tokens <= max_seq_len, and the blocks
  // of the request at full length (choices sharing the prompt's blocks) fit the pool.
  int32_t max_new_tokens(int32_t n_prompt, int32_t n) const override {
    const int64_t bs = engine_.config().block_size;
    int64_t m = int64_t{engine_.max_seq_len()} - n_prompt;
    auto need = [&](int64_t t) {
      return (n_prompt + t + bs - 1) / bs + (n - 1) * ((t + bs - 1) / bs + 1);
    };
    if (m >= 1 && need(m) > n_blocks_) {
      // need() grows with t: the largest t that fits, by bisection.
      int64_t lo = 0, hi = m;
      while (lo < hi) {
        const int64_t mid = (lo + hi + 1) / 2;
        if (need(mid) <= n_blocks_)
          lo = mid;
        else
          hi = mid - 1;
      }
      m = lo;
    }
    return static_cast<int32_t>(std::max<int64_t>(m, 0));
  }

 private:
  Engine& engine_;
  int64_t n_blocks_ = 0;
};

}  // namespace qilin::server
