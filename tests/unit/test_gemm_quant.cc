// Tiled Q4_0 / Q4_1 / Q8_0 gemms against gemm_ref (scalar vec_dot per pair) on every ISA this
// CPU can run, over awkward shapes (block-group tails of every kind, row and token tails,
// strides wider than a row, ldc wider than n_rows, calls larger than one internal slice), plus
// an exact test on small integers and NaN propagation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/fp16.h"
#include "cpu/gemm.h"
#include "cpu/quants.h"

namespace qilin {
namespace {

constexpr DType kTypes[] = {DType::Q4_0, DType::Q4_1, DType::Q8_0};
constexpr Isa kIsas[] = {Isa::Avx2, Isa::Avx512};

// One block's integer values (Q4_0 already minus 8), scale and second field (Q4_1's m, Q8_1's
// s; 0 otherwise), read independently of the kernels.
struct Block {
  float d = 0.0f, x = 0.0f;
  int q[kQK] = {};
};

Block read_block(DType type, const uint8_t* p) {
  Block b;
  uint16_t h0, h1;
  std::memcpy(&h0, p, 2);
  std::memcpy(&h1, p + 2, 2);
  b.d = fp16_to_fp32(h0);
  switch (type) {
    case DType::Q4_0:
    case DType::Q4_1: {
      const uint8_t* qs = p + (type == DType::Q4_0 ? 2 : 4);
      const int off = type == DType::Q4_0 ? 8 : 0;
      for (int j = 0; j < kQK / 2; ++j) {
        b.q[j] = (qs[j] & 0x0f) - off;
        b.q[j + kQK / 2] = (qs[j] >> 4) - off;
      }
      if (type == DType::Q4_1) b.x = fp16_to_fp32(h1);
      break;
    }
    case DType::Q8_0:
    case DType::Q8_1: {
      const auto* qs = reinterpret_cast<const int8_t*>(p + (type == DType::Q8_0 ? 2 : 4));
      for (int j = 0; j < kQK; ++j) b.q[j] = qs[j];
      if (type == DType::Q8_1) b.x = fp16_to_fp32(h1);
      break;
    }
    default:
      break;
  }
  return b;
}

// Weight rows and activation rows in the kernel's formats, with row strides of a row plus 64
// bytes of junk (0xff), so a kernel that reads past n or confuses stride and row length fails.
struct Operands {
  DType wt = DType::Q4_0, at = DType::Q8_0;
  int64_t n = 0, n_rows = 0, n_tok = 0;
  size_t w_stride = 0, a_stride = 0;
  std::vector<uint8_t> w, a;  // [n_rows][w_stride], [n_tok][a_stride] bytes
};

Operands make_shape(DType wt, Isa isa, int64_t n, int64_t n_rows, int64_t n_tok) {
  Operands o;
  o.wt = wt;
  o.at = matmul_kernels(wt, isa)->vec_dot_type;
  o.n = n, o.n_rows = n_rows, o.n_tok = n_tok;
  o.w_stride = row_bytes(wt, n) + 64;
  o.a_stride = row_bytes(o.at, n) + 64;
  o.w.assign(o.w_stride * n_rows, 0xff);
  o.a.assign(o.a_stride * n_tok, 0xff);
  return o;
}

// Random weights through the reference quantizer, activations through the ISA's quantize_act
// (what the caller feeds the kernel).
Operands make_random(DType wt, Isa isa, int64_t n, int64_t n_rows, int64_t n_tok,
                     const std::vector<float>& wf, const std::vector<float>& af) {
  Operands o = make_shape(wt, isa, n, n_rows, n_tok);
  for (int64_t r = 0; r < n_rows; ++r) {
    quantize_row_ref(wt, wf.data() + r * n, o.w.data() + r * o.w_stride, n);
  }
  for (int64_t t = 0; t < n_tok; ++t) {
    matmul_kernels(wt, isa)->quantize_act(af.data() + t * n, o.a.data() + t * o.a_stride, n);
  }
  return o;
}

std::vector<float> random_floats(int64_t count, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(count));
  for (float& x : v) x = nd(rng);
  return v;
}

const uint8_t* block_at(const std::vector<uint8_t>& rows, size_t stride, int64_t row, DType type,
                        int64_t b) {
  return rows.data() + row * stride + b * row_bytes(type, kQK);
}

// The per-block terms both sides add, as magnitudes: |d_w d_a| sum_j |q_w q_a| + |m_w s_a|.
// Element-wise magnitudes also bound every partial sum a kernel forms inside a block.
double abs_terms(const Operands& o, int64_t r, int64_t t) {
  double s = 0.0;
  for (int64_t b = 0; b < o.n / kQK; ++b) {
    const Block wb = read_block(o.wt, block_at(o.w, o.w_stride, r, o.wt, b));
    const Block ab = read_block(o.at, block_at(o.a, o.a_stride, t, o.at, b));
    double q = 0.0;
    for (int j = 0; j < kQK; ++j) q += std::abs(wb.q[j] * ab.q[j]);
    s += std::fabs(static_cast<double>(wb.d) * ab.d) * q +
         std::fabs(static_cast<double>(wb.x) * ab.x);
  }
  return s;
}

// The exact value of the dot both sides approximate (double is exact for the small test data).
double exact_dot(const Operands& o, int64_t r, int64_t t) {
  double s = 0.0;
  for (int64_t b = 0; b < o.n / kQK; ++b) {
    const Block wb = read_block(o.wt, block_at(o.w, o.w_stride, r, o.wt, b));
    const Block ab = read_block(o.at, block_at(o.a, o.a_stride, t, o.at, b));
    int64_t q = 0;
    for (int j = 0; j < kQK; ++j) q += wb.q[j] * ab.q[j];
    s += static_cast<double>(wb.d) * ab.d * static_cast<double>(q) +
         static_cast<double>(wb.x) * ab.x;
  }
  return s;
}

// Both sides compute the same per-block terms exactly up to one rounding each (the f32 product
// d_w * d_a, then the product or FMA with the exact int32 dot) and add at most 2 * blocks terms
// (Q4_1 adds m * s separately), plus a lane-reduction tree of depth <= 4. Each result is
// therefore within gamma_k * sum|terms| of the exact value with k = 2 * blocks + 6 and
// gamma_k ~ k * 2^-24, and the two differ by at most twice that. Written as err <= tol so NaN
// fails.
bool within_bound(float got, float want, double abs_sum, int64_t n) {
  const double k = 2.0 * static_cast<double>(n / kQK) + 6.0;
  const double tol = 2.0 * k * std::ldexp(1.0, -24) * abs_sum;
  return std::isfinite(got) &&
         std::fabs(static_cast<double>(got) - static_cast<double>(want)) <= tol;
}

constexpr float kSentinel = -12345.0f;  // in c's padding columns; must survive untouched

std::vector<float> run(GemmFn gemm, const Operands& o, int64_t ldc) {
  std::vector<float> c(static_cast<size_t>(ldc * o.n_tok), kSentinel);
  gemm(o.n, o.w.data(), o.w_stride, o.n_rows, o.a.data(), o.a_stride, o.n_tok, c.data(), ldc);
  return c;
}

std::vector<float> run_ref(const Operands& o, int64_t ldc) {
  std::vector<float> c(static_cast<size_t>(ldc * o.n_tok), kSentinel);
  gemm_ref(*matmul_kernels(o.wt, Isa::Scalar), o.n, o.w.data(), o.w_stride, o.n_rows, o.a.data(),
           o.a_stride, o.n_tok, c.data(), ldc);
  return c;
}

std::string label(DType wt, Isa isa) { return std::string(isa_name(isa)) + "/" + dtype_name(wt); }

// Compares a whole result with the reference; returns the number of entries checked.
int expect_matches_ref(GemmFn gemm, const Operands& o) {
  const int64_t ldc = o.n_rows + 3;
  const std::vector<float> got = run(gemm, o, ldc);
  const std::vector<float> want = run_ref(o, ldc);
  int bad = 0, checked = 0;
  for (int64_t t = 0; t < o.n_tok; ++t) {
    for (int64_t r = 0; r < ldc; ++r) {
      const float g = got[t * ldc + r], e = want[t * ldc + r];
      const bool ok = r < o.n_rows ? within_bound(g, e, abs_terms(o, r, t), o.n) : g == kSentinel;
      if (!ok && ++bad <= 3) {
        ADD_FAILURE() << "t=" << t << " r=" << r << " got " << g << " want " << e;
      }
      ++checked;
    }
  }
  if (bad > 3) ADD_FAILURE() << bad << " mismatches in all";
  return checked;
}

TEST(GemmQuant, KernelExistsForEveryQuantTypeOnSimdIsasOnly) {
  for (DType wt : kTypes) {
    EXPECT_EQ(gemm_quant_kernel(wt, Isa::Scalar), nullptr);
    for (Isa isa : kIsas) {
      if (!cpu_supports(isa)) continue;
      EXPECT_NE(gemm_quant_kernel(wt, isa), nullptr) << label(wt, isa);
      EXPECT_EQ(gemm_kernel(wt, isa), gemm_quant_kernel(wt, isa)) << label(wt, isa);
    }
  }
  for (Isa isa : kIsas) {
    if (!cpu_supports(isa)) continue;
    for (DType wt : {DType::F16, DType::BF16, DType::F32, DType::Q8_1}) {
      EXPECT_EQ(gemm_quant_kernel(wt, isa), nullptr) << label(wt, isa);
    }
  }
}

TEST(GemmQuant, MatchesReferenceOnRandomData) {
  // In blocks: 1, 2, 3 (tails of one or two blocks per lane group), 18 = 16 + 2 and 49 = 48 + 1
  // (a full AVX-512 group plus a tail), 48 (full groups only on both ISAs), 12 and 13 (tails of
  // more than half a lane group: one block per lane, 8 steps; 384 is a tensor-parallel slice
  // of SmolLM2's attention output).
  const int64_t ns[] = {32, 64, 96, 384, 416, 576, 1536, 1568};
  const int64_t row_counts[] = {1, 3, 4, 5, 17, 64};
  const int64_t tok_counts[] = {1, 2, 3, 4, 7, 16, 33};
  std::mt19937 rng(42);
  int checked = 0;
  for (Isa isa : kIsas) {
    if (!cpu_supports(isa)) continue;
    for (DType wt : kTypes) {
      const GemmFn gemm = gemm_quant_kernel(wt, isa);
      ASSERT_NE(gemm, nullptr) << label(wt, isa);
      for (int64_t n : ns) {
        // One random matrix per n, cut to each shape: rows and tokens are prefixes.
        const std::vector<float> wf = random_floats(64 * n, rng);
        const std::vector<float> af = random_floats(33 * n, rng);
        for (int64_t n_rows : row_counts) {
          for (int64_t n_tok : tok_counts) {
            SCOPED_TRACE(label(wt, isa) + " n=" + std::to_string(n) +
                         " rows=" + std::to_string(n_rows) + " toks=" + std::to_string(n_tok));
            checked += expect_matches_ref(gemm, make_random(wt, isa, n, n_rows, n_tok, wf, af));
          }
        }
      }
    }
  }
  if (checked == 0) GTEST_SKIP() << "no SIMD ISA on this CPU";
}

// More rows and tokens than one internal slice (64 rows; 128 tokens AVX2, 256 AVX-512), with
// remainders, so the slice loops and the reuse of the packing buffers across calls of other
// sizes are covered.
TEST(GemmQuant, MatchesReferenceAcrossSlices) {
  std::mt19937 rng(5);
  const int64_t n = 576, n_rows = 131, n_tok = 263;
  const std::vector<float> wf = random_floats(n_rows * n, rng);
  const std::vector<float> af = random_floats(n_tok * n, rng);
  int checked = 0;
  for (Isa isa : kIsas) {
    if (!cpu_supports(isa)) continue;
    for (DType wt : kTypes) {
      SCOPED_TRACE(label(wt, isa));
      checked += expect_matches_ref(gemm_quant_kernel(wt, isa),
                                    make_random(wt, isa, n, n_rows, n_tok, wf, af));
    }
  }
  if (checked == 0) GTEST_SKIP() << "no SIMD ISA on this CPU";
}

// Blocks built directly with power-of-two scales, integer minimums and small quants: every
// product and partial sum is a multiple of 1/2 below 2^23, so any summation order is exact and
// the kernel must return the exact dot product bit for bit.
void fill_exact(Operands& o, std::mt19937& rng) {
  std::uniform_int_distribution<int> nib(0, 15), q8(-127, 127), act(-16, 16), coin(0, 1),
      mins(-4, 4);
  for (int64_t r = 0; r < o.n_rows; ++r) {
    for (int64_t b = 0; b < o.n / kQK; ++b) {
      uint8_t* p = o.w.data() + r * o.w_stride + b * row_bytes(o.wt, kQK);
      const uint16_t d = fp32_to_fp16(coin(rng) ? 1.0f : 2.0f);
      std::memcpy(p, &d, 2);
      if (o.wt == DType::Q8_0) {
        for (int j = 0; j < kQK; ++j) p[2 + j] = static_cast<uint8_t>(q8(rng));
      } else {
        const size_t qs = o.wt == DType::Q4_1 ? 4 : 2;
        if (o.wt == DType::Q4_1) {
          const uint16_t m = fp32_to_fp16(static_cast<float>(mins(rng)));
          std::memcpy(p + 2, &m, 2);
        }
        for (int j = 0; j < kQK / 2; ++j)
          p[qs + j] = static_cast<uint8_t>(nib(rng) | nib(rng) << 4);
      }
    }
  }
  for (int64_t t = 0; t < o.n_tok; ++t) {
    for (int64_t b = 0; b < o.n / kQK; ++b) {
      uint8_t* p = o.a.data() + t * o.a_stride + b * row_bytes(o.at, kQK);
      const float d = coin(rng) ? 0.5f : 1.0f;
      const uint16_t dh = fp32_to_fp16(d);
      std::memcpy(p, &dh, 2);
      const size_t qs = o.at == DType::Q8_1 ? 4 : 2;
      int sum = 0;
      for (int j = 0; j < kQK; ++j) {
        const int q = act(rng);
        p[qs + j] = static_cast<uint8_t>(q);
        sum += q;
      }
      if (o.at == DType::Q8_1) {  // s = d * sum(q): |s| <= 512, exact in f16
        const uint16_t s = fp32_to_fp16(d * static_cast<float>(sum));
        std::memcpy(p + 2, &s, 2);
      }
    }
  }
}

TEST(GemmQuant, ExactOnSmallIntegers) {
  std::mt19937 rng(7);
  bool ran = false;
  for (Isa isa : kIsas) {
    if (!cpu_supports(isa)) continue;
    for (DType wt : kTypes) {
      for (int64_t n : {int64_t{96}, int64_t{576}, int64_t{1568}}) {
        SCOPED_TRACE(label(wt, isa) + " n=" + std::to_string(n));
        const int64_t n_rows = 9, n_tok = 8;
        Operands o = make_shape(wt, isa, n, n_rows, n_tok);
        fill_exact(o, rng);
        const std::vector<float> got = run(gemm_quant_kernel(wt, isa), o, n_rows);
        for (int64_t t = 0; t < n_tok; ++t) {
          for (int64_t r = 0; r < n_rows; ++r) {
            ASSERT_EQ(got[t * n_rows + r], static_cast<float>(exact_dot(o, r, t)))
                << "t=" << t << " r=" << r;
          }
        }
        ran = true;
      }
    }
  }
  if (!ran) GTEST_SKIP() << "no SIMD ISA on this CPU";
}

// A NaN weight scale (in a tail block) poisons exactly its row's outputs; a NaN activation
// scale (in a full group) exactly its token's. The comparison used above rejects NaN.
TEST(GemmQuant, NaNPropagatesAndNeverPasses) {
  EXPECT_FALSE(within_bound(std::numeric_limits<float>::quiet_NaN(), 1.0f, 1e30, 64));
  EXPECT_FALSE(within_bound(1.0f, std::numeric_limits<float>::quiet_NaN(), 1e30, 64));
  std::mt19937 rng(3);
  const int64_t n = 576, n_rows = 6, n_tok = 7, nan_row = 4, nan_tok = 2;
  const std::vector<float> wf = random_floats(n_rows * n, rng);
  const std::vector<float> af = random_floats(n_tok * n, rng);
  const uint16_t nan16 = 0x7e00;
  bool ran = false;
  for (Isa isa : kIsas) {
    if (!cpu_supports(isa)) continue;
    for (DType wt : kTypes) {
      SCOPED_TRACE(label(wt, isa));
      Operands o = make_random(wt, isa, n, n_rows, n_tok, wf, af);
      std::memcpy(o.w.data() + nan_row * o.w_stride + (n / kQK - 1) * row_bytes(wt, kQK), &nan16,
                  2);
      std::memcpy(o.a.data() + nan_tok * o.a_stride + 3 * row_bytes(o.at, kQK), &nan16, 2);
      const std::vector<float> got = run(gemm_quant_kernel(wt, isa), o, n_rows);
      for (int64_t t = 0; t < n_tok; ++t) {
        for (int64_t r = 0; r < n_rows; ++r) {
          EXPECT_EQ(std::isnan(got[t * n_rows + r]), r == nan_row || t == nan_tok)
              << "t=" << t << " r=" << r;
        }
      }
      ran = true;
    }
  }
  if (!ran) GTEST_SKIP() << "no SIMD ISA on this CPU";
}

}  // namespace
}  // namespace qilin

