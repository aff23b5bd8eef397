// Llama loading (GGUF keys and tensor names, every shape checked) and the forward pass: the
// whole graph is in LlamaModel::forward, one layer loop, shapes beside each step.
#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/assert.h"
#include "core/printable.h"
#include "cpu/gemm.h"
#include "cpu/quants.h"

namespace qilin {
namespace {

Result<const GgufTensorInfo*> find_tensor(const GgufFile& f, const std::string& name,
                                          std::vector<int64_t> shape) {
  const GgufTensorInfo* t = f.find_tensor(name);
  if (!t) return errorf("%s: tensor '%s' is missing", f.path().c_str(), name.c_str());
  bool ok = t->n_dims == static_cast<int>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = t->ne[i] == shape[i];
  if (!ok) {
    std::string want, got;
    for (size_t i = 0; i < shape.size(); ++i) want += (i ? "," : "") + std::to_string(shape[i]);
    for (int i = 0; i < t->n_dims; ++i) got += (i ? "," : "") + std::to_string(t->ne[i]);
    return errorf("%s: tensor '%s' has shape [%s], expected [%s]", f.path().c_str(),
                  name.c_str(), got.c_str(), want.c_str());
  }
  return t;
}

Result<const float*> load_norm(const GgufFile& f, const std::string& name, int64_t n) {
  auto t = find_tensor(f, name, {n});
  QILIN_TRY(t);
  if ((*t)->type != DType::F32) {
    return errorf("%s: tensor '%s' has type %s, expected F32", f.path().c_str(), name.c_str(),
                  dtype_name((*t)->type));
  }
  return reinterpret_cast<const float*>((*t)->data);
}

Result<WeightView> load_matrix(const GgufFile& f, const std::string& name, int64_t n_in,
                               int64_t n_out) {
  auto t = find_tensor(f, name, {n_in, n_out});
  QILIN_TRY(t);
  QILIN_TRY(f.check_readable(**t));
  if (!matmul_kernels((*t)->type, Isa::Scalar)) {
    return errorf("%s: tensor '%s' has type %s, which Qilin cannot multiply yet",
                  f.path().c_str(), name.c_str(), dtype_name((*t)->type));
  }
  WeightView w;
  w.type = (*t)->type;
  w.data = (*t)->data;
  w.n_in = n_in;
  w.n_out = n_out;
  w.row_bytes = row_bytes(w.type, n_in);
  return w;
}

Result<int32_t> get_i32(const GgufFile& f, const std::string& key, int64_t lo, int64_t hi) {
  auto v = f.get_int(key);
  QILIN_TRY(v);
  if (*v < lo || *v > hi) {
    return errorf("%s: key '%s' is %lld, expected a value in [%lld, %lld]", f.path().c_str(),
                  key.c_str(), static_cast<long long>(*v), static_cast<long long>(lo),
                  static_cast<long long>(hi));
  }
  return static_cast<int32_t>(*v);
}

Result<int32_t> get_i32_or(const GgufFile& f, const std::string& key, int32_t dflt, int64_t lo,
                           int64_t hi) {
  if (!f.find(key)) return dflt;
  return get_i32(f, key, lo, hi);
}

Result<float> get_f32_or(const GgufFile& f, const std::string& key, float dflt) {
  if (!f.find(key)) return dflt;
  auto v = f.get_float(key);
  QILIN_TRY(v);
  return static_cast<float>(*v);
}

}  // namespace

// MemAvailable from /proc/meminfo (0 when unknown: then Auto keeps the file mapping).
static size_t available_memory_bytes() {
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (f == nullptr) return 0;
  char line[256];
  unsigned long long kib = 0;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::sscanf(line, "MemAvailable: %llu kB", &kib) == 1) break;
  }
  std::fclose(f);
  return static_cast<size_t>(kib) * 1024;
}

const char* placement_name(WeightPlacement p) {
  switch (p) {
    case WeightPlacement::Auto: return "auto";
    case WeightPlacement::Mapped: return "mapped";
    case WeightPlacement::Memory: return "memory";
  }
  return "?";
}

LlamaModel::~LlamaModel() {
  if (registered_weights_) gemm_unregister_immutable(registered_weights_);
}

