// See printable.h. Decodes UTF-8 by hand (one pass, no allocation beyond the output).
#include "core/printable.h"

#include <cstdint>
#include <cstdio>

namespace qilin {

namespace {

// Length of the valid UTF-8 sequence at s[i] and its code point; 0 when it is not valid
// (overlong, surrogate, past U+10FFFF, truncated, stray continuation byte).
size_t utf8_sequence(std::string_view s, size_t i, uint32_t* cp) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  size_t n;
  uint32_t c, min;
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  } else if ((b0 & 0xE0) == 0xC0) {
    n = 2, c = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    n = 3, c = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    n = 4, c = b0 & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return 0;
    c = (c << 6) | (b & 0x3F);
  }
  if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
  *cp = c;
  return n;
}

void escape_bytes(std::string_view bytes, std::string* out) {
  for (unsigned char b : bytes) {
    char buf[5];
    std::snprintf(buf, sizeof(buf), "\\x%02x", b);
    *out += buf;
  }
}

}  // namespace

std::string printable(std::string_view s, size_t max_bytes, bool keep_newlines) {
  const bool clipped = max_bytes > 0 && s.size() > max_bytes;
  if (clipped) s = s.substr(0, max_bytes);
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    uint32_t cp = 0;
    const size_t n = utf8_sequence(s, i, &cp);
    if (n == 0) {  // not UTF-8: this byte alone is escaped, then resynchronise
      escape_bytes(s.substr(i, 1), &out);
      ++i;
      continue;
    }
    const bool control = cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F);
    if (control && !(keep_newlines && cp == '\n')) {
      escape_bytes(s.substr(i, n), &out);
    } else {
      out.append(s.data() + i, n);
    }
    i += n;
  }
  if (clipped) out += "...";
  return out;
}

}  // namespace qilin
