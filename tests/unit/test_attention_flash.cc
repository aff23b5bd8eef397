// FlashAttention over blocks of query rows, KV ranges and split-KV merges, for every ISA the
// CPU has, against a double-precision softmax attention read through the same block table;
// and the attention op (row blocks, flash-decoding split) against it on arbitrary batches.
// Error measure: the output of a query vector is a weighted sum sum_p w_p v_p, so its
// rounding error scales with sum_p w_p |v_p| (the sum's condition); we require
// |got - want| <= 1e-5 * sum_p w_p |v_p[i]| for every element, NaN never passes.
// Quantized caches (f16, bf16, q8_0, fp8) are checked the same way against the values their
// rows hold (kv_dequantize_row, the scalar conversion): the kernels must compute exactly on
// those, reading the rows in place. Their distance from the F32 cache is measured separately.
// The exception is AVX512_BF16's decode kernel (avx512::attention_flash_bf16dot), which rounds
// q and the softmax weights to bf16: it is checked against the reference with q rounded the
// same way, the weights' rounding allowed for by kBf16WeightTol (below).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/fp16.h"
#include "cpu/attention.h"
#include "ops/ops.h"

namespace qilin {
namespace {

constexpr double kRelTol = 1e-5;
// Rounding each weight p_k to bf16 (nearest even) changes it by at most 2^-8 relative; the
// kernel also sums the rounded weights for the normaliser, so the output is off by
// sum_p w_p (e_p - mean e) v_p, at most 2 x 2^-8 x sum_p w_p |v_p|: the same cond scale.
constexpr double kBf16WeightTol = 0x1p-7;

// q rounded to bf16 as the BF16 decode kernel rounds it (VCVTNE2PS2BF16: nearest even).
std::vector<float> round_bf16(const float* q, int32_t n) {
  std::vector<float> r(n);
  for (int32_t i = 0; i < n; ++i) r[i] = bf16_to_fp32(fp32_to_bf16(q[i]));
  return r;
}

// The K/V pools of one layer with a shuffled block table, and q/out with a row stride wider
// than one group (like the model's [n_tokens, n_head, head_dim] with the group at an offset).
struct Problem {
  int32_t n_q, head_dim, n_rows, n_ctx, block_size, n_kv;
  std::vector<float> k, v, q, out;
  std::vector<int32_t> table;
  int64_t row_stride, q_offset;
  KvType type = KvType::F32;
  std::vector<uint8_t> kq, vq;  // k and v converted to `type` (rows of head_dim)