Result<std::unique_ptr<LlamaModel>> LlamaModel::load(const std::string& path,
                                                     WeightPlacement placement) {
  auto file = GgufFile::open(path);
  QILIN_TRY(file);
  if (placement == WeightPlacement::Auto) {
    placement = (*file)->tensor_span_bytes() <= available_memory_bytes() / 2
                    ? WeightPlacement::Memory
                    : WeightPlacement::Mapped;
  }
  if (placement == WeightPlacement::Memory) QILIN_TRY((*file)->load_into_memory());
  std::unique_ptr<LlamaModel> m(new LlamaModel());
  m->file_ = std::move(*file);
  // The tensors never change while the model lives: the tiled gemms may keep them packed.
  if (!m->file_->tensors().empty()) {
    const uint8_t* lo = m->file_->tensors()[0].data;
    for (const GgufTensorInfo& t : m->file_->tensors()) lo = std::min(lo, t.data);
    gemm_register_immutable(lo, m->file_->tensor_span_bytes());
    m->registered_weights_ = lo;
  }
  const GgufFile& f = *m->file_;
  LlamaHparams& hp = m->hp_;

  auto arch = f.get_string("general.architecture");
  QILIN_TRY(arch);
  hp.arch = *arch;
  if (hp.arch != "llama") {
    return errorf("%s: architecture '%s' is not supported (supported: llama)", path.c_str(),
                  printable(hp.arch, 80).c_str());
  }
  const std::string a = hp.arch + ".";
  constexpr int64_t kBig = 1 << 20;
  auto n_embd = get_i32(f, a + "embedding_length", 1, kBig);
  QILIN_TRY(n_embd);
  auto n_layer = get_i32(f, a + "block_count", 1, 4096);
  QILIN_TRY(n_layer);
  auto n_head = get_i32(f, a + "attention.head_count", 1, 4096);
  QILIN_TRY(n_head);
  auto n_head_kv = get_i32_or(f, a + "attention.head_count_kv", *n_head, 1, *n_head);
  QILIN_TRY(n_head_kv);
  auto n_ff = get_i32(f, a + "feed_forward_length", 1, kBig);
  QILIN_TRY(n_ff);
  auto n_ctx = get_i32_or(f, a + "context_length", 2048, 1, 1 << 24);
  QILIN_TRY(n_ctx);
  hp.n_embd = *n_embd;
  hp.n_layer = *n_layer;
  hp.n_head = *n_head;
  hp.n_head_kv = *n_head_kv;
  hp.n_ff = *n_ff;
  hp.n_ctx_train = *n_ctx;
  if (hp.n_head % hp.n_head_kv != 0) {
    return errorf("%s: head_count %d is not a multiple of head_count_kv %d", path.c_str(),
                  hp.n_head, hp.n_head_kv);
  }
  auto head_dim = get_i32_or(f, a + "attention.key_length", hp.n_embd / hp.n_head, 2, 4096);
  QILIN_TRY(head_dim);
  hp.head_dim = *head_dim;
  auto eps = get_f32_or(f, a + "attention.layer_norm_rms_epsilon", 1e-5f);
  QILIN_TRY(eps);
  hp.rms_eps = *eps;

  auto n_rot = get_i32_or(f, a + "rope.dimension_count", hp.head_dim, 2, hp.head_dim);
  QILIN_TRY(n_rot);
  if (*n_rot % 2 != 0) return errorf("%s: rope.dimension_count %d is odd", path.c_str(), *n_rot);
  hp.rope.n_rot = *n_rot;
  auto base = get_f32_or(f, a + "rope.freq_base", 10000.0f);
  QILIN_TRY(base);
  hp.rope.freq_base = *base;
  float factor = 1.0f;
  if (f.find(a + "rope.scaling.type")) {
    auto type = f.get_string(a + "rope.scaling.type");
    QILIN_TRY(type);
    if (*type == "linear") {
      auto fac = get_f32_or(f, a + "rope.scaling.factor", 1.0f);
      QILIN_TRY(fac);
      factor = *fac;
    } else if (*type != "none") {
      return errorf("%s: rope.scaling.type '%s' is not supported (supported: none, linear)",
                    path.c_str(), type->c_str());
    }
  } else if (f.find(a + "rope.scale_linear")) {
    auto fac = get_f32_or(f, a + "rope.scale_linear", 1.0f);
    QILIN_TRY(fac);
    factor = *fac;
  }
  if (!(factor > 0.0f)) return errorf("%s: rope scaling factor %g is invalid", path.c_str(), factor);
  hp.rope.freq_scale = 1.0f / factor;
  if (f.find_tensor("rope_freqs.weight")) {
    auto t = load_norm(f, "rope_freqs.weight", hp.rope.n_rot / 2);
    QILIN_TRY(t);
    hp.rope.freq_factors = *t;
  }

  // Embedding table: any type we can dequantize a row of; its row count is the vocabulary.
  const GgufTensorInfo* te = f.find_tensor("token_embd.weight");
  if (!te) return errorf("%s: tensor 'token_embd.weight' is missing", path.c_str());
  if (te->n_dims != 2 || te->ne[0] != hp.n_embd) {
    return errorf("%s: tensor 'token_embd.weight' must be [%d, n_vocab]", path.c_str(), hp.n_embd);
  }
  QILIN_TRY(f.check_readable(*te));  // rows are dequantized one token at a time
  hp.n_vocab = static_cast<int32_t>(te->ne[1]);
  m->tok_embd_ = te->data;
  m->tok_embd_type_ = te->type;
  m->tok_embd_row_bytes_ = row_bytes(te->type, hp.n_embd);

  const int64_t d_q = static_cast<int64_t>(hp.n_head) * hp.head_dim;
  const int64_t d_kv = static_cast<int64_t>(hp.n_head_kv) * hp.head_dim;
  m->layers_.resize(hp.n_layer);
  for (int32_t il = 0; il < hp.n_layer; ++il) {
    const std::string p = "blk." + std::to_string(il) + ".";
    LlamaLayer& L = m->layers_[il];
    auto an = load_norm(f, p + "attn_norm.weight", hp.n_embd);
    QILIN_TRY(an);
    L.attn_norm = *an;
    auto fn = load_norm(f, p + "ffn_norm.weight", hp.n_embd);
    QILIN_TRY(fn);
    L.ffn_norm = *fn;
    struct {
      WeightView* dst;
      const char* name;
      int64_t n_in, n_out;
    } mats[] = {{&L.wq, "attn_q.weight", hp.n_embd, d_q},
                {&L.wk, "attn_k.weight", hp.n_embd, d_kv},
                {&L.wv, "attn_v.weight", hp.n_embd, d_kv},
                {&L.wo, "attn_output.weight", d_q, hp.n_embd},
                {&L.w_gate, "ffn_gate.weight", hp.n_embd, hp.n_ff},
                {&L.w_up, "ffn_up.weight", hp.n_embd, hp.n_ff},
                {&L.w_down, "ffn_down.weight", hp.n_ff, hp.n_embd}};
    for (auto& mt : mats) {
      auto w = load_matrix(f, p + mt.name, mt.n_in, mt.n_out);
      QILIN_TRY(w);
      *mt.dst = *w;
    }
  }
  auto on = load_norm(f, "output_norm.weight", hp.n_embd);
  QILIN_TRY(on);
  m->output_norm_ = *on;
  const bool tied = f.find_tensor("output.weight") == nullptr;
  auto out = load_matrix(f, tied ? "token_embd.weight" : "output.weight", hp.n_embd, hp.n_vocab);
  QILIN_TRY(out);
  m->output_ = *out;

  for (const GgufTensorInfo& t : f.tensors()) m->weight_bytes_ += t.size;
  return m;
}

