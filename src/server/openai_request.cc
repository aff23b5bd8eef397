// OpenAI request bodies, parsed and checked into GenerationRequest (every rejection an ApiError
// naming the field), and their prompts tokenized; see openai_api.h. The response side (JSON of
// responses, stream chunks and errors) is openai_response.cc.
#include "server/openai_api.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

namespace qilin::server {

namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "integer";
    case json::value_t::number_float:
      return "number";
    case json::value_t::string:
      return "string";
    case json::value_t::array:
      return "array";
    case json::value_t::object:
      return "object";
    default:
      return "value";
  }
}

// The value for an error message, short whatever the client sent. Arrays and objects are
// described, never dumped: nlohmann's dump recurses once per level of nesting, and a client's
// value must not decide how deep this thread's stack goes. A string is cut before it is quoted.
std::string shown(const json& v) {
  if (v.is_array()) return "(an array of " + std::to_string(v.size()) + " elements)";
  if (v.is_object()) return "(an object with " + std::to_string(v.size()) + " members)";
  if (v.is_string() && v.get_ref<const std::string&>().size() > 60) {
    return dump_json(v.get_ref<const std::string&>().substr(0, 60)) + "...";
  }
  return dump_json(v);  // a scalar: short
}

// The deepest nesting of arrays and objects in a JSON text (a scan that skips strings; the
// text need not be valid), stopping once it passes limit.
int json_depth(const std::string& text, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) break;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

ApiError wrong_type(const std::string& param, const char* want, const json& v) {
  return bad_param(param,
                   "'" + param + "' must be " + want + ", got " + type_name(v) + " " + shown(v));
}

// Absent and null both mean "not given" (the official clients send null for unset fields).
const json* field(const json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

// An integer in [lo, hi]; integral floats (16.0) are accepted, as JSON does not tell them apart.
std::optional<ApiError> int_value(const json& v, const std::string& param, int64_t lo, int64_t hi,
                                  int64_t* out) {
  const std::string range = " between " + std::to_string(lo) + " and " + std::to_string(hi);
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(hi)) {
      return bad_param(param, "'" + param + "' must be" + range + ", got " + shown(v));
    }
    *out = static_cast<int64_t>(u);
  } else if (v.is_number_integer()) {
    *out = v.get<int64_t>();
  } else if (v.is_number_float()) {
    const double d = v.get<double>();
    if (!std::isfinite(d) || d != std::floor(d) || d < static_cast<double>(lo) ||
        d > static_cast<double>(hi)) {
      return bad_param(param, "'" + param + "' must be an integer" + range + ", got " + shown(v));
    }
    *out = static_cast<int64_t>(d);
  } else {
    return wrong_type(param, ("an integer" + range).c_str(), v);
  }
  if (*out < lo || *out > hi) {
    return bad_param(param, "'" + param + "' must be" + range + ", got " + shown(v));
  }
  return std::nullopt;
}

std::optional<ApiError> get_int(const json& obj, const char* key, int64_t lo, int64_t hi,
                                int64_t* out, bool* given = nullptr) {
  const json* v = field(obj, key);
  if (given) *given = v != nullptr;
  if (!v) return std::nullopt;
  return int_value(*v, key, lo, hi, out);
}

std::optional<ApiError> get_int32(const json& obj, const char* key, int64_t lo, int64_t hi,
                                  int32_t* out, bool* given = nullptr) {
  int64_t x = *out;
  auto e = get_int(obj, key, lo, hi, &x, given);
  if (!e) *out = static_cast<int32_t>(x);
  return e;
}

// A number in [lo, hi] (or (lo, hi] when lo_open).
std::optional<ApiError> get_float(const json& obj, const char* key, double lo, double hi,
                                  float* out, bool lo_open = false) {
  const json* v = field(obj, key);
  if (!v) return std::nullopt;
  char range[96];
  std::snprintf(range, sizeof(range), "a number in %c%g, %g]", lo_open ? '(' : '[', lo, hi);
  if (!v->is_number()) return wrong_type(key, range, *v);
  const double d = v->get<double>();
  if (!(d <= hi) || (lo_open ? !(d > lo) : !(d >= lo))) {
    return bad_param(key, std::string("'") + key + "' must be " + range + ", got " + shown(*v));
  }
  *out = static_cast<float>(d);
  return std::nullopt;
}

