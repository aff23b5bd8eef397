// The OpenAI-compatible HTTP/1.1 server (cpp-httplib): routes, Bearer-key check, body limit,
// request -> Backend::submit, events -> JSON or Server-Sent Events, disconnect -> cancel, and
// the policy a browser or a slow client meets: Host checked on loopback (DNS rebinding),
// Origin checked and CORS answered for listed origins only, JSON Content-Type on POST,
// connection limits and timeouts (listener.h), a graceful stop with a deadline.
// Each request holds one HTTP worker thread while it runs (streams included), so the thread
// pool is sized for the Engine's running sequences plus its queue's share; a connection
// waiting for its request holds none.
// NOTE: the Backend, Tokenizer and ChatTemplate must outlive the server.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "model/chat_template.h"
#include "model/tokenizer.h"
#include "qilin/status.h"
#include "server/backend.h"
#include "server/openai_api.h"
#include "server/prometheus.h"

namespace qilin::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;      // 0: any free port (bind() returns it)
  std::string api_key;  // empty: no key required
  size_t max_body_bytes = size_t{1} << 20;
  int http_threads = 128;          // worker threads (requests served at once)
  std::string model_id = "qilin";  // what /v1/models lists and responses name
  ApiLimits limits;
  // Browser policy. Origins allowed to call the API from a web page (exact, e.g.
  // "http://localhost:3000"; "*": any); a request with any other Origin is refused (403).
  std::vector<std::string> cors_origins;
  // Names accepted in the Host header besides localhost, 127.0.0.1, [::1] and the bound
  // host; checked only when the bound host is a loopback address.
  std::vector<std::string> host_aliases;
  // Connections (see listener.h).
  int max_connections = 1024;
  int read_timeout_s = 15;
  int idle_timeout_s = 5;
  // stop(): running requests may finish for this long, then are cancelled.
  double shutdown_timeout_s = 5.0;
};

class HttpServer {
 public:
  // tmpl may be null: /v1/chat/completions then answers that the model has no chat template.
  HttpServer(const ServerOptions& opts, Backend& backend, const Tokenizer& tok,
             const ChatTemplate* tmpl);
  ~HttpServer();  // stop()s; a thread running listen() must have returned (joined) first

  // Binds the listening socket; returns the port (the chosen one when opts.port is 0).
  Result<int> bind();
  // Serves until stop(); returns false when the server could not run.
  bool listen();
  // Thread-safe: stops accepting connections, refuses new requests (503), lets running ones
  // finish for opts.shutdown_timeout_s (force: not at all), then cancels them (a stream ends
  // with a shutting_down error event and [DONE]); listen() returns once every connection is
  // closed. Calling it again with force cancels at once.
  void stop(bool force = false);

  HttpCounters counters() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qilin::server
