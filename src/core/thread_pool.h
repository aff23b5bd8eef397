// A fixed pool of worker threads for data-parallel operators. run(fn) calls fn(ith, nth) on
// every thread (the caller is thread 0) and returns when all are done. Workers spin briefly
// between operators (ops come back-to-back during a forward pass), then sleep.
// NOTE: run() is not reentrant and must be called from one thread at a time.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace qilin {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }
  // fn must not throw. A function_ref-like pointer pair: no allocation per call.
  template <typename F>
  void run(F&& fn) {
    auto thunk = [](void* ctx, int ith, int nth) { (*static_cast<F*>(ctx))(ith, nth); };
    run_raw(thunk, &fn);
  }

  // Physical cores of this machine (falls back to hardware_concurrency).
  static int physical_cores();

 private:
  using Thunk = void (*)(void*, int, int);
  void run_raw(Thunk thunk, void* ctx);
  void worker(int ith);

  int n_threads_;
  std::vector<std::thread> threads_;
  Thunk thunk_ = nullptr;
  void* ctx_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<int> sleepers_{0};
};

// Splits [0, n) into nth nearly equal contiguous ranges; returns thread ith's range.
inline void split_range(int64_t n, int ith, int nth, int64_t* begin, int64_t* end) {
  const int64_t per = n / nth, rem = n % nth;
  *begin = ith * per + (ith < rem ? ith : rem);
  *end = *begin + per + (ith < rem ? 1 : 0);
}

// Runs fn(t) for every row t < n: split across the pool for prompt-sized batches (the
// per-row ops would otherwise be serial work between parallel matmuls), inline for the few
// rows of a decode step, where waking the workers would cost more than the work.
template <typename F>
void for_rows(ThreadPool& pool, int32_t n, F&& fn) {
  if (n < 16 || pool.size() == 1) {
    for (int32_t t = 0; t < n; ++t) fn(t);
    return;
  }
  pool.run([&](int ith, int nth) {
    int64_t t0, t1;
    split_range(n, ith, nth, &t0, &t1);
    for (int64_t t = t0; t < t1; ++t) fn(static_cast<int32_t>(t));
  });
}
}  // namespace qilin
