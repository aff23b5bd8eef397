// Byte-level BPE (tokenizer.ggml.model = "gpt2"): regex pre-tokenization, GPT-2 byte mapping,
// then merges by rank within each word. Merge ranks are keyed by (left id, right id), and the
// merge loop is a priority queue over a linked list of symbols, so a word of n bytes costs
// O(n log n) however long it is.
#include <array>
#include <cstdio>
#include <map>
#include <queue>
#include <unordered_map>
#include <utility>

#include "model/tokenizer_impl.h"
#include "model/tokenizer_pretokenizer.h"
#include "model/tokenizer_unicode.h"

namespace qilin::tokenizer_internal {

namespace {

class BpeTokenizer final : public Tokenizer {
 public:
  static Result<std::unique_ptr<Tokenizer>> create(const GgufFile& file, const std::string& pre);

  std::vector<int32_t> encode(std::string_view text, bool add_special,
                              bool parse_special) const override;
  std::string token_to_piece(int32_t id, bool render_special) const override;

 private:
  struct Merge {
    int32_t rank;
    int32_t result;  // token id of the merged text, -1 if the vocabulary lacks it
  };
  // A run of the word's raw bytes [start, start + len); len == 0 once merged into its left.
  struct Symbol {
    int32_t id;  // token id of the run's GPT-2 text, -1 if not a token
    uint32_t start;
    uint32_t len;
    int32_t prev;
    int32_t next;
  };
  struct Candidate {
    int32_t rank;
    int32_t left;
    int32_t right;
    uint32_t left_len;  // lengths when queued: a mismatch later means the pair is stale
    uint32_t right_len;
    int32_t result;
  };
  // Lowest rank first; equal ranks leftmost first (llama.cpp's order).
  struct CandidateAfter {
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    }
  };
  using Queue = std::priority_queue<Candidate, std::vector<Candidate>, CandidateAfter>;

  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  // GPT-2 text of raw bytes: each byte becomes one printable code point.
  static std::string byte_encode(std::string_view raw);

  Status load_merges(const GgufFile& file);
  void encode_text(std::string_view text, std::vector<int32_t>& out) const;
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  bool find_merge(std::string_view word, const Symbol& left, const Symbol& right,
                  Merge& merge) const;

  std::unique_ptr<PreTokenizer> pre_;
  std::unordered_map<uint64_t, Merge> merges_;
  // Merges whose halves are not both tokens: only reachable through odd vocabularies, kept so
  // that such files still tokenize exactly like llama.cpp. Usually empty.
  std::map<std::pair<std::string, std::string>, int32_t> text_merges_;
  std::array<int32_t, 256> byte_token_{};  // token of each single byte's GPT-2 character
  std::vector<std::string> pieces_;        // decoded bytes of every token
};

std::string BpeTokenizer::byte_encode(std::string_view raw) {
  const auto& map = gpt2_byte_to_cp();
  std::string out;
  out.reserve(raw.size() * 2);
  for (unsigned char c : raw) append_utf8(map[c], out);
  return out;
}

// llama.cpp's llama_decode_text: GPT-2 characters back to bytes. A code point outside the
// mapping is rendered as a marker that names it, rather than dropped.
// NOTE: llama.cpp's marker also repeats the whole token text, which makes a token of N such
// code points cost O(N^2) bytes (a 300 KB file exhausted memory at load); ours names only the
// code point, so the piece is at most 20 bytes per code point.
std::string gpt2_decode(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (uint32_t cp : decode_utf8_lenient(text)) {
    const int b = gpt2_cp_to_byte(cp);
    if (b >= 0) {
      out.push_back(static_cast<char>(b));
      continue;
    }
    std::string utf8;
    append_utf8(cp, utf8);
    out += "[UNK_BYTE_0x";
    for (unsigned char c : utf8) {
      char hex[3];
      std::snprintf(hex, sizeof(hex), "%02x", c);
      out += hex;
    }
    out += ']';
  }
  return out;
}

Result<std::unique_ptr<Tokenizer>> BpeTokenizer::create(const GgufFile& file,
                                                        const std::string& pre) {
  std::unique_ptr<BpeTokenizer> tok(new BpeTokenizer());
  auto pre_tok = PreTokenizer::create(pre);
  if (!pre_tok) return pre_tok.status();
  tok->pre_ = std::move(*pre_tok);
  tok->add_bos_ = tok->pre_->add_bos_default();
  tok->add_eos_ = false;
  QILIN_TRY(tok->load_vocab(file, /*is_spm=*/false));
  QILIN_TRY(tok->load_merges(file));

  const auto& map = gpt2_byte_to_cp();
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    append_utf8(map[b], ch);
    tok->byte_token_[b] = tok->find_token(ch);
  }
  tok->pieces_.resize(tok->tokens_.size());
  for (size_t i = 0; i < tok->tokens_.size(); ++i) {
    const TokenType t = tok->types_[i];
    if (t == TokenType::Normal || t == TokenType::Byte) {
      tok->pieces_[i] = gpt2_decode(tok->tokens_[i]);
    } else if (t == TokenType::Control || t == TokenType::Unknown || t == TokenType::UserDefined) {
      tok->pieces_[i] = tok->tokens_[i];  // special tokens render as their text
    }                                     // Unused and Undefined tokens render as nothing
  }
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

Status BpeTokenizer::load_merges(const GgufFile& file) {
  auto list = file.get_array("tokenizer.ggml.merges", GgufType::STRING);
  if (!list) return list.status();
  const std::vector<GgufValue>& merges = (*list)->array;
  merges_.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string& m = merges[i].str;
    // "left right"; searching from index 1 lets a left half that is itself " " work.
    const size_t space = m.find(' ', 1);
    if (space == std::string::npos) continue;  // malformed: llama.cpp's entry never matches
    const std::string left = m.substr(0, space);
    const std::string right = m.substr(space + 1);
    const auto rank = static_cast<int32_t>(i);
    const int32_t l = find_token(left);
    const int32_t r = find_token(right);
    if (l >= 0 && r >= 0) {
      merges_.emplace(pair_key(l, r), Merge{rank, find_token(left + right)});  // first wins
    } else {
      text_merges_.emplace(std::make_pair(left, right), rank);
    }
  }
  return Status::ok();
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool add_special,
                                          bool parse_special) const {
  std::vector<int32_t> out;
  if (add_special && add_bos_ && bos_ >= 0) out.push_back(bos_);
  for (const Fragment& f : partition_special(text, parse_special)) {
    if (f.token >= 0) {
      out.push_back(f.token);
    } else {
      encode_text(text.substr(f.offset, f.length), out);
    }
  }
  if (add_special && add_eos_ && eos_ >= 0) out.push_back(eos_);
  return out;
}

