// BlockManager: block tables, reference counts, copy-on-write, prefix cache, LRU eviction.
// See block_manager.h.
#include "kv/block_manager.h"

#include <algorithm>
#include <cstring>

#include "core/assert.h"

namespace qilin {

namespace {
// SplitMix64's finalizer: a full-avalanche 64-bit mix.
uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}
}  // namespace

uint64_t BlockManager::hash_block(uint64_t parent_hash, const int32_t* tokens, int32_t n) {
  uint64_t h = mix64(parent_hash ^ 0x9e3779b97f4a7c15ull);
  for (int32_t i = 0; i < n; ++i) h = mix64(h ^ static_cast<uint32_t>(tokens[i])) + i;
  return h;
}

BlockManager::BlockManager(int32_t n_blocks, int32_t block_size, bool prefix_caching)
    : block_size_(block_size), prefix_caching_(prefix_caching) {
  QILIN_ASSERT(n_blocks > 0 && block_size > 0);
  blocks_.resize(n_blocks);
  block_tokens_.resize(static_cast<size_t>(n_blocks) * block_size);
  free_.reserve(n_blocks);
  size_t cap = 16;
  while (cap < 2 * static_cast<size_t>(n_blocks)) cap *= 2;
  index_key_.assign(cap, 0);
  index_block_.assign(cap, -1);
  // Lowest ids on top: a fresh manager hands out blocks 0, 1, 2, ... (exact ids in tests).
  for (int32_t b = n_blocks - 1; b >= 0; --b) free_.push_back(b);
}

const BlockManager::Seq& BlockManager::seq(SeqId id) const {
  auto it = seqs_.find(id);
  QILIN_ASSERT(it != seqs_.end());
  return it->second;
}
BlockManager::Seq& BlockManager::seq(SeqId id) {
  auto it = seqs_.find(id);
  QILIN_ASSERT(it != seqs_.end());
  return it->second;
}

// ---- prefix-cache index ----

int32_t BlockManager::index_find(uint64_t hash) const {
  const size_t mask = index_key_.size() - 1;
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    if (index_block_[i] < 0) return -1;
    if (index_key_[i] == hash) return index_block_[i];
  }
}

void BlockManager::index_insert(uint64_t hash, int32_t block) {
  QILIN_ASSERT(static_cast<size_t>(index_size_) < index_key_.size() / 2 + 1);
  const size_t mask = index_key_.size() - 1;
  size_t i = hash & mask;
  while (index_block_[i] >= 0) {
    QILIN_ASSERT(index_key_[i] != hash);
    i = (i + 1) & mask;
  }
  index_key_[i] = hash;
  index_block_[i] = block;
  ++index_size_;
}

void BlockManager::index_erase(uint64_t hash) {
  const size_t mask = index_key_.size() - 1;
  size_t i = hash & mask;
  while (index_key_[i] != hash || index_block_[i] < 0) {
    QILIN_ASSERT(index_block_[i] >= 0);  // present
    i = (i + 1) & mask;
  }
  // Backward shift: pull later entries of the probe run into the hole so lookups never stop
  // early at it.
  for (size_t j = (i + 1) & mask; index_block_[j] >= 0; j = (j + 1) & mask) {
    const size_t home = index_key_[j] & mask;
    // Entry j may move to i if its home is not in the cyclic range (i, j].
    const bool home_in_range = i <= j ? (home > i && home <= j) : (home > i || home <= j);
    if (!home_in_range) {
      index_key_[i] = index_key_[j];
      index_block_[i] = index_block_[j];
      i = j;
    }
  }
  index_block_[i] = -1;
  --index_size_;
}

// ---- evictable list: intrusive, O(1) removal; head = least recently used ----

void BlockManager::lru_push_back(int32_t b) {
  Block& k = blocks_[b];
  QILIN_ASSERT(!k.in_lru);
  k.lru_prev = lru_tail_;
  k.lru_next = -1;
  if (lru_tail_ >= 0) blocks_[lru_tail_].lru_next = b; else lru_head_ = b;
  lru_tail_ = b;
  k.in_lru = true;
  ++n_lru_;
}

