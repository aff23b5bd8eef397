// The decoder, defined once: the hyperparameters, a layer's weights, the shard plan that says
// which part of the model this process holds, and the forward pass of the block stack, the
// embedding and the output head's norm. A single process (LlamaModel) runs it with the whole
// plan; each tensor/pipeline-parallel rank (model/parallel_llama.h) runs the same code with its
// plan, its weight slices and communication hooks at the two points Megatron puts them (the
// row-parallel products after attention and after the FFN; the embedding's rows).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "model/lora_adapter.h"
#include "ops/backward.h"
#include "ops/batch.h"
#include "ops/kv_cache.h"
#include "ops/ops.h"
#include "qilin/status.h"

namespace qilin {

struct LoraAdapter;

struct LlamaHparams {
  std::string arch;        // general.architecture
  int32_t n_vocab = 0;
  int32_t n_ctx_train = 0;
  int32_t n_embd = 0;
  int32_t n_layer = 0;
  int32_t n_head = 0;
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;
  int32_t n_ff = 0;
  float rms_eps = 1e-5f;
  RopeParams rope;         // freq_factors filled from rope_freqs.weight when present
};

// One layer's weights; in a shard, this rank's slices (the widths are the plan's).
struct LlamaLayer {
  const float* attn_norm = nullptr;  // [n_embd]
  WeightView wq;                     // [n_embd] -> [n_head * head_dim]
  WeightView wk;                     // [n_embd] -> [n_head_kv * head_dim]
  WeightView wv;                     // [n_embd] -> [n_head_kv * head_dim]
  WeightView wo;                     // [n_head * head_dim] -> [n_embd]
  const float* ffn_norm = nullptr;   // [n_embd]
  WeightView w_gate;                 // [n_embd] -> [n_ff]
  WeightView w_up;                   // [n_embd] -> [n_ff]
  WeightView w_down;                 // [n_ff] -> [n_embd]
  // Projection p in LoraProj order (q, k, v, o, gate, up, down).
  const WeightView& proj(int p) const {
    const WeightView* w[kLoraNumProj] = {&wq, &wk, &wv, &wo, &w_gate, &w_up, &w_down};
    return *w[p];
  }
};

// What one process holds of the model: a range of layers (its pipeline stage) and, within each,
// a range of KV-head groups, FFN columns and vocabulary rows (its tensor slice). The whole
// model is the plan of one process alone (whole_plan).
struct ShardPlan {
  int32_t stage = 0, tensor = 0;
  int32_t layer0 = 0, layer1 = 0;       // layers [layer0, layer1)
  int32_t head_kv0 = 0, n_head_kv = 0;  // KV heads [head_kv0, head_kv0 + n_head_kv)
  int32_t head0 = 0, n_head = 0;        // query heads
  int32_t ff0 = 0, n_ff = 0;            // FFN columns
  int32_t vocab0 = 0, n_vocab = 0;      // vocabulary rows
  int32_t vocab_chunk = 0;              // ceil(n_vocab_total / tp): the all-gather unit
  int32_t embd0 = 0, n_embd = 0;        // exact mode: the output rows of O and down it computes
};
ShardPlan whole_plan(const LlamaHparams& hp);

// Scratch for one forward call, sized once; forward() allocates nothing.
struct Workspace {
  int32_t max_tokens = 0;      // rows per forward call
  int32_t max_logit_rows = 0;  // rows that may ask for logits
  int32_t max_ctx = 0;         // longest sequence attended over
  bool flash_attn = true;      // attention kernel: FlashAttention, else naive two-pass
  std::vector<float> x;        // [max_tokens, n_embd] residual stream
  std::vector<float> cur;      // [max_tokens, n_embd]
  std::vector<float> q;        // [max_tokens, n_head * head_dim]
  std::vector<float> k;        // [max_tokens, n_head_kv * head_dim]
  std::vector<float> v;        // [max_tokens, n_head_kv * head_dim]
  std::vector<float> attn;     // [max_tokens, n_head * head_dim]
  std::vector<float> gate;     // [max_tokens, n_ff]
  std::vector<float> up;       // [max_tokens, n_ff]
  std::vector<float> scores;   // [n_threads, n_head / n_head_kv, max_ctx], two-pass only
  int n_threads = 1;           // threads the attention scratch is sized for
  std::vector<int32_t> attn_row_blocks;  // [max_tokens + 1] flash attention row blocks
  std::vector<float> attn_partial;       // flash-decoding partials, independent of max_ctx
  std::vector<float> logits;   // [max_logit_rows, n_vocab]
  std::vector<int32_t> out_rows;  // [max_logit_rows] batch rows that want logits
  std::vector<uint8_t> act;    // converted activations for the matmul kernels
  // Training only (sized on first use): attention's log-sum-exp, LoRA mid activations.
  std::vector<float> lse;      // [max_tokens, n_head]
  std::vector<float> lora_mid; // [max_tokens, rank]
};

// The inputs of a layer's linear weights, as forward() computes them (calibration: AWQ).
enum class LinearInput {
  Attn,  // [n_tokens, n_embd] attn_norm output: input of q, k, v
  Out,   // [n_tokens, n_head * head_dim] attention output: input of attn_output
  Ffn,   // [n_tokens, n_embd] ffn_norm output: input of ffn_gate, ffn_up
  Down,  // [n_tokens, n_ff] SwiGLU output: input of ffn_down
};
// Sees every linear input during forward(), on the calling thread between operators (so it may
// use the same ThreadPool). Not for the serving path: it only observes.
struct ForwardTap {
  virtual ~ForwardTap() = default;
  virtual void linear_input(int32_t il, LinearInput site, const float* x, int32_t n_tokens,
                            int64_t n) = 0;
};

// Where a tensor-parallel rank meets its group. Without hooks the plan is the whole layer.
class TensorHooks {
 public:
  virtual ~TensorHooks() = default;
  // y[n, n_embd] = the group's sum of x[n, w.n_in] W^T over its slices: the row-parallel
  // product of the attention output (site Out, w = wo) and of the FFN (site Down, w = w_down).
  virtual Status row_parallel(ThreadPool& pool, LinearInput site, const WeightView& w,
                              const float* x, int32_t n, float* y, void* act) const = 0;
  // x[n] summed over the group (each embedding row is held by one rank, the others add zeros).
  virtual Status sum(float* x, int64_t n) const = 0;
};

// ---- training: the same layers, their activations saved, and their backward ------------------

// One layer's LoRA: for each projection (LoraProj order) A [rank, in] and B [out, rank], or
// nulls where that projection is not adapted: y += scale * (x A^T) B^T.
struct LoraLayerView {
  int32_t rank = 0;
  float scale = 0;
  std::array<const float*, kLoraNumProj> A{}, B{};
};
// Where the backward adds the LoRA gradients of one layer (same shapes; null: not adapted).
struct LoraLayerGrads {
  std::array<float*, kLoraNumProj> A{}, B{};
};

// What training adds to a layer's forward and reads in its backward (train/ implements it;
// inference passes none): the compute precision's rounding of every activation an operator
// writes, the activations saved for the backward, the layer's LoRA and its gradients, and how
// the input gradients of the frozen linear layers are computed.
class Tape {
 public:
  // The activations a layer's backward reads; kLoraMid + p: x A^T of projection p.
  enum Slot { kXIn, kQ, kK, kV, kAtt, kLse, kXMid, kGate, kUp, kLoraMid, kNumSlots = kLoraMid + kLoraNumProj };
  virtual ~Tape() = default;
  // x[0, n) to the compute precision's nearest values (FP32: unchanged). Any thread.
  virtual void round(float* x, int64_t n) const = 0;
  // Keeps x[0, n) as slot s of layer il (or drops it when the backward will recompute it).
  virtual void save(int32_t il, int slot, const float* x, int64_t n) = 0;
  // Slot s of layer il as saved: a pointer into the tape, or into buf when it must be unpacked.
  virtual const float* load(int32_t il, int slot, std::vector<float>& buf) = 0;
  virtual LoraLayerView lora(int32_t il) const = 0;
  virtual LoraLayerGrads lora_grads(int32_t il) = 0;
  // The training attention kernels (cpu/train_attention.h); null: the reference loops.
  virtual const TrainAttnKernels* attention_kernels() const = 0;
  // W^T in F32 for the input gradient of projection p of layer il, or null (tiles of W in
  // tile_type(): F32, BF16 or F16). See ops/backward.h.
  virtual const WeightView* transposed(int32_t il, int p) const = 0;
  virtual DType tile_type() const = 0;
};

// Scratch of backward_layer, grown on first use.
struct BackwardWorkspace {
  std::array<std::vector<float>, Tape::kNumSlots> loaded;  // unpacked saved slots
  std::vector<float> xn, h, rstd, dxn, dmid, datt, dq, dk, dv, dh, dgate, dup, dkv_part;
  std::vector<float> lora_bt, lora_dxa;  // B transposed [rank, out]; dy B [n, rank]
  MatmulBackwardScratch matmul;
};

// The decoder stack as one process runs it: hyperparameters, plan, the plan's layers.
struct Decoder {
  const LlamaHparams* hp = nullptr;
  ShardPlan plan;
  const LlamaLayer* layers = nullptr;    // [plan.layer1 - plan.layer0]
  const LoraAdapter* adapter = nullptr;  // unmerged LoRA (whole plan only), or null
  const TensorHooks* hooks = nullptr;    // null: the plan holds whole layers