  AttnTask task() {
    AttnTask t;
    t.q = q.data() + q_offset;
    t.out = out.data() + q_offset;
    t.n_q = n_q;
    t.n_rows = n_rows;
    t.q_stride = row_stride;
    t.out_stride = row_stride;
    t.head_dim = head_dim;
    t.n_ctx = n_ctx;
    t.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    t.k = type == KvType::F32 ? static_cast<const void*>(k.data()) : kq.data();
    t.v = type == KvType::F32 ? static_cast<const void*>(v.data()) : vq.data();
    t.kv_type = type;
    t.block_table = table.data();
    t.block_size = block_size;
    t.slot_elems = static_cast<int64_t>(n_kv) * head_dim;
    t.head_offset = static_cast<int64_t>(n_kv - 1) * head_dim;  // last KV head: offsets matter
    return t;
  }
};

Problem make_problem(std::mt19937& rng, int32_t n_q, int32_t hd, int32_t n_rows, int32_t n_ctx,
                     int32_t bs, int32_t n_kv = 2) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Problem p{n_q, hd, n_rows, n_ctx, bs, n_kv, {}, {}, {}, {}, {}, 0, 0, KvType::F32, {}, {}};
  const int32_t n_pos = n_ctx + n_rows - 1;
  const int32_t n_blocks = (n_pos + bs - 1) / bs + 3;
  p.k.resize(static_cast<size_t>(n_blocks) * bs * n_kv * hd);
  p.v.resize(p.k.size());
  for (float& x : p.k) x = nd(rng);
  for (float& x : p.v) x = nd(rng);
  p.row_stride = static_cast<int64_t>(n_q + 2) * hd;
  p.q_offset = hd;
  p.q.resize(static_cast<size_t>(n_rows) * p.row_stride);
  for (float& x : p.q) x = nd(rng);
  p.out.assign(p.q.size(), 12345.0f);  // sentinel: only the task's vectors may change
  p.table.resize(n_blocks);
  std::iota(p.table.begin(), p.table.end(), 0);
  std::shuffle(p.table.begin(), p.table.end(), rng);
  return p;
}

// The same pools converted to `type`, row by row.
void convert_pools(Problem& p, KvType type) {
  p.type = type;
  const size_t rb = kv_row_bytes(type, p.head_dim);
  const size_t rows = p.k.size() / p.head_dim;
  p.kq.assign(rows * rb, 0);
  p.vq.assign(rows * rb, 0);
  for (size_t r = 0; r < rows; ++r) {
    kv_quantize_row(type, p.k.data() + r * p.head_dim, p.head_dim, p.kq.data() + r * rb);
    kv_quantize_row(type, p.v.data() + r * p.head_dim, p.head_dim, p.vq.data() + r * rb);
  }
}

// Double-precision softmax attention of one query vector over positions [lo, hi) of the task's
// sequence: want[i] and the condition scale cond[i] = sum_p w_p |v_p[i]|.
void reference(const AttnTask& t, const float* q, int32_t lo, int32_t hi, std::vector<double>& want,
               std::vector<double>& cond) {
  const int32_t hd = t.head_dim;
  std::vector<double> s(hi - lo);
  double mx = -1e300;
  // Row p of a pool as the values it holds, through the block table.
  const KvRows rows(t);
  std::vector<float> kbuf(hd), vbuf(hd);
  auto row = [&](const uint8_t* pool, int32_t p, std::vector<float>& buf) {
    kv_dequantize_row(t.kv_type, pool + rows.offset(p), hd, buf.data());
    return buf.data();
  };
  for (int32_t p = lo; p < hi; ++p) {
    const float* kp = row(rows.k, p, kbuf);
    double d = 0;
    for (int32_t i = 0; i < hd; ++i) d += double(q[i]) * kp[i];
    s[p - lo] = d * t.scale;
    mx = std::max(mx, s[p - lo]);
  }
  double sum = 0;
  for (double& x : s) sum += (x = std::exp(x - mx));
  want.assign(hd, 0.0);
  cond.assign(hd, 0.0);
  for (int32_t p = lo; p < hi; ++p) {
    const float* vp = row(rows.v, p, vbuf);
    const double w = s[p - lo] / sum;
    for (int32_t i = 0; i < hd; ++i) {
      want[i] += w * vp[i];
      cond[i] += w * std::fabs(vp[i]);
    }
  }
}

// Checks every query vector of the task against the reference over its whole causal range,
// and that nothing outside the task's vectors was written. bf16_dot: the task went through
// the BF16 decode kernel (q rounded to bf16 in the reference, weights' rounding allowed).
void expect_matches_reference(const Problem& p, const AttnTask& t, bool bf16_dot = false) {
  std::vector<double> want, cond;
  const double tol = kRelTol + (bf16_dot ? kBf16WeightTol : 0.0);
  for (int32_t r = 0; r < t.n_rows; ++r) {
    for (int32_t g = 0; g < t.n_q; ++g) {
      const int64_t g_off = static_cast<int64_t>(g) * t.head_dim;
      const float* q = t.q + r * t.q_stride + g_off;
      const std::vector<float> q16 = round_bf16(q, t.head_dim);
      reference(t, bf16_dot ? q16.data() : q, 0, t.n_ctx + r, want, cond);
      for (int32_t i = 0; i < t.head_dim; ++i) {
        const float got = t.out[r * t.out_stride + g_off + i];
        ASSERT_TRUE(std::isfinite(got)) << "row " << r << " head " << g << " dim " << i;
        ASSERT_LE(std::fabs(got - want[i]), tol * cond[i] + 1e-30)
            << "row " << r << " head " << g << " dim " << i << ": got " << got << " want "
            << want[i];
      }
    }
  }
  // Sentinels: the two heads after the group in each row, the head before the first.
  for (int32_t r = 0; r < t.n_rows; ++r) {
    const int64_t row = r * p.row_stride;
    for (int64_t i = 0; i < p.q_offset; ++i) ASSERT_EQ(p.out[row + i], 12345.0f);
    for (int64_t i = p.q_offset + static_cast<int64_t>(t.n_q) * t.head_dim; i < p.row_stride; ++i) {
      ASSERT_EQ(p.out[row + i], 12345.0f) << "row " << r << " element " << i;
    }
  }
}

struct Shape {
  int32_t n_q, head_dim, n_rows, n_ctx, block_size;
};
// Rows x heads against each kernel's register tiles (16 and 32 vectors for AVX-512, 8 for
// AVX2): fewer, exactly, more, not dividing; first rows starting mid-block and at 0; block
// sizes that are not powers of two; head dims 64 and 128 (compiled shapes) and others.
constexpr Shape kShapes[] = {
    {3, 64, 10, 1, 16},   {3, 64, 7, 100, 16},   {3, 64, 1, 1, 16},    {3, 64, 1, 777, 16},
    {3, 64, 23, 301, 16}, {3, 64, 2, 40, 16},    {3, 64, 4, 1, 5},     {1, 64, 33, 5, 7},
    {1, 64, 16, 64, 16},  {2, 128, 9, 50, 10},   {2, 128, 16, 17, 16}, {4, 128, 5, 300, 16},
    {4, 128, 8, 33, 3},   {5, 64, 4, 17, 3},     {6, 32, 3, 40, 5},    {7, 48, 5, 1, 16},
    {8, 64, 4, 1000, 16}, {8, 128, 1, 90, 16},   {3, 80, 12, 63, 16},  {1, 256, 2, 20, 16},
    {20, 64, 2, 30, 16},  {40, 64, 1, 70, 16},   {3, 64, 40, 200, 4},  {2, 16, 9, 3, 1},
    {4, 64, 3, 2000, 16}, {3, 128, 11, 1500, 32}};

bool kernel_takes(Isa isa, int32_t hd) {
  return isa == Isa::Scalar || (isa == Isa::Avx2 && hd % 8 == 0) || hd % 16 == 0;
}

TEST(AttentionFlash, RowBlocksMatchDoubleReference) {
  std::mt19937 rng(11);
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (!cpu_supports(isa)) continue;
    for (const Shape& s : kShapes) {
      if (!kernel_takes(isa, s.head_dim)) continue;
      SCOPED_TRACE(testing::Message()
                   << isa_name(isa) << " n_q " << s.n_q << " hd " << s.head_dim << " rows "
                   << s.n_rows << " ctx " << s.n_ctx << " bs " << s.block_size);
      Problem p = make_problem(rng, s.n_q, s.head_dim, s.n_rows, s.n_ctx, s.block_size);
      const AttnTask t = p.task();
      attention_flash_kernel(isa, s.head_dim)(t, nullptr);
      expect_matches_reference(p, t);
    }
  }
}

