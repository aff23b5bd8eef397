// Tensor element types. Ids equal GGUF's on-disk type ids (ggml's numbering), so a type id
// read from a file is a DType after range and table checks (dtype_info returns null if unknown).
#pragma once

#include <cstddef>
#include <cstdint>

namespace qilin {

enum class DType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
  // Qilin's own 4-bit types (src/cpu/quants_int4.h; not readable by llama.cpp). Ids start at
  // 1024, far above ggml's (which end below 64), so a future ggml type can never collide.
  QI4_G32 = 1024,   // INT4 with a zero point: f16 scale + u8 zero per group of 32
  QI4_G64 = 1025,   // ... per group of 64
  QI4_G128 = 1026,  // ... per group of 128
  NF4 = 1027,       // QLoRA NormalFloat4: f32 absmax per block of 64, 16 code values
  NF4_DQ = 1028,    // NF4 with double-quantized block scales (int8, per row group of 256)
};

struct DTypeInfo {
  DType type;
  const char* name;
  int64_t block_size;   // elements per block (1 for plain types)
  int64_t block_bytes;  // bytes per block
  bool supported;       // Qilin can dequantize / compute with it
  // Row groups (NF4_DQ only): every run of up to group_blocks blocks of a row carries
  // group_bytes of header (the double-quantization constants); the last run may be short.
  int64_t group_blocks = 0;
  int64_t group_bytes = 0;
};

// Returns null for an id that is not a known type.
const DTypeInfo* dtype_info(uint32_t id);
inline const DTypeInfo& dtype_info(DType t) { return *dtype_info(static_cast<uint32_t>(t)); }
inline const char* dtype_name(DType t) { return dtype_info(t).name; }

// Bytes of one row of n elements; n must be a multiple of the block size.
inline size_t row_bytes(DType t, int64_t n) {
  const DTypeInfo& i = dtype_info(t);
  const int64_t nb = n / i.block_size;
  const int64_t groups = i.group_blocks > 0 ? (nb + i.group_blocks - 1) / i.group_blocks : 0;
  return static_cast<size_t>(nb * i.block_bytes + groups * i.group_bytes);
}

// Bytes of a tensor of n_elements in rows of ne0 (a multiple of the block size); false if that
// overflows uint64. Linear in the element count except for row-grouped types (NF4_DQ).
bool tensor_bytes(const DTypeInfo& info, uint64_t ne0, uint64_t n_elements, uint64_t* bytes);

}  // namespace qilin