std::optional<ApiError> get_bool(const json& obj, const char* key, bool* out) {
  const json* v = field(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) return wrong_type(key, "a boolean", *v);
  *out = v->get<bool>();
  return std::nullopt;
}

std::optional<ApiError> parse_stop(const json& obj, const ApiLimits& lim,
                                   std::vector<std::string>* out) {
  const json* v = field(obj, "stop");
  if (!v) return std::nullopt;
  std::vector<const json*> items;
  if (v->is_string()) {
    items.push_back(v);
  } else if (v->is_array()) {
    if (v->size() > static_cast<size_t>(lim.max_stop)) {
      return bad_param("stop", "'stop' may hold at most " + std::to_string(lim.max_stop) +
                                   " strings, got " + std::to_string(v->size()));
    }
    for (const json& s : *v) items.push_back(&s);
  } else {
    return wrong_type("stop", "a string or an array of strings", *v);
  }
  for (size_t i = 0; i < items.size(); ++i) {
    const json& s = *items[i];
    const std::string p = v->is_array() ? "stop[" + std::to_string(i) + "]" : "stop";
    if (!s.is_string()) return wrong_type(p, "a string", s);
    const std::string& str = s.get_ref<const std::string&>();
    if (str.empty()) return bad_param(p, "'" + p + "' must not be empty");
    if (str.size() > static_cast<size_t>(lim.max_stop_bytes)) {
      return bad_param(
          p, "'" + p + "' is longer than " + std::to_string(lim.max_stop_bytes) + " bytes");
    }
    out->push_back(str);
  }
  return std::nullopt;
}

// Token ids in a prompt array; vocabulary bounds are checked after parsing (tokenize_prompt).
std::optional<ApiError> parse_token_array(const json& arr, const std::string& param,
                                          std::vector<int32_t>* out) {
  out->reserve(arr.size());
  for (size_t i = 0; i < arr.size(); ++i) {
    int64_t id = 0;
    auto e = int_value(arr[i], param + "[" + std::to_string(i) + "]", 0, kInt32Max, &id);
    if (e) return e;
    out->push_back(static_cast<int32_t>(id));
  }
  return std::nullopt;
}

std::optional<ApiError> parse_prompt(const json& body, GenerationRequest* r) {
  const json* v = field(body, "prompt");
  if (!v) return bad_param("prompt", "'prompt' is required");
  if (v->is_string()) {
    r->prompt_text = v->get<std::string>();
    return std::nullopt;
  }
  if (!v->is_array()) {
    return wrong_type("prompt", "a string, an array of token ids or an array of one string", *v);
  }
  if (v->empty()) return bad_param("prompt", "'prompt' must not be empty");
  const json& first = (*v)[0];
  if (first.is_number()) {
    r->prompt_is_tokens = true;
    return parse_token_array(*v, "prompt", &r->prompt_tokens);
  }
  if (v->size() > 1) {
    return bad_param("prompt",
                     "several prompts in one request are not supported; send one "
                     "request per prompt (or use n for several completions)");
  }
  if (first.is_string()) {
    r->prompt_text = first.get<std::string>();
    return std::nullopt;
  }
  if (first.is_array()) {
    if (first.empty()) return bad_param("prompt", "'prompt[0]' must not be empty");
    r->prompt_is_tokens = true;
    return parse_token_array(first, "prompt[0]", &r->prompt_tokens);
  }
  return wrong_type("prompt[0]", "a string or an array of token ids", first);
}

