// Tiled F16 / BF16 / F32 gemms against gemm_ref (scalar vec_dot per pair) on every ISA this CPU
// can run, over awkward shapes (row, token and element tails, strides wider than a row, ldc
// wider than n_rows, rows longer than one activation pass), plus exact and NaN cases.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "cpu/gemm.h"
#include "cpu/quants.h"

namespace qilin {
namespace {

constexpr DType kTypes[] = {DType::F16, DType::BF16, DType::F32};
constexpr Isa kIsas[] = {Isa::Avx2, Isa::Avx512};

// A weight matrix and activation rows in the kernel's formats, plus their exact values (the
// stored elements widened to double) for the error bound.
struct Operands {
  int64_t n = 0, n_rows = 0, n_tok = 0;
  size_t w_stride = 0, a_stride = 0;
  std::vector<uint8_t> w, a;         // [n_rows][w_stride], [n_tok][a_stride] bytes
  std::vector<double> w_val, a_val;  // [n_rows][n], [n_tok][n]
};

// Row strides are a row plus 64 bytes of junk, so a kernel that reads past n or confuses the
// stride with the row length picks up garbage and fails.
Operands make_operands(DType wt, Isa isa, int64_t n, int64_t n_rows, int64_t n_tok,
                       const std::vector<float>& wf, const std::vector<float>& af) {
  const MatmulKernels* k = matmul_kernels(wt, isa);
  Operands o;
  o.n = n, o.n_rows = n_rows, o.n_tok = n_tok;
  o.w_stride = row_bytes(wt, n) + 64;
  o.a_stride = row_bytes(k->vec_dot_type, n) + 64;
  o.w.assign(o.w_stride * n_rows, 0xff);  // 0xffff is a NaN in f16 and bf16 alike
  o.a.assign(o.a_stride * n_tok, 0xff);
  std::vector<float> back(n);
  for (int64_t r = 0; r < n_rows; ++r) {
    quantize_row_ref(wt, wf.data() + r * n, o.w.data() + r * o.w_stride, n);
    dequantize_row_ref(wt, o.w.data() + r * o.w_stride, back.data(), n);
    o.w_val.insert(o.w_val.end(), back.begin(), back.end());
  }
  for (int64_t t = 0; t < n_tok; ++t) {
    k->quantize_act(af.data() + t * n, o.a.data() + t * o.a_stride, n);
    dequantize_row_ref(k->vec_dot_type, o.a.data() + t * o.a_stride, back.data(), n);
    o.a_val.insert(o.a_val.end(), back.begin(), back.end());
  }
  return o;
}

std::vector<float> random_floats(int64_t count, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(count));
  for (float& x : v) x = nd(rng);
  return v;
}

constexpr float kSentinel = -12345.0f;  // in c's padding columns; must survive untouched

// Runs `gemm` into c[n_tok][ldc]; every entry starts as kSentinel.
std::vector<float> run(GemmFn gemm, const Operands& o, int64_t ldc) {
  std::vector<float> c(static_cast<size_t>(ldc * o.n_tok), kSentinel);
  gemm(o.n, o.w.data(), o.w_stride, o.n_rows, o.a.data(), o.a_stride, o.n_tok, c.data(), ldc);
  return c;
}

std::vector<float> run_ref(DType wt, const Operands& o, int64_t ldc) {
  std::vector<float> c(static_cast<size_t>(ldc * o.n_tok), kSentinel);
  gemm_ref(*matmul_kernels(wt, Isa::Scalar), o.n, o.w.data(), o.w_stride, o.n_rows, o.a.data(),
           o.a_stride, o.n_tok, c.data(), ldc);
  return c;
}

// Both results are float sums of the same exact products (FMA or not) in different orders;
// each is within gamma_n * sum|terms| of the exact dot, gamma_n ~ n * 2^-24, so they differ by
// at most twice that. Written as !(err <= tol) so a NaN in either result fails.
bool within_bound(float got, float want, double abs_sum, int64_t n) {
  const double tol = 2.0 * static_cast<double>(n + 1) * std::ldexp(1.0, -24) * abs_sum;
  return std::fabs(static_cast<double>(got) - static_cast<double>(want)) <= tol;
}

double abs_dot(const Operands& o, int64_t r, int64_t t) {
  double s = 0.0;
  for (int64_t k = 0; k < o.n; ++k) s += std::fabs(o.w_val[r * o.n + k] * o.a_val[t * o.n + k]);
  return s;
}

double exact_dot(const Operands& o, int64_t r, int64_t t) {
  double s = 0.0;
  for (int64_t k = 0; k < o.n; ++k) s += o.w_val[r * o.n + k] * o.a_val[t * o.n + k];
  return s;
}

std::string label(DType wt, Isa isa) { return std::string(isa_name(isa)) + "/" + dtype_name(wt); }

TEST(GemmFloat, KernelExistsForEveryFloatTypeOnSimdIsasOnly) {
  for (DType wt : kTypes) {
    EXPECT_EQ(gemm_float_kernel(wt, Isa::Scalar), nullptr);
    for (Isa isa : kIsas) {
      if (!cpu_supports(isa)) continue;
      EXPECT_NE(gemm_float_kernel(wt, isa), nullptr) << label(wt, isa);
      EXPECT_EQ(gemm_kernel(wt, isa), gemm_float_kernel(wt, isa)) << label(wt, isa);
    }
  }
  for (Isa isa : kIsas) {
    if (cpu_supports(isa)) {
      EXPECT_EQ(gemm_float_kernel(DType::Q4_0, isa), nullptr);
    }
  }
}

TEST(GemmFloat, MatchesReferenceOnRandomData) {
  // 1, 7, 17, 100: element tails of every length class; 2500: longer than one activation pass
  // of either ISA (so partial sums are added into c) and not a multiple of 16.
  const int64_t ns[] = {1, 7, 17, 32, 64, 96, 100, 576, 1536, 2500};
  const int64_t row_counts[] = {1, 3, 4, 5, 17, 64};
  const int64_t tok_counts[] = {1, 2, 5, 6, 7, 13, 33};
  std::mt19937 rng(42);
  int checked = 0;
  for (Isa isa : kIsas) {
    if (!cpu_supports(isa)) continue;
    for (DType wt : kTypes) {
      const GemmFn gemm = gemm_float_kernel(wt, isa);
      ASSERT_NE(gemm, nullptr) << label(wt, isa);
      for (int64_t n : ns) {
        // One random matrix per n, cut to each shape: rows and tokens are prefixes.
        const std::vector<float> wf = random_floats(64 * n, rng);
        const std::vector<float> af = random_floats(33 * n, rng);
        for (int64_t n_rows : row_counts) {
          for (int64_t n_tok : tok_counts) {
            SCOPED_TRACE(label(wt, isa) + " n=" + std::to_string(n) +
                         " rows=" + std::to_string(n_rows) + " toks=" + std::to_string(n_tok));
            const Operands o = make_operands(wt, isa, n, n_rows, n_tok, wf, af);
            const int64_t ldc = n_rows + 3;
            const std::vector<float> got = run(gemm, o, ldc);
            const std::vector<float> want = run_ref(wt, o, ldc);
            int bad = 0;
            for (int64_t t = 0; t < n_tok; ++t) {
              for (int64_t r = 0; r < ldc; ++r) {
                const float g = got[t * ldc + r], e = want[t * ldc + r];
                const bool ok = r < n_rows ? within_bound(g, e, abs_dot(o, r, t), n)
                                           : g == kSentinel;  // padding untouched
                if (!ok && ++bad <= 3) {
                  ADD_FAILURE() << "t=" << t << " r=" << r << " got " << g << " want " << e;
                }
                ++checked;
              }
            }
            if (bad > 3) ADD_FAILURE() << bad << " mismatches in all";
          }
        }
      }
    }
  }
  if (checked == 0) GTEST_SKIP() << "no SIMD ISA on this CPU";
}

// Small integers multiply and add exactly in f32 (every partial sum stays far below 2^24), so
// any summation order must give the exact dot product bit for bit.
TEST(GemmFloat, ExactOnSmallIntegers) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> small(-8, 8);
  const int64_t n = 1536 + 13, n_rows = 9, n_tok = 8;
  std::vector<float> wf(n_rows * n), af(n_tok * n);
  for (float& x : wf) x = static_cast<float>(small(rng));
  for (float& x : af) x = static_cast<float>(small(rng));
  bool ran = false;
  for (Isa isa : kIsas) {
    if (!cpu_supports(isa)) continue;
    for (DType wt : kTypes) {
      SCOPED_TRACE(label(wt, isa));
      const Operands o = make_operands(wt, isa, n, n_rows, n_tok, wf, af);
      const std::vector<float> got = run(gemm_float_kernel(wt, isa), o, n_rows);
      for (int64_t t = 0; t < n_tok; ++t) {
        for (int64_t r = 0; r < n_rows; ++r) {
          ASSERT_EQ(got[t * n_rows + r], static_cast<float>(exact_dot(o, r, t)))
              << "t=" << t << " r=" << r;
        }
      }
      ran = true;
    }
  }
  if (!ran) GTEST_SKIP() << "no SIMD ISA on this CPU";
}

