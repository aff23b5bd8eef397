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

// ggml's nearest_int: round half to even (exact below 2^22 in magnitude, all it is used for).
// NOTE: NaN or a huge value (non-finite input) would be undefined as an integer: 0 instead.
int nearest(float v) {
  return std::fabs(v) <= 4194303.0f ? static_cast<int>(std::nearbyint(v)) : 0;
}

// Inverse of unpack_nibbles.
void pack_nibbles(const uint8_t* q, int g, int n, uint8_t* qs) {
  for (int c = 0; c < n / (2 * g); ++c, qs += g, q += 2 * g) {
    for (int p = 0; p < g; ++p) qs[p] = static_cast<uint8_t>((q[p] & 15) | (q[p + g] & 15) << 4);
  }
}

// Weighted min-and-scale fit of one sub-block to codes 0..nmax (ggml's make_qkx2_quants, with
// use_mad false): first the codes of [min(x, 0), max(x)], then nstep + 1 scales around it, each
// refit by weighted least squares; the smallest weighted squared error wins. Returns the scale;
// *neg_min = -min (>= 0).
float fit_scale_min(const float* x, const float* w, int n, int nmax, float rmin, float rdelta,
                    int nstep, uint8_t* q, float* neg_min) {
  float min = x[0], max = x[0], sum_w = w[0], sum_x = w[0] * x[0];
  for (int i = 1; i < n; ++i) {
    min = std::min(min, x[i]);
    max = std::max(max, x[i]);
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  min = std::min(min, 0.0f);
  if (max == min) {
    std::memset(q, 0, static_cast<size_t>(n));
    *neg_min = -min;
    return 0.0f;
  }
  auto codes = [&](float iscale, float lo, uint8_t* out) {
    for (int i = 0; i < n; ++i) {
      out[i] = static_cast<uint8_t>(std::clamp(nearest(iscale * (x[i] - lo)), 0, nmax));
    }
  };
  auto error = [&](const uint8_t* l, float scale, float lo) {
    float e = 0.0f;
    for (int i = 0; i < n; ++i) {
      const float diff = scale * static_cast<float>(l[i]) + lo - x[i];
      e += w[i] * (diff * diff);
    }
    return e;
  };
  float scale = 1.0f / (static_cast<float>(nmax) / (max - min));
  codes(static_cast<float>(nmax) / (max - min), min, q);
  float best = error(q, scale, min);
  uint8_t aux[32];
  for (int is = 0; is <= nstep; ++is) {
    codes((rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax)) / (max - min), min,
          aux);
    float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
    for (int i = 0; i < n; ++i) {
      const float l = aux[i];
      sum_l += w[i] * l;
      sum_l2 += w[i] * l * l;
      sum_xl += w[i] * l * x[i];
    }
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (!(det > 0.0f)) continue;
    float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
    float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
    if (this_min > 0.0f) {
      this_min = 0.0f;
      this_scale = sum_xl / sum_l2;
    }
    const float e = error(aux, this_scale, this_min);
    if (e < best) {
      std::memcpy(q, aux, static_cast<size_t>(n));
      best = e;
      scale = this_scale;
      min = this_min;
    }
  }
  *neg_min = -min;
  return scale;
}

