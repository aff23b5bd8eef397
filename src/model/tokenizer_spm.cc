// SentencePiece-style BPE (tokenizer.ggml.model = "llama"): spaces become U+2581, a space is
// put in front of each raw text run, adjacent symbols merge into the vocabulary piece with the
// highest score, and characters left without a piece fall back to <0xXX> byte tokens.
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <queue>

#include "model/tokenizer_impl.h"
#include "model/tokenizer_unicode.h"

namespace qilin::tokenizer_internal {

namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

class SpmTokenizer final : public Tokenizer {
 public:
  static Result<std::unique_ptr<Tokenizer>> create(const GgufFile& file);

  std::vector<int32_t> encode(std::string_view text, bool add_special,
                              bool parse_special) const override;
  std::string token_to_piece(int32_t id, bool render_special) const override;

 private:
  // Bytes [start, start + len) of the escaped text; len == 0 once merged into its left.
  struct Symbol {
    uint32_t start;
    uint32_t len;
    int32_t prev;
    int32_t next;
  };
  struct Candidate {
    float score;
    int32_t left;
    int32_t right;
    uint32_t size;  // bytes of the merged text when queued: a mismatch later means stale
  };
  // Highest score first; equal scores leftmost first (llama.cpp's order).
  struct CandidateAfter {
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };

  Status load_scores(const GgufFile& file);
  void encode_text(std::string_view escaped, std::vector<int32_t>& out) const;

  std::vector<float> scores_;
  std::array<int32_t, 256> byte_token_{};  // <0xXX> token (or the raw byte's token), -1 if none
};

Result<std::unique_ptr<Tokenizer>> SpmTokenizer::create(const GgufFile& file) {
  std::unique_ptr<SpmTokenizer> tok(new SpmTokenizer());
  tok->add_bos_ = true;  // SentencePiece defaults; the file's keys override them
  tok->add_eos_ = false;
  tok->add_space_prefix_ = true;
  QILIN_TRY(tok->load_vocab(file, /*is_spm=*/true));
  if (file.find("tokenizer.ggml.add_space_prefix")) {
    auto b = file.get_bool("tokenizer.ggml.add_space_prefix");
    if (!b) return b.status();
    tok->add_space_prefix_ = *b;
  }
  QILIN_TRY(tok->load_scores(file));
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    int32_t id = tok->find_token(name);
    const char raw = static_cast<char>(b);
    if (id < 0) id = tok->find_token(std::string_view(&raw, 1));
    tok->byte_token_[b] = id;
  }
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

Status SpmTokenizer::load_scores(const GgufFile& file) {
  scores_.assign(tokens_.size(), 0.0f);
  const GgufValue* v = file.find("tokenizer.ggml.scores");
  if (!v) return Status::ok();  // llama.cpp scores every token 0 then
  if (v->type != GgufType::ARRAY ||
      (v->elem_type != GgufType::FLOAT32 && v->elem_type != GgufType::INT32)) {
    return errorf("tokenizer.ggml.scores: expected an array of FLOAT32 or INT32, found %s",
                  gguf_type_name(v->type == GgufType::ARRAY ? v->elem_type : v->type));
  }
  if (v->array.size() < tokens_.size()) {
    return errorf("tokenizer.ggml.scores: %zu entries for %zu tokens", v->array.size(),
                  tokens_.size());
  }
  const bool is_float = v->elem_type == GgufType::FLOAT32;
  for (size_t i = 0; i < tokens_.size(); ++i) {
    scores_[i] = is_float ? static_cast<float>(v->array[i].f) : static_cast<float>(v->array[i].i);
  }
  return Status::ok();
}

std::vector<int32_t> SpmTokenizer::encode(std::string_view text, bool add_special,
                                          bool parse_special) const {
  std::vector<int32_t> out;
  if (add_special && add_bos_ && bos_ >= 0) out.push_back(bos_);
  // The space prefix goes on the first raw run and on each run that follows a special token,
  // as in llama.cpp (which mirrors the original SentencePiece encoder).
  bool prev_special = true;
  std::string escaped;
  for (const Fragment& f : partition_special(text, parse_special)) {
    if (f.token >= 0) {
      out.push_back(f.token);
      prev_special = true;
      continue;
    }
    escaped.clear();
    if (add_space_prefix_ && prev_special) escaped += kSpaceMark;
    for (char c : text.substr(f.offset, f.length)) {
      if (c == ' ') {
        escaped += kSpaceMark;
      } else {
        escaped.push_back(c);
      }
    }
    encode_text(escaped, out);
    prev_special = false;
  }
  if (add_special && add_eos_ && eos_ >= 0) out.push_back(eos_);
  return out;
}

void SpmTokenizer::encode_text(std::string_view text, std::vector<int32_t>& out) const {
  // Symbols are UTF-8 characters judged by their lead byte only, so malformed input still
  // splits (and then falls back to byte tokens) exactly as in llama.cpp.
  std::vector<Symbol> syms;
  syms.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const size_t len =
        std::min(utf8_len_from_lead(static_cast<uint8_t>(text[pos])), text.size() - pos);
    const auto idx = static_cast<int32_t>(syms.size());
    syms.push_back(Symbol{static_cast<uint32_t>(pos), static_cast<uint32_t>(len), idx - 1,
                          pos + len < text.size() ? idx + 1 : -1});
    pos += len;
  }

