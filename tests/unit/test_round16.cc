// The 16-bit rounding kernels (cpu/round16.h) of every ISA the CPU has against the scalar
// reference of core/fp16.h, bit for bit: every FP16 and BF16 code widened, and F32 inputs
// covering every exponent, the rounding ties, subnormals, overflow, infinities and NaNs
// (quiet and signalling, with payloads), at lengths that leave a SIMD tail.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "core/fp16.h"
#include "cpu/round16.h"

namespace qilin {
namespace {

uint32_t bits(float f) { return f32_to_bits(f); }

std::vector<float> special_inputs() {
  std::vector<uint32_t> u;
  for (uint32_t sign : {0u, 0x80000000u}) {
    // Every exponent with mantissas at and around FP16 / BF16 rounding boundaries.
    for (uint32_t e = 0; e < 256; ++e) {
      for (uint32_t m : {0x0u, 0x1u, 0xfffu, 0x1000u, 0x1001u, 0x2000u, 0x3000u, 0x7fffu, 0x8000u,
                         0x8001u, 0x18000u, 0x10000u, 0x7fe000u, 0x7ff000u, 0x7fffffu, 0x400000u,
                         0x3fffffu, 0x7f0000u, 0x7fff00u}) {
        u.push_back(sign | e << 23 | m);
      }
    }
    // FP16's edges: largest finite (65504), the tie to infinity (65520), subnormal limits.
    for (uint32_t x : {0x477fe000u, 0x477ff000u, 0x477fefffu, 0x477ff001u, 0x38800000u, 0x387fffffu,
                       0x33000000u, 0x33000001u, 0x32ffffffu, 0x33800000u, 0x33c00000u}) {
      u.push_back(sign | x);
    }
  }
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) u.push_back(rng());
  std::vector<float> f(u.size());
  for (size_t i = 0; i < u.size(); ++i) f[i] = bits_to_f32(u[i]);
  return f;
}

TEST(Round16, EveryIsaIsBitIdenticalToTheScalarReference) {
  const std::vector<float> in = special_inputs();
  std::vector<uint16_t> all_codes(65536);
  for (uint32_t i = 0; i < 65536; ++i) all_codes[i] = static_cast<uint16_t>(i);
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (!cpu_supports(isa)) continue;
    const Round16Kernels& k = round16_kernels(isa);
    SCOPED_TRACE(isa_name(isa));
    // Lengths 1..37 over a slice, then the whole input: every tail length of 8 and 16 lanes.
    for (int64_t len : {int64_t{1}, int64_t{7}, int64_t{15}, int64_t{17}, int64_t{37},
                        static_cast<int64_t>(in.size())}) {
      for (bool bf : {false, true}) {
        std::vector<float> x(in.begin(), in.begin() + len);
        (bf ? k.round_bf16 : k.round_f16)(x.data(), len);
        std::vector<uint16_t> h(len);
        (bf ? k.to_bf16 : k.to_f16)(in.data(), h.data(), len);
        for (int64_t i = 0; i < len; ++i) {
          const uint16_t want_h = bf ? fp32_to_bf16(in[i]) : fp32_to_fp16(in[i]);
          const float want = bf ? bf16_to_fp32(want_h) : fp16_to_fp32(want_h);
          ASSERT_EQ(bits(x[i]), bits(want))
              << (bf ? "bf16" : "fp16") << " round of 0x" << std::hex << bits(in[i]);
          ASSERT_EQ(h[i], want_h) << (bf ? "bf16" : "fp16") << " code of 0x" << std::hex
                                  << bits(in[i]);
        }
      }
    }
    for (bool bf : {false, true}) {
      std::vector<float> x(65536);
      (bf ? k.from_bf16 : k.from_f16)(all_codes.data(), x.data(), 65536);
      for (uint32_t i = 0; i < 65536; ++i) {
        const float want =
            bf ? bf16_to_fp32(static_cast<uint16_t>(i)) : fp16_to_fp32(static_cast<uint16_t>(i));
        ASSERT_EQ(bits(x[i]), bits(want)) << (bf ? "bf16" : "fp16") << " code 0x" << std::hex << i;
      }
    }
  }
}

// The reference itself on values whose results are known.
TEST(Round16, ReferenceRoundsToNearestEven) {
  EXPECT_EQ(fp16_to_fp32(fp32_to_fp16(65504.0f)), 65504.0f);
  EXPECT_TRUE(std::isinf(fp16_to_fp32(fp32_to_fp16(65520.0f))));  // the tie goes to infinity
  EXPECT_EQ(fp16_to_fp32(fp32_to_fp16(65519.0f)), 65504.0f);
  EXPECT_EQ(fp16_to_fp32(fp32_to_fp16(1.0f + 0x1p-11f)), 1.0f);  // tie to even
  EXPECT_EQ(fp16_to_fp32(fp32_to_fp16(1.0f + 3 * 0x1p-11f)), 1.0f + 0x1p-9f);
  EXPECT_EQ(fp16_to_fp32(fp32_to_fp16(0x1p-25f)), 0.0f);  // half the smallest subnormal: even
  EXPECT_EQ(fp16_to_fp32(fp32_to_fp16(0x1.8p-25f)), 0x1p-24f);
  EXPECT_EQ(bf16_to_fp32(fp32_to_bf16(1.0f + 0x1p-8f)), 1.0f);  // tie to even
  EXPECT_EQ(bf16_to_fp32(fp32_to_bf16(1.0f + 3 * 0x1p-8f)), 1.0f + 0x1p-6f);
  EXPECT_EQ(bf16_to_fp32(fp32_to_bf16(0x1p-130f)), 0x1p-130f);  // subnormal kept, not flushed
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(bits_to_f32(0x7f800001u)))));  // sNaN stays NaN
}

}  // namespace
}  // namespace qilin
