// BlockManager: the logical side of the paged KV cache (PagedAttention). It owns the block
// tables, reference counts, copy-on-write, the prefix cache (full blocks named by a hash
// chained over their tokens and their predecessor's hash) and LRU eviction of cached blocks.
// It knows nothing about tensors: it says which physical block holds which positions and which
// block copies the caller must perform on the KvCache. "Does not fit" is an ordinary result.
// NOTE: a block is shared (reference count > 1) only while nobody writes into it: prefix hits
// are whole computed blocks, and the first append into a shared, partially filled block copies
// it first.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "core/block_copy.h"

namespace qilin {

using SeqId = int64_t;

enum class KvAlloc { Ok, OutOfBlocks };

struct KvAllocResult {
  KvAlloc status = KvAlloc::Ok;
  int32_t blocks_needed = 0;     // OutOfBlocks: blocks the operation needed
  int32_t blocks_available = 0;  // and what free plus evictable blocks could give
  bool ok() const { return status == KvAlloc::Ok; }
};

struct BlockManagerStats {
  int32_t total = 0;
  int32_t free = 0;    // never used, or released without a prefix-cache entry
  int32_t cached = 0;  // no owner, still a prefix-cache entry: reusable until evicted
  int32_t used = 0;    // at least one owner
  int32_t shared = 0;  // more than one owner
  int64_t slots_allocated = 0;  // used * block_size
  int64_t slots_filled = 0;     // slots of used blocks that hold a token (each physical slot once)
  int64_t prefix_query_tokens = 0;  // prompt tokens looked up by add_sequence, cumulative
  int64_t prefix_hit_tokens = 0;    // of which found in the cache
  int64_t evictions = 0;
  // Fraction of allocated KV slots holding no token (internal fragmentation).
  double waste() const {
    return slots_allocated ? 1.0 - static_cast<double>(slots_filled) / slots_allocated : 0.0;
  }
};

class BlockManager {
 public:
  BlockManager(int32_t n_blocks, int32_t block_size, bool prefix_caching = true);

  // Starts sequence `id` holding `prompt`. The longest run of leading full prompt blocks found
  // in the prefix cache is shared instead of allocated; *n_cached receives the tokens it covers
  // (their K/V are already in the cache: prefill starts there). At least the last prompt token
  // is always left to compute, since its logits are wanted. On OutOfBlocks nothing changes.
  KvAllocResult add_sequence(SeqId id, const int32_t* prompt, int32_t n, int32_t* n_cached);
  // Appends n tokens to a sequence: a new block whenever the last is full, and copy-on-write of
  // a shared, partially filled last block (appended to *copies, to perform before writing).
  // On OutOfBlocks nothing changes.
  KvAllocResult append(SeqId id, const int32_t* tokens, int32_t n, std::vector<BlockCopy>* copies);
  // The K/V of the sequence's first n tokens are now in the cache: its full blocks among them
  // become prefix-cache entries.
  void mark_computed(SeqId id, int32_t n);
  // `child` starts as a copy of `parent` sharing every block (parallel sampling, beams).
  void fork(SeqId parent, SeqId child);
  // Keeps the first n tokens of the sequence.
  void truncate(SeqId id, int32_t n);
  // Ends the sequence. Its blocks that hold prefix-cache entries stay cached (evictable, least
  // recently used first, the sequence's last block before its first); the others become free.
  void free(SeqId id);

  bool has(SeqId id) const { return seqs_.count(id) != 0; }
  const std::vector<int32_t>& block_table(SeqId id) const { return seq(id).table; }
  int32_t n_tokens(SeqId id) const { return static_cast<int32_t>(seq(id).tokens.size()); }
  int32_t n_computed(SeqId id) const { return seq(id).n_computed; }
  int32_t ref_count(int32_t block) const { return blocks_[block].ref; }
  bool is_cached_entry(int32_t block) const { return blocks_[block].registered; }
  int32_t block_size() const { return block_size_; }
  int32_t n_blocks() const { return static_cast<int32_t>(blocks_.size()); }
  int32_t n_sequences() const { return static_cast<int32_t>(seqs_.size()); }
  // Blocks that allocation can still obtain: free plus evictable.
  int32_t n_available() const { return static_cast<int32_t>(free_.size()) + n_lru_; }
  BlockManagerStats stats() const;
  // Capacity for a sequence of up to n tokens, so that growing it allocates nothing.
  void reserve(SeqId id, int32_t n);
  // Aborts (QILIN_ASSERT) if reference counts, lists or the hash index disagree with the
  // block tables. For tests; O(blocks + tokens).
  void check_invariants() const;

  // The chained hash of one full block.
  static uint64_t hash_block(uint64_t parent_hash, const int32_t* tokens, int32_t n);

 private:
  struct Block {
    int32_t ref = 0;
    int32_t fill = 0;          // slots written (for the waste figure and copy sizes)
    bool registered = false;   // a prefix-cache entry: full, computed, in index_
    uint64_t hash = 0;
    uint64_t parent_hash = 0;
    int32_t lru_prev = -1, lru_next = -1;  // evictable list (ref == 0 && registered)
    bool in_lru = false;
  };
  struct Seq {
    std::vector<int32_t> table;
    std::vector<int32_t> tokens;
    std::vector<uint64_t> hashes;  // chained hashes of the leading computed full blocks
    int32_t n_computed = 0;
  };

  const Seq& seq(SeqId id) const;
  Seq& seq(SeqId id);
  int32_t blocks_for(int32_t n_tokens) const { return (n_tokens + block_size_ - 1) / block_size_; }
  // Takes a block from the free stack, else evicts the least recently used cached block.
  int32_t take_block();
  void release_block(int32_t b);  // one owner fewer
  void unregister(int32_t b);
  void lru_push_back(int32_t b);
  void lru_remove(int32_t b);
  int32_t lookup(uint64_t hash, uint64_t parent_hash, const int32_t* tokens) const;

  int32_t block_size_;
  bool prefix_caching_;
  std::vector<Block> blocks_;
  std::vector<int32_t> block_tokens_;  // [n_blocks, block_size] tokens of registered blocks
  std::vector<int32_t> free_;          // stack, lowest id on top
  int32_t lru_head_ = -1, lru_tail_ = -1, n_lru_ = 0;
  // The prefix-cache index, hash -> registered block: open addressing with linear probing and
  // backward-shift deletion, sized once (2x the blocks), so registering a block while decoding
  // allocates nothing.
  int32_t index_find(uint64_t hash) const;
  void index_insert(uint64_t hash, int32_t block);
  void index_erase(uint64_t hash);
  std::vector<uint64_t> index_key_;
  std::vector<int32_t> index_block_;  // -1: empty
  int32_t index_size_ = 0;
  std::unordered_map<SeqId, Seq> seqs_;
  int64_t query_tokens_ = 0, hit_tokens_ = 0, evictions_ = 0;
};

}  // namespace qilin
