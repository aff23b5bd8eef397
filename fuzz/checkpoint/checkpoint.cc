// Fuzz target: fine-tuning checkpoint loading (Finetuner::load_checkpoint) for a fixed tiny
// model and data set. Each input gets a fresh Finetuner, the checkpoint file through a memfd (the
// loader takes a path) and, when it loads, the rest of the run (cfg.steps = 3 optimizer steps),
// so a step, cursor or optimizer state that loading accepts must also be usable by training.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "fuzz_util.h"
#include "model/llama.h"
#include "train/finetune.h"

using namespace qilin;

namespace {
fuzz::MemFile* g_model_file = nullptr;
fuzz::MemFile* g_file = nullptr;
LlamaModel* g_model = nullptr;
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::use_scalar_kernels();
  g_model_file = new fuzz::MemFile();
  g_file = new fuzz::MemFile();
  auto m =
      fuzz::load_model_bytes(*g_model_file, fuzz::tiny_llama_gguf(fuzz::checkpoint_base_model()));
  if (!m) {
    std::fprintf(stderr, "fuzz_checkpoint: base model: %s\n", m.status().message().c_str());
    std::abort();
  }
  g_model = m->release();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto ft = train::Finetuner::create(*g_model, fuzz::checkpoint_config(),
                                     fuzz::checkpoint_examples(), {});
  if (!ft) {
    std::fprintf(stderr, "fuzz_checkpoint: %s\n", ft.status().message().c_str());
    std::abort();
  }
  if (!g_file->assign(data, size)) return 0;
  const Status st = (*ft)->load_checkpoint(g_file->path());
  fuzz::note("checkpoint", st);
  if (!st.is_ok()) return 0;
  fuzz::note("run", (*ft)->run(nullptr));
  return 0;
}
