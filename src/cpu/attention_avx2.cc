// AVX2 attention for one GQA group: the same structure as attention_avx512.cc with 8-float
// vectors (K and V slots read once per group, vectorised softmax with a polynomial exp).
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "cpu/attention.h"
#include "cpu/vec_avx2.h"

namespace qilin::avx2 {
namespace {

constexpr int kMaxGroup = 4;  // query heads processed together (larger groups loop)
constexpr int kMaxVecs = 32;  // head_dim / 8 <= 32

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Walks positions 0, 1, 2, ... of a sequence through its block table without a division per
// position (block_size is a run-time value, and an integer divide per key cost more than the
// key's arithmetic). Yields each position's row (bytes in the cache's format).
struct SlotCursor {
  const KvRows& kv;
  const uint8_t* pool;
  int32_t block = 0;
  int32_t offset = 0;
  const uint8_t* next() {
    const uint8_t* p =
        pool + (static_cast<int64_t>(kv.table[block]) * kv.block_size + offset) * kv.slot_bytes +
        kv.head_bytes;
    if (++offset == kv.block_size) {
      offset = 0;
      ++block;
    }
    return p;
  }
};

// A K/V row as F32: in place for F32, else converted into buf (head_dim floats; F16 with
// F16C, BF16 by a shift, the 8-bit formats through the scalar conversion: AVX2 is the
// fallback ISA here).
inline const float* row_f32(KvType type, const uint8_t* row, int32_t hd, float* buf) {
  switch (type) {
    case KvType::F32:
      return reinterpret_cast<const float*>(row);
    case KvType::F16:
      for (int32_t d = 0; d < hd; d += 8) {
        _mm256_store_ps(buf + d, _mm256_cvtph_ps(_mm_loadu_si128(
                                     reinterpret_cast<const __m128i*>(row + 2 * d))));
      }
      return buf;
    case KvType::BF16:  // the top half of an f32
      for (int32_t d = 0; d < hd; d += 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * d));
        _mm256_store_ps(buf + d,
                        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
      }
      return buf;
    default:
      kv_dequantize_row(type, row, hd, buf);
      return buf;
  }
}

void attend_group(const AttnTask& t, int32_t g0, int32_t ng, float* scores) {
  const int32_t nv = t.head_dim / 8;
  const int32_t n = t.n_ctx;
  const float* qg = t.q + static_cast<int64_t>(g0) * t.head_dim;
  const KvRows kv(t);
  alignas(32) float buf[kMaxVecs * 8];
  SlotCursor keys{kv, kv.k};
  for (int32_t p = 0; p < n; ++p) {
    const float* kp = row_f32(t.kv_type, keys.next(), t.head_dim, buf);
    __m256 acc[kMaxGroup];
    for (int32_t g = 0; g < ng; ++g) acc[g] = _mm256_setzero_ps();
    for (int32_t j = 0; j < nv; ++j) {
      const __m256 kv = _mm256_loadu_ps(kp + 8 * j);
      for (int32_t g = 0; g < ng; ++g) {
        acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qg + g * t.head_dim + 8 * j), kv, acc[g]);
      }
    }
    for (int32_t g = 0; g < ng; ++g) scores[g * n + p] = hsum(acc[g]) * t.scale;
  }
  float inv[kMaxGroup];
  for (int32_t g = 0; g < ng; ++g) {
    float* sc = scores + g * n;
    float mx = -INFINITY;
    for (int32_t p = 0; p < n; ++p) mx = sc[p] > mx ? sc[p] : mx;
    const __m256 m = _mm256_set1_ps(mx);
    __m256 sumv = _mm256_setzero_ps();
    int32_t p = 0;
    for (; p + 8 <= n; p += 8) {
      const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(sc + p), m));
      _mm256_storeu_ps(sc + p, e);
      sumv = _mm256_add_ps(sumv, e);
    }
    float sum = hsum(sumv);
    for (; p < n; ++p) {
      sc[p] = std::exp(sc[p] - mx);
      sum += sc[p];
    }
    inv[g] = 1.0f / sum;
  }
  __m256 o[kMaxGroup][kMaxVecs];
  for (int32_t g = 0; g < ng; ++g) {
    for (int32_t j = 0; j < nv; ++j) o[g][j] = _mm256_setzero_ps();
  }
  SlotCursor values{kv, kv.v};
  for (int32_t p = 0; p < n; ++p) {
    const float* vp = row_f32(t.kv_type, values.next(), t.head_dim, buf);
    for (int32_t j = 0; j < nv; ++j) {
      const __m256 vv = _mm256_loadu_ps(vp + 8 * j);
      for (int32_t g = 0; g < ng; ++g) {
        o[g][j] = _mm256_fmadd_ps(_mm256_set1_ps(scores[g * n + p]), vv, o[g][j]);
      }
    }
  }
  for (int32_t g = 0; g < ng; ++g) {
    const __m256 s = _mm256_set1_ps(inv[g]);
    for (int32_t j = 0; j < nv; ++j) {
      _mm256_storeu_ps(t.out + (g0 + g) * t.head_dim + 8 * j, _mm256_mul_ps(o[g][j], s));
    }
  }
}

