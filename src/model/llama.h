// The Llama-family model: hyperparameters and weights read from a GGUF file (weights stay
// quantized in the file's mapping), and forward(): one flat Batch of rows from any number of
// sequences in, logits rows out, with K/V written to the block-addressed cache. The graph itself
// is model/transformer.h's Decoder, which tensor/pipeline ranks run too.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "formats/gguf.h"
#include "model/lora_adapter.h"
#include "model/transformer.h"
#include "ops/batch.h"
#include "ops/kv_cache.h"
#include "ops/ops.h"
#include "qilin/status.h"

namespace qilin {

// A forward pass spread over several processes (model/parallel_llama.h). While one is set,
// the model's kv_config(), make_workspace() and forward() are its, so the callers (Generator,
// Engine, perplexity, bench) run unchanged on the rank that drives the others.
class DistributedForward {
 public:
  virtual ~DistributedForward() = default;
  virtual KvCacheConfig kv_config(int32_t n_ctx_tokens, int32_t block_size,
                                  KvType type) const = 0;
  virtual Workspace make_workspace(int32_t max_tokens, int32_t max_logit_rows, int32_t max_ctx,
                                   int n_threads) const = 0;
  virtual Result<const float*> forward(const Batch& batch, KvCache& kv, Workspace& ws,
                                       ThreadPool& pool) const = 0;
  // The BlockManager's copy-on-write copies, on every rank's cache. A transport error is
  // returned by the next forward().
  virtual void copy_blocks(KvCache& kv, const std::vector<BlockCopy>& copies) const = 0;
};

// Where the weights live while the model runs.
// - Mapped: read through the file mapping (4 KiB page-cache pages; starts instantly, shared
//   between processes, fine for models larger than RAM).
// - Memory: copied into anonymous memory with transparent huge pages requested. Generation
//   streams every weight once per token, and on the machines measured (docs/benchmarks.md) the
//   4 KiB pages of a file mapping cost 5-15% of the read bandwidth (TLB walks on a stream).
// - Auto (the default): Memory when the weights take at most half of the memory available
//   now, else Mapped.
enum class WeightPlacement { Auto, Mapped, Memory };
const char* placement_name(WeightPlacement p);

class LlamaModel {
 public:
  // Opens and validates a GGUF file. Errors name the file, tensor or key at fault.
  static Result<std::unique_ptr<LlamaModel>> load(
      const std::string& path, WeightPlacement placement = WeightPlacement::Auto);
  // Where the weights ended up (Memory or Mapped, never Auto).
  WeightPlacement placement() const {
    return file_->in_memory() ? WeightPlacement::Memory : WeightPlacement::Mapped;
  }

  ~LlamaModel();
  const LlamaHparams& hparams() const { return hp_; }
  // The weights as loaded (views into the file or memory), for tools that read them whole:
  // training, quantization.
  const std::vector<LlamaLayer>& layers() const { return layers_; }
  const float* output_norm() const { return output_norm_; }
  const WeightView& output() const { return output_; }
  WeightView tok_embd() const {
    WeightView w;
    w.type = tok_embd_type_;
    w.data = tok_embd_;
    w.n_in = hp_.n_embd;
    w.n_out = hp_.n_vocab;
    w.row_bytes = tok_embd_row_bytes_;
    return w;
  }
  // A LoRA adapter applied unmerged by every forward() from now on (null removes it).
  // Checked against the model's layers; shapes were checked when it was read.
  Status set_adapter(std::shared_ptr<const LoraAdapter> adapter);
  // Hands forward() and its sizing to a distributed pass (null: this process alone again).
  void set_distributed(std::shared_ptr<const DistributedForward> d) { distributed_ = std::move(d); }
  bool has_adapter() const { return adapter_ != nullptr; }
  // Applies copy-on-write block copies (BlockManager::append's) to kv: callers use this rather
  // than KvCache::copy_block, so that a distributed model copies on every rank.
  void copy_kv_blocks(KvCache& kv, const std::vector<BlockCopy>& copies) const {
    if (distributed_) return distributed_->copy_blocks(kv, copies);
    for (const BlockCopy& c : copies) kv.copy_block(c.src, c.dst, c.n_slots);
  }
  const GgufFile& gguf() const { return *file_; }
  // Bytes of weights (as stored).
  size_t weight_bytes() const { return weight_bytes_; }

  Workspace make_workspace(int32_t max_tokens, int32_t max_logit_rows, int32_t max_ctx,
                           int n_threads) const;
  KvCacheConfig kv_config(int32_t n_ctx_tokens, int32_t block_size = 16,
                          KvType type = kDefaultKvType) const;

  // Runs the batch. Returns logits [n_logit_rows, n_vocab] for the rows that want them, in
  // batch order, pointing into ws. Bad batches (token ids, positions outside the block tables,
  // more rows than the workspace holds) return an error without touching the cache.
  // `tap`, when given, is shown each linear layer's input (see ForwardTap).
  Result<const float*> forward(const Batch& batch, KvCache& kv, Workspace& ws,
                               ThreadPool& pool, ForwardTap* tap = nullptr) const;

 private:
  LlamaModel() = default;
  const uint8_t* registered_weights_ = nullptr;  // gemm_register_immutable'd tensor span
  // The whole model as the Decoder runs it (this process holds every layer).
  Decoder decoder() const;

  std::unique_ptr<GgufFile> file_;
  LlamaHparams hp_;
  const uint8_t* tok_embd_ = nullptr;  // [n_vocab, row bytes of tok_embd_type_]
  DType tok_embd_type_ = DType::F32;
  size_t tok_embd_row_bytes_ = 0;
  std::vector<LlamaLayer> layers_;
  std::shared_ptr<const LoraAdapter> adapter_;
  std::shared_ptr<const DistributedForward> distributed_;
  const float* output_norm_ = nullptr;  // [n_embd]
  WeightView output_;                   // [n_embd] -> [n_vocab], token_embd when tied
  size_t weight_bytes_ = 0;
};

}  // namespace qilin
