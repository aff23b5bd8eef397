// The decoder's forward pass (see transformer.h): one layer loop, shapes beside each step.
// A shard runs it with local widths (its heads, FFN columns); the residual stream x is always
// whole [n, n_embd] on every rank.
#include "model/transformer.h"

#include <algorithm>
#include <cmath>

#include "core/assert.h"
#include "cpu/quants.h"
#include "model/lora_adapter.h"

namespace qilin {

ShardPlan whole_plan(const LlamaHparams& hp) {
  ShardPlan p;
  p.layer1 = hp.n_layer;
  p.n_head_kv = hp.n_head_kv;
  p.n_head = hp.n_head;
  p.n_ff = hp.n_ff;
  p.n_vocab = hp.n_vocab;
  p.vocab_chunk = hp.n_vocab;
  p.n_embd = hp.n_embd;
  return p;
}

KvCacheConfig Decoder::kv_config(int32_t n_ctx_tokens, int32_t block_size, KvType type) const {
  KvCacheConfig c;
  c.type = type;
  c.n_layer = plan.layer1 - plan.layer0;
  c.n_head_kv = plan.n_head_kv;
  c.head_dim = hp->head_dim;
  c.block_size = block_size;
  c.n_blocks = (n_ctx_tokens + block_size - 1) / block_size;
  return c;
}

Workspace Decoder::make_workspace(int32_t max_tokens, int32_t max_logit_rows, int32_t max_ctx,
                                  int n_threads, const WeightView* output) const {
  Workspace ws;
  ws.max_tokens = max_tokens;
  ws.max_logit_rows = max_logit_rows;
  ws.max_ctx = max_ctx;
  const size_t nt = max_tokens, E = hp->n_embd;
  const size_t d_q = static_cast<size_t>(plan.n_head) * hp->head_dim;
  const size_t d_kv = static_cast<size_t>(plan.n_head_kv) * hp->head_dim;
  ws.x.resize(nt * E);
  ws.cur.resize(nt * std::max(E, d_q));
  ws.q.resize(nt * d_q);
  ws.k.resize(nt * d_kv);
  ws.v.resize(nt * d_kv);
  ws.attn.resize(nt * d_q);
  ws.gate.resize(nt * plan.n_ff);
  ws.up.resize(nt * plan.n_ff);
  // ws.scores (the two-pass kernel's, linear in the context) is sized on first use: the
  // default FlashAttention path needs only attn_partial, whatever the context length.
  ws.n_threads = std::max(n_threads, 1);
  ws.attn_row_blocks.resize(nt + 1);
  ws.attn_partial.resize(
      attention_flash_partial_floats(ws.n_threads, hp->n_head / hp->n_head_kv, hp->head_dim));
  ws.logits.resize(static_cast<size_t>(max_logit_rows) * hp->n_vocab);
  ws.out_rows.resize(max_logit_rows);
  size_t act = 0;
  auto need = [&](const WeightView& w, int64_t rows) {
    act = std::max(act, matmul_scratch_bytes(w.type, w.n_in, rows));
  };
  for (int32_t l = 0; l < plan.layer1 - plan.layer0; ++l) {
    const LlamaLayer& L = layers[l];
    for (const WeightView* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) {
      need(*w, max_tokens);
    }
  }
  if (output && output->data) need(*output, max_logit_rows);
  ws.act.resize(act);
  return ws;
}

Status Decoder::validate(const Batch& b, const KvCache& kv, const Workspace& ws) const {
  const KvCacheConfig& c = kv.config();
  if (c.n_layer != plan.layer1 - plan.layer0 || c.n_head_kv != plan.n_head_kv ||
      c.head_dim != hp->head_dim) {
    return errorf("forward: the KV cache was made for another model shape");
  }
  return validate_batch(b, hp->n_vocab, c, ws);
}

Status Decoder::embed(const WeightView& table, const Batch& b, int32_t row0, int32_t n,
                      Workspace& ws, ThreadPool& pool) const {
  const int64_t E = hp->n_embd;
  float* x = ws.x.data() + static_cast<int64_t>(row0) * E;  // [n, E]
  const int64_t v0 = plan.vocab0, v1 = plan.vocab0 + table.n_out;
  for_rows(pool, n, [&](int32_t t) {
    const int64_t tok = b.token[t];
    if (tok >= v0 && tok < v1) {
      dequantize_row_ref(table.type, table.data + (tok - v0) * table.row_bytes, x + t * E, E);
    } else {
      std::fill(x + t * E, x + (t + 1) * E, 0.0f);
    }
  });
  // Exactly one rank holds each row's embedding: the sum adds zeros, so it is exact.
  if (hooks) QILIN_TRY(hooks->sum(x, n * E));
  return Status::ok();
}

namespace {

// y[n, out] += scale * (x A^T) B^T for the adapter's projection p of layer il (no-op when that
// projection is not adapted). Rank r is small: plain loops, rows split across threads.
void apply_lora(const LoraAdapter& ad, ThreadPool& pool, int32_t il, int p, const float* x,
                int32_t n, float* y) {
  const std::vector<float>& A = ad.A[il][p];
  const std::vector<float>& B = ad.B[il][p];
  if (A.empty()) return;
  const int32_t r = ad.rank;
  const int64_t in = static_cast<int64_t>(A.size()) / r, out = static_cast<int64_t>(B.size()) / r;
  const float scale = ad.scale;
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

// out[i] = x W_i^T for the weights sharing x (Q/K/V; gate/up): one grouped call when they can.
void matmul_shared_input(ThreadPool& pool, const WeightView* w, int n_w, const float* x,
                         int32_t n, float* const* out, void* act) {
  if (matmul_can_group(w, n_w)) return matmul_group(pool, w, n_w, x, n, out, act);
  for (int i = 0; i < n_w; ++i) matmul(pool, w[i], x, n, out[i], act);
}

}  // namespace

Status Decoder::run_layers(const Batch& b, int32_t row0, int32_t n, KvCache& kv, Workspace& ws,
                           ThreadPool& pool, ForwardTap* tap) const {
  QILIN_ASSERT(!adapter || !hooks);
  const LlamaHparams& h = *hp;
  const int64_t E = h.n_embd, hd = h.head_dim, F = plan.n_ff;
  const int64_t d_q = plan.n_head * hd, d_kv = plan.n_head_kv * hd;
  float* x = ws.x.data() + row0 * E;          // [n, E] residual stream (whole on every rank)
  float* cur = ws.cur.data() + row0 * E;      // [n, E]
  float* q = ws.q.data() + row0 * d_q;        // [n, n_head, hd] (this plan's heads)
  float* k = ws.k.data() + row0 * d_kv;       // [n, n_head_kv, hd]
  float* v = ws.v.data() + row0 * d_kv;       // [n, n_head_kv, hd]
  float* attn = ws.attn.data() + row0 * d_q;  // [n, n_head, hd]
  float* gate = ws.gate.data() + row0 * F;    // [n, n_ff] (this plan's columns)
  float* up = ws.up.data() + row0 * F;        // [n, n_ff]
  void* act = ws.act.data();
  // The row-parallel products: whole layers multiply alone, slices meet their group.
  auto row_parallel = [&](LinearInput site, const WeightView& w, const float* in) -> Status {
    if (hooks) return hooks->row_parallel(pool, site, w, in, n, cur, act);
    matmul(pool, w, in, n, cur, act);  // [n, E]
    return Status::ok();
  };

  AttentionArgs aa = attention_args(ws, kv, b, plan.n_head, h.head_dim, q, attn);

  for (int32_t il = plan.layer0; il < plan.layer1; ++il) {
    const LlamaLayer& L = layers[il - plan.layer0];
    // attention block
    for_rows(pool, n, [&](int32_t t) { rms_norm(x + t * E, L.attn_norm, cur + t * E, E, h.rms_eps); });
    if (tap) tap->linear_input(il, LinearInput::Attn, cur, n, E);
    const WeightView qkv[3] = {L.wq, L.wk, L.wv};  // column-parallel: this plan's heads
    float* const qkv_out[3] = {q, k, v};            // [n, d_q], [n, d_kv], [n, d_kv]
    matmul_shared_input(pool, qkv, 3, cur, n, qkv_out, act);
    if (adapter) {  // before RoPE, as in training
      apply_lora(*adapter, pool, il, kLoraQ, cur, n, q);
      apply_lora(*adapter, pool, il, kLoraK, cur, n, k);
      apply_lora(*adapter, pool, il, kLoraV, cur, n, v);
    }
    for_rows(pool, n, [&](int32_t t) {
      rope(q + t * d_q, plan.n_head, static_cast<int32_t>(hd), b.pos[t], h.rope);
      rope(k + t * d_kv, plan.n_head_kv, static_cast<int32_t>(hd), b.pos[t], h.rope);
    });
    aa.layer = il - plan.layer0;  // the cache holds this plan's layers
    kv_store(kv, aa.layer, b, k, v);
    attention(pool, aa);  // [n, d_q]
    if (tap) tap->linear_input(il, LinearInput::Out, attn, n, d_q);
    QILIN_TRY(row_parallel(LinearInput::Out, L.wo, attn));  // [n, E]
    if (adapter) apply_lora(*adapter, pool, il, kLoraO, attn, n, cur);

    // feed-forward block: residual add fused with the norm that reads it
    for_rows(pool, n, [&](int32_t t) {
      float* xt = x + t * E;
      const float* ct = cur + t * E;
      for (int64_t i = 0; i < E; ++i) xt[i] += ct[i];
      rms_norm(xt, L.ffn_norm, cur + t * E, E, h.rms_eps);
    });
    if (tap) tap->linear_input(il, LinearInput::Ffn, cur, n, E);
    const WeightView gu[2] = {L.w_gate, L.w_up};  // column-parallel: this plan's columns
    float* const gu_out[2] = {gate, up};           // [n, n_ff] each
    matmul_shared_input(pool, gu, 2, cur, n, gu_out, act);
    if (adapter) {
      apply_lora(*adapter, pool, il, kLoraGate, cur, n, gate);
      apply_lora(*adapter, pool, il, kLoraUp, cur, n, up);
    }
    for_rows(pool, n, [&](int32_t t) { swiglu(gate + t * F, up + t * F, gate + t * F, F); });
    if (tap) tap->linear_input(il, LinearInput::Down, gate, n, F);
    QILIN_TRY(row_parallel(LinearInput::Down, L.w_down, gate));  // [n, E]
    if (adapter) apply_lora(*adapter, pool, il, kLoraDown, gate, n, cur);
    for_rows(pool, n, [&](int32_t t) {
      for (int64_t i = t * E; i < (t + 1) * E; ++i) x[i] += cur[i];
    });
  }
  return Status::ok();
}

int32_t Decoder::head_rows(const float* output_norm, const Batch& b, int32_t row0, int32_t n,
                           int32_t out0, Workspace& ws) const {
  const int64_t E = hp->n_embd;
  const float* x = ws.x.data() + row0 * E;
  float* cur = ws.cur.data() + row0 * E;
  int32_t k = 0;
  for (int32_t t = 0; t < n; ++t) {
    if (!b.want_logits[t]) continue;
    rms_norm(x + t * E, output_norm, cur + k * E, E, hp->rms_eps);
    ws.out_rows[out0 + k++] = row0 + t;
  }
  return k;
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

}  // namespace qilin
