// Scalar 16-bit rounding (the reference: core/fp16.h per element) and the per-ISA choice.
#include "cpu/round16.h"

#include "core/fp16.h"
#include "cpu/quants_impl.h"

namespace qilin {
namespace scalar {
namespace {
void round_f16(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = fp16_to_fp32(fp32_to_fp16(x[i]));
}
void round_bf16(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = bf16_to_fp32(fp32_to_bf16(x[i]));
}
void from_f16(const uint16_t* h, float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = fp16_to_fp32(h[i]);
}
void from_bf16(const uint16_t* h, float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = bf16_to_fp32(h[i]);
}
}  // namespace
const Round16Kernels kRound16Kernels = {round_f16, round_bf16,       from_f16,
                                        from_bf16, quantize_row_f16, quantize_row_bf16};
}  // namespace scalar

const Round16Kernels& round16_kernels(Isa isa) {
  switch (isa) {
    case Isa::Avx512:
      return avx512::kRound16Kernels;
    case Isa::Avx2:
      return avx2::kRound16Kernels;
    case Isa::Scalar:
      break;
  }
  return scalar::kRound16Kernels;
}

const Round16Kernels& round16_kernels() {
  static const Round16Kernels& k = round16_kernels(cpu_best_isa());
  return k;
}

}  // namespace qilin
