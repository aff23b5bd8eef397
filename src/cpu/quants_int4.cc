// Reference (de)quantizers and scalar dot products for Qilin's 4-bit formats (quants_int4.h).
// Scalar dots keep exact integer block sums and add (d_w * d_a) * sum in f32, as the SIMD
// kernels do; NF4 codes enter the integer sums as round(v * 2^12), so a 32-element partial sum
// stays below 2^24 (32 * 4096 * 127) and converts to f32 exactly.
#include "cpu/quants_int4.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/assert.h"
#include "core/fp16.h"
#include "cpu/quants.h"
#include "cpu/quants_int4_driver.h"

namespace qilin {

const float kNf4Values[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

namespace {

template <int G>
void quantize_qi4(const float* x, void* dst, int64_t n) {
  auto* y = static_cast<BlockQI4<G>*>(dst);
  for (int64_t b = 0; b < n / G; ++b, x += G) {
    float mn = x[0], mx = x[0];
    for (int j = 1; j < G; ++j) {
      mn = std::min(mn, x[j]);
      mx = std::max(mx, x[j]);
    }
    // AWQ's pseudo_quantize_tensor: scale = max(max - min, 1e-5) / 15, zero = -round(min /
    // scale) clamped to the codes; round() is torch's (halves to even), nearbyint here. The
    // scale is rounded to f16 first so that the codes are chosen for the stored scale.
    const uint16_t d16 = fp32_to_fp16(std::max(mx - mn, 1e-5f) / 15.0f);
    const float d = fp16_to_fp32(d16);
    const float z = std::clamp(-std::nearbyint(mn / d), 0.0f, 15.0f);
    y[b].d = d16;
    y[b].z = static_cast<uint8_t>(z);
    uint8_t q[G];
    for (int j = 0; j < G; ++j) q[j] = static_cast<uint8_t>(std::clamp(std::nearbyint(x[j] / d) + z, 0.0f, 15.0f));
    for (int j = 0; j < G / 2; ++j) y[b].qs[j] = static_cast<uint8_t>(q[j] | q[j + G / 2] << 4);
  }
}

template <int G>
void dequantize_qi4(const void* src, float* y, int64_t n) {
  const auto* x = static_cast<const BlockQI4<G>*>(src);
  for (int64_t b = 0; b < n / G; ++b, y += G) {
    const float d = fp16_to_fp32(x[b].d);
    const int z = x[b].z;
    for (int j = 0; j < G / 2; ++j) {
      y[j] = static_cast<float>((x[b].qs[j] & 15) - z) * d;
      y[j + G / 2] = static_cast<float>((x[b].qs[j] >> 4) - z) * d;
    }
  }
}

// One NF4 block: absmax (bitsandbytes multiplies by its inverse) and nearest codes.
float quantize_nf4_codes(const float* x, uint8_t* qs) {
  float amax = 0.0f;
  for (int j = 0; j < kQKNf4; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float inv = amax > 0.0f ? 1.0f / amax : 0.0f;
  for (int j = 0; j < kQKNf4 / 2; ++j) {
    qs[j] = static_cast<uint8_t>(nf4_index(x[j] * inv) | nf4_index(x[j + kQKNf4 / 2] * inv) << 4);
  }
  return amax;
}

void dequantize_nf4_codes(const uint8_t* qs, float d, float* y) {
  for (int j = 0; j < kQKNf4 / 2; ++j) {
    y[j] = kNf4Values[qs[j] & 15] * d;
    y[j + kQKNf4 / 2] = kNf4Values[qs[j] >> 4] * d;
  }
}

void quantize_nf4dq(const float* x, uint8_t* p, int64_t n) {
  const int64_t nb = n / kQKNf4;
  float scales[kNf4DqGroup];
  for (int64_t g0 = 0; g0 < nb; g0 += kNf4DqGroup) {
    const int k = static_cast<int>(std::min<int64_t>(kNf4DqGroup, nb - g0));
    auto* h = reinterpret_cast<Nf4DqHeader*>(p);
    auto* sq = reinterpret_cast<int8_t*>(p + sizeof(Nf4DqHeader));
    uint8_t* qs = p + sizeof(Nf4DqHeader) + k;
    double sum = 0.0;
    for (int b = 0; b < k; ++b) {
      scales[b] = quantize_nf4_codes(x + (g0 + b) * kQKNf4, qs + b * (kQKNf4 / 2));
      sum += scales[b];
    }
    // Second level: the mean is subtracted (absmaxes are all positive, so this centres them and
    // the symmetric int8 code uses its whole range), then absmax int8 quantization.
    const uint16_t mean16 = fp32_to_fp16(static_cast<float>(sum / k));
    const float mean = fp16_to_fp32(mean16);
    float dev = 0.0f;
    for (int b = 0; b < k; ++b) dev = std::max(dev, std::fabs(scales[b] - mean));
    const uint16_t c16 = fp32_to_fp16(dev / 127.0f);
    const float c = fp16_to_fp32(c16);
    h->c = c16;
    h->mean = mean16;
    for (int b = 0; b < k; ++b) {
      const float q = c > 0.0f ? std::nearbyint((scales[b] - mean) / c) : 0.0f;
      sq[b] = static_cast<int8_t>(std::clamp(q, -127.0f, 127.0f));
    }
    p += sizeof(Nf4DqHeader) + k + k * (kQKNf4 / 2);
  }
}

}  // namespace

bool is_int4_type(DType t) {
  return t == DType::QI4_G32 || t == DType::QI4_G64 || t == DType::QI4_G128 || t == DType::NF4 ||
         t == DType::NF4_DQ;
}

int qi4_group(DType t) {
  switch (t) {
    case DType::QI4_G32: return 32;
    case DType::QI4_G64: return 64;
    case DType::QI4_G128: return 128;
    default: return 0;
  }
}

int nf4_index(float x) {
  // Decision thresholds are the midpoints between neighbouring codes (bitsandbytes' dQuantizeNF4
  // compares x > midpoint, so a tie goes to the lower code).
  int i = 0;
  for (int k = 0; k < 15; ++k) i += x > 0.5f * (kNf4Values[k] + kNf4Values[k + 1]);
  return i;
}

void nf4dq_row_scales(const void* row, int64_t n, float* scales) {
  for_nf4dq_blocks(row, n, [&](int64_t b, float d, const uint8_t*) { scales[b] = d; });
}

void quantize_row_int4(DType t, const float* src, void* dst, int64_t n) {
  QILIN_ASSERT(n % dtype_info(t).block_size == 0);
  switch (t) {
    case DType::QI4_G32: return quantize_qi4<32>(src, dst, n);
    case DType::QI4_G64: return quantize_qi4<64>(src, dst, n);
    case DType::QI4_G128: return quantize_qi4<128>(src, dst, n);
    case DType::NF4: {
      auto* y = static_cast<BlockNF4*>(dst);
      for (int64_t b = 0; b < n / kQKNf4; ++b) y[b].d = quantize_nf4_codes(src + b * kQKNf4, y[b].qs);
      return;
    }
    case DType::NF4_DQ: return quantize_nf4dq(src, static_cast<uint8_t*>(dst), n);
    default: QILIN_ASSERT(!"quantize_row_int4: not a 4-bit Qilin type");
  }
}

void dequantize_row_int4(DType t, const void* src, float* dst, int64_t n) {
  QILIN_ASSERT(n % dtype_info(t).block_size == 0);
  switch (t) {
    case DType::QI4_G32: return dequantize_qi4<32>(src, dst, n);
    case DType::QI4_G64: return dequantize_qi4<64>(src, dst, n);
    case DType::QI4_G128: return dequantize_qi4<128>(src, dst, n);
    case DType::NF4: {
      const auto* x = static_cast<const BlockNF4*>(src);
      for (int64_t b = 0; b < n / kQKNf4; ++b) dequantize_nf4_codes(x[b].qs, x[b].d, dst + b * kQKNf4);
      return;
    }
    case DType::NF4_DQ:
      for_nf4dq_blocks(src, n, [&](int64_t b, float d, const uint8_t* qs) {
        dequantize_nf4_codes(qs, d, dst + b * kQKNf4);
      });
      return;
    default: QILIN_ASSERT(!"dequantize_row_int4: not a 4-bit Qilin type");
  }
}

// ---- scalar kernels ----
namespace scalar {
namespace {

// QI4 group g against its G/32 Q8_1 blocks: d_w * (sum_k d_a[k] * isum_k - z * sum_k s_a[k]);
// Q8_1's s = d_a * sum(q_a) carries the zero point's term, as for Q4_1's minimum.
template <int G>
float vec_dot_qi4(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const BlockQI4<G>*>(w);
  const auto* y = static_cast<const BlockQ8_1*>(a);
  float sum = 0.0f;
  for (int64_t g = 0; g < n / G; ++g) {
    const float d = fp16_to_fp32(x[g].d);
    uint8_t q[G];
    for (int j = 0; j < G / 2; ++j) {
      q[j] = x[g].qs[j] & 15;
      q[j + G / 2] = x[g].qs[j] >> 4;
    }
    float s_a = 0.0f;
    for (int k = 0; k < G / kQK; ++k) {
      const BlockQ8_1& yk = y[g * (G / kQK) + k];
      int isum = 0;
      for (int j = 0; j < kQK; ++j) isum += q[k * kQK + j] * yk.qs[j];
      sum += (d * fp16_to_fp32(yk.d)) * static_cast<float>(isum);
      s_a += fp16_to_fp32(yk.s);
    }
    sum -= d * static_cast<float>(x[g].z) * s_a;
  }
  return sum;
}

// One NF4 block (64 codes) against two Q8_0 blocks: exact integer sums, then (d_w * d_a) * sum.
inline float nf4_block_dot(float d, const uint8_t* qs, const BlockQ8_0* y) {
  int s0 = 0, s1 = 0;
  for (int j = 0; j < kQKNf4 / 2; ++j) {
    s0 += kNf4Int[qs[j] & 15] * y[0].qs[j];
    s1 += kNf4Int[qs[j] >> 4] * y[1].qs[j];
  }
  return (d * fp16_to_fp32(y[0].d)) * static_cast<float>(s0) +
         (d * fp16_to_fp32(y[1].d)) * static_cast<float>(s1);
}

// The scalar kernels of quants_int4_driver.h.
struct Kernels {
  using Acc = float;
  static constexpr bool kPairs = false;
  static Acc zero() { return 0.0f; }
  static Acc nf4_block(Acc acc, float d, const uint8_t* qs, const BlockQ8_0* y) {
    return acc + nf4_block_dot(d, qs, y);
  }
  static float sum(Acc acc) { return acc; }
  template <int G>
  static float qi4(int64_t n, const void* w, const void* a) {
    return vec_dot_qi4<G>(n, w, a);
  }
};

}  // namespace

QILIN_DEFINE_INT4_DOTS(Kernels)

}  // namespace scalar
}  // namespace qilin
