// Internal to src/server: what the HTTP server's files share. HttpServer::Impl (the server's
// state and its handlers), a request's event queue and stream state, the polling intervals,
// and the OpenAI-shaped errors of the HTTP layer. The files: http_server.cc (the routes and
// HttpServer itself), http_policy.cc (API key, Host and Origin, body limits, content type),
// http_generate.cc (the generation endpoints: whole responses and SSE streams).
#pragma once

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "server/http_server.h"
#include "server/listener.h"

namespace qilin::server {

namespace http_internal {

using Clock = std::chrono::steady_clock;
inline constexpr auto kPollInterval = std::chrono::milliseconds(250);
// A stream silent this long (queued, or a long prefill) gets an SSE comment: it keeps proxies
// from timing out and finds clients that went away.
inline constexpr auto kKeepAliveInterval = std::chrono::seconds(5);
// After a stop's cancellation, how long a request waits for the Engine to confirm it.
inline constexpr auto kStopGrace = std::chrono::seconds(10);

// One request's events, from the Engine thread (push) to its HTTP worker (pop_all).
class EventQueue {
 public:
  // By value: the caller's copy (text, logprobs) is made before the lock, which then only
  // moves it in (the engine thread holds the lock for a pointer's worth of work).
  void push(ChoiceEvent ev) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      q_.push_back(std::move(ev));
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

ApiError error_of(int status, std::string message, std::string type, std::string code);
ApiError unauthorized_error();
ApiError too_large_error(size_t limit);
ApiError shutting_down_error();

std::string lower(std::string s);
// An untrusted header value for an error message: clipped (the JSON dump escapes it).
std::string clipped(const std::string& s);
// The media type before any parameters ("application/json; charset=utf-8" is JSON).
bool is_json_content_type(const std::string& value);

}  // namespace http_internal

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

  Impl(const ServerOptions& o, Backend& b, const Tokenizer& t, const ChatTemplate* c);

  void setup();
  bool authorized(const httplib::Request& req) const;
  bool host_allowed(const std::string& host) const;
  bool origin_allowed(const std::string& origin) const;
  std::optional<ApiError> refused_by_policy(const httplib::Request& req) const;
  bool guard(const httplib::Request& req, httplib::Response& res) const;
  bool past_cancel_time() const {
    return stopping &&
           http_internal::Clock::now().time_since_epoch().count() >= cancel_at_ns.load();
  }
  void send_error(httplib::Response& res, const ApiError& e) const;
  void send_json(httplib::Response& res, const json& j) const;
  bool read_body(const httplib::ContentReader& reader, httplib::Response& res,
                 std::string* body) const;
  bool discard_body(const httplib::Request& req, const httplib::ContentReader& reader,
                    httplib::Response& res) const;
  void generate(Endpoint endpoint, const httplib::Request& req, httplib::Response& res,
                const httplib::ContentReader& reader);
  void respond_whole(const std::shared_ptr<http_internal::EventQueue>& q, RequestId id,
                     ResponseMeta meta, int32_t n, int32_t n_prompt, httplib::Response& res);
  bool pump_stream(http_internal::StreamState& s, httplib::DataSink& sink);
  void finish_in_flight(bool disconnected) {
    std::lock_guard<std::mutex> lock(mu);
    --counters.in_flight;
    if (disconnected) ++counters.disconnects;
  }
};

}  // namespace qilin::server
