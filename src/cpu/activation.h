// Elementwise activation kernels on the hot path of prompt processing (SwiGLU over
// n_tokens x n_ff values per layer), with a scalar reference and per-ISA versions.
#pragma once

#include <cstdint>

#include "cpu/isa.h"

namespace qilin {

// out = silu(g) * u = g / (1 + e^-g) * u; out may alias g or u.
using SwigluFn = void (*)(const float* g, const float* u, float* out, int64_t n);
void swiglu_ref(const float* g, const float* u, float* out, int64_t n);
SwigluFn swiglu_kernel(Isa isa);

namespace avx512 {
void swiglu(const float* g, const float* u, float* out, int64_t n);
}  // namespace avx512

}  // namespace qilin
