// The table of GGUF tensor types: block sizes and bytes follow llama.cpp's block layouts.
#include "core/dtype.h"

namespace qilin {
namespace {

constexpr DTypeInfo kTypes[] = {
    {DType::F32, "F32", 1, 4, true},
    {DType::F16, "F16", 1, 2, true},
    {DType::Q4_0, "Q4_0", 32, 18, true},
    {DType::Q4_1, "Q4_1", 32, 20, true},
    {DType::Q5_0, "Q5_0", 32, 22, true},
    {DType::Q5_1, "Q5_1", 32, 24, true},
    {DType::Q8_0, "Q8_0", 32, 34, true},
    {DType::Q8_1, "Q8_1", 32, 36, true},
    {DType::Q2_K, "Q2_K", 256, 84, true},
    {DType::Q3_K, "Q3_K", 256, 110, true},
    {DType::Q4_K, "Q4_K", 256, 144, true},
    {DType::Q5_K, "Q5_K", 256, 176, true},
    {DType::Q6_K, "Q6_K", 256, 210, true},
    {DType::Q8_K, "Q8_K", 256, 292, true},
    {DType::IQ2_XXS, "IQ2_XXS", 256, 66, false},
    {DType::IQ2_XS, "IQ2_XS", 256, 74, false},
    {DType::IQ3_XXS, "IQ3_XXS", 256, 98, false},
    {DType::IQ1_S, "IQ1_S", 256, 50, false},
    {DType::IQ4_NL, "IQ4_NL", 32, 18, true},
    {DType::IQ3_S, "IQ3_S", 256, 110, false},
    {DType::IQ2_S, "IQ2_S", 256, 82, false},
    {DType::IQ4_XS, "IQ4_XS", 256, 136, true},
    {DType::I8, "I8", 1, 1, false},
    {DType::I16, "I16", 1, 2, false},
    {DType::I32, "I32", 1, 4, false},
    {DType::I64, "I64", 1, 8, false},
    {DType::F64, "F64", 1, 8, false},
    {DType::IQ1_M, "IQ1_M", 256, 56, false},
    {DType::BF16, "BF16", 1, 2, true},
    {DType::TQ1_0, "TQ1_0", 256, 54, false},
    {DType::TQ2_0, "TQ2_0", 256, 66, false},
    {DType::MXFP4, "MXFP4", 32, 17, false},
    {DType::QI4_G32, "QI4_G32", 32, 19, true},
    {DType::QI4_G64, "QI4_G64", 64, 35, true},
    {DType::QI4_G128, "QI4_G128", 128, 67, true},
    {DType::NF4, "NF4", 64, 36, true},
    {DType::NF4_DQ, "NF4_DQ", 64, 33, true, 256, 4},
};

}  // namespace

const DTypeInfo* dtype_info(uint32_t id) {
  for (const DTypeInfo& t : kTypes) {
    if (static_cast<uint32_t>(t.type) == id) return &t;
  }
  return nullptr;
}

bool tensor_bytes(const DTypeInfo& info, uint64_t ne0, uint64_t n_elements, uint64_t* bytes) {
  const uint64_t bs = static_cast<uint64_t>(info.block_size);
  const uint64_t n_blocks = n_elements / bs;
  uint64_t b = 0;
  if (__builtin_mul_overflow(n_blocks, static_cast<uint64_t>(info.block_bytes), &b)) return false;
  if (info.group_blocks > 0 && ne0 > 0) {
    const uint64_t row_blocks = ne0 / bs, gb = static_cast<uint64_t>(info.group_blocks);
    const uint64_t groups_per_row = (row_blocks + gb - 1) / gb;
    uint64_t h = 0;
    if (__builtin_mul_overflow(n_elements / ne0, groups_per_row, &h) ||
        __builtin_mul_overflow(h, static_cast<uint64_t>(info.group_bytes), &h) ||
        __builtin_add_overflow(b, h, &b)) {
      return false;
    }
  }
  *bytes = b;
  return true;
}

}  // namespace qilin
