// Fuzz target: the chat template recogniser and renderer with fuzzed template text and
// fuzzed messages. Input: parts separated by NUL bytes: template, bos_token, eos_token, a flags
// byte (bit 0: add_generation_prompt), then role, content, role, content, ...
#include "model/chat_template.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

using namespace qilin;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= in.size() && parts.size() < 4 + 2 * 256) {
    const size_t end = in.find('\0', start);
    if (end == std::string_view::npos) {
      parts.emplace_back(in.substr(start));
      break;
    }
    parts.emplace_back(in.substr(start, end - start));
    start = end + 1;
  }
  parts.resize(std::max<size_t>(parts.size(), 4));
  auto tmpl = ChatTemplate::from_string(parts[0], parts[1], parts[2]);
  if (!tmpl) return 0;
  (void)tmpl->family();
  (void)tmpl->default_system();
  const bool gen = !parts[3].empty() && (parts[3][0] & 1);
  std::vector<ChatMessage> messages;
  for (size_t i = 4; i + 1 < parts.size(); i += 2) messages.push_back({parts[i], parts[i + 1]});
  auto out = tmpl->render(messages, gen);
  (void)out;
  return 0;
}
