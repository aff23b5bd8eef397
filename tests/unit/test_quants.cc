// Tests for half/bfloat16 conversion, the reference block (de)quantizers (bit-exact against
// fixtures made by tests/golden/gen_quant_fixtures.py from gguf-py and ggml's C reference), and
// every SIMD kernel against the scalar one on every ISA this CPU can run.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/fp16.h"
#include "cpu/quants.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define QILIN_TEST_X86 1
#endif

namespace qilin {
namespace {

// ---------------------------------------------------------------------------------------------
// Independent conversion definitions, written from the IEEE formats (double arithmetic, whose
// nearbyint rounds halves to even in the default rounding mode).

double half_value(uint16_t h) {  // NaN handled by the caller
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double mag = e == 0    ? std::ldexp(m, -24)
                     : e == 31 ? INFINITY
                               : std::ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -mag : mag;
}

uint16_t half_from_formula(float x) {  // finite or infinite x, not NaN
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double v = std::fabs(static_cast<double>(x));
  uint32_t bits;
  if (v < std::ldexp(1.0, -14)) {
    bits = static_cast<uint32_t>(std::nearbyint(v * 16777216.0));  // units of 2^-24
  } else if (std::isinf(v)) {
    bits = 0x7c00;
  } else {
    int e;
    std::frexp(v, &e);  // v = f * 2^e, f in [0.5, 1): unbiased exponent e - 1
    const double r = std::nearbyint(std::ldexp(v, 10 - (e - 1)));  // 1024..2048
    bits = static_cast<uint32_t>((e - 1 + 15) << 10) + static_cast<uint32_t>(r) - 1024;  // carry ok
  }
  if (bits > 0x7c00) bits = 0x7c00;
  return static_cast<uint16_t>(sign | bits);
}

uint16_t bf16_from_formula(float x) {  // not NaN
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double v = std::fabs(static_cast<double>(x));
  uint32_t bits;
  if (v < std::ldexp(1.0, -126)) {
    bits = static_cast<uint32_t>(std::nearbyint(std::ldexp(v, 133)));  // units of 2^-133
  } else if (std::isinf(v)) {
    bits = 0x7f80;
  } else {
    int e;
    std::frexp(v, &e);
    const double r = std::nearbyint(std::ldexp(v, 7 - (e - 1)));  // 128..256
    bits = static_cast<uint32_t>((e - 1 + 127) << 7) + static_cast<uint32_t>(r) - 128;
  }
  if (bits > 0x7f80) bits = 0x7f80;
  return static_cast<uint16_t>(sign | bits);
}

#ifdef QILIN_TEST_X86
bool have_f16c() { return __builtin_cpu_supports("f16c"); }
__attribute__((target("f16c"))) float hw_half_to_float(uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) uint16_t hw_float_to_half(float x) { return _cvtss_sh(x, 0); }
#else
bool have_f16c() { return false; }
float hw_half_to_float(uint16_t) { return 0; }
uint16_t hw_float_to_half(float) { return 0; }
#endif

// Random floats from every exponent plus the edge cases of both formats.
std::vector<float> conversion_inputs() {
  std::vector<float> v;
  std::mt19937 rng(7);
  for (int i = 0; i < 1 << 20; ++i) v.push_back(bits_to_f32(rng()));
  std::uniform_real_distribution<float> uni(-70000.0f, 70000.0f);
  for (int i = 0; i < 1 << 16; ++i) v.push_back(uni(rng));
  const float inf = std::numeric_limits<float>::infinity();
  for (float x : {0.0f,
                  -0.0f,
                  1.0f,
                  -1.0f,
                  65504.0f,
                  65519.99f,
                  65520.0f,
                  65536.0f,
                  1e10f,
                  inf,
                  -inf,
                  std::ldexp(1.0f, -14),
                  std::ldexp(1.0f, -24),
                  std::ldexp(1.0f, -25),
                  std::ldexp(1.0f, -25) * 1.0000001f,
                  std::ldexp(3.0f, -25),
                  std::ldexp(5.0f, -25),
                  std::ldexp(1.0f, -26),
                  1.0f + std::ldexp(1.0f, -11),
                  1.0f + std::ldexp(3.0f, -11),
                  2049.0f,
                  2051.0f,
                  std::ldexp(1.0f, -126),
                  std::ldexp(1.0f, -149),
                  std::numeric_limits<float>::max(),
                  1.0f + std::ldexp(1.0f, -8),
                  1.0f + std::ldexp(3.0f, -8),
                  std::ldexp(32767.0f, -149)}) {
    v.push_back(x);
    v.push_back(-x);
  }
  // every half and every bf16 value, and the midpoints just above / at / below each
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const float f = static_cast<float>(half_value(static_cast<uint16_t>(h)));
    v.push_back(f);
    v.push_back(std::nextafter(f, inf));
    v.push_back(static_cast<float>(half_value(static_cast<uint16_t>(h)) +
                                   std::ldexp(1.0, -25) *
                                       (h < 0x400 ? 1 : std::ldexp(1.0, ((h >> 10) & 0x1f) - 1))));
  }
  for (uint32_t b = 0; b < 0x10000; b += 7) v.push_back(bits_to_f32(b << 16 | 0x8000));  // ties
  for (uint32_t n : {0x7f800001u, 0x7fc00000u, 0x7fffffffu, 0xffc00001u, 0x7f802000u, 0x7fa00000u})
    v.push_back(bits_to_f32(n));
  return v;
}

TEST(QuantFp16, HalfToFloatAllValues) {
  const bool hw = have_f16c();
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float got = fp16_to_fp32(static_cast<uint16_t>(h));
    const bool nan = ((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff);
    if (nan) {
      ASSERT_TRUE(std::isnan(got)) << h;
    } else {
      ASSERT_EQ(static_cast<double>(got), half_value(static_cast<uint16_t>(h))) << h;
      ASSERT_EQ(std::signbit(got), (h & 0x8000) != 0) << h;
    }
    if (hw && !nan) {
      ASSERT_EQ(f32_to_bits(got), f32_to_bits(hw_half_to_float(static_cast<uint16_t>(h)))) << h;
    }
    if (hw && nan) {
      ASSERT_TRUE(std::isnan(hw_half_to_float(static_cast<uint16_t>(h))));
    }
  }
}

TEST(QuantFp16, FloatToHalf) {
  const bool hw = have_f16c();
  if (!hw) GTEST_LOG_(INFO) << "no F16C: checking the formula only";
  for (float x : conversion_inputs()) {
    const uint16_t got = fp32_to_fp16(x);
    if (std::isnan(x)) {
      ASSERT_EQ(got & 0x7e00, 0x7e00) << "NaN must stay a quiet NaN";
    } else {
      ASSERT_EQ(got, half_from_formula(x)) << std::hexfloat << x;
    }
    // bit-exact with the hardware, NaN payloads included
    if (hw) {
      ASSERT_EQ(got, hw_float_to_half(x))
          << std::hexfloat << x << " bits " << std::hex << f32_to_bits(x);
    }
  }
}

TEST(QuantFp16, Bf16) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    ASSERT_EQ(f32_to_bits(bf16_to_fp32(static_cast<uint16_t>(b))), b << 16);
  }
  for (float x : conversion_inputs()) {
    const uint16_t got = fp32_to_bf16(x);
    if (std::isnan(x)) {
      // ggml: NaN keeps its top bits and is forced quiet (a plain shift could make it infinity)
      ASSERT_EQ(got, static_cast<uint16_t>(f32_to_bits(x) >> 16 | 64))
          << std::hex << f32_to_bits(x);
      ASSERT_TRUE(std::isnan(bf16_to_fp32(got)));
    } else {
      ASSERT_EQ(got, bf16_from_formula(x)) << std::hexfloat << x;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Golden fixtures

std::vector<char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << "missing fixture " << path
                        << " (run tests/golden/gen_quant_fixtures.py)";
  return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}

struct Golden {
  int64_t n_rows = 0, n = 0;
  std::vector<float> input;  // [n_rows, n]
  nlohmann::json types;
};

const std::string kGoldenDir = std::string(QILIN_TEST_DATA_DIR) + "/golden/quants/";

Golden load_golden() {
  Golden g;
  const std::vector<char> m = read_file(kGoldenDir + "manifest.json");
  const nlohmann::json j = nlohmann::json::parse(m.begin(), m.end());
  g.n_rows = j.at("n_rows");
  g.n = j.at("n");
  const std::vector<char> in = read_file(kGoldenDir + j.at("input").get<std::string>());
  g.input.resize(static_cast<size_t>(g.n_rows * g.n));
  EXPECT_EQ(in.size(), g.input.size() * sizeof(float));
  std::memcpy(g.input.data(), in.data(), std::min(in.size(), g.input.size() * sizeof(float)));
  g.types = j.at("types");
  return g;
}

DType dtype_from_name(const std::string& name) {
  for (DType t : {DType::F16, DType::BF16, DType::Q4_0, DType::Q4_1, DType::Q8_0, DType::Q8_1,
                  DType::F32, DType::Q5_0, DType::Q5_1, DType::IQ4_NL, DType::Q2_K, DType::Q3_K,
                  DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q8_K, DType::IQ4_XS})
    if (name == dtype_name(t)) return t;
  ADD_FAILURE() << "unknown type in manifest: " << name;
  return DType::F32;
}

TEST(QuantRef, QuantizeMatchesGolden) {
  const Golden g = load_golden();
  for (const char* t : {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q8_K", "IQ4_NL", "Q4_K",
                        "Q5_K", "Q6_K"}) {
    ASSERT_TRUE(g.types.contains(t)) << t;
  }
  for (const auto& [name, info] : g.types.items()) {
    const DType t = dtype_from_name(name);
    const size_t rb = row_bytes(t, g.n);
    ASSERT_EQ(rb, info.at("row_bytes").get<size_t>()) << name;
    const std::vector<char> want = read_file(kGoldenDir + info.at("quant").get<std::string>());
    ASSERT_EQ(want.size(), rb * g.n_rows) << name;
    std::vector<char> got(rb);
    for (int64_t r = 0; r < g.n_rows; ++r) {
      quantize_row_ref(t, g.input.data() + r * g.n, got.data(), g.n);
      EXPECT_EQ(0, std::memcmp(got.data(), want.data() + r * rb, rb)) << name << " row " << r;
    }
  }
}

// Compares dequantize_row_ref of each row of `info`'s blocks with its "dequant" file: n_rows rows
// of n elements.
void expect_dequantize_matches(const std::string& name, const nlohmann::json& info, int64_t n_rows,
                               int64_t n) {
  const DType t = dtype_from_name(name);
  const size_t rb = row_bytes(t, n);
  ASSERT_EQ(rb, info.at("row_bytes").get<size_t>()) << name;
  const std::vector<char> q = read_file(kGoldenDir + info.at("quant").get<std::string>());
  const std::vector<char> want = read_file(kGoldenDir + info.at("dequant").get<std::string>());
  ASSERT_EQ(q.size(), rb * n_rows) << name;
  ASSERT_EQ(want.size(), static_cast<size_t>(n_rows * n) * sizeof(float)) << name;
  std::vector<float> got(static_cast<size_t>(n));
  for (int64_t r = 0; r < n_rows; ++r) {
    dequantize_row_ref(t, q.data() + r * rb, got.data(), n);
    EXPECT_EQ(0, std::memcmp(got.data(), want.data() + r * n * 4, n * 4)) << name << " row " << r;
  }
}

// The newer formats' dequantization, on pseudo-random blocks (every code and sub-block scale
// bit pattern), bit-exact with gguf-py and ggml's C reference.
TEST(QuantRef, DequantizeRandomBlocksMatchGolden) {
  const std::vector<char> m = read_file(kGoldenDir + "manifest.json");
  const nlohmann::json j = nlohmann::json::parse(m.begin(), m.end());
  const nlohmann::json& blocks = j.at("blocks");
  for (const char* name :
       {"Q5_0", "Q5_1", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ4_XS"}) {
    ASSERT_TRUE(blocks.contains(name)) << name;
    expect_dequantize_matches(name, blocks.at(name), j.at("n_block_rows"), j.at("n"));
  }
}

// The quantized input rows: only the older types carry their dequantization here; the newer
// ones are checked on random blocks above.
TEST(QuantRef, DequantizeMatchesGolden) {
  const Golden g = load_golden();
  int checked = 0;
  for (const auto& [name, info] : g.types.items()) {
    if (!info.contains("dequant")) continue;
    ++checked;
    expect_dequantize_matches(name, info, g.n_rows, g.n);
  }
  EXPECT_GE(checked, 6);
}

// The activation converters of every ISA reproduce the reference bytes on the golden rows.
TEST(QuantKernels, ActivationQuantizersMatchGolden) {
  const Golden g = load_golden();
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (!cpu_supports(isa)) continue;
    for (DType w : {DType::Q4_0, DType::Q4_1, DType::F16, DType::BF16}) {
      const MatmulKernels* k = matmul_kernels(w, isa);
      ASSERT_NE(k, nullptr);
      const std::string name = dtype_name(k->vec_dot_type);
      const size_t rb = row_bytes(k->vec_dot_type, g.n);
      const std::vector<char> want =
          read_file(kGoldenDir + g.types.at(name).at("quant").get<std::string>());
      std::vector<char> got(rb);
      for (int64_t r = 0; r < g.n_rows; ++r) {
        k->quantize_act(g.input.data() + r * g.n, got.data(), g.n);
        EXPECT_EQ(0, std::memcmp(got.data(), want.data() + r * rb, rb))
            << isa_name(isa) << " " << name << " row " << r;
      }
    }
  }
}

// A model with NaN or infinite weights makes non-finite activations, which the forward pass
// quantizes to Q8_0/Q8_1: the reference must not convert NaN to int8 (undefined behaviour, found
// by fuzz/gguf_model; fails under the sanitizer build of scripts/test.sh before the fix). Finite
// blocks are unaffected; a block holding NaN or Inf gets code 0 where the product is NaN.
TEST(QuantRef, Q8NonFiniteInputIsDefined) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> x(64);
  for (int i = 0; i < 64; ++i) x[i] = 0.25f * (i - 32);
  x[3] = nan;     // first block: NaN among finite values
  x[40] = inf;    // second block: Inf (scale Inf, inverse 0, Inf * 0 = NaN)
  x[41] = -inf;
  BlockQ8_0 q0[2];
  quantize_row_ref(DType::Q8_0, x.data(), q0, 64);
  EXPECT_EQ(q0[0].qs[3], 0);
  EXPECT_EQ(q0[1].qs[40 - 32], 0);
  EXPECT_EQ(q0[1].qs[41 - 32], 0);
  EXPECT_EQ(q0[0].qs[0], -127);  // the block's largest finite magnitude keeps its code
  BlockQ8_1 q1[2];
  quantize_row_ref(DType::Q8_1, x.data(), q1, 64);
  EXPECT_EQ(q1[0].qs[3], 0);
  EXPECT_EQ(q1[1].qs[40 - 32], 0);
}

