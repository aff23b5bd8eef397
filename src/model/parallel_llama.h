// Tensor- and pipeline-parallel Llama inference over a Communicator. Tensor parallelism is
// Megatron 1D: Q/K/V and gate/up column-parallel (whole KV-head groups per rank, so the split
// may be uneven: 3 KV heads on 2 ranks are 2 + 1), O and down row-parallel with one all-reduce
// each, embedding and output head split over the vocabulary. Pipeline parallelism splits the
// layers into stages; a batch's rows go through them as micro-batches, so stage s works on
// micro-batch m while stage s+1 works on m-1.
// World rank 0 drives: it is the model's DistributedForward, so Generator, Engine and the rest
// run unchanged there, and each forward() first broadcasts the batch to the other ranks, which
// wait in follow(). Each rank copies only its own slices of the weights.
// NOTE: the followers' KV caches mirror the driver's (one per driver cache, same block ids),
// and copy_blocks() repeats the driver's copy-on-write copies on them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "dist/comm.h"
#include "model/llama.h"

namespace qilin {

struct ParallelOptions {
  int32_t tp = 1;
  int32_t pp = 1;
  std::vector<int32_t> stage_first;  // [pp] first layer of each stage; empty: an even split
  int32_t micro_batches = 0;         // pieces a batch's rows are cut into (0: pp)
  // O and down column-parallel too, on all-gathered inputs, with their outputs all-gathered:
  // each rank computes whole dot products, so the logits are those of one process bit for bit
  // (quantized weights round partial sums otherwise). 4 all-gathers a layer, not 2 all-reduces.
  bool exact = false;
};

// What one rank (stage, tensor) holds (ShardPlan, model/transformer.h). Heads are handed out
// in whole KV groups, the first n_head_kv % tp ranks taking one more; FFN columns and
// vocabulary rows in near-equal parts (FFN parts on multiples of the down projection's block
// size). Errors name the degree that the model cannot be split into.
Result<ShardPlan> plan_shard(const LlamaHparams& hp, const ParallelOptions& o, int64_t ff_block,
                             int32_t stage, int32_t tensor);

class ParallelLlama : public DistributedForward, private TensorHooks {
 public:
  // Collective: every rank of `world` calls it with the same options. world.size() must be
  // tp * pp. Fails (the same way on every rank) for splits the model cannot take, a LoRA
  // adapter, or weight types whose blocks do not divide the slices.
  static Result<std::shared_ptr<ParallelLlama>> create(const LlamaModel& model, Communicator& world,
                                                       const ParallelOptions& o);
  ~ParallelLlama() override;

  bool driver() const { return world_.rank() == 0; }
  const ShardPlan& plan() const { return plan_; }
  // Bytes of weights this rank copied (its slices) and that the whole model stores.
  size_t weight_bytes() const { return weight_bytes_; }
  // Payload bytes this rank moved, world and tensor group together.
  CommStats comm_stats() const;

  // DistributedForward, on the driver. forward() validates the batch, sends it to the others
  // and returns the logits [n_logit_rows, n_vocab] gathered on the driver.
  KvCacheConfig kv_config(int32_t n_ctx_tokens, int32_t block_size, KvType type) const override;
  Workspace make_workspace(int32_t max_tokens, int32_t max_logit_rows, int32_t max_ctx,
                           int n_threads) const override;
  Result<const float*> forward(const Batch& batch, KvCache& kv, Workspace& ws,
                               ThreadPool& pool) const override;
  void copy_blocks(KvCache& kv, const std::vector<BlockCopy>& copies) const override;

  // Every other rank: runs the driver's forward calls until it calls finish().
  Status follow(ThreadPool& pool);
  // Driver: releases the followers (once; later calls do nothing). An error when a forward
  // call failed half-way: then only aborting the job ends the others.
  Status finish();

 private:
  ParallelLlama(const LlamaModel& model, Communicator& world);
  Status copy_slices();
  Status run(const Batch& batch, KvCache& kv, Workspace& ws, ThreadPool& pool) const;
  // The decoder this rank runs: its plan, its slices, this object as the tensor hooks.
  Decoder decoder() const;
  // TensorHooks: the group's all-reduce (or, exact, all-gathers around whole products).
  Status row_parallel(ThreadPool& pool, LinearInput site, const WeightView& w, const float* x,
                      int32_t n, float* y, void* act) const override;
  Status sum(float* x, int64_t n) const override;
  Status run_head(const Batch& b, int32_t row0, int32_t n, int32_t* n_out, Workspace& ws,
                  ThreadPool& pool) const;
  int32_t peer(int32_t stage) const;                     // world rank of (stage, this tensor index)
  int32_t cache_id(const KvCache& kv) const;             // driver: the id its followers know kv by
  Status send_header(const int64_t* head) const;         // driver: kHeader values to every rank
  Result<KvCache*> follower_cache(const int32_t* head);  // the cache a command names
  // Exact mode: every tensor rank's [n, width(r)] block of columns (starting at col0(r) of
  // total) gathered into full [n, total], on every rank of the group.
  struct Columns {
    std::vector<int64_t> col0, width;  // [tp]
    int64_t total = 0, chunk = 0;      // chunk: the widest block, the all-gather unit
  };
  Status gather_columns(const float* local, int32_t n, const Columns& c, float* full) const;
  int32_t micro_batches() const {
    return std::max(1, opt_.micro_batches > 0 ? opt_.micro_batches : opt_.pp);
  }

  const LlamaModel& model_;
  Communicator& world_;
  std::unique_ptr<Communicator> tensor_comm_;  // this stage's tensor group
  ParallelOptions opt_;
  ShardPlan plan_;
  std::vector<LlamaLayer> layers_;  // [layer1 - layer0] this rank's slices
  Columns heads_, ffn_, embd_;      // exact mode: the group's attention, FFN and output columns
  WeightView tok_embd_;             // [n_embd] -> [local n_vocab] rows of the table (stage 0)
  WeightView output_;               // [n_embd] -> [local n_vocab] (last stage)
  uint8_t* weights_ = nullptr;      // the copied slices, 64-byte aligned, registered with gemm
  size_t weight_bytes_ = 0;
  bool finished_ = false;
  mutable bool broken_ = false;  // a forward call failed after the followers joined it
  mutable Status deferred_;      // a copy_blocks() transport error, for the next forward()

  // Scratch of the running call (forward calls never overlap: every rank is in the same one).
  mutable std::vector<const KvCache*> caches_;  // driver: cache ids sent to the followers
  mutable std::vector<float> msg_;              // encoded batch
  mutable std::vector<Batch> micro_;            // [micro_batches] row ranges of the batch
  mutable std::vector<float> part_logits_;      // [rows, vocab_chunk] this rank's vocabulary
  mutable std::vector<float> all_logits_;       // [tp, rows, vocab_chunk]
  mutable std::vector<float> gather_part_;      // exact: [rows, chunk] this rank's block
  mutable std::vector<float> gather_all_;       // exact: [tp, rows, chunk]
  mutable std::vector<float> full_in_;          // exact: [rows, n_head * head_dim or n_ff]
  mutable std::vector<float> part_out_;         // exact: [rows, embd_.chunk]
  // Followers: their own caches (by the driver's cache id), workspace and batch.
  std::vector<std::unique_ptr<KvCache>> follower_caches_;
  Workspace follower_ws_;
  Batch follower_batch_;
  std::vector<int32_t> follower_tables_;
};

}  // namespace qilin
