// Llama loading (GGUF keys and tensor names, every shape checked) and the forward pass, which
// runs the whole model through model/transformer.h's Decoder.
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

Decoder LlamaModel::decoder() const {
  Decoder d;
  d.hp = &hp_;
  d.plan = whole_plan(hp_);
  d.layers = layers_.data();
  d.adapter = adapter_.get();
  return d;
}

KvCacheConfig LlamaModel::kv_config(int32_t n_ctx_tokens, int32_t block_size,
                                    KvType type) const {
  if (distributed_) return distributed_->kv_config(n_ctx_tokens, block_size, type);
  return decoder().kv_config(n_ctx_tokens, block_size, type);
}

Workspace LlamaModel::make_workspace(int32_t max_tokens, int32_t max_logit_rows,
                                     int32_t max_ctx, int n_threads) const {
  if (distributed_) return distributed_->make_workspace(max_tokens, max_logit_rows, max_ctx, n_threads);
  return decoder().make_workspace(max_tokens, max_logit_rows, max_ctx, n_threads, &output_);
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
  const Decoder d = decoder();
  QILIN_TRY(d.validate(batch, kv, ws));
  const int32_t n = batch.n_tokens();
  QILIN_TRY(d.embed(tok_embd(), batch, 0, n, ws, pool));  // [n, E]
  QILIN_TRY(d.run_layers(batch, 0, n, kv, ws, pool, tap));
  // Output head on the rows that want logits only.
  const int32_t n_out = d.head_rows(output_norm_, batch, 0, n, 0, ws);
  if (n_out > 0) matmul(pool, output_, ws.cur.data(), n_out, ws.logits.data(), ws.act.data());
  return static_cast<const float*>(ws.logits.data());  // [n_out, n_vocab]
}

}  // namespace qilin