// Flash-decoding: the range cut into uneven chunks (not tile- or block-aligned, some empty for
// early rows of a block), each written unnormalised with (max, sum), merged by
// attention_merge: the same result as one pass, and as the reference.
TEST(AttentionFlash, SplitRangesMergeToTheWholeRange) {
  std::mt19937 rng(12);
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (!cpu_supports(isa)) continue;
    for (const Shape& s : kShapes) {
      if (!kernel_takes(isa, s.head_dim)) continue;
      const int32_t len = s.n_ctx + s.n_rows - 1;  // the last row's range
      // Cuts at a third, at the first row's end + 1 (later rows only), and one empty chunk.
      std::vector<int32_t> cuts = {0, len / 3, std::min(len, s.n_ctx + 1),
                                   std::min(len, s.n_ctx + 1), len};
      std::sort(cuts.begin(), cuts.end());
      SCOPED_TRACE(testing::Message() << isa_name(isa) << " n_q " << s.n_q << " hd " << s.head_dim
                                      << " rows " << s.n_rows << " ctx " << s.n_ctx);
      Problem p = make_problem(rng, s.n_q, s.head_dim, s.n_rows, s.n_ctx, s.block_size);
      const AttnTask whole = p.task();
      const AttnFn fn = attention_flash_kernel(isa, s.head_dim);
      fn(whole, nullptr);
      const std::vector<float> one_pass = p.out;
      std::fill(p.out.begin(), p.out.end(), 12345.0f);
      const int32_t n_parts = static_cast<int32_t>(cuts.size()) - 1;
      const int32_t n_vec = s.n_rows * s.n_q;
      std::vector<float> o(static_cast<size_t>(n_parts) * n_vec * s.head_dim, NAN);
      std::vector<float> ml(static_cast<size_t>(n_parts) * n_vec * 2, NAN);
      for (int32_t j = 0; j < n_parts; ++j) {
        AttnTask t = whole;
        t.kv_begin = cuts[j];
        t.kv_end = cuts[j + 1];
        t.out = o.data() + static_cast<int64_t>(j) * n_vec * s.head_dim;
        t.out_stride = static_cast<int64_t>(s.n_q) * s.head_dim;
        t.ml = ml.data() + static_cast<int64_t>(j) * n_vec * 2;
        fn(t, nullptr);
        for (int32_t i = 0; i < n_vec; ++i) {  // empty ranges say so exactly
          const int32_t hi = std::min(t.kv_end, t.n_ctx + i / s.n_q);
          if (hi <= t.kv_begin) {
            ASSERT_EQ(t.ml[2 * i], -INFINITY) << "part " << j << " vector " << i;
            ASSERT_EQ(t.ml[2 * i + 1], 0.0f);
          } else {
            ASSERT_TRUE(std::isfinite(t.ml[2 * i]) && t.ml[2 * i + 1] >= 1.0f);
          }
        }
      }
      attention_merge(o.data(), ml.data(), n_parts, n_vec, s.head_dim, s.n_q, whole.out_stride,
                      whole.out);
      expect_matches_reference(p, whole);
      for (size_t i = 0; i < p.out.size(); ++i) {
        ASSERT_NEAR(p.out[i], one_pass[i], 1e-5 * (1.0 + std::fabs(one_pass[i]))) << i;
      }
    }
  }
}

