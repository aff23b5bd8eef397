// The decode-path F16-weight x F32-activation dot against a double-precision sum, on lengths
// that exercise the 64-wide, 16-wide and masked-tail steps.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/fp16.h"
#include "cpu/dot_mixed.h"

namespace qilin {
namespace {

TEST(DotMixed, F16WeightsF32ActivationsMatchDoubleSum) {
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    const DotF16F32Fn dot = cpu_supports(isa) ? dot_f16_f32_kernel(isa) : nullptr;
    if (!dot) continue;
    std::mt19937 rng(11);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (int64_t n : {1, 15, 16, 17, 63, 64, 65, 100, 576, 1536, 1543}) {
      std::vector<uint16_t> w(n);
      std::vector<float> a(n);
      double want = 0, mag = 0;
      for (int64_t i = 0; i < n; ++i) {
        w[i] = fp32_to_fp16(nd(rng));
        a[i] = nd(rng);
        want += double(fp16_to_fp32(w[i])) * a[i];
        mag += std::fabs(double(fp16_to_fp32(w[i])) * a[i]);
      }
      const float got = dot(n, w.data(), a.data());
      ASSERT_TRUE(std::isfinite(got));
      // Any float summation order is within n * 2^-24 * sum|terms| of the exact sum.
      EXPECT_NEAR(got, want, (n + 1) * std::ldexp(1.0, -24) * mag + 1e-30)
          << isa_name(isa) << " n " << n;
    }
  }
}

// The two-stream rows kernel equals the one-row dot on every row (same products, its own order
// of sums), for odd and even row counts and lengths off the 32- and 16-wide steps.
TEST(DotMixed, F16RowsKernelMatchesRowByRow) {
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    const DotF16F32RowsFn rows_fn = cpu_supports(isa) ? dot_f16_f32_rows_kernel(isa) : nullptr;
    if (!rows_fn) continue;
    std::mt19937 rng(12);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (int64_t n : {1, 15, 16, 17, 31, 32, 33, 576, 1543}) {
      for (int64_t rows : {1, 2, 3, 7, 64}) {
        const int64_t stride = n + 5;  // in halves: rows not packed back to back
        std::vector<uint16_t> w(static_cast<size_t>(rows * stride));
        std::vector<float> a(n), y(rows, -1.0f);
        for (auto& v : w) v = fp32_to_fp16(nd(rng));
        for (auto& v : a) v = nd(rng);
        rows_fn(n, w.data(), stride * sizeof(uint16_t), rows, a.data(), y.data());
        for (int64_t r = 0; r < rows; ++r) {
          double want = 0, mag = 0;
          for (int64_t i = 0; i < n; ++i) {
            const double t = double(fp16_to_fp32(w[r * stride + i])) * a[i];
            want += t;
            mag += std::fabs(t);
          }
          EXPECT_NEAR(y[r], want, (n + 1) * std::ldexp(1.0, -24) * mag + 1e-30)
              << isa_name(isa) << " n " << n << " rows " << rows << " row " << r;
        }
      }
    }
  }
}

}  // namespace
}  // namespace qilin
