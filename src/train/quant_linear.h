// QLoRA's frozen base: the linear weights stay quantized in memory (as the model loaded them,
// or requantized once at start, e.g. to NF4 with double quantization). Forward runs the
// quantized gemm (ops/matmul); the input gradient dx += dy W dequantizes W a tile of rows at a
// time into a small transposed F32/BF16/F16 buffer and runs the float gemm on it, so no dense
// copy of the base (nor a transposed one) ever exists. Embedding rows are dequantized on lookup.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/thread_pool.h"
#include "model/llama.h"
#include "ops/ops.h"
#include "qilin/status.h"
#include "train/lora_llama.h"
#include "train/precision.h"

namespace qilin::train {

class QuantLinear : public FloatLinear {
 public:
  // requant: the type every block projection is requantized to (from its dequantized values);
  // the embedding and output head are then copied as they are, so the model may be freed.
  // requant F32 keeps the model's weights where they are (the model must outlive the result). prec picks the tile type of the input gradient (F32, BF16, F16).
  // Errors name the tensor and type (a row length that is not a multiple of the block).
  static Result<std::unique_ptr<QuantLinear>> create(const LlamaModel& model, ThreadPool& pool, DType requant,
                                                     Precision prec);
  void forward(int32_t layer, int p, const float* x, int64_t n, float* y) override;
  void backward_input(int32_t layer, int p, const float* dy, int64_t n, float* dx) override;
  void embed(const int32_t* tokens, int64_t n, float* x) override;
  // Bytes of base weights this object reads (projections, embedding, head once if tied).
  size_t weight_bytes() const;
  // Bytes this object allocated for requantized weights (0 when kept as loaded).
  size_t owned_bytes() const;
  // True when the weights read are the model's (requant F32): it must stay loaded.
  bool uses_model_weights() const { return owned_.empty(); }

 private:
  QuantLinear(ThreadPool& pool) : pool_(pool) {}
  const WeightView& mat(int32_t layer, int p) const { return p == kNumProj ? head_ : mats_[layer * kNumProj + p]; }
  ThreadPool& pool_;
  std::vector<WeightView> mats_;  // [n_layer * kNumProj], [out, in] each
  WeightView head_, embd_;
  bool tied_ = true;
  std::vector<std::vector<uint8_t>> owned_;  // requantized weights
  DType tile_type_ = DType::F32;
  std::vector<uint8_t> tile_;     // [in, kTile] one tile of W^T in tile_type_
  std::vector<float> rows_;       // [n_threads, in] dequantized rows
  std::vector<uint16_t> codes_;   // [n_threads, in] a row's 16-bit codes
  std::vector<float> dyc_, tmp_;  // [n, kTile] dy's tile columns; [n, in] the tile's product
  std::vector<uint8_t> scratch_;
};

}  // namespace qilin::train
