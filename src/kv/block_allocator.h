// A fixed pool of KV blocks handed out to sequences through per-sequence block tables.
// This is the simple allocator of the first slice: a free list, no sharing. PagedAttention's
// BlockManager (reference counts, copy-on-write, prefix hashing) replaces it behind the same
// notion of a block table.
#pragma once

#include <cstdint>
#include <vector>

namespace qilin {

class BlockAllocator {
 public:
  BlockAllocator(int32_t n_blocks, int32_t block_size);

  int32_t block_size() const { return block_size_; }
  int32_t n_blocks() const { return n_blocks_; }
  int32_t n_free() const { return static_cast<int32_t>(free_.size()); }

  // Grows `table` so that it covers n_tokens positions. Returns false, changing nothing, when
  // the pool has too few free blocks: an ordinary outcome the caller handles.
  bool reserve(std::vector<int32_t>& table, int32_t n_tokens);
  // Returns every block of `table` to the pool and clears it.
  void release(std::vector<int32_t>& table);

 private:
  int32_t n_blocks_;
  int32_t block_size_;
  std::vector<int32_t> free_;  // stack of free block ids
};

}  // namespace qilin
