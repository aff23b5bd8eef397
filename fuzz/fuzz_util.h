// Shared by the fuzz targets and the seed generator: tiny Llama GGUFs (a few layers, tiny dims,
// a small BPE or SentencePiece vocabulary, a chat template), LoRA adapters and fine-tuning
// checkpoints for them, all made with GgufWriter in memory, and a memfd for the loaders that
// only take a path.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "formats/gguf.h"
#include "model/llama.h"
#include "qilin/status.h"
#include "train/finetune.h"

namespace qilin::fuzz {

// The per-ISA kernels are built without sanitizers (top CMakeLists.txt); call first in
// LLVMFuzzerInitialize of a target that runs kernels, so the instrumented scalar ones run.
void use_scalar_kernels();

// QILIN_FUZZ_VERBOSE=1: targets print why each input stopped where it did (seed checking).
void note(const char* what, const Status& st);

enum class VocabKind { Gpt2, Spm };

struct TinyModel {
  VocabKind vocab = VocabKind::Gpt2;
  std::string pre = "gpt-2";  // tokenizer.ggml.pre (Gpt2 only; "" leaves the key out)
  int32_t n_layer = 1;
  int32_t n_embd = 8;
  int32_t n_head = 2;
  int32_t n_head_kv = 1;
  int32_t n_ff = 16;
  DType weight_type = DType::F32;  // the layers' matrices (n_embd, n_ff multiples of its block)
  DType embd_type = DType::F16;    // token_embd (also the output head when tied)
  bool tied_output = true;
  std::string chat_template;              // "" writes none
  std::vector<std::string> extra_tokens;  // appended to the vocabulary as normal tokens
  uint32_t seed = 1;
};

// Chat templates of each family that ChatTemplate recognises (short, but in the real shape).
extern const char* const kChatmlTemplate;
extern const char* const kLlama3Template;
extern const char* const kLlama2Template;

// The model fuzz_lora loads adapters against: 2 layers, n_embd 32 (Q8_0/Q4_0 rows fit).
TinyModel lora_base_model();
// The model, data and settings of fuzz_checkpoint's Finetuner (1 layer, rank 2, q and v).
TinyModel checkpoint_base_model();
train::FinetuneConfig checkpoint_config();
std::vector<train::Example> checkpoint_examples();

// The vocabulary tiny_llama_gguf writes for `kind`: texts, types (TokenType values), merges
// (Gpt2 only), BOS and EOS ids.
struct VocabLists {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<std::string> merges;
  int32_t bos = 0, eos = 0;
};
VocabLists vocab_lists(VocabKind kind);

// The bytes of a valid Llama GGUF for `m`.
std::vector<uint8_t> tiny_llama_gguf(const TinyModel& m);

// The bytes of a GGUF LoRA adapter for `model` (llama.cpp's layout): rank r, the projections
// whose bit is set in proj_mask, lora_a in a_type and lora_b in b_type.
std::vector<uint8_t> tiny_lora_gguf(const LlamaModel& model, int32_t rank, uint32_t proj_mask,
                                    DType a_type, DType b_type, uint32_t seed);

// An anonymous in-memory file reachable by a path (/proc/self/fd/N), for loaders that open a
// path themselves (LlamaModel::load, load_lora_adapter, Finetuner::load_checkpoint).
class MemFile {
 public:
  MemFile();
  ~MemFile();
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  // Replaces the contents; false if the write failed.
  bool assign(const uint8_t* data, size_t size);
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

// Loads a model from bytes through a MemFile (placement Mapped: the file stays in the memfd).
Result<std::unique_ptr<LlamaModel>> load_model_bytes(MemFile& file,
                                                     const std::vector<uint8_t>& bytes);

// Writes `bytes` to `path`; false on error.
bool write_file(const std::string& path, const std::vector<uint8_t>& bytes);

}  // namespace qilin::fuzz
