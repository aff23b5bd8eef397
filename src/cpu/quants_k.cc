// Scalar references for the K-quants and the later 32-element formats (quants_k.h).
// Dequantization first unpacks a block's integer codes, then applies each sub-block's
// x = scale * q - offset with the two products rounded separately, as ggml's C does.
// NOTE: compiled without -mfma (like quants.cc), so no product is fused into an addition.
#include "cpu/quants_k.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "core/assert.h"
#include "core/fp16.h"

namespace qilin {
namespace {

// ---- unpacking codes ----

// Nibble planes: each group of g bytes holds 2g codes, the low nibbles first.
void unpack_nibbles(const uint8_t* qs, int g, int n, int8_t* q) {
  for (int c = 0; c < n / (2 * g); ++c, qs += g, q += 2 * g) {
    for (int p = 0; p < g; ++p) {
      q[p] = static_cast<int8_t>(qs[p] & 15);
      q[p + g] = static_cast<int8_t>(qs[p] >> 4);
    }
  }
}

// Two-bit planes over 256 codes: per 128, 32 bytes; code 32*s + l at bits 2s of byte l.
void unpack_crumbs(const uint8_t* qs, int8_t* q) {
  for (int h = 0; h < 2; ++h, qs += 32, q += 128) {
    for (int s = 0; s < 4; ++s) {
      for (int l = 0; l < 32; ++l) q[32 * s + l] = static_cast<int8_t>((qs[l] >> (2 * s)) & 3);
    }
  }
}

// Bit b of bits[l] is bit 0 of element 32*b + l, for 256 elements.
bool plane_bit(const uint8_t* bits, int e) { return (bits[e % 32] >> (e / 32)) & 1; }

// The 4 bytes of qh as one little-endian word: bit j belongs to element j.
void add_q5_high_bits(const uint8_t qh[4], int8_t* q) {
  for (int j = 0; j < 32; ++j) {
    if ((qh[j / 8] >> (j % 8)) & 1) q[j] = static_cast<int8_t>(q[j] | 16);
  }
}

// Q4_K / Q5_K: six-bit scale and min of sub-block j. Sub-blocks 0..3 keep them in the low six
// bits of bytes j and j+4; 4..7 in the nibbles of byte j+4 plus the top two bits of j-4 and j.
void k4_scale_min(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Q3_K: six-bit scale i (0..15), stored biased by 32.
int q3_scale(const uint8_t* s, int i) {
  const int lo = i < 8 ? s[i] & 15 : s[i - 8] >> 4;
  const int hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
  return (lo | hi << 4) - 32;
}

// IQ4_XS: six-bit scale of sub-block b, stored biased by 32.
int iq4xs_scale(const BlockIQ4_XS& b, int i) {
  const int lo = (b.scales_l[i / 2] >> (4 * (i % 2))) & 15;
  const int hi = (b.scales_h >> (2 * i)) & 3;
  return (lo | hi << 4) - 32;
}

// dst[j] = scale * q[j] - offset over one sub-block.
void emit(const int8_t* q, int n, float scale, float offset, float* dst) {
  for (int j = 0; j < n; ++j) dst[j] = scale * static_cast<float>(q[j]) - offset;
}

void map_iq4(int8_t* q, int n) {
  for (int j = 0; j < n; ++j) q[j] = kIq4NlValues[q[j]];
}

// ---- one block each ----

void dequant_q5_0(const BlockQ5_0& b, float* y) {
  int8_t q[32];
  unpack_nibbles(b.qs, 16, 32, q);
  add_q5_high_bits(b.qh, q);
  for (int8_t& v : q) v = static_cast<int8_t>(v - 16);
  emit(q, 32, fp16_to_fp32(b.d), 0.0f, y);
}

void dequant_q5_1(const BlockQ5_1& b, float* y) {
  int8_t q[32];
  unpack_nibbles(b.qs, 16, 32, q);
  add_q5_high_bits(b.qh, q);
  emit(q, 32, fp16_to_fp32(b.d), -fp16_to_fp32(b.m), y);  // x - (-m) == x + m exactly
}

void dequant_iq4_nl(const BlockIQ4_NL& b, float* y) {
  int8_t q[32];
  unpack_nibbles(b.qs, 16, 32, q);
  map_iq4(q, 32);
  emit(q, 32, fp16_to_fp32(b.d), 0.0f, y);
}

void dequant_q2_k(const BlockQ2_K& b, float* y) {
  int8_t q[kQKK];
  unpack_crumbs(b.qs, q);
  const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
  for (int i = 0; i < 16; ++i) {
    emit(q + 16 * i, 16, d * static_cast<float>(b.scales[i] & 15),
         dmin * static_cast<float>(b.scales[i] >> 4), y + 16 * i);
  }
}

void dequant_q3_k(const BlockQ3_K& b, float* y) {
  int8_t q[kQKK];
  unpack_crumbs(b.qs, q);
  for (int e = 0; e < kQKK; ++e) {
    if (!plane_bit(b.hmask, e)) q[e] = static_cast<int8_t>(q[e] - 4);  // a set bit means no -4
  }
  const float d = fp16_to_fp32(b.d);
  for (int i = 0; i < 16; ++i) {
    emit(q + 16 * i, 16, d * static_cast<float>(q3_scale(b.scales, i)), 0.0f, y + 16 * i);
  }
}

// Q4_K and Q5_K differ only in Q5_K's fifth bit (qh null for Q4_K).
void dequant_q45_k(uint16_t d16, uint16_t dmin16, const uint8_t* scales, const uint8_t* qh,
                   const uint8_t* qs, float* y) {
  int8_t q[kQKK];
  unpack_nibbles(qs, 32, kQKK, q);
  if (qh != nullptr) {
    for (int e = 0; e < kQKK; ++e) q[e] = static_cast<int8_t>(q[e] | plane_bit(qh, e) << 4);
  }
  const float d = fp16_to_fp32(d16), dmin = fp16_to_fp32(dmin16);
  for (int j = 0; j < 8; ++j) {
    int sc = 0, m = 0;
    k4_scale_min(scales, j, &sc, &m);
    emit(q + 32 * j, 32, d * static_cast<float>(sc), dmin * static_cast<float>(m), y + 32 * j);
  }
}

void dequant_q6_k(const BlockQ6_K& b, float* y) {
  int8_t q[kQKK], hi[kQKK];
  unpack_nibbles(b.ql, 64, kQKK, q);
  unpack_crumbs(b.qh, hi);
  for (int e = 0; e < kQKK; ++e) q[e] = static_cast<int8_t>((q[e] | hi[e] << 4) - 32);
  const float d = fp16_to_fp32(b.d);
  for (int i = 0; i < 16; ++i) {
    emit(q + 16 * i, 16, d * static_cast<float>(b.scales[i]), 0.0f, y + 16 * i);
  }
}

void dequant_iq4_xs(const BlockIQ4_XS& b, float* y) {
  int8_t q[kQKK];
  unpack_nibbles(b.qs, 16, kQKK, q);
  map_iq4(q, kQKK);
  const float d = fp16_to_fp32(b.d);
  for (int i = 0; i < 8; ++i) {
    emit(q + 32 * i, 32, d * static_cast<float>(iq4xs_scale(b, i)), 0.0f, y + 32 * i);
  }
}

// ---- reference quantizers ----

// The element of largest magnitude (the first of equals), or 0 for an all-zero block.
float signed_absmax(const float* x, int n) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < n; ++j) {
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

// Q8_K: the element of largest magnitude maps to -127 exactly; the rest round half to even
// (ggml's nearest_int). d is 1/iscale in f32; an all-zero block is all zeros.
void quantize_block_q8_k(const float* x, BlockQ8_K* y) {
  std::memset(y, 0, sizeof(*y));
  const float max = signed_absmax(x, kQKK);
  if (max == 0.0f) return;
  const float iscale = -127.0f / max;
  for (int j = 0; j < kQKK; ++j) {
    const float v = std::nearbyint(iscale * x[j]);
    // NOTE: NaN (a non-finite input) would be undefined as an integer: code 0, as Q8_0 does.
    y->qs[j] = v == v ? static_cast<int8_t>(std::min(127.0f, v)) : 0;
    y->bsums[j / 16] = static_cast<int16_t>(y->bsums[j / 16] + y->qs[j]);
  }
  y->d = 1.0f / iscale;
}

// The index of the code value nearest x; a tie goes to the upper value.
int nearest_iq4(float x) {
  if (x <= kIq4NlValues[0]) return 0;
  if (x >= kIq4NlValues[15]) return 15;
  int hi = 1;
  while (x >= kIq4NlValues[hi]) ++hi;
  return x - kIq4NlValues[hi - 1] < kIq4NlValues[hi] - x ? hi - 1 : hi;
}

// IQ4_NL without an importance matrix (ggml's reference: no scale search): codes for the scale
// that maps the largest magnitude to -127, then the weighted least-squares scale for those codes
// with weights x^2. A block below 1e-15 in magnitude is scale 0, codes 0.
void quantize_block_iq4_nl(const float* x, BlockIQ4_NL* y) {
  std::memset(y, 0, sizeof(*y));
  const float max = signed_absmax(x, 32);
  if (std::fabs(max) < 1e-15f) return;
  const float id = 1.0f / (max / static_cast<float>(kIq4NlValues[0]));
  uint8_t q[32];
  float sumqx = 0.0f, sumq2 = 0.0f;
  for (int j = 0; j < 32; ++j) {
    q[j] = static_cast<uint8_t>(nearest_iq4(id * x[j]));
    const float v = kIq4NlValues[q[j]], w = x[j] * x[j];
    sumqx += w * v * x[j];
    sumq2 += w * v * v;
  }
  y->d = fp32_to_fp16(sumq2 > 0.0f ? sumqx / sumq2 : 0.0f);
  for (int j = 0; j < 16; ++j) y->qs[j] = static_cast<uint8_t>(q[j] | q[j + 16] << 4);
}

template <typename Block, typename Fn>
void dequant_blocks(const void* src, float* dst, int64_t n, int64_t block_size, Fn fn) {
  const Block* b = static_cast<const Block*>(src);
  for (int64_t i = 0; i < n / block_size; ++i) fn(b[i], dst + i * block_size);
}

}  // namespace

bool is_k_type(DType t) {
  switch (t) {
    case DType::Q5_0:
    case DType::Q5_1:
    case DType::IQ4_NL:
    case DType::Q2_K:
    case DType::Q3_K:
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K:
    case DType::Q8_K:
    case DType::IQ4_XS:
      return true;
    default:
      return false;
  }
}

void dequantize_row_k(DType t, const void* src, float* dst, int64_t n) {
  QILIN_ASSERT(is_k_type(t) && n % dtype_info(t).block_size == 0);
  switch (t) {
    case DType::Q5_0:
      return dequant_blocks<BlockQ5_0>(src, dst, n, 32, dequant_q5_0);
    case DType::Q5_1:
      return dequant_blocks<BlockQ5_1>(src, dst, n, 32, dequant_q5_1);
    case DType::IQ4_NL:
      return dequant_blocks<BlockIQ4_NL>(src, dst, n, 32, dequant_iq4_nl);
    case DType::Q2_K:
      return dequant_blocks<BlockQ2_K>(src, dst, n, kQKK, dequant_q2_k);
    case DType::Q3_K:
      return dequant_blocks<BlockQ3_K>(src, dst, n, kQKK, dequant_q3_k);
    case DType::Q4_K:
      return dequant_blocks<BlockQ4_K>(src, dst, n, kQKK, [](const BlockQ4_K& b, float* y) {
        dequant_q45_k(b.d, b.dmin, b.scales, nullptr, b.qs, y);
      });
    case DType::Q5_K:
      return dequant_blocks<BlockQ5_K>(src, dst, n, kQKK, [](const BlockQ5_K& b, float* y) {
        dequant_q45_k(b.d, b.dmin, b.scales, b.qh, b.qs, y);
      });
    case DType::Q6_K:
      return dequant_blocks<BlockQ6_K>(src, dst, n, kQKK, dequant_q6_k);
    case DType::Q8_K:
      return dequant_blocks<BlockQ8_K>(
          src, dst, n, kQKK, [](const BlockQ8_K& b, float* y) { emit(b.qs, kQKK, b.d, 0.0f, y); });
    case DType::IQ4_XS:
      return dequant_blocks<BlockIQ4_XS>(src, dst, n, kQKK, dequant_iq4_xs);
    default:
      QILIN_ASSERT(!"dequantize_row_k: not a K-quant type");
  }
}

bool has_quantize_k(DType t) { return t == DType::Q8_K || t == DType::IQ4_NL; }

void quantize_row_k(DType t, const float* src, void* dst, int64_t n) {
  QILIN_ASSERT(has_quantize_k(t) && n % dtype_info(t).block_size == 0);
  if (t == DType::Q8_K) {
    for (int64_t i = 0; i < n / kQKK; ++i) {
      quantize_block_q8_k(src + i * kQKK, static_cast<BlockQ8_K*>(dst) + i);
    }
  } else {
    for (int64_t i = 0; i < n / 32; ++i) {
      quantize_block_iq4_nl(src + i * 32, static_cast<BlockIQ4_NL*>(dst) + i);
    }
  }
}

}  // namespace qilin
