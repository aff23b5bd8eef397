// LoraTrainer: see lora_trainer.h.
#include "train/lora_trainer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "core/assert.h"
#include "cpu/quants.h"
#include "ops/train_ops.h"

namespace qilin::train {

namespace {

void check(const Status& st) { QILIN_ASSERT(st.is_ok()); }  // the shapes are ours: invariants

// Rows of output head per chunk of the loss (its [rows, V] logits are the largest buffer).
constexpr int64_t kHeadRows = 32;

// w's rows dequantized to F32, into owned storage.
WeightView dequantized(const WeightView& w, std::vector<uint8_t>& store, ThreadPool& pool) {
  store.resize(static_cast<size_t>(w.n_out * w.n_in) * sizeof(float));
  float* out = reinterpret_cast<float*>(store.data());
  pool.run([&](int ith, int nth) {
    int64_t r0, r1;
    split_range(w.n_out, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; ++r) {
      dequantize_row_ref(w.type, w.data + r * w.row_bytes, out + r * w.n_in, w.n_in);
    }
  });
  return {DType::F32, store.data(), w.n_in, w.n_out, static_cast<size_t>(w.n_in) * sizeof(float)};
}

// w requantized to `type` (from its dequantized rows), into owned storage.
WeightView requantized(const WeightView& w, DType type, std::vector<uint8_t>& store,
                       ThreadPool& pool) {
  const size_t rb = row_bytes(type, w.n_in);
  store.resize(rb * static_cast<size_t>(w.n_out));
  pool.run([&](int ith, int nth) {
    int64_t r0, r1;
    split_range(w.n_out, ith, nth, &r0, &r1);
    std::vector<float> row(static_cast<size_t>(w.n_in));
    for (int64_t r = r0; r < r1; ++r) {
      dequantize_row_ref(w.type, w.data + r * w.row_bytes, row.data(), w.n_in);
      quantize_row_ref(type, row.data(), store.data() + r * rb, w.n_in);
    }
  });
  return {type, store.data(), w.n_in, w.n_out, rb};
}

size_t view_bytes(const WeightView& w) { return w.row_bytes * static_cast<size_t>(w.n_out); }

}  // namespace

LoraTrainer::LoraTrainer(const LlamaHparams& hp, const LoraConfig& lc, ThreadPool& pool)
    : pool_(pool), hp_(hp), lc_(lc) {
  if (hp.rope.freq_factors) {  // the model may be freed: keep a copy
    freq_factors_.assign(hp.rope.freq_factors, hp.rope.freq_factors + hp.rope.n_rot / 2);
    hp_.rope.freq_factors = freq_factors_.data();
  }
  lora_.resize(hp.n_layer);
  grad_.resize(hp.n_layer);
  saved_.resize(hp.n_layer);
}

LoraTrainer::~LoraTrainer() = default;

Result<std::unique_ptr<LoraTrainer>> LoraTrainer::create(const LlamaModel& model,
                                                         const LoraConfig& lc,
                                                         const BaseConfig& base, Precision prec,
                                                         ThreadPool& pool) {
  const LlamaHparams& hp = model.hparams();
  std::unique_ptr<LoraTrainer> t(new LoraTrainer(hp, lc, pool));
  t->prec_ = prec;
  const bool keep = base.quantized && base.requant == DType::F32;
  if (base.quantized && !keep) {
    const DTypeInfo& info = dtype_info(base.requant);
    if (!info.supported || matmul_kernels(base.requant) == nullptr) {
      return errorf("finetune: cannot keep the base in %s (no quantizer or gemm for it)",
                    dtype_name(base.requant));
    }
  }
  // The norms are copied, so that the model may be freed when its weights are not read.
  auto copy_norm = [&](const float* w) {
    std::vector<uint8_t>& dst = t->owned_.emplace_back(static_cast<size_t>(hp.n_embd) * sizeof(float));
    std::memcpy(dst.data(), w, dst.size());
    return reinterpret_cast<const float*>(dst.data());
  };
  t->layers_ = model.layers();
  for (int32_t il = 0; il < hp.n_layer; ++il) {
    LlamaLayer& L = t->layers_[il];
    L.attn_norm = copy_norm(L.attn_norm);
    L.ffn_norm = copy_norm(L.ffn_norm);
    WeightView* w[kNumProj] = {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down};
    for (int p = 0; p < kNumProj; ++p) {
      if (!base.quantized) {
        *w[p] = dequantized(*w[p], t->owned_.emplace_back(), pool);
      } else if (!keep && w[p]->type != base.requant) {
        const int64_t block = dtype_info(base.requant).block_size;
        if (w[p]->n_in % block != 0) {
          return errorf("finetune: blk.%d.%s.weight has %lld columns, not a multiple of %s's block of %lld",
                        il, lora_proj_gguf_name(p), static_cast<long long>(w[p]->n_in),
                        dtype_name(base.requant), static_cast<long long>(block));
        }
        *w[p] = requantized(*w[p], base.requant, t->owned_.emplace_back(), pool);
      }
    }
  }
  t->out_norm_ = copy_norm(model.output_norm());
  const bool tied = model.output().data == model.tok_embd().data;
  if (!base.quantized) {
    t->embd_ = dequantized(model.tok_embd(), t->owned_.emplace_back(), pool);
    t->head_ = tied ? t->embd_ : dequantized(model.output(), t->owned_.emplace_back(), pool);
  } else if (!keep) {  // copied as they are
    auto copy = [&](const WeightView& src) {
      WeightView w = src;
      w.data = t->owned_.emplace_back(src.data, src.data + view_bytes(src)).data();
      return w;
    };
    t->embd_ = copy(model.tok_embd());
    t->head_ = tied ? t->embd_ : copy(model.output());
  } else {
    t->embd_ = model.tok_embd();
    t->head_ = model.output();
    t->uses_model_ = true;
  }
  t->finish_setup();
  t->base_bytes_ = view_bytes(t->embd_) + (tied ? 0 : view_bytes(t->head_));
  for (const LlamaLayer& L : t->layers_) {
    for (int p = 0; p < kNumProj; ++p) t->base_bytes_ += view_bytes(L.proj(p));
  }
  for (const std::vector<float>& tr : t->transposed_) t->base_bytes_ += tr.size() * sizeof(float);
  return t;
}

std::unique_ptr<LoraTrainer> LoraTrainer::over(const LlamaHparams& hp, std::vector<LlamaLayer> layers,
                                               const WeightView& tok_embd, const WeightView& output,
                                               const float* output_norm, const LoraConfig& lc,
                                               ThreadPool& pool) {
  std::unique_ptr<LoraTrainer> t(new LoraTrainer(hp, lc, pool));
  t->layers_ = std::move(layers);
  t->embd_ = tok_embd;
  t->head_ = output;
  t->out_norm_ = output_norm;
  t->uses_model_ = true;
  t->finish_setup();
  return t;
}

void LoraTrainer::finish_setup() {
  decoder_.hp = &hp_;
  decoder_.plan = whole_plan(hp_);
  decoder_.layers = layers_.data();
  // F32 weights: the input gradient multiplies a transposed copy made once (the base never
  // changes), the fastest path; quantized weights go through tiles (ops/backward.h).
  auto transpose = [&](const WeightView& w) {
    std::vector<float>& t = transposed_.emplace_back(static_cast<size_t>(w.n_in * w.n_out));
    const float* src = reinterpret_cast<const float*>(w.data);
    for (int64_t o = 0; o < w.n_out; ++o) {
      for (int64_t i = 0; i < w.n_in; ++i) t[i * w.n_out + o] = src[o * (w.row_bytes / sizeof(float)) + i];
    }
    return WeightView{DType::F32, reinterpret_cast<const uint8_t*>(t.data()), w.n_out, w.n_in,
                      static_cast<size_t>(w.n_out) * sizeof(float)};
  };
  bool dense = head_.type == DType::F32;
  for (const LlamaLayer& L : layers_) {
    for (int p = 0; p < kNumProj; ++p) dense = dense && L.proj(p).type == DType::F32;
  }
  if (!dense) return;
  transposed_.reserve(layers_.size() * kNumProj + 1);  // views point into these vectors
  for (const LlamaLayer& L : layers_) {
    for (int p = 0; p < kNumProj; ++p) transposed_views_.push_back(transpose(L.proj(p)));
  }
  transposed_views_.push_back(transpose(head_));
}

const WeightView* LoraTrainer::transposed(int32_t il, int p) const {
  if (transposed_views_.empty()) return nullptr;
  return &transposed_views_[il < 0 ? transposed_views_.size() - 1 : static_cast<size_t>(il) * kNumProj + p];
}

DType LoraTrainer::tile_type() const {
  return prec_ == Precision::BF16 ? DType::BF16 : prec_ == Precision::F16 ? DType::F16 : DType::F32;
}

void LoraTrainer::init_lora(uint32_t seed, float b_sd) {
  std::mt19937 rng(seed);
  for (size_t l = 0; l < lora_.size(); ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      if (!lc_.targets[p]) continue;
      const int64_t in = proj_in(p), out = proj_out(p), r = lc_.rank;
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      std::uniform_real_distribution<double> ua(-bound, bound);
      std::normal_distribution<double> nb(0.0, static_cast<double>(b_sd));
      lora_[l].A[p].resize(r * in);
      for (float& x : lora_[l].A[p]) x = static_cast<float>(ua(rng));
      lora_[l].B[p].resize(out * r);
      for (float& x : lora_[l].B[p]) x = b_sd > 0 ? static_cast<float>(nb(rng)) : 0.0f;
      grad_[l].A[p].assign(r * in, 0.0f);
      grad_[l].B[p].assign(out * r, 0.0f);
    }
  }
}