// Scores of +-1e4 (and a 1e4 spread) must not overflow the online softmax, in row blocks and
// split ranges: the running max is subtracted before every exp. The scores are exact here
// (one non-zero q and k component), so the answer is the mean of the +1e4 positions' values.
TEST(AttentionFlash, HugeScoresInRowBlocksAndSplits) {
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    for (int32_t n_rows : {1, 12}) {  // one row (decode kernel) and a row block
      if (!cpu_supports(isa)) continue;
      const int32_t hd = 64, n_q = 3, n_ctx = 90, bs = 16;
      const int32_t n_pos = n_ctx + n_rows - 1;
      std::vector<int32_t> table = {3, 1, 7, 0, 2, 5, 6, 4};
      std::vector<float> k(8 * bs * hd, 0.0f), v(k.size()), q(n_rows * n_q * hd, 0.0f);
      auto sign = [](int32_t p) { return (p * 37) % 3 - 1; };  // -1, 0 or +1
      for (int32_t p = 0; p < n_pos; ++p) {
        const int64_t slot = table[p / bs] * bs + p % bs;
        k[slot * hd] = static_cast<float>(sign(p));
        for (int32_t i = 0; i < hd; ++i) v[slot * hd + i] = static_cast<float>(p % 7 + i);
      }
      for (int32_t i = 0; i < n_rows * n_q; ++i) q[i * hd] = 1e4f * (i % 2 ? 1.0f : -1.0f);
      AttnTask t;
      t.q = q.data();
      t.n_q = n_q;
      t.n_rows = n_rows;
      t.q_stride = n_q * hd;
      t.out_stride = n_q * hd;
      t.head_dim = hd;
      t.n_ctx = n_ctx;
      t.k = k.data();
      t.v = v.data();
      t.block_table = table.data();
      t.block_size = bs;
      t.slot_elems = hd;
      const AttnFn fn = attention_flash_kernel(isa, hd);
      for (bool split : {false, true}) {
        std::vector<float> out(q.size(), NAN);
        if (!split) {
          t.out = out.data();
          fn(t, nullptr);
        } else {
          const int32_t cuts[] = {0, 37, std::min(91, n_pos), n_pos};
          std::vector<float> o(3 * n_rows * n_q * hd), ml(3 * n_rows * n_q * 2);
          for (int j = 0; j < 3; ++j) {
            AttnTask c = t;
            c.kv_begin = cuts[j];
            c.kv_end = cuts[j + 1];
            c.out = o.data() + j * n_rows * n_q * hd;
            c.ml = ml.data() + j * n_rows * n_q * 2;
            fn(c, nullptr);
          }
          attention_merge(o.data(), ml.data(), 3, n_rows * n_q, hd, n_q, t.out_stride, out.data());
        }
        for (int32_t vi = 0; vi < n_rows * n_q; ++vi) {
          const int32_t r = vi / n_q, want_sign = vi % 2 ? 1 : -1;
          for (int32_t i = 0; i < hd; ++i) {
            double want = 0;
            int cnt = 0;
            for (int32_t p = 0; p < n_ctx + r; ++p) {
              if (sign(p) == want_sign) {
                want += p % 7 + i;
                ++cnt;
              }
            }
            want /= cnt;
            const float got = out[vi * hd + i];
            ASSERT_TRUE(std::isfinite(got)) << isa_name(isa) << " split " << split;
            ASSERT_NEAR(got, want, 1e-5 * want)
                << isa_name(isa) << " split " << split << " vector " << vi << " dim " << i;
          }
        }
      }
    }
  }
}

