// A random tiny Llama in two forms that hold the same values: the double-precision reference
// (lora_llama_ref.h) and F32 weights the library's trainer runs over (LoraTrainer::over), with
// the same LoRA initialisation. For tests that hold the trainer to the reference.
#pragma once

#include <memory>
#include <vector>

#include "reference/lora_llama_ref.h"
#include "train/lora_trainer.h"

namespace qilin::train {

struct RandomDecoder {
  LlamaShape shape;
  LlamaHparams hp;
  std::vector<std::vector<float>> store;  // every F32 tensor the views point into
  std::vector<LlamaLayer> layers;
  WeightView embd, head;
  const float* out_norm = nullptr;
  std::unique_ptr<LoraLlamaRef<double>> ref;

  // Base N(0, sd) (norms 1 + N(0, sd)), LoRA as init_lora(lora_seed, b_sd); the reference's
  // values are the F32 ones, exactly.
  RandomDecoder(const LlamaShape& s, const LoraConfig& lc, uint32_t seed, double sd) : shape(s) {
    ref = std::make_unique<LoraLlamaRef<double>>(s, lc);
    ref->init_random_base(seed, sd);
    hp.n_vocab = s.n_vocab;
    hp.n_ctx_train = 4096;
    hp.n_embd = s.n_embd;
    hp.n_layer = s.n_layer;
    hp.n_head = s.n_head;
    hp.n_head_kv = s.n_head_kv;
    hp.head_dim = s.head_dim;
    hp.n_ff = s.n_ff;
    hp.rms_eps = s.rms_eps;
    hp.rope.n_rot = s.n_rot;
    hp.rope.freq_base = s.rope_base;
    hp.rope.neox = s.rope_neox;
    store.reserve(4 + static_cast<size_t>(s.n_layer) * (2 + kNumProj));
    // F32 copy of v (rounded), and v set to the rounded values.
    auto f32 = [&](std::vector<double>& v) {
      std::vector<float>& f = store.emplace_back(v.begin(), v.end());
      for (size_t i = 0; i < v.size(); ++i) v[i] = f[i];
      return f.data();
    };
    auto view = [&](std::vector<double>& v, int64_t in, int64_t out) {
      return WeightView{DType::F32, reinterpret_cast<const uint8_t*>(f32(v)), in, out,
                        static_cast<size_t>(in) * sizeof(float)};
    };
    embd = view(ref->tok_embd, s.n_embd, s.n_vocab);
    head = s.tied_output ? embd : view(ref->output, s.n_embd, s.n_vocab);
    out_norm = f32(ref->out_norm);
    for (int32_t il = 0; il < s.n_layer; ++il) {
      BaseLayer<double>& B = ref->base()[il];
      LlamaLayer L;
      L.attn_norm = f32(B.attn_norm);
      L.ffn_norm = f32(B.ffn_norm);
      WeightView* w[kNumProj] = {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down};
      for (int p = 0; p < kNumProj; ++p) *w[p] = view(B.w[p], ref->proj_in(p), ref->proj_out(p));
      layers.push_back(L);
    }
  }

  // A trainer over the F32 weights with LoRA init_lora(lora_seed, b_sd); the reference gets the
  // same adapter values (its own init, then overwritten with the trainer's F32 ones).
  std::unique_ptr<LoraTrainer> trainer(const LoraConfig& lc, ThreadPool& pool, uint32_t lora_seed,
                                       float b_sd) {
    auto t = LoraTrainer::over(hp, layers, embd, head, out_norm, lc, pool);
    t->init_lora(lora_seed, b_sd);
    ref->init_lora(lora_seed, b_sd);
    for (int32_t il = 0; il < shape.n_layer; ++il) {
      for (int p = 0; p < kNumProj; ++p) {
        const auto& A = t->lora()[il].A[p];
        const auto& B = t->lora()[il].B[p];
        ref->lora()[il].A[p].assign(A.begin(), A.end());
        ref->lora()[il].B[p].assign(B.begin(), B.end());
      }
    }
    return t;
  }
};

}  // namespace qilin::train
