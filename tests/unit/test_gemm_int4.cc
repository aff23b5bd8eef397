// Tiled gemms for Qilin's 4-bit types (QI4_G32/64/128, NF4, NF4_DQ) against gemm_ref (scalar
// vec_dot per pair) on every ISA this CPU can run, over awkward shapes (lane-group tails, row
// and token tails, strides wider than a row, more than one internal slice), the packed-weight
// cache, and an independent double-precision reference of what the kernels claim to compute.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/fp16.h"
#include "cpu/gemm.h"
#include "cpu/gemm_quant_impl.h"
#include "cpu/quants.h"
#include "cpu/quants_int4.h"

namespace qilin {
namespace {

constexpr DType kTypes[] = {DType::QI4_G32, DType::QI4_G64, DType::QI4_G128, DType::NF4,
                            DType::NF4_DQ};
constexpr Isa kIsas[] = {Isa::Avx2, Isa::Avx512};

struct Operands {
  DType wt = DType::NF4, at = DType::Q8_0;
  int64_t n = 0, n_rows = 0, n_tok = 0;
  size_t w_stride = 0, a_stride = 0;
  std::vector<uint8_t> w, a;  // [n_rows][w_stride], [n_tok][a_stride] bytes; 64 junk bytes each
};

Operands make_random(DType wt, Isa isa, int64_t n, int64_t n_rows, int64_t n_tok,
                     std::mt19937& rng) {
  Operands o;
  o.wt = wt;
  o.at = matmul_kernels(wt, isa)->vec_dot_type;
  o.n = n, o.n_rows = n_rows, o.n_tok = n_tok;
  o.w_stride = row_bytes(wt, n) + 64;
  o.a_stride = row_bytes(o.at, n) + 64;
  o.w.assign(o.w_stride * n_rows, 0xff);
  o.a.assign(o.a_stride * n_tok, 0xff);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t r = 0; r < n_rows; ++r) {
    for (float& v : x) v = nd(rng);
    x[static_cast<size_t>(r) % x.size()] = 6.0f;  // an outlier: uneven block scales
    quantize_row_int4(wt, x.data(), o.w.data() + r * o.w_stride, n);
  }
  for (int64_t t = 0; t < n_tok; ++t) {
    for (float& v : x) v = nd(rng);
    matmul_kernels(wt, isa)->quantize_act(x.data(), o.a.data() + t * o.a_stride, n);
  }
  return o;
}

// One 32-element block as the kernels compute with it: integer values q, scale d, and x (the
// zero point's term -d * z for QI4, times the activation block's s), read independently of the
// packing code.
struct Block {
  double d = 0.0, x = 0.0;
  int q[kQK] = {};
};

std::vector<Block> weight_blocks(const Operands& o, int64_t r) {
  std::vector<Block> out(static_cast<size_t>(o.n / kQK));
  const uint8_t* row = o.w.data() + r * o.w_stride;
  if (const int g = qi4_group(o.wt); g > 0) {
    for (int64_t b = 0; b < o.n / kQK; ++b) {
      const uint8_t* blk = row + (b * kQK / g) * row_bytes(o.wt, g);
      uint16_t d16;
      std::memcpy(&d16, blk, 2);
      Block& w = out[b];
      w.d = fp16_to_fp32(d16);
      w.x = -w.d * blk[2];
      for (int j = 0; j < kQK; ++j) {
        const int e = static_cast<int>(b * kQK % g) + j;
        w.q[j] = e < g / 2 ? blk[3 + e] & 15 : blk[3 + e - g / 2] >> 4;
      }
    }
    return out;
  }
  std::vector<float> scales(static_cast<size_t>(o.n / kQKNf4));
  std::vector<const uint8_t*> qs(scales.size());
  if (o.wt == DType::NF4) {
    for (size_t b = 0; b < scales.size(); ++b) {
      std::memcpy(&scales[b], row + b * sizeof(BlockNF4), 4);
      qs[b] = row + b * sizeof(BlockNF4) + 4;
    }
  } else {
    for_nf4dq_blocks(row, o.n, [&](int64_t b, float d, const uint8_t* q) {
      scales[b] = d;
      qs[b] = q;
    });
  }
  for (int64_t b = 0; b < o.n / kQK; ++b) {
    Block& w = out[b];
    w.d = std::ldexp(static_cast<double>(scales[b / 2]), -kNf4KernelShift);
    for (int j = 0; j < kQK; ++j) {
      const uint8_t byte = qs[b / 2][j];
      w.q[j] = kNf4Int[b % 2 == 0 ? byte & 15 : byte >> 4];
    }
  }
  return out;
}

std::vector<Block> act_blocks(const Operands& o, int64_t t) {
  std::vector<Block> out(static_cast<size_t>(o.n / kQK));
  const uint8_t* p = o.a.data() + t * o.a_stride;
  const size_t bb = row_bytes(o.at, kQK), qs = o.at == DType::Q8_1 ? 4 : 2;
  for (int64_t b = 0; b < o.n / kQK; ++b, p += bb) {
    uint16_t d, s;
    std::memcpy(&d, p, 2);
    std::memcpy(&s, p + 2, 2);
    out[b].d = fp16_to_fp32(d);
    out[b].x = o.at == DType::Q8_1 ? fp16_to_fp32(s) : 0.0;
    for (int j = 0; j < kQK; ++j) out[b].q[j] = static_cast<int8_t>(p[qs + j]);
  }
  return out;
}

std::string label(DType wt, Isa isa) { return std::string(isa_name(isa)) + "/" + dtype_name(wt); }

constexpr float kSentinel = -12345.0f;  // in c's padding columns; must survive untouched

std::vector<float> run(GemmFn gemm, const Operands& o, int64_t ldc) {
  std::vector<float> c(static_cast<size_t>(ldc * o.n_tok), kSentinel);
  gemm(o.n, o.w.data(), o.w_stride, o.n_rows, o.a.data(), o.a_stride, o.n_tok, c.data(), ldc);
  return c;
}

// Compares the kernel with (1) the exact value of the integer block sums it and vec_dot form
// (in double) within f32 summation error: one rounding per term, at most 2 terms per 32-element
// block (QI4: d d_a * sum and m * s; NF4: the hi and lo halves) plus a reduction tree; (2) the
// scalar vec_dot reference within twice that tolerance more. Written as err <= tol so NaN
// fails. Returns the largest |got - ref| relative to sum |terms|.
double expect_matches(GemmFn gemm, const Operands& o) {
  const int64_t ldc = o.n_rows + 3;
  const std::vector<float> got = run(gemm, o, ldc);
  std::vector<float> want(got.size(), kSentinel);
  gemm_ref(*matmul_kernels(o.wt, Isa::Scalar), o.n, o.w.data(), o.w_stride, o.n_rows, o.a.data(),
           o.a_stride, o.n_tok, want.data(), ldc);
  std::vector<std::vector<Block>> wb;
  for (int64_t r = 0; r < o.n_rows; ++r) wb.push_back(weight_blocks(o, r));
  const double k = 2.0 * static_cast<double>(o.n / kQK) + 8.0;
  int bad = 0;
  double worst = 0.0;
  for (int64_t t = 0; t < o.n_tok; ++t) {
    const std::vector<Block> ab = act_blocks(o, t);
    for (int64_t r = 0; r < ldc; ++r) {
      const float g = got[t * ldc + r];
      if (r >= o.n_rows) {
        if (g != kSentinel && ++bad <= 3) ADD_FAILURE() << "padding column overwritten r=" << r;
        continue;
      }
      double exact = 0.0, mag = 0.0;
      for (size_t b = 0; b < ab.size(); ++b) {
        const Block& w = wb[r][b];
        const Block& a = ab[b];
        int64_t dot = 0, adot = 0;
        for (int j = 0; j < kQK; ++j) {
          dot += w.q[j] * a.q[j];
          adot += std::abs(w.q[j] * a.q[j]);
        }
        exact += w.d * a.d * static_cast<double>(dot) + w.x * a.x;
        mag += std::fabs(w.d * a.d) * static_cast<double>(adot) + std::fabs(w.x * a.x);
      }
      const double tol = 2.0 * k * std::ldexp(1.0, -24) * mag;
      const double e = want[t * ldc + r];
      const bool ok_exact = std::isfinite(g) && std::fabs(g - exact) <= tol;
      const bool ok_ref = std::isfinite(g) && std::fabs(g - e) <= 3.0 * tol;
      if ((!ok_exact || !ok_ref) && ++bad <= 3) {
        ADD_FAILURE() << "t=" << t << " r=" << r << " got " << g << " ref " << e << " exact "
                      << exact << " tol " << tol;
      }
      if (mag > 0) worst = std::max(worst, std::fabs(g - e) / mag);
    }
  }
  if (bad > 3) ADD_FAILURE() << bad << " mismatches in all";
  return worst;
}

TEST(GemmInt4, KernelExistsForEveryTypeOnSimdIsasOnly) {
  for (DType wt : kTypes) {
    EXPECT_EQ(gemm_quant_kernel(wt, Isa::Scalar), nullptr);
    for (Isa isa : kIsas) {
      if (!cpu_supports(isa)) continue;
      EXPECT_NE(gemm_quant_kernel(wt, isa), nullptr) << label(wt, isa);
      EXPECT_EQ(gemm_kernel(wt, isa), gemm_quant_kernel(wt, isa)) << label(wt, isa);
    }
  }
}

TEST(GemmInt4, MatchesReferenceOnRandomData) {
  // Lengths in 32-element blocks: 4, 6 (tails only), 18 (a full AVX-512 group + 2), 12 and 24
  // (full AVX2 groups; 384 is a tensor-parallel slice), 36 (G128 with a 4-block tail), 48, and
  // 18432 / 32 = 576 NF4 blocks (two NF4_DQ second-level groups, the second partial).
  const int64_t ns[] = {128, 192, 384, 576, 1152, 1536};
  const int64_t row_counts[] = {1, 3, 5, 17};
  const int64_t tok_counts[] = {1, 2, 4, 7};
  std::mt19937 rng(42);
  int checked = 0;
  for (Isa isa : kIsas) {
    if (!cpu_supports(isa)) continue;
    for (DType wt : kTypes) {
      const GemmFn gemm = gemm_quant_kernel(wt, isa);
      ASSERT_NE(gemm, nullptr) << label(wt, isa);
      double worst = 0.0;
      for (int64_t n : ns) {
        if (n % dtype_info(wt).block_size != 0) continue;
        for (int64_t n_rows : row_counts) {
          for (int64_t n_tok : tok_counts) {
            SCOPED_TRACE(label(wt, isa) + " n=" + std::to_string(n) +
                         " rows=" + std::to_string(n_rows) + " toks=" + std::to_string(n_tok));
            worst =
                std::max(worst, expect_matches(gemm, make_random(wt, isa, n, n_rows, n_tok, rng)));
            ++checked;
          }
        }
      }
      // Relative to sum |terms|; NaN fails the comparison.
      EXPECT_TRUE(worst <= 1e-5) << label(wt, isa) << " " << worst;
    }
  }
  if (checked == 0) GTEST_SKIP() << "no SIMD ISA on this CPU";
}

// Long NF4_DQ rows (two second-level groups), more rows and tokens than one internal slice (64
// rows, 128 tokens), and the packed-weight cache: registered weights give the unregistered bits.
TEST(GemmInt4, MatchesReferenceAcrossSlicesAndFromTheCache) {
  std::mt19937 rng(5);
  int checked = 0;
  for (Isa isa : kIsas) {
    if (!cpu_supports(isa)) continue;
    for (DType wt : kTypes) {
      SCOPED_TRACE(label(wt, isa));
      const GemmFn gemm = gemm_quant_kernel(wt, isa);
      const Operands big = make_random(wt, isa, 384, 67, 131, rng);
      expect_matches(gemm, big);
      const Operands o = make_random(wt, isa, 18432, 5, 3, rng);
      expect_matches(gemm, o);
      const std::vector<float> plain = run(gemm, big, big.n_rows);
      gemm_register_immutable(big.w.data(), big.w.size());
      EXPECT_EQ(run(gemm, big, big.n_rows), plain);  // packs and caches
      EXPECT_EQ(run(gemm, big, big.n_rows), plain);  // from the cache
      gemm_unregister_immutable(big.w.data());
      ++checked;
    }
  }
  if (checked == 0) GTEST_SKIP() << "no SIMD ISA on this CPU";
}

TEST(GemmInt4, NaNScalePoisonsItsRow) {
  std::mt19937 rng(3);
  bool ran = false;
  for (Isa isa : kIsas) {
    if (!cpu_supports(isa)) continue;
    for (DType wt : {DType::QI4_G64, DType::NF4}) {
      SCOPED_TRACE(label(wt, isa));
      Operands o = make_random(wt, isa, 576, 6, 4, rng);
      const int64_t nan_row = 4;
      uint8_t* last_block = o.w.data() + nan_row * o.w_stride + row_bytes(wt, 576) -
                            row_bytes(wt, dtype_info(wt).block_size);
      if (wt == DType::NF4) {
        const float nan = std::numeric_limits<float>::quiet_NaN();
        std::memcpy(last_block, &nan, 4);
      } else {
        const uint16_t nan16 = 0x7e00;
        std::memcpy(last_block, &nan16, 2);
      }
      const std::vector<float> got = run(gemm_quant_kernel(wt, isa), o, o.n_rows);
      for (int64_t t = 0; t < o.n_tok; ++t) {
        for (int64_t r = 0; r < o.n_rows; ++r) {
          EXPECT_EQ(std::isnan(got[t * o.n_rows + r]), r == nan_row) << "t=" << t << " r=" << r;
        }
      }
      ran = true;
    }
  }
  if (!ran) GTEST_SKIP() << "no SIMD ISA on this CPU";
}

}  // namespace
}  // namespace qilin
