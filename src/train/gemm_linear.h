// Training's products with the frozen base on the CPU kernels: forward y = x W^T through the
// tiled F32 gemm (ops/matmul), and the input gradient dx += dy W through the same gemm over a
// transposed copy of W made once (the base never changes). Also: filling a LoraLlama<float>'s
// base from a loaded model (every weight dequantized to F32, or only the norms when the base
// stays quantized: train/quant_linear.h).
#pragma once

#include <memory>
#include <vector>

#include "core/thread_pool.h"
#include "model/llama.h"
#include "ops/ops.h"
#include "train/lora_llama.h"

namespace qilin::train {

// Shape and base of `model` (any weight type it loads): the norms always, the embedding and
// the linear weights dequantized to F32 only when dense_base. LoRA left uninitialised.
std::unique_ptr<LoraLlama<float>> lora_llama_from(const LlamaModel& model, const LoraConfig& lc,
                                                  bool dense_base = true);

class GemmLinear : public FloatLinear {
 public:
  // `m` must outlive this object and its base must not change.
  GemmLinear(LoraLlama<float>& m, ThreadPool& pool);
  void forward(int32_t layer, int p, const float* x, int64_t n, float* y) override;
  void backward_input(int32_t layer, int p, const float* dy, int64_t n, float* dx) override;
  void embed(const int32_t* tokens, int64_t n, float* x) override;

 private:
  struct Mat {
    WeightView w;   // [out, in]
    WeightView wt;  // [in, out], data in transposed
    std::vector<float> transposed;
  };
  Mat& mat(int32_t layer, int p) { return p == kNumProj ? head_ : mats_[layer * kNumProj + p]; }
  void run(const WeightView& w, const float* x, int64_t n, float* y);
  ThreadPool& pool_;
  const LoraLlama<float>& m_;
  std::vector<Mat> mats_;  // [n_layer * kNumProj]
  Mat head_;
  std::vector<uint8_t> scratch_;
  std::vector<float> tmp_;
};

}  // namespace qilin::train
