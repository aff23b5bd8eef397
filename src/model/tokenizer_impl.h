// Private to the tokenizer: factories for the two vocabulary kinds, which live in
// tokenizer_bpe.cc and tokenizer_spm.cc. Tokenizer::from_gguf picks one by tokenizer.ggml.model.
#pragma once

#include <memory>
#include <string>

#include "model/tokenizer.h"

namespace qilin::tokenizer_internal {

// Byte-level BPE ("gpt2") with the pre-tokenizer named `pre` (tokenizer.ggml.pre or override).
Result<std::unique_ptr<Tokenizer>> make_bpe_tokenizer(const GgufFile& file, const std::string& pre);
// SentencePiece-style BPE ("llama"): merges by score, U+2581 for spaces, byte fallback.
Result<std::unique_ptr<Tokenizer>> make_spm_tokenizer(const GgufFile& file);

}  // namespace qilin::tokenizer_internal
