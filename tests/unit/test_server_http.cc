// The HTTP layer of `qilin serve` over a scripted Backend: routes, key check, body limit, error
// shapes and statuses (every SubmitError), response and SSE chunk formats, disconnect ->
// cancel, hostile bodies. Real sockets on 127.0.0.1, no model run (only its tokenizer).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "formats/gguf.h"
#include "model/chat_template.h"
#include "model/tokenizer.h"
#include "server/http_server.h"
#include "test_util.h"

namespace qilin {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

// Emits `pieces` one per `delay` for each choice, on its own thread per request; honours
// cancel() at the next piece. next_error makes the next submit fail that way.
class FakeBackend final : public server::Backend {
 public:
  std::vector<std::string> pieces = {"Hello", ",", " world"};
  std::chrono::milliseconds delay{2};
  SubmitError next_error = SubmitError::None;

  ~FakeBackend() override { join(); }

  SubmitResult submit(RequestParams p, EventFn on_event) override {
    SubmitResult r;
    std::lock_guard<std::mutex> lock(mu_);
    if (next_error != SubmitError::None) {
      r.error = next_error;
      r.message = "scripted refusal";
      next_error = SubmitError::None;
      return r;
    }
    r.id = ++last_id_;
    params_.push_back(p);
    threads_.emplace_back([this, id = r.id, p = std::move(p), on_event = std::move(on_event)] {
      run(id, p, on_event);
    });
    return r;
  }
  void cancel(RequestId id) override {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_.push_back(id);
    cv_.notify_all();
  }
  EngineMetrics metrics() const override { return EngineMetrics{}; }
  int32_t max_new_tokens(int32_t n_prompt, int32_t) const override { return 100 - n_prompt; }

  std::vector<RequestParams> params() {
    std::lock_guard<std::mutex> lock(mu_);
    return params_;
  }
  bool was_cancelled(RequestId id) {
    std::lock_guard<std::mutex> lock(mu_);
    return std::find(cancelled_.begin(), cancelled_.end(), id) != cancelled_.end();
  }
  bool wait_cancelled(RequestId id, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] {
      return std::find(cancelled_.begin(), cancelled_.end(), id) != cancelled_.end();
    });
  }
  RequestId last_id() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_id_;
  }
  void join() {
    std::vector<std::thread> ts;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ts.swap(threads_);
    }
    for (auto& t : ts) t.join();
  }

 private:
  void run(RequestId id, const RequestParams& p, const EventFn& on_event) {
    const int32_t n_out = std::min<int32_t>(p.max_tokens, static_cast<int32_t>(pieces.size()));
    for (int32_t k = 0; k < n_out; ++k) {
      std::this_thread::sleep_for(delay);
      if (was_cancelled(id)) {
        for (int32_t i = 0; i < p.n; ++i) {
          ChoiceEvent ev;
          ev.id = id;
          ev.index = i;
          ev.finish = FinishReason::Cancelled;
          ev.n_prompt = static_cast<int32_t>(p.prompt.size());
          ev.n_generated = k;
          on_event(ev);
        }
        return;
      }
      for (int32_t i = 0; i < p.n; ++i) {
        ChoiceEvent ev;
        ev.id = id;
        ev.index = i;
        ev.text = pieces[k];
        GeneratedToken g;
        g.token = 100 + k;
        g.logprob = -0.5f;
        for (int32_t t = 0; t < p.top_logprobs; ++t) g.top.push_back({200 + t, -1.0f - t});
        if (p.logprobs || p.top_logprobs) ev.tokens.push_back(g);
        ev.n_prompt = static_cast<int32_t>(p.prompt.size());
        ev.n_generated = k + 1;
        if (k + 1 == n_out) {
          ev.finish = n_out < static_cast<int32_t>(pieces.size()) ? FinishReason::Length
                                                                  : FinishReason::Stop;
        }
        on_event(ev);
      }
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::thread> threads_;
  std::vector<RequestParams> params_;
  std::vector<RequestId> cancelled_;
  RequestId last_id_ = 0;
};

constexpr const char* kKey = "sk-test-0123456789";

class ServerHttp : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(test::model_present());
    auto f = GgufFile::open(test::default_model_path());
    ASSERT_TRUE(f.is_ok()) << f.status().message();
    file_ = f->release();
    auto t = Tokenizer::from_gguf(*file_);
    ASSERT_TRUE(t.is_ok()) << t.status().message();
    tok_ = t->release();
    auto src = file_->get_string("tokenizer.chat_template");
    ASSERT_TRUE(src.is_ok());
    auto tmpl = ChatTemplate::from_string(*src, "", tok_->token_text(tok_->eos()));
    ASSERT_TRUE(tmpl.is_ok()) << tmpl.status().message();
    tmpl_ = new ChatTemplate(std::move(*tmpl));
  }

  void SetUp() override {
    ASSERT_NE(tok_, nullptr);
    start(options());
  }
  void TearDown() override {
    if (server_) server_->stop(true);
    if (thread_.joinable()) thread_.join();
    backend_.join();
  }
  static server::ServerOptions options() {
    server::ServerOptions o;
    o.port = 0;
    o.api_key = kKey;
    o.max_body_bytes = 64 * 1024;
    o.http_threads = 16;
    o.model_id = "test-model";
    o.shutdown_timeout_s = 0.2;
    return o;
  }
  // Replaces the running server with one on options o.
  void start(const server::ServerOptions& o) {
    if (server_) server_->stop(true);
    if (thread_.joinable()) thread_.join();
    server_ = std::make_unique<server::HttpServer>(o, backend_, *tok_, tmpl_);
    auto port = server_->bind();
    ASSERT_TRUE(port.is_ok()) << port.status().message();
    port_ = *port;
    thread_ = std::thread([this] { server_->listen(); });
  }

  httplib::Client client() {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(10, 0);
    c.set_bearer_token_auth(kKey);
    return c;
  }
  httplib::Result post(const std::string& path, const std::string& body) {
    return client().Post(path.c_str(), body, "application/json");
  }
  // A body over the limit is refused with 413. The server may answer before the client has sent
  // the whole body and then close the connection, so the client can also see its upload cut off
  // (a write or read error, as curl would): both are a refusal. Never a 2xx, never a hang.
  static void expect_refused_413(const httplib::Result& r) {
    if (!r) {
      const httplib::Error e = r.error();
      EXPECT_TRUE(e == httplib::Error::Write || e == httplib::Error::Read ||
                  e == httplib::Error::Connection)
          << "unexpected client error " << httplib::to_string(e);
      return;
    }
    expect_error(r, 413, "");
  }
  // Status and parsed error of a request expected to fail.
  // param: the field the error must name ("" for null; nullptr: not checked).
  static void expect_error(const httplib::Result& r, int status, const char* param) {
    ASSERT_TRUE(r) << "no response";
    EXPECT_EQ(r->status, status) << r->body;
    json j = json::parse(r->body, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << r->body;
    ASSERT_TRUE(j.contains("error")) << r->body;
    const json& e = j["error"];
    EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty());
    EXPECT_TRUE(e["type"].is_string());
    EXPECT_TRUE(e.contains("code"));
    ASSERT_TRUE(e.contains("param"));
    if (!param) return;
    if (!*param) {
      EXPECT_TRUE(e["param"].is_null()) << r->body;
    } else {
      EXPECT_EQ(e["param"], param) << r->body;
    }
  }
  // The JSON payloads of an SSE body; "[DONE]" must be the last and is dropped.
  static std::vector<json> sse(const std::string& body, bool* done) {
    std::vector<json> out;
    *done = false;
    size_t pos = 0;
    while (pos < body.size()) {
      size_t end = body.find("\n\n", pos);
      if (end == std::string::npos) end = body.size();
      const std::string ev = body.substr(pos, end - pos);
      pos = end + 2;
      if (ev.rfind("data: ", 0) != 0) continue;
      const std::string data = ev.substr(6);
      EXPECT_FALSE(*done) << "event after [DONE]";
      if (data == "[DONE]") {
        *done = true;
        continue;
      }
      out.push_back(json::parse(data));
    }
    return out;
  }

  static GgufFile* file_;
  static Tokenizer* tok_;
  static ChatTemplate* tmpl_;
  FakeBackend backend_;
  std::unique_ptr<server::HttpServer> server_;
  std::thread thread_;
  int port_ = 0;
};
GgufFile* ServerHttp::file_ = nullptr;
Tokenizer* ServerHttp::tok_ = nullptr;
ChatTemplate* ServerHttp::tmpl_ = nullptr;

