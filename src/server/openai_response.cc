// OpenAI responses: the JSON of whole responses, stream chunks, logprobs and errors, built from
// the Engine's ChoiceEvents; see openai_api.h. Request parsing is openai_request.cc.
#include "server/openai_api.h"

#include <cstdint>
#include <random>
#include <string>

namespace qilin::server {

namespace {

std::string random_hex(int n) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* digits = "0123456789abcdef";
  std::string s;
  uint64_t bits = 0;
  for (int i = 0; i < n; ++i) {
    if (i % 16 == 0) bits = rng();
    s += digits[bits & 15];
    bits >>= 4;
  }
  return s;
}

json bytes_json(const std::string& piece) {
  json b = json::array();
  for (unsigned char c : piece) b.push_back(static_cast<int>(c));
  return b;
}

json chunk_base(const ResponseMeta& meta, bool include_usage) {
  json j = {
      {"id", meta.id},
      {"object", meta.endpoint == Endpoint::Chat ? "chat.completion.chunk" : "text_completion"},
      {"created", meta.created},
      {"model", meta.model},
      {"choices", json::array()}};
  if (include_usage) j["usage"] = nullptr;
  return j;
}

json finish_json(FinishReason r) {
  const char* s = openai_finish_reason(r);
  return s ? json(s) : json(nullptr);
}

}  // namespace

std::string dump_json(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string error_body(const ApiError& e) {
  json err = {{"message", e.message},
              {"type", e.type},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.code.empty() ? json(nullptr) : json(e.code)}};
  return dump_json(json{{"error", std::move(err)}});
}

const char* openai_finish_reason(FinishReason r) {
  switch (r) {
    case FinishReason::Stop:
      return "stop";
    case FinishReason::Length:
      return "length";
    default:
      return nullptr;
  }
}

std::string new_response_id(Endpoint endpoint) {
  return (endpoint == Endpoint::Chat ? "chatcmpl-" : "cmpl-") + random_hex(24);
}

json usage_json(int32_t n_prompt, int32_t n_completion) {
  return {{"prompt_tokens", n_prompt},
          {"completion_tokens", n_completion},
          {"total_tokens", n_prompt + n_completion}};
}

json completion_logprobs_json(const std::vector<GeneratedToken>& tokens, const Tokenizer& tok,
                              int64_t* text_offset) {
  json toks = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
  for (const GeneratedToken& g : tokens) {
    if (tok.is_eog(g.token)) continue;  // the end-of-generation token is not in the text
    const std::string piece = tok.token_to_piece(g.token);
    toks.push_back(piece);
    lps.push_back(g.logprob);
    json top = json::object();
    for (const TokenLogprob& t : g.top) top[tok.token_to_piece(t.token)] = t.logprob;
    tops.push_back(std::move(top));
    offs.push_back(*text_offset);
    *text_offset += static_cast<int64_t>(piece.size());
  }
  return {{"tokens", std::move(toks)},
          {"token_logprobs", std::move(lps)},
          {"top_logprobs", std::move(tops)},
          {"text_offset", std::move(offs)}};
}

json chat_logprobs_json(const std::vector<GeneratedToken>& tokens, const Tokenizer& tok) {
  json content = json::array();
  for (const GeneratedToken& g : tokens) {
    if (tok.is_eog(g.token)) continue;  // the end-of-generation token is not in the text
    const std::string piece = tok.token_to_piece(g.token);
    json top = json::array();
    for (const TokenLogprob& t : g.top) {
      const std::string p = tok.token_to_piece(t.token);
      top.push_back({{"token", p}, {"logprob", t.logprob}, {"bytes", bytes_json(p)}});
    }
    content.push_back({{"token", piece},
                       {"logprob", g.logprob},
                       {"bytes", bytes_json(piece)},
                       {"top_logprobs", std::move(top)}});
  }
  return {{"content", std::move(content)}, {"refusal", nullptr}};
}

json response_json(const ResponseMeta& meta, const std::vector<ChoiceOutput>& choices,
                   int32_t n_prompt, const Tokenizer& tok) {
  const bool chat = meta.endpoint == Endpoint::Chat;
  json out = json::array();
  int32_t n_completion = 0;
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceOutput& c = choices[i];
    n_completion += c.n_generated;
    json lp = nullptr;
    if (meta.logprobs) {
      int64_t offset = static_cast<int64_t>(meta.echo.size());
      lp = chat ? chat_logprobs_json(c.tokens, tok)
                : completion_logprobs_json(c.tokens, tok, &offset);
    }
    json choice;
    if (chat) {
      choice = {{"index", i},
                {"message", {{"role", "assistant"}, {"content", c.text}, {"refusal", nullptr}}},
                {"logprobs", std::move(lp)},
                {"finish_reason", finish_json(c.finish)}};
    } else {
      choice = {{"text", meta.echo + c.text},
                {"index", i},
                {"logprobs", std::move(lp)},
                {"finish_reason", finish_json(c.finish)}};
    }
    out.push_back(std::move(choice));
  }
  return {{"id", meta.id},
          {"object", chat ? "chat.completion" : "text_completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"choices", std::move(out)},
          {"usage", usage_json(n_prompt, n_completion)}};
}

json chat_role_chunk(const ResponseMeta& meta, int32_t index, bool include_usage) {
  json j = chunk_base(meta, include_usage);
  j["choices"].push_back({{"index", index},
                          {"delta", {{"role", "assistant"}, {"content", ""}}},
                          {"logprobs", nullptr},
                          {"finish_reason", nullptr}});
  return j;
}

json event_chunk(const ResponseMeta& meta, const ChoiceEvent& ev, const Tokenizer& tok,
                 bool include_usage, int64_t* text_offset) {
  json j = chunk_base(meta, include_usage);
  json lp = nullptr;
  if (meta.logprobs && !ev.tokens.empty()) {
    lp = meta.endpoint == Endpoint::Chat ? chat_logprobs_json(ev.tokens, tok)
                                         : completion_logprobs_json(ev.tokens, tok, text_offset);
  }
  if (meta.endpoint == Endpoint::Chat) {
    json delta = json::object();
    if (!ev.text.empty() || !lp.is_null()) delta["content"] = ev.text;
    j["choices"].push_back({{"index", ev.index},
                            {"delta", std::move(delta)},
                            {"logprobs", std::move(lp)},
                            {"finish_reason", finish_json(ev.finish)}});
  } else {
    j["choices"].push_back({{"text", ev.text},
                            {"index", ev.index},
                            {"logprobs", std::move(lp)},
                            {"finish_reason", finish_json(ev.finish)}});
  }
  return j;
}

json usage_chunk(const ResponseMeta& meta, int32_t n_prompt, int32_t n_completion) {
  json j = chunk_base(meta, false);
  j["usage"] = usage_json(n_prompt, n_completion);
  return j;
}

}  // namespace qilin::server