// FlashAttention with the query vectors in the 8 lanes of a register: the AVX2 twin of
// attention_avx512.cc's lanes kernel (q transposed once into qt[d][lane]; per key one score
// vector, lane-wise online softmax, transposed output ot[d][lane]), used for every block
// size. Tiles of 8 keys keep scores, q rows and a broadcast within the 16 ymm registers.
constexpr int kLanes = 8;
constexpr int kTile = 8;

void flash_lanes(const AttnTask& t, int32_t i0, int32_t n) {
  const int32_t hd = t.head_dim;
  const int32_t lo = std::max(t.kv_begin, 0);
  alignas(32) float qt[256 * kLanes];    // [hd][lane] q * scale
  alignas(32) float ot[256 * kLanes];    // [hd][lane] output accumulators
  alignas(32) float pt[kTile * kLanes];  // [key][lane] tile probabilities
  alignas(32) int32_t lim[kLanes];       // lane's keys end here (exclusive)
  const float* qp[kLanes];
  float* op[kLanes];
  int32_t hi_min = INT32_MAX, hi_max = lo;
  for (int32_t lane = 0; lane < kLanes; ++lane) {
    if (lane < n) {
      const int32_t i = i0 + lane, r = i / t.n_q, g = i % t.n_q;
      qp[lane] = t.q + r * t.q_stride + static_cast<int64_t>(g) * hd;
      op[lane] = t.out + r * t.out_stride + static_cast<int64_t>(g) * hd;
      for (int32_t d = 0; d < hd; ++d) qt[d * kLanes + lane] = qp[lane][d] * t.scale;
      lim[lane] = std::min(t.kv_end, t.n_ctx + r);
      hi_min = std::min(hi_min, lim[lane]);
      hi_max = std::max(hi_max, lim[lane]);
    } else {  // idle lane: q = 0 (finite scores), never masked, output dropped
      for (int32_t d = 0; d < hd; ++d) qt[d * kLanes + lane] = 0.0f;
      lim[lane] = INT32_MAX;
    }
  }
  for (int32_t d = 0; d < hd; ++d) _mm256_store_ps(ot + d * kLanes, _mm256_setzero_ps());
  const __m256i limv = _mm256_load_si256(reinterpret_cast<const __m256i*>(lim));
  const __m256 neg_inf = _mm256_set1_ps(-INFINITY);
  __m256 m = neg_inf, l = _mm256_setzero_ps();
  const KvRows kv(t);
  alignas(32) float kbuf[kTile][256], vbuf[kTile][256];  // converted rows (non-F32 caches)
  SlotCursor keys{kv, kv.k, lo / t.block_size, lo % t.block_size};
  SlotCursor values{kv, kv.v, lo / t.block_size, lo % t.block_size};
  for (int32_t p0 = lo; p0 < hi_max; p0 += kTile) {
    const int32_t nt = hi_max - p0 < kTile ? hi_max - p0 : kTile;
    const float* kp[kTile];
    const float* vp[kTile];
    for (int32_t c = 0; c < nt; ++c) {
      kp[c] = row_f32(t.kv_type, keys.next(), hd, kbuf[c]);
      vp[c] = row_f32(t.kv_type, values.next(), hd, vbuf[c]);
    }
    for (int32_t c = nt; c < kTile; ++c) {  // past the end: repeat the last key, masked below
      kp[c] = kp[nt - 1];
      vp[c] = vp[nt - 1];
    }
    __m256 s[kTile];
    for (int c = 0; c < kTile; ++c) s[c] = _mm256_setzero_ps();
    for (int32_t d0 = 0; d0 < hd; d0 += 4) {
      __m256 qv[4];
      for (int i = 0; i < 4; ++i) qv[i] = _mm256_load_ps(qt + (d0 + i) * kLanes);
      for (int c = 0; c < kTile; ++c) {
        const float* k = kp[c] + d0;
        for (int i = 0; i < 4; ++i) s[c] = _mm256_fmadd_ps(qv[i], _mm256_broadcast_ss(k + i), s[c]);
      }
    }
    __m256 live[kTile];
    const bool masked = p0 + kTile > hi_min;
    if (masked) {
      for (int c = 0; c < kTile; ++c) {
        live[c] = _mm256_castsi256_ps(_mm256_cmpgt_epi32(limv, _mm256_set1_epi32(p0 + c)));
        s[c] = _mm256_blendv_ps(neg_inf, s[c], live[c]);
      }
    }
    __m256 mx = s[0];
    for (int c = 1; c < kTile; ++c) mx = _mm256_max_ps(mx, s[c]);
    const __m256 m_new = _mm256_max_ps(m, mx);
    // Lanes with no key yet (m_new = -inf) subtract 0 instead: their p and alpha are then 0.
    const __m256 m_use =
        _mm256_blendv_ps(m_new, _mm256_setzero_ps(), _mm256_cmp_ps(m_new, neg_inf, _CMP_EQ_OQ));
    const __m256 alpha = exp_ps(_mm256_sub_ps(m, m_use));
    __m256 sum = _mm256_setzero_ps();
    for (int c = 0; c < kTile; ++c) {
      __m256 p = exp_ps(_mm256_sub_ps(s[c], m_use));
      if (masked) p = _mm256_and_ps(p, live[c]);
      _mm256_store_ps(pt + c * kLanes, p);
      sum = _mm256_add_ps(sum, p);
    }
    l = _mm256_fmadd_ps(l, alpha, sum);
    m = m_new;
    for (int32_t d0 = 0; d0 < hd; d0 += 8) {
      __m256 o[8];
      for (int i = 0; i < 8; ++i)
        o[i] = _mm256_mul_ps(_mm256_load_ps(ot + (d0 + i) * kLanes), alpha);
      for (int c = 0; c < kTile; ++c) {
        const __m256 p = _mm256_load_ps(pt + c * kLanes);
        const float* v = vp[c] + d0;
        for (int i = 0; i < 8; ++i) o[i] = _mm256_fmadd_ps(p, _mm256_broadcast_ss(v + i), o[i]);
      }
      for (int i = 0; i < 8; ++i) _mm256_store_ps(ot + (d0 + i) * kLanes, o[i]);
    }
  }
  alignas(32) float mv[kLanes], lv[kLanes];
  _mm256_store_ps(mv, m);
  _mm256_store_ps(lv, l);
  for (int32_t lane = 0; lane < n; ++lane) {
    float mul = 1.0f;
    if (t.ml) {
      t.ml[2 * (i0 + lane)] = mv[lane];
      t.ml[2 * (i0 + lane) + 1] = lv[lane];
    } else {
      mul = 1.0f / lv[lane];
    }
    for (int32_t d = 0; d < hd; ++d) op[lane][d] = ot[d * kLanes + lane] * mul;
  }
}

}  // namespace

