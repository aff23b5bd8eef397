// LoRA training of the model's own decoder (model/transformer.h): the forward is the one
// inference runs, each layer given this trainer as its Tape (activations saved for the
// backward, rounded to the compute precision, the layer's adapter); then the output head's
// cross-entropy over row chunks with its backward fused in, and the layers' backward
// (Decoder::backward_layer) in reverse. Only the adapters learn; the base is frozen: the
// model's weights as loaded, requantized at start (QLoRA: NF4-DQ), or dequantized to F32 with a
// transposed copy for the input gradients. The same linear products (ops/matmul and
// ops/backward.h) serve every case.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/thread_pool.h"
#include "model/llama.h"
#include "model/transformer.h"
#include "qilin/status.h"
#include "train/lora.h"
#include "train/precision.h"

namespace qilin::train {

// How the frozen base is kept in memory.
struct BaseConfig {
  bool quantized = false;        // false: dequantized to F32 (and transposed); true: quantized
  DType requant = DType::F32;    // quantized: the type to requantize to (F32: as the file has it)
};

class LoraTrainer : private Tape {
 public:
  // Over `model`'s weights (any type it loads). Errors name the tensor and type (a row length
  // that is not a multiple of the requantized type's block). The model must outlive the result
  // when uses_model_weights().
  static Result<std::unique_ptr<LoraTrainer>> create(const LlamaModel& model, const LoraConfig& lc,
                                                     const BaseConfig& base, Precision prec,
                                                     ThreadPool& pool);
  // Over weights the caller keeps alive (tests' random models): the layers, the embedding, the
  // output head and the final norm. F32 weights get the dense path's transposed copies.
  static std::unique_ptr<LoraTrainer> over(const LlamaHparams& hp, std::vector<LlamaLayer> layers,
                                           const WeightView& tok_embd, const WeightView& output,
                                           const float* output_norm, const LoraConfig& lc,
                                           ThreadPool& pool);
  ~LoraTrainer() override;

  const LlamaHparams& hparams() const { return hp_; }
  const LoraConfig& lora_config() const { return lc_; }
  float scale() const { return lc_.alpha / lc_.rank; }
  int64_t proj_in(int p) const { return layers_[0].proj(p).n_in; }
  int64_t proj_out(int p) const { return layers_[0].proj(p).n_out; }
  std::vector<LoraLayer<float>>& lora() { return lora_; }
  std::vector<LoraLayer<float>>& grad() { return grad_; }  // same shapes as lora()
  // When set, the LoRA weights and gradients come from and go to the store (one layer at a
  // time) instead of lora() and grad(); not owned.
  void set_lora_store(LoraStore<float>* st) { store_ = st; }

  // LoRA init: A random (Kaiming-uniform-like, as PEFT), B zero, unless b_sd > 0 (tests).
  void init_lora(uint32_t seed, float b_sd = 0);
  void zero_grad();
  // Compute precision (train/precision.h): activations rounded, saved in 16 bits, LoRA used as
  // rounded copies; the input-gradient tiles of a quantized base in the same type.
  void set_precision(Precision p) { prec_ = p; }
  Precision precision() const { return prec_; }
  // When on, forward keeps only each block's input and backward recomputes the block from it.
  void set_checkpoint_activations(bool on) { checkpoint_ = on; }
  // The loss's gradient is multiplied by this (FP16's dynamic loss scaling); the caller unscales.
  void set_loss_scale(float s) { loss_scale_ = s; }
  // The attention kernels: the CPU's best by default; null runs the reference loops.
  void set_attention_kernels(const TrainAttnKernels* k) { attn_ = k; }

  // Mean cross-entropy of targets (target < 0: not scored) given tokens. With need_grad, saves
  // what backward() needs (and already runs the output head's backward: its input gradient is
  // all it leaves, so no [n, V] logits buffer outlives a chunk). logits_out, if given,
  // receives [n, V].
  float forward(const int32_t* tokens, const int32_t* targets, int64_t n,
                std::vector<float>* logits_out = nullptr, bool need_grad = true);
  // Gradients of the last forward's loss (times the loss scale) into grad() (accumulated).
  void backward();

  // Bytes of activations held between forward and backward (the saved blocks), for reports.
  size_t saved_bytes() const;
  // Bytes of base weights read (projections, embedding, head once if tied; the dense path's
  // transposed copies too).
  size_t base_bytes() const { return base_bytes_; }
  // True when the weights read are the model's own (it must stay loaded).
  bool uses_model_weights() const { return uses_model_; }

 private:
  LoraTrainer(const LlamaHparams& hp, const LoraConfig& lc, ThreadPool& pool);
  void finish_setup();  // the decoder over layers_, the transposed copies of F32 weights
  float head(bool need_grad, std::vector<float>* logits_out);
  void refresh_compute_lora();
  void round_vec(std::vector<float>& v) const { round(v.data(), static_cast<int64_t>(v.size())); }

  // Tape
  void round(float* x, int64_t n) const override { round_to(prec_, x, n); }
  void save(int32_t il, int slot, const float* x, int64_t n) override;
  const float* load(int32_t il, int slot, std::vector<float>& buf) override;
  LoraLayerView lora(int32_t il) const override;
  LoraLayerGrads lora_grads(int32_t il) override;
  const TrainAttnKernels* attention_kernels() const override { return attn_; }
  const WeightView* transposed(int32_t il, int p) const override;
  DType tile_type() const override;

  // A saved tensor: its values, or their 16-bit codes in BF16/FP16 (exact there).
  struct Stash {
    std::vector<float> v;
    std::vector<uint16_t> h;
  };
  enum class Saving { None, Inputs, All };  // what save() keeps

  ThreadPool& pool_;
  LlamaHparams hp_;
  LoraConfig lc_;
  std::vector<float> freq_factors_;            // hp_.rope.freq_factors points here
  std::vector<LlamaLayer> layers_;             // the frozen base (views)
  WeightView embd_, head_;
  const float* out_norm_ = nullptr;
  std::vector<std::vector<uint8_t>> owned_;    // requantized or dequantized weights, copied norms
  std::vector<std::vector<float>> transposed_; // dense path: W^T per projection, then the head
  std::vector<WeightView> transposed_views_;   // [n_layer * kNumProj + 1] (empty: tiles)
  size_t base_bytes_ = 0;
  bool uses_model_ = false;
  Decoder decoder_;

  LoraStore<float>* store_ = nullptr;
  const LoraLayer<float>* store_w_ = nullptr;  // the store's weights and gradients of the layer run
  LoraLayer<float>* store_g_ = nullptr;
  const TrainAttnKernels* attn_ = train_attention_kernels();
  Precision prec_ = Precision::F32;
  bool checkpoint_ = false;
  float loss_scale_ = 1;
  std::vector<LoraLayer<float>> lora_, grad_, lora_c_;

  Saving saving_ = Saving::None;
  std::vector<std::array<Stash, kNumSlots>> saved_;  // [n_layer]
  int64_t n_ = 0;
  bool grad_ready_ = false;
  std::vector<int32_t> targets_;
  Batch batch_;          // the sequence's tokens at positions 0..n-1
  Workspace ws_;
  BackwardWorkspace bw_;
  // The final norm's input and output, its 1 / rms per row, their gradients; a head chunk.
  std::vector<float> xf_, xnf_, rstdf_, dxnf_, dx_, chunk_;
  std::vector<uint8_t> head_act_;
  MatmulBackwardScratch head_back_;
};

}  // namespace qilin::train
