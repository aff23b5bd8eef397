// Counts global operator new calls while armed, to prove hot paths do not allocate.
// The replacement (alloc_counter.cc) is program-wide; it only counts and forwards to malloc.
#pragma once

#include <atomic>

namespace qilin::test {
extern std::atomic<bool> g_count_new;
extern std::atomic<long> g_new_calls;

// Number of operator new calls made while running fn.
template <typename F>
long count_allocations(F&& fn) {
  g_new_calls = 0;
  g_count_new = true;
  fn();
  g_count_new = false;
  return g_new_calls.load();
}
}  // namespace qilin::test
