// Tokenizer: what both vocabulary kinds share. Loading the token list and special ids, the
// end-of-generation set, splitting input at special tokens, and decoding. The rules follow
// llama.cpp's vocabulary loader so that ids and EOG decisions agree with it on the same file.
#include "model/tokenizer.h"

#include <algorithm>
#include <cstdint>

#include "core/printable.h"
#include "model/tokenizer_impl.h"

namespace qilin {

Result<std::unique_ptr<Tokenizer>> Tokenizer::from_gguf(const GgufFile& file) {
  return from_gguf(file, "");
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::from_gguf(const GgufFile& file,
                                                        const std::string& pre_override) {
  auto model = file.get_string("tokenizer.ggml.model");
  if (!model) return model.status();
  if (*model == "gpt2") {
    std::string pre = pre_override;
    if (pre.empty() && file.find("tokenizer.ggml.pre")) {
      auto p = file.get_string("tokenizer.ggml.pre");
      if (!p) return p.status();
      pre = *p;
    }
    return tokenizer_internal::make_bpe_tokenizer(file, pre);
  }
  if (*model == "llama") return tokenizer_internal::make_spm_tokenizer(file);
  return errorf("tokenizer.ggml.model: unsupported tokenizer '%s' (supported: gpt2, llama)",
                printable(*model, 80).c_str());
}

namespace {

// Token texts llama.cpp treats as end of generation (llama-vocab.cpp, EOG auto-detection).
// clang-format off
const char* const kEogNames[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~["};
// clang-format on

// Names that llama.cpp uses to find special ids the file does not give. Each list is searched
// only when the matching tokenizer.ggml.*_token_id key is absent (or out of range).
enum SpecialRole { kEot, kEom, kFimPre, kFimSuf, kFimMid, kFimPad, kFimRep, kFimSep, kNumRoles };
struct NamedSpecial {
  SpecialRole role;
  const char* key;
  std::vector<const char*> names;
};
const std::vector<NamedSpecial>& named_specials() {
  static const std::vector<NamedSpecial> table = {
      {kEot,
       "tokenizer.ggml.eot_token_id",
       {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
        "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"}},
      {kEom, "tokenizer.ggml.eom_token_id", {"<|eom_id|>"}},
      {kFimPre,
       "tokenizer.ggml.fim_pre_token_id",
       {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
        "<|code_prefix|>", "<|prefix|>"}},
      {kFimSuf,
       "tokenizer.ggml.fim_suf_token_id",
       {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
        "<|code_suffix|>", "<|suffix|>"}},
      {kFimMid,
       "tokenizer.ggml.fim_mid_token_id",
       {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
        "<|code_middle|>", "<|middle|>"}},
      {kFimPad,
       "tokenizer.ggml.fim_pad_token_id",
       {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"}},
      {kFimRep,
       "tokenizer.ggml.fim_rep_token_id",
       {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"}},
      {kFimSep, "tokenizer.ggml.fim_sep_token_id", {"<|file_sep|>"}},
  };
  return table;
}

// Reads an optional token-id key. Absent: keeps `id`. Out of range: keeps `id` (llama.cpp
// warns and uses its default). Present with a non-integer type: an error naming the key.
Status read_token_id(const GgufFile& file, const char* key, int32_t n_vocab, int32_t& id) {
  if (!file.find(key)) return Status::ok();
  auto v = file.get_uint(key);
  if (!v) return v.status();
  if (*v < static_cast<uint64_t>(n_vocab)) id = static_cast<int32_t>(*v);
  return Status::ok();
}

// Reads an optional bool key; absent keeps `flag` (the caller has set the default).
Status read_flag(const GgufFile& file, const char* key, bool& flag) {
  if (!file.find(key)) return Status::ok();
  auto b = file.get_bool(key);
  if (!b) return b.status();
  flag = *b;
  return Status::ok();
}

}  // namespace

Status Tokenizer::load_vocab(const GgufFile& file, bool is_spm) {
  auto list = file.get_array("tokenizer.ggml.tokens", GgufType::STRING);
  if (!list) return list.status();
  const std::vector<GgufValue>& texts = (*list)->array;
  if (texts.empty()) return errorf("tokenizer.ggml.tokens: the token list is empty");
  if (texts.size() > static_cast<size_t>(INT32_MAX)) {
    return errorf("tokenizer.ggml.tokens: %zu tokens is too many", texts.size());
  }
  const auto n = static_cast<int32_t>(texts.size());

  const GgufValue* type_list = nullptr;
  if (file.find("tokenizer.ggml.token_type")) {
    auto t = file.get_array("tokenizer.ggml.token_type", GgufType::INT32);
    if (!t) return t.status();
    type_list = *t;
    if (type_list->array.size() < texts.size()) {
      return errorf("tokenizer.ggml.token_type: %zu entries for %d tokens", type_list->array.size(),
                    n);
    }
  }

  tokens_.resize(n);
  types_.assign(n, TokenType::Normal);
  token_to_id_.clear();
  token_to_id_.reserve(n);
  for (int32_t i = 0; i < n; ++i) {
    tokens_[i] = texts[i].str;
    // An empty text would match everywhere when splitting at special tokens.
    if (tokens_[i].empty()) tokens_[i] = "[EMPTY_" + std::to_string(i) + "]";
    token_to_id_[tokens_[i]] = i;  // a later duplicate wins, as in llama.cpp
    if (type_list) {
      const int64_t t = type_list->array[i].i;
      types_[i] = (t >= 0 && t <= 6) ? static_cast<TokenType>(t) : TokenType::Undefined;
    }
  }

  // Defaults before the file's keys, as llama.cpp has them (id 11 is GPT-2's quirk).
  bos_ = is_spm ? 1 : 11;
  eos_ = is_spm ? 2 : 11;
  unk_ = is_spm ? 0 : -1;
  eot_ = -1;
  for (int32_t* id : {&bos_, &eos_, &unk_}) {
    if (*id >= n) *id = -1;
  }
  QILIN_TRY(read_token_id(file, "tokenizer.ggml.bos_token_id", n, bos_));
  QILIN_TRY(read_token_id(file, "tokenizer.ggml.eos_token_id", n, eos_));
  QILIN_TRY(read_token_id(file, "tokenizer.ggml.unknown_token_id", n, unk_));
  QILIN_TRY(read_flag(file, "tokenizer.ggml.add_bos_token", add_bos_));
  QILIN_TRY(read_flag(file, "tokenizer.ggml.add_eos_token", add_eos_));

  // Special ids from keys, else by name (lowest id among matches; llama.cpp takes whichever
  // its hash map yields first). A token found by name is treated as control from then on.
  auto is_control = [&](int32_t id) { return types_[id] == TokenType::Control; };
  int32_t role_id[kNumRoles];
  for (const NamedSpecial& special : named_specials()) {
    int32_t id = -1;
    QILIN_TRY(read_token_id(file, special.key, n, id));
    if (id < 0) {
      for (const char* name : special.names) {
        const int32_t t = find_token(name);
        if (t >= 0 && (id < 0 || t < id)) id = t;
      }
      if (id >= 0 && !is_control(id)) types_[id] = TokenType::Control;
    }
    role_id[special.role] = id;
  }
  eot_ = role_id[kEot];

  // End of generation: FIM pad/repo/separator, tokens with EOG names, then EOS, EOT and EOM.
  std::vector<int32_t> eog;
  for (SpecialRole role : {kFimPad, kFimRep, kFimSep}) {
    if (role_id[role] >= 0) eog.push_back(role_id[role]);
  }
  for (const char* name : kEogNames) {
    const int32_t t = find_token(name);
    if (t < 0) continue;
    eog.push_back(t);
    if (!is_control(t)) types_[t] = TokenType::Control;
  }
  for (int32_t id : {eos_, eot_, role_id[kEom]}) {
    if (id >= 0) eog.push_back(id);
  }
  std::sort(eog.begin(), eog.end());
  eog.erase(std::unique(eog.begin(), eog.end()), eog.end());
  auto eog_has = [&](const char* name) {
    const int32_t t = find_token(name);
    return t >= 0 && std::binary_search(eog.begin(), eog.end(), t) ? t : -1;
  };
  // gpt-oss / solar-open: "<|end|>" ends a message, not the generation, when these exist.
  const int32_t end_id = eog_has("<|end|>");
  const bool has_call = eog_has("<|call|>") >= 0 || eog_has("<|calls|>") >= 0;
  if (end_id >= 0 && has_call && (eog_has("<|return|>") >= 0 || eog_has("<|flush|>") >= 0)) {
    eog.erase(std::find(eog.begin(), eog.end(), end_id));
    types_[end_id] = TokenType::UserDefined;
  }
  // Gemma-4 / PLaMo: "</s>" is an ordinary token there.
  const int32_t s_id = eog_has("</s>");
  if (s_id >= 0 && (eog_has("<|tool_response>") >= 0 || eog_has("<|plamo:eos|>") >= 0)) {
    eog.erase(std::find(eog.begin(), eog.end(), s_id));
    types_[s_id] = TokenType::Normal;
  }
  // gpt-oss: these structural tokens are always rendered.
  for (const char* name : {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"}) {
    const int32_t t = find_token(name);
    if (t >= 0) types_[t] = TokenType::UserDefined;
  }
  eog_ids_ = std::move(eog);

  // Tokens that partition_special looks for, longest first so that "<|im_start|>" wins over a
  // shorter token that is its prefix. Equal lengths keep id order (deterministic).
  special_ids_.clear();
  for (int32_t i = 0; i < n; ++i) {
    const TokenType t = types_[i];
    if (t == TokenType::Control || t == TokenType::UserDefined || t == TokenType::Unknown) {
      special_ids_.push_back(i);
    }
  }
  std::sort(special_ids_.begin(), special_ids_.end(), [&](int32_t a, int32_t b) {
    const size_t len_a = tokens_[a].size();
    const size_t len_b = tokens_[b].size();
    return len_a != len_b ? len_a > len_b : a < b;
  });
  return Status::ok();
}

std::vector<Tokenizer::Fragment> Tokenizer::partition_special(std::string_view text,
                                                              bool parse_special) const {
  std::vector<Fragment> frags;
  if (text.empty()) return frags;
  frags.push_back({-1, 0, text.size()});
  std::vector<Fragment> next;
  // One token at a time over all remaining raw text (not leftmost-longest over all tokens):
  // this is the order llama.cpp uses, and it decides overlapping candidates.
  for (int32_t id : special_ids_) {
    const TokenType type = types_[id];
    // User-defined tokens are split out even without parse_special (HF tokenizers do so).
    if (!parse_special && (type == TokenType::Control || type == TokenType::Unknown)) continue;
    const std::string& tok = tokens_[id];
    next.clear();
    bool changed = false;
    for (const Fragment& f : frags) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      const std::string_view raw = text.substr(f.offset, f.length);
      size_t pos = 0;
      for (size_t m = raw.find(tok); m != std::string_view::npos; m = raw.find(tok, pos)) {
        if (m > pos) next.push_back({-1, f.offset + pos, m - pos});
        next.push_back({id, f.offset + m, tok.size()});
        pos = m + tok.size();
        changed = true;
      }
      if (pos < raw.size()) next.push_back({-1, f.offset + pos, raw.size() - pos});
    }
    if (changed) frags.swap(next);
  }
  return frags;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool render_special) const {
  std::string out;
  // SentencePiece encode() put a space in front of the text; drop it from the first piece.
  bool strip_space = add_space_prefix_;
  for (int32_t id : ids) {
    std::string piece = token_to_piece(id, render_special);
    if (piece.empty()) continue;
    if (strip_space && piece[0] == ' ') piece.erase(0, 1);
    strip_space = false;
    out += piece;
  }
  return out;
}

bool Tokenizer::is_eog(int32_t id) const {
  return std::binary_search(eog_ids_.begin(), eog_ids_.end(), id);
}

int32_t Tokenizer::find_token(std::string_view text) const {
  auto it = token_to_id_.find(text);
  return it == token_to_id_.end() ? -1 : it->second;
}

}  // namespace qilin