void LoraTrainer::zero_grad() {
  for (LoraLayer<float>& g : grad_) {
    for (int p = 0; p < kNumProj; ++p) {
      std::fill(g.A[p].begin(), g.A[p].end(), 0.0f);
      std::fill(g.B[p].begin(), g.B[p].end(), 0.0f);
    }
  }
}

// The LoRA weights the compute uses: the FP32 masters, or their 16-bit roundings.
void LoraTrainer::refresh_compute_lora() {
  if (prec_ == Precision::F32 || store_) return;  // a store hands out compute weights
  lora_c_ = lora_;
  for (LoraLayer<float>& l : lora_c_) {
    for (int p = 0; p < kNumProj; ++p) {
      round_to(prec_, l.A[p].data(), static_cast<int64_t>(l.A[p].size()));
      round_to(prec_, l.B[p].data(), static_cast<int64_t>(l.B[p].size()));
    }
  }
}

LoraLayerView LoraTrainer::lora(int32_t il) const {
  const LoraLayer<float>& l = store_ ? *store_w_ : prec_ == Precision::F32 ? lora_[il] : lora_c_[il];
  LoraLayerView v;
  v.rank = lc_.rank;
  v.scale = scale();
  for (int p = 0; p < kNumProj; ++p) {
    if (!lc_.targets[p]) continue;
    v.A[p] = l.A[p].data();
    v.B[p] = l.B[p].data();
  }
  return v;
}

