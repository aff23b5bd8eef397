// A Llama with LoRA adapters for training: the frozen base (dense T weights), one (A, B) pair
// per adapted linear layer, and forward/backward over one sequence written out layer by layer
// with the activations each backward step needs saved on the way forward. Generic in the
// scalar type so that a tiny random model's LoRA gradients can be checked against finite
// differences in double; training runs it in float.
// NOTE: the base is frozen; backward produces gradients for the adapters only (and the
// input gradients that carry them), never for base weights.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

#include "train/layers.h"

namespace qilin::train {

struct LlamaShape {
  int32_t n_vocab = 0, n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0;
  int32_t n_ff = 0, n_rot = 0;
  float rms_eps = 1e-5f, rope_base = 10000.0f;
  bool rope_neox = false;
  bool tied_output = true;  // the output head is the embedding table
};

// The seven adaptable linear layers of a block, in this order everywhere.
enum Proj { kQ, kK, kV, kO, kGate, kUp, kDown, kNumProj };

struct LoraConfig {
  int32_t rank = 8;
  float alpha = 16;                                  // scale = alpha / rank
  std::array<bool, kNumProj> targets = {true, true, true, true, true, true, true};
};

// Dense float products with the frozen base run by a faster backend when one is set (the
// tiled F32 gemm: train/gemm_linear.h). p = kNumProj names the output head.
struct FloatLinear {
  virtual ~FloatLinear() = default;
  // y[n, out] = x[n, in] W^T
  virtual void forward(int32_t layer, int p, const float* x, int64_t n, float* y) = 0;
  // dx[n, in] += dy[n, out] W
  virtual void backward_input(int32_t layer, int p, const float* dy, int64_t n, float* dx) = 0;
};

template <typename T>
struct BaseLayer {
  std::vector<T> attn_norm, ffn_norm;  // [E]
  std::array<std::vector<T>, kNumProj> w;  // [out, in] each
};

template <typename T>
struct LoraLayer {
  std::array<std::vector<T>, kNumProj> A, B;  // A [r, in], B [out, r]; empty when not adapted
};

template <typename T>
class LoraLlama {
 public:
  LoraLlama(const LlamaShape& s, const LoraConfig& lc) : s_(s), lc_(lc) {
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
  // Optional faster base products (float only); not owned.
  void set_fast_linear(FloatLinear* f) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
    fast_ = f;
  }

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

