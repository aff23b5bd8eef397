// `qilin finetune`: LoRA fine-tuning of a GGUF model on JSONL data (src/train/finetune.h).
// Writes OUT/adapter.gguf (llama.cpp's LoRA format, for `qilin run --lora` and llama.cpp's
// --lora), OUT/peft/ (adapter_config.json and adapter_model.safetensors for PEFT) and
// OUT/checkpoint.gguf (for --resume).
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>

#include <sys/stat.h>

#include "command.h"
#include "common.h"
#include "dist/comm.h"
#include "quant/quantize.h"
#include "train/finetune.h"

namespace qilin::cli {
namespace {

struct FinetuneOpts {
  Common c;
  std::string data, out = "finetune-out";
  int32_t rank = 8;
  float alpha = 16;
  std::string targets = "q,k,v,o,gate,up,down";
  float lr = 2e-4f;
  float weight_decay = 0.0f;
  int64_t steps = 100;
  int32_t grad_accum = 1;
  int64_t warmup = 10;
  int32_t seq_len = 512;
  double val_fraction = 0.1;
  int64_t eval_every = 0;
  int64_t checkpoint_every = 0;
  bool resume = false;
  bool pack = false;
  uint64_t seed = 1;
  std::string precision = "fp32";
  std::string base_type = "f32";
  bool checkpoint_activations = false;
  double optimizer_memory_mb = 0;
  int zero = -1;
  std::string offload_optimizer;
};

// True when a launcher (mpirun / mpiexec) started this process as one rank of a job.
bool under_mpi_launcher() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    if (std::getenv(v)) return true;
  }
  return false;
}

class FinetuneCommand final : public Command {
 public:
  const char* name() const override { return "finetune"; }
  void add(CLI::App& app) override;
  int run() override;

 private:
  FinetuneOpts o_;
};

void FinetuneCommand::add(CLI::App& app) {
  FinetuneOpts& o = o_;
  CLI::App* f = app.add_subcommand(name(), "LoRA fine-tuning on JSONL data (prompt/completion, chat messages or text)");
  add_common(f, o.c);
  f->add_option("--data", o.data, "training data, JSONL")->required();
  f->add_option("-o,--out", o.out, "output folder (adapter.gguf, peft/, checkpoint.gguf)");
  f->add_option("--lora-r", o.rank, "LoRA rank")->check(CLI::Range(1, 256));
  f->add_option("--lora-alpha", o.alpha, "LoRA alpha (scale = alpha / rank)");
  f->add_option("--lora-targets", o.targets, "adapted projections, comma-separated from q,k,v,o,gate,up,down");
  f->add_option("--lr", o.lr, "peak learning rate");
  f->add_option("--weight-decay", o.weight_decay, "AdamW weight decay");
  f->add_option("--steps", o.steps, "optimizer steps")->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  f->add_option("--grad-accum", o.grad_accum, "examples per optimizer step")->check(CLI::Range(1, 1 << 20));
  f->add_option("--warmup", o.warmup, "warmup steps (then cosine decay to lr/10)");
  f->add_option("--seq-len", o.seq_len, "tokens per training sequence at most")->check(CLI::Range(8, 1 << 16));
  f->add_option("--val-fraction", o.val_fraction, "held-out fraction of the examples")->check(CLI::Range(0.0, 0.9));
  f->add_option("--eval-every", o.eval_every, "evaluate the held-out split every N steps (0: at the end)");
  f->add_option("--checkpoint-every", o.checkpoint_every, "save OUT/checkpoint.gguf every N steps");
  f->add_flag("--resume", o.resume, "continue from OUT/checkpoint.gguf");
  f->add_flag("--pack", o.pack, "pack several examples into each sequence");
  f->add_option("--seed", o.seed, "seed for LoRA init, the split and the data order");
  f->add_option("--precision", o.precision,
                 "compute precision: fp32, bf16, or fp16 (with dynamic loss scaling); LoRA master weights, "
                 "loss and optimizer stay FP32")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  f->add_option("--base-type", o.base_type,
                "the frozen base in memory: f32 (dequantized), keep (quantized as the file has it), or a "
                "type to requantize it to at start (nf4-dq for QLoRA, nf4, q4_0, q4_1, q8_0, ...)");
  f->add_flag("--checkpoint-activations", o.checkpoint_activations,
              "keep only each block's input; recompute the block in backward");
  f->add_option("--optimizer-memory-mb", o.optimizer_memory_mb,
                "resident AdamW states at most (MiB; 0: no limit); the rest paged to a file in $TMPDIR")
      ->check(CLI::Range(0.0, 1e9));
  f->add_option("--zero", o.zero,
                "data-parallel ZeRO stage 0-3 over the mpirun ranks (each takes --grad-accum / ranks "
                "examples of every step): 0 all-reduces gradients, 1 shards optimizer states, 2 also "
                "gradients, 3 also the LoRA parameters");
  f->add_option("--offload-optimizer", o.offload_optimizer,
                "with --zero: keep the FP32 master weights, AdamW states and the update on the host (cpu)");
}

