// AVX-512 attention for one GQA group: each K slot is loaded once and dotted with all n_q
// query heads held in registers; each V slot is loaded once and accumulated into all n_q
// outputs. exp() is vec_avx512.h's polynomial (about 2 ulp), not libm's.
// GCC 12's AVX-512 headers trip -Wuninitialized on their own _mm512_undefined_* temporaries
// (a known compiler bug, fixed in 12.3); the warnings say nothing about this file.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "cpu/attention.h"
#include "cpu/vec_avx512.h"

namespace qilin::avx512 {
namespace {

constexpr int kMaxGroup = 8;   // query heads processed together (larger groups loop)
constexpr int kMaxVecs = 16;   // head_dim / 16 <= 16

// The four horizontal sums of a[0..3], as one vector {sum a0, sum a1, sum a2, sum a3}.
inline __m128 reduce4(const __m512 a[4]) {
  const __m512 a01 = _mm512_add_ps(_mm512_unpacklo_ps(a[0], a[1]), _mm512_unpackhi_ps(a[0], a[1]));
  const __m512 a23 = _mm512_add_ps(_mm512_unpacklo_ps(a[2], a[3]), _mm512_unpackhi_ps(a[2], a[3]));
  // Per 128-bit lane now: a01 = {x0+x2, y0+y2, x1+x3, y1+y3} pattern; fold to {s0, s1, s2, s3}.
  const __m512 b = _mm512_add_ps(_mm512_shuffle_ps(a01, a23, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_ps(a01, a23, _MM_SHUFFLE(3, 2, 3, 2)));
  const __m256 c = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
  return _mm_add_ps(_mm256_castps256_ps128(c), _mm256_extractf128_ps(c, 1));
}

// Walks positions 0, 1, 2, ... of a sequence through its block table without a division per
// position (block_size is a run-time value, and an integer divide per key cost more than the
// key's arithmetic).
struct SlotCursor {
  const AttnTask& t;
  const float* pool;
  int32_t block = 0;
  int32_t offset = 0;
  const float* next() {
    const float* p = pool + (static_cast<int64_t>(t.block_table[block]) * t.block_size + offset) *
                                t.slot_elems + t.head_offset;
    if (++offset == t.block_size) {
      offset = 0;
      ++block;
    }
    return p;
  }
};

// scores[g * stride + c] = scale * q_g . k_c for the next `count` keys of the cursor and the
// ng heads of q. Four keys at a time: their four per-head accumulators are reduced together
// (one transpose-and-add tree instead of four full horizontal sums).
template <int kG, int kV>
inline void score_keys(const __m512 (&q)[kG][kV], int32_t ng, int32_t nv, float scale,
                       SlotCursor& keys, int32_t count, float* scores, int64_t stride) {
  const __m128 scale4 = _mm_set1_ps(scale);
  int32_t c = 0;
  for (; c + 4 <= count && ng <= 4; c += 4) {
    const float* kp[4];
    for (int u = 0; u < 4; ++u) kp[u] = keys.next();
    __m512 acc[kG < 4 ? kG : 4][4];
    for (int32_t g = 0; g < ng; ++g) {
      for (int u = 0; u < 4; ++u) acc[g][u] = _mm512_setzero_ps();
    }
    for (int32_t j = 0; j < nv; ++j) {
      for (int u = 0; u < 4; ++u) {
        const __m512 kv = _mm512_loadu_ps(kp[u] + 16 * j);
        for (int32_t g = 0; g < ng; ++g) acc[g][u] = _mm512_fmadd_ps(q[g][j], kv, acc[g][u]);
      }
    }
    for (int32_t g = 0; g < ng; ++g) {
      _mm_storeu_ps(scores + g * stride + c, _mm_mul_ps(reduce4(acc[g]), scale4));
    }
  }
  for (; c < count; ++c) {
    const float* kp = keys.next();
    __m512 acc[kG];
    for (int32_t g = 0; g < ng; ++g) acc[g] = _mm512_setzero_ps();
    for (int32_t j = 0; j < nv; ++j) {
      const __m512 kv = _mm512_loadu_ps(kp + 16 * j);
      for (int32_t g = 0; g < ng; ++g) acc[g] = _mm512_fmadd_ps(q[g][j], kv, acc[g]);
    }
    for (int32_t g = 0; g < ng; ++g) scores[g * stride + c] = _mm512_reduce_add_ps(acc[g]) * scale;
  }
}

// One pass for up to kMaxGroup heads starting at g0. NG/NV > 0 fix the group size and
// head_dim / 16 at compile time: the loops then unroll and the q and output accumulators stay
// in registers (with run-time bounds the compiler keeps them in memory, a load and a store per
// FMA). 0 means "take it from the arguments".
template <int NG, int NV>
void attend_group(const AttnTask& t, int32_t g0, int32_t ng_arg, float* scores) {
  const int32_t ng = NG > 0 ? NG : ng_arg;
  const int32_t nv = NV > 0 ? NV : t.head_dim / 16;
  constexpr int kG = NG > 0 ? NG : kMaxGroup;
  constexpr int kV = NV > 0 ? NV : kMaxVecs;
  const int32_t n = t.n_ctx;
  // Scores: q . k for every head of the group, K slot read once.
  __m512 q[kG][kV];
  for (int32_t g = 0; g < ng; ++g) {
    for (int32_t j = 0; j < nv; ++j) q[g][j] = _mm512_loadu_ps(t.q + (g0 + g) * t.head_dim + 16 * j);
  }
  SlotCursor keys{t, t.k};
  score_keys(q, ng, nv, t.scale, keys, n, scores, n);
  // Softmax per head, vectorised over positions.
  float inv[kG];
  for (int32_t g = 0; g < ng; ++g) {
    float* sc = scores + g * n;
    __m512 mxv = _mm512_set1_ps(-INFINITY);
    int32_t p = 0;
    for (; p + 16 <= n; p += 16) mxv = _mm512_max_ps(mxv, _mm512_loadu_ps(sc + p));
    float mx = _mm512_reduce_max_ps(mxv);
    for (; p < n; ++p) mx = sc[p] > mx ? sc[p] : mx;
    const __m512 m = _mm512_set1_ps(mx);
    __m512 sumv = _mm512_setzero_ps();
    for (p = 0; p + 16 <= n; p += 16) {
      const __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(sc + p), m));
      _mm512_storeu_ps(sc + p, e);
      sumv = _mm512_add_ps(sumv, e);
    }
    if (p < n) {
      const __mmask16 k = static_cast<__mmask16>((1u << (n - p)) - 1);
      const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, sc + p), m));
      _mm512_mask_storeu_ps(sc + p, k, e);
      sumv = _mm512_add_ps(sumv, _mm512_maskz_mov_ps(k, e));
    }
    inv[g] = 1.0f / _mm512_reduce_add_ps(sumv);
  }
  // Weighted sum of V, V slot read once for the group.
  __m512 o[kG][kV];
  for (int32_t g = 0; g < ng; ++g) {
    for (int32_t j = 0; j < nv; ++j) o[g][j] = _mm512_setzero_ps();
  }
  SlotCursor values{t, t.v};
  for (int32_t p = 0; p < n; ++p) {
    const float* vp = values.next();
    for (int32_t j = 0; j < nv; ++j) {
      const __m512 vv = _mm512_loadu_ps(vp + 16 * j);
      for (int32_t g = 0; g < ng; ++g) {
        o[g][j] = _mm512_fmadd_ps(_mm512_set1_ps(scores[g * n + p]), vv, o[g][j]);
      }
    }
  }
  for (int32_t g = 0; g < ng; ++g) {
    const __m512 s = _mm512_set1_ps(inv[g]);
    for (int32_t j = 0; j < nv; ++j) {
      _mm512_storeu_ps(t.out + (g0 + g) * t.head_dim + 16 * j, _mm512_mul_ps(o[g][j], s));
    }
  }
}