// Round trip: Q8 is within half a step, Q4_0 within half a step except the clamped top code.
TEST(QuantRef, RoundTripError) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t n = 1024;
  std::vector<float> x(n), y(n);
  for (float& v : x) v = nd(rng);
  std::vector<uint8_t> buf(row_bytes(DType::Q8_0, n) + 64);
  for (DType t : {DType::Q8_0, DType::Q8_1, DType::Q4_0, DType::Q4_1}) {
    quantize_row_ref(t, x.data(), buf.data(), n);
    dequantize_row_ref(t, buf.data(), y.data(), n);
    const float levels = (t == DType::Q8_0 || t == DType::Q8_1) ? 127.0f : 7.0f;
    for (int64_t b = 0; b < n / kQK; ++b) {
      float amax = 0, lo = INFINITY, hi = -INFINITY;
      for (int j = 0; j < kQK; ++j) {
        amax = std::max(amax, std::fabs(x[b * kQK + j]));
        lo = std::min(lo, x[b * kQK + j]);
        hi = std::max(hi, x[b * kQK + j]);
      }
      // Q4_0's step is amax/8, but the positive side only reaches 7 steps: allow one full step
      // Half a step, plus the scale's (and Q4_1's minimum's) rounding to f16, 2^-11 relative,
      // times the largest code; Q4_0's positive side reaches only 7 of its 8 steps: one step.
      const float step = t == DType::Q4_1   ? (hi - lo) / 15
                         : t == DType::Q4_0 ? amax / 8
                                            : amax / levels;
      const float slack =
          (t == DType::Q4_0 ? 1.0f : 0.5f) + (t == DType::Q4_1 ? 15 : levels + 1) / 2048.0f;
      const float m_err = t == DType::Q4_1 ? std::fabs(lo) / 2048.0f : 0.0f;
      for (int j = 0; j < kQK; ++j) {
        const int64_t i = b * kQK + j;
        ASSERT_LE(std::fabs(x[i] - y[i]), step * slack + m_err + 1e-6f)
            << dtype_name(t) << " " << i;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// SIMD kernels vs the scalar reference

constexpr DType kWeightTypes[] = {DType::Q4_0, DType::Q4_1, DType::Q8_0,
                                  DType::F16,  DType::BF16, DType::F32};
constexpr Isa kSimdIsas[] = {Isa::Avx2, Isa::Avx512};

bool is_quantized(DType t) { return dtype_info(t).block_size > 1; }

// Lengths: multiples of 32 that are not multiples of 64/128 (odd block counts hit every tail
// path), the model's 576 / 1536, and for plain types lengths that are not multiples of 8 or 16.
std::vector<int64_t> test_lengths(DType t) {
  std::vector<int64_t> v = {32, 64, 96, 128, 160, 192, 224, 288, 576, 1536, 4128, 32 * 37};
  if (!is_quantized(t)) {
    for (int64_t n : {1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 47, 63, 65, 100, 1000, 4133})
      v.push_back(n);
  }
  return v;
}

struct DotCase {
  std::vector<uint8_t> w, a;  // weight row in `weight`, activation row in vec_dot_type
  double magnitude = 0;       // an upper bound on sum |term| that the kernels add in f32
  int64_t n_terms = 0;        // how many f32 terms are summed
};

// Random float inputs -> reference quantization of both rows (activations through the scalar
// quantize_act, so both kernels see the same bytes).
DotCase make_random_case(DType wt, int64_t n, std::mt19937& rng) {
  const MatmulKernels* ref = matmul_kernels(wt, Isa::Scalar);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> scale(-2.0f, 2.0f);
  std::vector<float> wf(n), af(n);
  // block-wise varying scales so the per-block scale handling is exercised
  for (int64_t i = 0; i < n; ++i) {
    if (i % 32 == 0) {
      const float s = std::pow(10.0f, scale(rng));
      for (int64_t j = i; j < std::min(n, i + 32); ++j) wf[j] = nd(rng) * s;
    }
    af[i] = nd(rng) * 3.0f;
  }
  DotCase c;
  c.w.resize(row_bytes(wt, n));
  c.a.resize(row_bytes(ref->vec_dot_type, n));
  quantize_row_ref(wt, wf.data(), c.w.data(), n);
  ref->quantize_act(af.data(), c.a.data(), n);
  std::vector<float> wd(n), ad(n);
  dequantize_row_ref(wt, c.w.data(), wd.data(), n);
  dequantize_row_ref(ref->vec_dot_type, c.a.data(), ad.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    double wi = std::fabs(static_cast<double>(wd[i]));
    if (wt == DType::Q4_1) {  // d*q and the minimum m enter as separate terms
      const BlockQ4_1& b = reinterpret_cast<const BlockQ4_1*>(c.w.data())[i / kQK];
      wi = std::fabs(fp16_to_fp32(b.d) * ((b.qs[i % 16] >> (i % 32 >= 16 ? 4 : 0)) & 15)) +
           std::fabs(fp16_to_fp32(b.m)) * 1.01;  // 1.01: s is d_a * sum(q_a) rounded to f16
    }
    c.magnitude += wi * std::fabs(static_cast<double>(ad[i]));
  }
  c.n_terms = is_quantized(wt) ? (wt == DType::Q4_1 ? 2 : 1) * n / kQK : n;
  return c;
}

// Integer-valued inputs whose partial sums stay below 2^24: every kernel must be exact, so a
// dropped or doubled element cannot hide inside a rounding tolerance.
DotCase make_exact_case(DType wt, int64_t n, std::mt19937& rng) {
  std::uniform_int_distribution<int> small(-16, 16), q8(-127, 127), q4(0, 15), mins(-2, 2);
  DotCase c;
  const uint16_t one = fp32_to_fp16(1.0f);
  const int64_t nb = n / kQK;
  switch (wt) {
    case DType::Q4_0:
    case DType::Q4_1:
    case DType::Q8_0: {
      c.w.resize(row_bytes(wt, n));
      const DType at = wt == DType::Q4_1 ? DType::Q8_1 : DType::Q8_0;
      c.a.resize(row_bytes(at, n));
      for (int64_t b = 0; b < nb; ++b) {
        int asum = 0;
        int8_t* aq = at == DType::Q8_1 ? reinterpret_cast<BlockQ8_1*>(c.a.data())[b].qs
                                       : reinterpret_cast<BlockQ8_0*>(c.a.data())[b].qs;
        for (int j = 0; j < kQK; ++j) asum += aq[j] = static_cast<int8_t>(q8(rng));
        if (at == DType::Q8_1) {
          reinterpret_cast<BlockQ8_1*>(c.a.data())[b].d = one;
          reinterpret_cast<BlockQ8_1*>(c.a.data())[b].s = fp32_to_fp16(static_cast<float>(asum));
        } else {
          reinterpret_cast<BlockQ8_0*>(c.a.data())[b].d = one;
        }
        if (wt == DType::Q8_0) {
          BlockQ8_0& x = reinterpret_cast<BlockQ8_0*>(c.w.data())[b];
          x.d = one;
          for (int j = 0; j < kQK; ++j) x.qs[j] = static_cast<int8_t>(small(rng));
        } else {
          uint8_t* qs = wt == DType::Q4_0 ? reinterpret_cast<BlockQ4_0*>(c.w.data())[b].qs
                                          : reinterpret_cast<BlockQ4_1*>(c.w.data())[b].qs;
          for (int j = 0; j < 16; ++j) qs[j] = static_cast<uint8_t>(q4(rng) | q4(rng) << 4);
          if (wt == DType::Q4_0) {
            reinterpret_cast<BlockQ4_0*>(c.w.data())[b].d = one;
          } else {
            reinterpret_cast<BlockQ4_1*>(c.w.data())[b].d = one;
            reinterpret_cast<BlockQ4_1*>(c.w.data())[b].m =
                fp32_to_fp16(static_cast<float>(mins(rng)));
          }
        }
      }
      break;
    }
    case DType::F16:
    case DType::BF16: {
      c.w.resize(2 * n);
      c.a.resize(2 * n);
      uint16_t* w = reinterpret_cast<uint16_t*>(c.w.data());
      uint16_t* a = reinterpret_cast<uint16_t*>(c.a.data());
      for (int64_t i = 0; i < n; ++i) {
        const float wi = static_cast<float>(small(rng)), ai = static_cast<float>(small(rng));
        w[i] = wt == DType::F16 ? fp32_to_fp16(wi) : fp32_to_bf16(wi);
        a[i] = wt == DType::F16 ? fp32_to_fp16(ai) : fp32_to_bf16(ai);
      }
      break;
    }
    default: {
      c.w.resize(4 * n);
      c.a.resize(4 * n);
      float* w = reinterpret_cast<float*>(c.w.data());
      float* a = reinterpret_cast<float*>(c.a.data());
      for (int64_t i = 0; i < n; ++i) {
        w[i] = static_cast<float>(small(rng));
        a[i] = static_cast<float>(small(rng));
      }
    }
  }
  return c;
}

TEST(QuantKernels, DispatchTable) {
  EXPECT_TRUE(cpu_supports(Isa::Scalar));
  EXPECT_TRUE(cpu_supports(cpu_best_isa()));
  EXPECT_STREQ(isa_name(Isa::Avx512), "avx512");
  GTEST_LOG_(INFO) << "best ISA: " << isa_name(cpu_best_isa()) << ", avx2 "
                   << cpu_supports(Isa::Avx2) << ", avx512 " << cpu_supports(Isa::Avx512);
  if (cpu_supports(Isa::Avx512)) {
    EXPECT_TRUE(cpu_supports(Isa::Avx2));
  }
  const std::pair<DType, DType> expect[] = {{DType::Q4_0, DType::Q8_0}, {DType::Q4_1, DType::Q8_1},
                                            {DType::Q8_0, DType::Q8_0}, {DType::F16, DType::F16},
                                            {DType::BF16, DType::BF16}, {DType::F32, DType::F32}};
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    for (auto [w, a] : expect) {
      const MatmulKernels* k = matmul_kernels(w, isa);
      ASSERT_NE(k, nullptr) << isa_name(isa) << " " << dtype_name(w);
      EXPECT_EQ(k->weight, w);
      EXPECT_EQ(k->vec_dot_type, a);
      EXPECT_NE(k->vec_dot, nullptr);
      EXPECT_NE(k->quantize_act, nullptr);
    }
    // The formats of quants_k.h: the generic dequantizing dot against F32 activations.
    for (DType w : {DType::Q5_0, DType::Q5_1, DType::IQ4_NL, DType::Q2_K, DType::Q3_K, DType::Q4_K,
                    DType::Q5_K, DType::Q6_K, DType::Q8_K, DType::IQ4_XS}) {
      const MatmulKernels* k = matmul_kernels(w, isa);
      ASSERT_NE(k, nullptr) << isa_name(isa) << " " << dtype_name(w);
      EXPECT_EQ(k->weight, w);
      EXPECT_EQ(k->vec_dot_type, DType::F32);
    }
    EXPECT_EQ(matmul_kernels(DType::IQ2_XXS, isa), nullptr);
  }
  EXPECT_EQ(matmul_kernels(DType::Q8_0), matmul_kernels(DType::Q8_0, cpu_best_isa()));
}

TEST(QuantKernels, VecDotExactOnIntegerData) {
  std::mt19937 rng(11);
  for (DType wt : kWeightTypes) {
    const MatmulKernels* ref = matmul_kernels(wt, Isa::Scalar);
    for (int64_t n : test_lengths(wt)) {
      const DotCase c = make_exact_case(wt, n, rng);
      const float want = ref->vec_dot(n, c.w.data(), c.a.data());
      ASSERT_TRUE(std::isfinite(want));
      for (Isa isa : kSimdIsas) {
        if (!cpu_supports(isa)) continue;
        const float got = matmul_kernels(wt, isa)->vec_dot(n, c.w.data(), c.a.data());
        ASSERT_EQ(got, want) << isa_name(isa) << " " << dtype_name(wt) << " n=" << n;
      }
    }
  }
}

// Tolerance: each kernel adds n_terms f32 terms (block products or element products) in some
// order, possibly rounding each product once. Any such order is within (n_terms + 1) * u of
// sum |term| (u = 2^-24, first order), so two kernels differ by at most twice that.
TEST(QuantKernels, VecDotMatchesScalarOnRandomData) {
  std::mt19937 rng(5);
  int checked = 0;
  for (DType wt : kWeightTypes) {
    const MatmulKernels* ref = matmul_kernels(wt, Isa::Scalar);
    for (int64_t n : test_lengths(wt)) {
      for (int rep = 0; rep < 3; ++rep) {
        const DotCase c = make_random_case(wt, n, rng);
        const float want = ref->vec_dot(n, c.w.data(), c.a.data());
        ASSERT_TRUE(std::isfinite(want));
        const double tol = 2.0 * (c.n_terms + 1) * std::ldexp(1.0, -24) * c.magnitude + 1e-30;
        for (Isa isa : kSimdIsas) {
          if (!cpu_supports(isa)) continue;
          const float got = matmul_kernels(wt, isa)->vec_dot(n, c.w.data(), c.a.data());
          ASSERT_TRUE(std::isfinite(got)) << isa_name(isa) << " " << dtype_name(wt) << " n=" << n;
          ASSERT_LE(std::fabs(static_cast<double>(got) - want), tol)
              << isa_name(isa) << " " << dtype_name(wt) << " n=" << n << " got " << got << " want "
              << want << " magnitude " << c.magnitude;
          ++checked;
        }
      }
    }
  }
  if (!cpu_supports(Isa::Avx2)) GTEST_SKIP() << "no SIMD ISA on this CPU";
  EXPECT_GT(checked, 0);
}

// The SIMD activation converters follow the same f32 operations as the reference (and emulate
// roundf's halves-away-from-zero exactly), so they must produce identical bytes.
TEST(QuantKernels, ActivationQuantizersMatchScalar) {
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const float inf = std::numeric_limits<float>::infinity();
  for (DType wt : {DType::Q4_0, DType::Q4_1, DType::F16, DType::BF16}) {
    const MatmulKernels* ref = matmul_kernels(wt, Isa::Scalar);
    const DType at = ref->vec_dot_type;
    for (int64_t n : test_lengths(at)) {
      for (int variant = 0; variant < 5; ++variant) {
        std::vector<float> x(n);
        for (int64_t i = 0; i < n; ++i) {
          switch (variant) {
            case 0:
              x[i] = nd(rng);
              break;
            case 1:
              x[i] = nd(rng) * 1e4f;
              break;
            case 2:
              x[i] = static_cast<float>(static_cast<int>(rng() % 255) - 127) * 0.5f;
              break;  // ties
            case 3:
              x[i] = nd(rng) * 1e-40f;
              break;  // subnormal inputs
            default:
              x[i] = i % 32 == 5 ? 0.0f : nd(rng) * (i % 3 == 0 ? -1.0f : 1.0f);
          }
        }
        if (variant == 2 && n >= 32)
          x[0] = 127.0f;                    // scale exactly 1 in the first block: real ties
        if (!is_quantized(at) && n >= 4) {  // plain types must also agree on specials
          x[0] = inf;
          x[1] = -inf;
          x[2] = std::numeric_limits<float>::quiet_NaN();
          x[3] = bits_to_f32(0x7f800001);  // signalling NaN
        }
        std::vector<uint8_t> want(row_bytes(at, n)), got(row_bytes(at, n));
        ref->quantize_act(x.data(), want.data(), n);
        for (Isa isa : kSimdIsas) {
          if (!cpu_supports(isa)) continue;
          std::fill(got.begin(), got.end(), 0xcd);
          matmul_kernels(wt, isa)->quantize_act(x.data(), got.data(), n);
          ASSERT_EQ(got, want) << isa_name(isa) << " " << dtype_name(at) << " n=" << n
                               << " variant " << variant;
        }
      }
    }
  }
}

}  // namespace
}  // namespace qilin
