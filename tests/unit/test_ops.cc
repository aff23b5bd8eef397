// CPU operators against plain double-precision references: RMSNorm, SwiGLU, RoPE, matmul
// (dequantize + naive dot) and attention over a shuffled block table vs contiguous attention.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <numeric>
#include <random>

#include "core/fp16.h"
#include "core/thread_pool.h"
#include "cpu/quants.h"
#include "cpu/quants_k.h"
#include "kv/block_allocator.h"
#include "ops/ops.h"

namespace qilin {
namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

TEST(Ops, RmsNormMatchesDoubleReference) {
  for (int64_t n : {1, 7, 13, 64, 576, 1000, 1003}) {
    auto x = randn(n, 1 + n), w = randn(n, 2 + n);
    std::vector<float> out(n);
    rms_norm(x.data(), w.data(), out.data(), n, 1e-5f);
    double ss = 0;
    for (float v : x) ss += double(v) * v;
    const double s = 1.0 / std::sqrt(ss / n + 1e-5);
    for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(out[i], x[i] * s * w[i], 1e-5 * (1 + std::fabs(x[i] * s * w[i])));
  }
}

TEST(Ops, SwigluMatchesFormula) {
  auto g = randn(1000, 3, 4.0f), u = randn(1000, 4);
  std::vector<float> out(1000);
  swiglu(g.data(), u.data(), out.data(), 1000);
  for (int i = 0; i < 1000; ++i) {
    const double ref = g[i] / (1.0 + std::exp(-double(g[i]))) * u[i];
    ASSERT_NEAR(out[i], ref, 1e-5 * (1 + std::fabs(ref)));
  }
}

TEST(Ops, RopeMatchesClosedForm) {
  for (bool neox : {false, true}) {
    for (int32_t pos : {0, 1, 17, 500, 4000}) {
      RopeParams p;
      p.n_rot = 64;
      p.freq_base = 100000.0f;
      p.neox = neox;
      const int32_t n_head = 3, hd = 64;
      auto x = randn(n_head * hd, 9 + pos);
      auto y = x;
      rope(y.data(), n_head, hd, pos, p);
      for (int32_t h = 0; h < n_head; ++h) {
        for (int32_t i = 0; i < 32; ++i) {
          const double theta = pos * std::pow(100000.0, -2.0 * i / 64);
          const int32_t a = neox ? i : 2 * i, b = neox ? i + 32 : 2 * i + 1;
          const double x0 = x[h * hd + a], x1 = x[h * hd + b];
          // float angles at pos 4000 carry ~4000 * 2^-24 rad of error: tolerance scales with pos
          const double tol = 1e-5 + 4e-7 * pos;
          ASSERT_NEAR(y[h * hd + a], x0 * std::cos(theta) - x1 * std::sin(theta), tol);
          ASSERT_NEAR(y[h * hd + b], x0 * std::sin(theta) + x1 * std::cos(theta), tol);
        }
      }
    }
  }
}

TEST(Ops, MatmulMatchesDequantizedReference) {
  ThreadPool pool(2);
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1}) {
    SCOPED_TRACE(dtype_name(t));
    const int64_t n_in = 96, n_out = 37;
    for (int64_t n_tok : {1, 5}) {
      auto wf = randn(n_in * n_out, 5);
      WeightView w;
      w.type = t;
      w.n_in = n_in;
      w.n_out = n_out;
      w.row_bytes = row_bytes(t, n_in);
      std::vector<uint8_t> wq(w.row_bytes * n_out);
      for (int64_t r = 0; r < n_out; ++r) quantize_row_ref(t, wf.data() + r * n_in, wq.data() + r * w.row_bytes, n_in);
      w.data = wq.data();
      auto x = randn(n_in * n_tok, 6);
      std::vector<float> y(n_out * n_tok);
      std::vector<uint8_t> scratch(matmul_scratch_bytes(t, n_in, n_tok));
      matmul(pool, w, x.data(), n_tok, y.data(), scratch.data());
      std::vector<float> wd(n_in);
      for (int64_t r = 0; r < n_out; ++r) {
        dequantize_row_ref(t, wq.data() + r * w.row_bytes, wd.data(), n_in);
        for (int64_t k = 0; k < n_tok; ++k) {
          double ref = 0, mag = 0;
          for (int64_t i = 0; i < n_in; ++i) {
            ref += double(wd[i]) * x[k * n_in + i];
            mag += std::fabs(double(wd[i]) * x[k * n_in + i]);
          }
          // Activations are rounded to 8 bits (1/254 of each block's max) for quantized types,
          // to f16/bf16 for those: bound the error by a fraction of sum |w x|.
          const double rel = (t == DType::F32) ? 1e-5 : (t == DType::F16) ? 2e-3 : 1e-2;
          ASSERT_NEAR(y[k * n_out + r], ref, rel * mag + 1e-4) << "row " << r << " token " << k;
        }
      }
    }
  }
}

