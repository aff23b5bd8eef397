// The OpenAI wire format, apart from HTTP: request bodies parsed and checked into
// GenerationRequest (every rejection an ApiError naming the field), and the JSON of responses,
// stream chunks and errors built from the Engine's ChoiceEvents (openai_request.cc and
// openai_response.cc).
// NOTE: every JSON text leaving the server goes through dump_json, which replaces invalid UTF-8
// (a token piece can be half a character) instead of throwing.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/sampler.h"
#include "model/chat_template.h"
#include "model/tokenizer.h"

namespace qilin::server {

using json = nlohmann::json;

// An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // "" is written as null
  std::string code;   // "" is written as null
};
ApiError bad_param(const std::string& param, const std::string& message);
std::string error_body(const ApiError& e);
std::string dump_json(const json& j);

enum class Endpoint { Completions, Chat };

// Limits that the parser enforces before anything reaches the Engine.
struct ApiLimits {
  int32_t max_n = 16;
  int32_t max_stop = 16;
  int32_t max_stop_bytes = 256;
  int32_t max_logprobs = 20;  // completions `logprobs` and chat `top_logprobs`
  int32_t max_messages = 4096;
  int32_t max_json_depth = 64;  // arrays and objects, the body's own object included
};

// One /v1/completions or /v1/chat/completions request, checked but not yet tokenized.
struct GenerationRequest {
  Endpoint endpoint = Endpoint::Completions;
  std::string model;
  // Completions: the prompt as text, or as token ids (prompt_is_tokens).
  std::string prompt_text;
  std::vector<int32_t> prompt_tokens;
  bool prompt_is_tokens = false;
  bool echo = false;
  // Chat.
  std::vector<ChatMessage> messages;

  int32_t max_tokens = -1;  // -1: not given (completions: 16; chat: what the context leaves)
  int32_t n = 1;
  SamplingParams sampling;  // OpenAI defaults: temperature 1, top_p 1, no top_k / min_p
  bool seed_given = false;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  bool logprobs = false;     // completions: `logprobs` given (as an int); chat: `logprobs: true`
  int32_t top_logprobs = 0;  // alternatives per token
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

// Parses a request body. Fields the server does not know are ignored; fields it knows with a
// wrong type or value, and features it does not offer (logit_bias, tools, ...), are refused.
std::optional<ApiError> parse_request(Endpoint endpoint, const std::string& body,
                                      const ApiLimits& limits, GenerationRequest* out);

// Token ids for the request's prompt (chat: rendered with the template first). n_vocab checks
// token-id prompts.
std::optional<ApiError> tokenize_prompt(const GenerationRequest& req, const Tokenizer& tok,
                                        const ChatTemplate* tmpl, std::vector<int32_t>* out);

// What one choice produced, gathered from its events.
struct ChoiceOutput {
  std::string text;
  std::vector<GeneratedToken> tokens;
  FinishReason finish = FinishReason::None;
  std::string error;
  int32_t n_generated = 0;
};

// The parts of a response that do not depend on events.
struct ResponseMeta {
  std::string id;  // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;
  std::string model;
  Endpoint endpoint = Endpoint::Completions;
  bool logprobs = false;
  int32_t top_logprobs = 0;
  std::string echo;  // completions with echo: the prompt text put in front of the output
};

// "stop" / "length"; nullptr for None, Cancelled and Error (which never reach a client as a
// finish reason).
const char* openai_finish_reason(FinishReason r);
std::string new_response_id(Endpoint endpoint);

json usage_json(int32_t n_prompt, int32_t n_completion);

// Non-streaming response body.
json response_json(const ResponseMeta& meta, const std::vector<ChoiceOutput>& choices,
                   int32_t n_prompt, const Tokenizer& tok);

// Streaming: the chunks, each to be sent as "data: <json>\n\n".
// Chat's first chunk of a choice: delta {"role": "assistant", "content": ""}.
json chat_role_chunk(const ResponseMeta& meta, int32_t index, bool include_usage);
// One event's worth of a choice; text_offset carries the completions text_offset across chunks.
json event_chunk(const ResponseMeta& meta, const ChoiceEvent& ev, const Tokenizer& tok,
                 bool include_usage, int64_t* text_offset);
// stream_options.include_usage: the last chunk, choices empty.
json usage_chunk(const ResponseMeta& meta, int32_t n_prompt, int32_t n_completion);

// Logprobs in each endpoint's format, for the tokens of one response or chunk (end-of-generation
// tokens, which the Engine reports but the text leaves out, are skipped).
json completion_logprobs_json(const std::vector<GeneratedToken>& tokens, const Tokenizer& tok,
                              int64_t* text_offset);
json chat_logprobs_json(const std::vector<GeneratedToken>& tokens, const Tokenizer& tok);

}  // namespace qilin::server
