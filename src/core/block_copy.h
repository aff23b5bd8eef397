// BlockCopy: the copy-on-write that the KV manager (kv/block_manager.h) asks for and the
// physical cache (ops/kv_cache.h, KvCache::copy_block) performs. It lives in core because both
// layers name it and neither may include the other: the manager touches no tensors, the cache
// knows no sequences.
#pragma once

#include <cstdint>

namespace qilin {

// Copy K/V slots [0, n_slots) of block src into block dst, every layer.
struct BlockCopy {
  int32_t src = 0;
  int32_t dst = 0;
  int32_t n_slots = 0;
};

}  // namespace qilin
