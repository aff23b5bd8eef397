// The accept side of `qilin serve`: cpp-httplib parses and answers requests, but connections
// come through our own accept loop, so that a connection costs a worker thread only while it
// has a request to serve, and so that slow or idle clients cannot hold the server.
// - A connection that has sent nothing waits in one poll() set (a descriptor, no thread) until
//   its first byte or the idle timeout. Past max_connections open ones, a new connection gets a
//   503 and is closed.
// - A readable connection goes to the worker pool. Its request (headers and body) must arrive
//   within the read timeout of that, and a kept-alive connection's next one within the idle
//   plus the read timeout of the last response, or a watchdog shuts its socket down.
// - begin_stop(): no more accepts; idle connections are closed; requests in progress run on
//   (the handlers decide how long) until the force deadline, when every socket is shut down;
//   run() returns once every connection is closed and every worker has returned.
// NOTE: this httplib is built without CPPHTTPLIB_USE_POLL: it select()s on its sockets and
// answers 500 on any descriptor >= FD_SETSIZE. Waiting connections are therefore parked at
// descriptors >= FD_SETSIZE (when the descriptor limit allows) and a worker gets a low duplicate.
#pragma once

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "qilin/status.h"

namespace qilin::server {

struct ListenerOptions {
  int threads = 128;           // requests served at once
  int max_connections = 1024;  // open connections (waiting or served); 503 above
  int read_timeout_s = 15;     // a request's headers and body, from its first byte
  int idle_timeout_s = 5;      // a connection silent before its (next) request
};

class Listener : public httplib::Server {
 public:
  using Clock = std::chrono::steady_clock;

  explicit Listener(const ListenerOptions& opts);
  ~Listener() override;

  // Binds and listens (port 0: any free port); returns the port.
  Result<int> bind(const std::string& host, int port);
  // The accept loop, on the calling thread; returns after begin_stop() once every connection is
  // closed. False when accepting failed.
  bool run();
  // Thread-safe; a later call can only bring force_at earlier.
  void begin_stop(Clock::time_point force_at);

  int open_connections() const { return open_.load(); }

  // From a handler, on its worker thread: the request has been read (its deadline is lifted);
  // the response has been written (the connection is idle until its next request).
  static void request_read();
  static void response_sent();

 private:
  struct Conn {
    int fd = -1;  // the parked descriptor, open until the worker is done with the connection
    Clock::time_point deadline;
    bool idle = false;  // between a response and the next request
    bool shut = false;  // the watchdog shut it down
  };
  struct Parked {
    int fd = -1;
    Clock::time_point deadline;
    bool lingering = false;  // refused: reading what the client still sends, then closing
  };

  // False when accepting failed for want of descriptors or memory.
  bool accept_all(std::vector<Parked>* parked, Clock::time_point now);
  void dispatch(int fd, Clock::time_point now);
  void serve(std::list<Conn>::iterator c);
  void refuse(int fd, std::vector<Parked>* parked, Clock::time_point now);
  void watchdog(Clock::time_point now);
  void wake();

  ListenerOptions opts_;
  int wake_fd_ = -1;  // eventfd: begin_stop() and finished workers wake run()
  std::atomic<bool> stopping_{false};
  std::atomic<int64_t> force_at_ns_;
  std::atomic<int> open_{0};
  std::unique_ptr<httplib::ThreadPool> pool_;
  std::mutex mu_;  // active_
  std::list<Conn> active_;
  // The listening socket is shut down by begin_stop() and closed by run(): this orders the
  // two, so begin_stop() never touches a descriptor that run() closed (and the kernel reused).
  std::mutex listen_mu_;
};

}  // namespace qilin::server
