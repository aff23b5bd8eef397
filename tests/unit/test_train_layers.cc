// Every training operator's backward against central finite differences in double precision.
// Each check projects the op's output on a fixed random tensor R (loss = sum(out * R)), so the
// analytic gradient is the backward fed dout = R, and compares every input element's
// gradient with (loss(x + h) - loss(x - h)) / 2h.
#include <gtest/gtest.h>

#include <functional>
#include <random>
#include <vector>

#include "ops/train_ops.h"
#include "reference/lora_llama_ref.h"

namespace qilin::train {
namespace {

using Vec = std::vector<double>;

Vec randn(size_t n, std::mt19937& rng, double sd = 1.0) {
  std::normal_distribution<double> d(0.0, sd);
  Vec v(n);
  for (double& x : v) x = d(rng);
  return v;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Compares grad with central differences of loss() with respect to every element of x.
void expect_fd(Vec& x, const Vec& grad, const std::function<double()>& loss, const char* what,
               double tol = 1e-6) {
  ASSERT_EQ(x.size(), grad.size());
  const double h = 1e-5;
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + h;
    const double up = loss();
    x[i] = keep - h;
    const double down = loss();
    x[i] = keep;
    const double fd = (up - down) / (2 * h);
    const double err = std::fabs(fd - grad[i]) / std::max(1.0, std::fabs(fd));
    worst = std::max(worst, err);
    ASSERT_LT(err, tol) << what << "[" << i << "]: analytic " << grad[i] << " vs fd " << fd;
  }
  EXPECT_LT(worst, tol) << what;
}

TEST(TrainLayers, RmsNorm) {
  std::mt19937 rng(1);
  const int64_t n = 3, d = 7;
  Vec x = randn(n * d, rng), w = randn(d, rng), R = randn(n * d, rng);
  Vec out(n * d), rstd(n);
  auto loss = [&] {
    rmsnorm_forward(x.data(), w.data(), n, d, 1e-5, out.data(), rstd.data());
    return dot(out, R);
  };
  loss();
  Vec dx(n * d, 0.0), dw(d, 0.0);
  rmsnorm_backward(R.data(), x.data(), w.data(), rstd.data(), n, d, dx.data(), dw.data());
  expect_fd(x, dx, loss, "dx");
  expect_fd(w, dw, loss, "dw");
}

TEST(TrainLayers, LinearAndLora) {
  std::mt19937 rng(2);
  const int64_t n = 3, in = 6, out = 5, r = 2;
  const double scale = 1.7;
  Vec x = randn(n * in, rng), W = randn(out * in, rng), A = randn(r * in, rng),
      B = randn(out * r, rng), R = randn(n * out, rng);
  Vec y(n * out), xa(n * r);
  auto loss = [&] {
    linear_forward(x.data(), W.data(), n, in, out, y.data());
    lora_forward(x.data(), A.data(), B.data(), n, in, r, out, scale, xa.data(), y.data());
    return dot(y, R);
  };
  loss();
  Vec dx(n * in, 0.0), dW(out * in, 0.0), dA(r * in, 0.0), dB(out * r, 0.0);
  linear_backward(R.data(), x.data(), W.data(), n, in, out, dx.data(), dW.data());
  lora_backward(R.data(), x.data(), A.data(), B.data(), xa.data(), n, in, r, out, scale,
                dx.data(), dA.data(), dB.data());
  expect_fd(x, dx, loss, "dx");
  expect_fd(W, dW, loss, "dW");
  expect_fd(A, dA, loss, "dA");
  expect_fd(B, dB, loss, "dB");
}

TEST(TrainLayers, RopeBothStyles) {
  for (bool neox : {false, true}) {
    std::mt19937 rng(3);
    const int64_t n = 4;
    const int32_t H = 2, hd = 8, n_rot = 6;  // partial rotation: the last 2 dims pass through
    Vec x = randn(n * H * hd, rng), R = randn(n * H * hd, rng);
    auto loss = [&] {
      Vec y = x;
      rope_forward(y.data(), n, H, hd, n_rot, 10000.0, neox);
      return dot(y, R);
    };
    Vec dx = R;
    rope_backward(dx.data(), n, H, hd, n_rot, 10000.0, neox);
    expect_fd(x, dx, loss, neox ? "neox dx" : "dx");
  }
}

TEST(TrainLayers, CausalGroupedQueryAttention) {
  std::mt19937 rng(4);
  const int64_t n = 5;
  const int32_t H = 4, Hkv = 2, hd = 3;
  Vec q = randn(n * H * hd, rng), k = randn(n * Hkv * hd, rng), v = randn(n * Hkv * hd, rng),
      R = randn(n * H * hd, rng);
  Vec out(n * H * hd), lse(n * H);
  auto loss = [&] {
    attention_forward(q.data(), k.data(), v.data(), n, H, Hkv, hd, out.data(), lse.data());
    return dot(out, R);
  };
  loss();
  Vec dq(q.size(), 0.0), dk(k.size(), 0.0), dv(v.size(), 0.0);
  attention_backward(R.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), n, H, Hkv,
                     hd, dq.data(), dk.data(), dv.data());
  expect_fd(q, dq, loss, "dq");
  expect_fd(k, dk, loss, "dk");
  expect_fd(v, dv, loss, "dv");
  // Large logits: the saved log-sum-exp keeps the recomputed probabilities finite.
  for (double& e : q) e *= 300;
  loss();
  for (double l : lse) EXPECT_TRUE(std::isfinite(l));
}

TEST(TrainLayers, SwiGlu) {
  std::mt19937 rng(5);
  const int64_t m = 9;
  Vec g = randn(m, rng, 2.0), u = randn(m, rng), R = randn(m, rng), out(m);
  auto loss = [&] {
    swiglu_forward(g.data(), u.data(), m, out.data());
    return dot(out, R);
  };
  Vec dg(m, 0.0), du(m, 0.0);
  swiglu_backward(R.data(), g.data(), u.data(), m, dg.data(), du.data());
  expect_fd(g, dg, loss, "dg");
  expect_fd(u, du, loss, "du");
}

TEST(TrainLayers, EmbeddingAccumulatesRepeatedTokens) {
  std::mt19937 rng(6);
  const int64_t V = 5, d = 3;
  const int32_t tokens[4] = {1, 3, 1, 0};
  Vec table = randn(V * d, rng), R = randn(4 * d, rng), out(4 * d);
  auto loss = [&] {
    embedding_forward(table.data(), tokens, 4, d, out.data());
    return dot(out, R);
  };
  Vec dt(V * d, 0.0);
  embedding_backward(R.data(), tokens, 4, d, dt.data());
  expect_fd(table, dt, loss, "dtable");
}

TEST(TrainLayers, CrossEntropyFusedWithSoftmax) {
  std::mt19937 rng(7);
  const int64_t n = 4, V = 6;
  const int32_t target[4] = {2, -1, 5, 0};  // row 1 not counted
  Vec logits = randn(n * V, rng, 3.0);
  Vec dl(n * V);
  auto loss = [&] { return cross_entropy_forward_backward<double>(logits.data(), target, n, V, nullptr); };
  int64_t count = 0;
  const double l = cross_entropy_forward_backward(logits.data(), target, n, V, dl.data(), &count);
  EXPECT_EQ(count, 3);
  EXPECT_GT(l, 0);
  expect_fd(logits, dl, loss, "dlogits");
  for (int64_t i = 0; i < V; ++i) EXPECT_EQ(dl[V + i], 0.0);
  // Huge logits stay finite.
  Vec big(V, 0.0);
  big[1] = 1e4;
  const int32_t t1 = 2;
  Vec dbig(V);
  EXPECT_NEAR(cross_entropy_forward_backward(big.data(), &t1, 1, V, dbig.data()), 1e4, 1e-6);
}

}  // namespace
}  // namespace qilin::train

