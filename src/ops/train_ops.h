// The decoder block's operators for training: each X_forward beside its X_backward, in plain
// loops over a scalar type T (float for training, double for the finite-difference tests).
// Conventions (llm.c's): backward functions ACCUMULATE into every gradient they write (+=),
// so gradients flowing into one tensor from several uses simply add; callers zero them first.
// Shapes are written beside each argument; rows are tokens of ONE sequence at positions
// 0..n-1 (training batches are packed sequences processed one at a time).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace qilin {

// a . b with 8 independent partial sums (the compiler may keep them in vector lanes; one
// running sum is a chain of dependent adds it must not reorder).
template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  T acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  T s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// ---- embedding ----------------------------------------------------------------------------

// out[t] = table[tokens[t]]
template <typename T>
void embedding_forward(const T* table /*[V, d]*/, const int32_t* tokens /*[n]*/, int64_t n,
                       int64_t d, T* out /*[n, d]*/) {
  for (int64_t t = 0; t < n; ++t) std::copy_n(table + tokens[t] * d, d, out + t * d);
}
template <typename T>
void embedding_backward(const T* dout /*[n, d]*/, const int32_t* tokens, int64_t n, int64_t d,
                        T* dtable /*[V, d]*/) {
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < d; ++i) dtable[tokens[t] * d + i] += dout[t * d + i];
  }
}

// ---- RMSNorm: out = x / rms(x) * w ---------------------------------------------------------

template <typename T>
void rmsnorm_forward(const T* x /*[n, d]*/, const T* w /*[d]*/, int64_t n, int64_t d, T eps,
                     T* out /*[n, d]*/, T* rstd /*[n] saved*/) {
  for (int64_t t = 0; t < n; ++t) {
    const T* xt = x + t * d;
    T ss = 0;
    for (int64_t i = 0; i < d; ++i) ss += xt[i] * xt[i];
    const T r = T(1) / std::sqrt(ss / d + eps);
    rstd[t] = r;
    for (int64_t i = 0; i < d; ++i) out[t * d + i] = xt[i] * r * w[i];
  }
}
// dx += r*w*dout - x * r^3 / d * sum(dout*w*x); dw += sum_t dout * x * r
template <typename T>
void rmsnorm_backward(const T* dout, const T* x, const T* w, const T* rstd, int64_t n, int64_t d,
                      T* dx /*[n, d]*/, T* dw /*[d] or null*/) {
  for (int64_t t = 0; t < n; ++t) {
    const T* xt = x + t * d;
    const T* gt = dout + t * d;
    const T r = rstd[t];
    T dot = 0;
    for (int64_t i = 0; i < d; ++i) dot += gt[i] * w[i] * xt[i];
    const T c = dot * r * r * r / d;
    for (int64_t i = 0; i < d; ++i) {
      dx[t * d + i] += gt[i] * w[i] * r - xt[i] * c;
      if (dw) dw[i] += gt[i] * xt[i] * r;
    }
  }
}

// ---- linear: y = x W^T (W frozen or trainable) ------------------------------------------------

template <typename T>
void linear_forward(const T* x /*[n, in]*/, const T* W /*[out, in]*/, int64_t n, int64_t in,
                    int64_t out, T* y /*[n, out]*/) {
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t o = 0; o < out; ++o) y[t * out + o] = dot(x + t * in, W + o * in, in);
  }
}
// dx += dy W; dW += dy^T x (dW may be null: frozen base)
template <typename T>
void linear_backward(const T* dy /*[n, out]*/, const T* x, const T* W, int64_t n, int64_t in,
                     int64_t out, T* dx /*[n, in] or null*/, T* dW /*[out, in] or null*/) {
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t o = 0; o < out; ++o) {
      const T g = dy[t * out + o];
      if (g == T(0)) continue;
      if (dx) {
        for (int64_t i = 0; i < in; ++i) dx[t * in + i] += g * W[o * in + i];
      }
      if (dW) {
        for (int64_t i = 0; i < in; ++i) dW[o * in + i] += g * x[t * in + i];
      }
    }
  }
}

