// Private: the per-ISA tiled quantized gemms behind gemm_quant_kernel(), and the packed
// "block per lane" layout they share. Only gemm_quant.cc (after the CPU check) and the
// tests/benchmarks' per-ISA loops reach the kernels.
// NOTE: calling an avx2:: or avx512:: function on a CPU without that ISA is undefined (SIGILL).
//
// Why a packed layout: with the blocks' natural byte order, each 32-element block fills 8 int32
// lanes of a dot product, so every block costs a convert + scale + FMA per (row, token) pair
// on top of its one VPDPBUSD. Each call therefore first repacks weights and activations so that
// one int32 lane holds one whole block: step k of a full group holds bytes 4k..4k+3 of each of
// `lanes` blocks (16 for ZMM, 8 for YMM). Eight integer dot steps then finish `lanes` blocks at
// once and the float epilogue runs once per group instead of once per block pair.
//
// Caller tiling: the kernels pack the activations once per call (amortised over the call's
// rows) and the weights once per 128-token slice (amortised over those tokens); they slice
// tokens by 128 and rows by 64 internally to stay in L2, so any call shape works, but larger
// calls pack less: ideally one call per thread with all of its rows and all tokens. Measured
// on the 2-core Zen 5 (AVX-512), 64-row x 64-token calls lose ~12-15% against one call for a
// whole 1536x576 or 576x1536 matrix x 512 tokens.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace qilin {

namespace gemm_quant {

// The three microkernels; Qilin's 4-bit types run as Q4_1 or Q8_0 (see pack_int4_row below).
enum class Kind { Q4_0, Q4_1, Q8_0 };

// How a row of n elements splits into groups. Full groups hold `lanes` blocks (8 steps); the
// tail (n / 32 % lanes blocks) is padded with zero blocks to a power of two of at least
// lanes / 8 blocks, each block then spreading over lanes / tail_blocks lanes per step.
struct GroupPlan {
  int lanes = 0;          // int32 lanes per vector: 16 (AVX-512) or 8 (AVX2)
  int64_t n_full = 0;     // full groups
  int tail_real = 0;      // blocks of the row in the tail group
  int tail_blocks = 0;    // padded blocks in the tail group, 0 if none
  int tail_steps = 0;     // 8 * tail_blocks / lanes
  size_t full_bytes = 0;  // packed bytes of one full group
  size_t row_bytes = 0;   // packed bytes of one row (weights) or token (activations)
};

// Packed group = [steps][lanes * 4 bytes] data, then lanes floats `d` (the lane's block
// scale), then lanes 4-byte `x`: Q4_1's m or Q8_1's s in the first lane of each block (zero in
// the others, so a lane-wise product sums to m * s once per block), or for Q8_0 activations
// the int32 correction -offset * (sum of the lane's activation bytes) that undoes the unsigned
// offset of the weights (8 for Q4_0 nibbles, 128 for AVX-512's Q8_0 weights ^ 0x80).
GroupPlan plan_groups(int64_t n, int lanes);

// Where each lane of the tail group reads, for packing it with gathers: the tail spreads each
// block over lanes / tail_blocks lanes, and padding lanes (blocks past the row) read nothing.
// NOTE: a tail of more than lanes / 2 blocks pads to lanes blocks, one per lane: 8 steps.
constexpr int kMaxTailSteps = 8;  // tail_blocks <= lanes
struct TailLayout {
  bool valid[16] = {};      // the lane belongs to a real block
  bool first[16] = {};      // ... and is that block's first lane (where m or s goes)
  int32_t header[16] = {};  // byte offset of the lane's block from the first tail block
  int32_t offset[kMaxTailSteps][16] = {};  // byte offset of the dword each step reads
  int32_t shift[kMaxTailSteps][16] = {};   // Q4 only: 0 (low nibbles) or 4 (high nibbles)
};
// For blocks of `type` (Q4_0, Q4_1: nibbles; Q8_0, Q8_1: bytes).
TailLayout plan_tail(const GroupPlan& plan, DType type);

// Qilin's 4-bit types (quants_int4.h) reuse the Q4_1 and Q8_0 microkernels through their own
// weight packer, which writes a row straight into the packed layout above:
// - QI4_G32/64/128 run as Q4_1 (Q8_1 activations): nibbles 0..15, d = the group's scale, x =
//   m = -d * z (exact in f32: an 11-bit f16 mantissa times a 4-bit zero).
// - NF4 / NF4_DQ run as Q8_0 (Q8_0 activations) on a row of twice the length: each code's
//   integer v = kNf4Int[code] (round(value * 2^12), what vec_dot uses) is split as 64 * hi + lo
//   with hi in [-64, 64] and lo in [0, 63], both int8; 32-element block b becomes packed block
//   2b (the hi bytes, d = absmax / 64) and 2b + 1 (the lo bytes, d = absmax / 4096), and the
//   activation row is read with every block twice (nf4_duplicate_act). One int8 lookup of
//   the code values at a fixed scale (round(127 v)) measured +0.09 perplexity on SmolLM2
//   (12.44 -> 12.53); the split keeps vec_dot's exact integer sums for 2x the integer work.
// Either way each block's integer sum is exact, so only the f32 summation order differs from
// vec_dot. int4_kernel_len: the packed row length for a row of n elements (n, or 2n for NF4).
int64_t int4_kernel_len(DType type, int64_t n);
// A row of n elements of `type` (n_kernel = int4_kernel_len(type, n) in `plan`); xor_byte is
// applied to the Q8_0-kind bytes (0x80: AVX-512's unsigned weights).
void pack_int4_row(const GroupPlan& plan, DType type, uint8_t xor_byte, const uint8_t* src,
                   int64_t n, uint8_t* dst);
// Q8_0 activations of n elements -> 2n, each block written twice (for NF4's hi/lo blocks).
void nf4_duplicate_act(const uint8_t* a, int64_t n, uint8_t* dst);

// Streams the next row slice's weight bytes into L2 while the current slice's tiles compute:
// `calls` tile calls each issue an equal share of [begin, begin + bytes). Without it the next
// slice's packing (or widening) reads DRAM in a burst with the cores otherwise idle, a fixed
// cost per slice that dominates batched decode (docs/benchmarks.md). Out of line so that the
// per-ISA files share one baseline-compiled copy.
class SlicePrefetch {
 public:
  SlicePrefetch() = default;
  SlicePrefetch(const void* begin, size_t bytes, int64_t calls);
  void step() {
    if (p_ < end_) step_slow();
  }