// Every flash kernel the CPU can run: one per ISA (what attention_flash_kernel picks), and
// AVX-512's other one where the CPU has AVX512_BF16 (the dispatcher then picks the BF16 decode
// kernel, and CPUs without it the plain one: both are tested here).
struct FlashKernel {
  Isa isa;
  const char* name;
  AttnFn fn;
  bool bf16_dot;
};
std::vector<FlashKernel> flash_kernels() {
  std::vector<FlashKernel> ks;
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (!cpu_supports(isa)) continue;
    switch (isa) {
      case Isa::Scalar:
        ks.push_back({isa, "scalar", attention_flash_ref, false});
        break;
      case Isa::Avx2:
        ks.push_back({isa, "avx2", avx2::attention_flash, false});
        break;
      case Isa::Avx512:
        ks.push_back({isa, "avx512", avx512::attention_flash, false});
        if (cpu_has_avx512_bf16()) {
          ks.push_back({isa, "avx512-bf16dot", avx512::attention_flash_bf16dot, true});
        }
        break;
    }
  }
  return ks;
}

// Whether the BF16 decode kernel takes the task (attention.h's contract).
bool takes_bf16_dot(const AttnTask& t) {
  return t.kv_type == KvType::BF16 && t.n_rows * t.n_q <= 4 && t.head_dim % 32 == 0;
}

// Quantized caches: flash (row blocks and decode vectors) and two-pass kernels read f16, bf16,
// q8_0 and fp8 rows in place and must compute exactly on the values those rows hold (but for
// the BF16 decode kernel's stated rounding).
TEST(AttentionFlash, QuantizedCachesMatchReferenceOnTheirValues) {
  std::mt19937 rng(13);
  for (KvType type : {KvType::F16, KvType::BF16, KvType::Q8_0, KvType::FP8}) {
    for (const FlashKernel& k : flash_kernels()) {
      const Isa isa = k.isa;
      for (const Shape& s : kShapes) {
        if (!kernel_takes(isa, s.head_dim) || kv_row_bytes(type, s.head_dim) == 0) continue;
        SCOPED_TRACE(testing::Message()
                     << kv_type_name(type) << " " << k.name << " n_q " << s.n_q << " hd "
                     << s.head_dim << " rows " << s.n_rows << " ctx " << s.n_ctx);
        Problem p = make_problem(rng, s.n_q, s.head_dim, s.n_rows, s.n_ctx, s.block_size);
        convert_pools(p, type);
        AttnTask t = p.task();
        k.fn(t, nullptr);
        expect_matches_reference(p, t, k.bf16_dot && takes_bf16_dot(t));
        // Two-pass kernel: one row at a time.
        std::fill(p.out.begin(), p.out.end(), 12345.0f);
        t.n_rows = 1;
        std::vector<float> scores(static_cast<size_t>(s.n_q) * s.n_ctx);
        attention_kernel(isa, s.head_dim)(t, scores.data());
        expect_matches_reference(p, t);
        if (testing::Test::HasFatalFailure()) return;
      }
    }
  }
}

// The BF16 decode kernel over decode shapes: groups of 1-4 heads (and 2 rows of 2), head dims
// it takes (multiples of 32) and others (which it leaves to the F32 path), contexts odd and
// even around the 16-key tile and the block size (an odd last key pairs with zeros), whole
// ranges and split ones merged. Against the reference with q rounded to bf16; and the kernel
// must really round (differ from the exact kernel somewhere), else it did not run.
TEST(AttentionFlash, Bf16DotDecodeMatchesTheRoundedReference) {
  if (!cpu_has_avx512_bf16()) GTEST_SKIP() << "no AVX512_BF16";
  EXPECT_EQ(attention_flash_kernel(Isa::Avx512, 64), avx512::attention_flash_bf16dot);
  std::mt19937 rng(15);
  struct Decode {
    int32_t n_q, n_rows;
  };
  int32_t n_rounded = 0, n_tasks = 0;
  for (Decode d : {Decode{1, 1}, Decode{2, 1}, Decode{3, 1}, Decode{4, 1}, Decode{2, 2}}) {
    for (int32_t hd : {32, 64, 96, 128, 256, 48, 80}) {
      for (int32_t n_ctx : {1, 2, 3, 15, 16, 17, 31, 33, 100, 257, 1001}) {
        for (int32_t bs : {1, 7, 16}) {
          SCOPED_TRACE(testing::Message() << "n_q " << d.n_q << " rows " << d.n_rows << " hd " << hd
                                          << " ctx " << n_ctx << " bs " << bs);
          Problem p = make_problem(rng, d.n_q, hd, d.n_rows, n_ctx, bs, 3);
          convert_pools(p, KvType::BF16);
          const AttnTask t = p.task();
          const bool rounded = takes_bf16_dot(t);
          avx512::attention_flash(t, nullptr);
          const std::vector<float> exact = p.out;
          std::fill(p.out.begin(), p.out.end(), 12345.0f);
          avx512::attention_flash_bf16dot(t, nullptr);
          expect_matches_reference(p, t, rounded);
          if (testing::Test::HasFatalFailure()) return;
          ++n_tasks;
          if (rounded) n_rounded += p.out != exact;
          if (!rounded) {
            ASSERT_EQ(p.out, exact);  // left to the F32 path: the same code
          }
          // Split in three uneven chunks (one may be empty), merged.
          const int32_t len = n_ctx + d.n_rows - 1;
          const int32_t cuts[] = {0, len / 3, std::min(len, len / 3 + 17), len};
          const int32_t n_vec = d.n_rows * d.n_q;
          std::vector<float> o(3 * n_vec * hd, NAN), ml(3 * n_vec * 2, NAN);
          for (int j = 0; j < 3; ++j) {
            AttnTask c = t;
            c.kv_begin = cuts[j];
            c.kv_end = cuts[j + 1];
            c.out = o.data() + static_cast<int64_t>(j) * n_vec * hd;
            c.out_stride = static_cast<int64_t>(d.n_q) * hd;
            c.ml = ml.data() + j * n_vec * 2;
            avx512::attention_flash_bf16dot(c, nullptr);
          }
          std::fill(p.out.begin(), p.out.end(), 12345.0f);
          attention_merge(o.data(), ml.data(), 3, n_vec, hd, d.n_q, t.out_stride, t.out);
          expect_matches_reference(p, t, rounded);
          if (testing::Test::HasFatalFailure()) return;
        }
      }
    }
  }
  // Every task the kernel takes rounds something, bar the 1-key ones (one weight, exactly 1).
  std::printf("bf16 dot: %d of %d tasks rounded\n", n_rounded, n_tasks);
  EXPECT_GT(n_rounded, n_tasks / 2);
}

