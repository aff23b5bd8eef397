// `qilin perplexity -f TEXT`: perplexity by llama-perplexity's method (windows of -c tokens,
// the second half of each scored); prints the running value per window and the final estimate.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "command.h"
#include "common.h"
#include "engine/perplexity.h"
#include "parallel.h"

namespace qilin::cli {
namespace {

struct PplOpts {
  Common c;
  std::string file;
  int32_t chunks = -1;
  ParallelCli par;
};

class PerplexityCommand final : public Command {
 public:
  const char* name() const override { return "perplexity"; }
  void add(CLI::App& app) override;
  int run() override;

 private:
  PplOpts o_;
};

void PerplexityCommand::add(CLI::App& app) {
  PplOpts& o = o_;
  CLI::App* pp = app.add_subcommand(
      name(), "perplexity of a text, llama-perplexity's method (windows of -c tokens)");
  add_common(pp, o.c);
  pp->get_option("--ctx-size")->default_val(512);
  pp->add_option("-f,--file", o.file, "text file")->required();
  pp->add_option("--chunks", o.chunks, "windows to evaluate (default: all)")
      ->check(CLI::Range(1, 1 << 24));
  add_parallel(pp, o.par);
}

int PerplexityCommand::run() {
  const PplOpts& o = o_;
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
  std::fprintf(stderr,
               "perplexity: tokenized %s: %zu tokens in %.0f ms; windows of %d tokens, "
               "the second half of each scored\n",
               o.file.c_str(), tokens.size(), now_ms() - t0, o.c.ctx);
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

}  // namespace

std::unique_ptr<Command> make_perplexity() { return std::make_unique<PerplexityCommand>(); }

}  // namespace qilin::cli