void attention(const AttnTask& t, float* scores) {
  for (int32_t g0 = 0; g0 < t.n_q; g0 += kMaxGroup) {
    const int32_t ng = t.n_q - g0 < kMaxGroup ? t.n_q - g0 : kMaxGroup;
    attend_group(t, g0, ng, scores + static_cast<int64_t>(g0) * t.n_ctx);
  }
}

int32_t attention_flash_rows(int32_t n_q) { return std::max(1, kLanes / n_q); }

void attention_flash(const AttnTask& t, float* /*scores: unused, scratch is O(1)*/) {
  // Up to 8 query vectors per pass over the keys: whole rows where the group fits (a row's
  // heads share its causal end), else a row's heads 8 at a time.
  const int32_t n_vec = t.n_rows * t.n_q;
  if (t.n_q <= kLanes) {
    const int32_t per = (kLanes / t.n_q) * t.n_q;
    for (int32_t i0 = 0; i0 < n_vec; i0 += per) flash_lanes(t, i0, std::min(per, n_vec - i0));
  } else {
    for (int32_t r = 0; r < t.n_rows; ++r) {
      for (int32_t g0 = 0; g0 < t.n_q; g0 += kLanes) {
        flash_lanes(t, r * t.n_q + g0, std::min(kLanes, t.n_q - g0));
      }
    }
  }
}

}  // namespace qilin::avx2
