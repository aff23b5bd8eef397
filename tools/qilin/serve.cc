// `qilin serve`: loads the model, starts the Engine loop and the OpenAI-compatible HTTP server
// (src/server/), prints "listening on http://HOST:PORT" to stderr when ready, and stops cleanly
// on SIGINT / SIGTERM: no new connections or requests, running ones finish within
// --shutdown-timeout or are cancelled (a second signal cancels at once), and the exit status is
// 0 only when every KV block came back to the pool.
#include <pthread.h>
#include <sys/resource.h>
#include <sys/select.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "command.h"
#include "common.h"
#include "engine/engine.h"
#include "parallel.h"
#include "server/backend.h"
#include "server/http_server.h"

namespace qilin::cli {

namespace {

struct ServeOpts {
  Common c;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string api_key;
  std::string alias;
  int32_t max_batch_tokens = 512;
  int32_t max_prefill_tokens = EngineConfig{}.max_prefill_tokens;
  int32_t max_running = 64;
  int32_t max_queue = 1024;
  double kv_cache_gb = 0.5;
  int64_t max_body_bytes = int64_t{1} << 20;
  int http_threads = 0;
  std::vector<std::string> cors_origins;
  std::vector<std::string> host_aliases;
  int max_connections = server::ServerOptions{}.max_connections;
  int read_timeout_s = server::ServerOptions{}.read_timeout_s;
  int idle_timeout_s = server::ServerOptions{}.idle_timeout_s;
  double shutdown_timeout_s = server::ServerOptions{}.shutdown_timeout_s;
  ParallelCli par;
};

std::string basename_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Each open connection costs up to two descriptors (listener.h parks waiting ones above
// FD_SETSIZE and hands workers a low duplicate): raise the soft limit to fit, as far as the
// hard limit allows, and lower the connection cap to what fits when it does not.
int fit_descriptor_limit(int max_connections) {
  const rlim_t want = FD_SETSIZE + 2 * static_cast<rlim_t>(max_connections) + 256;
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return max_connections;
  if (rl.rlim_cur < want) {
    rlimit up = rl;
    up.rlim_cur = rl.rlim_max == RLIM_INFINITY ? want : std::min<rlim_t>(want, rl.rlim_max);
    if (setrlimit(RLIMIT_NOFILE, &up) == 0) rl = up;
  }
  if (rl.rlim_cur >= want) return max_connections;
  const int fit = static_cast<int>((rl.rlim_cur > 512 ? rl.rlim_cur - 256 : 256) / 2);
  std::fprintf(stderr,
               "qilin serve: warning: the descriptor limit (%llu) allows about %d connections; "
               "--max-connections %d lowered to that\n",
               static_cast<unsigned long long>(rl.rlim_cur), fit, max_connections);
  return std::min(max_connections, fit);
}

class ServeCommand final : public Command {
 public:
  const char* name() const override { return "serve"; }
  void add(CLI::App& app) override;
  int run() override;

 private:
  ServeOpts o_;
};

void ServeCommand::add(CLI::App& app) {
  ServeOpts& o = o_;
  CLI::App* s = app.add_subcommand(name(), "OpenAI-compatible HTTP server (continuous batching)");
  add_common(s, o.c);
  s->add_option("--host", o.host, "address to listen on (default 127.0.0.1: this machine only)");
  s->add_option("--port", o.port, "TCP port (0: pick a free one and print it)")
      ->check(CLI::Range(0, 65535));
  s->add_option("--api-key", o.api_key,
                "key required as 'Authorization: Bearer KEY' on every endpoint but /health "
                "(default: $QILIN_API_KEY; none: no key)");
  s->add_option("--alias", o.alias, "model name in responses and /v1/models (default: file name)");
  s->add_option("--max-batch-tokens", o.max_batch_tokens,
                "tokens per engine step: decode rows plus prefill chunks")
      ->check(CLI::Range(1, 1 << 16));
  s->add_option("--max-prefill-tokens", o.max_prefill_tokens,
                "prompt tokens per step while other sequences are decoding (stall-free "
                "batching: a burst of prompts spreads over several steps; 0: only "
                "--max-batch-tokens limits them)")
      ->check(CLI::Range(0, 1 << 16))
      ->capture_default_str();
  s->add_option("--max-running", o.max_running, "sequences in flight at once (each choice counts)")
      ->check(CLI::Range(1, 4096));
  s->add_option("--max-queue", o.max_queue, "waiting requests before 429")
      ->check(CLI::Range(1, 1 << 20));
  s->add_option("--kv-cache-gb", o.kv_cache_gb, "KV cache pool size in GiB")
      ->check(CLI::Range(0.001, 1024.0));
  s->add_option("--max-body-bytes", o.max_body_bytes, "largest request body accepted (413 above)")
      ->check(CLI::Range(int64_t{1024}, int64_t{1} << 30));
  s->add_option("--http-threads", o.http_threads,
                "HTTP worker threads, each serving one request at a time (default: 2 x "
                "--max-running + 32)")
      ->check(CLI::Range(0, 8192));
  s->add_option("--cors-origin", o.cors_origins,
                "a web origin allowed to call the API from a page, e.g. http://localhost:3000 "
                "(repeatable; '*': any). Default: none, and requests carrying any other Origin "
                "are refused")
      ->take_all();
  s->add_option("--host-alias", o.host_aliases,
                "a name besides localhost, 127.0.0.1 and [::1] that clients may use in Host "
                "when the server listens on loopback (repeatable; others get 403: DNS "
                "rebinding)")
      ->take_all();
  s->add_option("--max-connections", o.max_connections,
                "open connections at once; past it a new one gets 503 and is closed")
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  s->add_option("--read-timeout", o.read_timeout_s,
                "seconds a request's headers and body may take to arrive")
      ->check(CLI::Range(1, 3600))
      ->capture_default_str();
  s->add_option("--idle-timeout", o.idle_timeout_s,
                "seconds a connection may stay silent before its first or next request")
      ->check(CLI::Range(1, 3600))
      ->capture_default_str();
  s->add_option("--shutdown-timeout", o.shutdown_timeout_s,
                "on SIGINT/SIGTERM, seconds running requests may still finish before they are "
                "cancelled (a second signal cancels at once)")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  add_parallel(s, o.par);
}

int ServeCommand::run() {
  ServeOpts& o = o_;
  if (o.api_key.empty()) {
    if (const char* k = std::getenv("QILIN_API_KEY")) o.api_key = k;
  }
  // Signals are taken by one thread (sigwait) so that every other thread, started below,
  // inherits the mask; a closed client socket must not kill the process.
  std::signal(SIGPIPE, SIG_IGN);
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  auto l = load(o.c.model, placement_for(o.c, o.par), o.c.lora);
  if (!l) return fail(l.status().message());
  // --tp/--pp: world rank 0 serves HTTP and drives; the other ranks only run its forward calls.
  auto par = ParallelRun::start(o.par, *l->model, o.c.threads);
  if (!par) return fail(par.status().message());
  if (*par && (*par)->follower()) return (*par)->follow();
  auto tmpl = model_template(*l);
  if (!tmpl) {
    std::fprintf(stderr, "qilin serve: warning: %s; /v1/chat/completions is unavailable\n",
                 tmpl.status().message().c_str());
  }

  EngineConfig ec;
  ec.n_threads = o.c.threads;
  ec.kv_cache_bytes = static_cast<size_t>(o.kv_cache_gb * double(size_t{1} << 30));
  ec.max_batch_tokens = o.max_batch_tokens;
  ec.max_prefill_tokens = o.max_prefill_tokens;
  ec.max_running = o.max_running;
  ec.max_queue = o.max_queue;
  ec.max_seq_len = o.c.ctx;
  ec.flash_attn = o.c.attn == "flash";
  ec.kv_type = *parse_kv_type(o.c.kv_type);
  auto engine = Engine::create(*l->model, *l->tok, ec);
  if (!engine) return fail(engine.status().message());
  Engine& eng = **engine;
  server::EngineBackend backend(eng);

  server::ServerOptions so;
  so.host = o.host;
  so.port = o.port;
  so.api_key = o.api_key;
  so.max_body_bytes = static_cast<size_t>(o.max_body_bytes);
  so.http_threads = o.http_threads > 0 ? o.http_threads : 2 * o.max_running + 32;
  so.model_id =
      o.alias.empty() ? basename_of(o.c.model.empty() ? default_model_path() : o.c.model) : o.alias;
  so.limits.max_n = std::min(16, o.max_running);
  so.cors_origins = o.cors_origins;
  so.host_aliases = o.host_aliases;
  so.max_connections = fit_descriptor_limit(o.max_connections);
  so.read_timeout_s = o.read_timeout_s;
  so.idle_timeout_s = o.idle_timeout_s;
  so.shutdown_timeout_s = o.shutdown_timeout_s;
  server::HttpServer http(so, backend, *l->tok, tmpl ? &*tmpl : nullptr);
  auto port = http.bind();
  if (!port) return fail(port.status().message());

  eng.start();
  std::atomic<bool> listening_done{false};
  std::thread signals([&] {
    // First signal: a graceful stop; a second one cancels what still runs.
    for (int n = 0; n < 2; ++n) {
      int sig = 0;
      sigwait(&sigs, &sig);
      if (listening_done) return;
      if (n == 0) {
        std::fprintf(stderr,
                     "qilin serve: signal %d, stopping (running requests have %g s to finish; "
                     "signal again to cancel them now)\n",
                     sig, o.shutdown_timeout_s);
      } else {
        std::fprintf(stderr, "qilin serve: signal %d again, cancelling running requests\n", sig);
      }
      http.stop(n > 0);
    }
  });
  const std::string shown_host =
      o.host.find(':') != std::string::npos ? "[" + o.host + "]" : o.host;
  std::fprintf(stderr,
               "qilin serve: %s loaded in %.0f ms; KV pool %d blocks of %d tokens, sequences up "
               "to %d tokens; %s\n",
               so.model_id.c_str(), l->load_ms, eng.metrics().kv.total, ec.block_size,
               eng.max_seq_len(), o.api_key.empty() ? "no API key" : "API key required");
  std::fprintf(stderr, "listening on http://%s:%d\n", shown_host.c_str(), *port);
  std::fflush(stderr);
  const bool ok = http.listen();
  // listen() returns after stop(): every request has ended and every connection is closed.
  listening_done = true;
  pthread_kill(signals.native_handle(), SIGTERM);  // wakes the signal thread if still waiting
  signals.join();
  eng.stop();
  if (!ok) return fail("the HTTP server stopped with an error");
  const EngineMetrics m = eng.metrics();
  if (m.kv.used != 0) {
    return fail("stopped with " + std::to_string(m.kv.used) + " of " + std::to_string(m.kv.total) +
                " KV blocks still in use");
  }
  std::fprintf(stderr, "qilin serve: stopped; all %d KV blocks free\n", m.kv.total);
  return 0;
}

}  // namespace

std::unique_ptr<Command> make_serve() { return std::make_unique<ServeCommand>(); }

}  // namespace qilin::cli
