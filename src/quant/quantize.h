// Whole-model quantization, GGUF in and GGUF out: which tensors get the target type (llama.cpp's
// choices), round-to-nearest of every row with the reference quantizers, and one atomic write.
// AWQ (quant/awq.h) hands in replacement F32 tensors (scaled and clipped) and reuses all of it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "formats/gguf.h"
#include "qilin/status.h"

namespace qilin {

// A --type name: f32, f16, bf16, q8_0, q4_0, q4_1, int4-g32, int4-g64, int4-g128, nf4, nf4-dq.
Result<DType> parse_quant_type(const std::string& name);
// The names parse_quant_type accepts, comma-separated (for help and errors).
std::string quant_type_names();
// The lower-case name of a target type ("int4-g128"), as parse_quant_type reads it.
const char* quant_type_name(DType t);
// True when llama.cpp can read the type (ggml's own types).
bool is_ggml_type(DType t);

// The type tensor `t` gets when the model is quantized to `target`:
// - 1-D tensors, tensors whose name does not end in "weight" and norms ("_norm.weight") keep
//   their type (llama.cpp: tensor_allows_quantization);
// - plain targets (F32, F16, BF16) apply to every other tensor;
// - output.weight, or token_embd.weight when the output is tied to it, gets Q8_0 (llama.cpp
//   picks Q6_K when the row is a multiple of 256, else Q8_0; Qilin has no Q6_K);
// - a row length that is not a multiple of the target's block falls back as llama.cpp's
//   tensor_type_fallback does: INT4 g128 -> g64 -> g32, others F16.
DType quant_tensor_type(const GgufTensorInfo& t, DType target, bool output_tied);

struct QuantizeProgress {
  size_t tensor = 0;       // tensors finished
  size_t n_tensors = 0;
  uint64_t elements = 0;   // elements finished
  uint64_t n_elements = 0;
  const char* name = "";   // the tensor just finished
};

struct QuantizeOptions {
  DType target = DType::Q8_0;
  int n_threads = 1;
  // Tensors to take from here (F32, same shape) instead of the input file: AWQ's folded weights.
  const std::map<std::string, std::vector<float>>* replace = nullptr;
  // Extra metadata written after the input's keys.
  std::vector<std::pair<std::string, GgufValue>> extra_kvs;
  std::function<void(const QuantizeProgress&)> progress;
};

struct QuantizeReport {
  uint64_t bytes_in = 0, bytes_out = 0;  // tensor data
  // The layers' weights (2-D "weight" tensors but norms and the output / tied embedding): the
  // target type or its fallbacks. 8 * bytes / elements is the bits per weight to quote.
  uint64_t quantized_elements = 0;
  uint64_t quantized_bytes = 0;
  uint64_t n_elements = 0;
  std::map<std::string, int> types_out;  // type name -> tensors
  std::vector<std::string> notes;        // fallbacks and requantized inputs, one line each
};

// Reads `in`, writes `out` through a temp file and a rename: a failure (or a kill) never leaves a
// partial `out`. Errors name the file, the tensor and the type.
Result<QuantizeReport> quantize_gguf(const GgufFile& in, const std::string& out,
                                     const QuantizeOptions& opt);

}  // namespace qilin
