// `qilin merge -m BASE --lora ADAPTER[:SCALE] -o OUT [--type T]`: a base GGUF and a GGUF LoRA
// adapter in, a merged model GGUF out (train/merge.h).
#include <cstdio>
#include <string>

#include "command.h"
#include "common.h"
#include "model/lora_adapter.h"
#include "train/merge.h"

namespace qilin::cli {
namespace {

struct MergeOpts {
  std::string model, lora, out, type;
  int threads = 1;
};

class MergeCommand final : public Command {
 public:
  const char* name() const override { return "merge"; }
  void add(CLI::App& app) override;
  int run() override;

 private:
  MergeOpts o_;
};

void MergeCommand::add(CLI::App& app) {
  MergeOpts& o = o_;
  o.threads = ThreadPool::physical_cores();
  CLI::App* m = app.add_subcommand(name(), "merge a LoRA adapter into its base: a new model GGUF");
  m->add_option("-m,--model", o.model, "base model GGUF (default: the fetched SmolLM2)");
  m->add_option("--lora", o.lora, "the adapter, FILE[:SCALE] (a GGUF LoRA, as qilin finetune writes)")->required();
  m->add_option("-o,--out", o.out, "merged model GGUF (written to a temp file, then renamed)")->required();
  m->add_option("--type", o.type, "type of the merged weights (default: the base's): " + quant_type_names());
  m->add_option("-t,--threads", o.threads, "threads")->check(CLI::Range(1, 1024));
}

int MergeCommand::run() {
  const MergeOpts& o = o_;
  DType type = DType::F32;
  if (!o.type.empty()) {
    auto t = parse_quant_type(o.type);
    if (!t) return fail("--type: " + t.status().message());
    type = *t;
  }
  auto l = load(o.model, WeightPlacement::Mapped);
  if (!l) return fail(l.status().message());
  std::string file;
  float mult = 1.0f;
  split_lora_spec(o.lora, &file, &mult);
  auto ad = load_lora_adapter(file, *l->model, mult);
  if (!ad) return fail(ad.status().message());
  const double t0 = now_ms();
  auto r = train::merge_lora(*l->model, *ad, o.out, type, o.type.empty(), o.threads);
  if (!r) return fail(r.status().message());
  std::fprintf(stderr, "merge: %d weights merged (scale %g), written as %s to %s in %.1f s (%.1f MiB)\n", r->merged,
               ad->scale, dtype_name(r->type), o.out.c_str(), (now_ms() - t0) / 1000.0, r->quant.bytes_out / 1048576.0);
  for (const std::string& n : r->quant.notes) std::fprintf(stderr, "merge: note: %s\n", n.c_str());
  return 0;
}

}  // namespace

std::unique_ptr<Command> make_merge() { return std::make_unique<MergeCommand>(); }

}  // namespace qilin::cli
