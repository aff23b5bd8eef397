// HTTP routes and streaming over cpp-httplib: see http_server.h.
#include "server/http_server.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <strings.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <limits>
#include <mutex>
#include <optional>
#include <random>
#include <vector>

#include "server/listener.h"

namespace qilin::server {

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kPollInterval = std::chrono::milliseconds(250);
// A stream silent this long (queued, or a long prefill) gets an SSE comment: it keeps proxies
// from timing out and finds clients that went away.
constexpr auto kKeepAliveInterval = std::chrono::seconds(5);
// After a stop's cancellation, how long a request waits for the Engine to confirm it.
constexpr auto kStopGrace = std::chrono::seconds(10);
// Max-Age of a preflight answer: how long a browser may cache it.
constexpr const char* kPreflightMaxAge = "600";

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

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// An untrusted header value for an error message: clipped (the JSON dump escapes it).
std::string clipped(const std::string& s) {
  return "'" + (s.size() > 100 ? s.substr(0, 97) + "..." : s) + "'";
}

// localhost, 127.0.0.0/8, ::1 and ::ffff:127.x.y.z: only this machine can connect.
bool is_loopback_host(const std::string& host) {
  const std::string h = lower(host);
  if (h == "localhost" || h == "localhost.") return true;
  in_addr a4{};
  if (inet_pton(AF_INET, h.c_str(), &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  in6_addr a6{};
  if (inet_pton(AF_INET6, h.c_str(), &a6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&a6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
  }
  return false;
}

// The media type before any parameters ("application/json; charset=utf-8" is JSON).
bool is_json_content_type(const std::string& value) {
  std::string t = value.substr(0, value.find(';'));
  const size_t b = t.find_first_not_of(" \t");
  const size_t e = t.find_last_not_of(" \t");
  t = b == std::string::npos ? "" : t.substr(b, e - b + 1);
  return lower(t) == "application/json";
}

// Access-Control-Allow-Headers for a listed origin: ours, plus what the preflight asks for when
// it is a plain list of header names (the official JavaScript client sends X-Stainless-*).
std::string allowed_headers(const std::string& requested) {
  std::string out = "Authorization, Content-Type";
  if (requested.empty() || requested.size() > 1024) return out;
  for (char c : requested) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != ',' &&
        c != ' ') {
      return out;
    }
  }
  return out + ", " + requested;
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

ListenerOptions listener_options(const ServerOptions& o) {
  ListenerOptions l;
  l.threads = std::max(4, o.http_threads);
  l.max_connections = o.max_connections;
  l.read_timeout_s = o.read_timeout_s;
  l.idle_timeout_s = o.idle_timeout_s;
  return l;
}

struct HttpServer::Impl {
  ServerOptions opts;
  Backend& backend;
  const Tokenizer& tok;
  const ChatTemplate* tmpl;
  Listener svr;
  std::atomic<bool> stopping{false};
  // After stop(): when running requests are cancelled (steady clock, ns).
  std::atomic<int64_t> cancel_at_ns{std::numeric_limits<int64_t>::max()};
  bool check_host = false;         // bound to a loopback address
  std::vector<std::string> hosts;  // Host values accepted then (lower case, without port)
  std::atomic<int> port{0};

  mutable std::mutex mu;  // counters
  HttpCounters counters;

  Impl(const ServerOptions& o, Backend& b, const Tokenizer& t, const ChatTemplate* c)
      : opts(o), backend(b), tok(t), tmpl(c), svr(listener_options(o)) {}

  void setup();
  bool authorized(const httplib::Request& req) const;
  bool host_allowed(const std::string& host) const;
  bool origin_allowed(const std::string& origin) const;
  std::optional<ApiError> refused_by_policy(const httplib::Request& req) const;
  bool guard(const httplib::Request& req, httplib::Response& res) const;
  bool past_cancel_time() const {
    return stopping && Clock::now().time_since_epoch().count() >= cancel_at_ns.load();
  }
  void send_error(httplib::Response& res, const ApiError& e) const;
  void send_json(httplib::Response& res, const json& j) const;
  bool read_body(const httplib::ContentReader& reader, httplib::Response& res,
                 std::string* body) const;
  bool discard_body(const httplib::Request& req, const httplib::ContentReader& reader,
                    httplib::Response& res) const;
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

// Host must name this server when it listens on loopback: a page on another site whose name a
// DNS-rebinding attacker pointed at 127.0.0.1 sends its own name, and is refused.
bool HttpServer::Impl::host_allowed(const std::string& value) const {
  if (!check_host) return true;
  std::string h = lower(value);
  const std::string suffix = ":" + std::to_string(port.load());
  if (h.size() > suffix.size() && h.compare(h.size() - suffix.size(), suffix.size(), suffix) == 0) {
    h.resize(h.size() - suffix.size());
  }
  return !h.empty() && std::find(hosts.begin(), hosts.end(), h) != hosts.end();
}

bool HttpServer::Impl::origin_allowed(const std::string& origin) const {
  const std::string o = lower(origin);
  for (const std::string& allowed : opts.cors_origins) {
    if (allowed == "*" || lower(allowed) == o) return true;
  }
  return false;
}

std::optional<ApiError> HttpServer::Impl::refused_by_policy(const httplib::Request& req) const {
  if (!host_allowed(req.get_header_value("Host"))) {
    return error_of(403,
                    "the Host header " + clipped(req.get_header_value("Host")) +
                        " does not name this server: on a loopback address it answers to "
                        "localhost, 127.0.0.1, [::1] and its --host-alias names only",
                    "invalid_request_error", "host_not_allowed");
  }
  if (req.has_header("Origin") && !origin_allowed(req.get_header_value("Origin"))) {
    return error_of(403,
                    "requests from the web origin " + clipped(req.get_header_value("Origin")) +
                        " are not allowed (the server allows the origins given with "
                        "--cors-origin)",
                    "invalid_request_error", "origin_not_allowed");
  }
  return std::nullopt;
}

// Every handler's first step (after reading the body): the request is in, so its read deadline
// ends; then the Host and Origin policy. True when the request was refused.
bool HttpServer::Impl::guard(const httplib::Request& req, httplib::Response& res) const {
  Listener::request_read();
  if (auto e = refused_by_policy(req)) {
    send_error(res, *e);
    return true;
  }
  return false;
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

// A body that is refused whatever it holds (not JSON) is still read, under the limit, so that
// the answer reaches the client rather than a reset; multipart goes through httplib's parser,
// which the plain reader refuses. False when it answered (too large).
bool HttpServer::Impl::discard_body(const httplib::Request& req,
                                    const httplib::ContentReader& reader,
                                    httplib::Response& res) const {
  size_t total = 0;
  bool too_big = false;
  auto count = [&](const char*, size_t len) {
    total += len;
    too_big = total > opts.max_body_bytes;
    return !too_big;
  };
  const bool ok = req.is_multipart_form_data()
                      ? reader([](const httplib::MultipartFormData&) { return true; }, count)
                      : reader(count);
  if (ok) return true;
  res.set_header("Connection", "close");  // where the body ends is unknown
  if (too_big || res.status == 413) {
    send_error(res, too_large_error(opts.max_body_bytes));
    return false;
  }
  return true;
}

void HttpServer::Impl::setup() {
  // Only SO_REUSEADDR (httplib's default adds SO_REUSEPORT, which would let another process
  // share the port).
  svr.set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  svr.set_tcp_nodelay(true);  // SSE events are small writes: no Nagle delay
  svr.set_payload_max_length(opts.max_body_bytes);
  svr.set_keep_alive_max_count(100);
  // The Host check applies to a loopback-bound server only: bound to a public or wildcard
  // address, the server is reached under names it cannot know (its IP, a proxy's, DNS names),
  // and DNS rebinding gains an attacker nothing the network did not already give them.
  check_host = is_loopback_host(opts.host);
  hosts = {"localhost", "127.0.0.1", "[::1]"};
  const std::string bound = lower(opts.host);
  hosts.push_back(bound.find(':') != std::string::npos && bound.front() != '[' ? "[" + bound + "]"
                                                                               : bound);
  for (const std::string& a : opts.host_aliases) hosts.push_back(lower(a));

  svr.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    Listener::response_sent();
    std::lock_guard<std::mutex> lock(mu);
    ++counters.responses[{endpoint_label(req.path), res.status}];
  });
  // CORS headers on every answer to a listed origin (errors included, so that the page can
  // read them); browsers get nothing that grants another origin access.
  svr.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    res.set_header("Vary", "Origin");
    if (req.has_header("Origin") && origin_allowed(req.get_header_value("Origin")) &&
        host_allowed(req.get_header_value("Host"))) {
      res.set_header("Access-Control-Allow-Origin", req.get_header_value("Origin"));
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // Statuses that no handler produced (404, 400 from a malformed request line, ...) get an
  // OpenAI-shaped body; without a valid key the answer is 401 whatever the path.
  svr.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req,
                                                                    httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    if (res.status == 404 && guard(req, res)) return httplib::Server::HandlerResponse::Handled;
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

  svr.Get("/health", [this](const httplib::Request& req, httplib::Response& res) {
    if (guard(req, res)) return;
    if (stopping) {
      send_error(res, shutting_down_error());
      return;
    }
    send_json(res, {{"status", "ok"}});
  });
  svr.Get("/v1/models", [this, unauthorized](const httplib::Request& req, httplib::Response& res) {
    if (guard(req, res)) return;
    if (!authorized(req)) return unauthorized(res);
    json model = {
        {"id", opts.model_id}, {"object", "model"}, {"created", 0}, {"owned_by", "qilin"}};
    send_json(res, {{"object", "list"}, {"data", json::array({model})}});
  });
  svr.Get(R"(/v1/models/(.+))", [this, unauthorized](const httplib::Request& req,
                                                     httplib::Response& res) {
    if (guard(req, res)) return;
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
    if (guard(req, res)) return;
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
    if (guard(req, res)) return;
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
    if (guard(req, res)) return;
    if (!authorized(req)) return unauthorized(res);
    res.set_header("Allow", "POST");
    send_error(res, error_of(405, "use POST for " + req.path, "invalid_request_error",
                             "method_not_allowed"));
  };
  svr.Get("/v1/completions", get_on_post);
  svr.Get("/v1/chat/completions", get_on_post);
  // CORS preflight (no key: browsers never send one on a preflight). A listed origin gets the
  // methods and headers it may use; any other origin a 403 without CORS headers, which the
  // browser reports as a failed preflight. Without Origin it is a plain OPTIONS.
  svr.Options(".*", [this](const httplib::Request& req, httplib::Response& res) {
    if (guard(req, res)) return;
    res.status = 204;
    if (!req.has_header("Origin")) {
      res.set_header("Allow", "GET, POST, OPTIONS");
      return;
    }
    res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    res.set_header("Access-Control-Allow-Headers",
                   allowed_headers(req.get_header_value("Access-Control-Request-Headers")));
    res.set_header("Access-Control-Max-Age", kPreflightMaxAge);
  });
}

void HttpServer::Impl::generate(Endpoint endpoint, const httplib::Request& req,
                                httplib::Response& res, const httplib::ContentReader& reader) {
  std::string body;
  // JSON only: a browser sends text/plain, form and multipart bodies cross-origin without a
  // preflight, so accepting them would let any web page make this server generate.
  const bool is_json = is_json_content_type(req.get_header_value("Content-Type"));
  if (is_json ? !read_body(reader, res, &body) : !discard_body(req, reader, res)) return;
  if (guard(req, res)) return;
  if (!authorized(req)) return send_error(res, unauthorized_error());
  if (!is_json) {
    return send_error(res, error_of(415,
                                    "'Content-Type' must be application/json, got " +
                                        (req.has_header("Content-Type")
                                             ? clipped(req.get_header_value("Content-Type"))
                                             : std::string("none")),
                                    "invalid_request_error", "unsupported_media_type"));
  }
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
    if (past_cancel_time()) {
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
  // An error inside a stream: the status line is long gone, so it travels as an event, and
  // [DONE] ends the stream as usual.
  auto send_error_event = [&](const ApiError& e) {
    const std::string line = "data: " + error_body(e) + "\n\ndata: [DONE]\n\n";
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
    if (past_cancel_time()) {
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
  auto port = impl_->svr.bind(impl_->opts.host, impl_->opts.port);
  if (port) impl_->port = *port;
  return port;
}

bool HttpServer::listen() { return impl_->svr.run(); }

void HttpServer::stop(bool force) {
  Impl& s = *impl_;
  const auto grace = force ? Clock::duration::zero()
                           : std::chrono::duration_cast<Clock::duration>(
                                 std::chrono::duration<double>(s.opts.shutdown_timeout_s));
  const Clock::time_point cancel_at = Clock::now() + grace;
  int64_t want = cancel_at.time_since_epoch().count(), cur = s.cancel_at_ns.load();
  while (want < cur && !s.cancel_at_ns.compare_exchange_weak(cur, want)) {
  }
  s.stopping = true;
  // Past the cancellation and the Engine's grace to confirm it, every socket is shut down.
  s.svr.begin_stop(Clock::time_point(Clock::duration(s.cancel_at_ns.load())) + kStopGrace +
                   std::chrono::seconds(1));
}

HttpCounters HttpServer::counters() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->counters;
}

}  // namespace qilin::server
