// The tests' reference for LoRA training (not built into the library): a Llama with LoRA
// adapters written out block by block over dense weights of a scalar type T, forward and
// backward in plain loops (ops/train_ops.h). In double, its adapter gradients are checked
// against finite differences (test_train_layers.cc); the library's trainer, which runs the
// model's own Decoder (train/lora_trainer.h), is checked against it (test_train_model.cc).
// This was the training graph before training moved onto the Decoder (issue 16).
// NOTE: the base is frozen; backward produces gradients for the adapters only.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

#include "core/assert.h"
#include "core/thread_pool.h"
#include "cpu/train_attention.h"
#include "ops/train_ops.h"
#include "train/lora.h"
#include "train/precision.h"

namespace qilin::train {

struct LlamaShape {
  int32_t n_vocab = 0, n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0;
  int32_t n_ff = 0, n_rot = 0;
  float rms_eps = 1e-5f, rope_base = 10000.0f;
  bool rope_neox = false;
  bool tied_output = true;  // the output head is the embedding table
};

template <typename T>
struct BaseLayer {
  std::vector<T> attn_norm, ffn_norm;  // [E]
  std::array<std::vector<T>, kNumProj> w;  // [out, in] each
};

template <typename T>
class LoraLlamaRef {
 public:
  LoraLlamaRef(const LlamaShape& s, const LoraConfig& lc) : s_(s), lc_(lc) {
    base_.resize(s.n_layer);
    lora_.resize(s.n_layer);
    grad_.resize(s.n_layer);
  }
  const LlamaShape& shape() const { return s_; }
  const LoraConfig& lora_config() const { return lc_; }
  T scale() const { return static_cast<T>(lc_.alpha) / lc_.rank; }
  // in and out features of projection p.
  int64_t proj_in(int p) const {
    const int64_t E = s_.n_embd, dq = int64_t{s_.n_head} * s_.head_dim;
    return p == kO ? dq : p == kDown ? s_.n_ff : E;
  }
  int64_t proj_out(int p) const {
    const int64_t E = s_.n_embd, dq = int64_t{s_.n_head} * s_.head_dim,
                  dkv = int64_t{s_.n_head_kv} * s_.head_dim;
    return p == kQ ? dq : (p == kK || p == kV) ? dkv : (p == kGate || p == kUp) ? s_.n_ff : E;
  }

  std::vector<T> tok_embd;  // [V, E]
  std::vector<T> output;    // [V, E] when not tied
  std::vector<T> out_norm;  // [E]
  std::vector<BaseLayer<T>>& base() { return base_; }
  std::vector<LoraLayer<T>>& lora() { return lora_; }
  std::vector<LoraLayer<T>>& grad() { return grad_; }  // same shapes as lora()
  // When set, the LoRA weights and gradients come from and go to the store (one layer at a
  // time) instead of lora() and grad(); not owned.
  void set_lora_store(LoraStore<T>* st) { store_ = st; }

  // Random base (for tests) with the given standard deviation.
  void init_random_base(uint32_t seed, T sd) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> d(0.0, static_cast<double>(sd));
    auto fill = [&](std::vector<T>& v, size_t n) {
      v.resize(n);
      for (T& x : v) x = static_cast<T>(d(rng));
    };
    const int64_t E = s_.n_embd;
    fill(tok_embd, static_cast<size_t>(s_.n_vocab) * E);
    if (!s_.tied_output) fill(output, static_cast<size_t>(s_.n_vocab) * E);
    out_norm.assign(E, T(1));
    for (BaseLayer<T>& L : base_) {
      fill(L.attn_norm, E);
      fill(L.ffn_norm, E);
      for (T& x : L.attn_norm) x += 1;
      for (T& x : L.ffn_norm) x += 1;
      for (int p = 0; p < kNumProj; ++p) fill(L.w[p], proj_out(p) * proj_in(p));
    }
  }
  // LoRA init: A random (Kaiming-uniform-like, as PEFT), B zero, unless b_sd > 0 (tests).
  void init_lora(uint32_t seed, T b_sd = 0) {
    std::mt19937 rng(seed);
    for (size_t l = 0; l < lora_.size(); ++l) {
      for (int p = 0; p < kNumProj; ++p) {
        if (!lc_.targets[p]) continue;
        const int64_t in = proj_in(p), out = proj_out(p), r = lc_.rank;
        const double bound = 1.0 / std::sqrt(static_cast<double>(in));
        std::uniform_real_distribution<double> ua(-bound, bound);
        std::normal_distribution<double> nb(0.0, static_cast<double>(b_sd));
        lora_[l].A[p].resize(r * in);
        for (T& x : lora_[l].A[p]) x = static_cast<T>(ua(rng));
        lora_[l].B[p].resize(out * r);
        for (T& x : lora_[l].B[p]) x = b_sd > 0 ? static_cast<T>(nb(rng)) : T(0);
        grad_[l].A[p].assign(r * in, T(0));
        grad_[l].B[p].assign(out * r, T(0));
      }
    }
  }
  void zero_grad() {
    for (LoraLayer<T>& g : grad_) {
      for (int p = 0; p < kNumProj; ++p) {
        std::fill(g.A[p].begin(), g.A[p].end(), T(0));
        std::fill(g.B[p].begin(), g.B[p].end(), T(0));
      }
    }
  }

