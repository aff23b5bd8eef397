// KV cache element formats: sizes, row conversion and the E4M3 codec. See kv_types.h.
#include "cpu/kv_types.h"

#include <cmath>
#include <cstring>
#include <string>

#include "core/assert.h"
#include "core/fp16.h"
#include "cpu/quants.h"

namespace qilin {

const char* kv_type_name(KvType t) {
  switch (t) {
    case KvType::F32: return "f32";
    case KvType::F16: return "f16";
    case KvType::Q8_0: return "q8_0";
    case KvType::FP8: return "fp8";
    case KvType::BF16: return "bf16";
  }
  return "?";
}

Result<KvType> parse_kv_type(std::string_view name) {
  for (KvType t : {KvType::F32, KvType::F16, KvType::BF16, KvType::Q8_0, KvType::FP8}) {
    if (name == kv_type_name(t)) return t;
  }
  return errorf("unknown KV cache type '%s' (use f32, f16, bf16, q8_0 or fp8)",
                std::string(name).c_str());
}

size_t kv_row_bytes(KvType t, int32_t head_dim) {
  if (head_dim <= 0) return 0;
  const size_t n = static_cast<size_t>(head_dim);
  switch (t) {
    case KvType::F32: return n * 4;
    case KvType::F16:
    case KvType::BF16: return n * 2;
    case KvType::Q8_0: return head_dim % kQK == 0 ? n / kQK * sizeof(BlockQ8_0) : 0;
    case KvType::FP8: return sizeof(float) + n;
  }
  return 0;
}

uint8_t fp32_to_e4m3(float x) {
  const uint32_t u = f32_to_bits(x);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80);
  const float a = std::fabs(x);
  if (!(a < 448.0f)) return sign | 0x7e;  // saturate (448 itself is 0x7e); NaN too
  if (a < 0x1p-6f) {
    // Subnormals and zero: steps of 2^-9; 8 steps (2^-6) is code 0x08, the smallest normal.
    return sign | static_cast<uint8_t>(std::nearbyint(a * 512.0f));
  }
  // Normal: round the f32 mantissa to 3 bits, nearest even (a carry bumps the exponent, which
  // is right); a < 448 keeps the result at most 448 = 0x7e.
  uint32_t b = f32_to_bits(a);
  b += 0x7ffff + ((b >> 20) & 1);
  const uint32_t e = (b >> 23) - (127 - 7), m = (b >> 20) & 7;
  return sign | static_cast<uint8_t>(e << 3 | m);
}

namespace {

float e4m3_value(uint8_t c) {
  const float sign = (c & 0x80) ? -1.0f : 1.0f;
  const int e = (c >> 3) & 15, m = c & 7;
  if (e == 15 && m == 7) return std::nanf("");
  if (e == 0) return sign * std::ldexp(static_cast<float>(m), -9);
  return sign * std::ldexp(1.0f + static_cast<float>(m) / 8.0f, e - 7);
}

struct E4m3Table {
  float v[256];
  E4m3Table() {
    for (int c = 0; c < 256; ++c) v[c] = e4m3_value(static_cast<uint8_t>(c));
  }
};

}  // namespace

float e4m3_to_fp32(uint8_t c) {
  static const E4m3Table table;
  return table.v[c];
}

void kv_quantize_row(KvType t, const float* x, int32_t n, uint8_t* dst) {
  QILIN_ASSERT(kv_row_bytes(t, n) > 0);
  switch (t) {
    case KvType::F32:
      std::memcpy(dst, x, static_cast<size_t>(n) * sizeof(float));
      return;
    case KvType::F16:
      matmul_kernels(DType::F16)->quantize_act(x, dst, n);  // F16C where present
      return;
    case KvType::BF16:
      matmul_kernels(DType::BF16)->quantize_act(x, dst, n);  // integer rounding, AVX2/AVX-512
      return;
    case KvType::Q8_0:
      matmul_kernels(DType::Q8_0)->quantize_act(x, dst, n);  // same blocks as Q8_0 weights
      return;
    case KvType::FP8: {
      float amax = 0.0f;
      for (int32_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
      const float scale = amax / 448.0f;
      const float inv = amax > 0.0f ? 448.0f / amax : 0.0f;
      std::memcpy(dst, &scale, sizeof(float));
      for (int32_t i = 0; i < n; ++i) dst[sizeof(float) + i] = fp32_to_e4m3(x[i] * inv);
      return;
    }
  }
}

void kv_dequantize_row(KvType t, const uint8_t* src, int32_t n, float* y) {
  QILIN_ASSERT(kv_row_bytes(t, n) > 0);
  switch (t) {
    case KvType::F32:
      std::memcpy(y, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case KvType::F16:
      dequantize_row_ref(DType::F16, src, y, n);
      return;
    case KvType::BF16:
      dequantize_row_ref(DType::BF16, src, y, n);
      return;
    case KvType::Q8_0:
      dequantize_row_ref(DType::Q8_0, src, y, n);
      return;
    case KvType::FP8: {
      float scale;
      std::memcpy(&scale, src, sizeof(float));
      for (int32_t i = 0; i < n; ++i) y[i] = e4m3_to_fp32(src[sizeof(float) + i]) * scale;
      return;
    }
  }
}

}  // namespace qilin
