// Merging a LoRA adapter into its base model: W' = W + scale * B A for every adapted projection,
// written as a new GGUF through quant/quantize.h's writer (each merged weight requantized to the
// base's type or a chosen one, every other tensor copied bit for bit when its type stays; written
// through core/atomic_file.h, so a failure or a kill never leaves a partial output).
#pragma once

#include <string>

#include "core/dtype.h"
#include "model/llama.h"
#include "model/lora_adapter.h"
#include "qilin/status.h"
#include "quant/quantize.h"

namespace qilin::train {

struct MergeReport {
  DType type = DType::F32;  // the merged weights' type
  int merged = 0;           // weights changed
  QuantizeReport quant;
};

// type F32 with keep_type: the type of the base's layer weights (blk.0.attn_q.weight).
Result<MergeReport> merge_lora(const LlamaModel& base, const LoraAdapter& adapter, const std::string& out, DType type,
                               bool keep_type, int n_threads);


}  // namespace qilin::train
