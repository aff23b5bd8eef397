// `qilin chat`: a multi-turn conversation on stdin/stdout, rendered with the model's chat
// template; each turn reuses the KV cache of the prefix it shares with the previous one.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <unistd.h>

#include "command.h"
#include "common.h"
#include "engine/generator.h"
#include "engine/sampler.h"

namespace qilin::cli {
namespace {

struct ChatOpts {
  Common c;
  SamplingParams s;
  std::string system;
  int32_t n_predict = 512;
};

class ChatCommand final : public Command {
 public:
  const char* name() const override { return "chat"; }
  void add(CLI::App& app) override;
  int run() override;

 private:
  ChatOpts o_;
};

void ChatCommand::add(CLI::App& app) {
  ChatOpts& o = o_;
  CLI::App* c =
      app.add_subcommand(name(), "multi-turn conversation using the model's chat template");
  add_common(c, o.c);
  add_sampling(c, o.s);
  c->add_option("--system", o.system, "system message");
  c->add_option("-n,--n-predict", o.n_predict, "maximum tokens per reply")
      ->check(CLI::Range(1, 1 << 24));
}

int ChatCommand::run() {
  const ChatOpts& o = o_;
  if (Status st = o.s.validate(); !st) return fail(st.message());
  auto l = load(o.c.model, placement_of(o.c), o.c.lora);
  if (!l) return fail(l.status().message());
  auto tmpl = model_template(*l);
  if (!tmpl) return fail(tmpl.status().message());
  auto gen = Generator::create(*l->model, generator_config(o.c));
  if (!gen) return fail(gen.status().message());
  Generator& g = **gen;
  Sampler sampler(o.s, l->model->hparams().n_vocab);
  std::vector<ChatMessage> msgs;
  if (!o.system.empty()) msgs.push_back({"system", o.system});
  const bool tty = isatty(STDIN_FILENO);
  std::fprintf(stderr,
               "qilin chat: model loaded in %.0f ms. Type a message; an empty line or "
               "end of input quits.\n",
               l->load_ms);
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

}  // namespace

std::unique_ptr<Command> make_chat() { return std::make_unique<ChatCommand>(); }

}  // namespace qilin::cli
