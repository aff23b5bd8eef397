// Chat template families recognised from the Jinja text and rendered in C++.
// NOTE: Jinja's `trim` filter and Python's str.strip() remove Unicode whitespace, not just
// ASCII, so strip_py() below follows Python's definition to stay byte-identical.

#include "model/chat_template.h"

#include <algorithm>
#include <cstdint>
#include <string_view>

namespace qilin {

const char* chat_template_family_name(ChatTemplateFamily family) {
  switch (family) {
    case ChatTemplateFamily::ChatML:
      return "chatml";
    case ChatTemplateFamily::Llama3:
      return "llama3";
    case ChatTemplateFamily::Llama2:
      return "llama2";
  }
  return "?";
}

namespace {

bool contains(std::string_view s, std::string_view part) {
  return s.find(part) != std::string_view::npos;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The value of a Jinja string literal body (quotes removed). Jinja decodes literals with
// Python's unicode-escape rules; the escapes templates actually use are handled, any other
// backslash sequence is kept as written, as Python does.
std::string unescape_literal(std::string_view body) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    char c = body[i];
    if (c != '\\' || i + 1 == body.size()) {
      out += c;
      continue;
    }
    char e = body[++i];
    switch (e) {
      case 'n':
        out += '\n';
        break;
      case 't':
        out += '\t';
        break;
      case 'r':
        out += '\r';
        break;
      case '\\':
        out += '\\';
        break;
      case '\'':
        out += '\'';
        break;
      case '"':
        out += '"';
        break;
      case 'x':
      case 'u': {
        size_t n_digits = e == 'x' ? 2 : 4;
        uint32_t cp = 0;
        bool ok = i + n_digits < body.size();
        for (size_t k = 1; ok && k <= n_digits; ++k) {
          int h = hex_value(body[i + k]);
          if (h < 0) ok = false;
          cp = cp * 16 + uint32_t(h);
        }
        if (ok) {
          append_utf8(out, cp);
          i += n_digits;
        } else {
          out += '\\';
          out += e;
        }
        break;
      }
      default:
        out += '\\';
        out += e;
    }
  }
  return out;
}

// Every string literal inside {{ }} and {% %} tags, decoded. Text outside the tags is output
// text, where a quote is just a character, so it is skipped; so are {# #} comments.
std::vector<std::string> jinja_literals(std::string_view t) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < t.size()) {
    size_t open = t.find('{', i);
    if (open == std::string_view::npos || open + 1 >= t.size()) break;
    char kind = t[open + 1];
    if (kind == '#') {
      size_t end = t.find("#}", open + 2);
      if (end == std::string_view::npos) break;
      i = end + 2;
      continue;
    }
    if (kind != '{' && kind != '%') {
      i = open + 1;
      continue;
    }
    const char close[] = {kind == '{' ? '}' : '%', '}', '\0'};
    i = open + 2;
    while (i < t.size() && t.compare(i, 2, close) != 0) {
      char q = t[i];
      if (q != '\'' && q != '"') {
        ++i;
        continue;
      }
      size_t j = i + 1;
      while (j < t.size() && t[j] != q) j += t[j] == '\\' ? 2 : 1;
      if (j >= t.size()) return out;  // unterminated: malformed template, stop looking
      out.push_back(unescape_literal(t.substr(i + 1, j - i - 1)));
      i = j + 1;
    }
    i += 2;
  }
  return out;
}

// Decodes the code point at s[i] (len set to its byte count); invalid bytes decode to
// 0xFFFFFFFF with len 1, which is never whitespace.
uint32_t decode_utf8(std::string_view s, size_t i, size_t* len) {
  auto b = [&](size_t k) { return uint8_t(s[i + k]); };
  uint8_t c = b(0);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || i + n > s.size()) {
    *len = 1;
    return 0xFFFFFFFFu;
  }
  uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xC0) != 0x80) {
      *len = 1;
      return 0xFFFFFFFFu;
    }
    cp = (cp << 6) | (b(k) & 0x3F);
  }
  *len = n;
  return cp;
}

// Python's str.isspace().
bool is_py_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Python's str.strip() with no arguments, on UTF-8 text.
std::string_view strip_py(std::string_view s) {
  size_t begin = 0;
  while (begin < s.size()) {
    size_t len;
    if (!is_py_space(decode_utf8(s, begin, &len))) break;
    begin += len;
  }
  size_t end = s.size();
  while (end > begin) {
    // Step back to the first byte of the last code point.
    size_t start = end - 1;
    while (start > begin && (uint8_t(s[start]) & 0xC0) == 0x80 && end - start < 4) --start;
    size_t len;
    uint32_t cp = decode_utf8(s, start, &len);
    if (start + len != end) {  // not a whole code point: treat the last byte as non-space
      break;
    }
    if (!is_py_space(cp)) break;
    end = start;
  }
  return s.substr(begin, end - begin);
}

// The first ~60 bytes of the template for error messages, cut on a UTF-8 boundary, with
// newlines shown as \n so the message stays on one line.
std::string snippet(std::string_view t) {
  size_t n = std::min<size_t>(t.size(), 60);
  while (n < t.size() && n > 0 && (uint8_t(t[n]) & 0xC0) == 0x80) --n;
  std::string out;
  for (char c : t.substr(0, n)) {
    if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  if (n < t.size()) out += "...";
  return out;
}

Status check_role(const ChatMessage& m, size_t index) {
  if (m.role == "system" || m.role == "user" || m.role == "assistant" || m.role == "tool") {
    return Status::ok();
  }
  return errorf("unknown chat role \"%s\" in message %zu; expected system, user, assistant or tool",
                m.role.c_str(), index);
}

constexpr std::string_view kImStart = "<|im_start|>";
constexpr std::string_view kImEnd = "<|im_end|>";
constexpr std::string_view kSystemOpen = "<|im_start|>system\n";
constexpr std::string_view kSystemClose = "<|im_end|>\n";

}  // namespace