// Q4_K / Q5_K (nmax 15 / 31): per sub-block of 32 a scale and min fitted with weights
// rms(x) + |x|, both quantized to six bits against the block's largest, then the codes redone
// against the stored scales. Writes d, dmin and scales; q gets 256 codes.
void quantize_q45_k(const float* x, int nmax, float rmin, int nstep, uint16_t* d16,
                    uint16_t* dmin16, uint8_t* sc6, uint8_t* q) {
  float scales[8], mins[8], w[32];
  float max_scale = 0.0f, max_min = 0.0f;
  for (int j = 0; j < 8; ++j) {
    const float* xb = x + 32 * j;
    float sum_x2 = 0.0f;
    for (int l = 0; l < 32; ++l) sum_x2 += xb[l] * xb[l];
    const float av_x = std::sqrt(sum_x2 / 32.0f);
    for (int l = 0; l < 32; ++l) w[l] = av_x + std::fabs(xb[l]);
    scales[j] = fit_scale_min(xb, w, 32, nmax, rmin, 0.1f, nstep, q + 32 * j, &mins[j]);
    max_scale = std::max(max_scale, scales[j]);
    max_min = std::max(max_min, mins[j]);
  }
  const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
  for (int j = 0; j < 8; ++j) {
    // NOTE: through uint8_t as ggml does (a negative fit wraps, then clamps to 63)
    const int ls = std::min<int>(63, static_cast<uint8_t>(nearest(inv_scale * scales[j])));
    const int lm = std::min<int>(63, static_cast<uint8_t>(nearest(inv_min * mins[j])));
    if (j < 4) {
      sc6[j] = static_cast<uint8_t>(ls);
      sc6[j + 4] = static_cast<uint8_t>(lm);
    } else {
      sc6[j + 4] = static_cast<uint8_t>((ls & 15) | (lm & 15) << 4);
      sc6[j - 4] = static_cast<uint8_t>(sc6[j - 4] | (ls >> 4) << 6);
      sc6[j] = static_cast<uint8_t>(sc6[j] | (lm >> 4) << 6);
    }
  }
  *d16 = fp32_to_fp16(max_scale / 63.0f);
  *dmin16 = fp32_to_fp16(max_min / 63.0f);
  for (int j = 0; j < 8; ++j) {
    int sc = 0, m = 0;
    k4_scale_min(sc6, j, &sc, &m);
    const float d = fp16_to_fp32(*d16) * static_cast<float>(sc);
    if (d == 0.0f) continue;  // keeps the fit's codes
    const float dm = fp16_to_fp32(*dmin16) * static_cast<float>(m);
    for (int l = 0; l < 32; ++l) {
      q[32 * j + l] = static_cast<uint8_t>(std::clamp(nearest((x[32 * j + l] + dm) / d), 0, nmax));
    }
  }
}

void quantize_block_q4_k(const float* x, BlockQ4_K* y) {
  uint8_t q[kQKK];
  quantize_q45_k(x, 15, -1.0f, 20, &y->d, &y->dmin, y->scales, q);
  pack_nibbles(q, 32, kQKK, y->qs);
}

void quantize_block_q5_k(const float* x, BlockQ5_K* y) {
  uint8_t q[kQKK];
  quantize_q45_k(x, 31, -0.5f, 15, &y->d, &y->dmin, y->scales, q);
  pack_nibbles(q, 32, kQKK, y->qs);
  std::memset(y->qh, 0, sizeof(y->qh));
  for (int e = 0; e < kQKK; ++e)
    y->qh[e % 32] = static_cast<uint8_t>(y->qh[e % 32] | (q[e] >> 4) << (e / 32));
}

