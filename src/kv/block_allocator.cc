// BlockAllocator: a stack of free block ids. See block_allocator.h.
#include "kv/block_allocator.h"

#include "core/assert.h"

namespace qilin {

BlockAllocator::BlockAllocator(int32_t n_blocks, int32_t block_size)
    : n_blocks_(n_blocks), block_size_(block_size) {
  QILIN_ASSERT(n_blocks > 0 && block_size > 0);
  free_.reserve(n_blocks);
  // Lowest ids on top so a fresh sequence gets blocks 0, 1, 2, ... (predictable in tests).
  for (int32_t b = n_blocks - 1; b >= 0; --b) free_.push_back(b);
}

bool BlockAllocator::reserve(std::vector<int32_t>& table, int32_t n_tokens) {
  const int64_t need = (static_cast<int64_t>(n_tokens) + block_size_ - 1) / block_size_;
  const int64_t extra = need - static_cast<int64_t>(table.size());
  if (extra <= 0) return true;
  if (extra > static_cast<int64_t>(free_.size())) return false;
  for (int64_t i = 0; i < extra; ++i) {
    table.push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void BlockAllocator::release(std::vector<int32_t>& table) {
  for (int32_t b : table) {
    QILIN_ASSERT(b >= 0 && b < n_blocks_);
    free_.push_back(b);
  }
  QILIN_ASSERT(static_cast<int32_t>(free_.size()) <= n_blocks_);
  table.clear();
}

}  // namespace qilin
