// Shared pieces of the qilin subcommands: see common.h.
#include "common.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include <unistd.h>

#include "core/printable.h"
#include "core/thread_pool.h"
#include "model/lora_adapter.h"

namespace qilin::cli {

namespace {
constexpr const char* kDefaultModel = "SmolLM2-135M-Instruct.Q4_1.gguf";
}  // namespace

double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

std::string default_model_path() {
  const char* dir = std::getenv("QILIN_MODELS");
  std::string path = dir && *dir ? dir : QILIN_MODEL_DIR;
  path += '/';
  path += kDefaultModel;
  return path;
}

int fail(const std::string& msg) {
  // Messages quote file and request strings: escape what a terminal would act on.
  std::fprintf(stderr, "qilin: error: %s\n", printable(msg, 0, /*keep_newlines=*/true).c_str());
  return 1;
}

void add_common(CLI::App* app, Common& c) {
  c.threads = ThreadPool::physical_cores();
  app->add_option("-m,--model", c.model,
                  "GGUF model file (default: the fetched SmolLM2-135M-Instruct Q4_1)");
  app->add_option("-t,--threads", c.threads, "worker threads (default: physical cores)")
      ->check(CLI::Range(1, 1024));
  app->add_option("-c,--ctx-size", c.ctx, "context size in tokens")->check(CLI::Range(16, 1 << 20));
  app->add_option("-b,--batch-size", c.batch, "prompt tokens per forward pass")
      ->check(CLI::Range(1, 1 << 16));
  app->add_option("--attn", c.attn,
                  "attention kernel: flash (FlashAttention, default: row-blocked tiles, online "
                  "softmax, split-KV decode, scratch independent of context) or naive (two-pass)")
      ->check(CLI::IsMember({"flash", "naive"}));
  app->add_option("--kv-type", c.kv_type,
                  "KV cache element format: f16 (default), f32, bf16, q8_0 (8-bit blocks of 32) or "
                  "fp8 (E4M3, one scale per head row); attention reads it in place")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0", "fp8"}));
  // Default (neither flag): copy into memory when the weights take at most half of the
  // available memory, else map the file (LlamaModel::load, WeightPlacement::Auto).
  auto* mm = app->add_flag("--mmap", c.mmap,
                           "read the weights through the file mapping (starts at once, shares "
                           "pages between processes; default only for models larger than half "
                           "the available memory)");
  app->add_option("--lora", c.lora,
                  "GGUF LoRA adapter applied unmerged (qilin finetune's adapter.gguf), FILE or "
                  "FILE:SCALE");
  app->add_flag("--no-mmap", c.no_mmap,
                "copy the weights into memory, huge pages where the kernel allows (the default "
                "when they take at most half the available memory: faster generation)")
      ->excludes(mm);
}

WeightPlacement placement_of(const Common& c) {
  return c.mmap ? WeightPlacement::Mapped
                : c.no_mmap ? WeightPlacement::Memory : WeightPlacement::Auto;
}

GeneratorConfig generator_config(const Common& c) {
  GeneratorConfig gc;
  gc.n_ctx = c.ctx;
  gc.n_batch = c.batch;
  gc.n_threads = c.threads;
  gc.flash_attn = c.attn == "flash";
  gc.kv_type = *parse_kv_type(c.kv_type);
  return gc;
}

void add_sampling(CLI::App* app, SamplingParams& s) {
  app->add_option("--temp", s.temperature, "temperature (0 = greedy)");
  app->add_option("--top-k", s.top_k, "top-k (0 = off)");
  app->add_option("--top-p", s.top_p, "top-p (1 = off)");
  app->add_option("--min-p", s.min_p, "min-p (0 = off)");
  app->add_option("--repeat-penalty", s.repeat_penalty, "repetition penalty (1 = off)");
  app->add_option("--repeat-last-n", s.repeat_last_n, "tokens the penalties look back over");
  app->add_option("--frequency-penalty", s.frequency_penalty, "frequency penalty");
  app->add_option("--presence-penalty", s.presence_penalty, "presence penalty");
  app->add_option("-s,--seed", s.seed, "random seed");
}

Result<Loaded> load(std::string path, WeightPlacement placement, const std::string& lora) {
  if (path.empty()) {
    path = default_model_path();
    if (access(path.c_str(), R_OK) != 0) {
      return errorf("the default model %s is not there; fetch it with scripts/fetch_model.sh "
                    "(or pass -m MODEL.gguf)", path.c_str());
    }
  } else if (access(path.c_str(), R_OK) != 0) {
    return errorf("cannot read model file '%s'", path.c_str());
  }
  Loaded l;
  const double t0 = now_ms();
  auto m = LlamaModel::load(path, placement);
  QILIN_TRY(m);
  l.model = std::move(*m);
  auto t = Tokenizer::from_gguf(l.model->gguf());
  QILIN_TRY(t);
  l.tok = std::move(*t);
  if (!lora.empty()) {
    std::string file;
    float scale = 1.0f;
    split_lora_spec(lora, &file, &scale);
    auto ad = load_lora_adapter(file, *l.model, scale);
    QILIN_TRY(ad);
    QILIN_TRY(l.model->set_adapter(std::make_shared<const LoraAdapter>(std::move(*ad))));
  }
  l.load_ms = now_ms() - t0;
  return l;
}

Result<ChatTemplate> model_template(const Loaded& l) {
  const GgufFile& f = l.model->gguf();
  if (!f.find("tokenizer.chat_template")) {
    return errorf("%s has no tokenizer.chat_template", f.path().c_str());
  }
  auto src = f.get_string("tokenizer.chat_template");
  QILIN_TRY(src);
  // The tokenizer adds BOS itself when the file asks for it; the template must not repeat it.
  const std::string eos = l.tok->eos() >= 0 ? l.tok->token_text(l.tok->eos()) : "";
  return ChatTemplate::from_string(*src, "", eos);
}

bool print_text(std::string_view s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
  return true;
}

void print_stats(double load_ms, const GenerateStats& st) {
  std::fprintf(stderr, "\n\nload time: %.1f ms\n", load_ms);
  std::fprintf(stderr, "prompt:    %d tokens in %.1f ms (%.1f tokens/s)\n", st.n_prompt,
               st.prompt_ms, st.n_prompt ? 1000.0 * st.n_prompt / st.prompt_ms : 0.0);
  std::fprintf(stderr, "generate:  %d tokens in %.1f ms (%.1f tokens/s), stop: %s\n",
               st.n_generated, st.gen_ms,
               st.n_generated ? 1000.0 * st.n_generated / st.gen_ms : 0.0,
               st.stop_reason.c_str());
}

}  // namespace qilin::cli
