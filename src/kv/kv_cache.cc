// KvCache: two anonymous mappings (K and V) for all layers. See kv_cache.h.
#include "kv/kv_cache.h"

#include <sys/mman.h>

#include <cstring>

#include "core/assert.h"

namespace qilin {

Result<std::unique_ptr<KvCache>> KvCache::create(const KvCacheConfig& c) {
  if (c.n_layer <= 0 || c.n_head_kv <= 0 || c.head_dim <= 0 || c.block_size <= 0 ||
      c.n_blocks <= 0) {
    return errorf("kv cache: invalid shape (layers %d, kv heads %d, head dim %d, block %d, "
                  "blocks %d)", c.n_layer, c.n_head_kv, c.head_dim, c.block_size, c.n_blocks);
  }
  if (c.type != DType::F32) {
    return errorf("kv cache: type %s is not supported yet (use F32)", dtype_name(c.type));
  }
  std::unique_ptr<KvCache> kv(new KvCache());
  kv->cfg_ = c;
  kv->bytes_ = static_cast<size_t>(c.n_layer) * c.n_blocks * c.block_size * kv->slot_elems() *
               sizeof(float);
  for (float** pool : {&kv->k_, &kv->v_}) {
    void* p = mmap(nullptr, kv->bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED) {
      return errorf("kv cache: cannot reserve %zu bytes", kv->bytes_);
    }
    *pool = static_cast<float*>(p);
  }
  return kv;
}

void KvCache::copy_block(int32_t src, int32_t dst, int32_t n_slots) {
  QILIN_ASSERT(src >= 0 && src < cfg_.n_blocks && dst >= 0 && dst < cfg_.n_blocks);
  QILIN_ASSERT(n_slots >= 0 && n_slots <= cfg_.block_size);
  const size_t bytes = static_cast<size_t>(n_slots) * slot_elems() * sizeof(float);
  for (int32_t l = 0; l < cfg_.n_layer; ++l) {
    std::memcpy(k_block(l, dst), k_block(l, src), bytes);
    std::memcpy(v_block(l, dst), v_block(l, src), bytes);
  }
}

KvCache::~KvCache() {
  if (k_) munmap(k_, bytes_);
  if (v_) munmap(v_, bytes_);
}

}  // namespace qilin