  std::priority_queue<Candidate, std::vector<Candidate>, CandidateAfter> queue;
  auto try_queue = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const uint32_t size = syms[left].len + syms[right].len;
    const int32_t id = find_token(text.substr(syms[left].start, size));
    if (id < 0) return;
    queue.push(Candidate{scores_[id], left, right, size});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) try_queue(i, i + 1);

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = syms[c.left];
    Symbol& right = syms[c.right];
    if (left.len == 0 || right.len == 0 || left.len + right.len != c.size) continue;
    merge_right_into(syms, c.left, c.right, try_queue);
  }

  for (const Symbol& s : syms) {
    if (s.len == 0) continue;
    const std::string_view piece = text.substr(s.start, s.len);
    const int32_t id = find_token(piece);
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    // Merges only ever form tokens, so this is a single character the vocabulary lacks.
    for (unsigned char b : piece) {
      // NOTE: llama.cpp throws when a byte has no token at all; we emit <unk> instead.
      const int32_t t = byte_token_[b] >= 0 ? byte_token_[b] : unk_;
      if (t >= 0) out.push_back(t);
    }
  }
}

std::string SpmTokenizer::token_to_piece(int32_t id, bool render_special) const {
  if (id < 0 || id >= n_vocab()) return "";
  const std::string& text = tokens_[id];
  switch (types_[id]) {
    case TokenType::Control:
    case TokenType::Unknown:
      return render_special ? text : "";
    case TokenType::UserDefined:
      return text;
    case TokenType::Normal: {
      std::string out;
      out.reserve(text.size());
      for (size_t pos = 0; pos < text.size();) {
        if (text.compare(pos, kSpaceMark.size(), kSpaceMark) == 0) {
          out.push_back(' ');
          pos += kSpaceMark.size();
        } else {
          out.push_back(text[pos++]);
        }
      }
      return out;
    }
    case TokenType::Byte:
      // "<0xXX>": the hex digits after "<0x" (strtol stops at '>').
      if (text.size() < 4) return "";
      return std::string(1, static_cast<char>(std::strtol(text.c_str() + 3, nullptr, 16)));
    case TokenType::Unused:
    case TokenType::Undefined:
      break;
  }
  return "";
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> make_spm_tokenizer(const GgufFile& file) {
  return SpmTokenizer::create(file);
}

}  // namespace qilin::tokenizer_internal