 private:
  void step_slow();
  const uint8_t* p_ = nullptr;
  const uint8_t* end_ = nullptr;
  size_t per_call_ = 0;
};

}  // namespace gemm_quant

// Signatures match GemmFn; activations are what matmul_kernels(weight, isa)->quantize_act made
// (Q8_0 for Q4_0, Q8_0, NF4 and NF4_DQ weights, Q8_1 for Q4_1 and QI4_G*).
#define QILIN_DECLARE_GEMM_QUANT                                                                   \
  void gemm_q4_0_q8_0(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,    \
                      size_t a_stride, int64_t n_tok, float* c, int64_t ldc);                      \
  void gemm_q4_1_q8_1(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,    \
                      size_t a_stride, int64_t n_tok, float* c, int64_t ldc);                      \
  void gemm_q8_0_q8_0(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,    \
                      size_t a_stride, int64_t n_tok, float* c, int64_t ldc);                      \
  void gemm_qi4_g32_q8_1(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a, \
                         size_t a_stride, int64_t n_tok, float* c, int64_t ldc);                   \
  void gemm_qi4_g64_q8_1(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a, \
                         size_t a_stride, int64_t n_tok, float* c, int64_t ldc);                   \
  void gemm_qi4_g128_q8_1(int64_t n, const void* w, size_t w_stride, int64_t n_rows,               \
                          const void* a, size_t a_stride, int64_t n_tok, float* c, int64_t ldc);   \
  void gemm_nf4_q8_0(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,     \
                     size_t a_stride, int64_t n_tok, float* c, int64_t ldc);                       \
  void gemm_nf4dq_q8_0(int64_t n, const void* w, size_t w_stride, int64_t n_rows, const void* a,   \
                       size_t a_stride, int64_t n_tok, float* c, int64_t ldc);

namespace avx2 {
QILIN_DECLARE_GEMM_QUANT
}  // namespace avx2
namespace avx512 {
QILIN_DECLARE_GEMM_QUANT
}  // namespace avx512

#undef QILIN_DECLARE_GEMM_QUANT

}  // namespace qilin