TEST_F(ServerHttp, HealthNeedsNoKeyEverythingElseDoes) {
  httplib::Client anon("127.0.0.1", port_);
  auto h = anon.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  for (const char* path : {"/v1/models", "/metrics", "/nowhere"}) {
    expect_error(anon.Get(path), 401, "");
  }
  expect_error(anon.Post("/v1/completions", R"({"prompt":"hi"})", "application/json"), 401, "");
  httplib::Client wrong("127.0.0.1", port_);
  wrong.set_bearer_token_auth("sk-test-0123456788");
  expect_error(wrong.Get("/v1/models"), 401, "");
  wrong.set_bearer_token_auth("sk-test-0123456789x");
  expect_error(wrong.Get("/v1/models"), 401, "");
  auto ok = client().Get("/v1/models");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
  json j = json::parse(ok->body);
  EXPECT_EQ(j["object"], "list");
  EXPECT_EQ(j["data"][0]["id"], "test-model");
  EXPECT_TRUE(backend_.params().empty());
}

TEST_F(ServerHttp, UnknownPathsAndMethods) {
  expect_error(client().Get("/v2/whatever"), 404, "");
  expect_error(post("/v1/embeddings", "{}"), 404, "");
  expect_error(client().Get("/v1/completions"), 405, "");
  expect_error(client().Get("/v1/models/other-model"), 404, "model");
  auto m = client().Get("/v1/models/test-model");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 200);
}

TEST_F(ServerHttp, BodyLimitWithAndWithoutContentLength) {
  const std::string big = R"({"prompt":")" + std::string(100 * 1024, 'a') + R"("})";
  expect_refused_413(post("/v1/completions", big));
  // Chunked upload: no Content-Length for httplib to check up front.
  auto r = client().Post(
      "/v1/completions",
      [&](size_t offset, httplib::DataSink& sink) {
        if (offset >= big.size()) {
          sink.done();
          return true;
        }
        const size_t n = std::min<size_t>(4096, big.size() - offset);
        sink.write(big.data() + offset, n);
        return true;
      },
      "application/json");
  expect_refused_413(r);
  // The server still serves.
  auto ok = post("/v1/completions", R"({"prompt":"hi"})");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
}

