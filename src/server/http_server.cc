// HTTP routes and streaming over cpp-httplib: see http_server.h.
#include "server/http_server.h"

#include <httplib.h>
#include <netinet/in.h>
#include <strings.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <mutex>
#include <random>
#include <vector>

namespace qilin::server {

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kPollInterval = std::chrono::milliseconds(250);
// A stream silent this long (queued, or a long prefill) gets an SSE comment: it keeps proxies
// from timing out and finds clients that went away.
constexpr auto kKeepAliveInterval = std::chrono::seconds(5);
// After stop(), how long a request waits for the Engine to confirm its cancellation.
constexpr auto kStopGrace = std::chrono::seconds(10);

// One request's events, from the Engine thread (push) to its HTTP worker (pop_all).
class EventQueue {
 public:
  void push(const ChoiceEvent& ev) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      q_.push_back(ev);
    }
    cv_.notify_one();
  }
  // Moves every queued event to *out, waiting up to `timeout` for the first; false if none came.
  bool pop_all(std::vector<ChoiceEvent>* out, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return !q_.empty(); })) return false;
    for (ChoiceEvent& ev : q_) out->push_back(std::move(ev));
    q_.clear();
    return true;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<ChoiceEvent> q_;
};

// The key check reads every byte of the expected key whatever the given one is.
bool constant_time_equal(const std::string& given, const std::string& expected) {
  volatile unsigned char diff = given.size() != expected.size();
  for (size_t i = 0; i < expected.size(); ++i) {
    const unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff = diff | (g ^ static_cast<unsigned char>(expected[i]));
  }
  return diff == 0;
}

ApiError error_of(int status, std::string message, std::string type, std::string code) {
  ApiError e;
  e.status = status;
  e.message = std::move(message);
  e.type = std::move(type);
  e.code = std::move(code);
  return e;
}

ApiError unauthorized_error() {
  return error_of(401, "missing or incorrect API key (send Authorization: Bearer KEY)",
                  "invalid_request_error", "invalid_api_key");
}

ApiError too_large_error(size_t limit) {
  return error_of(
      413, "the request body is larger than the limit of " + std::to_string(limit) + " bytes",
      "invalid_request_error", "request_too_large");
}

ApiError shutting_down_error() {
  return error_of(503, "the server is shutting down", "server_error", "shutting_down");
}

ApiError submit_error(const SubmitResult& r) {
  switch (r.error) {
    case SubmitError::TooLong:
      return error_of(400, r.message, "invalid_request_error", "context_length_exceeded");
    case SubmitError::QueueFull:
      return error_of(429,
                      "the server is busy (request queue full): " + r.message + "; retry later",
                      "rate_limit_exceeded", "queue_full");
    case SubmitError::ShuttingDown:
      return shutting_down_error();
    default:
      return error_of(400, r.message, "invalid_request_error", "");
  }
}

// Low-cardinality label for /metrics: hostile paths must not grow the counter map.
std::string endpoint_label(const std::string& path) {
  for (const char* p :
       {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"}) {
    if (path == p) return p;
  }
  if (path.rfind("/v1/models/", 0) == 0) return "/v1/models/{id}";
  return "other";
}

// Per-stream state shared by the content provider and its releaser.
struct StreamState {
  std::shared_ptr<EventQueue> events;
  RequestId id = 0;
  ResponseMeta meta;
  int32_t n = 1;
  int32_t n_prompt = 0;
  bool include_usage = false;
  bool finished = false;  // every choice finished (nothing left to cancel)
};

}  // namespace

struct HttpServer::Impl {
  ServerOptions opts;
  Backend& backend;
  const Tokenizer& tok;
  const ChatTemplate* tmpl;
  httplib::Server svr;
  std::atomic<bool> stopping{false};
  std::atomic<int> listen_fd{-1};

  mutable std::mutex mu;  // counters
  HttpCounters counters;

  Impl(const ServerOptions& o, Backend& b, const Tokenizer& t, const ChatTemplate* c)
      : opts(o), backend(b), tok(t), tmpl(c) {}

