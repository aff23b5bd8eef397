// Scalar reference (de)quantization and dot products for llama.cpp's 32-element block formats,
// and the per-ISA matmul kernel tables (the ISA itself: cpu/isa.h).
// NOTE: this file is compiled without -mfma, so `a * b + c` is rounded twice, exactly as
// llama.cpp's C reference (and gguf-py's numpy) computes it; the quantizers are bit-exact.
#include "cpu/quants.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/assert.h"
#include "core/fp16.h"
#include "cpu/quants_impl.h"
#include "cpu/quants_int4.h"
#include "cpu/quants_k.h"

#if defined(__x86_64__) || defined(__i386__)
#define QILIN_X86 1
#endif

namespace qilin {
namespace {

void check_blocks(DType type, int64_t n) {
  const DTypeInfo& info = dtype_info(type);
  QILIN_ASSERT(n >= 0 && n % info.block_size == 0);
}

// ---- reference quantizers, one block at a time ----

// 1/d as llama.cpp computes it, except that a scale so small that 1/d overflows (a block of
// values below ~1e-36) gives 0 rather than infinity: llama.cpp then converts inf or NaN to an
// integer, which is undefined. Its f16 scale is 0 anyway, so the block still dequantizes to 0.
float inverse_scale(float d) {
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  return std::isinf(id) ? 0.0f : id;
}

// Q4_0 / Q5_0 codes (half = 8 / 16): the scale carries the sign of the element with the largest
// magnitude so that element maps to exactly -half (the code that has no positive twin); others
// round by +half+0.5 and truncation. Returns the f32 scale.
float absmax_codes(const float* x, int half, uint8_t* q) {
  float amax = 0.0f;
  float max = 0.0f;
  for (int j = 0; j < kQK; ++j) {
    if (amax < std::fabs(x[j])) {  // strict: the first of equal magnitudes wins
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  const float d = max / static_cast<float>(-half);
  const float id = inverse_scale(d);
  const float bias = static_cast<float>(half) + 0.5f;
  for (int j = 0; j < kQK; ++j) {
    q[j] = static_cast<uint8_t>(std::min(2 * half - 1, static_cast<int>(x[j] * id + bias)));
  }
  return d;
}

// Q4_1 / Q5_1 codes (nmax = 15 / 31) over [min, max]; returns the f32 scale and *min.
float minmax_codes(const float* x, int nmax, uint8_t* q, float* min_out) {
  float min = FLT_MAX;
  float max = -FLT_MAX;
  for (int j = 0; j < kQK; ++j) {
    min = x[j] < min ? x[j] : min;
    max = x[j] > max ? x[j] : max;
  }
  const float d = (max - min) / static_cast<float>(nmax);
  const float id = inverse_scale(d);
  for (int j = 0; j < kQK; ++j) {
    q[j] = static_cast<uint8_t>(std::min(nmax, static_cast<int>((x[j] - min) * id + 0.5f)));
  }
  *min_out = min;
  return d;
}

// Low nibbles: element j in qs[j] & 15, element j+16 in qs[j] >> 4.
void pack_nibbles(const uint8_t* q, uint8_t* qs) {
  for (int j = 0; j < kQK / 2; ++j) {
    qs[j] = static_cast<uint8_t>((q[j] & 15) | (q[j + kQK / 2] & 15) << 4);
  }
}

// Q5's fifth bits: bit j of the little-endian word qh is bit 4 of element j.
void pack_high_bits(const uint8_t* q, uint8_t* qh) {
  std::memset(qh, 0, 4);
  for (int j = 0; j < kQK; ++j) {
    qh[j / 8] = static_cast<uint8_t>(qh[j / 8] | (q[j] >> 4) << (j % 8));
  }
}

template <typename Block>
void quantize_block_sym(const float* x, int half, Block* y) {
  uint8_t q[kQK];
  y->d = fp32_to_fp16(absmax_codes(x, half, q));
  pack_nibbles(q, y->qs);
  if constexpr (requires { y->qh; }) pack_high_bits(q, y->qh);
}

template <typename Block>
void quantize_block_min(const float* x, int nmax, Block* y) {
  uint8_t q[kQK];
  float min = 0.0f;
  y->d = fp32_to_fp16(minmax_codes(x, nmax, q, &min));
  y->m = fp32_to_fp16(min);
  pack_nibbles(q, y->qs);
  if constexpr (requires { y->qh; }) pack_high_bits(q, y->qh);
}

// Shared by Q8_0 and Q8_1: returns the sum of the codes and the f32 scale in *d_f32.
// roundf rounds halves away from zero (not to even), as llama.cpp's reference does.
int quantize_block_q8(const float* x, int8_t* qs, uint16_t* d_out, float* d_f32) {
  float amax = 0.0f;
  for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = inverse_scale(d);
  *d_out = fp32_to_fp16(d);
  *d_f32 = d;
  int sum = 0;
  for (int j = 0; j < kQK; ++j) {
    // NOTE: a non-finite input (a hostile or broken model's activations) makes NaN here, and
    // converting NaN to an integer is undefined behaviour: it becomes code 0.
    const float q = std::roundf(x[j] * id);
    qs[j] = q == q ? static_cast<int8_t>(q) : 0;
    sum += qs[j];
  }
  return sum;
}

// Q8_1's s uses the f32 scale d (not its f16 rounding), as llama.cpp does.
void quantize_block_q8_1(const float* x, BlockQ8_1* y) {
  float d = 0.0f;
  const int sum = quantize_block_q8(x, y->qs, &y->d, &d);
  y->s = fp32_to_fp16(static_cast<float>(sum) * d);
}

}  // namespace

void dequantize_row_ref(DType type, const void* src, float* dst, int64_t n) {
  check_blocks(type, n);
  const int64_t nb = n / kQK;
  switch (type) {
    case DType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(s[i]);
      return;
    }
    case DType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(s[i]);
      return;
    }
    case DType::Q4_0: {
      const BlockQ4_0* b = static_cast<const BlockQ4_0*>(src);
      for (int64_t i = 0; i < nb; ++i, dst += kQK) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < kQK / 2; ++j) {
          dst[j] = static_cast<float>((b[i].qs[j] & 0x0f) - 8) * d;
          dst[j + kQK / 2] = static_cast<float>((b[i].qs[j] >> 4) - 8) * d;
        }
      }
      return;
    }
    case DType::Q4_1: {
      const BlockQ4_1* b = static_cast<const BlockQ4_1*>(src);
      for (int64_t i = 0; i < nb; ++i, dst += kQK) {
        const float d = fp16_to_fp32(b[i].d);
        const float m = fp16_to_fp32(b[i].m);
        for (int j = 0; j < kQK / 2; ++j) {
          dst[j] = static_cast<float>(b[i].qs[j] & 0x0f) * d + m;
          dst[j + kQK / 2] = static_cast<float>(b[i].qs[j] >> 4) * d + m;
        }
      }
      return;
    }
    case DType::Q8_0: {
      const BlockQ8_0* b = static_cast<const BlockQ8_0*>(src);
      for (int64_t i = 0; i < nb; ++i, dst += kQK) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < kQK; ++j) dst[j] = static_cast<float>(b[i].qs[j]) * d;
      }
      return;
    }
    case DType::Q8_1: {
      const BlockQ8_1* b = static_cast<const BlockQ8_1*>(src);
      for (int64_t i = 0; i < nb; ++i, dst += kQK) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < kQK; ++j) dst[j] = static_cast<float>(b[i].qs[j]) * d;
      }
      return;
    }
    default:
      if (is_k_type(type)) return dequantize_row_k(type, src, dst, n);
      QILIN_ASSERT(is_int4_type(type) && "dequantize_row_ref: unsupported type");
      dequantize_row_int4(type, src, dst, n);
  }
}

