// Matrix multiplication against a quantized (or F16/BF16/F32) weight: activations are converted
// once to the kernel's vec_dot_type, then each thread takes a range of output rows and, for a
// chunk of rows at a time, walks every token, so a weight chunk stays in cache across tokens.
// Several tokens go through the tiled gemm kernel when the ISA has one (cpu/gemm.h); one token
// (generation) through vec_dot, which streams each weight row exactly once.
#include <algorithm>

#include "core/assert.h"
#include "cpu/gemm.h"
#include "cpu/quants.h"
#include "ops/ops.h"

namespace qilin {
namespace {
constexpr int64_t kRowChunk = 16;  // weight rows kept hot while iterating tokens (vec_dot path)
// gemm path: a 64-row weight chunk (23 KB of Q4_1 at n = 576) stays in L1/L2 while every
// token tile of 64 activation rows streams past it.
constexpr int64_t kGemmRows = 64;
constexpr int64_t kGemmTokens = 64;
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

  const GemmFn gemm = n_tokens > 1 ? gemm_kernel(w.type) : nullptr;
  if (gemm) {
    pool.run([&](int ith, int nth) {
      int64_t r0, r1;
      split_range(n_out, ith, nth, &r0, &r1);
      for (int64_t rc = r0; rc < r1; rc += kGemmRows) {
        const int64_t nr = std::min(kGemmRows, r1 - rc);
        for (int64_t t0 = 0; t0 < n_tokens; t0 += kGemmTokens) {
          const int64_t nt = std::min(kGemmTokens, n_tokens - t0);
          gemm(n_in, w.data + rc * w.row_bytes, w.row_bytes, nr, act + t0 * act_bytes, act_bytes,
               nt, y + t0 * n_out + rc, n_out);
        }
      }
    });
    return;
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
