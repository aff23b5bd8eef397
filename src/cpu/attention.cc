// Scalar reference attention and the per-ISA dispatch (see attention.h).
#include "cpu/attention.h"

#include <cmath>

namespace qilin {

void attention_ref(const AttnTask& t, float* scores) {
  const int32_t hd = t.head_dim;
  for (int32_t g = 0; g < t.n_q; ++g) {
    const float* q = t.q + static_cast<int64_t>(g) * hd;
    float* sc = scores + static_cast<int64_t>(g) * t.n_ctx;
    float mx = -INFINITY;
    for (int32_t p = 0; p < t.n_ctx; ++p) {
      const int64_t slot = static_cast<int64_t>(t.block_table[p / t.block_size]) * t.block_size +
                           p % t.block_size;
      const float* kp = t.k + slot * t.slot_elems + t.head_offset;
      float d = 0.0f;
      for (int32_t i = 0; i < hd; ++i) d += q[i] * kp[i];
      sc[p] = d * t.scale;
      mx = sc[p] > mx ? sc[p] : mx;
    }
    double sum = 0.0;
    for (int32_t p = 0; p < t.n_ctx; ++p) {
      sc[p] = std::exp(sc[p] - mx);
      sum += sc[p];
    }
    const float inv = static_cast<float>(1.0 / sum);
    float* o = t.out + static_cast<int64_t>(g) * hd;
    for (int32_t i = 0; i < hd; ++i) o[i] = 0.0f;
    for (int32_t p = 0; p < t.n_ctx; ++p) {
      const int64_t slot = static_cast<int64_t>(t.block_table[p / t.block_size]) * t.block_size +
                           p % t.block_size;
      const float* vp = t.v + slot * t.slot_elems + t.head_offset;
      const float w = sc[p] * inv;
      for (int32_t i = 0; i < hd; ++i) o[i] += w * vp[i];
    }
  }
}

AttnFn attention_kernel(Isa isa, int32_t head_dim) {
  if (isa == Isa::Avx512 && head_dim % 16 == 0 && head_dim <= 256) return avx512::attention;
  if (isa >= Isa::Avx2 && head_dim % 8 == 0 && head_dim <= 256) return avx2::attention;
  return attention_ref;
}

}  // namespace qilin