// Random blocks of type t with finite scales: random bytes (every code and sub-block scale
// pattern), then each f16 (Q8_K: f32) super-block scale field set to a moderate value.
std::vector<uint8_t> random_blocks(DType t, int64_t n_blocks, uint32_t seed) {
  const DTypeInfo& info = dtype_info(t);
  std::mt19937 rng(seed);
  std::vector<uint8_t> b(static_cast<size_t>(n_blocks * info.block_bytes));
  for (uint8_t& v : b) v = static_cast<uint8_t>(rng());
  std::vector<size_t> f16_at;
  switch (t) {
    case DType::Q5_1: f16_at = {offsetof(BlockQ5_1, d), offsetof(BlockQ5_1, m)}; break;
    case DType::Q2_K: f16_at = {offsetof(BlockQ2_K, d), offsetof(BlockQ2_K, dmin)}; break;
    case DType::Q3_K: f16_at = {offsetof(BlockQ3_K, d)}; break;
    case DType::Q4_K: f16_at = {offsetof(BlockQ4_K, d), offsetof(BlockQ4_K, dmin)}; break;
    case DType::Q5_K: f16_at = {offsetof(BlockQ5_K, d), offsetof(BlockQ5_K, dmin)}; break;
    case DType::Q6_K: f16_at = {offsetof(BlockQ6_K, d)}; break;
    case DType::Q8_K: break;
    default: f16_at = {0};  // Q5_0, IQ4_NL, IQ4_XS: d first
  }
  std::uniform_real_distribution<float> scale(-0.05f, 0.05f);
  for (int64_t i = 0; i < n_blocks; ++i) {
    uint8_t* blk = b.data() + i * info.block_bytes;
    for (size_t at : f16_at) {
      const uint16_t h = fp32_to_fp16(scale(rng));
      std::memcpy(blk + at, &h, 2);
    }
    if (t == DType::Q8_K) {
      const float d = scale(rng);
      std::memcpy(blk + offsetof(BlockQ8_K, d), &d, 4);
    }
  }
  return b;
}

// The formats without kernels of their own (quants_k.h) go through the generic dequantizing
// dot: every output equals dequantize_row_ref's row dotted with the token in element order.
// Awkward shapes: 1, 3 and 5 super-blocks (7 small blocks), 37 rows, 1 token (gemv path) and 5.
TEST(Ops, MatmulGenericTypesEqualDequantizedDot) {
  ThreadPool pool(2);
  for (DType t : {DType::Q5_0, DType::Q5_1, DType::IQ4_NL, DType::Q2_K, DType::Q3_K, DType::Q4_K,
                  DType::Q5_K, DType::Q6_K, DType::Q8_K, DType::IQ4_XS}) {
    SCOPED_TRACE(dtype_name(t));
    const int64_t bs = dtype_info(t).block_size;
    for (int64_t n_in : {bs, 3 * bs, 5 * bs, int64_t{7 * 32}}) {
      if (n_in % bs != 0) continue;
      const int64_t n_out = 37;
      WeightView w;
      w.type = t;
      w.n_in = n_in;
      w.n_out = n_out;
      w.row_bytes = row_bytes(t, n_in);
      const std::vector<uint8_t> wq = random_blocks(t, n_out * n_in / bs, 7 + n_in);
      w.data = wq.data();
      for (int64_t n_tok : {1, 5}) {
        auto x = randn(n_in * n_tok, 8 + n_tok);
        std::vector<float> y(n_out * n_tok);
        std::vector<uint8_t> scratch(matmul_scratch_bytes(t, n_in, n_tok));
        matmul(pool, w, x.data(), n_tok, y.data(), scratch.data());
        std::vector<float> wd(n_in);
        for (int64_t r = 0; r < n_out; ++r) {
          dequantize_row_ref(t, wq.data() + r * w.row_bytes, wd.data(), n_in);
          for (int64_t k = 0; k < n_tok; ++k) {
            float ref = 0.0f;
            for (int64_t i = 0; i < n_in; ++i) ref += wd[i] * x[k * n_in + i];
            ASSERT_TRUE(std::isfinite(ref));
            ASSERT_EQ(y[k * n_out + r], ref) << "n_in " << n_in << " row " << r << " token " << k;
          }
        }
      }
    }
  }
}