void quantize_row_ref(DType type, const float* src, void* dst, int64_t n) {
  check_blocks(type, n);
  const int64_t nb = n / kQK;
  switch (type) {
    case DType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::F16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = fp32_to_fp16(src[i]);
      return;
    }
    case DType::BF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = fp32_to_bf16(src[i]);
      return;
    }
    case DType::Q4_0:
      for (int64_t i = 0; i < nb; ++i)
        quantize_block_sym(src + i * kQK, 8, static_cast<BlockQ4_0*>(dst) + i);
      return;
    case DType::Q4_1:
      for (int64_t i = 0; i < nb; ++i)
        quantize_block_min(src + i * kQK, 15, static_cast<BlockQ4_1*>(dst) + i);
      return;
    case DType::Q5_0:
      for (int64_t i = 0; i < nb; ++i)
        quantize_block_sym(src + i * kQK, 16, static_cast<BlockQ5_0*>(dst) + i);
      return;
    case DType::Q5_1:
      for (int64_t i = 0; i < nb; ++i)
        quantize_block_min(src + i * kQK, 31, static_cast<BlockQ5_1*>(dst) + i);
      return;
    case DType::Q8_0:
      for (int64_t i = 0; i < nb; ++i) {
        BlockQ8_0* y = static_cast<BlockQ8_0*>(dst) + i;
        float d = 0.0f;
        quantize_block_q8(src + i * kQK, y->qs, &y->d, &d);
      }
      return;
    case DType::Q8_1:
      for (int64_t i = 0; i < nb; ++i)
        quantize_block_q8_1(src + i * kQK, static_cast<BlockQ8_1*>(dst) + i);
      return;
    default:
      if (has_quantize_k(type)) return quantize_row_k(type, src, dst, n);
      QILIN_ASSERT(is_int4_type(type) && "quantize_row_ref: unsupported type");
      quantize_row_int4(type, src, dst, n);
  }
}