  // Mean cross-entropy of targets (target < 0: not scored) given tokens; saves activations.
  // logits_out, if given, receives [n, V].
  T forward(const int32_t* tokens, const int32_t* targets, int64_t n, std::vector<T>* logits_out = nullptr) {
    const int64_t E = s_.n_embd, F = s_.n_ff, V = s_.n_vocab;
    const int32_t H = s_.n_head, Hkv = s_.n_head_kv, hd = s_.head_dim;
    n_ = n;
    tokens_.assign(tokens, tokens + n);
    targets_.assign(targets, targets + n);
    acts_.resize(s_.n_layer);
    x0_.resize(n * E);
    embedding_forward(tok_embd.data(), tokens, n, E, x0_.data());
    const std::vector<T>* x = &x0_;
    for (int32_t il = 0; il < s_.n_layer; ++il) {
      Acts& a = acts_[il];
      const BaseLayer<T>& L = base_[il];
      a.x_in = x;
      a.xn1.resize(n * E);
      a.rstd1.resize(n);
      rmsnorm_forward(x->data(), L.attn_norm.data(), n, E, static_cast<T>(s_.rms_eps), a.xn1.data(), a.rstd1.data());
      proj(il, kQ, a.xn1, a.q);
      proj(il, kK, a.xn1, a.k);
      proj(il, kV, a.xn1, a.v);
      rope_forward(a.q.data(), n, H, hd, s_.n_rot, static_cast<T>(s_.rope_base), s_.rope_neox);
      rope_forward(a.k.data(), n, Hkv, hd, s_.n_rot, static_cast<T>(s_.rope_base), s_.rope_neox);
      a.att.resize(n * H * hd);
      a.lse.resize(n * H);
      attention_forward(a.q.data(), a.k.data(), a.v.data(), n, H, Hkv, hd, a.att.data(), a.lse.data());
      proj(il, kO, a.att, a.o);
      a.x_mid.resize(n * E);
      for (int64_t i = 0; i < n * E; ++i) a.x_mid[i] = (*x)[i] + a.o[i];
      a.xn2.resize(n * E);
      a.rstd2.resize(n);
      rmsnorm_forward(a.x_mid.data(), L.ffn_norm.data(), n, E, static_cast<T>(s_.rms_eps), a.xn2.data(), a.rstd2.data());
      proj(il, kGate, a.xn2, a.gate);
      proj(il, kUp, a.xn2, a.up);
      a.h.resize(n * F);
      swiglu_forward(a.gate.data(), a.up.data(), n * F, a.h.data());
      proj(il, kDown, a.h, a.down);
      a.x_out.resize(n * E);
      for (int64_t i = 0; i < n * E; ++i) a.x_out[i] = a.x_mid[i] + a.down[i];
      x = &a.x_out;
    }
    xf_ = x;
    xnf_.resize(n * E);
    rstdf_.resize(n);
    rmsnorm_forward(x->data(), out_norm.data(), n, E, static_cast<T>(s_.rms_eps), xnf_.data(), rstdf_.data());
    logits_.resize(n * V);
    base_forward(-1, kNumProj, xnf_.data(), n, E, V, logits_.data());
    dlogits_.resize(n * V);
    const T loss = cross_entropy_forward_backward(logits_.data(), targets, n, V, dlogits_.data());
    if (logits_out) *logits_out = logits_;
    return loss;
  }

  // Gradients of the last forward's loss into grad() (accumulated).
  void backward() {
    const int64_t n = n_, E = s_.n_embd, F = s_.n_ff, V = s_.n_vocab;
    const int32_t H = s_.n_head, Hkv = s_.n_head_kv, hd = s_.head_dim;
    (void)V;
    std::vector<T> dxnf(n * E, T(0)), dx(n * E, T(0));
    base_backward_input(-1, kNumProj, dlogits_.data(), xnf_.data(), n, E, s_.n_vocab, dxnf.data());
    rmsnorm_backward(dxnf.data(), xf_->data(), out_norm.data(), rstdf_.data(), n, E, dx.data(), static_cast<T*>(nullptr));
    for (int32_t il = s_.n_layer - 1; il >= 0; --il) {
      Acts& a = acts_[il];
      const BaseLayer<T>& L = base_[il];
      // x_out = x_mid + down(h): dx flows to both.
      std::vector<T> dh(n * F, T(0));
      proj_backward(il, kDown, dx, a.h, &dh);
      std::vector<T> dgate(n * F, T(0)), dup(n * F, T(0));
      swiglu_backward(dh.data(), a.gate.data(), a.up.data(), n * F, dgate.data(), dup.data());
      std::vector<T> dxn2(n * E, T(0));
      proj_backward(il, kGate, dgate, a.xn2, &dxn2);
      proj_backward(il, kUp, dup, a.xn2, &dxn2);
      std::vector<T> dmid = dx;  // residual
      rmsnorm_backward(dxn2.data(), a.x_mid.data(), L.ffn_norm.data(), a.rstd2.data(), n, E, dmid.data(), static_cast<T*>(nullptr));
      // x_mid = x_in + o(att)
      std::vector<T> datt(n * H * hd, T(0));
      proj_backward(il, kO, dmid, a.att, &datt);
      std::vector<T> dq(n * H * hd, T(0)), dk(n * Hkv * hd, T(0)), dv(n * Hkv * hd, T(0));
      attention_backward(datt.data(), a.q.data(), a.k.data(), a.v.data(), a.att.data(), a.lse.data(), n, H, Hkv, hd,
                         dq.data(), dk.data(), dv.data());
      rope_backward(dq.data(), n, H, hd, s_.n_rot, static_cast<T>(s_.rope_base), s_.rope_neox);
      rope_backward(dk.data(), n, Hkv, hd, s_.n_rot, static_cast<T>(s_.rope_base), s_.rope_neox);
      std::vector<T> dxn1(n * E, T(0));
      proj_backward(il, kQ, dq, a.xn1, &dxn1);
      proj_backward(il, kK, dk, a.xn1, &dxn1);
      proj_backward(il, kV, dv, a.xn1, &dxn1);
      dx = dmid;
      rmsnorm_backward(dxn1.data(), a.x_in->data(), L.attn_norm.data(), a.rstd1.data(), n, E, dx.data(), static_cast<T*>(nullptr));
    }
  }

