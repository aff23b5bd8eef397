// `qilin serve`: loads the model, starts the Engine loop and the OpenAI-compatible HTTP server
// (src/server/), prints "listening on http://HOST:PORT" to stderr when ready, and stops cleanly
// on SIGINT / SIGTERM (new requests get 503, running ones are cancelled).
#include "serve.h"

#include <pthread.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "common.h"
#include "parallel.h"
#include "engine/engine.h"
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
  ParallelCli par;
};

ServeOpts g_opts;

std::string basename_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

CLI::App* add_serve(CLI::App& app) {
  ServeOpts& o = g_opts;
  CLI::App* s = app.add_subcommand("serve", "OpenAI-compatible HTTP server (continuous batching)");
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
  add_parallel(s, o.par);
  return s;
}

int run_serve() {
  ServeOpts& o = g_opts;
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
  server::HttpServer http(so, backend, *l->tok, tmpl ? &*tmpl : nullptr);
  auto port = http.bind();
  if (!port) return fail(port.status().message());

  eng.start();
  std::thread signals([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    if (sig == SIGINT || sig == SIGTERM) {
      std::fprintf(stderr, "qilin serve: signal %d, stopping\n", sig);
    }
    http.stop();
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
  // listen() returns after stop(): running requests were cancelled and the workers are done.
  pthread_kill(signals.native_handle(), SIGTERM);  // wakes the signal thread if still waiting
  signals.join();
  eng.stop();
  return ok ? 0 : fail("the HTTP server stopped with an error");
}

}  // namespace qilin::cli