// FlashAttention for one GQA group: keys in tiles of kTile, an online softmax per head (running
// max m and sum l; when m grows, l and the partial output are rescaled by e^(m_old - m_new)),
// so scratch is a few registers and a kTile-score array whatever the context length.
constexpr int kTile = 16;

template <int NG, int NV>
void attend_group_flash(const AttnTask& t, int32_t g0, int32_t ng_arg) {
  const int32_t ng = NG > 0 ? NG : ng_arg;
  const int32_t nv = NV > 0 ? NV : t.head_dim / 16;
  constexpr int kG = NG > 0 ? NG : kMaxGroup;
  constexpr int kV = NV > 0 ? NV : kMaxVecs;
  const int32_t n = t.n_ctx;
  __m512 q[kG][kV], o[kG][kV];
  float m[kG], l[kG];
  alignas(64) float sc[kG][kTile];
  for (int32_t g = 0; g < ng; ++g) {
    for (int32_t j = 0; j < nv; ++j) {
      q[g][j] = _mm512_loadu_ps(t.q + (g0 + g) * t.head_dim + 16 * j);
      o[g][j] = _mm512_setzero_ps();
    }
    m[g] = -INFINITY;
    l[g] = 0.0f;
  }
  SlotCursor keys{t, t.k}, values{t, t.v};
  for (int32_t p0 = 0; p0 < n; p0 += kTile) {
    const int32_t nt = n - p0 < kTile ? n - p0 : kTile;
    score_keys(q, ng, nv, t.scale, keys, nt, &sc[0][0], kTile);
    // Online softmax update per head.
    const __mmask16 live = static_cast<__mmask16>((1u << nt) - 1);
    for (int32_t g = 0; g < ng; ++g) {
      const __m512 s = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), live, sc[g]);
      const float m_new = std::max(m[g], _mm512_reduce_max_ps(s));
      const float alpha = std::exp(m[g] - m_new);  // 0 on the first tile (m = -inf)
      const __m512 pr = _mm512_maskz_mov_ps(live, exp_ps(_mm512_sub_ps(s, _mm512_set1_ps(m_new))));
      _mm512_store_ps(sc[g], pr);
      l[g] = l[g] * alpha + _mm512_reduce_add_ps(pr);
      m[g] = m_new;
      const __m512 av = _mm512_set1_ps(alpha);
      for (int32_t j = 0; j < nv; ++j) o[g][j] = _mm512_mul_ps(o[g][j], av);
    }
    // Weighted values of the tile, each V slot read once for the group.
    for (int32_t u = 0; u < nt; ++u) {
      const float* vp = values.next();
      for (int32_t j = 0; j < nv; ++j) {
        const __m512 vv = _mm512_loadu_ps(vp + 16 * j);
        for (int32_t g = 0; g < ng; ++g) {
          o[g][j] = _mm512_fmadd_ps(_mm512_set1_ps(sc[g][u]), vv, o[g][j]);
        }
      }
    }
  }
  for (int32_t g = 0; g < ng; ++g) {
    const __m512 inv = _mm512_set1_ps(1.0f / l[g]);
    for (int32_t j = 0; j < nv; ++j) {
      _mm512_storeu_ps(t.out + (g0 + g) * t.head_dim + 16 * j, _mm512_mul_ps(o[g][j], inv));
    }
  }
}

}  // namespace

