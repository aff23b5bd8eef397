// HTTP routes over cpp-httplib, and HttpServer itself (bind, listen, the graceful stop); see
// http_server.h. The per-request policy is in http_policy.cc, the generation endpoints in
// http_generate.cc, what they share in http_server_internal.h.
#include "server/http_server.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <exception>
#include <mutex>
#include <string>

#include "server/http_server_internal.h"
#include "server/listener.h"

namespace qilin::server {

using namespace http_internal;

namespace {

// Max-Age of a preflight answer: how long a browser may cache it.
constexpr const char* kPreflightMaxAge = "600";

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

// Low-cardinality label for /metrics: hostile paths must not grow the counter map.
std::string endpoint_label(const std::string& path) {
  for (const char* p :
       {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"}) {
    if (path == p) return p;
  }
  if (path.rfind("/v1/models/", 0) == 0) return "/v1/models/{id}";
  return "other";
}

}  // namespace

ListenerOptions listener_options(const ServerOptions& o) {
  ListenerOptions l;
  l.threads = std::max(4, o.http_threads);
  l.max_connections = o.max_connections;
  l.read_timeout_s = o.read_timeout_s;
  l.idle_timeout_s = o.idle_timeout_s;
  return l;
}

HttpServer::Impl::Impl(const ServerOptions& o, Backend& b, const Tokenizer& t,
                       const ChatTemplate* c)
    : opts(o), backend(b), tok(t), tmpl(c), svr(listener_options(o)) {}

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