 private:
  struct Acts {
    const std::vector<T>* x_in = nullptr;
    std::vector<T> xn1, rstd1, q, k, v, att, lse, o, x_mid, xn2, rstd2, gate, up, h, down, x_out;
    std::array<std::vector<T>, kNumProj> xa;  // LoRA mid activations x A^T
  };
  const std::vector<T>& head() const { return s_.tied_output ? tok_embd : output; }
  // y = x W^T (+ LoRA) for projection p of layer il; saves the LoRA mid activation.
  void proj(int32_t il, int p, const std::vector<T>& x, std::vector<T>& y) {
    const int64_t in = proj_in(p), out = proj_out(p);
    y.assign(n_ * out, T(0));
    base_forward(il, p, x.data(), n_, in, out, y.data());
    if (lc_.targets[p]) {
      std::vector<T>& xa = acts_[il].xa[p];
      xa.resize(n_ * lc_.rank);
      lora_forward(x.data(), lora_[il].A[p].data(), lora_[il].B[p].data(), n_, in, lc_.rank, out, scale(), xa.data(), y.data());
    }
  }
  void proj_backward(int32_t il, int p, const std::vector<T>& dy, const std::vector<T>& x, std::vector<T>* dx) {
    const int64_t in = proj_in(p), out = proj_out(p);
    base_backward_input(il, p, dy.data(), x.data(), n_, in, out, dx->data());
    if (lc_.targets[p]) {
      lora_backward(dy.data(), x.data(), lora_[il].A[p].data(), lora_[il].B[p].data(), acts_[il].xa[p].data(), n_, in,
                    lc_.rank, out, scale(), dx->data(), grad_[il].A[p].data(), grad_[il].B[p].data());
    }
  }

  const std::vector<T>& base_w(int32_t il, int p) const { return p == kNumProj ? head() : base_[il].w[p]; }
  void base_forward(int32_t il, int p, const T* x, int64_t n, int64_t in, int64_t out, T* y) {
    if constexpr (std::is_same_v<T, float>) {
      if (fast_) return fast_->forward(il, p, x, n, y);
    }
    linear_forward(x, base_w(il, p).data(), n, in, out, y);
  }
  void base_backward_input(int32_t il, int p, const T* dy, const T* x, int64_t n, int64_t in, int64_t out, T* dx) {
    if constexpr (std::is_same_v<T, float>) {
      if (fast_) return fast_->backward_input(il, p, dy, n, dx);
    }
    linear_backward(dy, x, base_w(il, p).data(), n, in, out, dx, static_cast<T*>(nullptr));
  }

  FloatLinear* fast_ = nullptr;
  LlamaShape s_;
  LoraConfig lc_;
  std::vector<BaseLayer<T>> base_;
  std::vector<LoraLayer<T>> lora_, grad_;
  int64_t n_ = 0;
  std::vector<int32_t> tokens_, targets_;
  std::vector<Acts> acts_;
  std::vector<T> x0_, xnf_, rstdf_, logits_, dlogits_;
  const std::vector<T>* xf_ = nullptr;
};

}  // namespace qilin::train
