// Private: the tiled training-attention kernels behind train_attention_kernels(), written once
// over an ISA's vector operations `S` (train_attention_avx2.cc and _avx512.cc define S and
// include this file, each compiled with its own flags).
// A tile is S::kL query vectors (items of one KV head, lanes of a register) against S::kL keys:
// q is held transposed ([hd][lanes], pre-scaled by 1/sqrt(hd)) and K, V are packed per key tile
// as [hd][keys], so a tile's scores are hd steps of one load and kL broadcast FMAs into kL
// accumulators (one per key, lanes = queries), and the softmax is lane-wise: no horizontal sums.
// NOTE: everything here has internal linkage, so the two ISA files' copies never merge.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/train_attention.h"

namespace qilin {
namespace {

// Per-thread scratch, grown on first use and kept (no allocation once warm).
inline float* ta_scratch(size_t n) {
  static thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// K (or V) rows [0, n_keys) of KV head g packed as [n_keys / L tiles][hd][L], zero-padded.
template <int L>
void ta_pack_keys(const float* k, int32_t Hkv, int32_t hd, int32_t g, int64_t n_keys, float* dst) {
  const int64_t n_tiles = (n_keys + L - 1) / L;
  for (int64_t tile = 0; tile < n_tiles; ++tile) {
    float* t = dst + tile * hd * L;
    for (int jj = 0; jj < L; ++jj) {
      const int64_t j = tile * L + jj;
      if (j >= n_keys) {
        for (int32_t d = 0; d < hd; ++d) t[d * L + jj] = 0.0f;
        continue;
      }
      const float* row = k + (j * Hkv + g) * hd;
      for (int32_t d = 0; d < hd; ++d) t[d * L + jj] = row[d];
    }
  }
}

// The lanes of one query tile: items [i, min(i + L, i1)) of KV head g.
template <int L>
struct TaLanes {
  int32_t t[L];    // each lane's row; -1 past the range (so every key is masked there)
  int64_t row[L];  // each lane's [n, H] row index t * H + h (valid lanes only)
  int n = 0;       // valid lanes
  int64_t t_lo = 0, t_hi = 0;
  TaLanes(int64_t i, int64_t i1, int32_t group, int32_t g, int32_t H) {
    n = static_cast<int>(std::min<int64_t>(L, i1 - i));
    for (int l = 0; l < L; ++l) {
      const int64_t item = i + l;
      t[l] = l < n ? static_cast<int32_t>(item / group) : -1;
      row[l] = l < n ? (item / group) * H + g * group + item % group : 0;
    }
    t_lo = t[0];
    t_hi = t[n - 1];
  }
};

// dst[d][l] = src row of lane l, element d, times mul (zero for padding lanes).
template <int L>
void ta_transpose_in(const float* src, const TaLanes<L>& ln, int32_t hd, float mul, float* dst) {
  for (int l = 0; l < L; ++l) {
    if (l >= ln.n) {
      for (int32_t d = 0; d < hd; ++d) dst[d * L + l] = 0.0f;
      continue;
    }
    const float* r = src + ln.row[l] * hd;
    for (int32_t d = 0; d < hd; ++d) dst[d * L + l] = r[d] * mul;
  }
}

// s[jj] = sum_d at[d][lanes] * kt[d][jj]: a tile of scores (lanes = queries).
template <class S>
inline void ta_scores(const float* at, const float* kt, int32_t hd, typename S::V* s) {
  constexpr int L = S::kL;
#pragma GCC unroll 16
  for (int jj = 0; jj < L; ++jj) s[jj] = S::zero();
  for (int32_t d = 0; d < hd; ++d) {
    const typename S::V a = S::load(at + d * L);
    const float* k = kt + d * L;
#pragma GCC unroll 16
    for (int jj = 0; jj < L; ++jj) s[jj] = S::fma(a, S::set1(k[jj]), s[jj]);
  }
}

// acc[d][lanes] = acc[d] * alpha + sum_jj p[jj] * vt[d][jj] for every d (kAccRows rows of d at
// once: independent FMA chains). kScale false: alpha is 1 and not applied.
template <class S, bool kScale>
inline void ta_accumulate(const typename S::V* p, const float* vt, int32_t hd, typename S::V alpha,
                          float* acc) {
  constexpr int L = S::kL, R = S::kAccRows;
  using V = typename S::V;
  int32_t d = 0;
  for (; d + R <= hd; d += R) {
    V o[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      o[r] = S::load(acc + (d + r) * L);
      if constexpr (kScale) o[r] = S::mul(o[r], alpha);
    }
#pragma GCC unroll 16
    for (int jj = 0; jj < L; ++jj) {
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) o[r] = S::fma(p[jj], S::set1(vt[(d + r) * L + jj]), o[r]);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) S::store(acc + (d + r) * L, o[r]);
  }
  for (; d < hd; ++d) {
    V o = S::load(acc + d * L);
    if constexpr (kScale) o = S::mul(o, alpha);
#pragma GCC unroll 16
    for (int jj = 0; jj < L; ++jj) o = S::fma(p[jj], S::set1(vt[d * L + jj]), o);
    S::store(acc + d * L, o);
  }
}

// dst[jj][:] += sum_l w[jj][l] * rows[l][:] for the tile's keys jj (dV from P and dout, dK
// from dS and q): hd in the lanes, kL key rows of accumulators.
template <class S>
inline void ta_outer_add(const float* w /*[L][L]*/, const float* rows /*[L][hd]*/, int32_t hd,
                         float* const* dst /*[L] rows of hd*/) {
  constexpr int L = S::kL;
  using V = typename S::V;
  int32_t c = 0;
  for (; c + L <= hd; c += L) {
    V a[L];
#pragma GCC unroll 16
    for (int jj = 0; jj < L; ++jj) a[jj] = S::load(dst[jj] + c);
    for (int l = 0; l < L; ++l) {
      const V x = S::load(rows + l * hd + c);
#pragma GCC unroll 16
      for (int jj = 0; jj < L; ++jj) a[jj] = S::fma(S::set1(w[jj * L + l]), x, a[jj]);
    }
#pragma GCC unroll 16
    for (int jj = 0; jj < L; ++jj) S::store(dst[jj] + c, a[jj]);
  }
  for (; c < hd; ++c) {  // head_dim not a multiple of the lanes
    for (int jj = 0; jj < L; ++jj) {
      float s = dst[jj][c];
      for (int l = 0; l < L; ++l) s += w[jj * L + l] * rows[l * hd + c];
      dst[jj][c] = s;
    }
  }
}

// What a call over items [i0, i1) of KV head g shares between forward and backward: K and V
// packed up to the items' last row, then `extra` floats of per-tile scratch.
template <int L>
struct TaCall {
  int32_t group, hd;
  float scale;  // 1 / sqrt(hd)
  float* kp;    // packed K tiles
  float* vp;    // packed V tiles
  float* extra;
  TaCall(const TrainAttnArgs& a, int32_t g, int64_t i1, int64_t extra_floats)
      : group(a.H / a.Hkv), hd(a.hd), scale(1.0f / std::sqrt(static_cast<float>(a.hd))) {
    const int64_t n_keys = (i1 - 1) / group + 1;
    const int64_t kv_floats = (n_keys + L - 1) / L * L * hd;
    kp = ta_scratch(2 * kv_floats + extra_floats);
    vp = kp + kv_floats;
    extra = vp + kv_floats;
    ta_pack_keys<L>(a.k, a.Hkv, hd, g, n_keys, kp);
    ta_pack_keys<L>(a.v, a.Hkv, hd, g, n_keys, vp);
  }
};

template <class S>
void ta_forward(const TrainAttnArgs& a, int32_t g, int64_t i0, int64_t i1, float* out, float* lse) {
  constexpr int L = S::kL;
  using V = typename S::V;
  if (i0 >= i1) return;
  const TaCall<L> c(a, g, i1, 2 * int64_t{a.hd} * L);
  const int32_t group = c.group, hd = c.hd;
  const float *kp = c.kp, *vp = c.vp;
  float* qt = c.extra;      // [hd][L] q / sqrt(hd)
  float* ot = qt + hd * L;  // [hd][L] unnormalised output
  const V neg_inf = S::set1(-INFINITY);
  for (int64_t i = i0; i < i1; i += L) {
    const TaLanes<L> ln(i, i1, group, g, a.H);
    ta_transpose_in<L>(a.q, ln, hd, c.scale, qt);
    std::fill_n(ot, hd * L, 0.0f);
    const auto tv = S::load_i(ln.t);
    V m = neg_inf, l = S::zero();
    for (int64_t j0 = 0; j0 <= ln.t_hi; j0 += L) {
      const float* kt = kp + j0 * hd;  // key tile j0 / L
      V s[L];
      ta_scores<S>(qt, kt, hd, s);
      // Keys past some lane's row (the diagonal tile, padding lanes) are masked out.
      const bool edge = j0 + L - 1 > ln.t_lo || ln.n < L;
      if (edge) {
#pragma GCC unroll 16
        for (int jj = 0; jj < L; ++jj) s[jj] = S::select(S::visible(j0 + jj, tv), s[jj], neg_inf);
      }
      V mx = s[0];
#pragma GCC unroll 16
      for (int jj = 1; jj < L; ++jj) mx = S::max(mx, s[jj]);
      const V m_new = S::max(m, mx);
      const V alpha = S::exp(S::sub(m, m_new));  // e^-inf (first tile): exp clamps to ~0
      m = m_new;
      V sum = S::zero();
#pragma GCC unroll 16
      for (int jj = 0; jj < L; ++jj) {
        s[jj] = S::exp(S::sub(s[jj], m_new));
        if (edge) s[jj] = S::select(S::visible(j0 + jj, tv), s[jj], S::zero());
        sum = S::add(sum, s[jj]);
      }
      l = S::fma(l, alpha, sum);
      ta_accumulate<S, true>(s, vp + j0 * hd, hd, alpha, ot);
    }
    float mv[L], lv[L];
    S::store(mv, m);
    S::store(lv, l);
    for (int q = 0; q < ln.n; ++q) {
      const float inv = 1.0f / lv[q];
      float* o = out + ln.row[q] * hd;
      for (int32_t d = 0; d < hd; ++d) o[d] = ot[d * L + q] * inv;
      lse[ln.row[q]] = mv[q] + std::log(lv[q]);
    }
  }
}

template <class S>
void ta_backward(const TrainAttnArgs& a, const float* out, const float* lse, const float* dout,
                 int32_t g, int64_t i0, int64_t i1, float* dq, float* dk, float* dv) {
  constexpr int L = S::kL;
  using V = typename S::V;
  if (i0 >= i1) return;
  const int64_t tile_floats = int64_t{a.hd} * L;
  const TaCall<L> c(a, g, i1, 5 * tile_floats + 2 * L * L + a.hd);
  const int32_t group = c.group, hd = c.hd;
  const float scale = c.scale;
  const float *kp = c.kp, *vp = c.vp;
  float* qt = c.extra;            // [hd][L] q / sqrt(hd)
  float* gt = qt + tile_floats;   // [hd][L] dout
  float* dqt = gt + tile_floats;  // [hd][L] dq
  float* qr = dqt + tile_floats;  // [L][hd] q rows
  float* gr = qr + tile_floats;   // [L][hd] dout rows
  float* pb = gr + tile_floats;   // [L keys][L lanes] P
  float* sb = pb + L * L;         // [L keys][L lanes] dS
  float* sink = sb + L * L;       // [hd] receives (zero) shares of keys past n
  const int64_t kv_stride = int64_t{a.Hkv} * hd;
  for (int64_t i = i0; i < i1; i += L) {
    const TaLanes<L> ln(i, i1, group, g, a.H);
    ta_transpose_in<L>(a.q, ln, hd, scale, qt);
    ta_transpose_in<L>(dout, ln, hd, 1.0f, gt);
    std::fill_n(dqt, tile_floats, 0.0f);
    float lse_l[L], d_l[L];  // per lane: log-sum-exp, D = dout . out
    for (int q = 0; q < L; ++q) {
      float* qrow = qr + q * hd;
      float* grow = gr + q * hd;
      if (q >= ln.n) {
        std::fill_n(qrow, hd, 0.0f);
        std::fill_n(grow, hd, 0.0f);
        lse_l[q] = 0.0f;
        d_l[q] = 0.0f;
        continue;
      }
      std::memcpy(qrow, a.q + ln.row[q] * hd, hd * sizeof(float));
      std::memcpy(grow, dout + ln.row[q] * hd, hd * sizeof(float));
      const float* o = out + ln.row[q] * hd;
      float D = 0.0f;
      for (int32_t d = 0; d < hd; ++d) D += grow[d] * o[d];
      lse_l[q] = lse[ln.row[q]];
      d_l[q] = D;
    }
    const auto tv = S::load_i(ln.t);
    const V lse_v = S::load(lse_l), d_v = S::load(d_l), scale_v = S::set1(scale);
    for (int64_t j0 = 0; j0 <= ln.t_hi; j0 += L) {
      const float* kt = kp + j0 * hd;
      const float* vt = vp + j0 * hd;
      const bool edge = j0 + L - 1 > ln.t_lo || ln.n < L;
      V s[L];
      // P = e^(S - lse), masked to 0.
      ta_scores<S>(qt, kt, hd, s);
#pragma GCC unroll 16
      for (int jj = 0; jj < L; ++jj) {
        V p = S::exp(S::sub(s[jj], lse_v));
        if (edge) p = S::select(S::visible(j0 + jj, tv), p, S::zero());
        S::store(pb + jj * L, p);
      }
      // dS = P (dout . v - D) / sqrt(hd)
      ta_scores<S>(gt, vt, hd, s);
#pragma GCC unroll 16
      for (int jj = 0; jj < L; ++jj) {
        s[jj] = S::mul(S::mul(S::load(pb + jj * L), S::sub(s[jj], d_v)), scale_v);
        S::store(sb + jj * L, s[jj]);
      }
      ta_accumulate<S, false>(s, kt, hd, S::zero(), dqt);  // dq += dS k
      float* dv_rows[L];
      float* dk_rows[L];
      for (int jj = 0; jj < L; ++jj) {
        const int64_t j = j0 + jj;
        dv_rows[jj] = j < a.n ? dv + j * kv_stride + int64_t{g} * hd : sink;
        dk_rows[jj] = j < a.n ? dk + j * kv_stride + int64_t{g} * hd : sink;
      }
      ta_outer_add<S>(pb, gr, hd, dv_rows);  // dv += P^T dout
      ta_outer_add<S>(sb, qr, hd, dk_rows);  // dk += dS^T q
    }
    for (int q = 0; q < ln.n; ++q) {
      float* r = dq + ln.row[q] * hd;
      for (int32_t d = 0; d < hd; ++d) r[d] += dqt[d * L + q];
    }
  }
}

}  // namespace
}  // namespace qilin
