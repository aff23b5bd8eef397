// The physical KV cache: per layer, K and V pools shaped [n_blocks, block_size, n_head_kv,
// head_dim]. It stores and reads slots named by (block, offset) and knows nothing about
// sequences; the BlockManager decides which slot a token uses.
// NOTE: pools are anonymous mappings, so memory is committed only as slots are first written.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/dtype.h"
#include "qilin/status.h"

namespace qilin {

struct KvCacheConfig {
  int32_t n_layer = 0;
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;
  int32_t block_size = 16;
  int32_t n_blocks = 0;
  DType type = DType::F32;  // only F32 in this slice; quantized caches come with PagedAttention
};

class KvCache {
 public:
  static Result<std::unique_ptr<KvCache>> create(const KvCacheConfig& config);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  const KvCacheConfig& config() const { return cfg_; }
  // Elements of one slot: n_head_kv * head_dim.
  int64_t slot_elems() const { return static_cast<int64_t>(cfg_.n_head_kv) * cfg_.head_dim; }
  // [block_size, n_head_kv, head_dim] of one block of one layer.
  float* k_block(int32_t layer, int32_t block) { return k_ + offset(layer, block); }
  float* v_block(int32_t layer, int32_t block) { return v_ + offset(layer, block); }
  const float* k_block(int32_t layer, int32_t block) const { return k_ + offset(layer, block); }
  const float* v_block(int32_t layer, int32_t block) const { return v_ + offset(layer, block); }
  size_t bytes() const { return bytes_; }
  // Copies slots [0, n_slots) of block src into block dst, K and V, every layer (the
  // BlockManager's copy-on-write).
  void copy_block(int32_t src, int32_t dst, int32_t n_slots);

 private:
  KvCache() = default;
  size_t offset(int32_t layer, int32_t block) const {
    return (static_cast<size_t>(layer) * cfg_.n_blocks + block) * cfg_.block_size * slot_elems();
  }
  KvCacheConfig cfg_;
  float* k_ = nullptr;  // [n_layer, n_blocks, block_size, n_head_kv, head_dim]
  float* v_ = nullptr;
  size_t bytes_ = 0;    // per pool
};

}  // namespace qilin
