// merge_lora: see merge.h.
#include "train/merge.h"

#include <map>
#include <vector>

#include "core/thread_pool.h"

namespace qilin::train {

Result<MergeReport> merge_lora(const LlamaModel& base, const LoraAdapter& adapter, const std::string& out, DType type,
                               bool keep_type, int n_threads) {
  const GgufFile& in = base.gguf();
  MergeReport rep;
  rep.type = type;
  if (keep_type) {
    const GgufTensorInfo* q = in.find_tensor("blk.0.attn_q.weight");
    if (!q) return errorf("merge: %s has no blk.0.attn_q.weight to take the type from", in.path().c_str());
    rep.type = q->type;
  }
  ThreadPool pool(std::max(n_threads, 1));
  std::map<std::string, std::vector<float>> merged;
  const int64_t r = adapter.rank;
  for (size_t l = 0; l < adapter.A.size(); ++l) {
    for (int p = 0; p < kLoraNumProj; ++p) {
      const std::vector<float>& A = adapter.A[l][p];  // [r, in]
      const std::vector<float>& B = adapter.B[l][p];  // [out, r]
      if (A.empty()) continue;
      const std::string name = "blk." + std::to_string(l) + "." + lora_proj_gguf_name(p) + ".weight";
      const GgufTensorInfo* t = in.find_tensor(name);
      if (!t) return errorf("merge: %s has no tensor %s that the adapter adapts", in.path().c_str(), name.c_str());
      auto w = in.read_f32(*t, "qilin merge");
      QILIN_TRY(w);
      const int64_t n_in = t->ne[0], n_out = t->n_elements() / n_in;
      if (static_cast<int64_t>(A.size()) != r * n_in || static_cast<int64_t>(B.size()) != n_out * r) {
        return errorf("merge: the adapter's %s does not fit its %lld x %lld weight", name.c_str(),
                      static_cast<long long>(n_out), static_cast<long long>(n_in));
      }
      float* W = w->data();
      pool.run([&](int ith, int nth) {
        int64_t o0, o1;
        split_range(n_out, ith, nth, &o0, &o1);
        for (int64_t o = o0; o < o1; ++o) {
          for (int64_t k = 0; k < r; ++k) {
            const float b = adapter.scale * B[o * r + k];
            const float* a = A.data() + k * n_in;
            for (int64_t i = 0; i < n_in; ++i) W[o * n_in + i] += b * a[i];
          }
        }
      });
      merged.emplace(name, std::move(*w));
      ++rep.merged;
    }
  }
  QuantizeOptions qo;
  qo.target = rep.type;
  qo.n_threads = n_threads;
  qo.replace = &merged;
  auto q = quantize_gguf(in, out, qo);
  QILIN_TRY(q);
  rep.quant = std::move(*q);
  return rep;
}

}  // namespace qilin::train
