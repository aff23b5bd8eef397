// Fuzz target: LoRA adapter loading (load_lora_adapter) against a fixed tiny model (2 layers,
// n_embd 32, so Q8_0/Q4_0 rows fit). The input is the adapter file (through a memfd, as the
// loader takes a path). An adapter that loads is applied and one token run through forward(),
// so shapes the loader accepts must also be shapes the unmerged LoRA path can multiply.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "core/thread_pool.h"
#include "fuzz_util.h"
#include "model/llama.h"
#include "model/lora_adapter.h"
#include "ops/kv_cache.h"

using namespace qilin;

namespace {
fuzz::MemFile* g_model_file = nullptr;
fuzz::MemFile* g_file = nullptr;
LlamaModel* g_model = nullptr;
ThreadPool* g_pool = nullptr;
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::use_scalar_kernels();
  g_model_file = new fuzz::MemFile();
  g_file = new fuzz::MemFile();
  g_pool = new ThreadPool(1);
  auto m = fuzz::load_model_bytes(*g_model_file, fuzz::tiny_llama_gguf(fuzz::lora_base_model()));
  if (!m) {
    std::fprintf(stderr, "fuzz_lora: base model: %s\n", m.status().message().c_str());
    std::abort();
  }
  g_model = m->release();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!g_file->assign(data, size)) return 0;
  auto ad = load_lora_adapter(g_file->path(), *g_model, 0.5f);
  fuzz::note("adapter", ad.status());
  if (!ad) return 0;
  if (!g_model->set_adapter(std::make_shared<const LoraAdapter>(std::move(*ad))).is_ok()) return 0;
  auto kv = KvCache::create(g_model->kv_config(16, 16, KvType::F32));
  if (kv) {
    Workspace ws = g_model->make_workspace(1, 1, 16, 1);
    Batch b;
    const int32_t block = 0;
    b.seqs.push_back({&block, 1});
    b.add(3, 0, 0, true);
    fuzz::note("forward", g_model->forward(b, **kv, ws, *g_pool).status());
  }
  (void)g_model->set_adapter(nullptr);
  return 0;
}
