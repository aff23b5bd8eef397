// ZeRO data-parallel training of LoRA adapters (DeepSpeed's stages 0-3 and optimizer offload)
// over a Communicator. The trainable parameters (every adapted projection's A and B; the base
// is frozen) are laid out layer by layer; each layer's run is padded to a multiple of the world
// size N and rank r owns the r-th piece of every layer. What a rank keeps between steps:
//   stage 0: all parameters, gradients and optimizer states; gradients all-reduced
//   stage 1: all parameters and gradients, its pieces' optimizer states; gradients
//            reduce-scattered, its pieces updated, parameters all-gathered
//   stage 2: all parameters, its pieces' gradients (each layer's reduce-scattered as its
//            backward ends) and optimizer states
//   stage 3: its pieces of everything; a layer's parameters are all-gathered before its forward
//            and before its backward, into a one-layer working buffer reused by the next layer
// Buffers, in bytes per parameter: parameters and gradients in the compute type (b = 2 under
// bf16/fp16, 4 under fp32), optimizer states K = 12 (FP32 master, AdamW m and v) when the
// parameters are 16-bit or offloaded, K = 8 under fp32 (the FP32 parameters are the master).
// With b = 2, K = 12 these are ZeRO's 16Ψ, 4Ψ + 12Ψ/N, 2Ψ + 14Ψ/N, 16Ψ/N.
// NOTE: every rank must run forward and backward the same number of times (stage 3 gathers
// inside them), evaluation included.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dist/comm.h"
#include "qilin/status.h"
#include "train/lora_trainer.h"
#include "train/optimizer.h"
#include "train/precision.h"

namespace qilin::train {

struct ZeroConfig {
  int stage = 0;         // 0..3
  bool offload = false;  // optimizer states and the update on the host (ZeRO-Offload)
  Precision precision = Precision::F32;
};

// Bytes this rank holds, from the sizes of its allocations.
struct ZeroMemory {
  size_t params = 0;  // the compute copy of the parameters
  size_t grads = 0;
  size_t optimizer = 0;   // FP32 master (16-bit or offloaded parameters), m, v
  size_t host_grads = 0;  // offload: the FP32 gradients staged on the host for the update
  size_t working = 0;     // one layer's float weights and gradients, gather/reduce buffers
  bool optimizer_on_host = false;
  size_t formula_terms() const { return params + grads + optimizer; }
};

// What the formulas say a rank holds (bytes) for psi parameters on n ranks.
struct ZeroFormula {
  double params, grads, optimizer;
  double total() const { return params + grads + optimizer; }
};
ZeroFormula zero_formula(int stage, Precision prec, bool offload, double psi, int n);

class ZeroOptimizer : public LoraStore<float> {
 public:
  // Takes over model's LoRA weights (every rank must start from the same ones) and gradients,
  // freeing model.lora() and model.grad(), and becomes the model's LoraStore. comm null: one
  // rank.
  static Result<std::unique_ptr<ZeroOptimizer>> create(LoraTrainer& model, Communicator* comm,
                                                       const ZeroConfig& cfg);
  ~ZeroOptimizer() override;
  int rank() const { return rank_; }
  int size() const { return n_; }
  int64_t n_params() const { return psi_; }  // Ψ
  int64_t n_params_padded() const { return psi_pad_; }

  // Before a step's forward/backward passes: zero the gradients, start counting bytes.
  void begin_step();
  struct StepIn {
    double loss_sum = 0;           // this rank's examples' summed mean losses
    int64_t tokens = 0;            // this rank's scored tokens
    int32_t examples = 1;          // the global batch (every rank's examples)
    LossScaler* scaler = nullptr;  // FP16: the scale backward used; moved by the global check
    double clip_norm = 0;
    int64_t update = 1;  // AdamW's step count if this step is applied
    AdamWConfig adam;
    float lr = 0;
  };
  struct StepOut {
    double loss_sum = 0;  // over every rank
    int64_t tokens = 0;
    double grad_norm = 0;
    bool skipped = false;
  };
  // After the local backward passes: reduce the gradients, average over the global batch,
  // unscale and check (FP16), clip by the global norm, update this rank's pieces and gather the
  // parameters. Collective.
  Result<StepOut> finish_step(const StepIn& in);
  // The last step's payload bytes per collective (Communicator::stats() deltas from
  // begin_step to the end of finish_step).
  const CommStats& step_comm() const { return step_comm_; }
  ZeroMemory memory() const;
  // Every rank gets the full LoRA weights in model.lora() (stage 3 gathers them). Collective.
  Status export_weights();
  // Also the first communication error of a forward/backward pass (stage 2 and 3 communicate
  // inside them); finish_step returns it too.
  const Status& error() const { return error_; }

  // LoraStore
  const LoraLayer<float>& layer_weights(int32_t il) override;
  LoraLayer<float>& layer_grads(int32_t il) override;
  void layer_grads_done(int32_t il) override;

 private:
  ZeroOptimizer() = default;
  struct Layout;
  class Optimizer;
  class DeviceAdamW;
  class HostOptimizer;
  // Parameters or gradients in the compute type: fp32, or bf16/fp16 codes.
  struct TypedBuffer {
    Precision prec = Precision::F32;
    std::vector<float> f;
    std::vector<uint16_t> h;
    void resize(size_t n);
    size_t bytes() const { return f.capacity() * sizeof(float) + h.capacity() * sizeof(uint16_t); }
    void load(size_t off, float* dst, int64_t n) const;
    void store(size_t off, const float* src, int64_t n);  // rounds to the type
    void add(size_t off, const float* src, int64_t n);    // rounds the sums
    void zero();
  };
  // Where rank's piece of layer il sits in the buffers: the parameters, the gradients and the
  // optimizer states.
  struct Span {
    size_t param = 0, grad = 0, state = 0;
    int64_t n = 0;
  };
  Span owned(int32_t il) const;
  size_t full_off(int32_t il) const;   // the layer's padded run in a full buffer
  size_t piece_off(int32_t il) const;  // its piece in a shard
  int64_t piece(int32_t il) const;
  void to_layer(const float* flat, LoraLayer<float>& l, int32_t il) const;
  void from_layer(const LoraLayer<float>& l, float* flat, int32_t il) const;
  Status gather_layer(int32_t il, float* out /*[pad]*/);  // stage 3: the whole layer
  Status reduce(int32_t il);                              // stage 0 and 1, at the step's end
  Status fail(Status s);

  LoraTrainer* model_ = nullptr;
  Communicator* comm_ = nullptr;
  ZeroConfig cfg_;
  int rank_ = 0, n_ = 1;
  int64_t psi_ = 0, psi_pad_ = 0, shard_ = 0;
  std::vector<int64_t> n_layer_;  // [n_layer] parameters of each layer (unpadded)
  std::vector<size_t> full_off_, piece_off_;
  TypedBuffer params_, grads_;
  std::unique_ptr<Optimizer> opt_;
  LoraLayer<float> w_, g_;        // the layer being run, as the trainer reads and writes it
  std::vector<float> bucket_;     // [largest padded layer] gathers and reductions
  std::vector<float> piece_buf_;  // [largest piece]
  CommStats start_, step_comm_;
  Status error_;
};

// Ring-algorithm bytes this rank sends for the payload counts in s on n ranks: an all-reduce
// of B bytes sends 2B(n-1)/n, a reduce-scatter of B input bytes B(n-1)/n, an all-gather of a
// B-byte piece B(n-1), a broadcast B (what this file's collectives amount to on the wire).
double ring_bytes(const CommStats& s, int n);

}  // namespace qilin::train