void BlockManager::lru_remove(int32_t b) {
  Block& k = blocks_[b];
  QILIN_ASSERT(k.in_lru);
  if (k.lru_prev >= 0) blocks_[k.lru_prev].lru_next = k.lru_next; else lru_head_ = k.lru_next;
  if (k.lru_next >= 0) blocks_[k.lru_next].lru_prev = k.lru_prev; else lru_tail_ = k.lru_prev;
  k.lru_prev = k.lru_next = -1;
  k.in_lru = false;
  --n_lru_;
}

void BlockManager::unregister(int32_t b) {
  Block& k = blocks_[b];
  if (!k.registered) return;
  QILIN_ASSERT(index_find(k.hash) == b);
  index_erase(k.hash);
  k.registered = false;
}

int32_t BlockManager::take_block() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else {
    QILIN_ASSERT(lru_head_ >= 0);
    b = lru_head_;
    lru_remove(b);
    unregister(b);
    ++evictions_;
  }
  Block& k = blocks_[b];
  QILIN_ASSERT(k.ref == 0 && !k.registered);
  k.ref = 1;
  k.fill = 0;
  return b;
}

void BlockManager::release_block(int32_t b) {
  Block& k = blocks_[b];
  QILIN_ASSERT(k.ref > 0);
  if (--k.ref > 0) return;
  if (k.registered) {
    lru_push_back(b);
  } else {
    k.fill = 0;
    free_.push_back(b);
  }
}

int32_t BlockManager::lookup(uint64_t hash, uint64_t parent_hash, const int32_t* tokens) const {
  const int32_t b = index_find(hash);
  if (b < 0) return -1;
  const Block& k = blocks_[b];
  // A 64-bit hash can collide: the entry must also have the same parent and the same tokens.
  if (k.parent_hash != parent_hash) return -1;
  const int32_t* have = &block_tokens_[static_cast<size_t>(b) * block_size_];
  if (std::memcmp(have, tokens, sizeof(int32_t) * block_size_) != 0) return -1;
  return b;
}

// ---- sequences ----

KvAllocResult BlockManager::add_sequence(SeqId id, const int32_t* prompt, int32_t n,
                                         int32_t* n_cached) {
  QILIN_ASSERT(!has(id) && n >= 0);
  *n_cached = 0;
  // Leading full blocks found in the cache; the block holding the last token is never taken
  // from the cache (it must be computed to produce logits).
  std::vector<int32_t> hits;
  std::vector<uint64_t> hashes;
  if (prefix_caching_ && n > 0) {
    const int32_t max_hit = (n - 1) / block_size_;
    uint64_t parent = 0;
    for (int32_t i = 0; i < max_hit; ++i) {
      const int32_t* t = prompt + static_cast<int64_t>(i) * block_size_;
      const uint64_t h = hash_block(parent, t, block_size_);
      const int32_t b = lookup(h, parent, t);
      if (b < 0) break;
      hits.push_back(b);
      hashes.push_back(h);
      parent = h;
    }
    query_tokens_ += n;
  }
  const int32_t cached_tokens = static_cast<int32_t>(hits.size()) * block_size_;
  // Hit blocks sitting in the evictable list are not available for the new ones.
  int32_t hits_evictable = 0;
  for (int32_t b : hits) hits_evictable += blocks_[b].ref == 0 ? 1 : 0;
  const int32_t need = blocks_for(n) - static_cast<int32_t>(hits.size());
  const int32_t avail = n_available() - hits_evictable;
  if (need > avail) return {KvAlloc::OutOfBlocks, need, avail};

  Seq s;
  s.tokens.assign(prompt, prompt + n);
  for (int32_t b : hits) {
    Block& k = blocks_[b];
    if (k.ref == 0) lru_remove(b);
    ++k.ref;
    s.table.push_back(b);
  }
  s.hashes = std::move(hashes);
  s.n_computed = cached_tokens;
  for (int32_t i = 0; i < need; ++i) s.table.push_back(take_block());
  for (size_t i = hits.size(); i < s.table.size(); ++i) {
    const int32_t end = std::min<int32_t>(n, static_cast<int32_t>(i + 1) * block_size_);
    blocks_[s.table[i]].fill = end - static_cast<int32_t>(i) * block_size_;
  }
  hit_tokens_ += cached_tokens;
  seqs_.emplace(id, std::move(s));
  *n_cached = cached_tokens;
  return {};
}

