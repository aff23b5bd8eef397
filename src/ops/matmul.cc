// Matrix multiplication against a quantized (or F16/BF16/F32) weight: activations are converted
// once to the kernel's vec_dot_type, then each thread takes a range of output rows and, for a
// chunk of rows at a time, walks every token, so a weight chunk stays in cache across tokens.
#include <algorithm>

#include "core/assert.h"
#include "cpu/quants.h"
#include "ops/ops.h"

namespace qilin {
namespace {
constexpr int64_t kRowChunk = 16;  // weight rows kept hot while iterating tokens
}  // namespace

size_t matmul_scratch_bytes(DType weight_type, int64_t n_in, int64_t n_tokens) {
  const MatmulKernels* k = matmul_kernels(weight_type, Isa::Scalar);
  if (!k) return 0;
  return row_bytes(k->vec_dot_type, n_in) * static_cast<size_t>(n_tokens);
}

void matmul(ThreadPool& pool, const WeightView& w, const float* x, int64_t n_tokens, float* y,
            void* scratch) {
  const MatmulKernels* k = matmul_kernels(w.type);
  QILIN_ASSERT(k != nullptr);
  const size_t act_bytes = row_bytes(k->vec_dot_type, w.n_in);
  auto* act = static_cast<uint8_t*>(scratch);
  const int64_t n_in = w.n_in, n_out = w.n_out;

  if (n_tokens == 1) {
    k->quantize_act(x, act, n_in);
  } else {
    pool.run([&](int ith, int nth) {
      int64_t t0, t1;
      split_range(n_tokens, ith, nth, &t0, &t1);
      for (int64_t t = t0; t < t1; ++t) k->quantize_act(x + t * n_in, act + t * act_bytes, n_in);
    });
  }

  pool.run([&](int ith, int nth) {
    int64_t r0, r1;
    split_range(n_out, ith, nth, &r0, &r1);
    for (int64_t rc = r0; rc < r1; rc += kRowChunk) {
      const int64_t rce = std::min(rc + kRowChunk, r1);
      for (int64_t t = 0; t < n_tokens; ++t) {
        const uint8_t* a = act + t * act_bytes;
        float* yt = y + t * n_out;
        for (int64_t r = rc; r < rce; ++r) yt[r] = k->vec_dot(n_in, w.data + r * w.row_bytes, a);
      }
    }
  });
}

}  // namespace qilin
