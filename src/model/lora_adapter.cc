// LoRA adapters at inference: see lora_adapter.h.
#include "model/lora_adapter.h"

#include <cstdlib>

#include "formats/gguf.h"
#include "model/llama.h"

namespace qilin {

const char* lora_proj_gguf_name(int p) {
  static const char* kNames[kLoraNumProj] = {"attn_q", "attn_k", "attn_v", "attn_output",
                                             "ffn_gate", "ffn_up", "ffn_down"};
  return kNames[p];
}

Result<LoraAdapter> load_lora_adapter(const std::string& path, const LlamaModel& model,
                                      float multiplier) {
  auto f = GgufFile::open(path);
  QILIN_TRY(f);
  const GgufFile& g = **f;
  auto type = g.get_string("general.type");
  if (!type || *type != "adapter") {
    return errorf("lora: %s is not an adapter (general.type is '%s', want 'adapter')",
                  path.c_str(), type ? type->c_str() : "missing");
  }
  auto atype = g.get_string("adapter.type");
  if (!atype || *atype != "lora") {
    return errorf("lora: %s: adapter.type is '%s', want 'lora'", path.c_str(),
                  atype ? atype->c_str() : "missing");
  }
  auto alpha = g.get_float("adapter.lora.alpha");
  QILIN_TRY(alpha);
  const LlamaHparams& hp = model.hparams();
  LoraAdapter ad;
  ad.A.resize(hp.n_layer);
  ad.B.resize(hp.n_layer);
  int found = 0;
  for (int32_t il = 0; il < hp.n_layer; ++il) {
    const LlamaLayer& L = model.layers()[il];
    const WeightView* w[kLoraNumProj] = {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down};
    for (int p = 0; p < kLoraNumProj; ++p) {
      const std::string base = "blk." + std::to_string(il) + "." + lora_proj_gguf_name(p) + ".weight";
      const GgufTensorInfo* a = g.find_tensor(base + ".lora_a");
      const GgufTensorInfo* b = g.find_tensor(base + ".lora_b");
      if (!a && !b) continue;
      if (!a || !b) return errorf("lora: %s: %s has only one of lora_a / lora_b", path.c_str(), base.c_str());
      const int64_t in = w[p]->n_in, out = w[p]->n_out;
      // lora_a: ne = [in, r]; lora_b: ne = [r, out].
      const int64_t r = a->ne[1];
      if (a->ne[0] != in || b->ne[0] != r || b->ne[1] != out || a->n_dims != 2 || b->n_dims != 2) {
        return errorf("lora: %s: %s has shapes [%lld, %lld] and [%lld, %lld]; the model wants "
                      "[%lld, r] and [r, %lld]", path.c_str(), base.c_str(),
                      static_cast<long long>(a->ne[0]), static_cast<long long>(a->ne[1]),
                      static_cast<long long>(b->ne[0]), static_cast<long long>(b->ne[1]),
                      static_cast<long long>(in), static_cast<long long>(out));
      }
      if (ad.rank != 0 && ad.rank != r) {
        return errorf("lora: %s: %s has rank %lld, other tensors %d", path.c_str(), base.c_str(),
                      static_cast<long long>(r), ad.rank);
      }
      ad.rank = static_cast<int32_t>(r);
      for (const GgufTensorInfo* t : {a, b}) {
        auto values = g.read_f32(*t, "a LoRA adapter");
        QILIN_TRY(values);
        (t == a ? ad.A[il][p] : ad.B[il][p]) = std::move(*values);
      }
      ++found;
    }
  }
  if (found == 0) return errorf("lora: %s holds no blk.N.<proj>.weight.lora_a/lora_b tensors", path.c_str());
  ad.scale = static_cast<float>(*alpha) / ad.rank * multiplier;
  return ad;
}

void split_lora_spec(const std::string& spec, std::string* file, float* multiplier) {
  *file = spec;
  *multiplier = 1.0f;
  const size_t colon = spec.rfind(':');
  if (colon == std::string::npos || colon + 1 >= spec.size()) return;
  char* end = nullptr;
  const float v = std::strtof(spec.c_str() + colon + 1, &end);
  if (end && *end == '\0') {
    *file = spec.substr(0, colon);
    *multiplier = v;
  }
}

}  // namespace qilin
