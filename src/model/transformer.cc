// The decoder's forward pass (see transformer.h): one layer loop, shapes beside each step.
// A shard runs it with local widths (its heads, FFN columns); the residual stream x is always
// whole [n, n_embd] on every rank.
#include "model/transformer.h"

#include <algorithm>
#include <cmath>

#include "core/assert.h"
#include "cpu/quants.h"
#include "model/lora_adapter.h"
#include "ops/train_ops.h"

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

// y[n, out] += scale * (x A^T) B^T for projection p of a layer's LoRA (no-op when that
// projection is not adapted). xa [n, rank] receives x A^T (training saves it; null: a row's
// stack buffer), rounded by the tape when there is one. Rank r is small: plain loops (8-way
// dots), rows split across threads; each row's result is independent of the split.
void lora_addend(const LoraLayerView& lv, int p, ThreadPool& pool, const float* x, int32_t n,
                 int64_t in, int64_t out, float* y, float* xa, const Tape* tape) {
  if (!lv.A[p]) return;
  const int32_t r = lv.rank;
  QILIN_ASSERT(r <= 256);
  const float* A = lv.A[p];
  const float* B = lv.B[p];
  for_rows(pool, n, [&](int32_t t) {
    float local[256];
    float* xt = xa ? xa + static_cast<int64_t>(t) * r : local;
    linear_forward(x + t * in, A, 1, in, r, xt);
    if (tape) tape->round(xt, r);
    lora_up_forward(xt, B, 1, r, out, lv.scale, y + t * out);
  });
}

// out[i] = x W_i^T for the weights sharing x (Q/K/V; gate/up): one grouped call when they can.
void matmul_shared_input(ThreadPool& pool, const WeightView* w, int n_w, const float* x,
                         int32_t n, float* const* out, void* act) {
  if (matmul_can_group(w, n_w)) return matmul_group(pool, w, n_w, x, n, out, act);
  for (int i = 0; i < n_w; ++i) matmul(pool, w[i], x, n, out[i], act);
}

// The unmerged inference adapter's view of layer il.
LoraLayerView adapter_view(const LoraAdapter& ad, int32_t il) {
  LoraLayerView v;
  v.rank = ad.rank;
  v.scale = ad.scale;
  for (int p = 0; p < kLoraNumProj; ++p) {
    if (ad.A[il][p].empty()) continue;
    v.A[p] = ad.A[il][p].data();
    v.B[p] = ad.B[il][p].data();
  }
  return v;
}

}  // namespace

Status Decoder::run_layers(const Batch& b, int32_t row0, int32_t n, KvCache& kv, Workspace& ws,
                           ThreadPool& pool, ForwardTap* tap) const {
  QILIN_ASSERT(!adapter || !hooks);
  const int64_t d_q = plan.n_head * hp->head_dim;
  AttentionArgs aa = attention_args(ws, kv, b, plan.n_head, hp->head_dim,
                                    ws.q.data() + row0 * d_q, ws.attn.data() + row0 * d_q);
  for (int32_t il = plan.layer0; il < plan.layer1; ++il) {
    QILIN_TRY(forward_layer(il, b, row0, n, &kv, &aa, ws, pool, tap, nullptr));
  }
  return Status::ok();
}