namespace qilin {
namespace {

// Registered (immutable) weights are packed once and reused: the results must be the bits of
// an unregistered call, and unregistering must drop the packed copy (a new model loaded at the
// same address must never see the old one's packing). With and without a tail group (n = 576 =
// 512 + 64; 1024), few tokens and more than one 3-token tile column per 4-row tile.
TEST(GemmQuant, PackedWeightCacheGivesTheSameBitsAndForgetsOnUnregister) {
  std::mt19937 rng(9);
  int checked = 0;
  for (Isa isa : kIsas) {
    if (!cpu_supports(isa)) continue;
    for (DType wt : kTypes) {
      for (const auto& [n_tok, n] :
           {std::pair<int64_t, int64_t>{5, 576}, {5, 1024}, {40, 576}, {40, 1024}}) {
        SCOPED_TRACE("n_tok=" + std::to_string(n_tok) + " n=" + std::to_string(n));
        const GemmFn gemm = gemm_quant_kernel(wt, isa);
        const int64_t n_rows = 70;
        const std::vector<float> wf = random_floats(n_rows * n, rng),
                                 af = random_floats(n_tok * n, rng);
        Operands o = make_random(wt, isa, n, n_rows, n_tok, wf, af);
        const int64_t ldc = n_rows;
        const std::vector<float> plain = run(gemm, o, ldc);
        gemm_register_immutable(o.w.data(), o.w.size());
        EXPECT_EQ(run(gemm, o, ldc), plain) << label(wt, isa);  // packs and caches
        EXPECT_EQ(run(gemm, o, ldc), plain) << label(wt, isa);  // from the cache
        gemm_unregister_immutable(o.w.data());
        // New weights in the same buffer, registered again: the old packing must be gone.
        const std::vector<float> wf2 = random_floats(n_rows * n, rng);
        Operands o2 = make_random(wt, isa, n, n_rows, n_tok, wf2, af);
        ASSERT_EQ(o2.w.size(), o.w.size());
        std::copy(o2.w.begin(), o2.w.end(), o.w.begin());
        const std::vector<float> plain2 = run(gemm, o, ldc);
        EXPECT_NE(plain2, plain);
        gemm_register_immutable(o.w.data(), o.w.size());
        EXPECT_EQ(run(gemm, o, ldc), plain2) << label(wt, isa);
        gemm_unregister_immutable(o.w.data());
        ++checked;
      }
    }
  }
  if (checked == 0) GTEST_SKIP() << "no SIMD ISA on this CPU";
}

}  // namespace
}  // namespace qilin
