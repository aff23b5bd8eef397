// KV cache element formats: the E4M3 codec against the OCP FP8 definition (anchor values from
// its table, monotone codes, and encoding checked against a brute-force nearest-value search
// with ties to even), the row conversions against the scalar references, and row sizes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "core/fp16.h"
#include "cpu/kv_types.h"
#include "cpu/quants.h"
#include "ops/kv_cache.h"

namespace qilin {
namespace {

TEST(KvTypes, E4m3DecodesTheSpecsAnchorValues) {
  // OCP 8-bit floating point specification, E4M3: bias 7, no infinities, S.1111.111 is NaN.
  EXPECT_EQ(e4m3_to_fp32(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(e4m3_to_fp32(0x80)));
  EXPECT_EQ(e4m3_to_fp32(0x01), std::ldexp(1.0f, -9));   // smallest subnormal
  EXPECT_EQ(e4m3_to_fp32(0x07), 0.875f * std::ldexp(1.0f, -6));  // largest subnormal
  EXPECT_EQ(e4m3_to_fp32(0x08), std::ldexp(1.0f, -6));   // smallest normal
  EXPECT_EQ(e4m3_to_fp32(0x38), 1.0f);
  EXPECT_EQ(e4m3_to_fp32(0x3c), 1.5f);
  EXPECT_EQ(e4m3_to_fp32(0xc0), -2.0f);
  EXPECT_EQ(e4m3_to_fp32(0x7e), 448.0f);                  // largest finite
  EXPECT_TRUE(std::isnan(e4m3_to_fp32(0x7f)));
  EXPECT_TRUE(std::isnan(e4m3_to_fp32(0xff)));
  for (int c = 1; c <= 0x7e; ++c) {  // positive codes are ordered like their values
    ASSERT_LT(e4m3_to_fp32(static_cast<uint8_t>(c - 1)), e4m3_to_fp32(static_cast<uint8_t>(c)));
    ASSERT_EQ(e4m3_to_fp32(static_cast<uint8_t>(c | 0x80)), -e4m3_to_fp32(static_cast<uint8_t>(c)));
  }
}

// The nearest finite E4M3 code to x by exhaustive search; ties go to the even code (even
// mantissa); beyond 448 saturates.
uint8_t nearest_e4m3(float x) {
  const double a = std::fabs(static_cast<double>(x));
  int best = 0;
  double best_d = INFINITY;
  for (int c = 0; c <= 0x7e; ++c) {
    const double d = std::fabs(a - e4m3_to_fp32(static_cast<uint8_t>(c)));
    if (d < best_d || (d == best_d && c % 2 == 0)) {
      best = c;
      best_d = d;
    }
  }
  return static_cast<uint8_t>(best | (std::signbit(x) ? 0x80 : 0));
}

TEST(KvTypes, E4m3EncodesToTheNearestValueTiesToEven) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> mag(-12.0f, 9.5f);
  std::vector<float> xs = {0.0f, -0.0f, 448.0f, 449.0f, 464.0f, 1e6f, -1e6f, 1e-30f,
                           std::ldexp(1.0f, -10),           // half the smallest subnormal: tie to 0
                           std::ldexp(3.0f, -10),           // 1.5 subnormal steps: tie to 2
                           1.0625f, 1.1875f, 240.0f, 3.0f * std::ldexp(1.0f, -7)};
  for (int i = 0; i < 20000; ++i) {
    const float x = std::exp2(mag(rng)) * (i % 2 ? -1.0f : 1.0f);
    xs.push_back(x);
    // Exact midpoints between neighbours too (where ties-to-even decides).
    const uint8_t c = nearest_e4m3(x);
    if ((c & 0x7f) < 0x7e) {
      const float lo = e4m3_to_fp32(c), hi = e4m3_to_fp32(static_cast<uint8_t>(c + 1));
      xs.push_back(0.5f * (lo + hi));
    }
  }
  for (float x : xs) {
    ASSERT_EQ(fp32_to_e4m3(x), nearest_e4m3(x)) << "x = " << x;
  }
}

TEST(KvTypes, RowSizes) {
  EXPECT_EQ(kv_row_bytes(KvType::F32, 64), 256u);
  EXPECT_EQ(kv_row_bytes(KvType::F16, 64), 128u);
  EXPECT_EQ(kv_row_bytes(KvType::BF16, 64), 128u);
  EXPECT_EQ(kv_row_bytes(KvType::BF16, 40), 80u);
  EXPECT_EQ(kv_row_bytes(KvType::Q8_0, 64), 68u);   // 2 blocks of 34
  EXPECT_EQ(kv_row_bytes(KvType::FP8, 64), 68u);    // 4-byte scale + 64 codes
  EXPECT_EQ(kv_row_bytes(KvType::FP8, 128), 132u);
  EXPECT_EQ(kv_row_bytes(KvType::Q8_0, 48), 0u);    // not whole blocks
  EXPECT_EQ(kv_row_bytes(KvType::F16, 40), 80u);    // the reference kernels take any head_dim
  // A token of SmolLM2-135M (30 layers, 3 KV heads of 64), K and V: 2 x 30 x 3 x row bytes.
  KvCacheConfig c;
  c.n_layer = 30;
  c.n_head_kv = 3;
  c.head_dim = 64;
  for (auto [type, bytes] : {std::pair{KvType::F32, 46080u}, std::pair{KvType::F16, 23040u},
                             std::pair{KvType::BF16, 23040u}, std::pair{KvType::Q8_0, 12240u},
                             std::pair{KvType::FP8, 12240u}}) {
    c.type = type;
    EXPECT_EQ(KvCache::bytes_per_token(c), bytes) << kv_type_name(type);
  }
  EXPECT_TRUE(parse_kv_type("q8_0").is_ok());
  for (KvType t : {KvType::F32, KvType::F16, KvType::BF16, KvType::Q8_0, KvType::FP8}) {
    auto parsed = parse_kv_type(kv_type_name(t));
    ASSERT_TRUE(parsed.is_ok()) << kv_type_name(t);
    EXPECT_EQ(*parsed, t);
  }
  auto bad = parse_kv_type("q4_0");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("q4_0"), std::string::npos);
}

TEST(KvTypes, RowConversionsMatchTheScalarReferences) {
  std::mt19937 rng(6);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (int32_t n : {32, 64, 128, 256}) {
    std::vector<float> x(n), y(n);
    for (float& e : x) e = nd(rng);
    // F16: each value rounded to nearest even half.
    std::vector<uint8_t> row(kv_row_bytes(KvType::F16, n));
    kv_quantize_row(KvType::F16, x.data(), n, row.data());
    kv_dequantize_row(KvType::F16, row.data(), n, y.data());
    for (int32_t i = 0; i < n; ++i) ASSERT_EQ(y[i], fp16_to_fp32(fp32_to_fp16(x[i])));
    // BF16: the codes of fp32_to_bf16 (nearest even), also where a tie decides (x[1]: exactly
    // half-way between two bf16 values, odd lower neighbour; x[2]: even lower neighbour).
    x[1] = bits_to_f32(0x3f818000u);
    x[2] = bits_to_f32(0x3f808000u);
    kv_quantize_row(KvType::BF16, x.data(), n, row.data());
    kv_dequantize_row(KvType::BF16, row.data(), n, y.data());
    for (int32_t i = 0; i < n; ++i) {
      uint16_t code;
      std::memcpy(&code, row.data() + 2 * i, 2);
      ASSERT_EQ(code, fp32_to_bf16(x[i])) << "n " << n << " i " << i;
      ASSERT_EQ(y[i], bf16_to_fp32(code));
    }
    EXPECT_EQ(y[1], bits_to_f32(0x3f820000u));
    EXPECT_EQ(y[2], bits_to_f32(0x3f800000u));
    // Q8_0: the same blocks as the scalar Q8_0 quantizer.
    row.assign(kv_row_bytes(KvType::Q8_0, n), 0);
    std::vector<uint8_t> ref(row.size());
    kv_quantize_row(KvType::Q8_0, x.data(), n, row.data());
    quantize_row_ref(DType::Q8_0, x.data(), ref.data(), n);
    ASSERT_EQ(row, ref);
    // FP8: scale = amax / 448, the largest value survives exactly (up to its f32 product),
    // every value within half an E4M3 step of the scaled value.
    row.assign(kv_row_bytes(KvType::FP8, n), 0);
    kv_quantize_row(KvType::FP8, x.data(), n, row.data());
    kv_dequantize_row(KvType::FP8, row.data(), n, y.data());
    float amax = 0.0f;
    for (float e : x) amax = std::max(amax, std::fabs(e));
    const float scale = amax / 448.0f, inv = 448.0f / amax;
    for (int32_t i = 0; i < n; ++i) {
      const float s = x[i] * inv;
      const uint8_t c = nearest_e4m3(s);
      ASSERT_NEAR(y[i], e4m3_to_fp32(c) * scale, 1e-6f * amax) << "n " << n << " i " << i;
      if (std::fabs(x[i]) == amax) {
        ASSERT_NEAR(std::fabs(y[i]), amax, 1e-6f * amax);
      }
    }
  }
  // An all-zero row stays zero (scale 0, no division by zero).
  std::vector<float> z(64, 0.0f), y(64, 1.0f);
  std::vector<uint8_t> row(kv_row_bytes(KvType::FP8, 64));
  kv_quantize_row(KvType::FP8, z.data(), 64, row.data());
  kv_dequantize_row(KvType::FP8, row.data(), 64, y.data());
  for (float e : y) ASSERT_EQ(e, 0.0f);
}

}  // namespace
}  // namespace qilin
