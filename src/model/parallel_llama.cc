// ParallelLlama: see parallel_llama.h. The graph is LlamaModel::forward's, cut at the seams
// Megatron cuts it: one rank's heads and FFN columns per layer, partial sums all-reduced after
// O and after down. Integers travel as floats (exact below 2^24; asserted).
#include "model/parallel_llama.h"

#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/assert.h"
#include "cpu/gemm.h"
#include "dist/topology.h"

namespace qilin {
namespace {

enum Cmd : int32_t { kStop = 0, kForward = 1, kCopy = 2 };
// [cmd, cache id, n_blocks, block_size, max_tokens, max_logit_rows, max_ctx, flash, n_tokens,
//  n_seqs, table entries, KV cache type]; kCopy: n_tokens holds the number of copies
constexpr int kHeader = 12;
constexpr int kLogitsTag = 1 << 20;  // above every micro-batch tag

float exact(int64_t v) {
  QILIN_ASSERT(v >= 0 && v < (int64_t{1} << 24));
  return static_cast<float>(v);
}

// Rows [r0, r0 + n) of w (column-parallel: a contiguous range of output rows).
size_t rows_bytes(const WeightView& w, int64_t n) { return static_cast<size_t>(n) * w.row_bytes; }

}  // namespace

Result<ShardPlan> plan_shard(const LlamaHparams& hp, const ParallelOptions& o, int64_t ff_block,
                             int32_t stage, int32_t tensor) {
  if (o.tp < 1 || o.pp < 1) return errorf("parallel: --tp %d and --pp %d must be >= 1", o.tp, o.pp);
  if (o.tp > hp.n_head_kv) {
    return errorf(
        "parallel: --tp %d is more than the model's %d KV heads (tensor parallelism "
        "gives each rank whole KV-head groups)",
        o.tp, hp.n_head_kv);
  }
  if (o.pp > hp.n_layer) {
    return errorf("parallel: --pp %d is more than the model's %d layers", o.pp, hp.n_layer);
  }
  if (hp.n_ff % ff_block != 0 || hp.n_ff / ff_block < o.tp) {
    return errorf("parallel: n_ff %d cannot be split into %d parts of whole %lld-element blocks",
                  hp.n_ff, o.tp, static_cast<long long>(ff_block));
  }
  ShardPlan p;
  p.stage = stage;
  p.tensor = tensor;
  if (o.stage_first.empty()) {
    int64_t a, b;
    split_range(hp.n_layer, stage, o.pp, &a, &b);
    p.layer0 = static_cast<int32_t>(a);
    p.layer1 = static_cast<int32_t>(b);
  } else {
    if (static_cast<int32_t>(o.stage_first.size()) != o.pp || o.stage_first[0] != 0) {
      return errorf("parallel: %zu stage boundaries for --pp %d (the first must be layer 0)",
                    o.stage_first.size(), o.pp);
    }
    for (int32_t s = 0; s < o.pp; ++s) {
      const int32_t end = s + 1 < o.pp ? o.stage_first[s + 1] : hp.n_layer;
      if (end <= o.stage_first[s] || end > hp.n_layer) {
        return errorf("parallel: stage %d would hold layers [%d, %d) of %d", s + 1,
                      o.stage_first[s], end, hp.n_layer);
      }
    }
    p.layer0 = o.stage_first[stage];
    p.layer1 = stage + 1 < o.pp ? o.stage_first[stage + 1] : hp.n_layer;
  }
  int64_t a, b;
  split_range(hp.n_head_kv, tensor, o.tp, &a, &b);
  const int32_t group = hp.n_head / hp.n_head_kv;
  p.head_kv0 = static_cast<int32_t>(a);
  p.n_head_kv = static_cast<int32_t>(b - a);
  p.head0 = p.head_kv0 * group;
  p.n_head = p.n_head_kv * group;
  split_range(hp.n_ff / ff_block, tensor, o.tp, &a, &b);
  p.ff0 = static_cast<int32_t>(a * ff_block);
  p.n_ff = static_cast<int32_t>((b - a) * ff_block);
  p.vocab_chunk = (hp.n_vocab + o.tp - 1) / o.tp;
  p.vocab0 = tensor * p.vocab_chunk;
  p.n_vocab = std::min(p.vocab_chunk, hp.n_vocab - p.vocab0);
  if (p.n_vocab <= 0) return errorf("parallel: --tp %d leaves rank %d no vocabulary", o.tp, tensor);
  split_range(hp.n_embd, tensor, o.tp, &a, &b);
  p.embd0 = static_cast<int32_t>(a);
  p.n_embd = static_cast<int32_t>(b - a);
  return p;
}

ParallelLlama::ParallelLlama(const LlamaModel& model, Communicator& world)
    : model_(model), world_(world) {}

ParallelLlama::~ParallelLlama() {
  if (weights_) {
    gemm_unregister_immutable(weights_);
    std::free(weights_);
  }
}

Result<std::shared_ptr<ParallelLlama>> ParallelLlama::create(const LlamaModel& model,
                                                             Communicator& world,
                                                             const ParallelOptions& o) {
  if (world.size() != o.tp * o.pp) {
    return errorf("parallel: --tp %d x --pp %d needs %d ranks (mpirun -np %d), this job has %d",
                  o.tp, o.pp, o.tp * o.pp, o.tp * o.pp, world.size());
  }
  if (model.has_adapter())
    return errorf("parallel: LoRA adapters are not supported with --tp/--pp yet");
  auto topo = Topology::create(world.size(), o.tp, o.pp);
  QILIN_TRY(topo);
  const RankCoord c = topo->coord(world.rank());
  const LlamaHparams& hp = model.hparams();
  auto plan =
      plan_shard(hp, o, dtype_info(model.layers()[0].w_down.type).block_size, c.stage, c.tensor);
  QILIN_TRY(plan);
  std::shared_ptr<ParallelLlama> p(new ParallelLlama(model, world));
  p->opt_ = o;
  p->plan_ = *plan;
  auto tc = world.subgroup(topo->tensor_group(world.rank()));
  QILIN_TRY(tc);
  p->tensor_comm_ = std::move(*tc);
  const int64_t hd = hp.head_dim;
  for (Columns* cols : {&p->heads_, &p->ffn_, &p->embd_}) {
    cols->total = cols == &p->heads_ ? hp.n_head * hd : cols == &p->ffn_ ? hp.n_ff : hp.n_embd;
  }
  for (int32_t t = 0; t < o.tp; ++t) {
    auto q = plan_shard(hp, o, dtype_info(model.layers()[0].w_down.type).block_size, c.stage, t);
    QILIN_TRY(q);
    p->heads_.col0.push_back(q->head0 * hd);
    p->heads_.width.push_back(q->n_head * hd);
    p->ffn_.col0.push_back(q->ff0);
    p->ffn_.width.push_back(q->n_ff);
    p->embd_.col0.push_back(q->embd0);
    p->embd_.width.push_back(q->n_embd);
  }
  for (Columns* cols : {&p->heads_, &p->ffn_, &p->embd_}) {
    cols->chunk = *std::max_element(cols->width.begin(), cols->width.end());
  }
  QILIN_TRY(p->copy_slices());
  return p;
}

// Copies this rank's slices into one buffer: column-parallel weights are a contiguous range of
// rows; row-parallel ones (O, down) a range of whole blocks within every row.
Status ParallelLlama::copy_slices() {
  const LlamaHparams& hp = model_.hparams();
  const ShardPlan& p = plan_;
  const int64_t hd = hp.head_dim;
  struct Copy {
    const WeightView* src;
    WeightView* dst;
    int64_t row0, n_rows;  // output rows
    int64_t col0, n_cols;  // input elements
  };
  std::vector<Copy> plan;
  layers_.resize(p.layer1 - p.layer0);
  for (int32_t il = p.layer0; il < p.layer1; ++il) {
    const LlamaLayer& L = model_.layers()[il];
    LlamaLayer& S = layers_[il - p.layer0];
    S.attn_norm = L.attn_norm;
    S.ffn_norm = L.ffn_norm;
    plan.push_back({&L.wq, &S.wq, p.head0 * hd, p.n_head * hd, 0, hp.n_embd});
    plan.push_back({&L.wk, &S.wk, p.head_kv0 * hd, p.n_head_kv * hd, 0, hp.n_embd});
    plan.push_back({&L.wv, &S.wv, p.head_kv0 * hd, p.n_head_kv * hd, 0, hp.n_embd});
    if (opt_.exact) {
      plan.push_back({&L.wo, &S.wo, p.embd0, p.n_embd, 0, hp.n_head * hd});
    } else {
      plan.push_back({&L.wo, &S.wo, 0, hp.n_embd, p.head0 * hd, p.n_head * hd});
    }
    plan.push_back({&L.w_gate, &S.w_gate, p.ff0, p.n_ff, 0, hp.n_embd});
    plan.push_back({&L.w_up, &S.w_up, p.ff0, p.n_ff, 0, hp.n_embd});
    if (opt_.exact) {
      plan.push_back({&L.w_down, &S.w_down, p.embd0, p.n_embd, 0, hp.n_ff});
    } else {
      plan.push_back({&L.w_down, &S.w_down, 0, hp.n_embd, p.ff0, p.n_ff});
    }
  }
  const WeightView embd = model_.tok_embd();
  const bool first = p.stage == 0, last = p.stage == opt_.pp - 1;
  // A tied head on a one-stage rank reads the same rows as the embedding: one copy.
  const bool shared =
      first && last && model_.output().data == embd.data && model_.output().type == embd.type;
  if (first) plan.push_back({&embd, &tok_embd_, p.vocab0, p.n_vocab, 0, hp.n_embd});
  if (last && !shared)
    plan.push_back({&model_.output(), &output_, p.vocab0, p.n_vocab, 0, hp.n_embd});

  size_t total = 0;
  for (const Copy& c : plan) {
    const DTypeInfo& info = dtype_info(c.src->type);
    if (c.n_cols != c.src->n_in &&
        (c.col0 % info.block_size != 0 || c.n_cols % info.block_size != 0 || info.group_blocks)) {
      return errorf(
          "parallel: a %s weight cannot be split at input column %lld (blocks of "
          "%lld elements)",
          info.name, static_cast<long long>(c.col0), static_cast<long long>(info.block_size));
    }
    total += (static_cast<size_t>(c.n_rows) * row_bytes(c.src->type, c.n_cols) + 63) / 64 * 64;
  }
  // Huge pages where the kernel gives them, as LlamaModel does for its weights in memory:
  // generation streams every weight once per token.
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t alloc = std::max<size_t>((total + kHuge - 1) / kHuge * kHuge, kHuge);
  weights_ = static_cast<uint8_t*>(std::aligned_alloc(kHuge, alloc));
  if (!weights_)
    return errorf("parallel: cannot allocate %zu bytes for this rank's weights", total);
  madvise(weights_, alloc, MADV_HUGEPAGE);  // a hint: without THP support it is plain memory
  uint8_t* at = weights_;
  for (const Copy& c : plan) {
    WeightView& d = *c.dst;
    d.type = c.src->type;
    d.n_in = c.n_cols;
    d.n_out = c.n_rows;
    d.row_bytes = row_bytes(d.type, c.n_cols);
    d.data = at;
    const size_t skip = row_bytes(d.type, c.col0);
    for (int64_t r = 0; r < c.n_rows; ++r) {
      std::memcpy(at + r * d.row_bytes, c.src->data + (c.row0 + r) * c.src->row_bytes + skip,
                  d.row_bytes);
    }
    at += (rows_bytes(d, d.n_out) + 63) / 64 * 64;
  }
  if (shared) output_ = tok_embd_;
  weight_bytes_ = total;
  gemm_register_immutable(weights_, total);
  return Status::ok();
}

CommStats ParallelLlama::comm_stats() const {
  CommStats s = world_.stats();
  const CommStats& t = tensor_comm_->stats();
  s.all_reduce += t.all_reduce;
  s.reduce_scatter += t.reduce_scatter;
  s.all_gather += t.all_gather;
  s.broadcast += t.broadcast;
  s.send += t.send;
  s.recv += t.recv;
  s.calls += t.calls;
  return s;
}

int32_t ParallelLlama::peer(int32_t stage) const {
  return stage * opt_.tp + plan_.tensor;  // Topology's rank order with data degree 1
}

Decoder ParallelLlama::decoder() const {
  Decoder d;
  d.hp = &model_.hparams();
  d.plan = plan_;
  d.layers = layers_.data();
  d.hooks = opt_.tp > 1 ? this : nullptr;
  return d;
}

KvCacheConfig ParallelLlama::kv_config(int32_t n_ctx_tokens, int32_t block_size,
                                       KvType type) const {
  return decoder().kv_config(n_ctx_tokens, block_size, type);
}

Workspace ParallelLlama::make_workspace(int32_t max_tokens, int32_t max_logit_rows, int32_t max_ctx,
                                        int n_threads) const {
  Workspace ws = decoder().make_workspace(max_tokens, max_logit_rows, max_ctx, n_threads, &output_);
  const size_t nt = max_tokens;
  // The call's own scratch, grown here so that forward() allocates nothing.
  const size_t part = static_cast<size_t>(max_logit_rows) * plan_.vocab_chunk;
  if (part_logits_.size() < part) part_logits_.resize(part);
  if (all_logits_.size() < part * opt_.tp) all_logits_.resize(part * opt_.tp);
  if (opt_.exact && opt_.tp > 1) {
    const size_t chunk = std::max({heads_.chunk, ffn_.chunk, embd_.chunk});
    if (gather_part_.size() < nt * chunk) gather_part_.resize(nt * chunk);
    if (gather_all_.size() < nt * chunk * opt_.tp) gather_all_.resize(nt * chunk * opt_.tp);
    const size_t in = std::max(heads_.total, ffn_.total);
    if (full_in_.size() < nt * in) full_in_.resize(nt * in);
    if (part_out_.size() < nt * embd_.chunk) part_out_.resize(nt * embd_.chunk);
  }
  const size_t msg = kHeader + 4 * nt + 4096;
  if (msg_.size() < msg) msg_.resize(msg);
  if (static_cast<int32_t>(micro_.size()) < micro_batches()) micro_.resize(micro_batches());
  for (Batch& b : micro_) {
    b.token.reserve(nt);
    b.pos.reserve(nt);
    b.seq.reserve(nt);
    b.want_logits.reserve(nt);
  }
  return ws;
}

Result<const float*> ParallelLlama::forward(const Batch& batch, KvCache& kv, Workspace& ws,
                                            ThreadPool& pool) const {
  QILIN_ASSERT(driver() && !finished_);
  const KvCacheConfig& c = kv.config();
  QILIN_TRY(decoder().validate(batch, kv, ws));
  if (!deferred_) return deferred_;
  const int32_t id = cache_id(kv);

  const int32_t n = batch.n_tokens(), n_seqs = static_cast<int32_t>(batch.seqs.size());
  int64_t n_table = 0;
  for (const BatchSeq& s : batch.seqs) n_table += s.n_blocks;
  const size_t len = 4 * static_cast<size_t>(n) + n_seqs + n_table;
  if (msg_.size() < len) msg_.resize(len);  // only when the block tables grew past the guess
  float* m = msg_.data();
  const int64_t head[kHeader] = {kForward,
                                 id,
                                 c.n_blocks,
                                 c.block_size,
                                 ws.max_tokens,
                                 ws.max_logit_rows,
                                 ws.max_ctx,
                                 ws.flash_attn ? 1 : 0,
                                 n,
                                 n_seqs,
                                 n_table,
                                 static_cast<int64_t>(c.type)};
  float* at = m;
  for (int32_t t = 0; t < n; ++t) {
    at[t] = exact(batch.token[t]);
    at[n + t] = exact(batch.pos[t]);
    at[2 * n + t] = exact(batch.seq[t]);
    at[3 * n + t] = batch.want_logits[t] ? 1.0f : 0.0f;
  }
  at += 4 * n;
  for (const BatchSeq& s : batch.seqs) *at++ = exact(s.n_blocks);
  for (const BatchSeq& s : batch.seqs) {
    for (int32_t i = 0; i < s.n_blocks; ++i) *at++ = exact(s.block_table[i]);
  }
  broken_ = true;  // until the call completes: the others may be waiting inside it
  if (world_.size() > 1) {
    QILIN_TRY(send_header(head));
    QILIN_TRY(world_.broadcast(m, static_cast<int64_t>(len), 0));
  }
  QILIN_TRY(run(batch, kv, ws, pool));
  broken_ = false;
  return static_cast<const float*>(ws.logits.data());
}

int32_t ParallelLlama::cache_id(const KvCache& kv) const {
  int32_t id = 0;
  while (id < static_cast<int32_t>(caches_.size()) && caches_[id] != &kv) ++id;
  if (id == static_cast<int32_t>(caches_.size())) caches_.push_back(&kv);
  return id;
}

Status ParallelLlama::send_header(const int64_t* head) const {
  float h[kHeader];
  for (int i = 0; i < kHeader; ++i) h[i] = exact(head[i]);
  return world_.broadcast(h, kHeader, 0);
}

void ParallelLlama::copy_blocks(KvCache& kv, const std::vector<BlockCopy>& copies) const {
  QILIN_ASSERT(driver() && !finished_);
  for (const BlockCopy& c : copies) kv.copy_block(c.src, c.dst, c.n_slots);
  if (copies.empty() || world_.size() == 1 || !deferred_) return;
  const KvCacheConfig& c = kv.config();
  const int64_t n = static_cast<int64_t>(copies.size());
  const int64_t head[kHeader] = {kCopy,      cache_id(kv),
                                 c.n_blocks, c.block_size,
                                 0,          0,
                                 0,          0,
                                 n,          0,
                                 0,          static_cast<int64_t>(c.type)};
  if (msg_.size() < static_cast<size_t>(3 * n)) msg_.resize(3 * n);
  for (int64_t i = 0; i < n; ++i) {
    msg_[3 * i] = exact(copies[i].src);
    msg_[3 * i + 1] = exact(copies[i].dst);
    msg_[3 * i + 2] = exact(copies[i].n_slots);
  }
  Status s = send_header(head);
  if (s) s = world_.broadcast(msg_.data(), 3 * n, 0);
  if (!s) {
    deferred_ = s;
    broken_ = true;
  }
}

Status ParallelLlama::finish() {
  if (!driver() || finished_) return Status::ok();
  finished_ = true;
  if (broken_) return errorf("parallel: a forward call failed on rank 0 while the others ran it");
  float head[kHeader] = {};
  head[0] = kStop;
  return world_.size() > 1 ? world_.broadcast(head, kHeader, 0) : Status::ok();
}

Status ParallelLlama::follow(ThreadPool& pool) {
  QILIN_ASSERT(!driver());
  for (;;) {
    float head[kHeader];
    // Waiting for the driver's next call has no deadline: its user may take their time.
    const double timeout = world_.timeout_s();
    world_.set_timeout_s(0);
    Status s = world_.broadcast(head, kHeader, 0);
    world_.set_timeout_s(timeout);
    QILIN_TRY(s);
    int32_t h[kHeader];
    for (int i = 0; i < kHeader; ++i) h[i] = static_cast<int32_t>(head[i]);
    if (h[0] == kStop) return Status::ok();
    if (h[0] != kForward && h[0] != kCopy) {
      return errorf("parallel: unknown command %d from the driver", h[0]);
    }
    auto kv = follower_cache(h);
    QILIN_TRY(kv);
    const int32_t n = h[8], n_seqs = h[9], n_table = h[10];
    if (h[0] == kCopy) {
      if (msg_.size() < static_cast<size_t>(3 * n)) msg_.resize(3 * n);
      QILIN_TRY(world_.broadcast(msg_.data(), 3 * n, 0));
      for (int32_t i = 0; i < n; ++i) {
        (*kv)->copy_block(static_cast<int32_t>(msg_[3 * i]), static_cast<int32_t>(msg_[3 * i + 1]),
                          static_cast<int32_t>(msg_[3 * i + 2]));
      }
      continue;
    }
    Workspace& ws = follower_ws_;
    if (ws.max_tokens != h[4] || ws.max_logit_rows != h[5] || ws.max_ctx != h[6]) {
      ws = make_workspace(h[4], h[5], h[6], pool.size());
    }
    ws.flash_attn = h[7] != 0;
    const size_t len = 4 * static_cast<size_t>(n) + n_seqs + n_table;
    if (msg_.size() < len) msg_.resize(len);
    QILIN_TRY(world_.broadcast(msg_.data(), static_cast<int64_t>(len), 0));
    const float* at = msg_.data();
    Batch& b = follower_batch_;
    b.clear();
    for (int32_t t = 0; t < n; ++t) {
      b.add(static_cast<int32_t>(at[t]), static_cast<int32_t>(at[n + t]),
            static_cast<int32_t>(at[2 * n + t]), at[3 * n + t] != 0.0f);
    }
    at += 4 * n;
    follower_tables_.resize(n_table);
    for (int32_t i = 0; i < n_table; ++i)
      follower_tables_[i] = static_cast<int32_t>(at[n_seqs + i]);
    int32_t off = 0;
    for (int32_t s = 0; s < n_seqs; ++s) {
      const int32_t nb = static_cast<int32_t>(at[s]);
      b.seqs.push_back({follower_tables_.data() + off, nb});
      off += nb;
    }
    QILIN_TRY(run(b, **kv, ws, pool));
  }
}

Result<KvCache*> ParallelLlama::follower_cache(const int32_t* h) {
  const int32_t id = h[1];
  if (static_cast<int32_t>(follower_caches_.size()) <= id) follower_caches_.resize(id + 1);
  std::unique_ptr<KvCache>& kv = follower_caches_[id];
  const KvType type = static_cast<KvType>(h[11]);
  if (!kv || kv->config().n_blocks != h[2] || kv->config().block_size != h[3] ||
      kv->config().type != type) {
    auto made = KvCache::create(kv_config(h[2] * h[3], h[3], type));
    QILIN_TRY(made);
    kv = std::move(*made);
  }
  return kv.get();
}

// One batch through this rank's stage: micro-batch m of the rows is received from the previous
// stage (or embedded), run through this stage's layers and sent on (or turned into logits).
Status ParallelLlama::run(const Batch& b, KvCache& kv, Workspace& ws, ThreadPool& pool) const {
  const LlamaHparams& hp = model_.hparams();
  const int64_t E = hp.n_embd, V = hp.n_vocab;
  const int32_t n = b.n_tokens();
  const bool first = plan_.stage == 0, last = plan_.stage == opt_.pp - 1;
  const Decoder d = decoder();
  const int32_t n_micro = opt_.pp == 1 ? 1 : std::min(n, micro_batches());
  int32_t n_out = 0;
  for (int32_t m = 0; m < n_micro; ++m) {
    int64_t r0, r1;
    split_range(n, m, n_micro, &r0, &r1);
    const int32_t nm = static_cast<int32_t>(r1 - r0);
    const Batch* mb = &b;
    if (n_micro > 1) {
      Batch& sub = micro_[m];
      sub.clear();
      for (int64_t t = r0; t < r1; ++t) sub.add(b.token[t], b.pos[t], b.seq[t], b.want_logits[t]);
      sub.seqs = b.seqs;  // NOTE: copies n_seqs pointers; capacity is kept between calls
      mb = &sub;
    }
    float* x = ws.x.data() + r0 * E;  // [nm, E]
    if (first) {
      QILIN_TRY(d.embed(tok_embd_, *mb, static_cast<int32_t>(r0), nm, ws, pool));
    } else {
      QILIN_TRY(world_.recv(x, nm * E, peer(plan_.stage - 1), m));
    }
    QILIN_TRY(d.run_layers(*mb, static_cast<int32_t>(r0), nm, kv, ws, pool));
    if (!last) {
      QILIN_TRY(world_.send(x, nm * E, peer(plan_.stage + 1), m));
    } else {
      QILIN_TRY(run_head(*mb, static_cast<int32_t>(r0), nm, &n_out, ws, pool));
    }
  }
  if (opt_.pp > 1) {
    const int32_t holder = (opt_.pp - 1) * opt_.tp;  // (last stage, tensor 0)
    if (last && plan_.tensor == 0 && n_out > 0) {
      QILIN_TRY(world_.send(ws.logits.data(), n_out * V, 0, kLogitsTag));
    }
    if (driver()) {
      n_out = 0;
      for (int32_t t = 0; t < n; ++t) {
        if (b.want_logits[t]) ws.out_rows[n_out++] = t;
      }
      if (n_out > 0) QILIN_TRY(world_.recv(ws.logits.data(), n_out * V, holder, kLogitsTag));
    }
  }
  return Status::ok();
}

// The row-parallel product after attention (Out) or the FFN (Down): partial sums of this
// rank's heads or columns all-reduced; exact mode multiplies whole rows of the gathered input
// instead (column-parallel: this rank's rows of E) and gathers them.
Status ParallelLlama::row_parallel(ThreadPool& pool, LinearInput site, const WeightView& w,
                                   const float* x, int32_t n, float* y, void* act) const {
  const int64_t E = model_.hparams().n_embd;
  if (opt_.exact) {
    const Columns& in = site == LinearInput::Out ? heads_ : ffn_;
    QILIN_TRY(gather_columns(x, n, in, full_in_.data()));       // [n, n_head * hd or n_ff]
    matmul(pool, w, full_in_.data(), n, part_out_.data(), act);  // [n, local rows of E]
    return gather_columns(part_out_.data(), n, embd_, y);        // [n, E]
  }
  matmul(pool, w, x, n, y, act);  // partial [n, E]
  return tensor_comm_->all_reduce(y, n * E);
}

Status ParallelLlama::sum(float* x, int64_t n) const { return tensor_comm_->all_reduce(x, n); }

Status ParallelLlama::gather_columns(const float* local, int32_t n, const Columns& c,
                                     float* full) const {
  const int32_t me = plan_.tensor;
  const int64_t w = c.width[me], chunk = c.chunk;
  float* part = gather_part_.data();  // [n, chunk]
  for (int32_t t = 0; t < n; ++t) {
    std::memcpy(part + t * chunk, local + t * w, w * sizeof(float));
    std::fill(part + t * chunk + w, part + (t + 1) * chunk, 0.0f);
  }
  float* all = gather_all_.data();  // [tp, n, chunk]
  QILIN_TRY(tensor_comm_->all_gather(part, all, n * chunk));
  for (int32_t r = 0; r < opt_.tp; ++r) {
    for (int32_t t = 0; t < n; ++t) {
      std::memcpy(full + t * c.total + c.col0[r], all + (static_cast<int64_t>(r) * n + t) * chunk,
                  c.width[r] * sizeof(float));
    }
  }
  return Status::ok();
}

// The output head on this micro-batch's rows that want logits: each rank multiplies by its
// vocabulary rows, the tensor group all-gathers them into ws.logits rows [*n_out, ...).
Status ParallelLlama::run_head(const Batch& b, int32_t row0, int32_t n, int32_t* n_out,
                               Workspace& ws, ThreadPool& pool) const {
  const LlamaHparams& hp = model_.hparams();
  const int64_t E = hp.n_embd, V = hp.n_vocab, chunk = plan_.vocab_chunk;
  float* cur = ws.cur.data() + row0 * E;
  const int32_t k = decoder().head_rows(model_.output_norm(), b, row0, n, *n_out, ws);
  if (k == 0) return Status::ok();
  float* logits = ws.logits.data() + static_cast<int64_t>(*n_out) * V;  // [k, V]
  if (opt_.tp == 1) {
    matmul(pool, output_, cur, k, logits, ws.act.data());
  } else {
    float* part = part_logits_.data();  // [k, chunk], the last rank's rows padded
    matmul(pool, output_, cur, k, part, ws.act.data());
    const int64_t local = plan_.n_vocab;
    if (local < chunk) {
      for (int32_t j = k - 1; j >= 0; --j) {
        std::memmove(part + j * chunk, part + j * local, local * sizeof(float));
        std::fill(part + j * chunk + local, part + (j + 1) * chunk, 0.0f);
      }
    }
    float* all = all_logits_.data();  // [tp, k, chunk]
    QILIN_TRY(tensor_comm_->all_gather(part, all, k * chunk));
    for (int32_t r = 0; r < opt_.tp; ++r) {
      const int64_t v0 = r * chunk, nv = std::min(chunk, V - v0);
      for (int32_t j = 0; j < k; ++j) {
        std::memcpy(logits + j * V + v0, all + (r * k + j) * chunk, nv * sizeof(float));
      }
    }
  }
  *n_out += k;
  return Status::ok();
}

}  // namespace qilin
