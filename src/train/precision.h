// Training's compute precision. In BF16 or FP16 every activation and activation gradient is
// rounded to the 16-bit type where an op writes it, and ops accumulate in FP32 inside (what
// 16-bit tensors with FP32 accumulators give); LoRA weights are used as 16-bit copies of their
// FP32 master copy, and the loss and the weight gradients stay FP32. Saved activations are
// then exact in 16 bits, so they are stored in 16 bits (half the memory).
#pragma once

#include <cstdint>
#include <string>

#include "cpu/round16.h"

namespace qilin::train {

enum class Precision { F32, BF16, F16 };

inline const char* precision_name(Precision p) {
  return p == Precision::BF16 ? "bf16" : p == Precision::F16 ? "fp16" : "fp32";
}
// "fp32", "bf16", "fp16"; false for anything else.
inline bool parse_precision(const std::string& s, Precision* p) {
  if (s == "fp32") *p = Precision::F32;
  else if (s == "bf16") *p = Precision::BF16;
  else if (s == "fp16") *p = Precision::F16;
  else return false;
  return true;
}

// x[i] = the nearest value of the 16-bit type (FP16: beyond 65504 it becomes inf). The CPU's
// SIMD conversions (cpu/round16.h), bit-identical to core/fp16.h's per-element ones.
inline void round_to(Precision p, float* x, int64_t n) {
  if (p == Precision::BF16) {
    round16_kernels().round_bf16(x, n);
  } else if (p == Precision::F16) {
    round16_kernels().round_f16(x, n);
  }
}
// Double is the finite-difference tests' type: always exact.
inline void round_to(Precision, double*, int64_t) {}

inline void pack16(Precision p, const float* x, int64_t n, uint16_t* out) {
  if (p == Precision::BF16) {
    round16_kernels().to_bf16(x, out, n);
  } else {
    round16_kernels().to_f16(x, out, n);
  }
}
inline void unpack16(Precision p, const uint16_t* in, int64_t n, float* x) {
  if (p == Precision::BF16) {
    round16_kernels().from_bf16(in, x, n);
  } else {
    round16_kernels().from_f16(in, x, n);
  }
}

}  // namespace qilin::train
