// The global operator new replacement behind alloc_counter.h.
#include "alloc_counter.h"

#include <cstdlib>
#include <new>

namespace qilin::test {
std::atomic<bool> g_count_new{false};
std::atomic<long> g_new_calls{0};
}  // namespace qilin::test

// GCC cannot see that this delete pairs with the malloc in the new below, hence the pragma.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) {
  if (qilin::test::g_count_new.load(std::memory_order_relaxed)) ++qilin::test::g_new_calls;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

// The other forms, so every allocation pairs with the free() above (ASan checks the pairing).
void* operator new[](std::size_t n) { return ::operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  if (qilin::test::g_count_new.load(std::memory_order_relaxed)) ++qilin::test::g_new_calls;
  return std::malloc(n ? n : 1);
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept {
  return ::operator new(n, t);
}
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
