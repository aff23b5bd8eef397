// Pre-tokenizers for byte-level BPE: the regex lists that llama.cpp applies per
// tokenizer.ggml.pre value, run with PCRE2 (UTF + Unicode properties, JIT when available).
// Each regex splits every piece the previous ones produced; text between matches is kept as
// its own piece, so the pieces always tile the input.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "qilin/status.h"

namespace qilin::tokenizer_internal {

class PreTokenizer {
 public:
  // `name` is a tokenizer.ggml.pre value ("smollm", "llama-bpe", "gpt-2", "default", ...).
  // Unknown names are an error that names the value.
  static Result<std::unique_ptr<PreTokenizer>> create(const std::string& name);
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  // Splits valid UTF-8 `text` into words, as [begin, end) byte ranges in order.
  void split(std::string_view text, std::vector<std::pair<size_t, size_t>>& words) const;

  // Llama-3 style: a word that is itself a token is emitted without running the merges.
  bool ignore_merges() const { return ignore_merges_; }
  // llama.cpp's add_bos default for this family (the file's add_bos_token key overrides it).
  bool add_bos_default() const { return add_bos_default_; }

 private:
  struct Regex;
  PreTokenizer() = default;
  std::vector<std::unique_ptr<Regex>> regexes_;
  bool ignore_merges_ = false;
  bool add_bos_default_ = false;
};

}  // namespace qilin::tokenizer_internal