LoraLayerGrads LoraTrainer::lora_grads(int32_t il) {
  LoraLayer<float>& g = store_ ? *store_g_ : grad_[il];
  LoraLayerGrads v;
  for (int p = 0; p < kNumProj; ++p) {
    if (!lc_.targets[p]) continue;
    v.A[p] = g.A[p].data();
    v.B[p] = g.B[p].data();
  }
  return v;
}

void LoraTrainer::save(int32_t il, int slot, const float* x, int64_t n) {
  if (saving_ == Saving::None || (saving_ == Saving::Inputs && slot != kXIn)) return;
  Stash& st = saved_[il][slot];
  // Statistics (the log-sum-exp) stay in FP32 whatever the precision.
  if (prec_ != Precision::F32 && slot != kLse) {
    st.h.resize(static_cast<size_t>(n));
    pack16(prec_, x, n, st.h.data());
    return;
  }
  st.v.assign(x, x + n);
}

const float* LoraTrainer::load(int32_t il, int slot, std::vector<float>& buf) {
  Stash& st = saved_[il][slot];
  if (prec_ != Precision::F32 && slot != kLse) {
    buf.resize(st.h.size());
    unpack16(prec_, st.h.data(), static_cast<int64_t>(st.h.size()), buf.data());
    return buf.data();
  }
  return st.v.data();
}

size_t LoraTrainer::saved_bytes() const {
  size_t b = 0;
  for (const auto& layer : saved_) {
    for (const Stash& st : layer) b += st.v.capacity() * sizeof(float) + st.h.capacity() * 2;
  }
  return b;
}

