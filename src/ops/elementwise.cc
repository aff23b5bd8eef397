// RMSNorm, SwiGLU and RoPE: per-row operators, cheap next to the matmuls.
#include <cmath>

#include "cpu/activation.h"
#include "ops/ops.h"

namespace qilin {

float rms_norm_rstd(const float* x, int64_t n, float eps) {
  // double, as llama.cpp: keeps the mean exact enough for long rows. Eight partial sums break
  // the chain of dependent adds (one sum: ~4 cycles per element, most of this function).
  double part[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) part[j] += static_cast<double>(x[i + j]) * x[i + j];
  }
  for (int j = 0; i < n; ++i, ++j) part[j] += static_cast<double>(x[i]) * x[i];
  const double sum = ((part[0] + part[1]) + (part[2] + part[3])) +
                     ((part[4] + part[5]) + (part[6] + part[7]));
  return 1.0f / std::sqrt(static_cast<float>(sum / n) + eps);
}

void rms_norm(const float* x, const float* w, float* out, int64_t n, float eps) {
  const float scale = rms_norm_rstd(x, n, eps);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * scale * w[i];
}

void swiglu(const float* g, const float* u, float* out, int64_t n) {
  static const SwigluFn kernel = swiglu_kernel(cpu_best_isa());
  kernel(g, u, out, n);
}

namespace {

// Rotates by the angles of position pos, or by their negatives (sign -1: the inverse).
void rope_rotate(float* x, int32_t n_head, int32_t head_dim, int32_t pos, const RopeParams& p,
                 float sign) {
  // NOTE: angles come from repeated multiplication by theta_scale, as llama.cpp builds them,
  // rather than pow() per pair: the two differ in the last bits and we want its logits.
  const float theta_scale = std::pow(p.freq_base, -2.0f / p.n_rot);
  float theta = static_cast<float>(pos);
  constexpr int kMaxPairs = 512;
  float cs[kMaxPairs], sn[kMaxPairs];
  const int32_t n_pairs = p.n_rot / 2;
  for (int32_t i = 0; i < n_pairs && i < kMaxPairs; ++i) {
    const float ff = p.freq_factors ? p.freq_factors[i] : 1.0f;
    const float t = p.freq_scale * (theta / ff);
    cs[i] = std::cos(t);
    sn[i] = sign * std::sin(t);
    theta *= theta_scale;
  }
  for (int32_t h = 0; h < n_head; ++h) {
    float* xh = x + static_cast<int64_t>(h) * head_dim;
    for (int32_t i = 0; i < n_pairs; ++i) {
      const int32_t a = p.neox ? i : 2 * i;
      const int32_t b = p.neox ? i + n_pairs : 2 * i + 1;
      const float x0 = xh[a], x1 = xh[b];
      xh[a] = x0 * cs[i] - x1 * sn[i];
      xh[b] = x0 * sn[i] + x1 * cs[i];
    }
  }
}

}  // namespace

void rope(float* x, int32_t n_head, int32_t head_dim, int32_t pos, const RopeParams& p) {
  rope_rotate(x, n_head, head_dim, pos, p, 1.0f);
}

void rope_inverse(float* x, int32_t n_head, int32_t head_dim, int32_t pos, const RopeParams& p) {
  rope_rotate(x, n_head, head_dim, pos, p, -1.0f);
}

}  // namespace qilin
