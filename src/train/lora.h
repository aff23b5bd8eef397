// LoRA training's shared vocabulary: the adaptable projections, the adapter's configuration,
// one layer's adapter weights (or gradients) and where data-parallel training keeps them. Used
// by the trainer (train/lora_trainer.h), ZeRO (train/zero.h) and the tests' double-precision
// reference (tests/reference/lora_llama_ref.h).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "model/lora_adapter.h"

namespace qilin::train {

// The seven adaptable linear layers of a block, in this order everywhere (LoraProj's order).
enum Proj { kQ, kK, kV, kO, kGate, kUp, kDown, kNumProj };
static_assert(kNumProj == kLoraNumProj && kDown == kLoraDown);

struct LoraConfig {
  int32_t rank = 8;
  float alpha = 16;                                  // scale = alpha / rank
  std::array<bool, kNumProj> targets = {true, true, true, true, true, true, true};
};

template <typename T>
struct LoraLayer {
  std::array<std::vector<T>, kNumProj> A, B;  // A [r, in], B [out, r]; empty when not adapted
};

// Where the LoRA weights and gradients live when not in the trainer's lora() and grad():
// data-parallel training (train/zero.h) keeps them in flat, possibly sharded buffers. The model
// runs one layer at a time: it asks for the layer's weights before the layer's forward and again
// before its backward (a reference valid until the next call), for a zeroed gradient buffer of
// the layer before its backward, and hands that back after.
template <typename T>
struct LoraStore {
  virtual ~LoraStore() = default;
  virtual const LoraLayer<T>& layer_weights(int32_t il) = 0;
  virtual LoraLayer<T>& layer_grads(int32_t il) = 0;
  virtual void layer_grads_done(int32_t il) = 0;
};

}  // namespace qilin::train
