// Matrix multiplication against a quantized (or F16/BF16/F32) weight: activations are converted
// once to the kernel's vec_dot_type, then each thread takes a range of output rows and, for a
// chunk of rows at a time, walks every token, so a weight chunk stays in cache across tokens.
// Several tokens go through the tiled gemm kernel when the ISA has one (cpu/gemm.h); one token
// (generation) through the gemv kernel (cpu/gemv.h), which streams each weight row exactly once
// and prepares the activation once per call; vec_dot per pair is the fallback for both.
#include <algorithm>

#include "core/assert.h"
#include "cpu/gemm.h"
#include "cpu/dot_mixed.h"
#include "cpu/gemv.h"
#include "cpu/quants.h"
#include "ops/ops.h"

namespace qilin {
namespace {
constexpr int64_t kRowChunk = 16;  // weight rows kept hot while iterating tokens (vec_dot path)
}  // namespace

size_t matmul_scratch_bytes(DType weight_type, int64_t n_in, int64_t n_tokens) {
  const MatmulKernels* k = matmul_kernels(weight_type, Isa::Scalar);
  if (!k) return 0;
  return row_bytes(k->vec_dot_type, n_in) * static_cast<size_t>(n_tokens);
}

bool matmul_can_group(const WeightView* w, int n_w) {
  for (int i = 1; i < n_w; ++i) {
    if (w[i].type != w[0].type || w[i].n_in != w[0].n_in) return false;
  }
  return true;
}

void matmul_group(ThreadPool& pool, const WeightView* w, int n_w, const float* x,
                  int64_t n_tokens, float* const* y, void* scratch) {
  QILIN_ASSERT(n_w >= 1 && n_w <= kMaxGroup && matmul_can_group(w, n_w));
  const MatmulKernels* k = matmul_kernels(w[0].type);
  QILIN_ASSERT(k != nullptr);
  const int64_t n_in = w[0].n_in;
  const size_t act_bytes = row_bytes(k->vec_dot_type, n_in);
  auto* act = static_cast<uint8_t*>(scratch);

  // F16 weights for one token: rows dot the F32 activation directly (cpu/dot_mixed.h).
  const DotF16F32RowsFn f16dot = n_tokens == 1 && w[0].type == DType::F16
                                     ? dot_f16_f32_rows_kernel(cpu_best_isa())
                                     : nullptr;

  // Activations are converted once for every weight of the group.
  if (f16dot) {
    // nothing to convert
  } else if (n_tokens == 1) {
    k->quantize_act(x, act, n_in);  // too small to be worth waking the workers
  } else {
    pool.run([&](int ith, int nth) {
      int64_t t0, t1;
      split_range(n_tokens, ith, nth, &t0, &t1);
      for (int64_t t = t0; t < t1; ++t) k->quantize_act(x + t * n_in, act + t * act_bytes, n_in);
    });
  }

  // The group's rows, concatenated, are split evenly between threads: one wake-up for all.
  int64_t total = 0;
  for (int i = 0; i < n_w; ++i) total += w[i].n_out;
  const GemmFn gemm = n_tokens > 1 ? gemm_kernel(w[0].type) : nullptr;
  // Float weights stay on vec_dot for now: their gemv measured ~10% slower end to end (F16,
  // SmolLM2-135M, 1 and 2 threads) although faster in isolation; quantized gemvs are 1.2-1.4x.
  const bool quant = w[0].type == DType::Q4_0 || w[0].type == DType::Q4_1 ||
                     w[0].type == DType::Q8_0;
  const GemvFn gemv = n_tokens == 1 && quant ? gemv_kernel(w[0].type) : nullptr;
  pool.run([&](int ith, int nth) {
    int64_t g0, g1;
    split_range(total, ith, nth, &g0, &g1);
    if (gemv) {
      // Whole groups of 4 rows per thread where possible: the gemv runs 4 rows at a time.
      g0 = std::min(total, (g0 + 3) / 4 * 4);
      g1 = ith == nth - 1 ? total : std::min(total, (g1 + 3) / 4 * 4);
    }
    int64_t base = 0;
    for (int i = 0; i < n_w; base += w[i].n_out, ++i) {
      const int64_t r0 = std::max(g0 - base, int64_t{0});
      const int64_t r1 = std::min(g1 - base, w[i].n_out);
      if (r0 >= r1) continue;
      const WeightView& wi = w[i];
      float* yi = y[i];
      const int64_t n_out = wi.n_out;
      if (gemv) {
        gemv(n_in, wi.data + r0 * wi.row_bytes, wi.row_bytes, r1 - r0, act, yi + r0);
        continue;
      }
      if (f16dot) {
        f16dot(n_in, wi.data + r0 * wi.row_bytes, wi.row_bytes, r1 - r0, x, yi + r0);
        continue;
      }
      if (gemm) {
        // One call for the thread's whole row range and every token: the kernels tile for the
        // cache themselves and repack each weight block once per call.
        gemm(n_in, wi.data + r0 * wi.row_bytes, wi.row_bytes, r1 - r0, act, act_bytes, n_tokens,
             yi + r0, n_out);
        continue;
      }
      for (int64_t rc = r0; rc < r1; rc += kRowChunk) {
        const int64_t rce = std::min(rc + kRowChunk, r1);
        for (int64_t t = 0; t < n_tokens; ++t) {
          const uint8_t* a = act + t * act_bytes;
          float* yt = yi + t * n_out;
          for (int64_t r = rc; r < rce; ++r) yt[r] = k->vec_dot(n_in, wi.data + r * wi.row_bytes, a);
        }
      }
    }
  });
}

void matmul(ThreadPool& pool, const WeightView& w, const float* x, int64_t n_tokens, float* y,
            void* scratch) {
  matmul_group(pool, &w, 1, x, n_tokens, &y, scratch);
}

}  // namespace qilin
