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
#include <chrono>
#include <condition_variable>
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
    server::ServerOptions o;
    o.port = 0;
    o.api_key = kKey;
    o.max_body_bytes = 64 * 1024;
    o.http_threads = 16;
    o.model_id = "test-model";
    server_ = std::make_unique<server::HttpServer>(o, backend_, *tok_, tmpl_);
    auto port = server_->bind();
    ASSERT_TRUE(port.is_ok()) << port.status().message();
    port_ = *port;
    thread_ = std::thread([this] { server_->listen(); });
  }
  void TearDown() override {
    if (server_) server_->stop();
    if (thread_.joinable()) thread_.join();
    backend_.join();
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

// Connects, sends a raw request and returns the socket (or -1).
int raw_request(int port, const std::string& body) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  const std::string req = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
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
  EXPECT_TRUE(backend_.was_cancelled(backend_.last_id()));
  // New requests are refused.
  thread_.join();
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
  for (const char* flag : {"--host", "--port", "--api-key", "--max-batch-tokens", "--max-running",
                           "--max-queue", "--kv-cache-gb", "--max-body-bytes", "--model"}) {
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