KvCacheConfig LlamaModel::kv_config(int32_t n_ctx_tokens, int32_t block_size,
                                    KvType type) const {
  if (distributed_) return distributed_->kv_config(n_ctx_tokens, block_size, type);
  KvCacheConfig c;
  c.type = type;
  c.n_layer = hp_.n_layer;
  c.n_head_kv = hp_.n_head_kv;
  c.head_dim = hp_.head_dim;
  c.block_size = block_size;
  c.n_blocks = (n_ctx_tokens + block_size - 1) / block_size;
  return c;
}

Workspace LlamaModel::make_workspace(int32_t max_tokens, int32_t max_logit_rows,
                                     int32_t max_ctx, int n_threads) const {
  if (distributed_) return distributed_->make_workspace(max_tokens, max_logit_rows, max_ctx, n_threads);
  Workspace ws;
  ws.max_tokens = max_tokens;
  ws.max_logit_rows = max_logit_rows;
  ws.max_ctx = max_ctx;
  const size_t nt = max_tokens;
  const size_t d_q = static_cast<size_t>(hp_.n_head) * hp_.head_dim;
  const size_t d_kv = static_cast<size_t>(hp_.n_head_kv) * hp_.head_dim;
  ws.x.resize(nt * hp_.n_embd);
  ws.cur.resize(nt * std::max<size_t>(hp_.n_embd, d_q));
  ws.q.resize(nt * d_q);
  ws.k.resize(nt * d_kv);
  ws.v.resize(nt * d_kv);
  ws.attn.resize(nt * d_q);
  ws.gate.resize(nt * hp_.n_ff);
  ws.up.resize(nt * hp_.n_ff);
  // ws.scores (the two-pass kernel's, linear in the context) is sized on first use: the
  // default FlashAttention path needs only attn_partial, whatever the context length.
  ws.n_threads = std::max(n_threads, 1);
  ws.attn_row_blocks.resize(nt + 1);
  ws.attn_partial.resize(
      attention_flash_partial_floats(ws.n_threads, hp_.n_head / hp_.n_head_kv, hp_.head_dim));
  ws.logits.resize(static_cast<size_t>(max_logit_rows) * hp_.n_vocab);
  ws.out_rows.resize(max_logit_rows);
  size_t act = 0;
  auto need = [&](const WeightView& w, int64_t rows) {
    act = std::max(act, matmul_scratch_bytes(w.type, w.n_in, rows));
  };
  for (const LlamaLayer& L : layers_) {
    for (const WeightView* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) {
      need(*w, max_tokens);
    }
  }
  need(output_, max_logit_rows);
  ws.act.resize(act);
  return ws;
}