// What a format costs: the same attention on the F32 cache vs its f16, bf16, q8_0 and fp8
// copies, over a range of contexts. Bound: |out_T - out_F32| <= tol * max_i sum_p w_p |v_p[i]|
// (the output vector's scale: block formats round every element to a step of the block's
// maximum), the tolerance stated per format; the measured worst case is printed. Blocks of 4
// rows (the prefill kernel), and for bf16 also 1 row (decode: with AVX512_BF16 the kernel that
// rounds q and the weights too).
TEST(AttentionFlash, QuantizedCachesStayCloseToF32) {
  struct Bound {
    KvType type;
    int32_t n_rows;
    double tol;
  };
  // Measured worst cases on these inputs (seed 14, AVX-512): f16 3.9e-4, q8_0 6.8e-3, fp8 6.0e-2,
  // bf16 3.1e-3 (4 rows), 2.0e-3 (1 row, AVX512_BF16: q and weights rounded too).
  const Bound bounds[] = {{KvType::F16, 4, 1e-3},  {KvType::Q8_0, 4, 2e-2}, {KvType::FP8, 4, 0.15},
                          {KvType::BF16, 4, 1e-2}, {KvType::BF16, 1, 1e-2}};
  const Isa isa = cpu_best_isa();
  for (const Bound& b : bounds) {
    std::mt19937 rng(14);
    double worst = 0;
    for (int32_t n_ctx : {1, 33, 300, 2000}) {
      Problem p = make_problem(rng, 3, 64, b.n_rows, n_ctx, 16);
      const AttnTask t32 = p.task();
      attention_flash_kernel(isa, 64)(t32, nullptr);
      const std::vector<float> want = p.out;
      convert_pools(p, b.type);
      std::fill(p.out.begin(), p.out.end(), 12345.0f);
      const AttnTask tq = p.task();
      attention_flash_kernel(isa, 64)(tq, nullptr);
      std::vector<double> ref, cond;
      p.type = KvType::F32;  // the F32 pools' output scale
      const AttnTask tf = p.task();
      for (int32_t r = 0; r < tf.n_rows; ++r) {
        for (int32_t g = 0; g < tf.n_q; ++g) {
          const int64_t off = r * tf.q_stride + static_cast<int64_t>(g) * 64;
          reference(tf, tf.q + off, 0, n_ctx + r, ref, cond);
          const double scale = *std::max_element(cond.begin(), cond.end());
          for (int32_t i = 0; i < 64; ++i) {
            const double e =
                std::fabs(p.out[p.q_offset + off + i] - want[p.q_offset + off + i]) / scale;
            worst = std::max(worst, e);
          }
        }
      }
    }
    std::printf("kv %s, %d rows: worst |out - out_f32| / max_i sum w|v_i| = %.3g (bound %.3g)\n",
                kv_type_name(b.type), b.n_rows, worst, b.tol);
    EXPECT_LE(worst, b.tol) << kv_type_name(b.type);
    EXPECT_GT(worst, 0.0) << kv_type_name(b.type) << ": the format changed nothing?";
  }
}

