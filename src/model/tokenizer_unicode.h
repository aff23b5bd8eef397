// UTF-8 and GPT-2 byte-mapping helpers for the tokenizers. Decoding is deliberately lenient in
// the same way as llama.cpp's: ids must match its output even for malformed input.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace qilin::tokenizer_internal {

// Length of the UTF-8 sequence a lead byte announces, judged only by its top four bits
// (continuation bytes count as 1). The SentencePiece path splits text into symbols with it.
size_t utf8_len_from_lead(uint8_t lead);

// Code points of `text`. Invalid sequences decode to U+FFFD one byte at a time; overlong forms
// and surrogates are accepted as llama.cpp accepts them. Values above U+10FFFF become U+FFFD.
std::vector<uint32_t> decode_utf8_lenient(std::string_view text);

// Appends the UTF-8 encoding of `cp` (surrogates are encoded as three bytes, like any value).
void append_utf8(uint32_t cp, std::string& out);

// GPT-2's reversible byte -> printable code point mapping used by byte-level BPE vocabularies.
const std::array<uint32_t, 256>& gpt2_byte_to_cp();
// The inverse: the byte for a mapped code point, or -1.
int gpt2_cp_to_byte(uint32_t cp);

}  // namespace qilin::tokenizer_internal