  void setup();
  bool authorized(const httplib::Request& req) const;
  void send_error(httplib::Response& res, const ApiError& e) const;
  void send_json(httplib::Response& res, const json& j) const;
  bool read_body(const httplib::ContentReader& reader, httplib::Response& res,
                 std::string* body) const;
  void generate(Endpoint endpoint, const httplib::Request& req, httplib::Response& res,
                const httplib::ContentReader& reader);
  void respond_whole(const std::shared_ptr<EventQueue>& q, RequestId id, ResponseMeta meta,
                     int32_t n, int32_t n_prompt, httplib::Response& res);
  bool pump_stream(StreamState& s, httplib::DataSink& sink);
  void finish_in_flight(bool disconnected) {
    std::lock_guard<std::mutex> lock(mu);
    --counters.in_flight;
    if (disconnected) ++counters.disconnects;
  }
};

bool HttpServer::Impl::authorized(const httplib::Request& req) const {
  if (opts.api_key.empty()) return true;
  const std::string h = req.get_header_value("Authorization");
  std::string given;
  if (h.size() > 7 && strncasecmp(h.c_str(), "Bearer ", 7) == 0) given = h.substr(7);
  return constant_time_equal(given, opts.api_key);
}

void HttpServer::Impl::send_json(httplib::Response& res, const json& j) const {
  res.status = 200;
  res.set_content(dump_json(j), "application/json");
}

void HttpServer::Impl::send_error(httplib::Response& res, const ApiError& e) const {
  res.status = e.status;
  if (e.status == 401) res.set_header("WWW-Authenticate", "Bearer");
  res.set_content(error_body(e), "application/json");
}

// Reads the body through the content reader so that the size limit also holds for chunked
// uploads (httplib checks it only against Content-Length).
bool HttpServer::Impl::read_body(const httplib::ContentReader& reader, httplib::Response& res,
                                 std::string* body) const {
  bool too_big = false;
  const bool ok = reader([&](const char* data, size_t len) {
    if (body->size() + len > opts.max_body_bytes) {
      too_big = true;
      return false;
    }
    body->append(data, len);
    return true;
  });
  if (ok) return true;
  if (too_big || res.status == 413) {
    send_error(res, too_large_error(opts.max_body_bytes));
  } else {
    send_error(res, error_of(400, "could not read the request body", "invalid_request_error", ""));
  }
  res.set_header("Connection", "close");
  return false;
}

