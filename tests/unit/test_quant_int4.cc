// Qilin's 4-bit formats (cpu/quants_int4.h): the NF4 code table against bitsandbytes' constants
// and the QLoRA definition, quantize -> dequantize error bounds on normal data, double
// quantization round trip and its bits per weight, and every SIMD kernel against the scalar one
// (and the scalar one against a double dot of the dequantized rows) on awkward lengths.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/fp16.h"
#include "cpu/quants.h"
#include "cpu/quants_int4.h"

namespace qilin {
namespace {

constexpr DType kInt4Types[] = {DType::QI4_G32, DType::QI4_G64, DType::QI4_G128, DType::NF4,
                                DType::NF4_DQ};

// Inverse of the standard normal CDF by bisection on erfc (double precision, no library ppf).
double normal_ppf(double p) {
  double lo = -40.0, hi = 40.0;
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (lo + hi);
    (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

TEST(QuantNf4, CodeTableMatchesBitsandbytesAndTheQloraDefinition) {
  // bitsandbytes (functional.py get_4bit_type("nf4"), csrc/kernels.cu dDequantizeNF4).
  const double bnb[16] = {-1.0,
                          -0.6961928009986877,
                          -0.5250730514526367,
                          -0.39491748809814453,
                          -0.28444138169288635,
                          -0.18477343022823334,
                          -0.09105003625154495,
                          0.0,
                          0.07958029955625534,
                          0.16093020141124725,
                          0.24611230194568634,
                          0.33791524171829224,
                          0.44070982933044434,
                          0.5626170039176941,
                          0.7229568362236023,
                          1.0};
  // QLoRA's construction (create_normal_map, offset 0.9677083): 8 positive quantiles of
  // linspace(offset, 0.5, 9)[:-1], 7 negative ones of linspace(offset, 0.5, 8)[:-1], an exact
  // zero, all divided by the largest. bitsandbytes' linspace runs in f32, hence the 1e-6.
  const double offset = 0.9677083;
  std::vector<double> def;
  for (int i = 0; i < 8; ++i) def.push_back(normal_ppf(offset + (0.5 - offset) * i / 8.0));
  for (int i = 0; i < 7; ++i) def.push_back(-normal_ppf(offset + (0.5 - offset) * i / 7.0));
  def.push_back(0.0);
  std::sort(def.begin(), def.end());
  const double top = def.back();
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(kNf4Values[i], static_cast<float>(bnb[i])) << i;
    EXPECT_NEAR(kNf4Values[i], def[i] / top, 1e-6) << i;
    EXPECT_EQ(kNf4Int[i], std::lround(kNf4Values[i] * (1 << kNf4KernelShift))) << i;
    EXPECT_EQ(static_cast<uint8_t>(kNf4Bytes.lo[i]) | kNf4Bytes.hi[i] * 256, kNf4Int[i]);
  }
  EXPECT_EQ(kNf4Values[7], 0.0f);
  // Nearest code, ties to the lower one, as bitsandbytes' thresholds.
  for (int i = 0; i < 16; ++i) EXPECT_EQ(nf4_index(kNf4Values[i]), i);
  EXPECT_EQ(nf4_index(0.5f * (kNf4Values[8] + kNf4Values[9])), 8);
  EXPECT_EQ(nf4_index(-2.0f), 0);
  EXPECT_EQ(nf4_index(2.0f), 15);
}

TEST(QuantInt4, LayoutSizesAndBitsPerWeight) {
  EXPECT_EQ(row_bytes(DType::QI4_G128, 1536), 12u * 67);
  EXPECT_EQ(row_bytes(DType::NF4, 576), 9u * 36);
  EXPECT_EQ(row_bytes(DType::NF4_DQ, 576), 9u * 33 + 4);               // one row group
  EXPECT_EQ(row_bytes(DType::NF4_DQ, 64 * 300), 300u * 33 + 2 * 4);    // 256 + 44 blocks
  const auto bits = [](DType t, int64_t n) { return 8.0 * row_bytes(t, n) / n; };
  EXPECT_DOUBLE_EQ(bits(DType::NF4, 4096), 4.5);  // QLoRA: 4 + 32/64
  // QLoRA with double quantization: 4 + 8/64 + 32/(64*256) = 4.127 once a row holds whole
  // groups of 256 blocks; shorter rows pay their own 4-byte header (e.g. 576 wide: 4.181).
  EXPECT_NEAR(bits(DType::NF4_DQ, 64 * 256), 4.127, 5e-4);
  EXPECT_NEAR(bits(DType::NF4_DQ, 576), 4.181, 5e-4);
  EXPECT_NEAR(bits(DType::QI4_G128, 1536), 4.1875, 1e-9);
  for (DType t : kInt4Types) EXPECT_TRUE(dtype_info(t).supported) << dtype_name(t);
  uint64_t b = 0;
  ASSERT_TRUE(tensor_bytes(dtype_info(DType::NF4_DQ), 576, 576 * 3, &b));
  EXPECT_EQ(b, 3 * row_bytes(DType::NF4_DQ, 576));
  EXPECT_FALSE(tensor_bytes(dtype_info(DType::F64), 64, uint64_t{1} << 62, &b));
}

std::vector<float> normal_row(int64_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, sigma);
  std::vector<float> x(n);
  for (float& v : x) v = nd(rng);
  return x;
}

std::vector<float> round_trip(DType t, const std::vector<float>& x, std::vector<uint8_t>* q = nullptr) {
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<uint8_t> buf(row_bytes(t, n));
  std::vector<float> y(n);
  quantize_row_ref(t, x.data(), buf.data(), n);
  dequantize_row_ref(t, buf.data(), y.data(), n);
  if (q) *q = buf;
  return y;
}

double mse(const std::vector<float>& x, const std::vector<float>& y) {
  double s = 0.0;
  for (size_t i = 0; i < x.size(); ++i) s += (static_cast<double>(x[i]) - y[i]) * (x[i] - y[i]);
  return s / x.size();
}

// Per element: QI4 within half a step inside the group's range and half a step plus the f16
// scale's rounding (15 steps * 2^-11) at its ends; NF4 within half the widest code gap times the
// block's absmax (the gap between -1 and -0.696).
TEST(QuantInt4, RoundTripErrorBoundsOnNormalData) {
  const int64_t n = 64 * 128;
  const std::vector<float> x = normal_row(n, 1, 0.02f);
  for (DType t : {DType::QI4_G32, DType::QI4_G64, DType::QI4_G128}) {
    std::vector<uint8_t> q;
    const std::vector<float> y = round_trip(t, x, &q);
    const int G = qi4_group(t);
    for (int64_t g = 0; g < n / G; ++g) {
      float lo = INFINITY, hi = -INFINITY;
      for (int j = 0; j < G; ++j) lo = std::min(lo, x[g * G + j]), hi = std::max(hi, x[g * G + j]);
      const float step = (hi - lo) / 15.0f;
      for (int j = 0; j < G; ++j) {
        const int64_t i = g * G + j;
        ASSERT_LE(std::fabs(x[i] - y[i]), step * (0.5f + 16.0f / 2048.0f) + 1e-9f)
            << dtype_name(t) << " element " << i;
      }
    }
  }
  float half_gap = 0.0f;
  for (int i = 0; i < 15; ++i) half_gap = std::max(half_gap, 0.5f * (kNf4Values[i + 1] - kNf4Values[i]));
  EXPECT_NEAR(half_gap, 0.5f * (1.0f - 0.6961928f), 1e-6f);
  const std::vector<float> y = round_trip(DType::NF4, x);
  for (int64_t b = 0; b < n / kQKNf4; ++b) {
    float amax = 0.0f;
    for (int j = 0; j < kQKNf4; ++j) amax = std::max(amax, std::fabs(x[b * kQKNf4 + j]));
    for (int j = 0; j < kQKNf4; ++j) {
      const int64_t i = b * kQKNf4 + j;
      ASSERT_LE(std::fabs(x[i] - y[i]), half_gap * amax * (1 + 1e-6f)) << "NF4 element " << i;
    }
  }
}

// QLoRA's claim (Table 2 / section 3): on normally distributed weights NF4 beats INT4 with the
// same block and absmax scaling. Against Qilin's asymmetric INT4 (zero point, 4.375 bits at
// g64) NF4 (4.5 bits) is only on par in MSE; both numbers are printed.
TEST(QuantInt4, Nf4BeatsSymmetricInt4OnNormalData) {
  const int64_t n = 64 * 2048;
  const std::vector<float> x = normal_row(n, 2);
  // Symmetric absmax INT4, block 64: codes -7..7 of amax / 7 (the paper's Int4 baseline).
  std::vector<float> sym(n);
  for (int64_t b = 0; b < n / 64; ++b) {
    float amax = 0.0f;
    for (int j = 0; j < 64; ++j) amax = std::max(amax, std::fabs(x[b * 64 + j]));
    const float s = amax / 7.0f;
    for (int j = 0; j < 64; ++j) sym[b * 64 + j] = std::nearbyint(x[b * 64 + j] / s) * s;
  }
  const double e_nf4 = mse(x, round_trip(DType::NF4, x));
  const double e_sym = mse(x, sym);
  const double e_q4_0 = mse(x, round_trip(DType::Q4_0, x));
  const double e_g64 = mse(x, round_trip(DType::QI4_G64, x));
  const double e_g128 = mse(x, round_trip(DType::QI4_G128, x));
  GTEST_LOG_(INFO) << "MSE on N(0,1): NF4 " << e_nf4 << ", symmetric INT4-64 " << e_sym
                   << ", Q4_0 " << e_q4_0 << ", QI4_G64 " << e_g64 << ", QI4_G128 " << e_g128;
  EXPECT_LT(e_nf4, 0.8 * e_sym);
  EXPECT_LT(e_nf4, e_g128);
  EXPECT_LT(e_nf4, 1.1 * e_g64);
  EXPECT_LT(e_g64, e_g128);
}

// Double quantization changes only the block scales: codes equal plain NF4's, and each scale is
// within half an int8 step (plus f16 rounding of the step and the mean) of the true absmax.
TEST(QuantInt4, DoubleQuantizationRoundTrip) {
  for (int64_t nb : {1, 9, 24, 256, 300, 513}) {
    const int64_t n = nb * kQKNf4;
    std::vector<float> x = normal_row(n, static_cast<uint32_t>(nb));
    for (int64_t i = 0; i < n; ++i) x[i] *= 1.0f + static_cast<float>(i / kQKNf4 % 7);  // spread
    std::vector<uint8_t> plain, dq;
    round_trip(DType::NF4, x, &plain);
    const std::vector<float> y = round_trip(DType::NF4_DQ, x, &dq);
    std::vector<float> scales(nb);
    nf4dq_row_scales(dq.data(), n, scales.data());
    const uint8_t* p = dq.data();
    for (int64_t g0 = 0; g0 < nb; g0 += kNf4DqGroup) {
      const int64_t k = std::min<int64_t>(kNf4DqGroup, nb - g0);
      Nf4DqHeader h;
      std::memcpy(&h, p, sizeof h);
      const float c = fp16_to_fp32(h.c);
      const uint8_t* qs = p + sizeof h + k;
      for (int64_t b = 0; b < k; ++b) {
        const BlockNF4& pb = reinterpret_cast<const BlockNF4*>(plain.data())[g0 + b];
        ASSERT_EQ(std::memcmp(pb.qs, qs + b * 32, 32), 0) << "nb " << nb << " block " << g0 + b;
        ASSERT_NEAR(scales[g0 + b], pb.d, 0.5f * c * 1.01f + 1e-3f * pb.d) << "block " << g0 + b;
      }
      p += sizeof h + k + k * 32;
    }
    ASSERT_EQ(static_cast<size_t>(p - dq.data()), row_bytes(DType::NF4_DQ, n));
    // The dequantized row uses the decoded scales.
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t code = reinterpret_cast<const BlockNF4*>(plain.data())[i / 64].qs[i % 32];
      const int idx = (i % 64) < 32 ? code & 15 : code >> 4;
      ASSERT_EQ(y[i], kNf4Values[idx] * scales[i / 64]) << i;
    }
    // Relative error of the row grows only a little over plain NF4.
    EXPECT_LT(mse(x, y), 1.05 * mse(x, round_trip(DType::NF4, x))) << "nb " << nb;
  }
}

// ---------------------------------------------------------------------------------------------
// kernels

std::vector<int64_t> lengths(DType t) {
  const int64_t bs = dtype_info(t).block_size;
  std::vector<int64_t> v;
  for (int64_t k : {1, 2, 3, 5, 7, 9, 37}) v.push_back(k * bs);
  for (int64_t n : {576, 1536}) {
    if (n % bs == 0) v.push_back(n);
  }
  if (t == DType::NF4_DQ) {
    for (int64_t k : {256, 257, 300, 513}) v.push_back(k * bs);
  }
  return v;
}

struct Case {
  std::vector<uint8_t> w, a;
  double magnitude = 0.0;  // sum |w_i a_i| over the terms the kernels add in f32
  double exact = 0.0;      // double dot of the dequantized rows, NF4 codes as the kernels'
                           // integers (kNf4Int / 2^12)
};

// NF4 / NF4_DQ block scales of a row.
std::vector<float> nf4_scales(DType t, const std::vector<uint8_t>& w, int64_t n) {
  std::vector<float> s(n / kQKNf4);
  if (t == DType::NF4_DQ) {
    nf4dq_row_scales(w.data(), n, s.data());
  } else {
    for (size_t b = 0; b < s.size(); ++b) s[b] = reinterpret_cast<const BlockNF4*>(w.data())[b].d;
  }
  return s;
}

Case make_case(DType t, int64_t n, std::mt19937& rng) {
  const MatmulKernels* k = matmul_kernels(t, Isa::Scalar);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> e(-2.0f, 2.0f), shift(-1.0f, 1.0f);
  std::vector<float> wf(n), af(n);
  for (int64_t i = 0; i < n; i += 32) {  // scales and offsets vary per 32 elements
    const float s = std::pow(10.0f, e(rng)), o = shift(rng) * s;
    for (int64_t j = i; j < i + 32; ++j) wf[j] = nd(rng) * s + o;
  }
  for (float& v : af) v = nd(rng) * 3.0f;
  Case c;
  c.w.resize(row_bytes(t, n));
  c.a.resize(row_bytes(k->vec_dot_type, n));
  quantize_row_ref(t, wf.data(), c.w.data(), n);
  k->quantize_act(af.data(), c.a.data(), n);
  std::vector<float> wd(n), ad(n);
  dequantize_row_ref(t, c.w.data(), wd.data(), n);
  dequantize_row_ref(k->vec_dot_type, c.a.data(), ad.data(), n);
  const std::vector<float> scales = qi4_group(t) ? std::vector<float>() : nf4_scales(t, c.w, n);
  for (int64_t i = 0; i < n; ++i) {
    double wk = wd[i];
    if (!qi4_group(t)) {
      const float d = scales[i / kQKNf4];
      for (int code = 0; code < 16; ++code) {
        if (wd[i] == kNf4Values[code] * d) wk = kNf4Int[code] / 4096.0 * d;
      }
    }
    c.exact += wk * ad[i];
    // QI4 adds d*q*a and d*z*a as separate terms: bound both by |d| * 15 * |a|.
    double wi = std::fabs(wd[i]);
    if (qi4_group(t)) {
      const int G = qi4_group(t);
      const auto* b = c.w.data() + (i / G) * dtype_info(t).block_bytes;
      uint16_t d16;  // the block's F16 scale; blocks are byte-packed, so no aligned read
      std::memcpy(&d16, b, sizeof d16);
      wi = 2.0 * 15.0 * fp16_to_fp32(d16);
    }
    c.magnitude += wi * std::fabs(ad[i]);
  }
  return c;
}

TEST(QuantInt4Kernels, DispatchTable) {
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    for (DType t : kInt4Types) {
      const MatmulKernels* k = matmul_kernels(t, isa);
      ASSERT_NE(k, nullptr) << isa_name(isa) << " " << dtype_name(t);
      EXPECT_EQ(k->vec_dot_type, qi4_group(t) ? DType::Q8_1 : DType::Q8_0);
    }
  }
}

