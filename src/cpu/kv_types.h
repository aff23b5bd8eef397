// Element formats of the KV cache (`--kv-type`). A cache row is one KV head's head_dim values
// of one token; the attention kernels read rows in these formats directly.
//   F32   4 bytes per value.
//   F16   IEEE half, 2 bytes per value (llama.cpp's default cache type).
//   BF16  bfloat16 (the top half of an f32, rounded to nearest even), 2 bytes per value: F16's
//         size with 3 fewer mantissa bits and f32's range; AVX512_BF16 dots it (VDPBF16PS).
//   Q8_0  ggml's Q8_0 blocks: per 32 values an f16 scale and 32 int8 codes (34 bytes).
//   FP8   E4M3 ("fn": no infinities, max 448) with one f32 scale per row: the row's absolute
//         maximum maps to 448. Layout [f32 scale][head_dim codes].
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "qilin/status.h"

namespace qilin {

enum class KvType : uint8_t { F32, F16, Q8_0, FP8, BF16 };
// The default, as llama.cpp's: half the memory and traffic of F32 for a rounding of 2^-11
// relative per value (docs/benchmarks.md: perplexity and speed per type).
constexpr KvType kDefaultKvType = KvType::F16;

const char* kv_type_name(KvType t);  // "f32", "f16", "q8_0", "fp8", "bf16"
Result<KvType> parse_kv_type(std::string_view name);
// Bytes of one row of head_dim values; 0 if the type cannot hold such rows (Q8_0 needs a
// multiple of 32). The SIMD kernels take head dims of whole vectors; others use the reference.
size_t kv_row_bytes(KvType t, int32_t head_dim);

// One row of n values into the type (n: a head_dim kv_row_bytes accepts). Vectorised where
// the CPU allows (F16, BF16, Q8_0); BF16 rounds as core/fp16.h's fp32_to_bf16 (nearest even);
// FP8 rounds to nearest even and saturates at +-448.
void kv_quantize_row(KvType t, const float* x, int32_t n, uint8_t* dst);
void kv_dequantize_row(KvType t, const uint8_t* src, int32_t n, float* y);

// E4M3 (fn) scalar conversions, exact: round to nearest even, saturating at +-448; NaN is
// never produced (the caller's values are finite). Decoding is exact for every code but the
// two NaN codes (0x7f, 0xff), which decode to NaN.
uint8_t fp32_to_e4m3(float x);
float e4m3_to_fp32(uint8_t c);

}  // namespace qilin
