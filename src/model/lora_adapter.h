// A LoRA adapter applied at inference without merging it into the weights: for each adapted
// projection of each layer, y += scale * (x A^T) B^T after the base product. Read from
// llama.cpp's GGUF LoRA format (general.type = "adapter", adapter.type = "lora",
// adapter.lora.alpha, tensors blk.N.<proj>.weight.lora_a [in -> r] and .lora_b [r -> out]),
// which `qilin finetune` writes.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "qilin/status.h"

namespace qilin {

class LlamaModel;

// The seven projections of a block, in LlamaLayer's order.
enum LoraProj { kLoraQ, kLoraK, kLoraV, kLoraO, kLoraGate, kLoraUp, kLoraDown, kLoraNumProj };
// GGUF tensor base names: attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down.
const char* lora_proj_gguf_name(int p);

struct LoraAdapter {
  float scale = 1;   // alpha / rank times the user's multiplier
  int32_t rank = 0;
  // [n_layer][kLoraNumProj]: A [r, in], B [out, r]; both empty when not adapted.
  std::vector<std::array<std::vector<float>, kLoraNumProj>> A, B;
};

// Reads and checks an adapter for `model` (every shape against the model's); `multiplier`
// scales it (--lora FILE:0.5). Errors name the file, tensor and shape.
// "FILE" or "FILE:SCALE" (the --lora spelling) split into the file and the multiplier (1 when
// absent, or when what follows the last colon is not a number: then it is part of the file).
void split_lora_spec(const std::string& spec, std::string* file, float* multiplier);

Result<LoraAdapter> load_lora_adapter(const std::string& path, const LlamaModel& model,
                                      float multiplier);

}  // namespace qilin
