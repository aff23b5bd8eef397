// GemmLinear and lora_llama_from: see gemm_linear.h.
#include "train/gemm_linear.h"

#include <algorithm>

#include "core/assert.h"
#include "cpu/quants.h"

namespace qilin::train {

namespace {

std::vector<float> dequantize(const WeightView& w) {
  std::vector<float> out(static_cast<size_t>(w.n_out * w.n_in));
  for (int64_t r = 0; r < w.n_out; ++r) {
    dequantize_row_ref(w.type, w.data + r * w.row_bytes, out.data() + r * w.n_in, w.n_in);
  }
  return out;
}

}  // namespace

std::unique_ptr<LoraLlama<float>> lora_llama_from(const LlamaModel& model, const LoraConfig& lc,
                                                  bool dense_base) {
  const LlamaHparams& hp = model.hparams();
  QILIN_ASSERT(hp.rope.freq_scale == 1.0f && hp.rope.freq_factors == nullptr);
  LlamaShape s;
  s.n_vocab = hp.n_vocab;
  s.n_embd = hp.n_embd;
  s.n_layer = hp.n_layer;
  s.n_head = hp.n_head;
  s.n_head_kv = hp.n_head_kv;
  s.head_dim = hp.head_dim;
  s.n_ff = hp.n_ff;
  s.n_rot = hp.rope.n_rot;
  s.rms_eps = hp.rms_eps;
  s.rope_base = hp.rope.freq_base;
  s.rope_neox = hp.rope.neox;
  const WeightView emb = model.tok_embd();
  s.tied_output = model.output().data == emb.data;
  auto m = std::make_unique<LoraLlama<float>>(s, lc);
  if (dense_base) {
    m->tok_embd = dequantize(emb);
    if (!s.tied_output) m->output = dequantize(model.output());
  }
  m->out_norm.assign(model.output_norm(), model.output_norm() + hp.n_embd);
  for (int32_t il = 0; il < hp.n_layer; ++il) {
    const LlamaLayer& L = model.layers()[il];
    BaseLayer<float>& B = m->base()[il];
    B.attn_norm.assign(L.attn_norm, L.attn_norm + hp.n_embd);
    B.ffn_norm.assign(L.ffn_norm, L.ffn_norm + hp.n_embd);
    const WeightView* w[kNumProj] = {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down};
    for (int p = 0; p < kNumProj; ++p) {
      QILIN_ASSERT(w[p]->n_in == m->proj_in(p) && w[p]->n_out == m->proj_out(p));
      if (dense_base) B.w[p] = dequantize(*w[p]);
    }
  }
  return m;
}

GemmLinear::GemmLinear(LoraLlama<float>& m, ThreadPool& pool) : pool_(pool), m_(m) {
  QILIN_ASSERT(!m.tok_embd.empty());  // a dense base
  auto make = [](const std::vector<float>& w, int64_t in, int64_t out) {
    Mat mt;
    mt.w = {DType::F32, reinterpret_cast<const uint8_t*>(w.data()), in, out, static_cast<size_t>(in) * sizeof(float)};
    mt.transposed.resize(static_cast<size_t>(in * out));
    for (int64_t o = 0; o < out; ++o) {
      for (int64_t i = 0; i < in; ++i) mt.transposed[i * out + o] = w[o * in + i];
    }
    return mt;
  };
  const LlamaShape& s = m.shape();
  mats_.reserve(static_cast<size_t>(s.n_layer) * kNumProj);
  for (int32_t il = 0; il < s.n_layer; ++il) {
    for (int p = 0; p < kNumProj; ++p) mats_.push_back(make(m.base()[il].w[p], m.proj_in(p), m.proj_out(p)));
  }
  head_ = make(s.tied_output ? m.tok_embd : m.output, s.n_embd, s.n_vocab);
  // The transposed views point into vectors that no longer move.
  for (Mat* mt : {&head_}) {
    mt->wt = {DType::F32, reinterpret_cast<const uint8_t*>(mt->transposed.data()), mt->w.n_out, mt->w.n_in,
              static_cast<size_t>(mt->w.n_out) * sizeof(float)};
  }
  for (Mat& mt : mats_) {
    mt.wt = {DType::F32, reinterpret_cast<const uint8_t*>(mt.transposed.data()), mt.w.n_out, mt.w.n_in,
             static_cast<size_t>(mt.w.n_out) * sizeof(float)};
  }
}

void GemmLinear::run(const WeightView& w, const float* x, int64_t n, float* y) {
  const size_t need = matmul_scratch_bytes(DType::F32, w.n_in, n);
  if (scratch_.size() < need) scratch_.resize(need);
  matmul(pool_, w, x, n, y, scratch_.data());
}

void GemmLinear::forward(int32_t layer, int p, const float* x, int64_t n, float* y) {
  run(mat(layer, p).w, x, n, y);
}

void GemmLinear::embed(const int32_t* tokens, int64_t n, float* x) {
  embedding_forward(m_.tok_embd.data(), tokens, n, m_.shape().n_embd, x);
}

void GemmLinear::backward_input(int32_t layer, int p, const float* dy, int64_t n, float* dx) {
  const Mat& mt = mat(layer, p);
  tmp_.resize(static_cast<size_t>(n * mt.wt.n_out));
  run(mt.wt, dy, n, tmp_.data());
  for (size_t i = 0; i < tmp_.size(); ++i) dx[i] += tmp_[i];
}

}  // namespace qilin::train