std::optional<ApiError> parse_messages(const json& body, const ApiLimits& lim,
                                       GenerationRequest* r) {
  const json* v = field(body, "messages");
  if (!v) return bad_param("messages", "'messages' is required");
  if (!v->is_array()) return wrong_type("messages", "an array of messages", *v);
  if (v->empty()) return bad_param("messages", "'messages' must not be empty");
  if (v->size() > static_cast<size_t>(lim.max_messages)) {
    return bad_param("messages", "'messages' may hold at most " + std::to_string(lim.max_messages) +
                                     " messages");
  }
  for (size_t i = 0; i < v->size(); ++i) {
    const json& m = (*v)[i];
    const std::string p = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) return wrong_type(p, "an object", m);
    const json* role = field(m, "role");
    if (!role) return bad_param(p + ".role", "'" + p + ".role' is required");
    if (!role->is_string()) return wrong_type(p + ".role", "a string", *role);
    ChatMessage msg;
    msg.role = role->get<std::string>();
    if (msg.role == "developer") msg.role = "system";  // the newer name for the same thing
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant" &&
        msg.role != "tool") {
      return bad_param(p + ".role", "'" + p +
                                        ".role' must be one of system, developer, user, "
                                        "assistant, tool, got " +
                                        shown(*role));
    }
    const json* content = field(m, "content");
    if (!content) {
      if (msg.role != "assistant") {
        return bad_param(p + ".content", "'" + p + ".content' is required");
      }
    } else if (content->is_string()) {
      msg.content = content->get<std::string>();
    } else if (content->is_array()) {
      // Content parts: only text parts, joined.
      for (size_t j = 0; j < content->size(); ++j) {
        const json& part = (*content)[j];
        const std::string pp = p + ".content[" + std::to_string(j) + "]";
        if (!part.is_object()) return wrong_type(pp, "a content part object", part);
        const json* type = field(part, "type");
        if (!type || !type->is_string() || type->get<std::string>() != "text") {
          return bad_param(pp + ".type", "only content parts of type 'text' are supported");
        }
        const json* text = field(part, "text");
        if (!text || !text->is_string()) {
          return bad_param(pp + ".text", "'" + pp + ".text' must be a string");
        }
        msg.content += text->get<std::string>();
      }
    } else {
      return wrong_type(p + ".content", "a string or an array of content parts", *content);
    }
    r->messages.push_back(std::move(msg));
  }
  return std::nullopt;
}

// Features the server does not offer are refused rather than silently ignored, when the
// request actually asks for them.
std::optional<ApiError> refuse_unsupported(const json& body) {
  auto asks = [&](const char* key) {
    const json* v = field(body, key);
    if (!v) return false;
    if (v->is_object() || v->is_array() || v->is_string()) return !v->empty();
    return true;
  };
  for (const char* key : {"logit_bias", "tools", "functions", "suffix"}) {
    if (asks(key)) {
      return bad_param(key, std::string("'") + key + "' is not supported by this server");
    }
  }
  if (const json* v = field(body, "best_of")) {
    if (!(v->is_number() && v->get<double>() == 1.0)) {
      return bad_param("best_of", "'best_of' is not supported by this server (only 1)");
    }
  }
  if (const json* v = field(body, "response_format")) {
    const json* t = v->is_object() ? field(*v, "type") : nullptr;
    if (!t || !t->is_string() || t->get<std::string>() != "text") {
      return bad_param("response_format", "only response_format {\"type\": \"text\"} is supported");
    }
  }
  return std::nullopt;
}

}  // namespace

ApiError bad_param(const std::string& param, const std::string& message) {
  ApiError e;
  e.status = 400;
  e.message = message;
  e.param = param;
  return e;
}

