// Fuzz target: a GGUF file as a model loader sees it. GgufFile::parse on the bytes (every
// metadata value and tensor byte touched), then what loading builds from it: the tokenizer
// (encode / decode), the chat template (recognised and rendered), LlamaModel::load through a
// memfd (hyperparameters and tensor shapes) and, when that succeeds, one forward token, so a
// shape the loader accepts but forward() cannot handle shows up as an ASan report.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "formats/gguf.h"
#include "fuzz_util.h"
#include "model/chat_template.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "ops/kv_cache.h"

using namespace qilin;

namespace {

fuzz::MemFile* g_file = nullptr;
ThreadPool* g_pool = nullptr;

// Folds every value so nothing is optimised away and ASan sees every read.
uint64_t touch(const GgufValue& v) {
  uint64_t f;
  std::memcpy(&f, &v.f, sizeof f);
  uint64_t h = v.u ^ static_cast<uint64_t>(v.i) ^ f;
  for (char c : v.str) h = h * 31 + static_cast<unsigned char>(c);
  for (const GgufValue& e : v.array) h = h * 7 + touch(e);
  return h;
}

void exercise_tokenizer(const Tokenizer& tok, const GgufFile& f) {
  const std::string text =
      "Hello world, the 2024 <|im_start|>user\n caf\xC3\xA9 <tool> [INST] \xF0\x9F\x98\x80 \xFF "
      "end";
  for (bool special : {false, true}) {
    const std::vector<int32_t> ids = tok.encode(text, special, special);
    (void)tok.decode(ids, special);
  }
  // Every token's piece (the vocabulary is bounded by the file size).
  std::vector<int32_t> all;
  for (int32_t id = -1; id <= tok.n_vocab(); ++id) all.push_back(id);
  (void)tok.decode(all, true);
  for (int32_t id = 0; id < tok.n_vocab(); ++id) (void)tok.is_eog(id);

  const GgufValue* src = f.find("tokenizer.chat_template");
  if (!src || src->type != GgufType::STRING) return;
  const std::string eos = tok.eos() >= 0 ? tok.token_text(tok.eos()) : "";
  const std::string bos = tok.bos() >= 0 ? tok.token_text(tok.bos()) : "";
  auto tmpl = ChatTemplate::from_string(src->str, bos, eos);
  if (!tmpl) return;
  const std::vector<ChatMessage> conv = {{"system", "Be brief."},
                                         {"user", " Hi \xC3\xA9 "},
                                         {"assistant", "Hello."},
                                         {"user", "2+2?"}};
  auto r = tmpl->render(conv, true);
  fuzz::note("template", r.status());
  if (r) (void)tok.encode(*r, true, true);
}

void exercise_model(const LlamaModel& m) {
  const LlamaHparams& hp = m.hparams();
  // Keep one input cheap: the KV cache and workspace scale with these, not with the file.
  const int64_t kv_row = static_cast<int64_t>(hp.n_head_kv) * hp.head_dim * hp.n_layer;
  if (kv_row > (1 << 20) || static_cast<int64_t>(hp.n_vocab) * 4 > (64 << 20)) return;
  const KvCacheConfig c = m.kv_config(16, 16, KvType::F32);
  auto kv = KvCache::create(c);
  if (!kv) return;
  Workspace ws = m.make_workspace(2, 2, 16, 1);
  Batch b;
  const int32_t block = 0;
  b.seqs.push_back({&block, 1});
  b.add(0, 0, 0, false);
  b.add(hp.n_vocab - 1, 1, 0, true);
  auto out = m.forward(b, **kv, ws, *g_pool);
  fuzz::note("forward", out.status());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::use_scalar_kernels();
  g_file = new fuzz::MemFile();
  g_pool = new ThreadPool(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f = GgufFile::parse(data, size);
  fuzz::note("parse", f.status());
  if (!f) return 0;
  uint64_t h = 0;
  for (const auto& [key, value] : (*f)->kvs()) h ^= touch(value) + key.size();
  for (const GgufTensorInfo& t : (*f)->tensors()) {
    for (uint64_t i = 0; i < t.size; i += 61) h += t.data[i];
    if (t.size > 0) h += t.data[t.size - 1];
  }
  volatile uint64_t sink = h;
  (void)sink;

  auto tok = Tokenizer::from_gguf(**f);
  fuzz::note("tokenizer", tok.status());
  if (tok) exercise_tokenizer(**tok, **f);

  if (!g_file->assign(data, size)) return 0;
  auto m = LlamaModel::load(g_file->path(), WeightPlacement::Mapped);
  fuzz::note("model", m.status());
  if (m) exercise_model(**m);
  return 0;
}
