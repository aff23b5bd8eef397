// The per-ISA training attention kernels (cpu/train_attention.h) against the reference loops of
// ops/train_ops.h (themselves checked against finite differences in test_train_layers.cc), run
// in double on the same float inputs: forward output and log-sum-exp, and the backward's dq,
// dk, dv, over shapes with awkward sizes and item ranges split as threads split them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "cpu/train_attention.h"
#include "ops/train_ops.h"
#include "reference/random_decoder.h"

namespace qilin {
namespace {

struct Shape {
  int64_t n;
  int32_t H, Hkv, hd;
};
// SmolLM2's heads (9 over 3, head_dim 64) at lengths that are not multiples of a tile, and
// other head sizes (128, 32, 24 and 7 are not multiples of 16; 7 not of 8 either).
const Shape kShapes[] = {{1, 1, 1, 64},   {5, 9, 3, 64},   {37, 9, 3, 64},
                         {131, 9, 3, 64}, {70, 2, 1, 128}, {45, 4, 4, 32},
                         {33, 6, 2, 24},  {20, 3, 1, 7},   {17, 8, 2, 16}};

std::vector<float> randn(size_t n, std::mt19937& rng, float sd) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}
std::vector<double> widen(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// Largest |got - want| over the largest |want| (1 if that is smaller); NaN never passes.
double rel_err(const std::vector<float>& got, const std::vector<double>& want) {
  double worst = 0, scale = 1;
  for (double w : want) scale = std::max(scale, std::fabs(w));
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs(got[i] - want[i]);
    if (!(e == e)) return INFINITY;
    worst = std::max(worst, e);
  }
  return worst / scale;
}

// Item ranges of one KV head as nth threads take them (train_attention_split), or cut at
// arbitrary points (the kernels accept any range).
std::vector<std::pair<int64_t, int64_t>> ranges(int64_t n_items, int64_t n, int32_t group,
                                                int32_t lanes, int nth, bool arbitrary,
                                                std::mt19937& rng) {
  std::vector<std::pair<int64_t, int64_t>> r;
  if (arbitrary) {
    std::vector<int64_t> cut = {0, n_items};
    std::uniform_int_distribution<int64_t> u(0, n_items);
    for (int i = 1; i < nth; ++i) cut.push_back(u(rng));
    std::sort(cut.begin(), cut.end());
    for (size_t i = 0; i + 1 < cut.size(); ++i) r.push_back({cut[i], cut[i + 1]});
    return r;
  }
  int64_t covered = 0;
  for (int ith = 0; ith < nth; ++ith) {
    int64_t i0, i1;
    train_attention_split(n, group, lanes, ith, nth, &i0, &i1);
    EXPECT_EQ(i0, covered);
    EXPECT_TRUE(i0 == i1 || i0 % lanes == 0);
    covered = std::max(covered, i1);
    r.push_back({i0, i1});
  }
  EXPECT_EQ(covered, n_items);
  return r;
}

TEST(TrainAttention, KernelsMatchTheReferenceLoops) {
  int tested = 0;
  for (Isa isa : {Isa::Avx2, Isa::Avx512}) {
    const TrainAttnKernels* k = train_attention_kernels(isa);
    if (!cpu_supports(isa)) {
      EXPECT_EQ(k, nullptr);
      continue;
    }
    ASSERT_NE(k, nullptr);
    ++tested;
    std::mt19937 rng(11);
    for (const Shape& s : kShapes) {
      for (float sd : {1.0f, 3.0f}) {  // 3: peaked softmax rows
        const int32_t group = s.H / s.Hkv;
        const int64_t nq = s.n * s.H * s.hd, nkv = s.n * s.Hkv * s.hd;
        const std::vector<float> q = randn(nq, rng, sd), kk = randn(nkv, rng, sd),
                                 v = randn(nkv, rng, 1.0f), dout = randn(nq, rng, 1.0f);
        // Reference in double.
        const std::vector<double> qd = widen(q), kd = widen(kk), vd = widen(v), gd = widen(dout);
        std::vector<double> out_r(nq), lse_r(s.n * s.H), dq_r(nq, 0.0), dk_r(nkv, 0.0),
            dv_r(nkv, 0.0);
        attention_forward(qd.data(), kd.data(), vd.data(), s.n, s.H, s.Hkv, s.hd,
                                 out_r.data(), lse_r.data());
        attention_backward(gd.data(), qd.data(), kd.data(), vd.data(), out_r.data(),
                                  lse_r.data(), s.n, s.H, s.Hkv, s.hd, dq_r.data(), dk_r.data(),
                                  dv_r.data());
        for (bool arbitrary : {false, true}) {
          const int nth = arbitrary ? 4 : 3;
          const TrainAttnArgs a{q.data(), kk.data(), v.data(), s.n, s.H, s.Hkv, s.hd};
          std::vector<float> out(nq, NAN), lse(s.n * s.H, NAN), dq(nq, 0.0f), dk(nkv, 0.0f),
              dv(nkv, 0.0f);
          std::vector<std::vector<float>> part_dk(nth), part_dv(nth);
          for (int32_t g = 0; g < s.Hkv; ++g) {
            const auto rs = ranges(s.n * group, s.n, group, k->lanes, nth, arbitrary, rng);
            for (const auto& [i0, i1] : rs) k->forward(a, g, i0, i1, out.data(), lse.data());
          }
          // The backward reads the kernels' own forward, as training does.
          for (int32_t g = 0; g < s.Hkv; ++g) {
            const auto rs = ranges(s.n * group, s.n, group, k->lanes, nth, arbitrary, rng);
            for (size_t t = 0; t < rs.size(); ++t) {
              part_dk[t].resize(nkv, 0.0f);
              part_dv[t].resize(nkv, 0.0f);
              k->backward(a, out.data(), lse.data(), dout.data(), g, rs[t].first, rs[t].second,
                          dq.data(), part_dk[t].data(), part_dv[t].data());
            }
          }
          for (int t = 0; t < nth; ++t) {
            for (int64_t i = 0; i < nkv && !part_dk[t].empty(); ++i) {
              dk[i] += part_dk[t][i];
              dv[i] += part_dv[t][i];
            }
          }
          SCOPED_TRACE(testing::Message() << isa_name(isa) << " n " << s.n << " H " << s.H
                                          << " Hkv " << s.Hkv << " hd " << s.hd << " sd " << sd
                                          << (arbitrary ? " arbitrary ranges" : " thread split"));
          EXPECT_LT(rel_err(out, out_r), 2e-5);
          EXPECT_LT(rel_err(lse, lse_r), 2e-5);
          EXPECT_LT(rel_err(dq, dq_r), 3e-5);
          EXPECT_LT(rel_err(dk, dk_r), 3e-5);
          EXPECT_LT(rel_err(dv, dv_r), 3e-5);
        }
      }
    }
  }
  if (tested == 0) GTEST_SKIP() << "no SIMD ISA on this CPU";
}

TEST(TrainAttention, ScalarIsaHasNoKernelAndTheSplitCoversEveryItem) {
  EXPECT_EQ(train_attention_kernels(Isa::Scalar), nullptr);
  // Later rows cost more: with two threads the first takes more items than the second.
  int64_t a0, a1, b0, b1;
  train_attention_split(512, 3, 16, 0, 2, &a0, &a1);
  train_attention_split(512, 3, 16, 1, 2, &b0, &b1);
  EXPECT_EQ(a0, 0);
  EXPECT_EQ(a1, b0);
  EXPECT_EQ(b1, 512 * 3);
  EXPECT_GT(a1 - a0, b1 - b0);
  // More threads than tiles: the extra threads get nothing.
  for (int ith = 0; ith < 8; ++ith) {
    int64_t i0, i1;
    train_attention_split(2, 1, 16, ith, 8, &i0, &i1);
    EXPECT_TRUE((i0 == 0 && i1 == 2) || i0 == i1) << ith;
  }
}

// A small float model trained (the library's trainer) with the SIMD kernels and with the
// reference loops: the same loss and adapter gradients (the kernels sit inside the whole graph,
// threads splitting items).
TEST(TrainAttention, ModelGradientsMatchTheReferenceAttention) {
  const TrainAttnKernels* k = train_attention_kernels();
  if (!k) GTEST_SKIP() << "no SIMD ISA on this CPU";
  train::LlamaShape s;
  s.n_vocab = 41;
  s.n_embd = 48;
  s.n_layer = 2;
  s.n_head = 6;
  s.n_head_kv = 2;
  s.head_dim = 16;
  s.n_ff = 64;
  s.n_rot = 16;
  train::RandomDecoder rd(s, train::LoraConfig{}, 5, 0.3);
  ThreadPool pool(2);
  auto ref = rd.trainer(train::LoraConfig{}, pool, 6, 0.2f);
  auto simd = rd.trainer(train::LoraConfig{}, pool, 6, 0.2f);
  ref->set_attention_kernels(nullptr);
  simd->set_attention_kernels(k);
  std::vector<int32_t> tokens(29), targets(29);
  for (int i = 0; i < 29; ++i) {
    tokens[i] = (i * 7 + 3) % s.n_vocab;
    targets[i] = (i * 5 + 1) % s.n_vocab;
  }
  const float lr = ref->forward(tokens.data(), targets.data(), 29);
  const float ls = simd->forward(tokens.data(), targets.data(), 29);
  EXPECT_NEAR(lr, ls, 1e-5 * std::fabs(lr));
  ref->backward();
  simd->backward();
  for (int32_t l = 0; l < s.n_layer; ++l) {
    for (int p = 0; p < train::kNumProj; ++p) {
      using Member = std::array<std::vector<float>, train::kNumProj> train::LoraLayer<float>::*;
      for (Member which : {&train::LoraLayer<float>::A, &train::LoraLayer<float>::B}) {
        const auto& a = ref->grad()[l].*which;
        const auto& b = simd->grad()[l].*which;
        for (size_t i = 0; i < a[p].size(); ++i) {
          ASSERT_NEAR(a[p][i], b[p][i], 1e-5 + 1e-3 * std::fabs(a[p][i]))
              << l << " " << p << " " << i;
        }
      }
    }
  }
}

}  // namespace
}  // namespace qilin