  // Compute precision (float only; see train/precision.h) and activation checkpointing: when
  // on, forward keeps only each block's input and backward recomputes the block from it.
  void set_precision(Precision p) {
    QILIN_ASSERT((std::is_same_v<T, float> || p == Precision::F32));
    prec_ = p;
  }
  Precision precision() const { return prec_; }
  void set_checkpoint_activations(bool on) { checkpoint_ = on; }
  // Threads for the attention and LoRA loops (the base products use the backend's); not owned.
  void set_thread_pool(ThreadPool* pool) { pool_ = pool; }
  // The loss's gradient is multiplied by this (FP16's dynamic loss scaling); the caller unscales.
  void set_loss_scale(T s) { loss_scale_ = s; }
  // The attention kernels (float): the CPU's best by default; null runs the reference loops of
  // ops/train_ops.h (what double always runs).
  void set_attention_kernels(const TrainAttnKernels* k) { attn_ = k; }

  // Mean cross-entropy of targets (target < 0: not scored) given tokens. With need_grad, saves
  // what backward() needs (and already runs the output head's backward: its input gradient is
  // all it leaves, so no [n, V] logits buffer outlives a chunk). logits_out, if given,
  // receives [n, V].
  T forward(const int32_t* tokens, const int32_t* targets, int64_t n, std::vector<T>* logits_out = nullptr,
            bool need_grad = true) {
    const int64_t E = s_.n_embd;
    n_ = n;
    targets_.assign(targets, targets + n);
    grad_ready_ = false;
    refresh_compute_lora();
    saved_.resize(s_.n_layer);
    work_.x_in.resize(n * E);
    embed(tokens, n, work_.x_in.data());
    rnd(work_.x_in);
    for (int32_t il = 0; il < s_.n_layer; ++il) {
      if (store_) store_w_ = &store_->layer_weights(il);
      layer_forward(il, work_, x_next_);
      if (need_grad) stash(il, work_);
      work_.x_in.swap(x_next_);
    }
    xf_.swap(work_.x_in);  // [n, E] the last block's output
    xnf_.resize(n * E);
    rstdf_.resize(n);
    rmsnorm_forward(xf_.data(), out_norm.data(), n, E, static_cast<T>(s_.rms_eps), xnf_.data(), rstdf_.data());
    rnd(xnf_);
    const T loss = head(need_grad, logits_out);
    grad_ready_ = need_grad;
    return loss;
  }

  // Gradients of the last forward's loss (times the loss scale) into grad() (accumulated).
  void backward() {
    QILIN_ASSERT(grad_ready_);
    grad_ready_ = false;
    const int64_t n = n_, E = s_.n_embd;
    dx_.assign(n * E, T(0));
    rmsnorm_backward(dxnf_.data(), xf_.data(), out_norm.data(), rstdf_.data(), n, E, dx_.data(), static_cast<T*>(nullptr));
    rnd(dx_);
    for (int32_t il = s_.n_layer - 1; il >= 0; --il) {
      unstash(il, work_);
      if (store_) {
        store_w_ = &store_->layer_weights(il);
        store_g_ = &store_->layer_grads(il);
      }
      if (checkpoint_) layer_forward(il, work_, x_next_);  // recompute from the block's input
      layer_backward(il, work_, dx_);
      if (store_) store_->layer_grads_done(il);
    }
  }