// ---- scalar kernels: the reference every SIMD path is tested against ----
// Block sums are exact integers; each block adds (d_w * d_a) * sum in f32, the same scale
// product the SIMD kernels use, so the two differ only in the order of f32 additions.
namespace scalar {

float vec_dot_q4_0_q8_0(int64_t n, const void* w, const void* a) {
  const BlockQ4_0* x = static_cast<const BlockQ4_0*>(w);
  const BlockQ8_0* y = static_cast<const BlockQ8_0*>(a);
  float sum = 0.0f;
  for (int64_t i = 0; i < n / kQK; ++i) {
    int sumi = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      sumi += ((x[i].qs[j] & 0x0f) - 8) * y[i].qs[j];
      sumi += ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + kQK / 2];
    }
    sum += (fp16_to_fp32(x[i].d) * fp16_to_fp32(y[i].d)) * static_cast<float>(sumi);
  }
  return sum;
}

// Q8_1's s = d_a * sum(q_a) folds the minimum's contribution: sum_j m * a_j = m * s.
float vec_dot_q4_1_q8_1(int64_t n, const void* w, const void* a) {
  const BlockQ4_1* x = static_cast<const BlockQ4_1*>(w);
  const BlockQ8_1* y = static_cast<const BlockQ8_1*>(a);
  float sum = 0.0f;
  for (int64_t i = 0; i < n / kQK; ++i) {
    int sumi = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      sumi += (x[i].qs[j] & 0x0f) * y[i].qs[j];
      sumi += (x[i].qs[j] >> 4) * y[i].qs[j + kQK / 2];
    }
    sum += (fp16_to_fp32(x[i].d) * fp16_to_fp32(y[i].d)) * static_cast<float>(sumi);
    sum += fp16_to_fp32(x[i].m) * fp16_to_fp32(y[i].s);
  }
  return sum;
}

float vec_dot_q8_0_q8_0(int64_t n, const void* w, const void* a) {
  const BlockQ8_0* x = static_cast<const BlockQ8_0*>(w);
  const BlockQ8_0* y = static_cast<const BlockQ8_0*>(a);
  float sum = 0.0f;
  for (int64_t i = 0; i < n / kQK; ++i) {
    int sumi = 0;
    for (int j = 0; j < kQK; ++j) sumi += x[i].qs[j] * y[i].qs[j];
    sum += (fp16_to_fp32(x[i].d) * fp16_to_fp32(y[i].d)) * static_cast<float>(sumi);
  }
  return sum;
}

float vec_dot_f16_f16(int64_t n, const void* w, const void* a) {
  const uint16_t* x = static_cast<const uint16_t*>(w);
  const uint16_t* y = static_cast<const uint16_t*>(a);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += fp16_to_fp32(x[i]) * fp16_to_fp32(y[i]);
  return sum;
}

float vec_dot_bf16_bf16(int64_t n, const void* w, const void* a) {
  const uint16_t* x = static_cast<const uint16_t*>(w);
  const uint16_t* y = static_cast<const uint16_t*>(a);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += bf16_to_fp32(x[i]) * bf16_to_fp32(y[i]);
  return sum;
}

float vec_dot_f32_f32(int64_t n, const void* w, const void* a) {
  const float* x = static_cast<const float*>(w);
  const float* y = static_cast<const float*>(a);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += x[i] * y[i];
  return sum;
}

void quantize_row_q8_0(const float* src, void* dst, int64_t n) {
  quantize_row_ref(DType::Q8_0, src, dst, n);
}
void quantize_row_q8_1(const float* src, void* dst, int64_t n) {
  quantize_row_ref(DType::Q8_1, src, dst, n);
}
void quantize_row_f16(const float* src, void* dst, int64_t n) {
  quantize_row_ref(DType::F16, src, dst, n);
}
void quantize_row_bf16(const float* src, void* dst, int64_t n) {
  quantize_row_ref(DType::BF16, src, dst, n);
}

}  // namespace scalar

// ---- the matmul kernels of each ISA ----