// ---- the attention op: row blocks and flash-decoding over real batches ---------------------

struct OpFixture {
  KvCacheConfig cfg;
  std::unique_ptr<KvCache> kv;
  std::vector<std::vector<int32_t>> tables;  // per sequence
  int32_t n_head;
};

// A cache with n_seqs sequences of `len` positions each, random K/V everywhere, block tables
// interleaved across sequences (sequence s owns blocks s, s + n_seqs, ...).
OpFixture make_op_fixture(std::mt19937& rng, int32_t n_seqs, int32_t len, int32_t block_size,
                          KvType type = KvType::F32) {
  OpFixture f;
  f.cfg.type = type;
  f.cfg.n_layer = 2;
  f.cfg.n_head_kv = 3;
  f.cfg.head_dim = 64;
  f.cfg.block_size = block_size;
  const int32_t per_seq = (len + block_size - 1) / block_size;
  f.cfg.n_blocks = per_seq * n_seqs;
  f.n_head = 9;
  auto kv = KvCache::create(f.cfg);
  EXPECT_TRUE(kv.is_ok());
  f.kv = std::move(*kv);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(f.cfg.head_dim);
  const size_t rb = f.kv->row_bytes();
  for (int32_t layer = 0; layer < 2; ++layer) {
    for (int32_t b = 0; b < f.cfg.n_blocks; ++b) {
      for (int32_t o = 0; o < block_size; ++o) {
        for (uint8_t* slot : {f.kv->k_slot(layer, b, o), f.kv->v_slot(layer, b, o)}) {
          for (int32_t h = 0; h < f.cfg.n_head_kv; ++h) {
            for (float& e : x) e = nd(rng);
            kv_quantize_row(type, x.data(), f.cfg.head_dim, slot + h * rb);
          }
        }
      }
    }
  }
  f.tables.resize(n_seqs);
  for (int32_t s = 0; s < n_seqs; ++s) {
    for (int32_t b = 0; b < per_seq; ++b) f.tables[s].push_back(b * n_seqs + s);
  }
  return f;
}

// Runs the op on `batch` (layer 1) with `n_threads`, naive or flash, and checks every row and
// head against the reference.
void run_and_check(OpFixture& f, const Batch& batch, int n_threads, bool flash) {
  const int32_t hd = f.cfg.head_dim, group = f.n_head / f.cfg.n_head_kv;
  const int32_t n = batch.n_tokens();
  int32_t max_ctx = 0;
  for (int32_t r = 0; r < n; ++r) max_ctx = std::max(max_ctx, batch.pos[r] + 1);
  std::mt19937 rng(99);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> q(static_cast<size_t>(n) * f.n_head * hd), out(q.size(), NAN);
  for (float& x : q) x = nd(rng);
  std::vector<float> scores(static_cast<size_t>(n_threads) * group * max_ctx);
  std::vector<int32_t> row_blocks(n + 1);
  std::vector<float> partial(attention_flash_partial_floats(n_threads, group, hd), NAN);
  ThreadPool pool(n_threads);
  AttentionArgs a;
  a.q = q.data();
  a.out = out.data();
  a.kv = f.kv.get();
  a.layer = 1;
  a.batch = &batch;
  a.n_head = f.n_head;
  a.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  a.scores = scores.data();
  a.flash = flash;
  a.max_ctx = max_ctx;
  a.max_threads = n_threads;
  a.row_blocks = row_blocks.data();
  a.partial = partial.data();
  attention(pool, a);
  std::vector<double> want, cond;
  // The flash op on a BF16 cache decodes through the rounding kernel where the CPU has it;
  // rows it took match the reference with q rounded (checked when the exact one fails).
  const bool bf16_dot = flash && f.cfg.type == KvType::BF16 && cpu_has_avx512_bf16();
  for (int32_t r = 0; r < n; ++r) {
    for (int32_t h = 0; h < f.n_head; ++h) {
      AttnTask t;
      t.head_dim = hd;
      t.scale = a.scale;
      t.k = f.kv->k_pool(1);
      t.v = f.kv->v_pool(1);
      t.kv_type = f.cfg.type;
      t.block_table = batch.seqs[batch.seq[r]].block_table;
      t.block_size = f.cfg.block_size;
      t.slot_elems = f.kv->slot_elems();
      t.head_offset = static_cast<int64_t>(h / group) * hd;
      const int64_t off = (static_cast<int64_t>(r) * f.n_head + h) * hd;
      reference(t, q.data() + off, 0, batch.pos[r] + 1, want, cond);
      double tol = kRelTol;
      bool exact = true;
      for (int32_t i = 0; i < hd; ++i) {
        exact = exact && std::fabs(out[off + i] - want[i]) <= kRelTol * cond[i] + 1e-30;
      }
      if (!exact && bf16_dot) {  // a decode row of the BF16 kernel: q rounded, weights too
        const std::vector<float> q16 = round_bf16(q.data() + off, hd);
        reference(t, q16.data(), 0, batch.pos[r] + 1, want, cond);
        tol += kBf16WeightTol;
      }
      for (int32_t i = 0; i < hd; ++i) {
        ASSERT_TRUE(std::isfinite(out[off + i])) << "row " << r << " head " << h;
        ASSERT_LE(std::fabs(out[off + i] - want[i]), tol * cond[i] + 1e-30)
            << "row " << r << " head " << h << " dim " << i;
      }
    }
  }
}

