// The cost of one ThreadPool::run() (wake the workers, run an empty job, wait for all): the
// synchronisation every operator of a forward pass pays. A decode step of SmolLM2-135M runs
// ~150 of them, so this must stay at a few microseconds against ~3 ms of work per token.
#include <benchmark/benchmark.h>

#include <atomic>

#include "core/thread_pool.h"

namespace {

void BM_ThreadPoolRun(benchmark::State& state) {
  qilin::ThreadPool pool(static_cast<int>(state.range(0)));
  std::atomic<int> sink{0};
  for (auto _ : state) {
    pool.run([&](int ith, int) { sink.fetch_add(ith, std::memory_order_relaxed); });
  }
  benchmark::DoNotOptimize(sink.load());
  state.counters["per_run"] = benchmark::Counter(
      static_cast<double>(state.iterations()), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_ThreadPoolRun)->Arg(1)->Arg(2)->UseRealTime();

// A realistic op: each thread sums its half of a 576x1536-float buffer (what a small matmul
// touches), to show the synchronisation against the work it separates.
void BM_ThreadPoolSmallOp(benchmark::State& state) {
  qilin::ThreadPool pool(static_cast<int>(state.range(0)));
  std::vector<float> buf(576 * 1536, 1.0f);
  std::vector<float> part(pool.size() * 16);
  for (auto _ : state) {
    pool.run([&](int ith, int nth) {
      int64_t b, e;
      qilin::split_range(static_cast<int64_t>(buf.size()), ith, nth, &b, &e);
      float s = 0;
      for (int64_t i = b; i < e; ++i) s += buf[i];
      part[ith * 16] = s;
    });
    benchmark::DoNotOptimize(part.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(buf.size() * sizeof(float)));
}
BENCHMARK(BM_ThreadPoolSmallOp)->Arg(1)->Arg(2)->UseRealTime();

}  // namespace