TEST_F(ServerHttp, BadJsonAndBadParametersNameTheField) {
  expect_error(post("/v1/completions", "{not json"), 400, "");
  expect_error(post("/v1/completions", "[1,2]"), 400, "");
  expect_error(post("/v1/completions", "\"\xff\xfe\""), 400, "");
  struct Case {
    const char* path;
    const char* body;
    const char* param;
  };
  const Case cases[] = {
      {"/v1/completions", R"({})", "prompt"},
      {"/v1/completions", R"({"prompt": 5})", "prompt"},
      {"/v1/completions", R"({"prompt": []})", "prompt"},
      {"/v1/completions", R"({"prompt": ["a", "b"]})", "prompt"},
      {"/v1/completions", R"({"prompt": [1, -2]})", "prompt[1]"},
      {"/v1/completions", R"({"prompt": [1, 99999999]})", "prompt"},
      {"/v1/completions", R"({"prompt": "hi", "max_tokens": "16"})", "max_tokens"},
      {"/v1/completions", R"({"prompt": "hi", "max_tokens": 0})", "max_tokens"},
      {"/v1/completions", R"({"prompt": "hi", "max_tokens": 1e300})", "max_tokens"},
      {"/v1/completions", R"({"prompt": "hi", "max_tokens": 2.5})", "max_tokens"},
      {"/v1/completions", R"({"prompt": "hi", "n": 0})", "n"},
      {"/v1/completions", R"({"prompt": "hi", "n": 1000})", "n"},
      {"/v1/completions", R"({"prompt": "hi", "temperature": -1})", "temperature"},
      {"/v1/completions", R"({"prompt": "hi", "temperature": "hot"})", "temperature"},
      {"/v1/completions", R"({"prompt": "hi", "top_p": 0})", "top_p"},
      {"/v1/completions", R"({"prompt": "hi", "top_p": 1.5})", "top_p"},
      {"/v1/completions", R"({"prompt": "hi", "stop": 3})", "stop"},
      {"/v1/completions", R"({"prompt": "hi", "stop": ["ok", 3]})", "stop[1]"},
      {"/v1/completions", R"({"prompt": "hi", "stop": [""]})", "stop[0]"},
      {"/v1/completions", R"({"prompt": "hi", "seed": "x"})", "seed"},
      {"/v1/completions", R"({"prompt": "hi", "stream": "yes"})", "stream"},
      {"/v1/completions", R"({"prompt": "hi", "logprobs": true})", "logprobs"},
      {"/v1/completions", R"({"prompt": "hi", "logprobs": 50})", "logprobs"},
      {"/v1/completions", R"({"prompt": "hi", "logprobs": 2, "echo": true})", "echo"},
      {"/v1/completions", R"({"prompt": "hi", "logit_bias": {"5": 1}})", "logit_bias"},
      {"/v1/completions", R"({"prompt": "hi", "model": 7})", "model"},
      {"/v1/completions", R"({"prompt": "hi", "stream_options": 1})", "stream_options"},
      {"/v1/chat/completions", R"({})", "messages"},
      {"/v1/chat/completions", R"({"messages": "hi"})", "messages"},
      {"/v1/chat/completions", R"({"messages": []})", "messages"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user"}]})", "messages[0].content"},
      {"/v1/chat/completions", R"({"messages": [{"role": "robot", "content": "x"}]})",
       "messages[0].role"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": 5}]})",
       "messages[0].content"},
      {"/v1/chat/completions",
       R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
       "messages[0].content[0].type"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}],
          "top_logprobs": 3})",
       "top_logprobs"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}],
          "logprobs": 1})",
       "logprobs"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}],
          "tools": [{"type": "function"}]})",
       "tools"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body);
    expect_error(post(c.path, c.body), 400, c.param);
  }
  EXPECT_TRUE(backend_.params().empty());
}

TEST_F(ServerHttp, HostileBodiesNeverCrash) {
  // Deep nesting, long strings, control bytes, many stop strings, huge numbers.
  expect_error(post("/v1/completions", std::string(30000, '[') + std::string(30000, ']')), 400, "");
  expect_error(post("/v1/completions", std::string(60000, '{')), 400, "");
  expect_error(post("/v1/completions", std::string("{\"prompt\":\"a\0b\"}", 16)), 400, "");
  std::string many = R"({"prompt":"hi","stop":[)";
  for (int i = 0; i < 100; ++i) many += std::string(i ? "," : "") + "\"s\"";
  many += "]}";
  expect_error(post("/v1/completions", many), 400, "stop");
  expect_error(post("/v1/completions", R"({"prompt":"hi","max_tokens":1e999999})"), 400, nullptr);
  expect_error(post("/v1/completions", R"({"prompt":"hi","seed":123456789012345678901234567890})"),
               400, "seed");
  auto ok = post("/v1/completions", R"({"prompt":"still alive?"})");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
}

