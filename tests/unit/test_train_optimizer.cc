// AdamW, the learning-rate schedule, global-norm clipping and dynamic loss scaling against
// their defining formulas (PyTorch's AdamW algorithm, Megatron's loss-scaler rules).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "train/optimizer.h"

namespace qilin::train {
namespace {

TEST(TrainOptimizer, AdamWFollowsTheAlgorithmOverSeveralSteps) {
  AdamWConfig c;
  c.lr = 0.01f;
  c.weight_decay = 0.1f;
  std::vector<float> p = {0.5f, -1.0f, 2.0f};
  const std::vector<std::vector<float>> grads = {{0.1f, -0.2f, 0.0f}, {0.3f, 0.1f, -0.5f}, {-0.2f, 0.0f, 0.4f}};
  // Reference in double, written from torch.optim.AdamW's documented algorithm.
  std::vector<double> rp(p.begin(), p.end()), m(3, 0), v(3, 0);
  AdamWState st;
  for (int t = 1; t <= 3; ++t) {
    const std::vector<float>& g = grads[t - 1];
    adamw_update(p.data(), g.data(), 3, st, t, c, c.lr);
    for (int i = 0; i < 3; ++i) {
      rp[i] -= c.lr * c.weight_decay * rp[i];
      m[i] = 0.9 * m[i] + 0.1 * g[i];
      v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
      const double mh = m[i] / (1 - std::pow(0.9, t)), vh = v[i] / (1 - std::pow(0.999, t));
      rp[i] -= c.lr * mh / (std::sqrt(vh) + 1e-8);
    }
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(p[i], rp[i], 1e-6) << "step " << t << " param " << i;
  }
  // The first step moves each parameter with a nonzero gradient by ~lr (Adam's sign step).
  std::vector<float> q = {0.0f};
  AdamWState s2;
  const float g = 1e-3f;
  adamw_update(q.data(), &g, 1, s2, 1, AdamWConfig{}, 0.5f);
  EXPECT_NEAR(q[0], -0.5f, 1e-4);
}

TEST(TrainOptimizer, WarmupThenCosine) {
  EXPECT_FLOAT_EQ(lr_at(0, 10, 110, 1.0f, 0.1f), 0.1f);
  EXPECT_FLOAT_EQ(lr_at(9, 10, 110, 1.0f, 0.1f), 1.0f);
  EXPECT_FLOAT_EQ(lr_at(10, 10, 110, 1.0f, 0.1f), 1.0f);
  EXPECT_NEAR(lr_at(60, 10, 110, 1.0f, 0.1f), 0.55f, 1e-6);  // halfway down
  EXPECT_NEAR(lr_at(110, 10, 110, 1.0f, 0.1f), 0.1f, 1e-6);
}

TEST(TrainOptimizer, ClipGlobalNormAcrossTensors) {
  std::vector<float> a = {3.0f, 0.0f}, b = {4.0f};
  const double norm = clip_global_norm({{a.data(), 2}, {b.data(), 1}}, 1.0);
  EXPECT_NEAR(norm, 5.0, 1e-9);
  EXPECT_NEAR(a[0], 0.6f, 1e-5);
  EXPECT_NEAR(b[0], 0.8f, 1e-5);
  std::vector<float> c = {0.1f};
  clip_global_norm({{c.data(), 1}}, 1.0);
  EXPECT_EQ(c[0], 0.1f);  // under the limit: untouched
}

TEST(TrainOptimizer, LossScalerSkipsOverflowsAndMovesTheScale) {
  LossScaler s(65536.0f, /*growth_interval=*/3, /*hysteresis=*/2);
  std::vector<float> g = {65536.0f * 0.5f};
  EXPECT_TRUE(s.unscale_and_check({{g.data(), 1}}));
  EXPECT_FLOAT_EQ(g[0], 0.5f);  // unscaled
  // Two clean steps more: the scale doubles after three.
  for (int i = 0; i < 2; ++i) {
    g = {1.0f};
    EXPECT_TRUE(s.unscale_and_check({{g.data(), 1}}));
  }
  EXPECT_FLOAT_EQ(s.scale(), 131072.0f);
  // Hysteresis 2: the first overflow skips the step, the second also halves the scale.
  g = {std::numeric_limits<float>::infinity()};
  EXPECT_FALSE(s.unscale_and_check({{g.data(), 1}}));
  EXPECT_FLOAT_EQ(s.scale(), 131072.0f);
  g = {std::nanf("")};
  EXPECT_FALSE(s.unscale_and_check({{g.data(), 1}}));
  EXPECT_FLOAT_EQ(s.scale(), 65536.0f);
  EXPECT_EQ(s.skipped(), 2);
  // The hysteresis is spent until the scale grows again: a third overflow halves at once.
  g = {1.0f};
  EXPECT_TRUE(s.unscale_and_check({{g.data(), 1}}));
  g = {std::numeric_limits<float>::infinity()};
  EXPECT_FALSE(s.unscale_and_check({{g.data(), 1}}));
  EXPECT_FLOAT_EQ(s.scale(), 32768.0f);
  // After growing (three clean steps), the first overflow only skips again.
  for (int i = 0; i < 3; ++i) {
    g = {1.0f};
    EXPECT_TRUE(s.unscale_and_check({{g.data(), 1}}));
  }
  EXPECT_FLOAT_EQ(s.scale(), 65536.0f);
  g = {std::numeric_limits<float>::infinity()};
  EXPECT_FALSE(s.unscale_and_check({{g.data(), 1}}));
  EXPECT_FLOAT_EQ(s.scale(), 65536.0f);
  // Hysteresis 1: one injected inf skips exactly that step and halves the scale; never below 1.
  LossScaler h(2.0f, 1000, 1);
  g = {std::numeric_limits<float>::infinity()};
  EXPECT_FALSE(h.unscale_and_check({{g.data(), 1}}));
  EXPECT_FLOAT_EQ(h.scale(), 1.0f);
  g = {std::numeric_limits<float>::infinity()};
  EXPECT_FALSE(h.unscale_and_check({{g.data(), 1}}));
  EXPECT_FLOAT_EQ(h.scale(), 1.0f);
  g = {2.0f};
  EXPECT_TRUE(h.unscale_and_check({{g.data(), 1}}));
  EXPECT_EQ(h.skipped(), 2);
}

}  // namespace
}  // namespace qilin::train