  // Bytes of activations held between forward and backward (the saved blocks), for reports.
  size_t saved_bytes() const {
    size_t b = 0;
    for (const Saved& sv : saved_) {
      for (const Stash& st : sv.f) b += st.v.capacity() * sizeof(T) + st.h.capacity() * 2;
      for (const Stash& st : sv.xa) b += st.v.capacity() * sizeof(T) + st.h.capacity() * 2;
    }
    return b;
  }

 private:
  // One block's activations that backward reads (the rest is recomputed there: the norms'
  // outputs from their rstd, SwiGLU's output from gate and up).
  struct Acts {
    std::vector<T> x_in;         // [n, E]
    std::vector<T> rstd1;        // [n]
    std::vector<T> q, k, v;      // [n, H|Hkv, hd] after RoPE
    std::vector<T> att;          // [n, H, hd]
    std::vector<T> lse;          // [n, H]
    std::vector<T> x_mid;        // [n, E]
    std::vector<T> rstd2;        // [n]
    std::vector<T> gate, up;     // [n, F]
    std::array<std::vector<T>, kNumProj> xa;  // [n, r] LoRA mid activations x A^T
  };
  static constexpr int kFields = 11;
  static std::array<std::vector<T>*, kFields> fields(Acts& a) {
    return {&a.x_in, &a.rstd1, &a.q, &a.k, &a.v, &a.att, &a.lse, &a.x_mid, &a.rstd2, &a.gate, &a.up};
  }
  // Statistics (rstd, log-sum-exp) stay in T whatever the precision.
  static constexpr bool kStat[kFields] = {false, true, false, false, false, false, true, false, true, false, false};
  // A saved tensor: its values (moved), or their 16-bit codes in BF16/FP16 (exact there).
  struct Stash {
    std::vector<T> v;
    std::vector<uint16_t> h;
  };
  struct Saved {
    std::array<Stash, kFields> f;
    std::array<Stash, kNumProj> xa;
  };
  void put(std::vector<T>& src, Stash& dst, bool stat) {
    if constexpr (std::is_same_v<T, float>) {
      if (prec_ != Precision::F32 && !stat) {
        dst.h.resize(src.size());
        pack16(prec_, src.data(), static_cast<int64_t>(src.size()), dst.h.data());
        return;
      }
    }
    dst.v.swap(src);  // src gets the stash's old buffer, reused next time
  }
  void take(Stash& src, std::vector<T>& dst) {
    if constexpr (std::is_same_v<T, float>) {
      if (prec_ != Precision::F32 && !src.h.empty()) {
        dst.resize(src.h.size());
        unpack16(prec_, src.h.data(), static_cast<int64_t>(src.h.size()), dst.data());
        return;
      }
    }
    dst.swap(src.v);
  }
  void stash(int32_t il, Acts& a) {
    Saved& sv = saved_[il];
    auto f = fields(a);
    const int n_fields = checkpoint_ ? 1 : kFields;  // checkpointing keeps x_in only
    for (int i = 0; i < n_fields; ++i) put(*f[i], sv.f[i], kStat[i]);
    if (!checkpoint_) {
      for (int p = 0; p < kNumProj; ++p) put(a.xa[p], sv.xa[p], false);
    }
  }
  void unstash(int32_t il, Acts& a) {
    Saved& sv = saved_[il];
    auto f = fields(a);
    const int n_fields = checkpoint_ ? 1 : kFields;
    for (int i = 0; i < n_fields; ++i) take(sv.f[i], *f[i]);
    if (!checkpoint_) {
      for (int p = 0; p < kNumProj; ++p) take(sv.xa[p], a.xa[p]);
    }
  }
  void rnd(std::vector<T>& v) { round_to(prec_, v.data(), static_cast<int64_t>(v.size())); }