// Issue 15, finding 1: a value nested 100,000 levels deep in a field with a type check was
// quoted back in the error message through nlohmann's recursive dump, which overflowed the
// worker's stack (SIGSEGV, the whole server gone). Depth is now limited before parsing, and
// error messages describe arrays and objects instead of dumping them.
TEST_F(ServerHttp, DeeplyNestedValuesAreRefusedNotDumped) {
  server::ServerOptions o = options();
  o.max_body_bytes = 4 << 20;
  start(o);
  const int deep = 100000;
  const std::string nest = std::string(deep, '[') + std::string(deep, ']');
  auto r = post("/v1/completions", R"({"prompt":"hi","model":)" + nest + "}");
  expect_error(r, 400, "");
  EXPECT_NE(r->body.find("64"), std::string::npos) << r->body;  // names the limit
  r = post("/v1/chat/completions", R"({"messages":[{"role":)" + nest + R"(,"content":"x"}]})");
  expect_error(r, 400, "");
  const std::string objs = [&] {
    std::string s;
    for (int i = 0; i < deep; ++i) s += R"({"a":)";
    return s + "1" + std::string(deep, '}');
  }();
  expect_error(post("/v1/completions", R"({"prompt":"hi","model":)" + objs + "}"), 400, "");
  // At the limit (the body's object is level 1): parsed, and the wrong type reported without
  // quoting the value back.
  const std::string at_limit =
      std::string(63, '[') + "\"" + std::string(500, 'x') + "\"" + std::string(63, ']');
  r = post("/v1/completions", R"({"prompt":"hi","model":)" + at_limit + "}");
  expect_error(r, 400, "model");
  EXPECT_EQ(r->body.find("xxxxxxxxxx"), std::string::npos) << r->body;
  EXPECT_LT(r->body.size(), 300u) << r->body;
  // A long string is quoted clipped; brackets inside strings are not nesting.
  r = post("/v1/chat/completions",
           R"({"messages":[{"role":")" + std::string(5000, '[') + R"(","content":"x"}]})");
  expect_error(r, 400, "messages[0].role");
  EXPECT_LT(r->body.size(), 400u) << r->body;
  r = post("/v1/completions", R"({"prompt":")" + std::string(5000, '{') + R"(\"]"})");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
}

TEST_F(ServerHttp, SubmitErrorsMapToStatuses) {
  struct Case {
    SubmitError error;
    int status;
    const char* code;
  };
  for (const Case& c : {Case{SubmitError::QueueFull, 429, "queue_full"},
                        Case{SubmitError::ShuttingDown, 503, "shutting_down"},
                        Case{SubmitError::TooLong, 400, "context_length_exceeded"},
                        Case{SubmitError::Invalid, 400, nullptr}}) {
    backend_.next_error = c.error;
    auto r = post("/v1/completions", R"({"prompt":"hi"})");
    expect_error(r, c.status, "");
    json e = json::parse(r->body)["error"];
    if (c.code) {
      EXPECT_EQ(e["code"], c.code);
    } else {
      EXPECT_TRUE(e["code"].is_null());
    }
  }
}

