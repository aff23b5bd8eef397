// IEEE half and bfloat16 conversions, scalar and exact (round to nearest even, as F16C does).
#pragma once

#include <cstdint>
#include <cstring>

namespace qilin {

inline float bits_to_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t f32_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  if (exp == 0) {
    if (mant == 0) return bits_to_f32(sign);
    // subnormal: normalise
    int e = -1;
    do { mant <<= 1; ++e; } while ((mant & 0x400) == 0);
    mant &= 0x3ff;
    return bits_to_f32(sign | static_cast<uint32_t>(127 - 15 - e) << 23 | mant << 13);
  }
  // A NaN keeps its payload and becomes quiet, as F16C's VCVTPH2PS makes it.
  if (exp == 31) return bits_to_f32(sign | 0x7f800000 | mant << 13 | (mant ? 0x400000u : 0u));
  return bits_to_f32(sign | (exp + 127 - 15) << 23 | mant << 13);
}

inline uint16_t fp32_to_fp16(float f) {
  const uint32_t x = f32_to_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000;
  const uint32_t ax = x & 0x7fffffff;
  // NaN keeps its top payload bits and becomes quiet, bit for bit as F16C's VCVTPS2PH does, so
  // scalar and SIMD conversions agree even on NaN.
  if (ax > 0x7f800000) return static_cast<uint16_t>(sign | 0x7e00 | (ax >> 13 & 0x3ff));
  if (ax == 0x7f800000) return static_cast<uint16_t>(sign | 0x7c00);
  if (ax >= 0x477ff000) return static_cast<uint16_t>(sign | 0x7c00);  // rounds to inf
  if (ax < 0x38800000) {  // result is subnormal or zero
    if (ax < 0x33000000) return static_cast<uint16_t>(sign);  // below half the smallest subnormal
    const uint32_t e = ax >> 23;
    const uint32_t m = (ax & 0x7fffff) | 0x800000;
    const uint32_t shift = 126 - e;  // 14..24 for this range
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = ((ax >> 23) - 127 + 15) << 10 | (ax & 0x7fffff) >> 13;
  const uint32_t rem = ax & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) ++r;  // may carry into the exponent: correct
  return static_cast<uint16_t>(sign | r);
}

inline float bf16_to_fp32(uint16_t h) { return bits_to_f32(static_cast<uint32_t>(h) << 16); }

// ggml's conversion: NaN stays a quiet NaN, everything else rounds to nearest even.
inline uint16_t fp32_to_bf16(float f) {
  uint32_t u = f32_to_bits(f);
  if ((u & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((u >> 16) | 64);
  return static_cast<uint16_t>((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

}  // namespace qilin
