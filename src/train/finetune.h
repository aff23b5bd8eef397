// Fine-tuning: data (JSONL of prompt/completion, chat messages or plain text, with the loss on
// the completion / assistant tokens only), the LoRA training loop (AdamW, warmup + cosine,
// clipping, gradient accumulation, held-out evaluation), atomic checkpoints that resume with
// identical losses, and adapter export (PEFT safetensors and llama.cpp's GGUF LoRA format).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "dist/comm.h"
#include "model/chat_template.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "qilin/status.h"
#include "train/lora.h"
#include "train/lora_trainer.h"
#include "train/optimizer.h"
#include "train/paged_adamw.h"
#include "train/precision.h"
#include "train/zero.h"

namespace qilin::train {

// One training sequence: targets[i] is the token that should follow tokens[i], or -1 where no
// loss is taken (prompt, user turns, across packed examples).
struct Example {
  std::vector<int32_t> tokens;
  std::vector<int32_t> targets;
};

// Reads JSONL: each line {"prompt","completion"}, {"messages":[{"role","content"}...]} (the
// chat template `tmpl` renders it; loss on assistant turns) or {"text"} (loss everywhere).
// Errors name the file, line and field. Sequences longer than max_len are cut.
Result<std::vector<Example>> load_jsonl(const std::string& path, const Tokenizer& tok,
                                        const ChatTemplate* tmpl, int32_t max_len);

// Concatenates examples (in order) into sequences of at most max_len tokens; a target that
// would cross into the next example is masked.
std::vector<Example> pack(const std::vector<Example>& examples, int32_t max_len);

struct FinetuneConfig {
  LoraConfig lora;
  AdamWConfig adam;
  int64_t steps = 100;           // optimizer steps
  int32_t grad_accum = 1;        // examples per optimizer step
  int64_t warmup = 10;
  float min_lr_ratio = 0.1f;     // cosine decays to lr * this
  double clip_norm = 1.0;        // <= 0: no clipping
  int64_t eval_every = 0;        // 0: only at the end
  int64_t checkpoint_every = 0;  // 0: none
  std::string checkpoint_path;   // written atomically (temp + rename)
  uint64_t seed = 1;
  int n_threads = 1;
  // The frozen base: dense F32 (dequantized at start; a transposed copy serves the input
  // gradients), or kept quantized (QLoRA: train/lora_trainer.h), requantized at start to
  // base_type unless that is F32 (then kept as the file has it).
  bool quantized_base = false;
  DType base_type = DType::F32;
  Precision precision = Precision::F32;
  bool checkpoint_activations = false;
  // AdamW states resident at most this many bytes (0: no limit); the rest paged to a file in
  // optimizer_swap_dir (default /tmp).
  size_t optimizer_memory_bytes = 0;
  std::string optimizer_swap_dir;
  // FP16's dynamic loss scaling (train/optimizer.h LossScaler).
  float loss_scale_init = 65536.0f;
  int loss_scale_growth_interval = 1000;
  int loss_scale_hysteresis = 2;
  // Data-parallel training (train/zero.h) when zero_stage >= 0: the ranks of comm (null: one)
  // each take grad_accum / ranks consecutive examples of every step's global batch of
  // grad_accum, and together give the weights one process gets on that batch.
  int zero_stage = -1;
  bool offload_optimizer = false;
  Communicator* comm = nullptr;
  // Tests only: sees each step's raw (scaled, summed) gradients before they are checked (not
  // called under zero_stage, whose gradients are sharded).
  std::function<void(int64_t step, std::vector<LoraLayer<float>>& grads)> grad_hook;
};

struct StepLog {
  int64_t step = 0;
  float loss = 0;        // mean training loss of the step's examples
  float lr = 0;
  double grad_norm = 0;
  int64_t tokens = 0;    // scored tokens this step
  double seconds = 0;
  float eval_loss = -1;  // held-out mean loss when evaluated this step, else -1
  bool skipped = false;  // FP16: gradients overflowed, no update
  float loss_scale = 1;  // the scale this step's backward used
  double comm_bytes = 0;  // data-parallel: ring bytes this rank sent this step (train/zero.h)
};

class Finetuner {
 public:
  // base: the frozen model; train/eval: the data (eval may be empty).
  static Result<std::unique_ptr<Finetuner>> create(const LlamaModel& base, const FinetuneConfig& cfg,
                                                   std::vector<Example> train, std::vector<Example> eval);
  ~Finetuner();
  // Runs until cfg.steps (from wherever a resume left off). on_step gets every step's log.
  Status run(const std::function<void(const StepLog&)>& on_step);
  // Mean loss over the held-out examples.
  float evaluate();
  Status save_checkpoint(const std::string& path) const;
  Status load_checkpoint(const std::string& path);
  // PEFT layout: dir/adapter_config.json + dir/adapter_model.safetensors (Hugging Face names;
  // Q/K output rows un-permuted from GGUF's RoPE pair order to Hugging Face's halves).
  Status save_peft(const std::string& dir, const std::string& base_name) const;
  // llama.cpp's GGUF LoRA adapter (general.type = adapter, blk.N.attn_q.weight.lora_a/_b).
  Status save_gguf_adapter(const std::string& path) const;
  int64_t step() const { return step_; }
  LoraTrainer& model() { return *model_; }
  const LossScaler& loss_scaler() const { return scaler_; }
  PagedAdamW::Stats optimizer_stats() const { return states_ ? states_->stats() : PagedAdamW::Stats{}; }
  // The data-parallel optimizer (null unless cfg.zero_stage >= 0).
  const ZeroOptimizer* zero() const { return zero_.get(); }
  // Bytes of base weights held for training (dense F32 + transposed copy, or quantized).
  size_t base_bytes() const { return base_bytes_; }
  // False when training holds its own copy of every base weight: the model may then be freed.
  bool uses_model_weights() const { return uses_model_; }

 private:
  Finetuner() = default;
  Status data_parallel_step(const std::function<const Example&(int64_t)>& example_at, StepLog* log);
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::unique_ptr<LoraTrainer> model_;  // after impl_: it uses impl_'s pool
  FinetuneConfig cfg_;
  std::vector<Example> train_, eval_;
  std::unique_ptr<PagedAdamW> states_;  // tensors [n_adapted * 2] (A, B), in model order
  std::unique_ptr<ZeroOptimizer> zero_;  // instead of states_ under data parallelism
  LossScaler scaler_;
  size_t base_bytes_ = 0;
  bool uses_model_ = false;
  int64_t step_ = 0;
  int64_t updates_ = 0;             // optimizer steps applied (skipped ones not counted)
  std::vector<uint32_t> order_;     // example order of epoch order_epoch_
  int64_t order_epoch_ = -1;
  int64_t cursor_ = 0;              // examples consumed in total
};

}  // namespace qilin::train