TEST_F(ServerHttp, CompletionResponseAndParameters) {
  auto r = post("/v1/completions", R"({"model":"x","prompt":"Hello there","temperature":0.5,
      "top_p":0.9,"seed":7,"stop":["\n\n"],"n":2,"logprobs":2})");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json j = json::parse(r->body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "test-model");
  EXPECT_EQ(j["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  ASSERT_EQ(j["choices"].size(), 2u);
  for (int i = 0; i < 2; ++i) {
    const json& c = j["choices"][i];
    EXPECT_EQ(c["index"], i);
    EXPECT_EQ(c["text"], "Hello, world");
    EXPECT_EQ(c["finish_reason"], "stop");
    ASSERT_TRUE(c["logprobs"].is_object());
    EXPECT_EQ(c["logprobs"]["tokens"].size(), 3u);
    EXPECT_EQ(c["logprobs"]["token_logprobs"][0], -0.5);
    EXPECT_EQ(c["logprobs"]["top_logprobs"][0].size(), 2u);
    EXPECT_EQ(c["logprobs"]["text_offset"].size(), 3u);
  }
  const std::vector<int32_t> prompt = tok_->encode("Hello there", true, true);
  EXPECT_EQ(j["usage"]["prompt_tokens"], prompt.size());
  EXPECT_EQ(j["usage"]["completion_tokens"], 6);
  EXPECT_EQ(j["usage"]["total_tokens"], prompt.size() + 6);
  const RequestParams p = backend_.params().back();
  EXPECT_EQ(p.prompt, prompt);
  EXPECT_EQ(p.max_tokens, 16);
  EXPECT_EQ(p.n, 2);
  EXPECT_FLOAT_EQ(p.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(p.sampling.top_p, 0.9f);
  EXPECT_EQ(p.sampling.top_k, 0);
  EXPECT_EQ(p.sampling.seed, 7u);
  EXPECT_EQ(p.stop, std::vector<std::string>{"\n\n"});
  EXPECT_TRUE(p.logprobs);
  EXPECT_EQ(p.top_logprobs, 2);

  // Token-id prompts go through unchanged; max_tokens below the script gives "length".
  r = post("/v1/completions", R"({"prompt":[1,2,3],"max_tokens":2,"echo":true})");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  j = json::parse(r->body);
  EXPECT_EQ(backend_.params().back().prompt, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["choices"][0]["text"], tok_->decode({1, 2, 3}) + "Hello,");
}

TEST_F(ServerHttp, ChatResponseUsesTheTemplate) {
  auto r = post("/v1/chat/completions", R"({"messages":[{"role":"system","content":"Be brief."},
      {"role":"user","content":[{"type":"text","text":"Hi"},{"type":"text","text":"!"}]}],
      "logprobs":true,"top_logprobs":1})");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json j = json::parse(r->body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "Hello, world");
  const json& lp = j["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(lp.size(), 3u);
  EXPECT_TRUE(lp[0]["bytes"].is_array());
  EXPECT_EQ(lp[0]["top_logprobs"].size(), 1u);
  auto text = tmpl_->render({{"system", "Be brief."}, {"user", "Hi!"}}, true);
  ASSERT_TRUE(text.is_ok());
  const RequestParams p = backend_.params().back();
  EXPECT_EQ(p.prompt, tok_->encode(*text, true, true));
  EXPECT_EQ(p.max_tokens, 100 - static_cast<int32_t>(p.prompt.size()));  // the room left
}

TEST_F(ServerHttp, CompletionStreamChunks) {
  auto r = post("/v1/completions",
                R"({"prompt":"hi","stream":true,"stream_options":{"include_usage":true}})");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
  bool done = false;
  std::vector<json> chunks = sse(r->body, &done);
  EXPECT_TRUE(done);
  ASSERT_EQ(chunks.size(), 4u);  // three pieces, then usage
  std::string text;
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(chunks[i]["object"], "text_completion");
    EXPECT_TRUE(chunks[i]["usage"].is_null());
    text += chunks[i]["choices"][0]["text"].get<std::string>();
    EXPECT_EQ(chunks[i]["choices"][0]["finish_reason"].is_null(), i < 2);
  }
  EXPECT_EQ(text, "Hello, world");
  EXPECT_EQ(chunks[2]["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(chunks[3]["choices"].empty());
  EXPECT_EQ(chunks[3]["usage"]["completion_tokens"], 3);
}

TEST_F(ServerHttp, ChatStreamChunks) {
  auto r = post("/v1/chat/completions",
                R"({"messages":[{"role":"user","content":"hi"}],"stream":true,"n":2})");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  bool done = false;
  std::vector<json> chunks = sse(r->body, &done);
  EXPECT_TRUE(done);
  std::string text[2];
  bool role_first[2] = {false, false}, finished[2] = {false, false};
  int seen[2] = {0, 0};
  for (const json& c : chunks) {
    EXPECT_EQ(c["object"], "chat.completion.chunk");
    EXPECT_FALSE(c.contains("usage"));
    ASSERT_EQ(c["choices"].size(), 1u);
    const json& ch = c["choices"][0];
    const int i = ch["index"];
    ASSERT_TRUE(i == 0 || i == 1);
    EXPECT_FALSE(finished[i]) << "chunk after finish_reason";
    if (seen[i]++ == 0) {
      role_first[i] = ch["delta"].value("role", "") == "assistant";
      continue;
    }
    EXPECT_FALSE(ch["delta"].contains("role"));
    if (!ch["finish_reason"].is_null()) {
      EXPECT_EQ(ch["finish_reason"], "stop");
      EXPECT_TRUE(ch["delta"].empty());  // the reason comes alone, after the content
      finished[i] = true;
    } else {
      text[i] += ch["delta"]["content"].get<std::string>();
    }
  }
  for (int i = 0; i < 2; ++i) {
    EXPECT_TRUE(role_first[i]);
    EXPECT_TRUE(finished[i]);
    EXPECT_EQ(text[i], "Hello, world");
  }
}

// A TCP connection to the server with a receive timeout (0: none); -1 if it could not connect.
int connect_raw(int port, int timeout_ms = 5000) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  timeval tv{};
  tv.tv_sec = timeout_ms / 1000;
  tv.tv_usec = (timeout_ms % 1000) * 1000;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

// Connects, sends a raw request and returns the socket (or -1).
int raw_request(int port, const std::string& body) {
  const int fd = connect_raw(port, 0);
  if (fd < 0) return -1;
  const std::string req =
      "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " +
      std::string(kKey) + "\r\nContent-Type: application/json\r\n" +
      "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  if (send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return -1;
  }
  return fd;
}

TEST_F(ServerHttp, DisconnectMidStreamCancels) {
  backend_.pieces.assign(5000, "x");
  backend_.delay = 2ms;
  const int fd = raw_request(port_, R"({"prompt":"hi","stream":true,"max_tokens":5000})");
  ASSERT_GE(fd, 0);
  char buf[4096];
  std::string got;
  while (got.find("data: ") == std::string::npos) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    ASSERT_GT(n, 0);
    got.append(buf, n);
  }
  EXPECT_NE(got.find("200 OK"), std::string::npos);
  close(fd);
  const RequestId id = backend_.last_id();
  EXPECT_TRUE(backend_.wait_cancelled(id, 5s)) << "the server did not cancel request " << id;
  // The worker is released and counted.
  for (int i = 0; i < 200 && server_->counters().in_flight != 0; ++i)
    std::this_thread::sleep_for(10ms);
  const server::HttpCounters c = server_->counters();
  EXPECT_EQ(c.in_flight, 0);
  EXPECT_EQ(c.disconnects, 1u);
  EXPECT_EQ(c.submitted, 1u);
}

