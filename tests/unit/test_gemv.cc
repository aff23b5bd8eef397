// gemv kernels (one activation row x many weight rows) against vec_dot per row, on every weight
// type and every ISA this CPU can run: random data over row lengths with block-group tails and
// chunk boundaries, row counts around the 4-row step, strides with junk padding; an exact test
// on small integers; NaN propagation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "cpu/gemv.h"
#include "cpu/quants.h"

namespace qilin {
namespace {

constexpr DType kTypes[] = {DType::Q4_0, DType::Q4_1, DType::Q8_0,
                            DType::F16,  DType::BF16, DType::F32};
constexpr Isa kIsas[] = {Isa::Avx2, Isa::Avx512};
constexpr int64_t kNs[] = {32, 64, 96, 576, 1536, 1568, 4096, 4128 + 64 * 32};
constexpr int64_t kRowCounts[] = {1, 2, 3, 4, 5, 7, 17, 64, 100};
constexpr size_t kJunk = 64;  // bytes of 0xff after every weight row

std::string label(DType t, Isa isa, int64_t n, int64_t rows) {
  return std::string(dtype_name(t)) + "/" + isa_name(isa) + " n=" + std::to_string(n) +
         " rows=" + std::to_string(rows);
}

struct Case {
  std::vector<uint8_t> w, a;
  size_t stride = 0;
};

// Random weights quantized with the reference, each row followed by junk; the activation
// converted with the ISA's own converter, as matmul does.
Case make_case(const MatmulKernels& k, int64_t n, int64_t rows, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Case c;
  c.stride = row_bytes(k.weight, n) + kJunk;
  c.w.assign(c.stride * rows, 0xff);
  std::vector<float> f(n);
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& v : f) v = dist(rng);
    quantize_row_ref(k.weight, f.data(), c.w.data() + r * c.stride, n);
  }
  for (auto& v : f) v = dist(rng);
  c.a.resize(row_bytes(k.vec_dot_type, n));
  k.quantize_act(f.data(), c.a.data(), n);
  return c;
}

// sum |w_j * a_j| per row (plus |m * s| per block for Q4_1) from the dequantized operands: the
// scale of the rounding error of any summation order.
double abs_terms(DType wt, DType at, const uint8_t* w, const uint8_t* a, int64_t n) {
  std::vector<float> wf(n), af(n);
  dequantize_row_ref(wt, w, wf.data(), n);
  dequantize_row_ref(at, a, af.data(), n);
  double s = 0;
  for (int64_t j = 0; j < n; ++j) s += std::fabs(static_cast<double>(wf[j]) * af[j]);
  return s;
}

TEST(Gemv, MatchesVecDotPerRow) {
  std::mt19937 rng(1234);
  int tested = 0;
  for (Isa isa : kIsas) {
    if (!cpu_supports(isa)) continue;
    for (DType t : kTypes) {
      const GemvFn gemv = gemv_kernel(t, isa);
      ASSERT_NE(gemv, nullptr) << dtype_name(t) << "/" << isa_name(isa);
      const MatmulKernels& k = *matmul_kernels(t, isa);
      const MatmulKernels& ref = *matmul_kernels(t, Isa::Scalar);
      for (int64_t n : kNs) {
        for (int64_t rows : kRowCounts) {
          const Case c = make_case(k, n, rows, rng);
          std::vector<float> y(rows + 1, -7.0f);
          gemv(n, c.w.data(), c.stride, rows, c.a.data(), y.data());
          ASSERT_EQ(y[rows], -7.0f) << "wrote past n_rows " << label(t, isa, n, rows);
          for (int64_t r = 0; r < rows; ++r) {
            const uint8_t* wr = c.w.data() + r * c.stride;
            const float want = ref.vec_dot(n, wr, c.a.data());
            // Both sides are sums of the same n + n/32 exact-ish terms in different orders
            // (block products are exact integers times one f32 scale product), so each side is
            // within (terms + 1) * 2^-24 * sum|terms| of the exact sum; twice that between them.
            // Q4_1's minimum terms m * s are bounded by sum|w * a| as well up to the scales.
            const double terms = static_cast<double>(n) + n / 32 + 1;
            double mag = abs_terms(t, k.vec_dot_type, wr, c.a.data(), n);
            if (t == DType::Q4_1) mag *= 2;
            const double tol = 2 * terms * std::ldexp(1.0, -24) * mag + 1e-30;
            ASSERT_TRUE(std::isfinite(y[r])) << label(t, isa, n, rows) << " row " << r;
            ASSERT_LE(std::fabs(static_cast<double>(y[r]) - want), tol)
                << label(t, isa, n, rows) << " row " << r << " got " << y[r] << " want " << want;
          }
          ++tested;
        }
      }
    }
  }
  if (tested == 0) GTEST_SKIP() << "no SIMD ISA on this CPU";
}