void BpeTokenizer::encode_text(std::string_view text, std::vector<int32_t>& out) const {
  // llama.cpp pre-tokenizes code points, not bytes: malformed UTF-8 turns into U+FFFD here and
  // the words are re-encoded from the code points.
  std::string norm;
  norm.reserve(text.size());
  bool has_surrogate = false;
  for (uint32_t cp : decode_utf8_lenient(text)) {
    has_surrogate |= (cp >= 0xD800 && cp <= 0xDFFF);
    append_utf8(cp, norm);
  }
  // PCRE2 needs valid UTF-8. Surrogates (three bytes, like U+FFFD) are swapped for U+FFFD in
  // the regex subject only, so byte offsets line up and the words keep the original bytes.
  std::string subject;
  if (has_surrogate) {
    for (uint32_t cp : decode_utf8_lenient(norm)) {
      append_utf8((cp >= 0xD800 && cp <= 0xDFFF) ? 0xFFFD : cp, subject);
    }
  }
  std::vector<std::pair<size_t, size_t>> words;
  pre_->split(has_surrogate ? subject : norm, words);
  for (const auto& [begin, end] : words) {
    encode_word(std::string_view(norm).substr(begin, end - begin), out);
  }
}

bool BpeTokenizer::find_merge(std::string_view word, const Symbol& left, const Symbol& right,
                              Merge& merge) const {
  if (left.id >= 0 && right.id >= 0) {
    auto it = merges_.find(pair_key(left.id, right.id));
    if (it == merges_.end()) return false;
    merge = it->second;
    return true;
  }
  if (text_merges_.empty()) return false;
  std::string l = byte_encode(word.substr(left.start, left.len));
  std::string r = byte_encode(word.substr(right.start, right.len));
  auto it = text_merges_.find(std::make_pair(l, r));
  if (it == text_merges_.end()) return false;
  merge = Merge{it->second, find_token(l + r)};
  return true;
}

void BpeTokenizer::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (pre_->ignore_merges()) {
    const int32_t whole = find_token(byte_encode(word));
    if (whole >= 0) {
      out.push_back(whole);
      return;
    }
  }

  std::vector<Symbol> syms(word.size());
  for (size_t i = 0; i < word.size(); ++i) {
    const int32_t n = static_cast<int32_t>(word.size());
    const auto idx = static_cast<int32_t>(i);
    syms[i] = Symbol{byte_token_[static_cast<unsigned char>(word[i])], static_cast<uint32_t>(i), 1,
                     idx - 1, idx + 1 < n ? idx + 1 : -1};
  }
  Queue queue;
  auto try_queue = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    Merge m;
    if (!find_merge(word, syms[left], syms[right], m)) return;
    queue.push(Candidate{m.rank, left, right, syms[left].len, syms[right].len, m.result});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) try_queue(i, i + 1);

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = syms[c.left];
    Symbol& right = syms[c.right];
    // A symbol only grows by absorbing its right neighbour, so equal lengths mean the pair
    // still spells the text it was queued for.
    if (left.len == 0 || right.len == 0 || left.len != c.left_len || right.len != c.right_len) {
      continue;
    }
    left.id = c.result;
    merge_right_into(syms, c.left, c.right, try_queue);
  }

  for (const Symbol& s : syms) {
    if (s.len == 0) continue;
    if (s.id >= 0) {
      out.push_back(s.id);
      continue;
    }
    // Not a token: llama.cpp falls back to single-byte tokens of the GPT-2 text's bytes (each
    // pushed only if it exists). Reached only with vocabularies missing merge results.
    for (char c : byte_encode(word.substr(s.start, s.len))) {
      const int32_t t = find_token(std::string_view(&c, 1));
      if (t >= 0) out.push_back(t);
    }
  }
}

std::string BpeTokenizer::token_to_piece(int32_t id, bool render_special) const {
  if (id < 0 || id >= n_vocab()) return "";
  const TokenType t = types_[id];
  if (!render_special && (t == TokenType::Control || t == TokenType::Unknown)) return "";
  return pieces_[id];
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> make_bpe_tokenizer(const GgufFile& file,
                                                      const std::string& pre) {
  return BpeTokenizer::create(file, pre);
}

}  // namespace qilin::tokenizer_internal