class AttentionOpTypes : public testing::TestWithParam<KvType> {};

TEST_P(AttentionOpTypes, FlashAndTwoPassMatchReferenceOnArbitraryBatches) {
  std::mt19937 rng(21);
  OpFixture f = make_op_fixture(rng, 3, 1200, 16, GetParam());
  OpFixture odd = make_op_fixture(rng, 2, 700, 7, GetParam());
  auto seqs = [](OpFixture& fx) {
    std::vector<BatchSeq> s;
    for (auto& t : fx.tables) s.push_back({t.data(), static_cast<int32_t>(t.size())});
    return s;
  };
  struct Case {
    const char* name;
    OpFixture* fx;
    Batch b;
  };
  std::vector<Case> cases;
  {  // a prompt from position 0: row blocks of the kernel's size plus a ragged last block
    Case c{"prompt", &f, {}};
    c.b.seqs = seqs(f);
    for (int32_t p = 0; p < 75; ++p) c.b.add(1, p, 0, false);
    cases.push_back(std::move(c));
  }
  {  // a chunk in the middle of a long prompt, block size 7
    Case c{"chunk", &odd, {}};
    c.b.seqs = seqs(odd);
    for (int32_t p = 600; p < 650; ++p) c.b.add(1, p, 1, false);
    cases.push_back(std::move(c));
  }
  {  // three sequences interleaved row by row, and one row out of order
    Case c{"interleaved", &f, {}};
    c.b.seqs = seqs(f);
    for (int32_t p = 0; p < 20; ++p) {
      for (int32_t s = 0; s < 3; ++s) c.b.add(1, 100 * s + p, s, false);
    }
    c.b.add(1, 5, 1, false);
    for (int32_t p = 40; p < 47; ++p) c.b.add(1, p, 2, false);
    for (int32_t p = 30; p > 20; --p) c.b.add(1, p, 0, false);  // descending positions
    cases.push_back(std::move(c));
  }
  {  // decode of one sequence at 1200: flash-decoding splits the range
    Case c{"decode", &f, {}};
    c.b.seqs = seqs(f);
    c.b.add(1, 1199, 2, true);
    cases.push_back(std::move(c));
  }
  {  // three rows at a long context: a split of a multi-row block
    Case c{"short chunk, long context", &odd, {}};
    c.b.seqs = seqs(odd);
    for (int32_t p = 690; p < 693; ++p) c.b.add(1, p, 0, false);
    cases.push_back(std::move(c));
  }
  {  // decode of two sequences (6 items: split with 4 threads, not with 2), block size 7
    Case c{"decode two", &odd, {}};
    c.b.seqs = seqs(odd);
    c.b.add(1, 699, 1, true);
    c.b.add(1, 300, 0, true);
    cases.push_back(std::move(c));
  }
  for (Case& c : cases) {
    for (int n_threads : {1, 2, 3, 4}) {
      for (bool flash : {false, true}) {
        SCOPED_TRACE(testing::Message() << c.name << ", " << n_threads << " threads, "
                                        << (flash ? "flash" : "two-pass"));
        run_and_check(*c.fx, c.b, n_threads, flash);
        if (testing::Test::HasFatalFailure()) return;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(KvTypes, AttentionOpTypes,
                         testing::Values(KvType::F32, KvType::F16, KvType::BF16, KvType::Q8_0,
                                         KvType::FP8),
                         [](const testing::TestParamInfo<KvType>& i) {
                           return std::string(kv_type_name(i.param));
                         });

}  // namespace
}  // namespace qilin