Status LlamaModel::validate(const Batch& b, const KvCache& kv, const Workspace& ws) const {
  const KvCacheConfig& c = kv.config();
  if (c.n_layer != hp_.n_layer || c.n_head_kv != hp_.n_head_kv || c.head_dim != hp_.head_dim) {
    return errorf("forward: the KV cache was made for another model shape");
  }
  return validate_batch(b, hp_.n_vocab, c, ws);
}

AttentionArgs attention_args(Workspace& ws, const KvCache& kv, const Batch& b, int32_t n_head,
                             int32_t head_dim, const float* q, float* out) {
  AttentionArgs aa;
  aa.q = q;
  aa.out = out;
  aa.kv = &kv;
  aa.batch = &b;
  aa.n_head = n_head;
  aa.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  if (!ws.flash_attn) {
    const size_t need =
        static_cast<size_t>(ws.n_threads) * (n_head / kv.config().n_head_kv) * ws.max_ctx;
    if (ws.scores.size() < need) ws.scores.resize(need);
  }
  aa.scores = ws.scores.data();
  aa.max_ctx = ws.max_ctx;
  aa.flash = ws.flash_attn;
  aa.max_threads = ws.n_threads;
  aa.row_blocks = ws.attn_row_blocks.data();
  aa.partial = ws.attn_partial.data();
  return aa;
}

