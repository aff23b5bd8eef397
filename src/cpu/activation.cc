// Scalar SwiGLU and its dispatch (see activation.h).
#include "cpu/activation.h"

#include <cmath>

namespace qilin {

void swiglu_ref(const float* g, const float* u, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

SwigluFn swiglu_kernel(Isa isa) { return isa == Isa::Avx512 ? avx512::swiglu : swiglu_ref; }

}  // namespace qilin
