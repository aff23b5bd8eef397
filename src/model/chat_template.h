// Chat templates: turns a conversation into prompt text the way the GGUF's
// tokenizer.chat_template (a Jinja string) would. There is no Jinja engine: the family is
// recognised from the template text and rendered by C++ code, byte-identical to Jinja2 for the
// families below (tests/golden/chat_template holds the proof).
// NOTE: only the message part of a template is reproduced; tool calls, reasoning blocks and
// other extras that richer templates of the same family carry are not.
#pragma once

#include <string>
#include <vector>

#include "qilin/status.h"

namespace qilin {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" or "tool"
  std::string content;
};

enum class ChatTemplateFamily {
  ChatML,  // <|im_start|>role\ncontent<|im_end|>\n (SmolLM2, Qwen, many fine-tunes)
  Llama3,  // <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>, content trimmed
  Llama2,  // [INST] ... [/INST] with a <<SYS>> block folded into the first user turn
};

const char* chat_template_family_name(ChatTemplateFamily family);

class ChatTemplate {
 public:
  // tmpl: the Jinja source. bos_token / eos_token: the text the template's bos_token and
  // eos_token variables stand for (Llama-3 and Llama-2 print them). Pass "" for bos_token when
  // the tokenizer will add BOS itself, or the prompt starts with two.
  static Result<ChatTemplate> from_string(std::string tmpl, std::string bos_token = "",
                                          std::string eos_token = "");

  // Fails on a role the family has no place for, and for Llama-2 on an empty conversation or
  // roles that do not alternate user/assistant after an optional leading system message
  // (the template itself raises there).
  Result<std::string> render(const std::vector<ChatMessage>& messages,
                             bool add_generation_prompt) const;

  ChatTemplateFamily family() const { return family_; }
  // ChatML only: the system text the template inserts when the conversation does not start
  // with a system message (SmolLM2 has one); empty when it inserts none.
  const std::string& default_system() const { return default_system_; }
  const std::string& source() const { return source_; }

 private:
  ChatTemplate() = default;
  Result<std::string> render_chatml(const std::vector<ChatMessage>& messages,
                                    bool add_generation_prompt) const;
  Result<std::string> render_llama3(const std::vector<ChatMessage>& messages,
                                    bool add_generation_prompt) const;
  Result<std::string> render_llama2(const std::vector<ChatMessage>& messages) const;

  ChatTemplateFamily family_ = ChatTemplateFamily::ChatML;
  std::string source_;
  std::string bos_token_;
  std::string eos_token_;
  std::string default_system_;
  bool has_default_system_ = false;
  bool prints_bos_ = false;  // the template prints bos_token before the first message
};

}  // namespace qilin