int FinetuneCommand::run() {
  const FinetuneOpts& o = o_;
  using namespace qilin::train;
  FinetuneConfig fc;
  fc.lora.rank = o.rank;
  fc.lora.alpha = o.alpha;
  fc.lora.targets.fill(false);
  {
    const char* names[kNumProj] = {"q", "k", "v", "o", "gate", "up", "down"};
    std::stringstream ss(o.targets);
    std::string t;
    while (std::getline(ss, t, ',')) {
      int found = -1;
      for (int p = 0; p < kNumProj; ++p) found = t == names[p] ? p : found;
      if (found < 0) return fail("--lora-targets: unknown projection '" + t + "' (q,k,v,o,gate,up,down)");
      fc.lora.targets[found] = true;
    }
  }
  fc.adam.lr = o.lr;
  fc.adam.weight_decay = o.weight_decay;
  fc.steps = o.steps;
  fc.grad_accum = o.grad_accum;
  fc.warmup = o.warmup;
  fc.eval_every = o.eval_every;
  fc.checkpoint_every = o.checkpoint_every;
  fc.seed = o.seed;
  fc.n_threads = o.c.threads;
  if (!parse_precision(o.precision, &fc.precision)) return fail("--precision: want fp32, bf16 or fp16, got '" + o.precision + "'");
  if (o.base_type != "f32") {
    fc.quantized_base = true;
    if (o.base_type != "keep") {
      auto t = parse_quant_type(o.base_type);
      if (!t) return fail("--base-type: " + t.status().message());
      if (*t == DType::F32) return fail("--base-type: f32 is the dense base; give keep or a quantized type");
      fc.base_type = *t;
    }
  }
  fc.checkpoint_activations = o.checkpoint_activations;
  fc.optimizer_memory_bytes = static_cast<size_t>(o.optimizer_memory_mb * 1024 * 1024);
  if (const char* tmp = std::getenv("TMPDIR")) fc.optimizer_swap_dir = tmp;
  // Data parallelism: every rank runs this whole function; rank 0 prints and writes the files.
  std::unique_ptr<Communicator> world;
  if (o.zero != -1 || !o.offload_optimizer.empty()) {
    if (o.zero == -1) return fail("--offload-optimizer needs --zero (a ZeRO stage, 0-3)");
    if (o.zero < 0 || o.zero > 3) return fail("--zero: the stage must be 0, 1, 2 or 3, got " + std::to_string(o.zero));
    if (!o.offload_optimizer.empty() && o.offload_optimizer != "cpu") {
      return fail("--offload-optimizer: the only target is cpu, got '" + o.offload_optimizer + "'");
    }
    if (o.resume || o.checkpoint_every > 0) return fail("--resume and --checkpoint-every do not combine with --zero yet");
    if (under_mpi_launcher()) {
      auto w = mpi_world();
      if (!w) return fail(w.status().message());
      world = std::move(*w);
    }
    fc.zero_stage = o.zero;
    fc.offload_optimizer = o.offload_optimizer == "cpu";
    fc.comm = world.get();
  }
  const int rank = world ? world->rank() : 0, n_ranks = world ? world->size() : 1;
  // A rank that fails ends the job: the others may be waiting for it inside a collective.
  auto fail_all = [&](const std::string& msg) -> int {
    if (world && n_ranks > 1) {
      fail("rank " + std::to_string(rank) + ": " + msg);
      world->abort(1);
    }
    return fail(msg);
  };
  if (rank == 0 && mkdir(o.out.c_str(), 0755) != 0 && errno != EEXIST) return fail_all("cannot create " + o.out);
  fc.checkpoint_path = o.out + "/checkpoint.gguf";

  auto l = load(o.c.model, placement_of(o.c));
  if (!l) return fail_all(l.status().message());
  auto tmpl = model_template(*l);
  auto ex = load_jsonl(o.data, *l->tok, tmpl ? &*tmpl : nullptr, o.seq_len);
  if (!ex) return fail_all(ex.status().message());
  // Seeded split, then packing within each side.
  std::vector<Example> all = std::move(*ex), train, eval;
  std::mt19937_64 rng(o.seed);
  std::shuffle(all.begin(), all.end(), rng);
  const size_t n_eval = static_cast<size_t>(all.size() * o.val_fraction);
  eval.assign(all.begin(), all.begin() + n_eval);
  train.assign(all.begin() + n_eval, all.end());
  if (o.pack) {
    train = pack(train, o.seq_len);
    eval = pack(eval, o.seq_len);
  }
  if (rank == 0) {
    std::fprintf(stderr, "finetune: %zu training and %zu held-out sequences from %s; LoRA r=%d alpha=%g on %s\n",
                 train.size(), eval.size(), o.data.c_str(), o.rank, o.alpha, o.targets.c_str());
  }
  auto ft = Finetuner::create(*l->model, fc, std::move(train), std::move(eval));
  if (!ft) return fail_all(ft.status().message());
  Finetuner& f = **ft;
  const std::string model_path = l->model->gguf().path();
  // Training holds its own copy of the base unless --base-type keep: the loaded file can go.
  if (!f.uses_model_weights()) l->model.reset();
  const PagedAdamW::Stats os = f.optimizer_stats();
  if (const ZeroOptimizer* z = f.zero()) {
    // Every rank: what it holds, against ZeRO's formulas.
    const ZeroMemory m = z->memory();
    char host[80] = "";
    if (m.host_grads) std::snprintf(host, sizeof host, ", host gradient staging %.3f MiB", m.host_grads / 1048576.0);
    const ZeroFormula want = zero_formula(o.zero, fc.precision, fc.offload_optimizer, static_cast<double>(z->n_params()), n_ranks);
    std::fprintf(stderr,
                 "rank %d/%d: ZeRO stage %d%s, %s, %lld trainable parameters: params %.3f MiB, grads %.3f MiB, "
                 "optimizer states %.3f MiB%s (formula %.3f + %.3f + %.3f MiB); working buffers %.3f MiB%s\n",
                 rank, n_ranks, o.zero, fc.offload_optimizer ? " + optimizer offload" : "", o.precision.c_str(),
                 static_cast<long long>(z->n_params()), m.params / 1048576.0, m.grads / 1048576.0,
                 m.optimizer / 1048576.0, m.optimizer_on_host ? " on the host" : "", want.params / 1048576.0,
                 want.grads / 1048576.0, want.optimizer / 1048576.0, m.working / 1048576.0, host);
  } else {
    std::fprintf(stderr, "finetune: base %s in %.1f MiB, compute %s%s; AdamW states %.1f MiB, %.1f MiB resident\n",
               o.base_type.c_str(), f.base_bytes() / 1048576.0, o.precision.c_str(),
               o.checkpoint_activations ? ", activation checkpointing" : "", os.state_bytes / 1048576.0,
               os.resident_bytes / 1048576.0);
  }
  if (o.resume) {
    if (Status s = f.load_checkpoint(fc.checkpoint_path); !s) return fail(s.message());
    std::fprintf(stderr, "finetune: resumed at step %lld\n", static_cast<long long>(f.step()));
  } else {
    const float e0 = f.evaluate();
    if (e0 >= 0 && rank == 0) std::fprintf(stderr, "finetune: held-out loss before training %.4f (ppl %.2f)\n", e0, std::exp(e0));
  }
  double elapsed = 0, comm_bytes = 0;
  int64_t done = 0;
  Status st = f.run([&](const StepLog& s) {
    elapsed += s.seconds;
    comm_bytes += s.comm_bytes;
    ++done;
    if (rank != 0) return;
    const double eta = elapsed / done * static_cast<double>(o.steps - s.step);
    char scale[64] = "";
    if (fc.precision == Precision::F16) std::snprintf(scale, sizeof scale, "  scale %g", s.loss_scale);
    char comm[64] = "";
    if (n_ranks > 1) std::snprintf(comm, sizeof comm, "  %.1f KiB sent", s.comm_bytes / 1024);
    std::fprintf(stderr, "step %lld/%lld  loss %.4f  lr %.2e  |g| %.3f  %.0f tok/s%s%s  ETA %.0f s%s%s",
                 static_cast<long long>(s.step), static_cast<long long>(o.steps), s.loss, s.lr,
                 s.grad_norm, s.tokens / std::max(s.seconds, 1e-9), scale, comm, eta,
                 s.skipped ? "  SKIPPED (gradient overflow: inf/NaN)" : "", s.eval_loss >= 0 ? "" : "\n");
    if (s.eval_loss >= 0) std::fprintf(stderr, "  held-out loss %.4f (ppl %.2f)\n", s.eval_loss, std::exp(s.eval_loss));
  });
  if (!st) return fail_all(st.message());
  if (const ZeroOptimizer* z = f.zero()) {
    const CommStats& c = z->step_comm();
    std::fprintf(stderr,
                 "rank %d/%d: last step's payload bytes: all_reduce %llu reduce_scatter %llu all_gather %llu; "
                 "ring bytes sent %.0f per step (mean over %lld steps)\n",
                 rank, n_ranks, static_cast<unsigned long long>(c.all_reduce),
                 static_cast<unsigned long long>(c.reduce_scatter), static_cast<unsigned long long>(c.all_gather),
                 done ? comm_bytes / done : 0.0, static_cast<long long>(done));
    if (rank != 0) return 0;
    if (Status s = f.save_gguf_adapter(o.out + "/adapter.gguf"); !s) return fail_all(s.message());
    if (Status s = f.save_peft(o.out + "/peft", model_path.substr(model_path.rfind('/') + 1)); !s) return fail_all(s.message());
    std::fprintf(stderr, "finetune: wrote %s/adapter.gguf, %s/peft/\n", o.out.c_str(), o.out.c_str());
    return 0;
  }
  if (Status s = f.save_checkpoint(fc.checkpoint_path); !s) return fail(s.message());
  if (Status s = f.save_gguf_adapter(o.out + "/adapter.gguf"); !s) return fail(s.message());
  if (Status s = f.save_peft(o.out + "/peft", model_path.substr(model_path.rfind('/') + 1)); !s) return fail(s.message());
  std::fprintf(stderr, "finetune: wrote %s/adapter.gguf, %s/peft/, %s\n", o.out.c_str(), o.out.c_str(),
               fc.checkpoint_path.c_str());
  return 0;
}

}  // namespace

std::unique_ptr<Command> make_finetune() { return std::make_unique<FinetuneCommand>(); }

}  // namespace qilin::cli
