// Tokenizer built from GGUF metadata: byte-level BPE (tokenizer.ggml.model = "gpt2", with the
// pre-tokenizer that tokenizer.ggml.pre names) and SentencePiece-style BPE ("llama", byte
// fallback). Token ids match llama.cpp's for the same file. A loaded Tokenizer is immutable:
// its const methods may be called from several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
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
  // Same, but with tokenizer.ggml.pre replaced by `pre_override` when it is not empty (tests
  // run one vocabulary through several pre-tokenizers this way).
  static Result<std::unique_ptr<Tokenizer>> from_gguf(const GgufFile& file,
                                                      const std::string& pre_override);
  virtual ~Tokenizer() = default;

  // add_special: prepend BOS (and append EOS) when the file's add_bos/add_eos flags say so.
  // parse_special: text such as "<|im_start|>" becomes the special token instead of plain text.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special,
                                      bool parse_special) const = 0;
  // The bytes a token stands for (may be a partial UTF-8 sequence). Control tokens give ""
  // unless render_special, which gives their text.
  virtual std::string token_to_piece(int32_t id, bool render_special = false) const = 0;
  // The pieces joined. For SentencePiece vocabularies the space that encode() put in front of
  // the text is dropped again, so decode(encode(s)) == s for valid UTF-8 s.
  std::string decode(const std::vector<int32_t>& ids, bool render_special = false) const;

  int32_t n_vocab() const { return static_cast<int32_t>(tokens_.size()); }
  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  int32_t eot() const { return eot_; }  // -1 if the vocabulary has none
  bool add_bos() const { return add_bos_; }
  bool add_eos() const { return add_eos_; }
  // End of generation: EOS, EOT, <|im_end|>-like tokens the file marks or names.
  bool is_eog(int32_t id) const;
  const std::vector<int32_t>& eog_ids() const { return eog_ids_; }  // sorted
  // Exact lookup of a token's text; -1 if absent.
  int32_t find_token(std::string_view text) const;
  const std::string& token_text(int32_t id) const { return tokens_[id]; }
  TokenType token_type(int32_t id) const { return types_[id]; }

 protected:
  // A piece of the input after special-token splitting: raw text [offset, offset + length)
  // when token < 0, else that special token.
  struct Fragment {
    int32_t token;
    size_t offset;
    size_t length;
  };

  // Reads tokens, types and special ids, and derives the EOG set and special-token list, as
  // llama.cpp's vocabulary loader does. `is_spm` selects the SentencePiece defaults.
  Status load_vocab(const GgufFile& file, bool is_spm);
  // Splits `text` at occurrences of special tokens (control and unknown only if parse_special;
  // user-defined always), longest token first, as llama.cpp's tokenizer_st_partition does.
  std::vector<Fragment> partition_special(std::string_view text, bool parse_special) const;

  // Hashing by string_view so lookups of substrings do not allocate.
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using TokenMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

  std::vector<std::string> tokens_;
  std::vector<TokenType> types_;
  TokenMap token_to_id_;
  std::vector<int32_t> special_ids_;  // control, user-defined, unknown; longest text first
  std::vector<int32_t> eog_ids_;
  int32_t bos_ = -1;
  int32_t eos_ = -1;
  int32_t eot_ = -1;
  int32_t unk_ = -1;
  bool add_bos_ = false;
  bool add_eos_ = false;
  bool add_space_prefix_ = false;  // SentencePiece: encode() prefixes raw text with a space
};

}  // namespace qilin