Status Decoder::forward_layer(int32_t il, const Batch& b, int32_t row0, int32_t n, KvCache* kv,
                              AttentionArgs* aa, Workspace& ws, ThreadPool& pool,
                              ForwardTap* tap, Tape* tape) const {
  QILIN_ASSERT(tape ? !hooks : kv && aa);
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
  const LlamaLayer& L = layers[il - plan.layer0];
  // Training: every activation an operator writes is rounded to the compute precision.
  auto rnd = [&](float* p, int64_t count) {
    if (tape) tape->round(p, count);
  };
  auto save = [&](int slot, const float* p, int64_t count) {
    if (tape) tape->save(il, slot, p, count);
  };
  // LoRA: the training tape's, or the unmerged inference adapter's.
  LoraLayerView lv;
  if (tape) {
    lv = tape->lora(il);
  } else if (adapter) {
    lv = adapter_view(*adapter, il);
  }
  float* lora_mid = nullptr;  // [n, rank]: x A^T, saved for the backward
  if (tape && lv.rank > 0) {
    ws.lora_mid.resize(static_cast<size_t>(n) * lv.rank);
    lora_mid = ws.lora_mid.data();
  }
  // y += the LoRA addend of projection p, then y rounded.
  auto lora = [&](int p, const float* in, int64_t n_in, int64_t n_out, float* y) {
    if (lv.A[p]) {
      lora_addend(lv, p, pool, in, n, n_in, n_out, y, lora_mid, tape);
      save(Tape::kLoraMid + p, lora_mid, static_cast<int64_t>(n) * lv.rank);
    }
    rnd(y, n * n_out);
  };
  // The row-parallel products: whole layers multiply alone, slices meet their group.
  auto row_parallel = [&](LinearInput site, const WeightView& w, const float* in) -> Status {
    if (hooks) return hooks->row_parallel(pool, site, w, in, n, cur, act);
    matmul(pool, w, in, n, cur, act);  // [n, E]
    return Status::ok();
  };

  // attention block
  save(Tape::kXIn, x, n * E);
  for_rows(pool, n, [&](int32_t t) {
    rms_norm(x + t * E, L.attn_norm, cur + t * E, E, h.rms_eps);
    if (tape) tape->round(cur + t * E, E);
  });
  if (tap) tap->linear_input(il, LinearInput::Attn, cur, n, E);
  const WeightView qkv[3] = {L.wq, L.wk, L.wv};  // column-parallel: this plan's heads
  float* const qkv_out[3] = {q, k, v};            // [n, d_q], [n, d_kv], [n, d_kv]
  matmul_shared_input(pool, qkv, 3, cur, n, qkv_out, act);
  lora(kLoraQ, cur, E, d_q, q);  // before RoPE
  lora(kLoraK, cur, E, d_kv, k);
  lora(kLoraV, cur, E, d_kv, v);
  for_rows(pool, n, [&](int32_t t) {
    rope(q + t * d_q, plan.n_head, static_cast<int32_t>(hd), b.pos[t], h.rope);
    rope(k + t * d_kv, plan.n_head_kv, static_cast<int32_t>(hd), b.pos[t], h.rope);
  });
  if (tape) {
    // One training sequence: causal attention over its own rows, the log-sum-exp kept.
    rnd(q, n * d_q);
    rnd(k, n * d_kv);
    save(Tape::kQ, q, n * d_q);
    save(Tape::kK, k, n * d_kv);
    save(Tape::kV, v, n * d_kv);
    ws.lse.resize(static_cast<size_t>(n) * plan.n_head);
    const TrainAttnArgs ta{q, k, v, n, plan.n_head, plan.n_head_kv, static_cast<int32_t>(hd)};
    train_attention_forward(pool, tape->attention_kernels(), ta, attn, ws.lse.data());
    rnd(attn, n * d_q);
    save(Tape::kAtt, attn, n * d_q);
    save(Tape::kLse, ws.lse.data(), static_cast<int64_t>(n) * plan.n_head);
  } else {
    aa->layer = il - plan.layer0;  // the cache holds this plan's layers
    kv_store(*kv, aa->layer, b, k, v);
    attention(pool, *aa);  // [n, d_q]
  }
  if (tap) tap->linear_input(il, LinearInput::Out, attn, n, d_q);
  QILIN_TRY(row_parallel(LinearInput::Out, L.wo, attn));  // [n, E]
  lora(kLoraO, attn, d_q, E, cur);

  // feed-forward block: residual add fused with the norm that reads it
  for_rows(pool, n, [&](int32_t t) {
    float* xt = x + t * E;
    const float* ct = cur + t * E;
    for (int64_t i = 0; i < E; ++i) xt[i] += ct[i];
    if (tape) tape->round(xt, E);
    rms_norm(xt, L.ffn_norm, cur + t * E, E, h.rms_eps);
    if (tape) tape->round(cur + t * E, E);
  });
  save(Tape::kXMid, x, n * E);
  if (tap) tap->linear_input(il, LinearInput::Ffn, cur, n, E);
  const WeightView gu[2] = {L.w_gate, L.w_up};  // column-parallel: this plan's columns
  float* const gu_out[2] = {gate, up};           // [n, n_ff] each
  matmul_shared_input(pool, gu, 2, cur, n, gu_out, act);
  lora(kLoraGate, cur, E, F, gate);
  lora(kLoraUp, cur, E, F, up);
  save(Tape::kGate, gate, n * F);
  save(Tape::kUp, up, n * F);
  for_rows(pool, n, [&](int32_t t) { swiglu(gate + t * F, up + t * F, gate + t * F, F); });
  rnd(gate, n * F);
  if (tap) tap->linear_input(il, LinearInput::Down, gate, n, F);
  QILIN_TRY(row_parallel(LinearInput::Down, L.w_down, gate));  // [n, E]
  lora(kLoraDown, gate, F, E, cur);
  for_rows(pool, n, [&](int32_t t) {
    for (int64_t i = t * E; i < (t + 1) * E; ++i) x[i] += cur[i];
  });
  rnd(x, n * E);
  return Status::ok();
}