KvAllocResult BlockManager::append(SeqId id, const int32_t* tokens, int32_t n,
                                   std::vector<BlockCopy>* copies) {
  Seq& s = seq(id);
  QILIN_ASSERT(n >= 0);
  const int32_t have = static_cast<int32_t>(s.tokens.size());
  const int32_t used_in_last = have % block_size_;  // 0: the last block is full (or none)
  const bool cow = n > 0 && used_in_last != 0 && blocks_[s.table.back()].ref > 1;
  const int32_t need = blocks_for(have + n) - static_cast<int32_t>(s.table.size()) + (cow ? 1 : 0);
  if (need > n_available()) return {KvAlloc::OutOfBlocks, need, n_available()};
  if (n > 0 && used_in_last != 0 && !cow && blocks_[s.table.back()].registered) {
    // Sole owner of a cache entry it uses only partly (it was truncated inside the block while
    // shared): writing changes the entry's content, so the entry goes.
    unregister(s.table.back());
    blocks_[s.table.back()].fill = used_in_last;
  }
  if (cow) {
    const int32_t src = s.table.back();
    const int32_t dst = take_block();
    blocks_[dst].fill = used_in_last;
    copies->push_back({src, dst, used_in_last});
    release_block(src);
    s.table.back() = dst;
  }
  while (static_cast<int32_t>(s.table.size()) < blocks_for(have + n)) s.table.push_back(take_block());
  s.tokens.insert(s.tokens.end(), tokens, tokens + n);
  // Fill counts of the blocks written.
  for (int32_t i = have / block_size_; i < blocks_for(have + n); ++i) {
    Block& k = blocks_[s.table[i]];
    QILIN_ASSERT(k.ref == 1);  // written blocks are never shared (copied above if they were)
    const int32_t end = std::min(have + n, (i + 1) * block_size_);
    k.fill = std::max(k.fill, end - i * block_size_);
  }
  return {};
}

void BlockManager::mark_computed(SeqId id, int32_t n) {
  Seq& s = seq(id);
  QILIN_ASSERT(n >= 0 && n <= static_cast<int32_t>(s.tokens.size()));
  s.n_computed = std::max(s.n_computed, n);
  if (!prefix_caching_) return;
  const int32_t full = s.n_computed / block_size_;
  for (int32_t i = static_cast<int32_t>(s.hashes.size()); i < full; ++i) {
    const uint64_t parent = i > 0 ? s.hashes[i - 1] : 0;
    const int32_t* t = s.tokens.data() + static_cast<int64_t>(i) * block_size_;
    const uint64_t h = hash_block(parent, t, block_size_);
    s.hashes.push_back(h);
    const int32_t b = s.table[i];
    Block& k = blocks_[b];
    if (k.registered) continue;          // already the entry (a prefix hit, or a fork's block)
    if (index_find(h) >= 0) continue;  // the same content computed elsewhere is the entry
    k.registered = true;
    k.hash = h;
    k.parent_hash = parent;
    std::memcpy(&block_tokens_[static_cast<size_t>(b) * block_size_], t,
                sizeof(int32_t) * block_size_);
    index_insert(h, b);
  }
}

void BlockManager::fork(SeqId parent, SeqId child) {
  QILIN_ASSERT(!has(child));
  Seq c = seq(parent);  // copy: table, tokens, hashes, n_computed
  for (int32_t b : c.table) ++blocks_[b].ref;
  seqs_.emplace(child, std::move(c));
}

