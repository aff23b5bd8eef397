// The OpenAI-compatible HTTP/1.1 server (cpp-httplib): routes, Bearer-key check, body limit,
// request -> Backend::submit, events -> JSON or Server-Sent Events, disconnect -> cancel.
// Each request holds one HTTP worker thread while it runs (streams included), so the thread
// pool is sized for the Engine's running sequences plus its queue's share.
// NOTE: the Backend, Tokenizer and ChatTemplate must outlive the server.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

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
  // Thread-safe, idempotent: refuses new requests (503), cancels running ones and makes
  // listen() return once the workers are done.
  void stop();

  HttpCounters counters() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qilin::server