// A NaN weight poisons exactly its row's outputs; the comparison used above rejects NaN.
TEST(GemmFloat, NaNPropagatesAndNeverPasses) {
  EXPECT_FALSE(within_bound(std::numeric_limits<float>::quiet_NaN(), 1.0f, 1e30, 64));
  EXPECT_FALSE(within_bound(1.0f, std::numeric_limits<float>::quiet_NaN(), 1e30, 64));
  std::mt19937 rng(3);
  const int64_t n = 100, n_rows = 6, n_tok = 7, nan_row = 4;
  std::vector<float> wf = random_floats(n_rows * n, rng);
  const std::vector<float> af = random_floats(n_tok * n, rng);
  wf[nan_row * n + n - 1] = std::numeric_limits<float>::quiet_NaN();  // in the element tail
  bool ran = false;
  for (Isa isa : kIsas) {
    if (!cpu_supports(isa)) continue;
    for (DType wt : kTypes) {
      SCOPED_TRACE(label(wt, isa));
      const Operands o = make_operands(wt, isa, n, n_rows, n_tok, wf, af);
      const std::vector<float> got = run(gemm_float_kernel(wt, isa), o, n_rows);
      for (int64_t t = 0; t < n_tok; ++t) {
        for (int64_t r = 0; r < n_rows; ++r) {
          EXPECT_EQ(std::isnan(got[t * n_rows + r]), r == nan_row) << "t=" << t << " r=" << r;
        }
      }
      ran = true;
    }
  }
  if (!ran) GTEST_SKIP() << "no SIMD ISA on this CPU";
}

}  // namespace
}  // namespace qilin