// The scalar kernel computes the dot of the dequantized rows (NF4 codes as multiples of 2^-12,
// within 2^-13 of the code values) up to f32 rounding, and for QI4 up to the f16 rounding of
// Q8_1's s = d_a * sum(q_a), which carries the zero point's term (2^-11 relative, as Q4_1's m).
TEST(QuantInt4Kernels, ScalarMatchesDequantizedDot) {
  std::mt19937 rng(7);
  for (DType t : kInt4Types) {
    for (int64_t n : lengths(t)) {
      const Case c = make_case(t, n, rng);
      const float got = matmul_kernels(t, Isa::Scalar)->vec_dot(n, c.w.data(), c.a.data());
      const double s_err = qi4_group(t) ? std::ldexp(1.0, -11) * c.magnitude : 0.0;
      ASSERT_NEAR(got, c.exact, s_err + 4.0 * (n / 8 + 2) * std::ldexp(1.0, -24) * c.magnitude)
          << dtype_name(t) << " n=" << n;
    }
  }
}

// SIMD vs scalar: both add per-block products of exact integer sums in f32, in different
// orders (the SIMD ones per lane of 4 or 8 elements): within (n/4 + 2) * 2^-24 * magnitude each.
TEST(QuantInt4Kernels, SimdMatchesScalarOnAwkwardLengths) {
  std::mt19937 rng(8);
  int checked = 0;
  for (DType t : kInt4Types) {
    for (int64_t n : lengths(t)) {
      for (int rep = 0; rep < 3; ++rep) {
        const Case c = make_case(t, n, rng);
        const float want = matmul_kernels(t, Isa::Scalar)->vec_dot(n, c.w.data(), c.a.data());
        ASSERT_TRUE(std::isfinite(want));
        const double tol = 2.0 * (n / 4 + 2) * std::ldexp(1.0, -24) * c.magnitude;
        for (Isa isa : {Isa::Avx2, Isa::Avx512}) {
          if (!cpu_supports(isa)) continue;
          const float got = matmul_kernels(t, isa)->vec_dot(n, c.w.data(), c.a.data());
          ASSERT_NEAR(got, want, tol) << isa_name(isa) << " " << dtype_name(t) << " n=" << n;
          ++checked;
        }
      }
    }
  }
  if (!cpu_supports(Isa::Avx2)) GTEST_SKIP() << "no SIMD ISA on this CPU";
  EXPECT_GT(checked, 0);
}

