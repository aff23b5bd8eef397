// Private to the tokenizer: factories for the two vocabulary kinds, which live in
// tokenizer_bpe.cc and tokenizer_spm.cc. Tokenizer::from_gguf picks one by tokenizer.ggml.model.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/tokenizer.h"

namespace qilin::tokenizer_internal {

// Byte-level BPE ("gpt2") with the pre-tokenizer named `pre` (tokenizer.ggml.pre or override).
Result<std::unique_ptr<Tokenizer>> make_bpe_tokenizer(const GgufFile& file, const std::string& pre);
// SentencePiece-style BPE ("llama"): merges by score, U+2581 for spaces, byte fallback.
Result<std::unique_ptr<Tokenizer>> make_spm_tokenizer(const GgufFile& file);

// The merge step both BPE and SentencePiece run over their doubly linked list of symbols
// (start, len, prev, next; len 0 marks a symbol absorbed): symbol r, the right neighbour of l,
// joins l, then the two pairs that now border l are offered to try_queue(left, right).
template <typename Symbol, typename TryQueue>
void merge_right_into(std::vector<Symbol>& syms, int32_t l, int32_t r, TryQueue&& try_queue) {
  Symbol& left = syms[l];
  Symbol& right = syms[r];
  left.len += right.len;
  right.len = 0;
  left.next = right.next;
  if (right.next >= 0) syms[right.next].prev = l;
  try_queue(left.prev, l);
  try_queue(l, left.next);
}

}  // namespace qilin::tokenizer_internal
