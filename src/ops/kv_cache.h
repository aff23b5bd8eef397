// The physical KV cache: per layer, K and V pools shaped [n_blocks, block_size, n_head_kv]
// rows, each row one KV head's head_dim values in the cache's element format (KvType: f32,
// f16, q8_0 or fp8; cpu/kv_types.h). It stores and reads slots named by (block, offset) and
// knows nothing about sequences; the BlockManager decides which slot a token uses.
// NOTE: pools are anonymous mappings, so memory is committed only as slots are first written.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/block_copy.h"
#include "cpu/kv_types.h"
#include "qilin/status.h"

namespace qilin {

struct KvCacheConfig {
  int32_t n_layer = 0;
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;
  int32_t block_size = 16;
  int32_t n_blocks = 0;
  KvType type = KvType::F32;
};

class KvCache {
 public:
  static Result<std::unique_ptr<KvCache>> create(const KvCacheConfig& config);
  // Bytes of one token's K and V over all layers: what one slot of every layer costs.
  static size_t bytes_per_token(const KvCacheConfig& config);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  const KvCacheConfig& config() const { return cfg_; }
  KvType type() const { return cfg_.type; }
  // Elements of one slot: n_head_kv * head_dim.
  int64_t slot_elems() const { return static_cast<int64_t>(cfg_.n_head_kv) * cfg_.head_dim; }
  size_t row_bytes() const { return row_bytes_; }                // one KV head of one slot
  size_t slot_bytes() const { return row_bytes_ * cfg_.n_head_kv; }
  // Block 0 of a layer's K or V pool (the kernels address slots through block tables).
  const uint8_t* k_pool(int32_t layer) const { return k_ + offset(layer, 0, 0); }
  const uint8_t* v_pool(int32_t layer) const { return v_ + offset(layer, 0, 0); }
  // One slot: n_head_kv rows of row_bytes().
  uint8_t* k_slot(int32_t layer, int32_t block, int32_t off) { return k_ + offset(layer, block, off); }
  uint8_t* v_slot(int32_t layer, int32_t block, int32_t off) { return v_ + offset(layer, block, off); }
  size_t bytes() const { return bytes_; }  // per pool (K or V)
  // Copies slots [0, n_slots) of block src into block dst, K and V, every layer (the
  // BlockManager's copy-on-write).
  void copy_block(int32_t src, int32_t dst, int32_t n_slots);

 private:
  KvCache() = default;
  size_t offset(int32_t layer, int32_t block, int32_t off) const {
    return ((static_cast<size_t>(layer) * cfg_.n_blocks + block) * cfg_.block_size + off) *
           slot_bytes();
  }
  KvCacheConfig cfg_;
  size_t row_bytes_ = 0;
  uint8_t* k_ = nullptr;  // [n_layer, n_blocks, block_size, n_head_kv] rows
  uint8_t* v_ = nullptr;
  size_t bytes_ = 0;      // per pool
};

}  // namespace qilin