Status validate_batch(const Batch& b, int32_t n_vocab, const KvCacheConfig& c, const Workspace& ws) {
  const int32_t n = b.n_tokens();
  if (n == 0) return errorf("forward: empty batch");
  if (n > ws.max_tokens) {
    return errorf("forward: batch has %d tokens, the workspace holds %d", n, ws.max_tokens);
  }
  if (b.n_logit_rows() > ws.max_logit_rows) {
    return errorf("forward: %d rows want logits, the workspace holds %d", b.n_logit_rows(),
                  ws.max_logit_rows);
  }
  if (b.pos.size() != b.token.size() || b.seq.size() != b.token.size() ||
      b.want_logits.size() != b.token.size()) {
    return errorf("forward: batch columns have different lengths");
  }
  for (int32_t t = 0; t < n; ++t) {
    if (b.token[t] < 0 || b.token[t] >= n_vocab) {
      return errorf("forward: token id %d at row %d is outside the vocabulary [0, %d)", b.token[t],
                    t, n_vocab);
    }
    if (b.seq[t] < 0 || b.seq[t] >= static_cast<int32_t>(b.seqs.size())) {
      return errorf("forward: row %d names sequence %d of %zu", t, b.seq[t], b.seqs.size());
    }
    const int32_t p = b.pos[t];
    if (p < 0 || p >= ws.max_ctx) {
      return errorf("forward: position %d at row %d is outside the context [0, %d)", p, t,
                    ws.max_ctx);
    }
    const BatchSeq& s = b.seqs[b.seq[t]];
    if (p / c.block_size >= s.n_blocks) {
      return errorf("forward: position %d of sequence %d has no block in its block table", p,
                    b.seq[t]);
    }
  }
  for (const BatchSeq& s : b.seqs) {
    for (int32_t i = 0; i < s.n_blocks; ++i) {
      if (s.block_table[i] < 0 || s.block_table[i] >= c.n_blocks) {
        return errorf("forward: block id %d is outside the cache's %d blocks", s.block_table[i],
                      c.n_blocks);
      }
    }
  }
  return Status::ok();
}

// y[n, out] += scale * (x A^T) B^T for the adapter's projection p of layer il (no-op when that
// projection is not adapted). Rank r is small: plain loops, rows split across threads.
void LlamaModel::apply_lora(ThreadPool& pool, int32_t il, int p, const float* x, int32_t n,
                            float* y) const {
  const std::vector<float>& A = adapter_->A[il][p];
  const std::vector<float>& B = adapter_->B[il][p];
  if (A.empty()) return;
  const int32_t r = adapter_->rank;
  const int64_t in = static_cast<int64_t>(A.size()) / r, out = static_cast<int64_t>(B.size()) / r;
  const float scale = adapter_->scale;
  for_rows(pool, n, [&](int32_t t) {
    float xa[256];
    QILIN_ASSERT(r <= 256);
    const float* xt = x + t * in;
    for (int32_t k = 0; k < r; ++k) {
      float s = 0;
      for (int64_t i = 0; i < in; ++i) s += xt[i] * A[k * in + i];
      xa[k] = s * scale;
    }
    float* yt = y + t * out;
    for (int64_t o = 0; o < out; ++o) {
      float s = 0;
      for (int32_t k = 0; k < r; ++k) s += xa[k] * B[o * r + k];
      yt[o] += s;
    }
  });
}

Status LlamaModel::set_adapter(std::shared_ptr<const LoraAdapter> adapter) {
  if (adapter) {
    if (static_cast<int32_t>(adapter->A.size()) != hp_.n_layer || adapter->rank < 1 ||
        adapter->rank > 256) {
      return errorf("lora: the adapter has %zu layers and rank %d; the model has %d layers "
                    "(rank must be 1..256)", adapter->A.size(), adapter->rank, hp_.n_layer);
    }
  }
  adapter_ = std::move(adapter);
  return Status::ok();
}