// ---- LoRA: y += scale * (x A^T) B^T ---------------------------------------------------------

// y += scale * xa B^T (LoRA's second product, alone so that xa can be rounded in between).
template <typename T>
void lora_up_forward(const T* xa /*[n, r]*/, const T* B /*[out, r]*/, int64_t n, int64_t r,
                     int64_t out, T scale, T* y /*[n, out], added to*/) {
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t o = 0; o < out; ++o) y[t * out + o] += scale * dot(xa + t * r, B + o * r, r);
  }
}
template <typename T>
void lora_forward(const T* x /*[n, in]*/, const T* A /*[r, in]*/, const T* B /*[out, r]*/,
                  int64_t n, int64_t in, int64_t r, int64_t out, T scale,
                  T* xa /*[n, r] saved*/, T* y /*[n, out], added to*/) {
  linear_forward(x, A, n, in, r, xa);
  lora_up_forward(xa, B, n, r, out, scale, y);
}
// LoRA's backward in three parts that threads split without sharing an output (rows; rows of
// dB; columns of dA), each element summed in the same order whatever the split.
// dxa[t] = scale * dy[t] B and dx[t] += dxa[t] A for rows [t0, t1); Bt is B transposed.
template <typename T>
void lora_backward_rows(const T* dy /*[n, out]*/, const T* A /*[r, in]*/, const T* Bt /*[r, out]*/,
                        int64_t t0, int64_t t1, int64_t in, int64_t r, int64_t out, T scale,
                        T* dxa /*[n, r]*/, T* dx /*[n, in] or null*/) {
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t k = 0; k < r; ++k) dxa[t * r + k] = scale * dot(dy + t * out, Bt + k * out, out);
    if (!dx) continue;
    for (int64_t k = 0; k < r; ++k) {
      const T g = dxa[t * r + k];
      for (int64_t i = 0; i < in; ++i) dx[t * in + i] += g * A[k * in + i];
    }
  }
}
// dB[o] += scale * sum_t dy[t, o] xa[t] for B's rows [o0, o1).
template <typename T>
void lora_backward_db(const T* dy /*[n, out]*/, const T* xa /*[n, r]*/, int64_t n, int64_t r,
                      int64_t out, T scale, int64_t o0, int64_t o1, T* dB /*[out, r]*/) {
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t o = o0; o < o1; ++o) {
      const T g = scale * dy[t * out + o];
      for (int64_t k = 0; k < r; ++k) dB[o * r + k] += g * xa[t * r + k];
    }
  }
}
// dA[:, i] += sum_t dxa[t] x[t, i] for A's columns [i0, i1).
template <typename T>
void lora_backward_da(const T* x /*[n, in]*/, const T* dxa /*[n, r]*/, int64_t n, int64_t in,
                      int64_t r, int64_t i0, int64_t i1, T* dA /*[r, in]*/) {
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t k = 0; k < r; ++k) {
      const T g = dxa[t * r + k];
      for (int64_t i = i0; i < i1; ++i) dA[k * in + i] += g * x[t * in + i];
    }
  }
}
template <typename T>
void lora_transpose(const T* B /*[out, r]*/, int64_t out, int64_t r, T* Bt /*[r, out]*/) {
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t k = 0; k < r; ++k) Bt[k * out + o] = B[o * r + k];
  }
}
template <typename T>
void lora_backward(const T* dy /*[n, out]*/, const T* x, const T* A, const T* B, const T* xa,
                   int64_t n, int64_t in, int64_t r, int64_t out, T scale,
                   T* dx /*[n, in] or null*/, T* dA /*[r, in]*/, T* dB /*[out, r]*/) {
  std::vector<T> Bt(static_cast<size_t>(r * out)), dxa(static_cast<size_t>(n * r));
  lora_transpose(B, out, r, Bt.data());
  lora_backward_rows(dy, A, Bt.data(), 0, n, in, r, out, scale, dxa.data(), dx);
  lora_backward_db(dy, xa, n, r, out, scale, 0, out, dB);
  lora_backward_da(x, dxa.data(), n, in, r, 0, in, dA);
}

