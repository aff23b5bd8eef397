// The accept loop, parking, worker dispatch and the watchdog: see listener.h.
#include "server/listener.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <vector>

namespace qilin::server {

namespace {

using Clock = Listener::Clock;
constexpr auto kTick = std::chrono::milliseconds(250);
// A refused connection is read and discarded this long before it is closed, so that the
// client sees the 503 rather than a reset (closing with unread data sends RST).
constexpr auto kLinger = std::chrono::seconds(1);
constexpr size_t kMaxLingering = 256;

// httplib serves one accepted socket in Server::process_and_close_socket, which is private: it
// is reached through an explicit instantiation, where access is not checked ([temp.spec]).
// NOTE: a pointer to a virtual member calls virtually; Listener does not override it.
using ServeSocketFn = bool (httplib::Server::*)(socket_t);
ServeSocketFn serve_socket_fn();
template <ServeSocketFn F>
struct ServeSocketAccess {
  friend ServeSocketFn serve_socket_fn() { return F; }
};
template struct ServeSocketAccess<&httplib::Server::process_and_close_socket>;

int64_t ns_of(Clock::time_point t) { return t.time_since_epoch().count(); }
Clock::time_point time_of(int64_t ns) { return Clock::time_point(Clock::duration(ns)); }

// The connection the current worker thread is serving (for request_read / response_sent).
struct Current {
  std::mutex* mu = nullptr;
  void* conn = nullptr;
  int read_timeout_s = 0;
  int idle_timeout_s = 0;
};
thread_local Current t_current;

void set_timeout(int fd, int opt, int seconds) {
  timeval tv{};
  tv.tv_sec = seconds;
  setsockopt(fd, SOL_SOCKET, opt, &tv, sizeof(tv));
}

}  // namespace

Listener::Listener(const ListenerOptions& opts)
    : opts_(opts), force_at_ns_(std::numeric_limits<int64_t>::max()) {
  opts_.threads = std::max(1, opts_.threads);
  opts_.max_connections = std::max(1, opts_.max_connections);
  opts_.read_timeout_s = std::max(1, opts_.read_timeout_s);
  opts_.idle_timeout_s = std::max(1, opts_.idle_timeout_s);
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  set_read_timeout(opts_.read_timeout_s, 0);
  set_keep_alive_timeout(opts_.idle_timeout_s);
}

Listener::~Listener() {
  const int lfd = svr_sock_.exchange(INVALID_SOCKET);
  if (lfd != INVALID_SOCKET) ::close(lfd);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

Result<int> Listener::bind(const std::string& host, int port) {
  int bound = port;
  if (port == 0) {
    bound = bind_to_any_port(host);
  } else if (!bind_to_port(host, port)) {
    bound = -1;
  }
  if (bound <= 0) {
    return errorf("cannot listen on %s port %d (in use, or not an address of this machine)",
                  host.c_str(), port);
  }
  const int lfd = svr_sock_;
  // httplib listens with a backlog of 5; a burst of clients connecting at once would see
  // dropped SYNs and one-second retries. listen() again only raises it.
  ::listen(lfd, 1024);
  fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK);
  return bound;
}

void Listener::wake() {
  const uint64_t one = 1;
  if (wake_fd_ >= 0) (void)!::write(wake_fd_, &one, sizeof(one));
}

void Listener::begin_stop(Clock::time_point force_at) {
  int64_t want = ns_of(force_at), cur = force_at_ns_.load();
  while (want < cur && !force_at_ns_.compare_exchange_weak(cur, want)) {
  }
  {
    // Refuse new connections before returning: a connect() after stop() must fail at once,
    // not land in the backlog until run() wakes up and closes the socket. (On Linux, shutdown()
    // of a listening socket takes it out of the LISTEN state; run() still owns and closes it.)
    std::lock_guard<std::mutex> lock(listen_mu_);
    const int lfd = svr_sock_;
    if (lfd != INVALID_SOCKET) ::shutdown(lfd, SHUT_RDWR);
  }
  stopping_ = true;
  wake();
}

void Listener::request_read() {
  if (!t_current.mu) return;
  std::lock_guard<std::mutex> lock(*t_current.mu);
  Conn* c = static_cast<Conn*>(t_current.conn);
  c->deadline = Clock::time_point::max();
  c->idle = false;
}

void Listener::response_sent() {
  if (!t_current.mu) return;
  std::lock_guard<std::mutex> lock(*t_current.mu);
  Conn* c = static_cast<Conn*>(t_current.conn);
  c->deadline = Clock::now() + std::chrono::seconds(t_current.idle_timeout_s) +
                std::chrono::seconds(t_current.read_timeout_s);
  c->idle = true;
}

void Listener::refuse(int fd, std::vector<Parked>* parked, Clock::time_point now) {
  const std::string body =
      R"({"error":{"message":"too many open connections (the limit is )" +
      std::to_string(opts_.max_connections) +
      R"(); retry later","type":"server_error","param":null,"code":"too_many_connections"}})";
  const std::string msg =
      "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\nConnection: close\r\nRetry-After: 1\r\n\r\n" + body;
  (void)!::send(fd, msg.data(), msg.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  ::shutdown(fd, SHUT_WR);
  size_t lingering = 0;
  for (const Parked& p : *parked) lingering += p.lingering;
  if (lingering < kMaxLingering) {
    parked->push_back({fd, now + kLinger, true});
  } else {
    ::close(fd);
  }
}