  // Block il from a.x_in: fills the rest of a and writes the block's output to x_out.
  void layer_forward(int32_t il, Acts& a, std::vector<T>& x_out) {
    const int64_t n = n_, E = s_.n_embd, F = s_.n_ff;
    const int32_t H = s_.n_head, Hkv = s_.n_head_kv, hd = s_.head_dim;
    const BaseLayer<T>& L = base_[il];
    const T eps = static_cast<T>(s_.rms_eps);
    xn_.resize(n * E);
    a.rstd1.resize(n);
    rmsnorm_forward(a.x_in.data(), L.attn_norm.data(), n, E, eps, xn_.data(), a.rstd1.data());
    rnd(xn_);
    proj(il, kQ, xn_, a.q, a.xa[kQ]);
    proj(il, kK, xn_, a.k, a.xa[kK]);
    proj(il, kV, xn_, a.v, a.xa[kV]);
    rope_forward(a.q.data(), n, H, hd, s_.n_rot, static_cast<T>(s_.rope_base), s_.rope_neox);
    rope_forward(a.k.data(), n, Hkv, hd, s_.n_rot, static_cast<T>(s_.rope_base), s_.rope_neox);
    rnd(a.q);
    rnd(a.k);
    a.att.resize(n * H * hd);
    a.lse.resize(n * H);
    if (const TrainAttnKernels* ak = attention_kernels()) {
      const TrainAttnArgs args = attention_args(a);
      for_items(ak->lanes, [&](int32_t g, int64_t i0, int64_t i1, int) {
        ak->forward(args, g, i0, i1, f32(a.att.data()), f32(a.lse.data()));
      });
    } else {
      for_heads([&](int32_t h0, int32_t h1, int) {
        attention_forward(a.q.data(), a.k.data(), a.v.data(), n, H, Hkv, hd, a.att.data(), a.lse.data(), h0, h1);
      });
    }
    rnd(a.att);
    proj(il, kO, a.att, tmp_, a.xa[kO]);
    a.x_mid.resize(n * E);
    for (int64_t i = 0; i < n * E; ++i) a.x_mid[i] = a.x_in[i] + tmp_[i];
    rnd(a.x_mid);
    a.rstd2.resize(n);
    rmsnorm_forward(a.x_mid.data(), L.ffn_norm.data(), n, E, eps, xn_.data(), a.rstd2.data());
    rnd(xn_);
    proj(il, kGate, xn_, a.gate, a.xa[kGate]);
    proj(il, kUp, xn_, a.up, a.xa[kUp]);
    h_.resize(n * F);
    swiglu_forward(a.gate.data(), a.up.data(), n * F, h_.data());
    rnd(h_);
    proj(il, kDown, h_, tmp_, a.xa[kDown]);
    x_out.resize(n * E);
    for (int64_t i = 0; i < n * E; ++i) x_out[i] = a.x_mid[i] + tmp_[i];
    rnd(x_out);
  }

