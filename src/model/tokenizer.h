// Tokenizer built from GGUF metadata: byte-level BPE (tokenizer.ggml.model = "gpt2", with the
// pre-tokenizer that tokenizer.ggml.pre names) and SentencePiece-style BPE ("llama", byte
// fallback). Token ids match llama.cpp's for the same file.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "formats/gguf.h"
#include "qilin/status.h"

namespace qilin {

enum class TokenType : int32_t {
  Undefined = 0,
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
};

class Tokenizer {
 public:
  static Result<std::unique_ptr<Tokenizer>> from_gguf(const GgufFile& file);
  virtual ~Tokenizer() = default;

  // add_special: prepend BOS (and append EOS) when the file's add_bos/add_eos flags say so.
  // parse_special: text such as "<|im_start|>" becomes the special token instead of plain text.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special,
                                      bool parse_special) const = 0;
  // The bytes a token stands for (may be a partial UTF-8 sequence). Control tokens give ""
  // unless render_special, which gives their text.
  virtual std::string token_to_piece(int32_t id, bool render_special = false) const = 0;
  std::string decode(const std::vector<int32_t>& ids, bool render_special = false) const;

  int32_t n_vocab() const { return static_cast<int32_t>(tokens_.size()); }
  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  // End of generation: EOS, EOT, <|im_end|>-like tokens the file marks or names.
  bool is_eog(int32_t id) const;
  // Exact lookup of a token's text; -1 if absent.
  int32_t find_token(std::string_view text) const;
  const std::string& token_text(int32_t id) const { return tokens_[id]; }
  TokenType token_type(int32_t id) const { return types_[id]; }

 protected:
  std::vector<std::string> tokens_;
  std::vector<TokenType> types_;
  std::vector<int32_t> eog_ids_;
  int32_t bos_ = -1;
  int32_t eos_ = -1;
  bool add_bos_ = false;
  bool add_eos_ = false;
};

}  // namespace qilin