bool Listener::accept_all(std::vector<Parked>* parked, Clock::time_point now) {
  for (int k = 0; k < 256; ++k) {
    int fd = ::accept4(svr_sock_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      // EAGAIN: none left. Out of descriptors or memory: the caller backs off.
      return errno == EAGAIN || errno == EWOULDBLOCK;
    }
    // Parked high, so that the descriptors below FD_SETSIZE stay free for the workers.
    const int high = fcntl(fd, F_DUPFD_CLOEXEC, FD_SETSIZE);
    if (high >= 0) {
      ::close(fd);
      fd = high;
    }
    int yes = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));
    if (open_ >= opts_.max_connections) {
      refuse(fd, parked, now);
      continue;
    }
    ++open_;
    parked->push_back({fd, now + std::chrono::seconds(opts_.idle_timeout_s), false});
  }
  return true;
}

void Listener::dispatch(int fd, Clock::time_point now) {
  std::list<Conn>::iterator it;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Conn c;
    c.fd = fd;
    c.deadline = now + std::chrono::seconds(opts_.read_timeout_s);
    it = active_.insert(active_.end(), c);
  }
  pool_->enqueue([this, it] { serve(it); });
}

void Listener::serve(std::list<Conn>::iterator c) {
  const int fd = c->fd;  // fd itself never changes; the watchdog only reads it
  set_timeout(fd, SO_RCVTIMEO, opts_.read_timeout_s);
  set_timeout(fd, SO_SNDTIMEO, 5);
  // httplib closes the descriptor it is given; the parked one stays open until the entry is
  // gone, so the watchdog can never shut down a reused descriptor number.
  const int low = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (low >= 0 && low < FD_SETSIZE) {
    t_current = {&mu_, &*c, opts_.read_timeout_s, opts_.idle_timeout_s};
    (this->*serve_socket_fn())(low);
    t_current = {};
  } else {
    if (low >= 0) ::close(low);
    static const std::string busy =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    (void)!::send(fd, busy.data(), busy.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    active_.erase(c);
  }
  ::close(fd);
  --open_;
  wake();
}

void Listener::watchdog(Clock::time_point now) {
  const bool stopping = stopping_;
  const bool force = stopping && now >= time_of(force_at_ns_.load());
  std::lock_guard<std::mutex> lock(mu_);
  for (Conn& c : active_) {
    if (c.shut) continue;
    bool kill = force || now >= c.deadline;
    if (!kill && stopping && c.idle) {
      // Idle between requests: closed now, unless the next request has begun arriving.
      char b;
      kill = ::recv(c.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) <= 0;
    }
    if (kill) {
      ::shutdown(c.fd, SHUT_RDWR);
      c.shut = true;
    }
  }
}

bool Listener::run() {
  pool_ = std::make_unique<httplib::ThreadPool>(static_cast<size_t>(opts_.threads));
  std::vector<Parked> parked, keep;
  std::vector<pollfd> pfds;
  Clock::time_point accept_paused_until{};
  bool ok = true;
  while (!stopping_) {
    Clock::time_point now = Clock::now();
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(kTick);
    for (const Parked& p : parked) {
      wait = std::min(wait, std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::max(p.deadline - now, Clock::duration::zero())) +
                                std::chrono::milliseconds(1));
    }
    const bool accepting = now >= accept_paused_until;
    pfds.clear();
    pfds.push_back({accepting ? static_cast<int>(svr_sock_) : -1, POLLIN, 0});
    pfds.push_back({wake_fd_, POLLIN, 0});
    for (const Parked& p : parked) pfds.push_back({p.fd, POLLIN, 0});
    const int n = ::poll(pfds.data(), pfds.size(), static_cast<int>(wait.count()));
    if (n < 0 && errno != EINTR) {
      ok = false;
      break;
    }
    now = Clock::now();
    if (pfds[1].revents) {
      uint64_t v;
      (void)!::read(wake_fd_, &v, sizeof(v));
    }
    keep.clear();
    for (size_t i = 0; i < parked.size(); ++i) {
      const Parked& p = parked[i];
      const short rev = n > 0 ? pfds[i + 2].revents : 0;
      if (p.lingering) {
        char buf[4096];
        const bool open =
            now < p.deadline && (!rev || ::recv(p.fd, buf, sizeof(buf), MSG_DONTWAIT) > 0);
        if (open) {
          keep.push_back(p);
        } else {
          ::close(p.fd);
        }
      } else if (rev) {
        dispatch(p.fd, now);  // its first bytes (or its close): a worker takes it from here
      } else if (now >= p.deadline) {
        ::close(p.fd);  // silent for the whole idle timeout
        --open_;
      } else {
        keep.push_back(p);
      }
    }
    parked.swap(keep);
    if (accepting && n > 0 && pfds[0].revents) {
      if (!accept_all(&parked, now)) accept_paused_until = now + std::chrono::milliseconds(50);
    }
    watchdog(now);
  }

  // Stopping: no more connections; the ones that never sent a byte are closed at once.
  {
    std::lock_guard<std::mutex> lock(listen_mu_);
    const int lfd = svr_sock_.exchange(INVALID_SOCKET);  // also ends httplib's keep-alive loops
    if (lfd != INVALID_SOCKET) ::close(lfd);
  }
  for (const Parked& p : parked) {
    ::close(p.fd);
    if (!p.lingering) --open_;
  }
  for (;;) {
    watchdog(Clock::now());
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (active_.empty()) break;
    }
    pollfd w{wake_fd_, POLLIN, 0};
    if (::poll(&w, 1, 50) > 0) {
      uint64_t v;
      (void)!::read(wake_fd_, &v, sizeof(v));
    }
  }
  pool_->shutdown();
  return ok;
}

}  // namespace qilin::server