  // dx: in, the gradient of block il's output; out, the gradient of its input.
  void layer_backward(int32_t il, Acts& a, std::vector<T>& dx) {
    const int64_t n = n_, E = s_.n_embd, F = s_.n_ff;
    const int32_t H = s_.n_head, Hkv = s_.n_head_kv, hd = s_.head_dim;
    const BaseLayer<T>& L = base_[il];
    const T eps = static_cast<T>(s_.rms_eps);
    // x_out = x_mid + down(h): dx flows to both. h and xn2 are recomputed (as forward did).
    h_.resize(n * F);
    swiglu_forward(a.gate.data(), a.up.data(), n * F, h_.data());
    rnd(h_);
    dh_.assign(n * F, T(0));
    proj_backward(il, kDown, dx, h_, a.xa[kDown], dh_);
    rnd(dh_);
    dgate_.assign(n * F, T(0));
    dup_.assign(n * F, T(0));
    swiglu_backward(dh_.data(), a.gate.data(), a.up.data(), n * F, dgate_.data(), dup_.data());
    rnd(dgate_);
    rnd(dup_);
    xn_.resize(n * E);
    rstd_tmp_.resize(n);
    rmsnorm_forward(a.x_mid.data(), L.ffn_norm.data(), n, E, eps, xn_.data(), rstd_tmp_.data());
    rnd(xn_);
    dxn_.assign(n * E, T(0));
    proj_backward(il, kGate, dgate_, xn_, a.xa[kGate], dxn_);
    proj_backward(il, kUp, dup_, xn_, a.xa[kUp], dxn_);
    rnd(dxn_);
    dmid_ = dx;  // residual
    rmsnorm_backward(dxn_.data(), a.x_mid.data(), L.ffn_norm.data(), a.rstd2.data(), n, E, dmid_.data(), static_cast<T*>(nullptr));
    rnd(dmid_);
    // x_mid = x_in + o(att)
    datt_.assign(n * H * hd, T(0));
    proj_backward(il, kO, dmid_, a.att, a.xa[kO], datt_);
    rnd(datt_);
    dq_.assign(n * H * hd, T(0));
    dk_.assign(n * Hkv * hd, T(0));
    dv_.assign(n * Hkv * hd, T(0));
    // Each thread's query heads add to its own dk, dv; summed in thread order after.
    const int64_t m = n * Hkv * hd;
    const int n_parts = pool_ ? pool_->size() : 1;
    dkv_part_.assign(static_cast<size_t>(n_parts) * 2 * m, T(0));
    if (const TrainAttnKernels* ak = attention_kernels()) {
      const TrainAttnArgs args = attention_args(a);
      for_items(ak->lanes, [&](int32_t g, int64_t i0, int64_t i1, int ith) {
        float* dk = f32(dkv_part_.data() + ith * 2 * m);
        ak->backward(args, f32(a.att.data()), f32(a.lse.data()), f32(datt_.data()), g, i0, i1, f32(dq_.data()), dk,
                     dk + m);
      });
    } else {
      for_heads([&](int32_t h0, int32_t h1, int ith) {
        T* dk = dkv_part_.data() + ith * 2 * m;
        attention_backward(datt_.data(), a.q.data(), a.k.data(), a.v.data(), a.att.data(), a.lse.data(), n, H, Hkv,
                           hd, dq_.data(), dk, dk + m, h0, h1);
      });
    }
    for (int i = 0; i < n_parts; ++i) {
      const T* dk = dkv_part_.data() + i * 2 * m;
      for (int64_t j = 0; j < m; ++j) {
        dk_[j] += dk[j];
        dv_[j] += dk[m + j];
      }
    }
    rope_backward(dq_.data(), n, H, hd, s_.n_rot, static_cast<T>(s_.rope_base), s_.rope_neox);
    rope_backward(dk_.data(), n, Hkv, hd, s_.n_rot, static_cast<T>(s_.rope_base), s_.rope_neox);
    rnd(dq_);
    rnd(dk_);
    rnd(dv_);
    rmsnorm_forward(a.x_in.data(), L.attn_norm.data(), n, E, eps, xn_.data(), rstd_tmp_.data());
    rnd(xn_);
    dxn_.assign(n * E, T(0));
    proj_backward(il, kQ, dq_, xn_, a.xa[kQ], dxn_);
    proj_backward(il, kK, dk_, xn_, a.xa[kK], dxn_);
    proj_backward(il, kV, dv_, xn_, a.xa[kV], dxn_);
    rnd(dxn_);
    dx = dmid_;
    rmsnorm_backward(dxn_.data(), a.x_in.data(), L.attn_norm.data(), a.rstd1.data(), n, E, dx.data(), static_cast<T*>(nullptr));
    rnd(dx);
  }

  // The output head over rows in chunks: loss; with need_grad also dxnf_ = (scale * dlogits) W.
  T head(bool need_grad, std::vector<T>* logits_out) {
    const int64_t n = n_, E = s_.n_embd, V = s_.n_vocab;
    int64_t count = 0;
    for (int64_t t = 0; t < n; ++t) count += targets_[t] >= 0;
    if (logits_out) logits_out->resize(n * V);
    if (need_grad) dxnf_.assign(n * E, T(0));
    constexpr int64_t kRows = 32;
    chunk_.resize(std::min(n, kRows) * V);
    T loss = 0;
    for (int64_t r0 = 0; r0 < n; r0 += kRows) {
      const int64_t rows = std::min(kRows, n - r0);
      T* c = chunk_.data();
      base_forward(-1, kNumProj, xnf_.data() + r0 * E, rows, E, V, c);
      round_to(prec_, c, rows * V);
      if (logits_out) std::copy_n(c, rows * V, logits_out->data() + r0 * V);
      // NOTE: in place: each row's logits are read before its gradient overwrites them.
      loss += cross_entropy_forward_backward(c, targets_.data() + r0, rows, V, need_grad ? c : nullptr,
                                             static_cast<int64_t*>(nullptr), std::max<int64_t>(count, 1));
      if (!need_grad) continue;
      if (loss_scale_ != T(1)) {
        for (int64_t i = 0; i < rows * V; ++i) c[i] *= loss_scale_;
      }
      round_to(prec_, c, rows * V);
      base_backward_input(-1, kNumProj, c, xnf_.data() + r0 * E, rows, E, V, dxnf_.data() + r0 * E);
    }
    if (need_grad) rnd(dxnf_);
    return count ? loss : T(0);
  }

