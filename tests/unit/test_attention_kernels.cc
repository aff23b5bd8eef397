// Every attention kernel the CPU can run, one query row, against the scalar reference and a
// plain double-precision softmax attention over the same K/V. Flash row blocks, KV ranges and
// huge scores: test_attention_flash.cc.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "cpu/activation.h"
#include "cpu/attention.h"

namespace qilin {
namespace {

struct Case {
  int32_t n_q, head_dim, n_ctx, block_size, n_kv;
};

TEST(AttentionKernels, EveryIsaMatchesReference) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const Case cases[] = {{1, 64, 1, 16, 1},  {3, 64, 17, 16, 3},  {3, 64, 300, 16, 3},
                        {9, 64, 33, 4, 1},  {8, 128, 77, 16, 2}, {2, 16, 5, 1, 4},
                        {4, 32, 129, 8, 2}, {12, 64, 64, 16, 1}, {1, 256, 40, 16, 1},
                        {2, 64, 50, 16, 2}, {4, 64, 23, 2, 1},   {4, 128, 70, 16, 1},
                        {1, 128, 9, 16, 3}, {3, 128, 130, 16, 2}};
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (!cpu_supports(isa)) continue;
    for (bool flash : {false, true})
      for (const Case& c : cases) {
        SCOPED_TRACE(testing::Message()
                     << isa_name(isa) << (flash ? " flash" : " two-pass") << " n_q " << c.n_q
                     << " hd " << c.head_dim << " ctx " << c.n_ctx << " bs " << c.block_size);
        const int32_t n_blocks = (c.n_ctx + c.block_size - 1) / c.block_size + 3;
        const int64_t se = static_cast<int64_t>(c.n_kv) * c.head_dim;
        std::vector<float> k(n_blocks * c.block_size * se), v(k.size()), q(c.n_q * c.head_dim);
        for (float& x : k) x = nd(rng);
        for (float& x : v) x = nd(rng);
        for (float& x : q) x = 2.0f * nd(rng);  // peaky softmax as well as flat ones
        std::vector<int32_t> table(n_blocks);
        std::iota(table.begin(), table.end(), 0);
        std::shuffle(table.begin(), table.end(), rng);
        AttnTask t;
        t.q = q.data();
        t.n_q = c.n_q;
        t.head_dim = c.head_dim;
        t.n_ctx = c.n_ctx;
        t.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
        t.k = k.data();
        t.v = v.data();
        t.block_table = table.data();
        t.block_size = c.block_size;
        t.slot_elems = se;
        t.head_offset = (c.n_kv - 1) * c.head_dim;  // last KV head: offsets matter
        std::vector<float> out(c.n_q * c.head_dim, NAN), ref(out.size(), NAN);
        std::vector<float> scores(c.n_q * c.n_ctx);
        t.out = out.data();
        (flash ? attention_flash_kernel(isa, c.head_dim) : attention_kernel(isa, c.head_dim))(
            t, scores.data());
        t.out = ref.data();
        attention_ref(t, scores.data());
        for (int32_t g = 0; g < c.n_q; ++g) {
          // Independent check: double precision over positions in order.
          std::vector<double> s(c.n_ctx);
          double mx = -1e300, sum = 0;
          for (int32_t p = 0; p < c.n_ctx; ++p) {
            const float* kp = k.data() +
                              (table[p / c.block_size] * c.block_size + p % c.block_size) * se +
                              t.head_offset;
            double d = 0;
            for (int32_t i = 0; i < c.head_dim; ++i) d += double(q[g * c.head_dim + i]) * kp[i];
            s[p] = d * t.scale;
            mx = std::max(mx, s[p]);
          }
          for (double& x : s) sum += (x = std::exp(x - mx));
          for (int32_t i = 0; i < c.head_dim; ++i) {
            double want = 0;
            for (int32_t p = 0; p < c.n_ctx; ++p) {
              const float* vp = v.data() +
                                (table[p / c.block_size] * c.block_size + p % c.block_size) * se +
                                t.head_offset;
              want += s[p] / sum * vp[i];
            }
            const float got = out[g * c.head_dim + i];
            ASSERT_TRUE(std::isfinite(got));
            // Outputs are convex combinations of N(0,1) values: 1e-4 absolute is ~100 ulp of
            // float rounding through a dot of <= 256 terms, an exp and a sum of <= 300 terms.
            ASSERT_NEAR(got, want, 1e-4) << "head " << g << " dim " << i;
            ASSERT_NEAR(got, ref[g * c.head_dim + i], 1e-4);
          }
        }
      }
  }
}

}  // namespace
}  // namespace qilin

namespace qilin {
namespace {

TEST(ActivationKernels, SwigluEveryIsaMatchesDoubleFormula) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 4.0f);
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (!cpu_supports(isa)) continue;
    for (int64_t n : {1, 15, 16, 17, 100, 1536}) {
      std::vector<float> g(n), u(n), out(n);
      for (int64_t i = 0; i < n; ++i) {
        g[i] = nd(rng);
        u[i] = nd(rng);
      }
      g[0] = n > 1 ? -100.0f : 100.0f;  // exp overflow / underflow ends
      swiglu_kernel(isa)(g.data(), u.data(), out.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const double want = g[i] / (1.0 + std::exp(-double(g[i]))) * u[i];
        ASSERT_TRUE(std::isfinite(out[i])) << isa_name(isa) << " " << i;
        ASSERT_NEAR(out[i], want, 1e-6 * (1.0 + std::fabs(want))) << isa_name(isa) << " " << g[i];
      }
    }
  }
}

}  // namespace
}  // namespace qilin