// The backward of forward_layer's training pass, its steps in reverse, gradients named d<x>.
// Recomputed rather than saved: the norms' outputs (from the saved inputs) and SwiGLU's.
void Decoder::backward_layer(int32_t il, int32_t n, float* dx, Tape& tape, BackwardWorkspace& bw,
                             ThreadPool& pool) const {
  QILIN_ASSERT(!hooks && plan.n_head == hp->n_head);
  const LlamaHparams& h = *hp;
  const int64_t E = h.n_embd, hd = h.head_dim, F = h.n_ff;
  const int64_t d_q = h.n_head * hd, d_kv = h.n_head_kv * hd;
  const LlamaLayer& L = layers[il - plan.layer0];
  const LoraLayerView lv = tape.lora(il);
  const LoraLayerGrads lg = tape.lora_grads(il);
  auto rnd = [&](std::vector<float>& v) { tape.round(v.data(), static_cast<int64_t>(v.size())); };
  auto load = [&](int slot) { return tape.load(il, slot, bw.loaded[slot]); };
  auto zeros = [&](std::vector<float>& v, int64_t count) { v.assign(static_cast<size_t>(count), 0.0f); };
  const float* x_in = load(Tape::kXIn);    // [n, E]
  const float* q = load(Tape::kQ);         // [n, H, hd] after RoPE
  const float* k = load(Tape::kK);         // [n, Hkv, hd] after RoPE
  const float* v = load(Tape::kV);         // [n, Hkv, hd]
  const float* att = load(Tape::kAtt);     // [n, H, hd]
  const float* lse = load(Tape::kLse);     // [n, H]
  const float* x_mid = load(Tape::kXMid);  // [n, E]
  const float* gate = load(Tape::kGate);   // [n, F] before SwiGLU
  const float* up = load(Tape::kUp);       // [n, F]

  // dx_p += dy W_p (the frozen weight) and, when adapted, the LoRA's three products: dB, dA and
  // its share of dx_p. x: the projection's input [n, in]; dy [n, out].
  auto proj_backward = [&](int p, const float* dy, const float* x, float* dxp) {
    const WeightView& w = L.proj(p);
    matmul_backward_input(pool, w, tape.transposed(il, p), dy, n, dxp, tape.tile_type(), bw.matmul);
    if (!lv.A[p]) return;
    const int64_t in = w.n_in, out = w.n_out, r = lv.rank;
    const float* xa = load(Tape::kLoraMid + p);  // [n, r]
    bw.lora_bt.resize(static_cast<size_t>(r * out));
    bw.lora_dxa.resize(static_cast<size_t>(n * r));
    lora_transpose(lv.B[p], out, r, bw.lora_bt.data());
    pool.run([&](int ith, int nth) {
      int64_t t0, t1;
      split_range(n, ith, nth, &t0, &t1);
      if (t0 < t1) {
        lora_backward_rows(dy, lv.A[p], bw.lora_bt.data(), t0, t1, in, r, out, lv.scale,
                           bw.lora_dxa.data(), dxp);
      }
    });
    pool.run([&](int ith, int nth) {
      int64_t b0, b1;
      split_range(out, ith, nth, &b0, &b1);
      lora_backward_db(dy, xa, int64_t{n}, r, out, lv.scale, b0, b1, lg.B[p]);
      split_range(in, ith, nth, &b0, &b1);
      lora_backward_da(x, bw.lora_dxa.data(), int64_t{n}, in, r, b0, b1, lg.A[p]);
    });
  };
  // xn = rms_norm(x) as the forward computed it, and each row's 1 / rms.
  auto norm = [&](const float* x, const float* w) {
    bw.xn.resize(static_cast<size_t>(n * E));
    bw.rstd.resize(n);
    for_rows(pool, n, [&](int32_t t) {
      bw.rstd[t] = rms_norm_rstd(x + t * E, E, h.rms_eps);
      rms_norm(x + t * E, w, bw.xn.data() + t * E, E, h.rms_eps);
      tape.round(bw.xn.data() + t * E, E);
    });
  };

  // x_out = x_mid + down(swiglu(gate, up)): dx flows to both.
  bw.h.resize(static_cast<size_t>(n * F));
  for_rows(pool, n, [&](int32_t t) { swiglu(gate + t * F, up + t * F, bw.h.data() + t * F, F); });
  rnd(bw.h);
  zeros(bw.dh, n * F);
  proj_backward(kLoraDown, dx, bw.h.data(), bw.dh.data());
  rnd(bw.dh);
  zeros(bw.dgate, n * F);
  zeros(bw.dup, n * F);
  swiglu_backward(bw.dh.data(), gate, up, n * F, bw.dgate.data(), bw.dup.data());
  rnd(bw.dgate);
  rnd(bw.dup);
  norm(x_mid, L.ffn_norm);
  zeros(bw.dxn, n * E);
  proj_backward(kLoraGate, bw.dgate.data(), bw.xn.data(), bw.dxn.data());
  proj_backward(kLoraUp, bw.dup.data(), bw.xn.data(), bw.dxn.data());
  rnd(bw.dxn);
  bw.dmid.assign(dx, dx + n * E);  // the residual
  rmsnorm_backward(bw.dxn.data(), x_mid, L.ffn_norm, bw.rstd.data(), int64_t{n}, E, bw.dmid.data(),
                   static_cast<float*>(nullptr));
  rnd(bw.dmid);

  // x_mid = x_in + o(attention(rope(q), rope(k), v))
  zeros(bw.datt, n * d_q);
  proj_backward(kLoraO, bw.dmid.data(), att, bw.datt.data());
  rnd(bw.datt);
  zeros(bw.dq, n * d_q);
  zeros(bw.dk, n * d_kv);
  zeros(bw.dv, n * d_kv);
  const TrainAttnArgs ta{q, k, v, n, h.n_head, h.n_head_kv, static_cast<int32_t>(hd)};
  train_attention_backward(pool, tape.attention_kernels(), ta, att, lse, bw.datt.data(),
                           bw.dq.data(), bw.dk.data(), bw.dv.data(), bw.dkv_part);
  for_rows(pool, n, [&](int32_t t) {  // the training rows sit at positions 0..n-1
    rope_inverse(bw.dq.data() + t * d_q, h.n_head, static_cast<int32_t>(hd), t, h.rope);
    rope_inverse(bw.dk.data() + t * d_kv, h.n_head_kv, static_cast<int32_t>(hd), t, h.rope);
  });
  rnd(bw.dq);
  rnd(bw.dk);
  rnd(bw.dv);
  norm(x_in, L.attn_norm);
  zeros(bw.dxn, n * E);
  proj_backward(kLoraQ, bw.dq.data(), bw.xn.data(), bw.dxn.data());
  proj_backward(kLoraK, bw.dk.data(), bw.xn.data(), bw.dxn.data());
  proj_backward(kLoraV, bw.dv.data(), bw.xn.data(), bw.dxn.data());
  rnd(bw.dxn);
  std::copy_n(bw.dmid.data(), n * E, dx);
  rmsnorm_backward(bw.dxn.data(), x_in, L.attn_norm, bw.rstd.data(), int64_t{n}, E, dx,
                   static_cast<float*>(nullptr));
  tape.round(dx, n * E);
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