void HttpServer::Impl::setup() {
  // Only SO_REUSEADDR (httplib's default adds SO_REUSEPORT, which would let another process
  // share the port). The descriptor is kept to widen httplib's listen backlog of 5.
  svr.set_socket_options([this](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd = sock;
  });
  const int threads = std::max(4, opts.http_threads);
  svr.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  svr.set_tcp_nodelay(true);  // SSE events are small writes: no Nagle delay
  svr.set_payload_max_length(opts.max_body_bytes);
  svr.set_keep_alive_timeout(5);
  svr.set_keep_alive_max_count(100);

  svr.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    std::lock_guard<std::mutex> lock(mu);
    ++counters.responses[{endpoint_label(req.path), res.status}];
  });
  // Statuses that no handler produced (404, 400 from a malformed request line, ...) get an
  // OpenAI-shaped body; without a valid key the answer is 401 whatever the path.
  svr.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req,
                                                                    httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    if (res.status == 404 && req.path != "/health" && !authorized(req)) {
      send_error(res, unauthorized_error());
    } else if (res.status == 404) {
      send_error(res, error_of(404, "unknown path " + req.method + " " + req.path.substr(0, 200),
                               "invalid_request_error", "unknown_url"));
    } else if (res.status == 413) {
      send_error(res, too_large_error(opts.max_body_bytes));
    } else {
      send_error(
          res, error_of(res.status,
                        "the request could not be served (HTTP " + std::to_string(res.status) + ")",
                        res.status >= 500 ? "server_error" : "invalid_request_error", ""));
    }
    return httplib::Server::HandlerResponse::Handled;
  }));
  svr.set_exception_handler(
      [this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "internal error";
        try {
          if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what += std::string(": ") + e.what();
        } catch (...) {
        }
        send_error(res, error_of(500, what, "server_error", ""));
      });

  auto unauthorized = [this](httplib::Response& res) { send_error(res, unauthorized_error()); };

  svr.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (stopping) {
      send_error(res, shutting_down_error());
      return;
    }
    send_json(res, {{"status", "ok"}});
  });
  svr.Get("/v1/models", [this, unauthorized](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req)) return unauthorized(res);
    json model = {
        {"id", opts.model_id}, {"object", "model"}, {"created", 0}, {"owned_by", "qilin"}};
    send_json(res, {{"object", "list"}, {"data", json::array({model})}});
  });
  svr.Get(R"(/v1/models/(.+))", [this, unauthorized](const httplib::Request& req,
                                                     httplib::Response& res) {
    if (!authorized(req)) return unauthorized(res);
    if (req.matches.size() < 2 || req.matches[1].str() != opts.model_id) {
      ApiError e = error_of(404, "no model named " + req.path.substr(11, 200),
                            "invalid_request_error", "model_not_found");
      e.param = "model";
      return send_error(res, e);
    }
    send_json(res,
              {{"id", opts.model_id}, {"object", "model"}, {"created", 0}, {"owned_by", "qilin"}});
  });
  svr.Get("/metrics", [this, unauthorized](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req)) return unauthorized(res);
    const EngineMetrics m = backend.metrics();
    HttpCounters c;
    {
      std::lock_guard<std::mutex> lock(mu);
      c = counters;
    }
    res.status = 200;
    res.set_content(prometheus_text(m, c), "text/plain; version=0.0.4");
  });
  svr.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res,
                                     const httplib::ContentReader& reader) {
    generate(Endpoint::Completions, req, res, reader);
  });
  svr.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res,
                                          const httplib::ContentReader& reader) {
    generate(Endpoint::Chat, req, res, reader);
  });
  // Everything else that carries a body: read it under the limit (httplib alone would buffer
  // a chunked upload of any size before answering 404), then answer 401 / 405 / 404.
  auto other = [this, unauthorized](const httplib::Request& req, httplib::Response& res,
                                    const httplib::ContentReader& reader) {
    std::string body;
    if (!read_body(reader, res, &body)) return;
    if (req.path != "/health" && !authorized(req)) return unauthorized(res);
    const bool known = endpoint_label(req.path) != "other";
    if (known) {
      res.set_header("Allow", req.path.rfind("/v1/", 0) == 0 &&
                                      req.path.find("completions") != std::string::npos
                                  ? "POST"
                                  : "GET");
      return send_error(res, error_of(405, "method " + req.method + " not allowed on " + req.path,
                                      "invalid_request_error", "method_not_allowed"));
    }
    send_error(res, error_of(404, "unknown path " + req.method + " " + req.path.substr(0, 200),
                             "invalid_request_error", "unknown_url"));
  };
  svr.Post(".*", other);
  svr.Put(".*", other);
  svr.Patch(".*", other);
  svr.Delete(".*", other);
  auto get_on_post = [this, unauthorized](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req)) return unauthorized(res);
    res.set_header("Allow", "POST");
    send_error(res, error_of(405, "use POST for " + req.path, "invalid_request_error",
                             "method_not_allowed"));
  };
  svr.Get("/v1/completions", get_on_post);
  svr.Get("/v1/chat/completions", get_on_post);
}

void HttpServer::Impl::generate(Endpoint endpoint, const httplib::Request& req,
                                httplib::Response& res, const httplib::ContentReader& reader) {
  std::string body;
  if (!read_body(reader, res, &body)) return;
  if (!authorized(req)) return send_error(res, unauthorized_error());
  if (stopping) return send_error(res, shutting_down_error());
  GenerationRequest gr;
  if (auto e = parse_request(endpoint, body, opts.limits, &gr)) return send_error(res, *e);
  body.clear();
  body.shrink_to_fit();
  RequestParams p;
  if (auto e = tokenize_prompt(gr, tok, tmpl, &p.prompt)) return send_error(res, *e);
  const int32_t n_prompt = static_cast<int32_t>(p.prompt.size());
  if (gr.max_tokens > 0) {
    p.max_tokens = gr.max_tokens;
  } else if (endpoint == Endpoint::Completions) {
    p.max_tokens = 16;  // OpenAI's default for completions
  } else {
    // Chat without a limit: whatever the sequence has room for after the prompt.
    p.max_tokens = backend.max_new_tokens(n_prompt, gr.n);
    if (p.max_tokens < 1) {
      ApiError e = error_of(400,
                            "the prompt has " + std::to_string(n_prompt) +
                                " tokens, which leaves no room to generate",
                            "invalid_request_error", "context_length_exceeded");
      e.param = "messages";
      return send_error(res, e);
    }
  }
  p.n = gr.n;
  p.sampling = gr.sampling;
  if (!gr.seed_given) {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    p.sampling.seed = rng();
  }
  p.stop = gr.stop;
  p.ignore_eos = gr.ignore_eos;
  p.logprobs = gr.logprobs;
  p.top_logprobs = gr.top_logprobs;

  ResponseMeta meta;
  meta.id = new_response_id(endpoint);
  meta.created = static_cast<int64_t>(std::time(nullptr));
  meta.model = opts.model_id;
  meta.endpoint = endpoint;
  meta.logprobs = gr.logprobs;
  meta.top_logprobs = gr.top_logprobs;
  if (gr.echo) meta.echo = gr.prompt_is_tokens ? tok.decode(gr.prompt_tokens) : gr.prompt_text;

  auto q = std::make_shared<EventQueue>();
  const int32_t n = p.n;
  SubmitResult sr = backend.submit(std::move(p), [q](const ChoiceEvent& ev) { q->push(ev); });
  if (!sr.ok()) return send_error(res, submit_error(sr));
  {
    std::lock_guard<std::mutex> lock(mu);
    ++counters.submitted;
    ++counters.in_flight;
  }
  if (!gr.stream) return respond_whole(q, sr.id, std::move(meta), n, n_prompt, res);

  auto s = std::make_shared<StreamState>();
  s->events = q;
  s->id = sr.id;
  s->meta = std::move(meta);
  s->n = n;
  s->n_prompt = n_prompt;
  s->include_usage = gr.include_usage;
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, s](size_t, httplib::DataSink& sink) { return pump_stream(*s, sink); },
      // Runs however the response ends (finished, write failed, never started).
      [this, s](bool) {
        if (!s->finished) backend.cancel(s->id);
        finish_in_flight(!s->finished);
      });
}