// Integer-valued weights and activations (unit scales): every kernel must be exact, so a
// dropped, doubled or misplaced element cannot hide in the tolerance.
TEST(QuantInt4Kernels, ExactOnIntegerData) {
  std::mt19937 rng(9);
  // Activations small enough that every partial sum stays an integer below 2^24 in f32.
  std::uniform_int_distribution<int> q4(0, 15), q8_qi4(-20, 20), q8_nf4(-2, 2);
  const uint16_t one = fp32_to_fp16(1.0f);
  for (DType t : kInt4Types) {
    for (int64_t n : lengths(t)) {
      std::vector<uint8_t> w(row_bytes(t, n));
      for (uint8_t& b : w) b = static_cast<uint8_t>(q4(rng) | q4(rng) << 4);
      // Unit scales (and, for NF4_DQ, header c = 1, mean = 0, scale codes 1).
      const DTypeInfo& info = dtype_info(t);
      if (qi4_group(t)) {
        for (int64_t g = 0; g < n / info.block_size; ++g) {
          uint8_t* b = w.data() + g * info.block_bytes;
          std::memcpy(b, &one, 2);
          b[2] = static_cast<uint8_t>(q4(rng));
        }
      } else if (t == DType::NF4) {
        for (int64_t b = 0; b < n / kQKNf4; ++b) {
          const float d = 1.0f;
          std::memcpy(w.data() + b * 36, &d, 4);
        }
      } else {
        uint8_t* p = w.data();
        for (int64_t g0 = 0; g0 < n / kQKNf4; g0 += kNf4DqGroup) {
          const int64_t k = std::min<int64_t>(kNf4DqGroup, n / kQKNf4 - g0);
          const Nf4DqHeader h{one, 0};
          std::memcpy(p, &h, sizeof h);
          std::memset(p + sizeof h, 1, k);
          p += sizeof h + k + 32 * k;
        }
      }
      const DType at = qi4_group(t) ? DType::Q8_1 : DType::Q8_0;
      std::vector<uint8_t> a(row_bytes(at, n));
      for (int64_t b = 0; b < n / kQK; ++b) {
        int8_t* qs = at == DType::Q8_1 ? reinterpret_cast<BlockQ8_1*>(a.data())[b].qs
                                       : reinterpret_cast<BlockQ8_0*>(a.data())[b].qs;
        int sum = 0;
        for (int j = 0; j < kQK; ++j) {
          sum += qs[j] = static_cast<int8_t>(qi4_group(t) ? q8_qi4(rng) : q8_nf4(rng));
        }
        if (at == DType::Q8_1) {
          reinterpret_cast<BlockQ8_1*>(a.data())[b].d = one;
          reinterpret_cast<BlockQ8_1*>(a.data())[b].s = fp32_to_fp16(static_cast<float>(sum));
        } else {
          reinterpret_cast<BlockQ8_0*>(a.data())[b].d = one;
        }
      }
      // The exact value from the dequantized rows (NF4 codes as their kernel integers).
      std::vector<float> wd(n), ad(n);
      dequantize_row_ref(t, w.data(), wd.data(), n);
      dequantize_row_ref(at, a.data(), ad.data(), n);
      double want = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        double wi = wd[i];
        if (!qi4_group(t)) {
          for (int c = 0; c < 16; ++c) {
            if (wd[i] == kNf4Values[c]) wi = kNf4Int[c] / 4096.0;
          }
        }
        want += wi * ad[i];
      }
      for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
        if (!cpu_supports(isa)) continue;
        const float got = matmul_kernels(t, isa)->vec_dot(n, w.data(), a.data());
        ASSERT_EQ(static_cast<double>(got), want) << isa_name(isa) << " " << dtype_name(t) << " n=" << n;
      }
    }
  }
}

}  // namespace
}  // namespace qilin
