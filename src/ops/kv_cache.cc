// KvCache: two anonymous mappings (K and V) for all layers. See kv_cache.h.
#include "ops/kv_cache.h"

#include <sys/mman.h>

#include <cstring>

#include "core/assert.h"

namespace qilin {

size_t KvCache::bytes_per_token(const KvCacheConfig& c) {
  return 2 * static_cast<size_t>(c.n_layer) * c.n_head_kv * kv_row_bytes(c.type, c.head_dim);
}

Result<std::unique_ptr<KvCache>> KvCache::create(const KvCacheConfig& c) {
  if (c.n_layer <= 0 || c.n_head_kv <= 0 || c.head_dim <= 0 || c.block_size <= 0 ||
      c.n_blocks <= 0) {
    return errorf("kv cache: invalid shape (layers %d, kv heads %d, head dim %d, block %d, "
                  "blocks %d)", c.n_layer, c.n_head_kv, c.head_dim, c.block_size, c.n_blocks);
  }
  const size_t row = kv_row_bytes(c.type, c.head_dim);
  if (row == 0) {
    return errorf("kv cache: type %s cannot hold head_dim %d (a multiple of 32 is needed)",
                  kv_type_name(c.type), c.head_dim);
  }
  std::unique_ptr<KvCache> kv(new KvCache());
  kv->cfg_ = c;
  kv->row_bytes_ = row;
  kv->bytes_ = static_cast<size_t>(c.n_layer) * c.n_blocks * c.block_size * kv->slot_bytes();
  for (uint8_t** pool : {&kv->k_, &kv->v_}) {
    void* p = mmap(nullptr, kv->bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED) {
      return errorf("kv cache: cannot reserve %zu bytes", kv->bytes_);
    }
    *pool = static_cast<uint8_t*>(p);
  }
  return kv;
}

void KvCache::copy_block(int32_t src, int32_t dst, int32_t n_slots) {
  QILIN_ASSERT(src >= 0 && src < cfg_.n_blocks && dst >= 0 && dst < cfg_.n_blocks);
  QILIN_ASSERT(n_slots >= 0 && n_slots <= cfg_.block_size);
  const size_t bytes = static_cast<size_t>(n_slots) * slot_bytes();
  for (int32_t l = 0; l < cfg_.n_layer; ++l) {
    std::memcpy(k_slot(l, dst, 0), k_slot(l, src, 0), bytes);
    std::memcpy(v_slot(l, dst, 0), v_slot(l, src, 0), bytes);
  }
}

KvCache::~KvCache() {
  if (k_) munmap(k_, bytes_);
  if (v_) munmap(v_, bytes_);
}

}  // namespace qilin
