// Tiled kernels for Q4_0, Q4_1 and Q8_0 weights: picks the per-ISA gemm, and holds the ISA-free
// parts of the packed layout (group plan, scalar tail packing; see gemm_quant_impl.h). No scalar
// tile: the caller's vec_dot-per-pair fallback is already the scalar reference.
// NOTE: shared helpers live here, compiled without ISA flags, rather than inline in the header:
// an inline function compiled into both an AVX-512 and an AVX2 file may be merged by the linker
// into the AVX-512 copy and then run on a CPU that lacks it.
#include <cstring>

#include "core/fp16.h"
#include "cpu/gemm.h"
#include "cpu/gemm_quant_impl.h"

namespace qilin {

GemmFn gemm_quant_kernel(DType weight, Isa isa) {
  if (!cpu_supports(isa)) return nullptr;
  switch (isa) {
    case Isa::Avx512:
      if (weight == DType::Q4_0) return avx512::gemm_q4_0_q8_0;
      if (weight == DType::Q4_1) return avx512::gemm_q4_1_q8_1;
      if (weight == DType::Q8_0) return avx512::gemm_q8_0_q8_0;
      return nullptr;
    case Isa::Avx2:
      if (weight == DType::Q4_0) return avx2::gemm_q4_0_q8_0;
      if (weight == DType::Q4_1) return avx2::gemm_q4_1_q8_1;
      if (weight == DType::Q8_0) return avx2::gemm_q8_0_q8_0;
      return nullptr;
    case Isa::Scalar:
      return nullptr;
  }
  return nullptr;
}

namespace gemm_quant {

GroupPlan plan_groups(int64_t n, int lanes) {
  GroupPlan p;
  p.lanes = lanes;
  const int64_t nb = n / kQK;
  p.n_full = nb / lanes;
  const int rem = static_cast<int>(nb % lanes);
  if (rem > 0) {
    // The smallest power of two that holds the tail, but at least lanes / 8 blocks: a block
    // cannot spread over more than its 8 dwords.
    int g = lanes / 8;
    while (g < rem) g *= 2;
    p.tail_real = rem;
    p.tail_blocks = g;
    p.tail_steps = 8 * g / lanes;
  }
  const size_t vec = static_cast<size_t>(lanes) * 4;
  p.full_bytes = 8 * vec + 2 * vec;
  p.row_bytes = static_cast<size_t>(p.n_full) * p.full_bytes +
                (p.tail_steps > 0 ? static_cast<size_t>(p.tail_steps) * vec + 2 * vec : 0);
  return p;
}

namespace {

// One block's 32 elements as stored bytes (nibbles widened to 0..15), its scale and its
// second field (Q4_1's m, Q8_1's s; 0 for the others).
void unpack_block(DType type, const uint8_t* blk, uint8_t* q, float* d, float* x) {
  uint16_t h0, h1;
  std::memcpy(&h0, blk, 2);
  std::memcpy(&h1, blk + 2, 2);
  *d = fp16_to_fp32(h0);
  *x = 0.0f;
  switch (type) {
    case DType::Q4_0:
    case DType::Q4_1: {
      const uint8_t* qs = blk + (type == DType::Q4_0 ? 2 : 4);
      for (int j = 0; j < kQK / 2; ++j) {
        q[j] = qs[j] & 0x0f;
        q[j + kQK / 2] = qs[j] >> 4;
      }
      if (type == DType::Q4_1) *x = fp16_to_fp32(h1);
      break;
    }
    case DType::Q8_0:
      std::memcpy(q, blk + 2, kQK);
      break;
    case DType::Q8_1:
      std::memcpy(q, blk + 4, kQK);
      *x = fp16_to_fp32(h1);
      break;
    default:
      break;
  }
}

}  // namespace

void pack_tail(const GroupPlan& plan, DType type, const void* src_blocks, uint8_t xor_mask,
               int corr_offset, uint8_t* dst) {
  const int lanes = plan.lanes, g = plan.tail_blocks, steps = plan.tail_steps;
  const int per_block = lanes / g;  // dwords (lanes) each block fills per step
  const size_t block_bytes = row_bytes(type, kQK);
  const size_t vec = static_cast<size_t>(lanes) * 4;
  const auto* src = static_cast<const uint8_t*>(src_blocks);
  uint8_t* data = dst;
  float* d = reinterpret_cast<float*>(dst + steps * vec);
  uint8_t* x = dst + steps * vec + vec;
  std::memset(dst, 0, steps * vec + 2 * vec);
  for (int b = 0; b < plan.tail_real; ++b) {
    uint8_t q[kQK];
    float db, xb;
    unpack_block(type, src + b * block_bytes, q, &db, &xb);
    for (int i = 0; i < per_block; ++i) {
      const int lane = b * per_block + i;
      int32_t lane_sum = 0;
      for (int k = 0; k < steps; ++k) {
        const uint8_t* from = q + 4 * (k * per_block + i);
        uint8_t* to = data + k * vec + 4 * lane;
        for (int j = 0; j < 4; ++j) {
          to[j] = from[j] ^ xor_mask;
          lane_sum += static_cast<int8_t>(from[j]);
        }
      }
      d[lane] = db;
      if (corr_offset != 0) {
        const int32_t corr = -corr_offset * lane_sum;
        std::memcpy(x + 4 * lane, &corr, 4);
      } else if (i == 0) {
        std::memcpy(x + 4 * lane, &xb, 4);
      }
    }
  }
}

}  // namespace gemm_quant

}  // namespace qilin