void HttpServer::Impl::respond_whole(const std::shared_ptr<EventQueue>& q, RequestId id,
                                     ResponseMeta meta, int32_t n, int32_t n_prompt,
                                     httplib::Response& res) {
  std::vector<ChoiceOutput> out(n);
  int32_t finished = 0;
  std::vector<ChoiceEvent> evs;
  Clock::time_point stop_seen{};
  bool timed_out = false;
  while (finished < n) {
    if (stopping) {
      if (stop_seen == Clock::time_point{}) {
        stop_seen = Clock::now();
        backend.cancel(id);
      } else if (Clock::now() - stop_seen > kStopGrace) {
        timed_out = true;
        break;
      }
    }
    evs.clear();
    if (!q->pop_all(&evs, kPollInterval)) continue;
    for (const ChoiceEvent& ev : evs) {
      if (ev.index < 0 || ev.index >= n) continue;
      ChoiceOutput& c = out[ev.index];
      if (c.finish != FinishReason::None) continue;
      c.text += ev.text;
      c.tokens.insert(c.tokens.end(), ev.tokens.begin(), ev.tokens.end());
      c.n_generated = ev.n_generated;
      if (ev.n_prompt > 0) n_prompt = ev.n_prompt;
      if (ev.finish != FinishReason::None) {
        c.finish = ev.finish;
        c.error = ev.error;
        ++finished;
      }
    }
  }
  finish_in_flight(false);
  for (const ChoiceOutput& c : out) {
    if (c.finish == FinishReason::Error) {
      return send_error(res, error_of(500, "generation failed: " + c.error, "server_error", ""));
    }
    if (timed_out || c.finish == FinishReason::Cancelled) {
      return send_error(res, shutting_down_error());
    }
  }
  send_json(res, response_json(meta, out, n_prompt, tok));
}