Result<const float*> LlamaModel::forward(const Batch& batch, KvCache& kv, Workspace& ws,
                                         ThreadPool& pool, ForwardTap* tap) const {
  if (distributed_) {
    if (tap) return errorf("forward: a ForwardTap cannot observe a distributed forward pass");
    return distributed_->forward(batch, kv, ws, pool);
  }
  QILIN_TRY(validate(batch, kv, ws));
  const LlamaHparams& hp = hp_;
  const int32_t n = batch.n_tokens();
  const int64_t E = hp.n_embd, hd = hp.head_dim;
  const int64_t d_q = hp.n_head * hd, d_kv = hp.n_head_kv * hd;
  float* x = ws.x.data();        // [n, E]
  float* cur = ws.cur.data();    // [n, E]
  float* q = ws.q.data();        // [n, n_head, hd]
  float* k = ws.k.data();        // [n, n_head_kv, hd]
  float* v = ws.v.data();        // [n, n_head_kv, hd]
  float* attn = ws.attn.data();  // [n, n_head, hd]
  float* gate = ws.gate.data();  // [n, n_ff]
  float* up = ws.up.data();      // [n, n_ff]
  void* act = ws.act.data();

  for_rows(pool, n, [&](int32_t t) {
    dequantize_row_ref(tok_embd_type_, tok_embd_ + batch.token[t] * tok_embd_row_bytes_,
                       x + t * E, E);
  });

  AttentionArgs aa = attention_args(ws, kv, batch, hp.n_head, hp.head_dim, q, attn);

  for (int32_t il = 0; il < hp.n_layer; ++il) {
    const LlamaLayer& L = layers_[il];
    // attention block
    for_rows(pool, n, [&](int32_t t) { rms_norm(x + t * E, L.attn_norm, cur + t * E, E, hp.rms_eps); });
    if (tap) tap->linear_input(il, LinearInput::Attn, cur, n, E);
    {
      const WeightView qkv[3] = {L.wq, L.wk, L.wv};
      float* const out[3] = {q, k, v};  // [n, d_q], [n, d_kv], [n, d_kv]
      if (matmul_can_group(qkv, 3)) {
        matmul_group(pool, qkv, 3, cur, n, out, act);
      } else {
        for (int i = 0; i < 3; ++i) matmul(pool, qkv[i], cur, n, out[i], act);
      }
    }
    if (adapter_) {  // before RoPE, as in training
      apply_lora(pool, il, kLoraQ, cur, n, q);
      apply_lora(pool, il, kLoraK, cur, n, k);
      apply_lora(pool, il, kLoraV, cur, n, v);
    }
    for_rows(pool, n, [&](int32_t t) {
      rope(q + t * d_q, hp.n_head, hd, batch.pos[t], hp.rope);
      rope(k + t * d_kv, hp.n_head_kv, hd, batch.pos[t], hp.rope);
    });
    kv_store(kv, il, batch, k, v);
    aa.layer = il;
    attention(pool, aa);                 // [n, d_q]
    if (tap) tap->linear_input(il, LinearInput::Out, attn, n, d_q);
    matmul(pool, L.wo, attn, n, cur, act);  // [n, E]
    if (adapter_) apply_lora(pool, il, kLoraO, attn, n, cur);

    // feed-forward block: residual add fused with the norm that reads it
    for_rows(pool, n, [&](int32_t t) {
      float* xt = x + t * E;
      const float* ct = cur + t * E;
      for (int64_t i = 0; i < E; ++i) xt[i] += ct[i];
      rms_norm(xt, L.ffn_norm, cur + t * E, E, hp.rms_eps);
    });
    if (tap) tap->linear_input(il, LinearInput::Ffn, cur, n, E);
    {
      const WeightView gu[2] = {L.w_gate, L.w_up};
      float* const out[2] = {gate, up};  // [n, n_ff] each
      if (matmul_can_group(gu, 2)) {
        matmul_group(pool, gu, 2, cur, n, out, act);
      } else {
        for (int i = 0; i < 2; ++i) matmul(pool, gu[i], cur, n, out[i], act);
      }
    }
    if (adapter_) {
      apply_lora(pool, il, kLoraGate, cur, n, gate);
      apply_lora(pool, il, kLoraUp, cur, n, up);
    }
    for_rows(pool, n, [&](int32_t t) {
      const int64_t o = static_cast<int64_t>(t) * hp.n_ff;
      swiglu(gate + o, up + o, gate + o, hp.n_ff);
    });
    if (tap) tap->linear_input(il, LinearInput::Down, gate, n, hp.n_ff);
    matmul(pool, L.w_down, gate, n, cur, act);  // [n, E]
    if (adapter_) apply_lora(pool, il, kLoraDown, gate, n, cur);
    for_rows(pool, n, [&](int32_t t) {
      for (int64_t i = t * E; i < (t + 1) * E; ++i) x[i] += cur[i];
    });
  }

  // Output head on the rows that want logits only.
  int32_t n_out = 0;
  for (int32_t t = 0; t < n; ++t) {
    if (!batch.want_logits[t]) continue;
    rms_norm(x + t * E, output_norm_, cur + n_out * E, E, hp.rms_eps);
    ws.out_rows[n_out++] = t;
  }
  if (n_out > 0) matmul(pool, output_, cur, n_out, ws.logits.data(), act);  // [n_out, n_vocab]
  return static_cast<const float*>(ws.logits.data());
}

}  // namespace qilin
