// Qilin's own 4-bit weight formats: group-wise INT4 with zero points (QI4_G32/64/128, the
// AWQ/GPTQ arithmetic) and QLoRA's NormalFloat4 (NF4, and NF4_DQ with double-quantized block
// scales). Block layouts, reference (de)quantizers and the scalar dot products that every SIMD
// kernel (quants_int4_avx2.cc, quants_int4_avx512.cc) is tested against.
// NOTE: every row is self-contained (kernels get a row pointer only), so NF4_DQ's second-level
// groups of 256 block scales are counted within a row, each with a 4-byte header.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/dtype.h"
#include "core/fp16.h"

namespace qilin {

constexpr int kQKNf4 = 64;         // NF4 block: elements sharing one absmax
constexpr int kNf4DqGroup = 256;   // NF4_DQ: block scales per second-level group
constexpr int kNf4KernelShift = 12;  // kernels use round(code * 2^12) as int16 (see .cc)

// bitsandbytes' NF4 code values (QLoRA, appendix E), ascending; index 7 is exactly zero.
extern const float kNf4Values[16];
// The same values as the kernels' integers, round(v * 2^kNf4KernelShift).
inline constexpr int16_t kNf4Int[16] = {-4096, -2852, -2151, -1618, -1165, -757, -373, 0,
                                        326,   659,   1008,  1384,  1805,  2304, 2961, 4096};
// Their low and high bytes, for 16-entry byte shuffles (pshufb) in the SIMD kernels.
struct Nf4ByteTables {
  int8_t lo[16], hi[16];
};
inline constexpr Nf4ByteTables kNf4Bytes = [] {
  Nf4ByteTables t{};
  for (int i = 0; i < 16; ++i) {
    t.lo[i] = static_cast<int8_t>(kNf4Int[i] & 0xff);
    t.hi[i] = static_cast<int8_t>(kNf4Int[i] >> 8);
  }
  return t;
}();

#pragma pack(push, 1)
// w = d * (q - z), q in 0..15; qs[j] holds element j in its low nibble and j + G/2 in its high
// nibble, so each half of the group is one run of consecutive elements.
template <int G>
struct BlockQI4 {
  uint16_t d;  // f16 scale
  uint8_t z;   // zero point 0..15
  uint8_t qs[G / 2];
};
// w = d * kNf4Values[q]; qs[j]: element j low nibble, element j + 32 high nibble.
struct BlockNF4 {
  float d;  // absmax of the block (f32 as in bitsandbytes: 4.5 bits per weight)
  uint8_t qs[kQKNf4 / 2];
};
// NF4_DQ row: for each run of k <= 256 blocks, this header, then k int8 scale codes, then
// k * 32 bytes of codes (BlockNF4::qs layout). Block scale d_b = fma(c, s_b, mean) in f32.
struct Nf4DqHeader {
  uint16_t c;     // f16 step of the scale codes
  uint16_t mean;  // f16 mean of the run's block scales (subtracted before quantizing)
};
#pragma pack(pop)
using BlockQI4_G32 = BlockQI4<32>;
using BlockQI4_G64 = BlockQI4<64>;
using BlockQI4_G128 = BlockQI4<128>;
static_assert(sizeof(BlockQI4_G32) == 19 && sizeof(BlockQI4_G64) == 35 &&
              sizeof(BlockQI4_G128) == 67);
static_assert(sizeof(BlockNF4) == 36 && sizeof(Nf4DqHeader) == 4);

// True for QI4_G32/64/128, NF4, NF4_DQ.
bool is_int4_type(DType t);
// Group size of a QI4 type (0 for others).
int qi4_group(DType t);
// References (n a multiple of the block size): RTN with AWQ's zero-point rounding for QI4,
// nearest code for NF4 (bitsandbytes' order: codes from the f32 absmax, then NF4_DQ quantizes
// the scales). quantize_row_ref / dequantize_row_ref forward these types here.
void quantize_row_int4(DType t, const float* src, void* dst, int64_t n);
void dequantize_row_int4(DType t, const void* src, float* dst, int64_t n);
// Index of the code value nearest to x (x in [-1, 1]; ties go to the lower code).
int nf4_index(float x);
// NF4_DQ: the block scales of a row of n elements, decoded (n / 64 floats).
void nf4dq_row_scales(const void* row, int64_t n, float* scales);

// Walks an NF4_DQ row of n elements: fn(block index, decoded scale, its 32 code bytes). Used by
// the reference and every ISA's kernel (a template, so each file compiles its own copy).
template <typename F>
inline void for_nf4dq_blocks(const void* row, int64_t n, F&& fn) {
  const uint8_t* p = static_cast<const uint8_t*>(row);
  const int64_t nb = n / kQKNf4;
  for (int64_t g0 = 0; g0 < nb; g0 += kNf4DqGroup) {
    const int k = static_cast<int>(std::min<int64_t>(kNf4DqGroup, nb - g0));
    Nf4DqHeader h;
    std::memcpy(&h, p, sizeof h);
    const float c = fp16_to_fp32(h.c), mean = fp16_to_fp32(h.mean);
    const auto* sq = reinterpret_cast<const int8_t*>(p + sizeof h);
    const uint8_t* qs = p + sizeof h + k;
    for (int b = 0; b < k; ++b) {
      // fma: the SIMD files are built with -mfma and would contract c * s + mean anyway.
      fn(g0 + b, std::fma(c, static_cast<float>(sq[b]), mean), qs + b * (kQKNf4 / 2));
    }
    p += sizeof h + k + k * (kQKNf4 / 2);
  }
}

// Per-ISA kernels behind matmul_kernels(); signatures match VecDotFn. QI4 weights dot Q8_1
// activations (the zero point needs each block's activation sum), NF4 weights Q8_0.
// NOTE: calling an avx2:: or avx512:: function on a CPU without that ISA is undefined (SIGILL).
#define QILIN_DECLARE_INT4_KERNELS                                     \
  float vec_dot_qi4_g32_q8_1(int64_t n, const void* w, const void* a);  \
  float vec_dot_qi4_g64_q8_1(int64_t n, const void* w, const void* a);  \
  float vec_dot_qi4_g128_q8_1(int64_t n, const void* w, const void* a); \
  float vec_dot_nf4_q8_0(int64_t n, const void* w, const void* a);      \
  float vec_dot_nf4dq_q8_0(int64_t n, const void* w, const void* a);
namespace scalar {
QILIN_DECLARE_INT4_KERNELS
}  // namespace scalar
namespace avx2 {
QILIN_DECLARE_INT4_KERNELS
}  // namespace avx2
namespace avx512 {
QILIN_DECLARE_INT4_KERNELS
}  // namespace avx512
#undef QILIN_DECLARE_INT4_KERNELS

}  // namespace qilin