namespace {

void copy_row_f32(const float* src, void* dst, int64_t n) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}

// The generic path for weight types without kernels of their own (quants_k.h): each block is
// dequantized by the reference and dotted with the F32 activation, in element order, so the
// result equals dequantize_row_ref followed by a sequential F32 dot. Correct, not fast.
template <DType kType>
float vec_dot_dequant_f32(int64_t n, const void* w, const void* a) {
  const DTypeInfo& info = dtype_info(kType);
  const auto* wb = static_cast<const uint8_t*>(w);
  const float* y = static_cast<const float*>(a);
  float block[kQKK];
  float sum = 0.0f;
  for (int64_t i = 0; i < n; i += info.block_size, wb += info.block_bytes) {
    dequantize_row_ref(kType, wb, block, info.block_size);
    for (int64_t j = 0; j < info.block_size; ++j) sum += block[j] * y[i + j];
  }
  return sum;
}
#define QILIN_DEQUANT_ENTRY(t) \
  { DType::t, DType::F32, vec_dot_dequant_f32<DType::t>, copy_row_f32 }

// Tables indexed by weight type; the order of entries does not matter.
#define QILIN_KERNEL_TABLE(ns)                                                    \
  {                                                                               \
    {DType::Q4_0, DType::Q8_0, ns::vec_dot_q4_0_q8_0, ns::quantize_row_q8_0},     \
        {DType::Q4_1, DType::Q8_1, ns::vec_dot_q4_1_q8_1, ns::quantize_row_q8_1}, \
        {DType::Q8_0, DType::Q8_0, ns::vec_dot_q8_0_q8_0, ns::quantize_row_q8_0}, \
        {DType::F16, DType::F16, ns::vec_dot_f16_f16, ns::quantize_row_f16},      \
        {DType::BF16, DType::BF16, ns::vec_dot_bf16_bf16, ns::quantize_row_bf16}, \
        {DType::F32, DType::F32, ns::vec_dot_f32_f32, copy_row_f32},              \
        {DType::QI4_G32, DType::Q8_1, ns::vec_dot_qi4_g32_q8_1, ns::quantize_row_q8_1},   \
        {DType::QI4_G64, DType::Q8_1, ns::vec_dot_qi4_g64_q8_1, ns::quantize_row_q8_1},   \
        {DType::QI4_G128, DType::Q8_1, ns::vec_dot_qi4_g128_q8_1, ns::quantize_row_q8_1}, \
        {DType::NF4, DType::Q8_0, ns::vec_dot_nf4_q8_0, ns::quantize_row_q8_0},           \
        {DType::NF4_DQ, DType::Q8_0, ns::vec_dot_nf4dq_q8_0, ns::quantize_row_q8_0},      \
        QILIN_DEQUANT_ENTRY(Q5_0), QILIN_DEQUANT_ENTRY(Q5_1), QILIN_DEQUANT_ENTRY(IQ4_NL),    \
        QILIN_DEQUANT_ENTRY(Q2_K), QILIN_DEQUANT_ENTRY(Q3_K), QILIN_DEQUANT_ENTRY(Q4_K),      \
        QILIN_DEQUANT_ENTRY(Q5_K), QILIN_DEQUANT_ENTRY(Q6_K), QILIN_DEQUANT_ENTRY(Q8_K),      \
        QILIN_DEQUANT_ENTRY(IQ4_XS),                                                          \
  }

const MatmulKernels kScalarKernels[] = QILIN_KERNEL_TABLE(scalar);
#ifdef QILIN_X86
const MatmulKernels kAvx2Kernels[] = QILIN_KERNEL_TABLE(avx2);
const MatmulKernels kAvx512Kernels[] = QILIN_KERNEL_TABLE(avx512);
#endif
#undef QILIN_KERNEL_TABLE
#undef QILIN_DEQUANT_ENTRY

template <size_t N>
const MatmulKernels* find_kernels(const MatmulKernels (&table)[N], DType weight) {
  for (const MatmulKernels& k : table) {
    if (k.weight == weight) return &k;
  }
  return nullptr;
}

}  // namespace

const MatmulKernels* matmul_kernels(DType weight, Isa isa) {
  switch (isa) {
    case Isa::Scalar:
      return find_kernels(kScalarKernels, weight);
#ifdef QILIN_X86
    case Isa::Avx2:
      return find_kernels(kAvx2Kernels, weight);
    case Isa::Avx512:
      return find_kernels(kAvx512Kernels, weight);
#else
    default:
      return nullptr;
#endif
  }
  return nullptr;
}

}  // namespace qilin