// ---- RoPE (pairs (2i, 2i+1) or NeoX halves), in place ---------------------------------------

template <typename T>
void rope_apply(T* x /*[n, n_head, hd]*/, int64_t n, int32_t n_head, int32_t hd, int32_t n_rot,
                T freq_base, bool neox, T sign /*+1 forward, -1 backward (inverse rotation)*/) {
  const int32_t n_pairs = n_rot / 2;
  for (int64_t t = 0; t < n; ++t) {
    for (int32_t i = 0; i < n_pairs; ++i) {
      const T theta = static_cast<T>(t) * std::pow(freq_base, T(-2) * i / n_rot);
      const T c = std::cos(theta), s = sign * std::sin(theta);
      for (int32_t h = 0; h < n_head; ++h) {
        T* xh = x + (t * n_head + h) * hd;
        const int32_t a = neox ? i : 2 * i, b = neox ? i + n_pairs : 2 * i + 1;
        const T x0 = xh[a], x1 = xh[b];
        xh[a] = x0 * c - x1 * s;
        xh[b] = x0 * s + x1 * c;
      }
    }
  }
}
// The rotation is orthogonal: its backward is the inverse rotation of the gradient.
template <typename T>
void rope_forward(T* x, int64_t n, int32_t n_head, int32_t hd, int32_t n_rot, T base, bool neox) {
  rope_apply(x, n, n_head, hd, n_rot, base, neox, T(1));
}
template <typename T>
void rope_backward(T* dx, int64_t n, int32_t n_head, int32_t hd, int32_t n_rot, T base, bool neox) {
  rope_apply(dx, n, n_head, hd, n_rot, base, neox, T(-1));
}

// ---- causal grouped-query attention ------------------------------------------------------------
// out[t, h] = sum_{s <= t} softmax_s(scale * q[t,h].k[s,g]) v[s,g], g = h / (H / Hkv).
// The forward saves only the log-sum-exp per (t, h); the backward recomputes the probabilities
// from it (FlashAttention's backward), so no n x n matrix is ever stored. [h0, h1) limits the
// query heads (threads split them; the backward's dk/dv then need one buffer per thread).

template <typename T>
void attention_forward(const T* q /*[n, H, hd]*/, const T* k /*[n, Hkv, hd]*/,
                       const T* v /*[n, Hkv, hd]*/, int64_t n, int32_t H, int32_t Hkv, int32_t hd,
                       T* out /*[n, H, hd]*/, T* lse /*[n, H] saved*/, int32_t h0 = 0, int32_t h1 = -1) {
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  const int32_t group = H / Hkv;
  if (h1 < 0) h1 = H;
  std::vector<T> s(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) {
    for (int32_t h = h0; h < h1; ++h) {
      const T* qt = q + (t * H + h) * hd;
      const int32_t g = h / group;
      T mx = -INFINITY;
      for (int64_t j = 0; j <= t; ++j) {
        const T* kj = k + (j * Hkv + g) * hd;
        const T d = dot(qt, kj, hd);
        s[j] = d * scale;
        mx = std::max(mx, s[j]);
      }
      T sum = 0;
      for (int64_t j = 0; j <= t; ++j) sum += std::exp(s[j] - mx);
      const T l = mx + std::log(sum);
      lse[t * H + h] = l;
      T* ot = out + (t * H + h) * hd;
      std::fill_n(ot, hd, T(0));
      for (int64_t j = 0; j <= t; ++j) {
        const T p = std::exp(s[j] - l);
        const T* vj = v + (j * Hkv + g) * hd;
        for (int32_t i = 0; i < hd; ++i) ot[i] += p * vj[i];
      }
    }
  }
}
// With P recomputed from lse and D[t,h] = dout[t,h] . out[t,h]:
// dV[s] += sum_t P[t,s] dout[t]; dS[t,s] = P[t,s] (dout[t].v[s] - D[t]);
// dQ[t] += scale sum_s dS[t,s] k[s]; dK[s] += scale sum_t dS[t,s] q[t].
template <typename T>
void attention_backward(const T* dout /*[n, H, hd]*/, const T* q, const T* k, const T* v,
                        const T* out, const T* lse, int64_t n, int32_t H, int32_t Hkv, int32_t hd,
                        T* dq /*[n, H, hd]*/, T* dk /*[n, Hkv, hd]*/, T* dv /*[n, Hkv, hd]*/,
                        int32_t h0 = 0, int32_t h1 = -1) {
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  const int32_t group = H / Hkv;
  if (h1 < 0) h1 = H;
  for (int64_t t = 0; t < n; ++t) {
    for (int32_t h = h0; h < h1; ++h) {
      const T* qt = q + (t * H + h) * hd;
      const T* gt = dout + (t * H + h) * hd;
      const T* ot = out + (t * H + h) * hd;
      const int32_t g = h / group;
      const T D = dot(gt, ot, hd);
      for (int64_t j = 0; j <= t; ++j) {
        const T* kj = k + (j * Hkv + g) * hd;
        const T* vj = v + (j * Hkv + g) * hd;
        const T sd = dot(qt, kj, hd), dpv = dot(gt, vj, hd);
        const T p = std::exp(sd * scale - lse[t * H + h]);
        const T ds = p * (dpv - D) * scale;
        T* dvj = dv + (j * Hkv + g) * hd;
        T* dkj = dk + (j * Hkv + g) * hd;
        T* dqt = dq + (t * H + h) * hd;
        for (int32_t i = 0; i < hd; ++i) {
          dvj[i] += p * gt[i];
          dqt[i] += ds * kj[i];
          dkj[i] += ds * qt[i];
        }
      }
    }
  }
}