// Small integers in every format are exact in every summation order: results must be equal.
TEST(Gemv, ExactOnSmallIntegers) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> q(-7, 7);
  for (Isa isa : kIsas) {
    if (!cpu_supports(isa)) continue;
    for (DType t : kTypes) {
      const MatmulKernels& k = *matmul_kernels(t, isa);
      const GemvFn gemv = gemv_kernel(t, isa);
      for (int64_t n : {32, 96, 576, 1568}) {
        const int64_t rows = 7;
        const size_t stride = row_bytes(t, n) + kJunk;
        std::vector<uint8_t> w(stride * rows, 0xff), a(row_bytes(k.vec_dot_type, n));
        std::vector<float> f(n);
        // Each block holds +-7 to fix the scale at 1 (Q8: amax/127 would not be exact, so the
        // weight block's largest value is 127 there).
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t j = 0; j < n; ++j) f[j] = static_cast<float>(q(rng));
          for (int64_t b = 0; b < n / 32; ++b) {
            f[32 * b] = t == DType::Q8_0 ? 127.0f : (t == DType::Q4_1 ? -8.0f : -8.0f);
            if (t == DType::Q4_1) f[32 * b + 1] = 7.0f;
          }
          quantize_row_ref(t, f.data(), w.data() + r * stride, n);
        }
        for (int64_t j = 0; j < n; ++j) f[j] = static_cast<float>(q(rng));
        for (int64_t b = 0; b < n / 32; ++b) f[32 * b] = 127.0f;
        k.quantize_act(f.data(), a.data(), n);
        std::vector<float> y(rows);
        gemv(n, w.data(), stride, rows, a.data(), y.data());
        for (int64_t r = 0; r < rows; ++r) {
          EXPECT_EQ(y[r], k.vec_dot(n, w.data() + r * stride, a.data()))
              << label(t, isa, n, rows) << " row " << r;
        }
      }
    }
  }
}

// A NaN in one weight row's data reaches that row's output and no other row's.
TEST(Gemv, NanPropagates) {
  std::mt19937 rng(99);
  for (Isa isa : kIsas) {
    if (!cpu_supports(isa)) continue;
    for (DType t : kTypes) {
      const MatmulKernels& k = *matmul_kernels(t, isa);
      const GemvFn gemv = gemv_kernel(t, isa);
      const int64_t n = 576, rows = 6;
      Case c = make_case(k, n, rows, rng);
      // A NaN scale (f16 0x7e00) on row 2's last block, or a NaN element for float types.
      uint8_t* row2 = c.w.data() + 2 * c.stride;
      const uint16_t nan16 = t == DType::BF16 ? 0x7fc0 : 0x7e00;
      if (t == DType::F32) {
        const float nan = std::numeric_limits<float>::quiet_NaN();
        std::memcpy(row2 + (n - 1) * 4, &nan, 4);
      } else if (t == DType::F16 || t == DType::BF16) {
        std::memcpy(row2 + (n - 1) * 2, &nan16, 2);
      } else {
        std::memcpy(row2 + row_bytes(t, n) - row_bytes(t, 32), &nan16, 2);
      }
      std::vector<float> y(rows);
      gemv(n, c.w.data(), c.stride, rows, c.a.data(), y.data());
      for (int64_t r = 0; r < rows; ++r) {
        EXPECT_EQ(std::isnan(y[r]), r == 2) << label(t, isa, n, rows) << " row " << r;
      }
    }
  }
}

TEST(Gemv, NoScalarKernel) {
  for (DType t : kTypes) EXPECT_EQ(gemv_kernel(t, Isa::Scalar), nullptr);
}

}  // namespace
}  // namespace qilin
