// qilin: the command-line program. Subcommands: run (one prompt, streamed), chat (multi-turn
// with the model's chat template), bench (prompt and generation speed, llama-bench style).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "common.h"
#include "finetune.h"
#include "merge.h"
#include "parallel.h"
#include "quantize.h"
#include "serve.h"
#include "core/thread_pool.h"
#include "cpu/quants.h"
#include "dist/topology.h"
#include "engine/beam_search.h"
#include "engine/engine.h"
#include "engine/generator.h"
#include "engine/perplexity.h"
#include "engine/sampler.h"
#include "model/chat_template.h"
#include "model/llama.h"
#include "model/tokenizer.h"

using namespace qilin;
using namespace qilin::cli;

namespace {

void print_stats(double load_ms, const GenerateStats& st) {
  std::fprintf(stderr, "\n\nload time: %.1f ms\n", load_ms);
  std::fprintf(stderr, "prompt:    %d tokens in %.1f ms (%.1f tokens/s)\n", st.n_prompt,
               st.prompt_ms, st.n_prompt ? 1000.0 * st.n_prompt / st.prompt_ms : 0.0);
  std::fprintf(stderr, "generate:  %d tokens in %.1f ms (%.1f tokens/s), stop: %s\n",
               st.n_generated, st.gen_ms,
               st.n_generated ? 1000.0 * st.n_generated / st.gen_ms : 0.0,
               st.stop_reason.c_str());
}

bool print_text(std::string_view s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
  return true;
}

// ---- run ----------------------------------------------------------------------------------

struct RunOpts {
  Common c;
  SamplingParams s;
  std::string prompt, prompt_file;
  int32_t n_predict = 128;
  std::vector<std::string> stop;
  bool chat = false;
  bool ignore_eos = false;
  int32_t beams = 0;
  float length_penalty = 1.0f;
  ParallelCli par;
};


// --beam N: beam search over the shared paged KV cache; prints the best hypothesis (and the
// others with their scores on stderr).
int run_beam(const RunOpts& o, const Loaded& l, const std::vector<int32_t>& prompt) {
  BeamSearchOptions bo;
  bo.n_beams = o.beams;
  bo.max_tokens = o.n_predict < 0 ? std::max(1, o.c.ctx - static_cast<int32_t>(prompt.size()))
                                  : std::max(1, o.n_predict);
  bo.length_penalty = o.length_penalty;
  bo.ignore_eos = o.ignore_eos;
  bo.n_threads = o.c.threads;
  bo.n_batch = o.c.batch;
  bo.flash_attn = o.c.attn == "flash";
  bo.kv_type = *parse_kv_type(o.c.kv_type);
  BeamSearchStats bst;
  const double t0 = now_ms();
  auto hyps = beam_search(*l.model, *l.tok, prompt, bo, &bst);
  if (!hyps) return fail(hyps.status().message());
  const double ms = now_ms() - t0;
  if (hyps->empty()) return fail("beam search produced no hypothesis");
  std::string best;
  for (int32_t t : (*hyps)[0].tokens) best += l.tok->token_to_piece(t);
  print_text(best);
  std::fprintf(stderr, "\n\nload time: %.1f ms\nbeam search: %d beams, %d steps in %.1f ms; KV "
               "blocks at peak %d shared vs %d unshared, %d copy-on-write copies\n",
               l.load_ms, o.beams, bst.steps, ms, bst.peak_blocks, bst.unshared_blocks,
               bst.block_copies);
  for (size_t i = 0; i < hyps->size(); ++i) {
    const BeamHypothesis& h = (*hyps)[i];
    std::string text;
    for (int32_t t : h.tokens) text += l.tok->token_to_piece(t);
    std::fprintf(stderr, "  #%zu score %.4f logprob %.4f %s: %s\n", i + 1, h.score, h.logprob,
                 h.finished ? "eos" : "length", text.c_str());
  }
  return 0;
}

int cmd_run(RunOpts& o) {
  if (!o.prompt_file.empty()) {
    std::ifstream in(o.prompt_file, std::ios::binary);
    if (!in) return fail("cannot read prompt file '" + o.prompt_file + "'");
    std::stringstream ss;
    ss << in.rdbuf();
    o.prompt = ss.str();
  }
  if (Status st = o.s.validate(); !st) return fail(st.message());
  auto l = load(o.c.model, placement_for(o.c, o.par), o.c.lora);
  if (!l) return fail(l.status().message());
  auto par = ParallelRun::start(o.par, *l->model, o.c.threads);
  if (!par) return fail(par.status().message());
  if (*par && (*par)->follower()) return (*par)->follow();
  std::string text = o.prompt;
  if (o.chat) {
    auto tmpl = model_template(*l);
    if (!tmpl) return fail(tmpl.status().message());
    auto r = tmpl->render({{"user", o.prompt}}, true);
    if (!r) return fail(r.status().message());
    text = *r;
  }
  std::vector<int32_t> prompt = l->tok->encode(text, true, true);
  if (prompt.empty()) return fail("the prompt is empty");
  if (o.beams > 0) return run_beam(o, *l, prompt);
  GeneratorConfig gc;
  gc.n_ctx = o.c.ctx;
  gc.n_batch = o.c.batch;
  gc.n_threads = o.c.threads;
  gc.flash_attn = o.c.attn == "flash";
  gc.kv_type = *parse_kv_type(o.c.kv_type);
  auto gen = Generator::create(*l->model, gc);
  if (!gen) return fail(gen.status().message());
  Sampler sampler(o.s, l->model->hparams().n_vocab);
  GenerateOptions go;
  go.max_tokens = o.n_predict;
  go.stop = o.stop;
  go.ignore_eos = o.ignore_eos;
  auto st = generate(**gen, *l->tok, sampler, prompt, go, print_text);
  if (!st) return fail(st.status().message());
  print_stats(l->load_ms, *st);
  return 0;
}

// ---- perplexity --------------------------------------------------------------------------

struct PplOpts {
  Common c;
  std::string file;
  int32_t chunks = -1;
  ParallelCli par;
};

int cmd_perplexity(PplOpts& o) {
  std::ifstream in(o.file, std::ios::binary);
  if (!in) return fail("cannot read text file '" + o.file + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  auto l = load(o.c.model, placement_for(o.c, o.par), o.c.lora);
  if (!l) return fail(l.status().message());
  auto par = ParallelRun::start(o.par, *l->model, o.c.threads);
  if (!par) return fail(par.status().message());
  if (*par && (*par)->follower()) return (*par)->follow();
  const double t0 = now_ms();
  const std::vector<int32_t> tokens = l->tok->encode(ss.str(), true, false);
  std::fprintf(stderr, "perplexity: tokenized %s: %zu tokens in %.0f ms; windows of %d tokens, "
               "the second half of each scored\n", o.file.c_str(), tokens.size(),
               now_ms() - t0, o.c.ctx);
  PerplexityOptions po;
  po.n_ctx = o.c.ctx;
  po.n_batch = o.c.batch;
  po.n_chunks = o.chunks;
  po.n_threads = o.c.threads;
  po.flash_attn = o.c.attn == "flash";
  po.kv_type = *parse_kv_type(o.c.kv_type);
  const double t1 = now_ms();
  auto r = perplexity(*l->model, *l->tok, tokens, po, [&](int done, int total, double ppl) {
    if (done == 1) {
      const double per = (now_ms() - t1) / 1000.0;
      std::fprintf(stderr, "perplexity: %.2f s per window, %d windows, ETA %.1f s\n", per, total,
                   per * total);
    }
    std::printf("[%d]%.4f,", done, ppl);
    std::fflush(stdout);
  });
  if (!r) return fail(r.status().message());
  std::printf("\nFinal estimate: PPL = %.4f +/- %.5f\n", r->ppl, r->ppl_stderr);
  std::fprintf(stderr, "perplexity: %lld tokens scored in %d windows, %.1f s\n",
               static_cast<long long>(r->n_scored), r->n_chunks, (now_ms() - t1) / 1000.0);
  return 0;
}

// ---- chat ---------------------------------------------------------------------------------

struct ChatOpts {
  Common c;
  SamplingParams s;
  std::string system;
  int32_t n_predict = 512;
};

int cmd_chat(ChatOpts& o) {
  if (Status st = o.s.validate(); !st) return fail(st.message());
  auto l = load(o.c.model, placement_of(o.c), o.c.lora);
  if (!l) return fail(l.status().message());
  auto tmpl = model_template(*l);
  if (!tmpl) return fail(tmpl.status().message());
  GeneratorConfig gc;
  gc.n_ctx = o.c.ctx;
  gc.n_batch = o.c.batch;
  gc.n_threads = o.c.threads;
  gc.flash_attn = o.c.attn == "flash";
  gc.kv_type = *parse_kv_type(o.c.kv_type);
  auto gen = Generator::create(*l->model, gc);
  if (!gen) return fail(gen.status().message());
  Generator& g = **gen;
  Sampler sampler(o.s, l->model->hparams().n_vocab);
  std::vector<ChatMessage> msgs;
  if (!o.system.empty()) msgs.push_back({"system", o.system});
  const bool tty = isatty(STDIN_FILENO);
  std::fprintf(stderr, "qilin chat: model loaded in %.0f ms. Type a message; an empty line or "
                       "end of input quits.\n", l->load_ms);
  std::string line;
  GenerateStats total;
  for (;;) {
    if (tty) std::fprintf(stderr, "\n> ");
    if (!std::getline(std::cin, line) || line.empty()) break;
    msgs.push_back({"user", line});
    auto rendered = tmpl->render(msgs, true);
    if (!rendered) return fail(rendered.status().message());
    std::vector<int32_t> all = l->tok->encode(*rendered, true, true);
    // Reuse the cached prefix: only the tokens after what the cache already holds are run.
    const std::vector<int32_t>& have = g.tokens();
    size_t common = 0;
    while (common < have.size() && common < all.size() && have[common] == all[common]) ++common;
    if (common == all.size()) --common;  // always feed at least one token to get logits
    g.truncate(static_cast<int32_t>(common));
    std::vector<int32_t> fresh(all.begin() + common, all.end());
    std::string reply;
    GenerateOptions go;
    go.max_tokens = o.n_predict;
    auto st = generate(g, *l->tok, sampler, fresh, go, [&](std::string_view s) {
      reply.append(s);
      return print_text(s);
    });
    if (!st) return fail(st.status().message());
    std::printf("\n");
    std::fprintf(stderr, "[prompt %d tokens %.1f t/s, generated %d tokens %.1f t/s]\n",
                 st->n_prompt, st->n_prompt ? 1000.0 * st->n_prompt / st->prompt_ms : 0.0,
                 st->n_generated, st->n_generated ? 1000.0 * st->n_generated / st->gen_ms : 0.0);
    msgs.push_back({"assistant", reply});
    total.n_prompt += st->n_prompt;
    total.prompt_ms += st->prompt_ms;
    total.n_generated += st->n_generated;
    total.gen_ms += st->gen_ms;
    total.stop_reason = st->stop_reason;
  }
  if (!msgs.empty()) print_stats(l->load_ms, total);
  return 0;
}

// ---- bench --------------------------------------------------------------------------------

struct BenchOpts {
  Common c;
  int32_t n_prompt = 512;
  int32_t n_gen = 128;
  int reps = 5;
  std::string output = "md";
  int32_t prefix = 0;  // leading prompt tokens shared with an earlier prompt (prefix cache test)
  int32_t parallel = 0;  // > 0: that many requests at once through the continuous-batching Engine
  int32_t depth = 0;     // tokens already in the KV cache before each pp / tg test (llama-bench -d)
  ParallelCli par;
};

// --parallel N: N requests of -p random prompt tokens and -n generated tokens submitted at
// once to the Engine (continuous batching, greedy, EOS ignored); per repetition the wall time
// from submission to the last token. t/s = generated tokens of all requests / that time.
int bench_parallel(const BenchOpts& o, const Loaded& l) {
  EngineConfig ec;
  ec.n_threads = o.c.threads;
  ec.max_batch_tokens = std::max(o.c.batch, 1);
  ec.max_running = std::max(o.parallel, 1);
  ec.flash_attn = o.c.attn == "flash";
  ec.kv_type = *parse_kv_type(o.c.kv_type);
  ec.prefix_cache = false;
  ec.kv_cache_bytes = size_t{2} << 30;
  auto made = Engine::create(*l.model, *l.tok, ec);
  if (!made) return fail(made.status().message());
  Engine& e = **made;
  std::mt19937 rng(42);
  std::uniform_int_distribution<int32_t> dist(0, l.model->hparams().n_vocab - 1);
  auto once = [&]() -> Result<double> {
    const double t0 = now_ms();
    for (int32_t i = 0; i < o.parallel; ++i) {
      RequestParams p;
      p.prompt.resize(std::max(o.n_prompt, 1));
      for (int32_t& t : p.prompt) t = dist(rng);
      p.max_tokens = std::max(o.n_gen, 1);
      p.sampling.temperature = 0;
      p.ignore_eos = true;
      SubmitResult r = e.submit(std::move(p), nullptr);
      if (!r.ok()) return Status::error(r.message);
    }
    while (e.step()) {
    }
    return now_ms() - t0;
  };
  if (auto w = once(); !w) return fail(w.status().message());  // warm-up
  std::vector<double> tps;
  for (int r = 0; r < o.reps; ++r) {
    auto ms = once();
    if (!ms) return fail(ms.status().message());
    tps.push_back(1000.0 * o.parallel * std::max(o.n_gen, 1) / *ms);
  }
  std::sort(tps.begin(), tps.end());
  const EngineMetrics m = e.metrics();
  std::printf("| model | threads | clients | test | output t/s (median) | min | max | steps |\n");
  std::printf("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |\n");
  const std::string& path = l.model->gguf().path();
  std::printf("| %s | %d | %d | pp%d+tg%d | %.1f | %.1f | %.1f | %llu |\n",
              path.substr(path.rfind('/') + 1).c_str(), o.c.threads, o.parallel, o.n_prompt,
              o.n_gen, tps[tps.size() / 2], tps.front(), tps.back(),
              static_cast<unsigned long long>(m.steps));
  return 0;
}

struct Summary {
  double median = 0, mean = 0, stddev = 0, min = 0, max = 0;
};
Summary summarize(std::vector<double> v) {
  Summary s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  s.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / n;
  double ss = 0;
  for (double x : v) ss += (x - s.mean) * (x - s.mean);
  s.stddev = n > 1 ? std::sqrt(ss / (n - 1)) : 0.0;
  s.min = v.front();
  s.max = v.back();
  return s;
}

int cmd_bench(BenchOpts& o) {
  if (o.prefix > 0 && o.prefix >= o.n_prompt) {
    return fail("--prefix " + std::to_string(o.prefix) + " must be below -p " +
                std::to_string(o.n_prompt) + " (at least one prompt token is computed)");
  }
  auto l = load(o.c.model, placement_for(o.c, o.par), o.c.lora);
  if (!l) return fail(l.status().message());
  auto par = ParallelRun::start(o.par, *l->model, o.c.threads);
  if (!par) return fail(par.status().message());
  if (*par && (*par)->follower()) return (*par)->follow();
  if (o.parallel > 0) return bench_parallel(o, *l);
  GeneratorConfig gc;
  gc.n_ctx = std::max(o.c.ctx, o.depth + std::max(o.n_prompt, o.n_gen) + 1);
  gc.n_batch = std::max(o.c.batch, 1);
  gc.n_threads = o.c.threads;
  gc.flash_attn = o.c.attn == "flash";
  gc.kv_type = *parse_kv_type(o.c.kv_type);
  gc.prefix_cache = false;  // every repetition re-feeds the same prompt: it must be computed
  auto gen = Generator::create(*l->model, gc);
  if (!gen) return fail(gen.status().message());
  Generator& g = **gen;
  std::mt19937 rng(42);
  std::uniform_int_distribution<int32_t> dist(0, l->model->hparams().n_vocab - 1);
  std::vector<int32_t> prompt(o.n_prompt), context(o.depth);
  for (int32_t& t : prompt) t = dist(rng);
  for (int32_t& t : context) t = dist(rng);
  // -d N: each test starts with N tokens already in the cache (fed untimed), so that it
  // measures prefill or generation at that depth of context.
  auto reset = [&]() -> Status {
    g.reset();
    if (!context.empty()) QILIN_TRY(g.feed(context));
    return Status::ok();
  };

  auto run_pp = [&]() -> Result<double> {
    QILIN_TRY(reset());
    const double t0 = now_ms();
    QILIN_TRY(g.feed(prompt));
    return now_ms() - t0;
  };
  // --prefix N: the same prompt length, its first N tokens a prefix an earlier prompt left in
  // the prefix cache and the rest new each time (a shared system prompt, then a new question).
  std::unique_ptr<Generator> gp;
  if (o.prefix > 0) {
    GeneratorConfig pc = gc;
    pc.prefix_cache = true;
    auto made = Generator::create(*l->model, pc);
    if (!made) return fail(made.status().message());
    gp = std::move(*made);
  }
  auto run_pp_prefix = [&]() -> Result<double> {
    gp->reset();
    for (int32_t i = o.prefix; i < o.n_prompt; ++i) prompt[i] = dist(rng);
    const double t0 = now_ms();
    QILIN_TRY(gp->feed(prompt));
    return now_ms() - t0;
  };
  auto run_tg = [&]() -> Result<double> {
    QILIN_TRY(reset());
    int32_t tok = l->tok->bos() >= 0 ? l->tok->bos() : 0;
    const double t0 = now_ms();
    for (int32_t i = 0; i < o.n_gen; ++i) {
      QILIN_TRY(g.feed(&tok, 1));
      tok = dist(rng);
    }
    return now_ms() - t0;
  };
  // Warm-up: page in the weights, spin up the threads.
  if (o.n_prompt > 0) { auto w = run_pp(); if (!w) return fail(w.status().message()); }
  if (o.n_gen > 0) { auto w = run_tg(); if (!w) return fail(w.status().message()); }
  if (gp) { auto w = run_pp_prefix(); if (!w) return fail(w.status().message()); }
  std::vector<double> pp, tg, ppc;
  for (int r = 0; r < o.reps; ++r) {
    if (gp) {
      auto ms = run_pp_prefix();
      if (!ms) return fail(ms.status().message());
      ppc.push_back(1000.0 * o.n_prompt / *ms);
    }
    if (o.n_prompt > 0) {
      auto ms = run_pp();
      if (!ms) return fail(ms.status().message());
      pp.push_back(1000.0 * o.n_prompt / *ms);
    }
    if (o.n_gen > 0) {
      auto ms = run_tg();
      if (!ms) return fail(ms.status().message());
      tg.push_back(1000.0 * o.n_gen / *ms);
    }
  }
  const LlamaHparams& hp = l->model->hparams();
  const std::string model_name = l->model->gguf().path().substr(l->model->gguf().path().rfind('/') + 1);
  // Bytes a generated token reads: every weight once (a tied output head re-reads the
  // embedding table, which weight_bytes counts once) plus the K and V of the context, on
  // average depth + n_gen / 2 positions long in the tg test, in the cache's format.
  const double kv_bytes =
      static_cast<double>(KvCache::bytes_per_token(l->model->kv_config(16, 16, gc.kv_type))) *
      (o.depth + o.n_gen / 2.0);
  const double bytes_per_token = static_cast<double>(l->model->weight_bytes()) + kv_bytes;
  struct Row { std::string test; Summary s; std::vector<double> runs; double gbps; };
  std::vector<Row> rows;
  const std::string at = o.depth > 0 ? " @ d" + std::to_string(o.depth) : "";
  if (!pp.empty()) rows.push_back({"pp" + std::to_string(o.n_prompt) + at, summarize(pp), pp, 0.0});
  if (!ppc.empty()) {
    rows.push_back({"pp" + std::to_string(o.n_prompt) + " (first " + std::to_string(o.prefix) +
                        " cached)",
                    summarize(ppc), ppc, 0.0});
  }
  if (!tg.empty()) {
    Summary s = summarize(tg);
    rows.push_back({"tg" + std::to_string(o.n_gen) + at, s, tg, s.median * bytes_per_token / 1e9});
  }
  if (o.output == "json") {
    nlohmann::json j;
    j["model"] = model_name;
    j["weights_bytes"] = l->model->weight_bytes();
    j["n_layer"] = hp.n_layer;
    j["threads"] = o.c.threads;
    j["isa"] = isa_name(cpu_best_isa());
    j["repetitions"] = o.reps;
    j["weights"] = placement_name(l->model->placement());
    j["attn"] = o.c.attn;
    j["kv_type"] = o.c.kv_type;
    j["depth"] = o.depth;
    for (const Row& r : rows) {
      nlohmann::json e = {{"test", r.test}, {"t_s_median", r.s.median}, {"t_s_mean", r.s.mean},
                           {"t_s_stddev", r.s.stddev}, {"t_s_min", r.s.min},
                           {"t_s_max", r.s.max}, {"runs", r.runs}};
      if (r.gbps > 0) {
        e["bytes_per_token"] = bytes_per_token;
        e["read_gb_s"] = r.gbps;
      }
      j["results"].push_back(e);
    }
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("| model | size | weights | threads | isa | attn | kv | test | t/s (median) | "
                "± stddev | min | max | GB/s read |\n");
    std::printf("| --- | ---: | --- | ---: | --- | --- | --- | --- | ---: | ---: | ---: | ---: | "
                "---: |\n");
    for (const Row& r : rows) {
      std::printf("| %s | %.1f MiB | %s | %d | %s | %s | %s | %s | %.2f | %.2f | %.2f | %.2f | %s |\n",
                  model_name.c_str(), l->model->weight_bytes() / 1048576.0,
                  placement_name(l->model->placement()), o.c.threads, isa_name(cpu_best_isa()),
                  o.c.attn.c_str(), o.c.kv_type.c_str(), r.test.c_str(), r.s.median, r.s.stddev,
                  r.s.min, r.s.max,
                  r.gbps > 0 ? std::to_string(r.gbps).substr(0, 5).c_str() : "");
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"qilin: run, serve, compress and fine-tune LLMs"};
  app.require_subcommand(1);

  RunOpts run;
  CLI::App* r = app.add_subcommand("run", "generate text from a prompt, streamed");
  add_common(r, run.c);
  add_sampling(r, run.s);
  r->add_option("-p,--prompt", run.prompt, "prompt text");
  r->add_option("-f,--file", run.prompt_file, "read the prompt from a file");
  r->add_option("-n,--n-predict", run.n_predict, "tokens to generate (-1 = until EOS)")
      ->check(CLI::Range(-1, 1 << 24));
  r->add_option("--stop", run.stop, "stop string (repeatable)");
  r->add_flag("--chat", run.chat, "wrap the prompt in the model's chat template as a user turn");
  r->add_flag("--ignore-eos", run.ignore_eos, "keep generating past end-of-generation tokens");
  r->add_option("--beam", run.beams,
                "beam search with N beams sharing the paged KV cache (sampling flags unused)")
      ->check(CLI::Range(1, 64));
  add_parallel(r, run.par);
  r->add_option("--length-penalty", run.length_penalty,
                "beam score = log-probability / length^penalty (default 1)");

  ChatOpts chat;
  CLI::App* c = app.add_subcommand("chat", "multi-turn conversation using the model's chat template");
  add_common(c, chat.c);
  add_sampling(c, chat.s);
  c->add_option("--system", chat.system, "system message");
  c->add_option("-n,--n-predict", chat.n_predict, "maximum tokens per reply")
      ->check(CLI::Range(1, 1 << 24));

  BenchOpts bench;
  CLI::App* b = app.add_subcommand("bench", "measure prompt processing and generation speed");
  add_common(b, bench.c);
  b->add_option("-p,--n-prompt", bench.n_prompt, "prompt tokens (pp test)")->check(CLI::Range(0, 1 << 20));
  b->add_option("-n,--n-gen", bench.n_gen, "generated tokens (tg test)")->check(CLI::Range(0, 1 << 20));
  b->add_option("-r,--repetitions", bench.reps, "repetitions")->check(CLI::Range(1, 1000));
  b->add_option("-d,--depth", bench.depth,
                "tokens already in the KV cache before each test (fed untimed): prefill and "
                "generation speed at that context depth")
      ->check(CLI::Range(0, 1 << 20));
  b->add_option("--prefix", bench.prefix,
                "also time the prompt with its first N tokens found in the prefix cache (a "
                "shared system prompt); t/s counts all prompt tokens")
      ->check(CLI::Range(0, 1 << 20));
  b->add_option("--parallel", bench.parallel,
                "N requests at once through the continuous-batching engine: aggregate output "
                "tokens/s (prompt -p, output -n each)")
      ->check(CLI::Range(0, 4096));
  b->add_option("-o,--output", bench.output, "output format")->check(CLI::IsMember({"md", "json"}));
  add_parallel(b, bench.par);

  PplOpts ppl;
  CLI::App* pp = app.add_subcommand(
      "perplexity", "perplexity of a text, llama-perplexity's method (windows of -c tokens)");
  add_common(pp, ppl.c);
  pp->get_option("--ctx-size")->default_val(512);
  pp->add_option("-f,--file", ppl.file, "text file")->required();
  pp->add_option("--chunks", ppl.chunks, "windows to evaluate (default: all)")
      ->check(CLI::Range(1, 1 << 24));
  add_parallel(pp, ppl.par);

  int32_t topo_world = 1, topo_tp = 1, topo_pp = 1;
  CLI::App* tp = app.add_subcommand("topology", "print the 3D rank grid (pipeline x data x tensor)");
  tp->add_option("--world", topo_world, "ranks in all")->required()->check(CLI::Range(1, 1 << 20));
  tp->add_option("--tp", topo_tp, "tensor-parallel degree")->check(CLI::Range(1, 1 << 20));
  tp->add_option("--pp", topo_pp, "pipeline-parallel degree")->check(CLI::Range(1, 1 << 20));

  CLI::App* sv = add_serve(app);
  CLI::App* qz = add_quantize(app);
  CLI::App* ftc = add_finetune(app);
  CLI::App* mg = add_merge(app);

  CLI11_PARSE(app, argc, argv);
  if (sv->parsed()) return run_serve();
  if (tp->parsed()) {
    auto t = Topology::create(topo_world, topo_tp, topo_pp);
    if (!t) return fail(t.status().message());
    std::printf("%s", t->describe().c_str());
    return 0;
  }
  if (qz->parsed()) return run_quantize();
  if (ftc->parsed()) return run_finetune();
  if (mg->parsed()) return run_merge();
  if (pp->parsed()) return cmd_perplexity(ppl);
  if (r->parsed()) {
    if (run.prompt.empty() && run.prompt_file.empty()) return fail("run: give a prompt with -p or -f");
    return cmd_run(run);
  }
  if (c->parsed()) return cmd_chat(chat);
  if (b->parsed()) return cmd_bench(bench);
  return 1;
}
