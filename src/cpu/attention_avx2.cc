// AVX2 attention for one GQA group: the same structure as attention_avx512.cc with 8-float
// vectors (K and V slots read once per group, vectorised softmax with a polynomial exp).
#include <immintrin.h>

#include <cmath>

#include "cpu/attention.h"
#include "cpu/vec_avx2.h"

namespace qilin::avx2 {
namespace {

constexpr int kMaxGroup = 4;   // query heads processed together (larger groups loop)
constexpr int kMaxVecs = 32;   // head_dim / 8 <= 32

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
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

void attend_group(const AttnTask& t, int32_t g0, int32_t ng, float* scores) {
  const int32_t nv = t.head_dim / 8;
  const int32_t n = t.n_ctx;
  const float* qg = t.q + static_cast<int64_t>(g0) * t.head_dim;
  SlotCursor keys{t, t.k};
  for (int32_t p = 0; p < n; ++p) {
    const float* kp = keys.next();
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
  SlotCursor values{t, t.v};
  for (int32_t p = 0; p < n; ++p) {
    const float* vp = values.next();
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

}  // namespace

void attention(const AttnTask& t, float* scores) {
  for (int32_t g0 = 0; g0 < t.n_q; g0 += kMaxGroup) {
    const int32_t ng = t.n_q - g0 < kMaxGroup ? t.n_q - g0 : kMaxGroup;
    attend_group(t, g0, ng, scores + static_cast<int64_t>(g0) * t.n_ctx);
  }
}

}  // namespace qilin::avx2