Result<ChatTemplate> ChatTemplate::from_string(std::string tmpl, std::string bos_token,
                                               std::string eos_token) {
  if (tmpl.empty()) {
    return Status::error("chat template is empty (the model has no tokenizer.chat_template)");
  }
  ChatTemplate ct;
  if (contains(tmpl, "<|start_header_id|>") && contains(tmpl, "<|end_header_id|>")) {
    // Llama 3.1 and later always print a system header with knowledge and current dates and
    // carry tool-calling logic; rendering them as plain Llama-3 would silently differ.
    if (contains(tmpl, "Cutting Knowledge Date")) {
      return errorf(
          "chat template family not supported: Llama-3.1-style template with a date "
          "header and tools; template starts with \"%s\"",
          snippet(tmpl).c_str());
    }
    ct.family_ = ChatTemplateFamily::Llama3;
  } else if (contains(tmpl, "[INST]") && contains(tmpl, "<<SYS>>")) {
    ct.family_ = ChatTemplateFamily::Llama2;
  } else if (contains(tmpl, kImStart) && contains(tmpl, kImEnd)) {
    ct.family_ = ChatTemplateFamily::ChatML;
    // SmolLM2-style default system message: a literal holding a whole system turn. Templates
    // that print the caller's system message build it from pieces, so they never match.
    for (const std::string& lit : jinja_literals(tmpl)) {
      if (lit.size() >= kSystemOpen.size() + kSystemClose.size() && lit.starts_with(kSystemOpen) &&
          lit.ends_with(kSystemClose)) {
        ct.default_system_ =
            lit.substr(kSystemOpen.size(), lit.size() - kSystemOpen.size() - kSystemClose.size());
        ct.has_default_system_ = true;
        break;
      }
    }
  } else {
    return errorf(
        "chat template family not supported (known: chatml, llama3, llama2); "
        "template starts with \"%s\"",
        snippet(tmpl).c_str());
  }
  ct.prints_bos_ = contains(tmpl, "bos_token");
  ct.source_ = std::move(tmpl);
  ct.bos_token_ = std::move(bos_token);
  ct.eos_token_ = std::move(eos_token);
  return ct;
}

Result<std::string> ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                         bool add_generation_prompt) const {
  for (size_t i = 0; i < messages.size(); ++i) QILIN_TRY(check_role(messages[i], i));
  switch (family_) {
    case ChatTemplateFamily::ChatML:
      return render_chatml(messages, add_generation_prompt);
    case ChatTemplateFamily::Llama3:
      return render_llama3(messages, add_generation_prompt);
    case ChatTemplateFamily::Llama2:
      return render_llama2(messages);  // the template has no generation prompt
  }
  return Status::error("unreachable chat template family");
}

Result<std::string> ChatTemplate::render_chatml(const std::vector<ChatMessage>& messages,
                                                bool add_generation_prompt) const {
  std::string out;
  // The template inserts it inside its message loop, so an empty conversation gets none.
  if (has_default_system_ && !messages.empty() && messages[0].role != "system") {
    out.append(kSystemOpen).append(default_system_).append(kSystemClose);
  }
  for (const ChatMessage& m : messages) {
    out.append(kImStart).append(m.role).append("\n").append(m.content).append(kImEnd).append("\n");
  }
  if (add_generation_prompt) out.append(kImStart).append("assistant\n");
  return out;
}

Result<std::string> ChatTemplate::render_llama3(const std::vector<ChatMessage>& messages,
                                                bool add_generation_prompt) const {
  std::string out;
  if (prints_bos_ && !messages.empty()) out += bos_token_;
  for (const ChatMessage& m : messages) {
    out.append("<|start_header_id|>").append(m.role).append("<|end_header_id|>\n\n");
    out.append(strip_py(m.content)).append("<|eot_id|>");
  }
  if (add_generation_prompt) out.append("<|start_header_id|>assistant<|end_header_id|>\n\n");
  return out;
}

Result<std::string> ChatTemplate::render_llama2(const std::vector<ChatMessage>& messages) const {
  if (messages.empty()) {
    return Status::error("the Llama-2 chat template needs at least one message");
  }
  const bool has_system = messages[0].role == "system";
  const std::string bos = prints_bos_ ? bos_token_ : "";
  std::string out;
  for (size_t i = has_system ? 1 : 0; i < messages.size(); ++i) {
    const size_t turn = i - (has_system ? 1 : 0);
    const ChatMessage& m = messages[i];
    const char* want = turn % 2 == 0 ? "user" : "assistant";
    if (m.role != want) {
      return errorf(
          "the Llama-2 chat template needs roles alternating user/assistant after an "
          "optional first system message; message %zu has role \"%s\", expected \"%s\"",
          i, m.role.c_str(), want);
    }
    std::string content = m.content;
    if (turn == 0 && has_system) {
      content = "<<SYS>>\n" + messages[0].content + "\n<</SYS>>\n\n" + content;
    }
    if (m.role == "user") {
      out.append(bos).append("[INST] ").append(strip_py(content)).append(" [/INST]");
    } else {
      out.append(" ").append(strip_py(content)).append(" ").append(eos_token_);
    }
  }
  return out;
}

}  // namespace qilin