// ---- SwiGLU: out = silu(g) * u -------------------------------------------------------------

template <typename T>
void swiglu_forward(const T* g, const T* u, int64_t m, T* out) {
  for (int64_t i = 0; i < m; ++i) out[i] = g[i] / (T(1) + std::exp(-g[i])) * u[i];
}
template <typename T>
void swiglu_backward(const T* dout, const T* g, const T* u, int64_t m, T* dg, T* du) {
  for (int64_t i = 0; i < m; ++i) {
    const T sig = T(1) / (T(1) + std::exp(-g[i]));
    const T silu = g[i] * sig;
    du[i] += dout[i] * silu;
    dg[i] += dout[i] * u[i] * sig * (T(1) + g[i] * (T(1) - sig));
  }
}

// ---- cross-entropy fused with the softmax ------------------------------------------------------
// loss = mean over counted rows of -log softmax(logits[t])[target[t]]; target < 0: not counted.
// Writes (not accumulates) dlogits = (softmax - onehot) / count for counted rows, 0 otherwise.
// Returns the loss; *count receives the counted rows. denom > 0 replaces the count as the
// divisor (the rows are one chunk of a longer sequence). dlogits may be logits (in place).
template <typename T>
T cross_entropy_forward_backward(const T* logits /*[n, V]*/, const int32_t* target /*[n]*/,
                                 int64_t n, int64_t V, T* dlogits /*[n, V] or null*/,
                                 int64_t* count_out = nullptr, int64_t denom = 0) {
  int64_t count = 0;
  for (int64_t t = 0; t < n; ++t) count += target[t] >= 0;
  if (count_out) *count_out = count;
  if (denom > 0) count = denom;
  T loss = 0;
  for (int64_t t = 0; t < n; ++t) {
    const T* l = logits + t * V;
    if (target[t] < 0) {
      if (dlogits) std::fill_n(dlogits + t * V, V, T(0));
      continue;
    }
    const T mx = *std::max_element(l, l + V);
    T sum = 0;
    for (int64_t i = 0; i < V; ++i) sum += std::exp(l[i] - mx);
    const T lse = mx + std::log(sum);
    loss += lse - l[target[t]];
    if (dlogits) {
      for (int64_t i = 0; i < V; ++i) {
        dlogits[t * V + i] = (std::exp(l[i] - lse) - (i == target[t] ? T(1) : T(0))) / count;
      }
    }
  }
  return count ? loss / count : T(0);
}

}  // namespace qilin
