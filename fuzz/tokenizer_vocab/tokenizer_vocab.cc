// Fuzz target: tokenizers built from fuzzed vocabularies (token texts and types, merges,
// special ids, flags), which raw GGUF mutation in fuzz_gguf_model reaches only slowly. The input
// describes the tokenizer metadata; it is written with GgufWriter, read back, and the tokenizer
// built, then encodes a fuzzed text and decodes what it gave and every id.
// Input: byte 0: bit 0 SentencePiece ("llama") else byte-level BPE ("gpt2"), bits 1-3 the
// pre-tokenizer; byte 1: bos id, byte 2: eos id (0xFF: key absent), byte 3: flags (bit 0
// add_bos_token, bit 1 add_eos_token, bit 2 add_space_prefix, bit 3 parse_special, bit 4 no
// token_type key), then NUL-separated: tokens ('\n'-separated, each starting with its type
// byte), merges ('\n'-separated), text.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "formats/gguf.h"
#include "fuzz_util.h"
#include "model/tokenizer.h"

using namespace qilin;

namespace {

std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t end = s.find(sep, start);
    out.emplace_back(s.substr(start, end == std::string_view::npos ? end : end - start));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return out;
}

constexpr const char* kPre[] = {"gpt-2",   "llama-bpe", "smollm", "dbrx",
                                "default", "",          "gpt2",   "bogus"};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  const bool spm = data[0] & 1;
  const char* pre = kPre[(data[0] >> 1) & 7];
  const uint8_t bos = data[1], eos = data[2], flags = data[3];
  std::vector<std::string> parts =
      split(std::string_view(reinterpret_cast<const char*>(data + 4), size - 4), '\0');
  parts.resize(std::max<size_t>(parts.size(), 3));
  std::vector<std::string> lines = split(parts[0], '\n');
  if (lines.size() > 4096) lines.resize(4096);
  std::vector<std::string> texts;
  std::vector<GgufValue> types, scores;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& l = lines[i];
    texts.push_back(l.empty() ? l : l.substr(1));
    types.push_back(GgufValue::of_i32(l.empty() ? 1 : static_cast<int8_t>(l[0]) % 8));
    scores.push_back(GgufValue::of_f32(-static_cast<float>(i)));
  }

  GgufWriter w;
  w.set("tokenizer.ggml.model", GgufValue::of_string(spm ? "llama" : "gpt2"));
  if (*pre) w.set("tokenizer.ggml.pre", GgufValue::of_string(pre));
  w.set("tokenizer.ggml.tokens", GgufValue::of_strings(texts));
  if (!(flags & 16))
    w.set("tokenizer.ggml.token_type", GgufValue::of_array(GgufType::INT32, std::move(types)));
  if (spm) {
    w.set("tokenizer.ggml.scores", GgufValue::of_array(GgufType::FLOAT32, std::move(scores)));
    w.set("tokenizer.ggml.add_space_prefix", GgufValue::of_bool(flags & 4));
  } else {
    std::vector<std::string> merges = split(parts[1], '\n');
    if (merges.size() > 4096) merges.resize(4096);
    w.set("tokenizer.ggml.merges", GgufValue::of_strings(merges));
  }
  if (bos != 0xFF) w.set("tokenizer.ggml.bos_token_id", GgufValue::of_u32(bos));
  if (eos != 0xFF) w.set("tokenizer.ggml.eos_token_id", GgufValue::of_u32(eos));
  w.set("tokenizer.ggml.add_bos_token", GgufValue::of_bool(flags & 1));
  w.set("tokenizer.ggml.add_eos_token", GgufValue::of_bool(flags & 2));
  auto bytes = w.serialize();
  if (!bytes) return 0;
  auto f = GgufFile::parse(bytes->data(), bytes->size());
  if (!f) return 0;
  auto tok = Tokenizer::from_gguf(**f);
  fuzz::note("tokenizer", tok.status());
  if (!tok) return 0;
  const std::vector<int32_t> ids = (*tok)->encode(parts[2], true, flags & 8);
  (void)(*tok)->decode(ids, true);
  std::vector<int32_t> all;
  for (int32_t id = -1; id <= (*tok)->n_vocab(); ++id) all.push_back(id);
  (void)(*tok)->decode(all, false);
  for (int32_t id : (*tok)->eog_ids()) (void)(*tok)->token_text(id);
  return 0;
}