std::optional<ApiError> parse_request(Endpoint endpoint, const std::string& text,
                                      const ApiLimits& lim, GenerationRequest* r) {
  // Before parsing: every later step (checks, messages, destruction) may walk the value
  // recursively, so its depth must be bounded before it exists.
  if (json_depth(text, lim.max_json_depth) > lim.max_json_depth) {
    ApiError err;
    err.message = "the request body nests arrays and objects more than " +
                  std::to_string(lim.max_json_depth) + " levels deep";
    return err;
  }
  json body;
  try {
    body = json::parse(text);
  } catch (const json::exception& e) {
    ApiError err;
    err.message = std::string("the request body is not valid JSON: ") + e.what();
    return err;
  }
  if (!body.is_object()) {
    ApiError err;
    err.message = std::string("the request body must be a JSON object, got ") + type_name(body);
    return err;
  }
  *r = GenerationRequest{};
  r->endpoint = endpoint;
  // OpenAI's defaults: plain sampling from the softmax unless the request narrows it.
  r->sampling.temperature = 1.0f;
  r->sampling.top_k = 0;
  r->sampling.top_p = 1.0f;
  r->sampling.min_p = 0.0f;
  r->sampling.repeat_penalty = 1.0f;

  if (auto e = refuse_unsupported(body)) return e;
  if (const json* m = field(body, "model")) {
    if (!m->is_string()) return wrong_type("model", "a string", *m);
    r->model = m->get<std::string>();
  }
  if (endpoint == Endpoint::Completions) {
    if (auto e = parse_prompt(body, r)) return e;
    if (auto e = get_bool(body, "echo", &r->echo)) return e;
  } else {
    if (auto e = parse_messages(body, lim, r)) return e;
  }

  bool given = false;
  if (auto e = get_int32(body, "max_tokens", 1, kInt32Max, &r->max_tokens)) return e;
  if (endpoint == Endpoint::Chat) {
    if (auto e = get_int32(body, "max_completion_tokens", 1, kInt32Max, &r->max_tokens)) return e;
  }
  if (auto e = get_int32(body, "n", 1, lim.max_n, &r->n)) return e;
  SamplingParams& s = r->sampling;
  if (auto e = get_float(body, "temperature", 0.0, 2.0, &s.temperature)) return e;
  if (auto e = get_float(body, "top_p", 0.0, 1.0, &s.top_p, /*lo_open=*/true)) return e;
  if (auto e = get_int32(body, "top_k", 0, kInt32Max, &s.top_k)) return e;
  if (auto e = get_float(body, "min_p", 0.0, 1.0, &s.min_p)) return e;
  if (auto e = get_float(body, "frequency_penalty", -2.0, 2.0, &s.frequency_penalty)) return e;
  if (auto e = get_float(body, "presence_penalty", -2.0, 2.0, &s.presence_penalty)) return e;
  if (auto e = get_float(body, "repeat_penalty", 0.0, 10.0, &s.repeat_penalty, true)) return e;
  int64_t seed = 0;
  if (auto e = get_int(body, "seed", std::numeric_limits<int64_t>::min(),
                       std::numeric_limits<int64_t>::max(), &seed, &given)) {
    return e;
  }
  r->seed_given = given;
  if (given) s.seed = static_cast<uint64_t>(seed);
  if (auto e = parse_stop(body, lim, &r->stop)) return e;
  if (auto e = get_bool(body, "ignore_eos", &r->ignore_eos)) return e;
  if (auto e = get_bool(body, "stream", &r->stream)) return e;
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) return wrong_type("stream_options", "an object", *so);
    if (const json* iu = field(*so, "include_usage")) {
      if (!iu->is_boolean()) return wrong_type("stream_options.include_usage", "a boolean", *iu);
      r->include_usage = iu->get<bool>();
    }
  }

  if (endpoint == Endpoint::Completions) {
    int32_t lp = 0;
    if (auto e = get_int32(body, "logprobs", 0, lim.max_logprobs, &lp, &given)) return e;
    r->logprobs = given;
    r->top_logprobs = lp;
    if (r->logprobs && r->echo) {
      return bad_param("echo",
                       "'echo' together with 'logprobs' is not supported (prompt "
                       "log-probabilities are not computed)");
    }
  } else {
    if (auto e = get_bool(body, "logprobs", &r->logprobs)) return e;
    if (auto e = get_int32(body, "top_logprobs", 0, lim.max_logprobs, &r->top_logprobs, &given)) {
      return e;
    }
    if (given && !r->logprobs) {
      return bad_param("top_logprobs", "'top_logprobs' requires 'logprobs' to be true");
    }
  }
  if (Status st = s.validate(); !st) return bad_param("", st.message());
  return std::nullopt;
}

std::optional<ApiError> tokenize_prompt(const GenerationRequest& req, const Tokenizer& tok,
                                        const ChatTemplate* tmpl, std::vector<int32_t>* out) {
  if (req.endpoint == Endpoint::Chat) {
    if (!tmpl) {
      ApiError e = bad_param("messages",
                             "this model has no usable chat template; use "
                             "/v1/completions");
      e.code = "model_not_supported";
      return e;
    }
    auto text = tmpl->render(req.messages, true);
    if (!text) return bad_param("messages", text.status().message());
    *out = tok.encode(*text, true, true);
  } else if (req.prompt_is_tokens) {
    for (size_t i = 0; i < req.prompt_tokens.size(); ++i) {
      if (req.prompt_tokens[i] >= tok.n_vocab()) {
        return bad_param("prompt", "'prompt[" + std::to_string(i) + "]' is token id " +
                                       std::to_string(req.prompt_tokens[i]) +
                                       ", outside the vocabulary of " +
                                       std::to_string(tok.n_vocab()));
      }
    }
    *out = req.prompt_tokens;
  } else {
    *out = tok.encode(req.prompt_text, true, true);
  }
  if (out->empty()) {
    return bad_param(req.endpoint == Endpoint::Chat ? "messages" : "prompt",
                     "the prompt is empty (no tokens)");
  }
  return std::nullopt;
}

}  // namespace qilin::server