// Symmetric fit of one sub-block to codes -nmax..nmax-1 with weights x^2 (ggml's make_qx_quants,
// rmse_type 1): the codes of the largest magnitude at -nmax, then 18 nearby scales, keeping
// the best weighted least-squares one. q gets codes + nmax. Returns the scale.
float fit_scale_sym(const float* x, int n, int nmax, uint8_t* q) {
  const float max = signed_absmax(x, n);
  if (std::fabs(max) < 1e-15f) {
    std::memset(q, 0, static_cast<size_t>(n));
    return 0.0f;
  }
  auto code = [&](float iscale, int i) {
    return std::clamp(nearest(iscale * x[i]), -nmax, nmax - 1);
  };
  auto sums = [&](float iscale, float* sumlx, float* suml2) {
    *sumlx = *suml2 = 0.0f;
    for (int i = 0; i < n; ++i) {
      const float l = static_cast<float>(code(iscale, i)), w = x[i] * x[i];
      *sumlx += w * x[i] * l;
      *suml2 += w * l * l;
    }
  };
  float iscale = static_cast<float>(-nmax) / max;
  float sumlx = 0.0f, suml2 = 0.0f;
  for (int i = 0; i < n; ++i) q[i] = static_cast<uint8_t>(code(iscale, i) + nmax);
  sums(iscale, &sumlx, &suml2);
  float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(is)) / max;
    sums(iscale, &sumlx, &suml2);
    if (suml2 > 0.0f && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) q[i] = static_cast<uint8_t>(code(iscale, i) + nmax);
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Q6_K: per sub-block of 16 a symmetric fit, the 16 scales to int8 against the largest (which
// maps to -128), then the codes redone against the stored scales.
void quantize_block_q6_k(const float* x, BlockQ6_K* y) {
  std::memset(y, 0, sizeof(*y));
  uint8_t q[kQKK];
  float scales[16];
  float max_scale = 0.0f, max_abs = 0.0f;
  for (int i = 0; i < 16; ++i) {
    scales[i] = fit_scale_sym(x + 16 * i, 16, 32, q + 16 * i);
    if (std::fabs(scales[i]) > max_abs) {
      max_abs = std::fabs(scales[i]);
      max_scale = scales[i];
    }
  }
  if (max_abs < 1e-15f) return;
  const float iscale = -128.0f / max_scale;
  y->d = fp32_to_fp16(1.0f / iscale);
  for (int i = 0; i < 16; ++i) {
    y->scales[i] = static_cast<int8_t>(std::min(127, nearest(iscale * scales[i])));
  }
  for (int i = 0; i < 16; ++i) {
    const float d = fp16_to_fp32(y->d) * static_cast<float>(y->scales[i]);
    if (d == 0.0f) continue;
    for (int l = 0; l < 16; ++l) {
      q[16 * i + l] = static_cast<uint8_t>(std::clamp(nearest(x[16 * i + l] / d), -32, 31) + 32);
    }
  }
  pack_nibbles(q, 64, kQKK, y->ql);
  for (int h = 0; h < 2; ++h) {  // inverse of unpack_crumbs on the top two bits
    for (int l = 0; l < 32; ++l) {
      const uint8_t* e = q + 128 * h + l;
      y->qh[32 * h + l] = static_cast<uint8_t>(e[0] >> 4 | (e[32] >> 4) << 2 | (e[64] >> 4) << 4 |
                                               (e[96] >> 4) << 6);
    }
  }
}

template <typename Block, typename Fn>
void dequant_blocks(const void* src, float* dst, int64_t n, int64_t block_size, Fn fn) {
  const Block* b = static_cast<const Block*>(src);
  for (int64_t i = 0; i < n / block_size; ++i) fn(b[i], dst + i * block_size);
}

template <typename Block, typename Fn>
void quant_blocks(const float* src, void* dst, int64_t n, int64_t block_size, Fn fn) {
  Block* b = static_cast<Block*>(dst);
  for (int64_t i = 0; i < n / block_size; ++i) fn(src + i * block_size, b + i);
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

bool has_quantize_k(DType t) {
  return t == DType::Q8_K || t == DType::IQ4_NL || t == DType::Q4_K || t == DType::Q5_K ||
         t == DType::Q6_K;
}

void quantize_row_k(DType t, const float* src, void* dst, int64_t n) {
  QILIN_ASSERT(has_quantize_k(t) && n % dtype_info(t).block_size == 0);
  switch (t) {
    case DType::Q8_K:
      return quant_blocks<BlockQ8_K>(src, dst, n, kQKK, quantize_block_q8_k);
    case DType::IQ4_NL:
      return quant_blocks<BlockIQ4_NL>(src, dst, n, 32, quantize_block_iq4_nl);
    case DType::Q4_K:
      return quant_blocks<BlockQ4_K>(src, dst, n, kQKK, quantize_block_q4_k);
    case DType::Q5_K:
      return quant_blocks<BlockQ5_K>(src, dst, n, kQKK, quantize_block_q5_k);
    default:
      return quant_blocks<BlockQ6_K>(src, dst, n, kQKK, quantize_block_q6_k);
  }
}

}  // namespace qilin
