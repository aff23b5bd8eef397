// llama.cpp's K-quant super-block formats (Q2_K..Q6_K, Q8_K, IQ4_XS: 256 elements) and its later
// 32-element formats (Q5_0, Q5_1, IQ4_NL): block layouts and scalar reference conversions,
// bit-exact with ggml's C reference (tests/golden/gen_quant_fixtures.py). quants.h's
// dequantize_row_ref / quantize_row_ref dispatch here; no vec_dot kernels yet.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace qilin {

constexpr int kQKK = 256;  // elements per K-quant super-block

#pragma pack(push, 1)
struct BlockQ5_0 {
  uint16_t d;      // f16 scale
  uint8_t qh[4];   // bit j: the fifth bit of element j (little-endian uint32)
  uint8_t qs[16];  // low nibbles: element j in qs[j] & 15, element j+16 in qs[j] >> 4
};
struct BlockQ5_1 {
  uint16_t d;  // f16 scale
  uint16_t m;  // f16 minimum
  uint8_t qh[4];
  uint8_t qs[16];
};
struct BlockIQ4_NL {
  uint16_t d;      // f16 scale
  uint8_t qs[16];  // indices into kIq4NlValues, packed as Q4_0's nibbles
};
// 16 sub-blocks of 16: x = d * (scale & 15) * q - dmin * (scale >> 4), q in 0..3.
struct BlockQ2_K {
  uint8_t scales[16];
  uint8_t qs[64];  // per 128 elements, 32 bytes; element 32*s + l (s = 0..3) at bits 2s of byte l
  uint16_t d;      // f16 scale of the sub-block scales
  uint16_t dmin;   // f16 scale of the sub-block minima
};
// 16 sub-blocks of 16: x = d * (scale - 32) * (q - 4 * !hbit), q in 0..3 as Q2_K's.
struct BlockQ3_K {
  uint8_t hmask[32];  // element 32*b + l: bit b of hmask[l]
  uint8_t qs[64];
  uint8_t scales[12];  // 16 six-bit scales: low nibbles in bytes 0..7, top 2 bits in 8..11
  uint16_t d;
};
// 8 sub-blocks of 32: x = d * scale * q - dmin * min, six-bit scale and min per sub-block.
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qs[128];  // per 64 elements, 32 bytes: low nibbles the first 32, high the next 32
};
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[32];   // fifth bit of element 32*b + l: bit b of qh[l]
  uint8_t qs[128];  // as Q4_K
};
// 16 sub-blocks of 16: x = d * scale * (q - 32), q six bits.
struct BlockQ6_K {
  uint8_t ql[128];  // per 128 elements, 64 bytes: low nibbles the first 64, high the next 64
  uint8_t qh[64];   // per 128 elements, 32 bytes: element 32*s + l at bits 2s of byte l
  int8_t scales[16];
  uint16_t d;
};
struct BlockQ8_K {
  float d;  // f32 scale
  int8_t qs[256];
  int16_t bsums[16];  // sums of qs in groups of 16
};
// 8 sub-blocks of 32: x = d * (scale - 32) * kIq4NlValues[q].
struct BlockIQ4_XS {
  uint16_t d;
  uint16_t scales_h;    // top 2 bits of the six-bit scale of sub-block b at bits 2b
  uint8_t scales_l[4];  // low nibbles: sub-block 2i in scales_l[i] & 15, 2i+1 in >> 4
  uint8_t qs[128];      // per sub-block 16 bytes, packed as IQ4_NL's
};
#pragma pack(pop)
static_assert(sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockIQ4_NL) == 18);
static_assert(sizeof(BlockQ2_K) == 84);
static_assert(sizeof(BlockQ3_K) == 110);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ6_K) == 210);
static_assert(sizeof(BlockQ8_K) == 292);
static_assert(sizeof(BlockIQ4_XS) == 136);

// The 16 non-linear code values of IQ4_NL and IQ4_XS, ascending.
inline constexpr int8_t kIq4NlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};

// True for the types of this header.
bool is_k_type(DType t);
// n a multiple of the type's block size.
void dequantize_row_k(DType t, const void* src, float* dst, int64_t n);
// The types with a reference quantizer here: Q8_K, IQ4_NL, Q4_K, Q5_K, Q6_K (ggml's
// quantize_row_*_ref, no importance matrix). Q5_0 and Q5_1 are quantized in quants.cc.
bool has_quantize_k(DType t);
void quantize_row_k(DType t, const float* src, void* dst, int64_t n);

}  // namespace qilin
