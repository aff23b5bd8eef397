// Regex pre-tokenizers for byte-level BPE; see tokenizer_pretokenizer.h.
//
// The patterns follow llama.cpp's lists (llama-vocab.cpp), with one systematic change: `\s` is
// spelled out as the Unicode White_Space set that llama.cpp's own splitter uses. PCRE2's `\s`
// under UCP leaves out U+0085, which would split "a\u0085b" differently.
#include "model/tokenizer_pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstring>

#include "core/assert.h"
#include "core/printable.h"

namespace qilin::tokenizer_internal {

namespace {

// Unicode White_Space, for use inside a character class.
#define QILIN_WS                                                                                 \
  "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}" \
  "\\x{3000}"

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
constexpr const char* kGpt2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" QILIN_WS
                              "\\p{L}\\p{N}]+|[" QILIN_WS "]+(?![^" QILIN_WS "])";

// Llama-3, with the case-insensitive contractions written out as llama.cpp does (a caseless
// PCRE2 match would also accept e.g. U+017F for 's').
constexpr const char* kLlama3 =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
    "\\p{N}{1,3}| ?[^" QILIN_WS "\\p{L}\\p{N}]+[\\r\\n]*|[" QILIN_WS "]*[\\r\\n]+|[" QILIN_WS
    "]+(?![^" QILIN_WS "])|[" QILIN_WS "]+";

#undef QILIN_WS

struct PreSpec {
  std::vector<const char*> names;
  std::vector<const char*> regexes;
  bool ignore_merges;
  bool add_bos;
};

// Only families whose whole behaviour (regexes and flags) we reproduce are listed; anything
// else is refused rather than tokenized slightly wrong.
const std::vector<PreSpec>& pre_specs() {
  static const std::vector<PreSpec> specs = {
      // Digits are split one by one first, then the GPT-2 pattern.
      {{"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"},
       {"\\p{N}", kGpt2},
       false,
       false},
      {{"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"}, {kLlama3}, true, true},
      {{"dbrx", "smaug-bpe"}, {kLlama3}, false, false},
      // "gpt2" is not a name llama.cpp knows; accepted as an obvious alias of "gpt-2".
      {{"gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais"}, {kGpt2}, false, false},
      // llama.cpp's fallback, also used when tokenizer.ggml.pre is missing.
      {{"default", ""},
       {"[\\p{P}\\$\\+<=>\\^~\\|]+", kGpt2, "\\p{N}+", "[0-9][0-9][0-9]"},
       false,
       false},
  };
  return specs;
}

}  // namespace

struct PreTokenizer::Regex {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Regex() { pcre2_code_free(code); }
};

Result<std::unique_ptr<PreTokenizer>> PreTokenizer::create(const std::string& name) {
  const PreSpec* spec = nullptr;
  for (const PreSpec& s : pre_specs()) {
    for (const char* n : s.names) {
      if (name == n) spec = &s;
    }
  }
  if (!spec) {
    return errorf(
        "tokenizer.ggml.pre: unknown pre-tokenizer type '%s' (supported: smollm, "
        "llama-bpe, gpt-2, default and their aliases)",
        printable(name, 80).c_str());
  }
  std::unique_ptr<PreTokenizer> pre(new PreTokenizer());
  pre->ignore_merges_ = spec->ignore_merges;
  pre->add_bos_default_ = spec->add_bos;
  for (const char* pattern : spec->regexes) {
    auto re = std::make_unique<Regex>();
    int err = 0;
    PCRE2_SIZE err_offset = 0;
    re->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                             PCRE2_UTF | PCRE2_UCP, &err, &err_offset, nullptr);
    if (!re->code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      return errorf("pre-tokenizer '%s': regex does not compile at offset %zu: %s", name.c_str(),
                    static_cast<size_t>(err_offset), reinterpret_cast<const char*>(msg));
    }
    // JIT is an optimisation only: without it (or if it fails) the interpreter runs.
    re->jit = pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE) == 0;
    pre->regexes_.push_back(std::move(re));
  }
  return pre;
}

PreTokenizer::~PreTokenizer() = default;

namespace {

// Finds the next match of `re` in subject[start, len). Returns false when there is none.
bool next_match(const pcre2_code* code, bool jit, const uint8_t* subject, size_t len, size_t start,
                pcre2_match_data* md, size_t& m_begin, size_t& m_end) {
  uint32_t options = PCRE2_NO_UTF_CHECK;  // the caller guarantees valid UTF-8
  int rc = pcre2_match(code, subject, len, start, options, md, nullptr);
  if (jit && rc == PCRE2_ERROR_JIT_STACKLIMIT) {
    // The default JIT stack is small; the interpreter keeps its own on the heap.
    rc = pcre2_match(code, subject, len, start, options | PCRE2_NO_JIT, md, nullptr);
  }
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  // Our patterns are fixed and the subject is valid UTF-8, so any other error is a bug.
  QILIN_ASSERT(rc > 0);
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
  m_begin = ov[0];
  m_end = ov[1];
  return true;
}

}  // namespace

void PreTokenizer::split(std::string_view text,
                         std::vector<std::pair<size_t, size_t>>& words) const {
  const auto* subject = reinterpret_cast<const uint8_t*>(text.data());
  std::vector<std::pair<size_t, size_t>> pieces;
  if (!text.empty()) pieces.emplace_back(0, text.size());
  std::vector<std::pair<size_t, size_t>> next;
  for (const auto& re : regexes_) {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(re->code, nullptr);
    QILIN_ASSERT(md != nullptr);
    next.clear();
    for (const auto& [begin, end] : pieces) {
      // Each piece is matched as its own subject: lookaheads must not see past its end, as
      // in llama.cpp, where every regex runs on the previous regex's pieces separately.
      const uint8_t* piece = subject + begin;
      const size_t len = end - begin;
      size_t emitted = 0;  // end of the last piece emitted
      size_t search = 0;   // where the next match attempt starts
      size_t m_begin = 0;
      size_t m_end = 0;
      while (search < len &&
             next_match(re->code, re->jit, piece, len, search, md, m_begin, m_end)) {
        if (m_end == m_begin) {
          // None of our patterns match empty, but never loop if one did: skip a code point.
          search = m_begin + 1;
          while (search < len && (piece[search] & 0xC0) == 0x80) ++search;
          continue;
        }
        if (m_begin > emitted) next.emplace_back(begin + emitted, begin + m_begin);
        next.emplace_back(begin + m_begin, begin + m_end);
        emitted = search = m_end;
      }
      if (emitted < len) next.emplace_back(begin + emitted, end);
    }
    pcre2_match_data_free(md);
    pieces.swap(next);
  }
  words.insert(words.end(), pieces.begin(), pieces.end());
}

}  // namespace qilin::tokenizer_internal