TEST(Ops, AttentionOverShuffledBlocksMatchesContiguousReference) {
  ThreadPool pool(2);
  KvCacheConfig c;
  c.n_layer = 2;
  c.n_head_kv = 2;
  c.head_dim = 8;
  c.block_size = 4;
  c.n_blocks = 16;
  auto kv = KvCache::create(c);
  ASSERT_TRUE(kv.is_ok());
  const int32_t n_head = 6, n_tok = 11, hd = 8, se = 16;
  // A block table in scrambled order: positions 0..10 live in blocks 9, 2, 14.
  std::vector<int32_t> table = {9, 2, 14};
  Batch b;
  b.seqs.push_back({table.data(), 3});
  for (int32_t i = 0; i < n_tok; ++i) b.add(0, i, 0, false);
  auto k = randn(n_tok * se, 11), v = randn(n_tok * se, 12), q = randn(n_tok * n_head * hd, 13);
  kv_store(**kv, 1, b, k.data(), v.data());
  std::vector<float> out(n_tok * n_head * hd), scores(2 * 3 * 64);  // [threads, group, ctx]
  AttentionArgs a;
  a.q = q.data();
  a.out = out.data();
  a.kv = kv->get();
  a.layer = 1;
  a.batch = &b;
  a.n_head = n_head;
  a.scale = 1.0f / std::sqrt(8.0f);
  a.scores = scores.data();
  a.max_ctx = 64;
  attention(pool, a);
  for (int32_t t = 0; t < n_tok; ++t) {
    for (int32_t h = 0; h < n_head; ++h) {
      const int32_t kvh = h / 3;
      std::vector<double> s(t + 1);
      double mx = -1e300, sum = 0;
      for (int32_t p = 0; p <= t; ++p) {
        double d = 0;
        for (int32_t i = 0; i < hd; ++i) d += double(q[(t * n_head + h) * hd + i]) * k[p * se + kvh * hd + i];
        s[p] = d / std::sqrt(8.0);
        mx = std::max(mx, s[p]);
      }
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int32_t i = 0; i < hd; ++i) {
        double ref = 0;
        for (int32_t p = 0; p <= t; ++p) ref += s[p] / sum * v[p * se + kvh * hd + i];
        ASSERT_NEAR(out[(t * n_head + h) * hd + i], ref, 1e-5) << "t " << t << " h " << h;
      }
    }
  }
}

TEST(ThreadPoolTest, EveryThreadRunsEachJobOnce) {
  for (int n : {1, 2, 3, 4}) {
    ThreadPool pool(n);
    std::vector<std::atomic<int>> hits(n);
    for (int rep = 0; rep < 200; ++rep) {
      pool.run([&](int ith, int nth) {
        ASSERT_EQ(nth, n);
        hits[ith].fetch_add(1);
      });
    }
    for (int i = 0; i < n; ++i) EXPECT_EQ(hits[i].load(), 200);
  }
}

TEST(ThreadPoolTest, WakesAfterWorkersSleep) {
  ThreadPool pool(2);
  std::atomic<int> sum{0};
  for (int rep = 0; rep < 3; ++rep) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // past the spin window
    pool.run([&](int ith, int) { sum.fetch_add(ith + 1); });
  }
  EXPECT_EQ(sum.load(), 9);
}

TEST(ThreadPoolTest, SplitRangeCoversEverythingOnce) {
  for (int64_t n : {0, 1, 5, 100, 101}) {
    for (int nth : {1, 2, 3, 7}) {
      int64_t next = 0;
      for (int i = 0; i < nth; ++i) {
        int64_t b, e;
        split_range(n, i, nth, &b, &e);
        EXPECT_EQ(b, next);
        EXPECT_LE(e - b, n / nth + 1);
        next = e;
      }
      EXPECT_EQ(next, n);
    }
  }
}

TEST(BlockAllocatorTest, HandsOutLowestBlocksAndRefusesWhenFull) {
  BlockAllocator a(4, 16);
  std::vector<int32_t> t1, t2;
  EXPECT_TRUE(a.reserve(t1, 17));
  EXPECT_EQ(t1, (std::vector<int32_t>{0, 1}));
  EXPECT_TRUE(a.reserve(t1, 32));  // already covered
  EXPECT_EQ(t1.size(), 2u);
  EXPECT_TRUE(a.reserve(t2, 1));
  EXPECT_EQ(t2, (std::vector<int32_t>{2}));
  EXPECT_FALSE(a.reserve(t2, 33));  // needs 2 more, 1 free: nothing changes
  EXPECT_EQ(t2.size(), 1u);
  EXPECT_EQ(a.n_free(), 1);
  a.release(t1);
  EXPECT_TRUE(t1.empty());
  EXPECT_EQ(a.n_free(), 3);
  EXPECT_TRUE(a.reserve(t2, 64));
  EXPECT_EQ(t2.size(), 4u);
  EXPECT_EQ(a.n_free(), 0);
}

}  // namespace
}  // namespace qilin