float LoraTrainer::forward(const int32_t* tokens, const int32_t* targets, int64_t n,
                           std::vector<float>* logits_out, bool need_grad) {
  const int64_t E = hp_.n_embd;
  n_ = n;
  targets_.assign(targets, targets + n);
  grad_ready_ = false;
  refresh_compute_lora();
  batch_.clear();
  for (int64_t t = 0; t < n; ++t) batch_.add(tokens[t], static_cast<int32_t>(t), 0, false);
  if (ws_.max_tokens < n) {
    ws_ = decoder_.make_workspace(static_cast<int32_t>(n), 0, static_cast<int32_t>(n),
                                  pool_.size(), nullptr);
  }
  const int32_t rows = static_cast<int32_t>(n);
  check(decoder_.embed(embd_, batch_, 0, rows, ws_, pool_));
  round(ws_.x.data(), n * E);
  saving_ = !need_grad ? Saving::None : checkpoint_ ? Saving::Inputs : Saving::All;
  for (int32_t il = 0; il < hp_.n_layer; ++il) {
    if (store_) store_w_ = &store_->layer_weights(il);
    check(decoder_.forward_layer(il, batch_, 0, rows, nullptr, nullptr, ws_, pool_,
                                          nullptr, this));
  }
  saving_ = Saving::None;
  xf_.assign(ws_.x.data(), ws_.x.data() + n * E);  // [n, E] the last block's output
  xnf_.resize(n * E);
  rstdf_.resize(n);
  for_rows(pool_, rows, [&](int32_t t) {
    rstdf_[t] = rms_norm_rstd(xf_.data() + t * E, E, hp_.rms_eps);
    rms_norm(xf_.data() + t * E, out_norm_, xnf_.data() + t * E, E, hp_.rms_eps);
  });
  round_vec(xnf_);
  const float loss = head(need_grad, logits_out);
  grad_ready_ = need_grad;
  return loss;
}

// The output head over rows in chunks: loss; with need_grad also dxnf_ = (scale * dlogits) W.
float LoraTrainer::head(bool need_grad, std::vector<float>* logits_out) {
  const int64_t n = n_, E = hp_.n_embd, V = hp_.n_vocab;
  int64_t count = 0;
  for (int64_t t = 0; t < n; ++t) count += targets_[t] >= 0;
  if (logits_out) logits_out->resize(n * V);
  if (need_grad) dxnf_.assign(n * E, 0.0f);
  chunk_.resize(std::min(n, kHeadRows) * V);
  const size_t need = matmul_scratch_bytes(head_.type, E, std::min(n, kHeadRows));
  if (head_act_.size() < need) head_act_.resize(need);
  float loss = 0;
  for (int64_t r0 = 0; r0 < n; r0 += kHeadRows) {
    const int64_t rows = std::min(kHeadRows, n - r0);
    float* c = chunk_.data();
    matmul(pool_, head_, xnf_.data() + r0 * E, rows, c, head_act_.data());
    round(c, rows * V);
    if (logits_out) std::copy_n(c, rows * V, logits_out->data() + r0 * V);
    // NOTE: in place: each row's logits are read before its gradient overwrites them.
    loss += cross_entropy_forward_backward(c, targets_.data() + r0, rows, V, need_grad ? c : nullptr,
                                           static_cast<int64_t*>(nullptr), std::max<int64_t>(count, 1));
    if (!need_grad) continue;
    if (loss_scale_ != 1.0f) {
      for (int64_t i = 0; i < rows * V; ++i) c[i] *= loss_scale_;
    }
    round(c, rows * V);
    matmul_backward_input(pool_, head_, transposed(-1, 0), c, rows, dxnf_.data() + r0 * E,
                          tile_type(), head_back_);
  }
  if (need_grad) round_vec(dxnf_);
  return count ? loss : 0.0f;
}

void LoraTrainer::backward() {
  QILIN_ASSERT(grad_ready_);
  grad_ready_ = false;
  const int64_t n = n_, E = hp_.n_embd;
  const int32_t rows = static_cast<int32_t>(n);
  dx_.assign(n * E, 0.0f);
  rmsnorm_backward(dxnf_.data(), xf_.data(), out_norm_, rstdf_.data(), n, E, dx_.data(),
                   static_cast<float*>(nullptr));
  round_vec(dx_);
  for (int32_t il = hp_.n_layer - 1; il >= 0; --il) {
    if (store_) {
      store_w_ = &store_->layer_weights(il);
      store_g_ = &store_->layer_grads(il);
    }
    if (checkpoint_) {  // recompute the block from its input, saving all of it this time
      const float* x_in = load(il, kXIn, bw_.loaded[kXIn]);
      std::copy_n(x_in, n * E, ws_.x.data());
      saving_ = Saving::All;
      check(decoder_.forward_layer(il, batch_, 0, rows, nullptr, nullptr, ws_, pool_,
                                            nullptr, this));
      saving_ = Saving::None;
    }
    decoder_.backward_layer(il, rows, dx_.data(), *this, bw_, pool_);
    if (checkpoint_) {  // only the block's input stays
      for (int s = 0; s < kNumSlots; ++s) {
        if (s == kXIn) continue;
        saved_[il][s].v.clear();
        saved_[il][s].h.clear();
      }
    }
    if (store_) store_->layer_grads_done(il);
  }
}

}  // namespace qilin::train
