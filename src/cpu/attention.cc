// Scalar reference attention and the per-ISA dispatch (see attention.h).
#include "cpu/attention.h"

#include <algorithm>
#include <cmath>

#include "core/assert.h"

namespace qilin {
namespace {

constexpr int32_t kMaxRefHeadDim = 1024;

// Row p of a task's K or V as F32: the row itself, or its values converted into buf.
const float* row_f32(const AttnTask& t, const KvRows& kv, const uint8_t* pool, int32_t p,
                     float* buf) {
  const uint8_t* row = pool + kv.offset(p);
  if (t.kv_type == KvType::F32) return reinterpret_cast<const float*>(row);
  kv_dequantize_row(t.kv_type, row, t.head_dim, buf);
  return buf;
}

}  // namespace

void attention_ref(const AttnTask& t, float* scores) {
  const int32_t hd = t.head_dim;
  QILIN_ASSERT(hd <= kMaxRefHeadDim);
  const KvRows kv(t);
  float buf[kMaxRefHeadDim];
  for (int32_t g = 0; g < t.n_q; ++g) {
    const float* q = t.q + static_cast<int64_t>(g) * hd;
    float* sc = scores + static_cast<int64_t>(g) * t.n_ctx;
    float mx = -INFINITY;
    for (int32_t p = 0; p < t.n_ctx; ++p) {
      const float* kp = row_f32(t, kv, kv.k, p, buf);
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
      const float* vp = row_f32(t, kv, kv.v, p, buf);
      const float w = sc[p] * inv;
      for (int32_t i = 0; i < hd; ++i) o[i] += w * vp[i];
    }
  }
}

void attention_flash_ref(const AttnTask& t, float*) {
  constexpr int32_t kTile = 16;
  const int32_t hd = t.head_dim;
  QILIN_ASSERT(hd <= kMaxRefHeadDim);
  const KvRows kv(t);
  float buf[kMaxRefHeadDim];
  float s[kTile];
  for (int32_t r = 0; r < t.n_rows; ++r) {
    // This row's keys: its causal range [0, n_ctx + r) cut to the task's KV range.
    const int32_t lo = std::max(t.kv_begin, 0);
    const int32_t hi = std::min(t.kv_end, t.n_ctx + r);
    for (int32_t g = 0; g < t.n_q; ++g) {
      const float* q = t.q + r * t.q_stride + static_cast<int64_t>(g) * hd;
      float* o = t.out + r * t.out_stride + static_cast<int64_t>(g) * hd;
      for (int32_t i = 0; i < hd; ++i) o[i] = 0.0f;
      float m = -INFINITY, l = 0.0f;
      for (int32_t p0 = lo; p0 < hi; p0 += kTile) {
        const int32_t nt = std::min(kTile, hi - p0);
        float mx = -INFINITY;
        for (int32_t c = 0; c < nt; ++c) {
          const float* kp = row_f32(t, kv, kv.k, p0 + c, buf);
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
          const float* vp = row_f32(t, kv, kv.v, p0 + c, buf);
          const float w = std::exp(s[c] - m_new);
          l += w;
          for (int32_t i = 0; i < hd; ++i) o[i] += w * vp[i];
        }
        m = m_new;
      }
      if (t.ml) {
        t.ml[2 * (r * t.n_q + g)] = m;
        t.ml[2 * (r * t.n_q + g) + 1] = l;
      } else {
        for (int32_t i = 0; i < hd; ++i) o[i] /= l;
      }
    }
  }
}

void attention_merge(const float* o, const float* ml, int32_t n_parts, int32_t n_vec,
                     int32_t head_dim, int32_t n_q, int64_t out_stride, float* out) {
  for (int32_t i = 0; i < n_vec; ++i) {
    float mx = -INFINITY;
    for (int32_t j = 0; j < n_parts; ++j) mx = std::max(mx, ml[2 * (j * n_vec + i)]);
    float* dst = out + (i / n_q) * out_stride + static_cast<int64_t>(i % n_q) * head_dim;
    for (int32_t d = 0; d < head_dim; ++d) dst[d] = 0.0f;
    float l = 0.0f;
    for (int32_t j = 0; j < n_parts; ++j) {
      const float mj = ml[2 * (j * n_vec + i)];
      if (mj == -INFINITY) continue;  // an empty range: contributes nothing
      const float w = std::exp(mj - mx);
      l += w * ml[2 * (j * n_vec + i) + 1];
      const float* oj = o + (static_cast<int64_t>(j) * n_vec + i) * head_dim;
      for (int32_t d = 0; d < head_dim; ++d) dst[d] += w * oj[d];
    }
    const float inv = 1.0f / l;
    for (int32_t d = 0; d < head_dim; ++d) dst[d] *= inv;
  }
}

AttnFn attention_flash_kernel(Isa isa, int32_t head_dim) {
  if (isa == Isa::Avx512 && head_dim % 16 == 0 && head_dim <= 256) {
    return cpu_has_avx512_bf16() ? avx512::attention_flash_bf16dot : avx512::attention_flash;
  }
  if (isa >= Isa::Avx2 && head_dim % 8 == 0 && head_dim <= 256) return avx2::attention_flash;
  return attention_flash_ref;
}

int32_t attention_flash_rows(Isa isa, int32_t n_q) {
  // The SIMD kernels put rows x heads query vectors in the lanes of their registers; the
  // reference takes anything.
  if (isa == Isa::Avx512) return avx512::attention_flash_rows(n_q);
  if (isa == Isa::Avx2) return avx2::attention_flash_rows(n_q);
  return std::max(1, 8 / n_q);
}

AttnFn attention_kernel(Isa isa, int32_t head_dim) {
  if (isa == Isa::Avx512 && head_dim % 16 == 0 && head_dim <= 256) return avx512::attention;
  if (isa >= Isa::Avx2 && head_dim % 8 == 0 && head_dim <= 256) return avx2::attention;
  return attention_ref;
}

}  // namespace qilin