void attention(const AttnTask& t, float* scores) {
  // Common shapes get a specialised kernel: head_dim 64 or 128 with groups of 1-4 heads.
  using Fn = void (*)(const AttnTask&, int32_t, int32_t, float*);
  static constexpr Fn kFixed[2][4] = {
      {attend_group<1, 4>, attend_group<2, 4>, attend_group<3, 4>, attend_group<4, 4>},
      {attend_group<1, 8>, attend_group<2, 8>, attend_group<3, 8>, attend_group<4, 8>}};
  const int hd_kind = t.head_dim == 64 ? 0 : t.head_dim == 128 ? 1 : -1;
  if (hd_kind >= 0 && t.n_q <= 4) {
    kFixed[hd_kind][t.n_q - 1](t, 0, t.n_q, scores);
    return;
  }
  for (int32_t g0 = 0; g0 < t.n_q; g0 += kMaxGroup) {
    const int32_t ng = t.n_q - g0 < kMaxGroup ? t.n_q - g0 : kMaxGroup;
    attend_group<0, 0>(t, g0, ng, scores + static_cast<int64_t>(g0) * t.n_ctx);
  }
}

}  // namespace qilin::avx512

namespace qilin::avx512 {

void attention_flash(const AttnTask& t, float* /*scores: unused, scratch is O(1)*/) {
  using Fn = void (*)(const AttnTask&, int32_t, int32_t);
  static constexpr Fn kFixed[2][4] = {
      {attend_group_flash<1, 4>, attend_group_flash<2, 4>, attend_group_flash<3, 4>,
       attend_group_flash<4, 4>},
      {attend_group_flash<1, 8>, attend_group_flash<2, 8>, attend_group_flash<3, 8>,
       attend_group_flash<4, 8>}};
  const int hd_kind = t.head_dim == 64 ? 0 : t.head_dim == 128 ? 1 : -1;
  if (hd_kind >= 0 && t.n_q <= 4) {
    kFixed[hd_kind][t.n_q - 1](t, 0, t.n_q);
    return;
  }
  for (int32_t g0 = 0; g0 < t.n_q; g0 += kMaxGroup) {
    const int32_t ng = t.n_q - g0 < kMaxGroup ? t.n_q - g0 : kMaxGroup;
    attend_group_flash<0, 0>(t, g0, ng);
  }
}

}  // namespace qilin::avx512
