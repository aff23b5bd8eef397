// Chat template tests: byte-identical output against fixtures rendered by Jinja2
// (tests/golden/gen_chat_template_fixtures.py), plus detection and error messages.

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/chat_template.h"

namespace qilin {
namespace {

nlohmann::json load_fixture(const std::string& name) {
  std::string path = std::string(QILIN_TEST_DATA_DIR) + "/golden/chat_template/" + name + ".json";
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "missing fixture " << path;
  if (!in.good()) return nullptr;
  return nlohmann::json::parse(in);
}

Result<ChatTemplate> template_of(const nlohmann::json& fx) {
  return ChatTemplate::from_string(fx["template"].get<std::string>(),
                                   fx["bos_token"].get<std::string>(),
                                   fx["eos_token"].get<std::string>());
}

// Renders every case of a fixture and compares with Jinja2's text (or its error).
void check_fixture(const std::string& name, ChatTemplateFamily family) {
  nlohmann::json fx = load_fixture(name);
  ASSERT_FALSE(fx.is_null());
  Result<ChatTemplate> ct = template_of(fx);
  ASSERT_TRUE(ct.is_ok()) << ct.status().message();
  EXPECT_EQ(ct->family(), family);
  int n_cases = 0;
  for (const nlohmann::json& c : fx["cases"]) {
    std::vector<ChatMessage> messages;
    for (const nlohmann::json& m : c["messages"]) {
      messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    bool gen = c["add_generation_prompt"].get<bool>();
    Result<std::string> got = ct->render(messages, gen);
    SCOPED_TRACE(name + " case " + std::to_string(n_cases) + ": " + c["messages"].dump());
    if (c.contains("error")) {
      EXPECT_FALSE(got.is_ok()) << "Jinja raised " << c["error"] << " but we rendered "
                                << (got.is_ok() ? got.value() : "");
    } else {
      ASSERT_TRUE(got.is_ok()) << got.status().message();
      EXPECT_EQ(got.value(), c["expected"].get<std::string>());
    }
    ++n_cases;
  }
  EXPECT_GE(n_cases, 20);
}

TEST(ChatTemplateGolden, SmolLM2) { check_fixture("smollm2", ChatTemplateFamily::ChatML); }
TEST(ChatTemplateGolden, ChatMLPlain) { check_fixture("chatml_plain", ChatTemplateFamily::ChatML); }
TEST(ChatTemplateGolden, Llama3) { check_fixture("llama3", ChatTemplateFamily::Llama3); }
TEST(ChatTemplateGolden, Llama2) { check_fixture("llama2", ChatTemplateFamily::Llama2); }

TEST(ChatTemplateDetect, SmolLM2DefaultSystemComesFromTemplate) {
  nlohmann::json fx = load_fixture("smollm2");
  Result<ChatTemplate> ct = template_of(fx);
  ASSERT_TRUE(ct.is_ok());
  EXPECT_EQ(ct->default_system(),
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  Result<ChatTemplate> plain = template_of(load_fixture("chatml_plain"));
  ASSERT_TRUE(plain.is_ok());
  EXPECT_EQ(plain->default_system(), "");
}

TEST(ChatTemplateDetect, DefaultSystemWithEscapesAndOtherText) {
  // Backslash escapes in the literal, double quotes, and a quote in the output text outside
  // the tags that must not be taken for a literal.
  std::string tmpl =
      "it's {% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' "
      "%}{{ \"<|im_start|>system\\nBe \\\"brief\\\".\\tOK<|im_end|>\\n\" }}{% endif %}"
      "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'}}"
      "{% endfor %}";
  Result<ChatTemplate> ct = ChatTemplate::from_string(tmpl);
  ASSERT_TRUE(ct.is_ok()) << ct.status().message();
  EXPECT_EQ(ct->default_system(), "Be \"brief\".\tOK");
}

TEST(ChatTemplateErrors, UnknownFamilyShowsTemplateStart) {
  std::string gemma =
      "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + "
      "'\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}";
  Result<ChatTemplate> ct = ChatTemplate::from_string(gemma);
  ASSERT_FALSE(ct.is_ok());
  const std::string msg = ct.status().message();  // status() returns a copy
  EXPECT_NE(msg.find("not supported"), std::string::npos) << msg;
  EXPECT_NE(msg.find("{{ bos_token }}{% for message in messages %}{{ '<start_of_tu"),
            std::string::npos)
      << msg;
  EXPECT_EQ(msg.find("<end_of_turn>"), std::string::npos) << "showed more than ~60 chars";
}

TEST(ChatTemplateErrors, EmptyTemplate) {
  Result<ChatTemplate> ct = ChatTemplate::from_string("");
  ASSERT_FALSE(ct.is_ok());
  EXPECT_NE(ct.status().message().find("empty"), std::string::npos);
}

TEST(ChatTemplateErrors, Llama31IsRejected) {
  std::string tmpl =
      "{{- bos_token }}{%- set date_string = \"26 Jul 2024\" %}{{- \"<|start_header_id|>system"
      "<|end_header_id|>\\n\\n\" }}{{- \"Cutting Knowledge Date: December 2023\\n\" }}";
  Result<ChatTemplate> ct = ChatTemplate::from_string(tmpl);
  ASSERT_FALSE(ct.is_ok());
  EXPECT_NE(ct.status().message().find("Llama-3.1"), std::string::npos);
}

TEST(ChatTemplateErrors, UnknownRole) {
  Result<ChatTemplate> ct = template_of(load_fixture("smollm2"));
  ASSERT_TRUE(ct.is_ok());
  Result<std::string> r = ct->render({{"user", "hi"}, {"narrator", "meanwhile"}}, true);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().message(),
            "unknown chat role \"narrator\" in message 1; expected system, user, assistant or "
            "tool");
}

TEST(ChatTemplateErrors, Llama2RolesMustAlternate) {
  Result<ChatTemplate> ct = template_of(load_fixture("llama2"));
  ASSERT_TRUE(ct.is_ok());
  Result<std::string> r = ct->render({{"user", "a"}, {"system", "late system"}}, false);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("message 1 has role \"system\""), std::string::npos)
      << r.status().message();
}

}  // namespace
}  // namespace qilin