bool HttpServer::Impl::pump_stream(StreamState& s, httplib::DataSink& sink) {
  const bool chat = s.meta.endpoint == Endpoint::Chat;
  auto send = [&](const json& j) {
    const std::string line = "data: " + dump_json(j) + "\n\n";
    return sink.write(line.data(), line.size());
  };
  // An error inside a stream: the status line is long gone, so it travels as an event.
  auto send_error_event = [&](const ApiError& e) {
    const std::string line = "data: " + error_body(e) + "\n\n";
    sink.write(line.data(), line.size());
    backend.cancel(s.id);  // the other choices, if any
    s.finished = true;
    sink.done();
    return true;
  };

  std::vector<int64_t> offsets(s.n, static_cast<int64_t>(s.meta.echo.size()));
  std::vector<int32_t> generated(s.n, 0);
  std::vector<bool> done(s.n, false), started(s.n, false);
  int32_t n_done = 0;
  if (chat) {
    for (int32_t i = 0; i < s.n; ++i) {
      if (!send(chat_role_chunk(s.meta, i, s.include_usage))) return false;
    }
  }
  auto last_write = Clock::now();
  Clock::time_point stop_seen{};
  std::vector<ChoiceEvent> evs;
  while (n_done < s.n) {
    if (stopping) {
      if (stop_seen == Clock::time_point{}) {
        stop_seen = Clock::now();
        backend.cancel(s.id);
      } else if (Clock::now() - stop_seen > kStopGrace) {
        return send_error_event(shutting_down_error());
      }
    }
    evs.clear();
    if (!s.events->pop_all(&evs, kPollInterval)) {
      if (Clock::now() - last_write >= kKeepAliveInterval) {
        static const std::string ka = ": keep-alive\n\n";
        if (!sink.write(ka.data(), ka.size())) return false;
        last_write = Clock::now();
      }
      continue;
    }
    for (ChoiceEvent& ev : evs) {
      if (ev.index < 0 || ev.index >= s.n || done[ev.index]) continue;
      const int32_t i = ev.index;
      const FinishReason why = ev.finish;
      generated[i] = ev.n_generated;
      if (ev.n_prompt > 0) s.n_prompt = ev.n_prompt;
      if (ev.finish == FinishReason::Error) {
        return send_error_event(
            error_of(500, "generation failed: " + ev.error, "server_error", ""));
      }
      if (ev.finish == FinishReason::Cancelled) {
        // Not ours (ours ends the stream before): the server is stopping.
        return send_error_event(shutting_down_error());
      }
      if (!chat && !started[i]) ev.text = s.meta.echo + ev.text;
      started[i] = true;
      auto visible = [&](const GeneratedToken& g) { return !tok.is_eog(g.token); };
      const bool has_payload =
          !ev.text.empty() ||
          (s.meta.logprobs && std::any_of(ev.tokens.begin(), ev.tokens.end(), visible));
      if (chat) {
        // OpenAI's order: content deltas, then a chunk with an empty delta and the reason.
        if (has_payload) {
          ev.finish = FinishReason::None;
          if (!send(event_chunk(s.meta, ev, tok, s.include_usage, &offsets[i]))) return false;
        }
        if (why != FinishReason::None) {
          ChoiceEvent last;
          last.index = i;
          last.finish = why;
          if (!send(event_chunk(s.meta, last, tok, s.include_usage, &offsets[i]))) return false;
        }
      } else if (has_payload || ev.finish != FinishReason::None) {
        if (!send(event_chunk(s.meta, ev, tok, s.include_usage, &offsets[i]))) return false;
      }
      last_write = Clock::now();
      if (why != FinishReason::None) {
        done[i] = true;
        ++n_done;
      }
    }
  }
  s.finished = true;
  if (s.include_usage) {
    int32_t total = 0;
    for (int32_t g : generated) total += g;
    if (!send(usage_chunk(s.meta, s.n_prompt, total))) return false;
  }
  static const std::string done_line = "data: [DONE]\n\n";
  if (!sink.write(done_line.data(), done_line.size())) return false;
  sink.done();
  return true;
}

HttpServer::HttpServer(const ServerOptions& opts, Backend& backend, const Tokenizer& tok,
                       const ChatTemplate* tmpl)
    : impl_(std::make_unique<Impl>(opts, backend, tok, tmpl)) {
  impl_->setup();
}

HttpServer::~HttpServer() { stop(); }

Result<int> HttpServer::bind() {
  Impl& s = *impl_;
  int port = s.opts.port;
  if (port == 0) {
    port = s.svr.bind_to_any_port(s.opts.host);
  } else if (!s.svr.bind_to_port(s.opts.host, port)) {
    port = -1;
  }
  if (port <= 0) {
    return errorf("cannot listen on %s port %d (in use, or not an address of this machine)",
                  s.opts.host.c_str(), s.opts.port);
  }
  // httplib listens with a backlog of 5; a burst of clients connecting at once would see
  // dropped SYNs and one-second retries. listen() again only raises it.
  if (s.listen_fd >= 0) ::listen(s.listen_fd, 1024);
  return port;
}

bool HttpServer::listen() { return impl_->svr.listen_after_bind(); }

void HttpServer::stop() {
  impl_->stopping = true;
  impl_->svr.stop();
}

HttpCounters HttpServer::counters() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->counters;
}

}  // namespace qilin::server
