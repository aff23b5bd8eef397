// `qilin run`: one prompt (or a prompt file, or one chat turn with --chat) in, the generated
// text streamed to stdout and the timings to stderr; --beam N runs beam search instead.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "command.h"
#include "common.h"
#include "engine/beam_search.h"
#include "engine/generator.h"
#include "engine/sampler.h"
#include "parallel.h"

namespace qilin::cli {
namespace {

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
  std::fprintf(stderr,
               "\n\nload time: %.1f ms\nbeam search: %d beams, %d steps in %.1f ms; KV "
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

class RunCommand final : public Command {
 public:
  const char* name() const override { return "run"; }
  void add(CLI::App& app) override;
  int run() override;

 private:
  RunOpts o_;
};

void RunCommand::add(CLI::App& app) {
  RunOpts& o = o_;
  CLI::App* r = app.add_subcommand(name(), "generate text from a prompt, streamed");
  add_common(r, o.c);
  add_sampling(r, o.s);
  r->add_option("-p,--prompt", o.prompt, "prompt text");
  r->add_option("-f,--file", o.prompt_file, "read the prompt from a file");
  r->add_option("-n,--n-predict", o.n_predict, "tokens to generate (-1 = until EOS)")
      ->check(CLI::Range(-1, 1 << 24));
  r->add_option("--stop", o.stop, "stop string (repeatable)");
  r->add_flag("--chat", o.chat, "wrap the prompt in the model's chat template as a user turn");
  r->add_flag("--ignore-eos", o.ignore_eos, "keep generating past end-of-generation tokens");
  r->add_option("--beam", o.beams,
                "beam search with N beams sharing the paged KV cache (sampling flags unused)")
      ->check(CLI::Range(1, 64));
  add_parallel(r, o.par);
  r->add_option("--length-penalty", o.length_penalty,
                "beam score = log-probability / length^penalty (default 1)");
}

int RunCommand::run() {
  RunOpts& o = o_;
  if (o.prompt.empty() && o.prompt_file.empty()) return fail("run: give a prompt with -p or -f");
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
  auto gen = Generator::create(*l->model, generator_config(o.c));
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

}  // namespace

std::unique_ptr<Command> make_run() { return std::make_unique<RunCommand>(); }

}  // namespace qilin::cli