void BlockManager::truncate(SeqId id, int32_t n) {
  Seq& s = seq(id);
  QILIN_ASSERT(n >= 0 && n <= static_cast<int32_t>(s.tokens.size()));
  const int32_t keep = blocks_for(n);
  while (static_cast<int32_t>(s.table.size()) > keep) {
    release_block(s.table.back());
    s.table.pop_back();
  }
  s.tokens.resize(n);
  s.n_computed = std::min(s.n_computed, n);
  s.hashes.resize(std::min<size_t>(s.hashes.size(), n / block_size_));
  if (n % block_size_ != 0) {
    // The new last block will be written past position n. If this sequence is its only owner,
    // it stops being a cache entry (its content changes) and holds just the kept tokens; if it
    // is shared, the next append copies it first.
    const int32_t b = s.table.back();
    Block& k = blocks_[b];
    if (k.ref == 1) {
      unregister(b);
      k.fill = n % block_size_;
    }
  }
}

void BlockManager::free(SeqId id) {
  auto it = seqs_.find(id);
  QILIN_ASSERT(it != seqs_.end());
  // Last block first: the evictable list then offers a sequence's tail before its head, the
  // head being the part other prompts are most likely to share.
  const std::vector<int32_t>& t = it->second.table;
  for (auto b = t.rbegin(); b != t.rend(); ++b) release_block(*b);
  seqs_.erase(it);
}

void BlockManager::reserve(SeqId id, int32_t n) {
  Seq& s = seq(id);
  s.tokens.reserve(n);
  s.table.reserve(blocks_for(n) + 1);
  s.hashes.reserve(n / block_size_ + 1);
}

BlockManagerStats BlockManager::stats() const {
  BlockManagerStats st;
  st.total = n_blocks();
  st.free = static_cast<int32_t>(free_.size());
  st.cached = n_lru_;
  for (const Block& k : blocks_) {
    if (k.ref > 0) {
      ++st.used;
      st.slots_filled += k.fill;
    }
    if (k.ref > 1) ++st.shared;
  }
  st.slots_allocated = static_cast<int64_t>(st.used) * block_size_;
  st.prefix_query_tokens = query_tokens_;
  st.prefix_hit_tokens = hit_tokens_;
  st.evictions = evictions_;
  return st;
}

void BlockManager::check_invariants() const {
  std::vector<int32_t> refs(blocks_.size(), 0);
  for (const auto& [id, s] : seqs_) {
    QILIN_ASSERT(static_cast<int32_t>(s.table.size()) == blocks_for(static_cast<int32_t>(s.tokens.size())));
    QILIN_ASSERT(s.n_computed <= static_cast<int32_t>(s.tokens.size()));
    QILIN_ASSERT(static_cast<int32_t>(s.hashes.size()) <= s.n_computed / block_size_ || !prefix_caching_);
    for (int32_t b : s.table) {
      QILIN_ASSERT(b >= 0 && b < n_blocks());
      ++refs[b];
    }
  }
  std::vector<uint8_t> on_free(blocks_.size(), 0);
  for (int32_t b : free_) {
    QILIN_ASSERT(!on_free[b]);
    on_free[b] = 1;
  }
  int32_t lru_count = 0;
  for (int32_t b = lru_head_, prev = -1; b >= 0; prev = b, b = blocks_[b].lru_next) {
    QILIN_ASSERT(blocks_[b].in_lru && blocks_[b].lru_prev == prev);
    ++lru_count;
  }
  QILIN_ASSERT(lru_count == n_lru_);
  int32_t registered = 0;
  for (int32_t b = 0; b < n_blocks(); ++b) {
    const Block& k = blocks_[b];
    QILIN_ASSERT(k.ref == refs[b]);  // never negative, never leaked
    QILIN_ASSERT(k.fill >= 0 && k.fill <= block_size_);
    // Exactly one of: owned, evictable (cached), free.
    const int owned = k.ref > 0, cached = k.in_lru, free = on_free[b];
    QILIN_ASSERT(owned + cached + free == 1);
    QILIN_ASSERT(!cached || (k.registered && k.ref == 0));
    if (k.registered) {
      ++registered;
      QILIN_ASSERT(index_find(k.hash) == b);
      QILIN_ASSERT(k.fill == block_size_);
    }
  }
  QILIN_ASSERT(registered == index_size_);
}

}  // namespace qilin
