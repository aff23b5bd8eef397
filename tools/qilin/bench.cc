// `qilin bench`: prompt processing (pp) and generation (tg) speed in llama-bench's manner
// (random tokens, a warm-up, -r repetitions, median and spread, -o md|json), at a context depth
// (-d), with a cached prefix (--prefix), or as N parallel requests through the Engine.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "command.h"
#include "common.h"
#include "cpu/isa.h"
#include "engine/engine.h"
#include "engine/generator.h"
#include "parallel.h"

namespace qilin::cli {
namespace {

struct BenchOpts {
  Common c;
  int32_t n_prompt = 512;
  int32_t n_gen = 128;
  int reps = 5;
  std::string output = "md";
  int32_t prefix = 0;    // leading prompt tokens shared with an earlier prompt (prefix cache test)
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

class BenchCommand final : public Command {
 public:
  const char* name() const override { return "bench"; }
  void add(CLI::App& app) override;
  int run() override;

 private:
  BenchOpts o_;
};

void BenchCommand::add(CLI::App& app) {
  BenchOpts& o = o_;
  CLI::App* b = app.add_subcommand(name(), "measure prompt processing and generation speed");
  add_common(b, o.c);
  b->add_option("-p,--n-prompt", o.n_prompt, "prompt tokens (pp test)")
      ->check(CLI::Range(0, 1 << 20));
  b->add_option("-n,--n-gen", o.n_gen, "generated tokens (tg test)")->check(CLI::Range(0, 1 << 20));
  b->add_option("-r,--repetitions", o.reps, "repetitions")->check(CLI::Range(1, 1000));
  b->add_option("-d,--depth", o.depth,
                "tokens already in the KV cache before each test (fed untimed): prefill and "
                "generation speed at that context depth")
      ->check(CLI::Range(0, 1 << 20));
  b->add_option("--prefix", o.prefix,
                "also time the prompt with its first N tokens found in the prefix cache (a "
                "shared system prompt); t/s counts all prompt tokens")
      ->check(CLI::Range(0, 1 << 20));
  b->add_option("--parallel", o.parallel,
                "N requests at once through the continuous-batching engine: aggregate output "
                "tokens/s (prompt -p, output -n each)")
      ->check(CLI::Range(0, 4096));
  b->add_option("-o,--output", o.output, "output format")->check(CLI::IsMember({"md", "json"}));
  add_parallel(b, o.par);
}

int BenchCommand::run() {
  const BenchOpts& o = o_;
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
  GeneratorConfig gc = generator_config(o.c);
  gc.n_ctx = std::max(o.c.ctx, o.depth + std::max(o.n_prompt, o.n_gen) + 1);
  gc.n_batch = std::max(o.c.batch, 1);
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
  if (o.n_prompt > 0) {
    auto w = run_pp();
    if (!w) return fail(w.status().message());
  }
  if (o.n_gen > 0) {
    auto w = run_tg();
    if (!w) return fail(w.status().message());
  }
  if (gp) {
    auto w = run_pp_prefix();
    if (!w) return fail(w.status().message());
  }
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
  const std::string model_name =
      l->model->gguf().path().substr(l->model->gguf().path().rfind('/') + 1);
  // Bytes a generated token reads: every weight once (a tied output head re-reads the
  // embedding table, which weight_bytes counts once) plus the K and V of the context, on
  // average depth + n_gen / 2 positions long in the tg test, in the cache's format.
  const double kv_bytes =
      static_cast<double>(KvCache::bytes_per_token(l->model->kv_config(16, 16, gc.kv_type))) *
      (o.depth + o.n_gen / 2.0);
  const double bytes_per_token = static_cast<double>(l->model->weight_bytes()) + kv_bytes;
  struct Row {
    std::string test;
    Summary s;
    std::vector<double> runs;
    double gbps;
  };
  std::vector<Row> rows;
  const std::string at = o.depth > 0 ? " @ d" + std::to_string(o.depth) : "";
  if (!pp.empty()) rows.push_back({"pp" + std::to_string(o.n_prompt) + at, summarize(pp), pp, 0.0});
  if (!ppc.empty()) {
    rows.push_back(
        {"pp" + std::to_string(o.n_prompt) + " (first " + std::to_string(o.prefix) + " cached)",
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
      nlohmann::json e = {{"test", r.test},       {"t_s_median", r.s.median},
                          {"t_s_mean", r.s.mean}, {"t_s_stddev", r.s.stddev},
                          {"t_s_min", r.s.min},   {"t_s_max", r.s.max},
                          {"runs", r.runs}};
      if (r.gbps > 0) {
        e["bytes_per_token"] = bytes_per_token;
        e["read_gb_s"] = r.gbps;
      }
      j["results"].push_back(e);
    }
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf(
        "| model | size | weights | threads | isa | attn | kv | test | t/s (median) | "
        "± stddev | min | max | GB/s read |\n");
    std::printf(
        "| --- | ---: | --- | ---: | --- | --- | --- | --- | ---: | ---: | ---: | ---: | "
        "---: |\n");
    for (const Row& r : rows) {
      std::printf(
          "| %s | %.1f MiB | %s | %d | %s | %s | %s | %s | %.2f | %.2f | %.2f | %.2f | %s |\n",
          model_name.c_str(), l->model->weight_bytes() / 1048576.0,
          placement_name(l->model->placement()), o.c.threads, isa_name(cpu_best_isa()),
          o.c.attn.c_str(), o.c.kv_type.c_str(), r.test.c_str(), r.s.median, r.s.stddev, r.s.min,
          r.s.max, r.gbps > 0 ? std::to_string(r.gbps).substr(0, 5).c_str() : "");
    }
  }
  return 0;
}

}  // namespace

std::unique_ptr<Command> make_bench() { return std::make_unique<BenchCommand>(); }

}  // namespace qilin::cli