  KvCacheConfig kv_config(int32_t n_ctx_tokens, int32_t block_size, KvType type) const;
  // `output`, when given, is the head this process multiplies (logit rows' scratch).
  Workspace make_workspace(int32_t max_tokens, int32_t max_logit_rows, int32_t max_ctx,
                           int n_threads, const WeightView* output) const;
  // The kv cache's shape against the plan, then validate_batch.
  Status validate(const Batch& b, const KvCache& kv, const Workspace& ws) const;

  // Rows [row0, row0 + n) of ws.x: the embedding of b's n tokens (b holds just those rows, as
  // in run_layers and head_rows). `table` holds
  // vocabulary rows [plan.vocab0, plan.vocab0 + table.n_out); other tokens' rows are zeros,
  // then summed over the tensor group.
  Status embed(const WeightView& table, const Batch& b, int32_t row0, int32_t n, Workspace& ws,
               ThreadPool& pool) const;
  // The plan's layers on rows [row0, row0 + n) of ws.x (b: those rows' batch; its sequences'
  // block tables address kv, whose layer l is the plan's layer layer0 + l).
  Status run_layers(const Batch& b, int32_t row0, int32_t n, KvCache& kv, Workspace& ws,
                    ThreadPool& pool, ForwardTap* tap = nullptr) const;
  // Layer il (of the plan) on rows [row0, row0 + n) of ws.x: what run_layers runs per layer.
  // Inference: kv and aa (attention_args) given, tape null. Training: tape given, kv and aa
  // null; the rows are one sequence at positions 0..n-1, attended over by the training kernels,
  // every activation rounded and saved through the tape.
  Status forward_layer(int32_t il, const Batch& b, int32_t row0, int32_t n, KvCache* kv,
                       AttentionArgs* aa, Workspace& ws, ThreadPool& pool, ForwardTap* tap,
                       Tape* tape) const;
  // The backward of layer il's training forward over n rows: dx [n, n_embd] holds the gradient
  // of the layer's output and receives that of its input; the LoRA gradients are ADDED to
  // tape.lora_grads(il). Reads only what the tape saved (whole plan only).
  void backward_layer(int32_t il, int32_t n, float* dx, Tape& tape, BackwardWorkspace& bw,
                      ThreadPool& pool) const;
  // The final norm of the rows of [row0, row0 + n) that want logits, packed into ws.cur from
  // row row0, their batch rows into ws.out_rows[out0...]. Returns how many.
  int32_t head_rows(const float* output_norm, const Batch& b, int32_t row0, int32_t n,
                    int32_t out0, Workspace& ws) const;
};

// The checks every forward() makes before touching the cache: token ids below n_vocab, rows
// naming their sequences, positions inside the workspace's context and their block tables,
// block ids inside the cache. Errors name the row and value.
Status validate_batch(const Batch& b, int32_t n_vocab, const KvCacheConfig& c, const Workspace& ws);

// Attention arguments over ws's scratch for q/out [n_tokens, n_head, head_dim] (layer unset).
AttentionArgs attention_args(Workspace& ws, const KvCache& kv, const Batch& b, int32_t n_head,
                             int32_t head_dim, const float* q, float* out);

}  // namespace qilin