  // fn(h0, h1, thread) over the query heads, split across the pool when there is one.
  template <typename F>
  void for_heads(F&& fn) {
    if (!pool_) return fn(0, s_.n_head, 0);
    pool_->run([&](int ith, int nth) {
      int64_t h0, h1;
      split_range(s_.n_head, ith, nth, &h0, &h1);
      fn(static_cast<int32_t>(h0), static_cast<int32_t>(h1), ith);
    });
  }
  // fn(g, i0, i1, thread) over every KV head's query items (cpu/train_attention.h), each thread
  // taking about an equal share of each head's causal cost.
  template <typename F>
  void for_items(int32_t lanes, F&& fn) {
    const int32_t group = s_.n_head / s_.n_head_kv;
    auto part = [&](int ith, int nth) {
      for (int32_t g = 0; g < s_.n_head_kv; ++g) {
        int64_t i0, i1;
        train_attention_split(n_, group, lanes, ith, nth, &i0, &i1);
        if (i0 < i1) fn(g, i0, i1, ith);
      }
    };
    if (!pool_) return part(0, 1);
    pool_->run([&](int ith, int nth) { part(ith, nth); });
  }
  const TrainAttnKernels* attention_kernels() const {
    if constexpr (std::is_same_v<T, float>) return attn_;
    return nullptr;
  }
  // The kernels' float views (reached only when T is float).
  static float* f32(T* p) { return reinterpret_cast<float*>(p); }
  static const float* f32(const T* p) { return reinterpret_cast<const float*>(p); }
  TrainAttnArgs attention_args(const Acts& a) const {
    return {f32(a.q.data()), f32(a.k.data()), f32(a.v.data()), n_, s_.n_head, s_.n_head_kv, s_.head_dim};
  }

  // fn(ith, nth) on every thread of the pool (or once as (0, 1)).
  template <typename F>
  void for_threads(F&& fn) {
    if (!pool_) return fn(0, 1);
    pool_->run([&](int ith, int nth) { fn(ith, nth); });
  }
  // fn(t0, t1) over the rows of the sequence, split likewise.
  template <typename F>
  void for_rows(F&& fn) {
    if (!pool_) return fn(int64_t{0}, n_);
    pool_->run([&](int ith, int nth) {
      int64_t t0, t1;
      split_range(n_, ith, nth, &t0, &t1);
      if (t0 < t1) fn(t0, t1);
    });
  }

  // The LoRA weights the compute uses: the FP32 masters, or their 16-bit roundings.
  void refresh_compute_lora() {
    if (prec_ == Precision::F32 || store_) return;  // a store hands out compute weights
    lora_c_ = lora_;
    for (LoraLayer<T>& l : lora_c_) {
      for (int p = 0; p < kNumProj; ++p) {
        round_to(prec_, l.A[p].data(), static_cast<int64_t>(l.A[p].size()));
        round_to(prec_, l.B[p].data(), static_cast<int64_t>(l.B[p].size()));
      }
    }
  }
  const LoraLayer<T>& compute_lora(int32_t il) const {
    if (store_) return *store_w_;
    return prec_ == Precision::F32 ? lora_[il] : lora_c_[il];
  }