// ---- a whole tiny random Llama ---------------------------------------------------------------

namespace qilin::train {
namespace {

TEST(TrainLoraLlamaRef, AdapterGradientsMatchFiniteDifferences) {
  LlamaShape s;
  s.n_vocab = 11;
  s.n_embd = 8;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_head_kv = 2;
  s.head_dim = 4;
  s.n_ff = 12;
  s.n_rot = 4;
  s.tied_output = false;
  LoraConfig lc;
  lc.rank = 2;
  lc.alpha = 3;
  LoraLlamaRef<double> m(s, lc);
  m.init_random_base(1, 0.5);
  m.init_lora(2, /*b_sd=*/0.3);  // B nonzero so every adapter gradient is exercised
  const int32_t tokens[6] = {3, 1, 4, 1, 5, 9};
  const int32_t targets[6] = {1, 4, -1, 5, 9, 2};
  m.zero_grad();
  m.forward(tokens, targets, 6);
  m.backward();
  auto loss = [&] { return m.forward(tokens, targets, 6); };
  int checked = 0;
  for (int32_t l = 0; l < s.n_layer; ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      const std::vector<double> gA = m.grad()[l].A[p], gB = m.grad()[l].B[p];
      expect_fd(m.lora()[l].A[p], gA, loss, "A", 1e-5);
      expect_fd(m.lora()[l].B[p], gB, loss, "B", 1e-5);
      if (HasFatalFailure()) return;
      checked += static_cast<int>(gA.size() + gB.size());
    }
  }
  EXPECT_GT(checked, 300);
}

// 40 tokens: the output head runs in two row chunks (its backward fused into forward);
// activation checkpointing recomputes every block in backward and must give the stored run's
// gradients exactly, and both match finite differences.
TEST(TrainLoraLlamaRef, CheckpointedRunOverHeadChunksMatchesFiniteDifferences) {
  LlamaShape s;
  s.n_vocab = 9;
  s.n_embd = 8;
  s.n_layer = 2;
  s.n_head = 2;
  s.n_head_kv = 1;
  s.head_dim = 4;
  s.n_ff = 8;
  s.n_rot = 4;
  LoraConfig lc;
  lc.rank = 2;
  std::vector<int32_t> tokens(40), targets(40);
  for (int i = 0; i < 40; ++i) {
    tokens[i] = (i * 5 + 1) % 9;
    targets[i] = i % 7 == 3 ? -1 : (i * 5 + 6) % 9;
  }
  std::vector<LoraLayer<double>> grads[2];
  for (int ck = 0; ck < 2; ++ck) {
    LoraLlamaRef<double> m(s, lc);
    m.init_random_base(3, 0.5);
    m.init_lora(4, 0.3);
    m.set_checkpoint_activations(ck == 1);
    m.zero_grad();
    m.forward(tokens.data(), targets.data(), 40);
    m.backward();
    grads[ck] = m.grad();
    if (ck == 0) continue;
    auto loss = [&] { return m.forward(tokens.data(), targets.data(), 40, nullptr, false); };
    for (int p : {kQ, kV, kDown}) {
      expect_fd(m.lora()[0].A[p], grads[1][0].A[p], loss, "A", 1e-5);
      expect_fd(m.lora()[1].B[p], grads[1][1].B[p], loss, "B", 1e-5);
    }
  }
  for (int32_t l = 0; l < s.n_layer; ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      EXPECT_EQ(grads[0][l].A[p], grads[1][l].A[p]);
      EXPECT_EQ(grads[0][l].B[p], grads[1][l].B[p]);
    }
  }
}

TEST(TrainLoraLlamaRef, ZeroInitializedAdapterLeavesTheBaseModel) {
  LlamaShape s;
  s.n_vocab = 7;
  s.n_embd = 8;
  s.n_layer = 1;
  s.n_head = 2;
  s.n_head_kv = 1;
  s.head_dim = 4;
  s.n_ff = 8;
  s.n_rot = 4;
  LoraConfig off;
  off.targets.fill(false);
  LoraLlamaRef<double> base(s, off), adapted(s, LoraConfig{});
  base.init_random_base(5, 0.5);
  adapted.init_random_base(5, 0.5);
  adapted.init_lora(6);  // B = 0
  const int32_t tokens[4] = {1, 2, 3, 4};
  const int32_t targets[4] = {2, 3, 4, 5};
  std::vector<double> la, lb;
  EXPECT_EQ(base.forward(tokens, targets, 4, &la), adapted.forward(tokens, targets, 4, &lb));
  EXPECT_EQ(la, lb);
}

}  // namespace
}  // namespace qilin::train