TEST_F(ServerHttp, MetricsAreExposed) {
  ASSERT_TRUE(post("/v1/completions", R"({"prompt":"hi"})"));
  auto r = client().Get("/metrics");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  for (const char* name :
       {"qilin_requests_received_total", "qilin_prompt_tokens_total",
        "qilin_generation_tokens_total", "qilin_requests_waiting", "qilin_sequences_running",
        "qilin_kv_blocks_used", "qilin_kv_blocks_free", "qilin_kv_blocks_cached",
        "qilin_prefix_cache_hit_tokens_total", "qilin_preemptions_total",
        "qilin_time_to_first_token_seconds_bucket{le=\"+Inf\"}",
        "qilin_inter_token_latency_seconds_count",
        "qilin_http_responses_total{endpoint=\"/v1/completions\",status=\"200\"} 1",
        "qilin_http_generation_in_flight 0"}) {
    EXPECT_NE(r->body.find(name), std::string::npos) << name;
  }
}

TEST_F(ServerHttp, StopEndsStreamsInFlight) {
  backend_.pieces.assign(100000, "x");
  backend_.delay = 1ms;
  std::unique_ptr<httplib::Result> r;
  std::thread t([&] {
    r = std::make_unique<httplib::Result>(
        post("/v1/completions", R"({"prompt":"hi","stream":true,"max_tokens":100000})"));
  });
  while (backend_.last_id() == 0) std::this_thread::sleep_for(5ms);
  std::this_thread::sleep_for(50ms);
  server_->stop();
  t.join();
  ASSERT_TRUE(r && *r);
  EXPECT_EQ((*r)->status, 200);
  EXPECT_NE((*r)->body.find("shutting_down"), std::string::npos);
  const std::string tail = "data: [DONE]\n\n";
  ASSERT_GE((*r)->body.size(), tail.size());
  EXPECT_EQ((*r)->body.substr((*r)->body.size() - tail.size()), tail);  // ends cleanly
  EXPECT_TRUE(backend_.was_cancelled(backend_.last_id()));
  // New requests are refused.
  thread_.join();
}

// ---- Policy for browsers and slow clients (issue 15) ----


// Everything the server sends until it closes (or the receive timeout; *closed says which).
std::string read_until_close(int fd, bool* closed = nullptr) {
  std::string got;
  char buf[4096];
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) {
      if (closed) *closed = n == 0 || errno == ECONNRESET;
      return got;
    }
    got.append(buf, n);
  }
}

// A whole request on its own connection (Connection: close); the raw response.
std::string raw_exchange(int port, const std::string& request) {
  const int fd = connect_raw(port);
  if (fd < 0) return "";
  send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string got = read_until_close(fd);
  close(fd);
  return got;
}

std::string get_request(const std::string& path, const std::string& host) {
  return "GET " + path + " HTTP/1.1\r\n" + (host.empty() ? "" : "Host: " + host + "\r\n") +
         "Authorization: Bearer " + kKey + "\r\nConnection: close\r\n\r\n";
}

int status_of(const std::string& response) {
  return response.size() > 12 ? std::atoi(response.c_str() + 9) : -1;
}

// DNS rebinding: a page on attacker.example whose name now resolves to 127.0.0.1 talks to the
// server with its own name in Host. On loopback only this machine's names are served.
TEST_F(ServerHttp, HostHeaderIsCheckedOnLoopback) {
  const std::string p = std::to_string(port_);
  for (const std::string& host :
       std::vector<std::string>{"attacker.example", "attacker.example:" + p, "127.0.0.1.evil:" + p,
                                "localhost:1" + p, ""}) {
    SCOPED_TRACE(host);
    const std::string r = raw_exchange(port_, get_request("/v1/models", host));
    EXPECT_EQ(status_of(r), 403) << r;
    EXPECT_NE(r.find("host_not_allowed"), std::string::npos) << r;
  }
  // /health and unknown paths too: the check comes before everything.
  EXPECT_EQ(status_of(raw_exchange(port_, get_request("/health", "attacker.example"))), 403);
  EXPECT_EQ(status_of(raw_exchange(port_, get_request("/nowhere", "attacker.example"))), 403);
  for (const std::string& host :
       std::vector<std::string>{"localhost", "localhost:" + p, "127.0.0.1", "127.0.0.1:" + p,
                                "[::1]:" + p, "LOCALHOST"}) {
    SCOPED_TRACE(host);
    EXPECT_EQ(status_of(raw_exchange(port_, get_request("/v1/models", host))), 200);
  }
  EXPECT_TRUE(backend_.params().empty());

  server::ServerOptions o = options();
  o.host_aliases = {"qilin.internal"};
  start(o);
  const std::string q = std::to_string(port_);
  EXPECT_EQ(status_of(raw_exchange(port_, get_request("/v1/models", "qilin.internal"))), 200);
  EXPECT_EQ(status_of(raw_exchange(port_, get_request("/v1/models", "qilin.internal:" + q))), 200);
  EXPECT_EQ(status_of(raw_exchange(port_, get_request("/v1/models", "attacker.example"))), 403);

  // Bound to every address, the server cannot know its names: Host is not checked.
  o = options();
  o.host = "0.0.0.0";
  start(o);
  EXPECT_EQ(status_of(raw_exchange(port_, get_request("/v1/models", "attacker.example"))), 200);
}