  void embed(const int32_t* tokens, int64_t n, T* x) {
    embedding_forward(tok_embd.data(), tokens, n, s_.n_embd, x);
  }
  const std::vector<T>& head_w() const { return s_.tied_output ? tok_embd : output; }
  // y = x W^T (+ LoRA) for projection p of layer il; xa receives the LoRA mid activation.
  void proj(int32_t il, int p, const std::vector<T>& x, std::vector<T>& y, std::vector<T>& xa) {
    const int64_t in = proj_in(p), out = proj_out(p);
    y.assign(n_ * out, T(0));
    base_forward(il, p, x.data(), n_, in, out, y.data());
    if (lc_.targets[p]) {
      const LoraLayer<T>& lw = compute_lora(il);
      const int64_t r = lc_.rank;
      xa.resize(n_ * r);
      for_rows([&](int64_t t0, int64_t t1) {
        linear_forward(x.data() + t0 * in, lw.A[p].data(), t1 - t0, in, r, xa.data() + t0 * r);
        round_to(prec_, xa.data() + t0 * r, (t1 - t0) * r);
        lora_up_forward(xa.data() + t0 * r, lw.B[p].data(), t1 - t0, r, out, scale(), y.data() + t0 * out);
      });
    }
    rnd(y);
  }
  void proj_backward(int32_t il, int p, const std::vector<T>& dy, const std::vector<T>& x, const std::vector<T>& xa,
                     std::vector<T>& dx) {
    const int64_t in = proj_in(p), out = proj_out(p);
    base_backward_input(il, p, dy.data(), x.data(), n_, in, out, dx.data());
    if (lc_.targets[p]) {
      const LoraLayer<T>& lw = compute_lora(il);
      LoraLayer<T>& g = store_ ? *store_g_ : grad_[il];
      const int64_t r = lc_.rank;
      lora_bt_.resize(r * out);
      lora_dxa_.resize(n_ * r);
      lora_transpose(lw.B[p].data(), out, r, lora_bt_.data());
      for_rows([&](int64_t t0, int64_t t1) {
        lora_backward_rows(dy.data(), lw.A[p].data(), lora_bt_.data(), t0, t1, in, r, out, scale(), lora_dxa_.data(),
                           dx.data());
      });
      for_threads([&](int ith, int nth) {
        int64_t b, e;
        split_range(out, ith, nth, &b, &e);
        lora_backward_db(dy.data(), xa.data(), n_, r, out, scale(), b, e, g.B[p].data());
        split_range(in, ith, nth, &b, &e);
        lora_backward_da(x.data(), lora_dxa_.data(), n_, in, r, b, e, g.A[p].data());
      });
    }
  }

  const std::vector<T>& base_w(int32_t il, int p) const { return p == kNumProj ? head_w() : base_[il].w[p]; }
  void base_forward(int32_t il, int p, const T* x, int64_t n, int64_t in, int64_t out, T* y) {
    linear_forward(x, base_w(il, p).data(), n, in, out, y);
  }
  void base_backward_input(int32_t il, int p, const T* dy, const T* x, int64_t n, int64_t in, int64_t out, T* dx) {
    linear_backward(dy, x, base_w(il, p).data(), n, in, out, dx, static_cast<T*>(nullptr));
  }

  ThreadPool* pool_ = nullptr;
  LoraStore<T>* store_ = nullptr;
  const LoraLayer<T>* store_w_ = nullptr;  // the store's weights and gradients of the layer run
  LoraLayer<T>* store_g_ = nullptr;
  const TrainAttnKernels* attn_ = train_attention_kernels();
  LlamaShape s_;
  LoraConfig lc_;
  Precision prec_ = Precision::F32;
  bool checkpoint_ = false;
  T loss_scale_ = T(1);
  std::vector<BaseLayer<T>> base_;
  std::vector<LoraLayer<T>> lora_, grad_, lora_c_;
  int64_t n_ = 0;
  bool grad_ready_ = false;
  std::vector<int32_t> targets_;
  std::vector<Saved> saved_;  // [n_layer]
  Acts work_;                 // the block being run
  // Scratch of one block: [n, E] rows, [n, F] rows and their gradients.
  std::vector<T> x_next_, xn_, tmp_, h_, rstd_tmp_, dx_, dxn_, dmid_, datt_, dq_, dk_, dv_, dh_, dgate_, dup_;
  std::vector<T> lora_bt_, lora_dxa_;  // LoRA backward: B transposed [r, out], dy B [n, r]
  std::vector<T> dkv_part_;  // [threads, 2, n, Hkv, hd] attention backward's dk, dv per thread
  std::vector<T> xf_, xnf_, rstdf_, dxnf_, chunk_;
};

}  // namespace qilin::train
