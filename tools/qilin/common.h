// What the qilin subcommands share: the model, thread and memory options, sampling options,
// loading a model with its tokenizer, the chat template, streamed output, errors. One file per
// subcommand otherwise (run.cc, chat.cc, serve.cc, ...; the interface is command.h).
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>
#include <string_view>

#include "engine/generator.h"
#include "engine/sampler.h"
#include "model/chat_template.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "qilin/status.h"

namespace qilin::cli {

double now_ms();
std::string default_model_path();
int fail(const std::string& msg);  // prints "qilin: error: msg", returns 1

struct Common {
  std::string model;
  int threads = 1;  // set to the physical cores by add_common
  int32_t ctx = 4096;
  int32_t batch = 512;
  bool mmap = false;
  bool no_mmap = false;
  std::string attn = "flash";
  std::string kv_type = "f16";
  std::string lora;  // FILE[:scale], a GGUF LoRA adapter applied unmerged
};
void add_common(CLI::App* app, Common& c);
WeightPlacement placement_of(const Common& c);
// Context, batch, threads, attention kernel and KV type from the common options.
GeneratorConfig generator_config(const Common& c);
void add_sampling(CLI::App* app, SamplingParams& s);

struct Loaded {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tok;
  double load_ms = 0;
};
// The model (default: the fetched SmolLM2) and its tokenizer; errors say how to fix them.
// lora: "" or FILE[:scale], a GGUF LoRA adapter applied at inference (unmerged).
Result<Loaded> load(std::string path, WeightPlacement placement, const std::string& lora = "");
// The GGUF's tokenizer.chat_template, recognised (or a message quoting it).
Result<ChatTemplate> model_template(const Loaded& l);

// Writes generated text to stdout at once (a generate() callback: always true, go on).
bool print_text(std::string_view s);
// Load time, prompt and generation speed and the stop reason, on stderr.
void print_stats(double load_ms, const GenerateStats& st);

}  // namespace qilin::cli