// A page on another origin: without --cors-origin it gets no CORS permission, its preflight is
// refused and so are its simple requests (which a browser sends without asking first).
TEST_F(ServerHttp, CrossOriginRequestsNeedAListedOrigin) {
  httplib::Client c = client();
  const httplib::Headers evil = {{"Origin", "http://evil.example"}};
  auto r = c.Post("/v1/completions", evil, R"({"prompt":"hi"})", "text/plain");
  expect_error(r, 403, "");
  EXPECT_FALSE(r->has_header("Access-Control-Allow-Origin"));
  r = c.Post("/v1/completions", evil, R"({"prompt":"hi"})", "application/json");
  expect_error(r, 403, "");
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "origin_not_allowed");
  r = c.Options("/v1/completions",
                {{"Origin", "http://evil.example"}, {"Access-Control-Request-Method", "POST"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 403);
  EXPECT_FALSE(r->has_header("Access-Control-Allow-Origin"));
  // A plain OPTIONS (no Origin) is answered, not a 404.
  r = c.Options("/v1/completions");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 204);
  EXPECT_EQ(r->get_header_value("Allow"), "GET, POST, OPTIONS");
  EXPECT_TRUE(backend_.params().empty());

  server::ServerOptions o = options();
  o.cors_origins = {"http://app.example"};
  start(o);
  httplib::Client anon("127.0.0.1", port_);  // a preflight carries no key
  r = anon.Options("/v1/chat/completions", {{"Origin", "http://app.example"},
                                            {"Access-Control-Request-Method", "POST"},
                                            {"Access-Control-Request-Headers",
                                             "authorization,content-type,x-stainless-os"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 204);
  EXPECT_EQ(r->get_header_value("Access-Control-Allow-Origin"), "http://app.example");
  EXPECT_NE(r->get_header_value("Access-Control-Allow-Methods").find("POST"), std::string::npos);
  const std::string allowed = r->get_header_value("Access-Control-Allow-Headers");
  for (const char* h : {"Authorization", "Content-Type", "x-stainless-os"}) {
    EXPECT_NE(allowed.find(h), std::string::npos) << allowed;
  }
  EXPECT_EQ(r->get_header_value("Vary"), "Origin");
  EXPECT_EQ(r->get_header_value("Access-Control-Max-Age"), "600");
  // The listed origin's requests are served, and say so; errors too (the page reads them).
  r = client().Post("/v1/completions", {{"Origin", "http://app.example"}}, R"({"prompt":"hi"})",
                    "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("Access-Control-Allow-Origin"), "http://app.example");
  r = anon.Post("/v1/completions", {{"Origin", "http://app.example"}}, "{}", "application/json");
  expect_error(r, 401, "");
  EXPECT_EQ(r->get_header_value("Access-Control-Allow-Origin"), "http://app.example");
  // Others still are not.
  r = client().Options("/v1/completions", {{"Origin", "http://app.example.evil"},
                                           {"Access-Control-Request-Method", "POST"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 403);
  EXPECT_FALSE(r->has_header("Access-Control-Allow-Origin"));
}

// Browsers send text/plain, form and multipart bodies cross-origin without a preflight: a
// generation request must say it is JSON.
TEST_F(ServerHttp, PostNeedsJsonContentType) {
  httplib::Client c = client();
  for (const char* type : {"text/plain", "application/x-www-form-urlencoded",
                           "multipart/form-data; boundary=x", "application/jsonx", ""}) {
    SCOPED_TRACE(type);
    auto r = c.Post("/v1/completions", R"({"prompt":"hi"})", type);
    expect_error(r, 415, "");
    EXPECT_EQ(json::parse(r->body)["error"]["code"], "unsupported_media_type");
  }
  EXPECT_TRUE(backend_.params().empty());
  for (const char* type : {"application/json; charset=utf-8", "Application/JSON",
                           " application/json ;charset=UTF-8"}) {
    SCOPED_TRACE(type);
    auto r = c.Post("/v1/completions", R"({"prompt":"hi"})", type);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << r->body;
  }
}

// Connections that never send a request hold no worker: with 4 workers and 40 silent
// connections, a client is served at once (each silent one used to hold a worker for the
// keep-alive timeout, 5 s, so the client waited behind them).
TEST_F(ServerHttp, IdleConnectionsDoNotStarveClients) {
  server::ServerOptions o = options();
  o.http_threads = 4;
  start(o);
  std::vector<int> idle;
  for (int i = 0; i < 40; ++i) {
    const int fd = connect_raw(port_);
    ASSERT_GE(fd, 0);
    idle.push_back(fd);
  }
  std::this_thread::sleep_for(100ms);
  const auto t0 = std::chrono::steady_clock::now();
  httplib::Client c = client();
  c.set_read_timeout(8, 0);
  auto r = c.Get("/v1/models");
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_LT(s, 1.0) << "a client waited " << s << " s behind silent connections";
  for (int fd : idle) close(fd);
}

// Past max_connections a new connection gets a clean 503 and is closed; once others close,
// clients are served again. A connection silent for the idle timeout is closed.
TEST_F(ServerHttp, ConnectionCapAndIdleTimeout) {
  server::ServerOptions o = options();
  o.max_connections = 8;
  o.idle_timeout_s = 1;
  start(o);
  std::vector<int> idle;
  for (int i = 0; i < 8; ++i) idle.push_back(connect_raw(port_));
  std::this_thread::sleep_for(100ms);
  const std::string r = raw_exchange(port_, get_request("/v1/models", "127.0.0.1"));
  EXPECT_EQ(status_of(r), 503) << r;
  EXPECT_NE(r.find("too_many_connections"), std::string::npos) << r;
  // The silent ones are closed by the server after the idle timeout.
  const auto t0 = std::chrono::steady_clock::now();
  for (int fd : idle) {
    bool closed = false;
    read_until_close(fd, &closed);
    EXPECT_TRUE(closed) << "a silent connection was left open";
    close(fd);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 2.5);
  EXPECT_EQ(status_of(raw_exchange(port_, get_request("/v1/models", "127.0.0.1"))), 200);
}

// A request must arrive whole within the read timeout, however it trickles: a client sending a
// header byte every 200 ms (each read alone well within any per-read timeout) is cut off.
TEST_F(ServerHttp, SlowRequestsAreCutOff) {
  server::ServerOptions o = options();
  o.read_timeout_s = 1;
  start(o);
  const int fd = connect_raw(port_, 200);
  ASSERT_GE(fd, 0);
  const std::string start_line = "GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  send(fd, start_line.data(), start_line.size(), MSG_NOSIGNAL);
  const auto t0 = std::chrono::steady_clock::now();
  bool cut = false;
  char buf[256];
  while (std::chrono::steady_clock::now() - t0 < 4s) {
    if (send(fd, "X", 1, MSG_NOSIGNAL) != 1) {
      cut = true;
      break;
    }
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);  // waits up to 200 ms
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
      cut = true;
      break;
    }
  }
  close(fd);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_TRUE(cut) << "a trickling request held its worker for 4 s";
  EXPECT_LT(s, 2.5);
  EXPECT_EQ(status_of(raw_exchange(port_, get_request("/v1/models", "127.0.0.1"))), 200);
}

// stop() lets a running stream finish within the shutdown timeout, closes kept-alive idle
// connections at once and accepts no new ones.
TEST_F(ServerHttp, GracefulStopFinishesRunningStreams) {
  server::ServerOptions o = options();
  o.shutdown_timeout_s = 10;
  o.idle_timeout_s = 30;
  start(o);
  httplib::Client idle = client();
  idle.set_keep_alive(true);
  auto h = idle.Get("/health");  // then idle on its kept-alive connection
  ASSERT_TRUE(h);
  backend_.pieces.assign(100, "x");
  backend_.delay = 5ms;  // 0.5 s in all
  std::unique_ptr<httplib::Result> r;
  std::thread t([&] {
    r = std::make_unique<httplib::Result>(
        post("/v1/completions", R"({"prompt":"hi","stream":true,"max_tokens":100})"));
  });
  while (backend_.last_id() == 0) std::this_thread::sleep_for(5ms);
  std::this_thread::sleep_for(50ms);
  const auto t0 = std::chrono::steady_clock::now();
  server_->stop();
  EXPECT_LT(connect_raw(port_), 0) << "a connection was accepted after stop()";
  t.join();
  thread_.join();  // listen() returned: every connection closed, the idle one included
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 2.0);
  ASSERT_TRUE(r && *r);
  EXPECT_EQ((*r)->status, 200);
  bool done = false;
  std::vector<json> chunks = sse((*r)->body, &done);
  EXPECT_TRUE(done);
  ASSERT_FALSE(chunks.empty());
  EXPECT_EQ(chunks.back()["choices"][0]["finish_reason"], "stop");
  EXPECT_FALSE(backend_.was_cancelled(backend_.last_id()));
}

// The subcommand as a user meets it (no model run: help and a refused model path).
TEST(ServeCli, HelpAndBadModel) {
  auto run = [](const std::string& args) {
    const std::string cmd = std::string(QILIN_CLI_PATH) + " " + args + " 2>&1";
    FILE* p = popen(cmd.c_str(), "r");
    std::string out;
    char buf[4096];
    size_t n;
    while (p && (n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
    const int status = p ? pclose(p) : -1;
    return std::make_pair(WIFEXITED(status) ? WEXITSTATUS(status) : -1, out);
  };
  auto [code, out] = run("serve --help");
  EXPECT_EQ(code, 0);
  for (const char* flag :
       {"--host", "--port", "--api-key", "--max-batch-tokens", "--max-running", "--max-queue",
        "--kv-cache-gb", "--max-body-bytes", "--model", "--cors-origin", "--host-alias",
        "--max-connections", "--read-timeout", "--idle-timeout", "--shutdown-timeout"}) {
    EXPECT_NE(out.find(flag), std::string::npos) << flag;
  }
  std::tie(code, out) = run("serve -m /nonexistent/m.gguf --port 0");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("/nonexistent/m.gguf"), std::string::npos) << out;
  std::tie(code, out) = run("serve --port 70000");
  EXPECT_NE(code, 0);
  EXPECT_NE(out.find("--port"), std::string::npos) << out;
}

}  // namespace
}  // namespace qilin
