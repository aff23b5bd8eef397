// Scalar reference attention and the per-ISA dispatch (see attention.h).
#include "cpu/attention.h"

#include <algorithm>
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

void attention_flash_ref(const AttnTask& t, float*) {
  constexpr int32_t kTile = 16;
  const int32_t hd = t.head_dim;
  float s[kTile];
  for (int32_t g = 0; g < t.n_q; ++g) {
    const float* q = t.q + static_cast<int64_t>(g) * hd;
    float* o = t.out + static_cast<int64_t>(g) * hd;
    for (int32_t i = 0; i < hd; ++i) o[i] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int32_t p0 = 0; p0 < t.n_ctx; p0 += kTile) {
      const int32_t nt = std::min(kTile, t.n_ctx - p0);
      float mx = -INFINITY;
      for (int32_t c = 0; c < nt; ++c) {
        const int32_t p = p0 + c;
        const int64_t slot =
            static_cast<int64_t>(t.block_table[p / t.block_size]) * t.block_size + p % t.block_size;
        const float* kp = t.k + slot * t.slot_elems + t.head_offset;
        float d = 0.0f;
        for (int32_t i = 0; i < hd; ++i) d += q[i] * kp[i];
        s[c] = d * t.scale;
        mx = std::max(mx, s[c]);
      }
      const float m_new = std::max(m, mx);
      const float alpha = std::exp(m - m_new);  // 0 on the first tile
      l *= alpha;
      for (int32_t i = 0; i < hd; ++i) o[i] *= alpha;
      for (int32_t c = 0; c < nt; ++c) {
        const int32_t p = p0 + c;
        const int64_t slot =
            static_cast<int64_t>(t.block_table[p / t.block_size]) * t.block_size + p % t.block_size;
        const float* vp = t.v + slot * t.slot_elems + t.head_offset;
        const float w = std::exp(s[c] - m_new);
        l += w;
        for (int32_t i = 0; i < hd; ++i) o[i] += w * vp[i];
      }
      m = m_new;
    }
    for (int32_t i = 0; i < hd; ++i) o[i] /= l;
  }
}

AttnFn attention_flash_kernel(Isa isa, int32_t head_dim) {
  if (isa == Isa::Avx512 && head_dim % 16 == 0 && head_dim <= 256) return avx512::attention_flash;
  return attention_flash_ref;
}

AttnFn attention_kernel(Isa isa, int32_t head_dim) {
  if (isa == Isa::Avx512 && head_dim % 16 == 0 && head_dim <= 256) return avx512::attention;
  if (isa >= Isa::Avx2 && head_dim % 8 == 0 && head_dim <= 256) return avx2::attention;
  return attention_ref;
}

}  // namespace qilin
