// AWQ (quant/awq.h) on synthetic layers: the H-based output error against a direct computation
// from the inputs, planted salient input channels (AWQ must beat RTN, as the paper's premise),
// clipping never worse than none, folding that leaves the full-precision model unchanged (with
// the q/k/v search on the attention output), and that attention against the model's own.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "cpu/quants.h"
#include "ops/batch.h"
#include "ops/kv_cache.h"
#include "quant/awq.h"
#include "quant/quantize.h"
#include "test_util.h"

namespace qilin {
namespace {

struct Layer {
  int64_t n_in = 0, n_out = 0, n_tok = 0;
  std::vector<float> x;  // [n_tok, n_in]
  std::vector<float> w;  // [n_out, n_in]
};

// Normal inputs and weights; `salient` channels get activations `boost` times larger, as the
// few outlier channels of real LLM activations.
Layer make_layer(int64_t n_in, int64_t n_out, int64_t n_tok, int n_salient, float boost,
                 uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Layer l{n_in, n_out, n_tok, std::vector<float>(n_tok * n_in), std::vector<float>(n_out * n_in)};
  std::vector<float> gain(n_in, 1.0f);
  for (int i = 0; i < n_salient; ++i) gain[(i * 37 + 5) % n_in] = boost;
  for (int64_t t = 0; t < n_tok; ++t) {
    for (int64_t c = 0; c < n_in; ++c) l.x[t * n_in + c] = nd(rng) * gain[c];
  }
  for (float& v : l.w) v = nd(rng) * 0.02f;
  return l;
}

AwqInputStats stats_of(ThreadPool& pool, const Layer& l) {
  AwqInputStats s;
  s.init(l.n_in);
  std::vector<float> scratch;
  for (int64_t t0 = 0; t0 < l.n_tok; t0 += 100) {  // uneven chunks, as windows would be
    s.add(pool, l.x.data() + t0 * l.n_in, std::min<int64_t>(100, l.n_tok - t0), scratch);
  }
  return s;
}

// sum_t |W x_t - W_hat x_t|^2 straight from the inputs, in double.
double direct_error(const Layer& l, const std::vector<float>& w_hat) {
  double err = 0.0;
  for (int64_t t = 0; t < l.n_tok; ++t) {
    for (int64_t r = 0; r < l.n_out; ++r) {
      double d = 0.0;
      for (int64_t c = 0; c < l.n_in; ++c) {
        d += (static_cast<double>(l.w[r * l.n_in + c]) - w_hat[r * l.n_in + c]) * l.x[t * l.n_in + c];
      }
      err += d * d;
    }
  }
  return err;
}

TEST(QuantAwq, OutputErrorFromSecondMomentMatchesDirect) {
  ThreadPool pool(2);
  const Layer l = make_layer(128, 48, 333, 3, 10.0f, 1);
  const AwqInputStats s = stats_of(pool, l);
  EXPECT_EQ(s.n_tokens, 333);
  std::vector<float> wq(l.w.size());
  fake_quantize(pool, DType::QI4_G32, l.w.data(), wq.data(), l.n_out, l.n_in);
  const double direct = direct_error(l, wq);
  const double via_h = awq_output_error(pool, l.w.data(), wq.data(), l.n_out, l.n_in, s.h.data());
  EXPECT_NEAR(via_h, direct, 1e-4 * direct);
  // mean |x| per channel
  const std::vector<float> m = s.mean_abs();
  double want = 0.0;
  for (int64_t t = 0; t < l.n_tok; ++t) want += std::fabs(l.x[t * l.n_in + 5]);
  EXPECT_NEAR(m[5], want / l.n_tok, 1e-5 * want / l.n_tok);
}

// The effective weight of AWQ in the original input space: Q(clip(W diag(s))) diag(s)^-1.
std::vector<float> awq_effective(ThreadPool& pool, const Layer& l, DType type,
                                 const AwqInputStats& st, bool clip, AwqScaleSearch* out) {
  std::vector<float> ws = l.w;
  const AwqLinear lin{ws.data(), l.n_out, type};
  const AwqScaleSearch s = awq_search_scale(pool, {lin}, l.n_in, st, 20);
  for (int64_t r = 0; r < l.n_out; ++r) {
    for (int64_t c = 0; c < l.n_in; ++c) ws[r * l.n_in + c] *= s.scales[c];
  }
  if (clip) {
    std::vector<float> h(st.h.size());
    for (int64_t a = 0; a < l.n_in; ++a) {
      for (int64_t b = 0; b < l.n_in; ++b) {
        h[a * l.n_in + b] = st.h[a * l.n_in + b] / (s.scales[a] * s.scales[b]);
      }
    }
    const auto [before, after] = awq_clip(pool, lin, l.n_in, h);
    EXPECT_LE(after, before);
  }
  std::vector<float> wq(ws.size());
  fake_quantize(pool, type, ws.data(), wq.data(), l.n_out, l.n_in);
  for (int64_t r = 0; r < l.n_out; ++r) {
    for (int64_t c = 0; c < l.n_in; ++c) wq[r * l.n_in + c] /= s.scales[c];
  }
  *out = s;
  return wq;
}

TEST(QuantAwq, PlantedSalientChannelsBeatRtn) {
  ThreadPool pool(2);
  for (DType type : {DType::QI4_G128, DType::Q4_0, DType::Q4_1, DType::NF4}) {
    const Layer l = make_layer(256, 96, 512, 4, 25.0f, 2);
    const AwqInputStats st = stats_of(pool, l);
    std::vector<float> rtn(l.w.size());
    fake_quantize(pool, type, l.w.data(), rtn.data(), l.n_out, l.n_in);
    const double e_rtn = direct_error(l, rtn);
    AwqScaleSearch s;
    const std::vector<float> scaled = awq_effective(pool, l, type, st, false, &s);
    const double e_scaled = direct_error(l, scaled);
    const std::vector<float> clipped = awq_effective(pool, l, type, st, true, &s);
    const double e_awq = direct_error(l, clipped);
    GTEST_LOG_(INFO) << dtype_name(type) << ": alpha " << s.alpha << ", output error RTN "
                     << e_rtn << ", scaled " << e_scaled << ", scaled+clipped " << e_awq;
    EXPECT_GT(s.alpha, 0.0f) << dtype_name(type);
    EXPECT_NEAR(s.loss_rtn, e_rtn, 1e-3 * e_rtn);  // alpha = 0 is plain RTN
    EXPECT_LT(e_scaled, 0.7 * e_rtn) << dtype_name(type);
    EXPECT_LE(e_awq, e_scaled * 1.0001) << dtype_name(type);
  }
}

// Without salient channels AWQ has nothing to protect: alpha may stay 0 and the search can only
// match RTN or do better, never worse (alpha = 0 is on the grid).
TEST(QuantAwq, NeverWorseThanRtnOnItsCalibration) {
  ThreadPool pool(2);
  const Layer l = make_layer(128, 64, 256, 0, 1.0f, 3);
  const AwqInputStats st = stats_of(pool, l);
  const AwqScaleSearch s = awq_search_scale(pool, {AwqLinear{const_cast<float*>(l.w.data()), l.n_out, DType::QI4_G32}},
                                            l.n_in, st, 20);
  EXPECT_LE(s.loss_best, s.loss_rtn);
}

// Captures layer `il`'s attn_norm output and attention heads' output during forward().
struct AttnTap : ForwardTap {
  int32_t il = 0;
  std::vector<float> x, heads;  // [n_tok, n_embd], [n_tok, n_head * head_dim]
  void linear_input(int32_t l, LinearInput site, const float* p, int32_t n_tok, int64_t n) override {
    if (l != il) return;
    if (site == LinearInput::Attn) x.assign(p, p + n_tok * n);
    if (site == LinearInput::Out) heads.assign(p, p + n_tok * n);
  }
};

// awq_attention (the q/k/v search's self-attention) computes what LlamaModel::forward computes:
// the heads' output equals the model's attn_output input (RoPE, GQA, causal softmax), and with
// wo the product wo . heads; on two windows, each from position 0.
TEST(QuantAwq, AttentionMatchesTheModel) {
  auto model = LlamaModel::load(test::f32_model_path(), WeightPlacement::Mapped);
  ASSERT_TRUE(model.is_ok()) << model.status().message();
  const LlamaHparams& hp = (*model)->hparams();
  ThreadPool pool(2);
  constexpr int32_t n_ctx = 48;
  const int64_t E = hp.n_embd, d_q = static_cast<int64_t>(hp.n_head) * hp.head_dim;
  for (int32_t il : {0, hp.n_layer - 1}) {
    std::vector<float> x, heads;  // two windows
    for (int win = 0; win < 2; ++win) {
      auto kv = KvCache::create((*model)->kv_config(n_ctx, 16, KvType::F32));  // as awq_attention
      ASSERT_TRUE(kv.is_ok());
      std::vector<int32_t> table{0, 1, 2};
      Workspace ws = (*model)->make_workspace(n_ctx, n_ctx, n_ctx, 2);
      Batch b;
      b.seqs.push_back({table.data(), 3});
      for (int i = 0; i < n_ctx; ++i) b.add(i == 0 ? 1 : 200 + 53 * i + 7 * win, i, 0, false);
      AttnTap tap;
      tap.il = il;
      ASSERT_TRUE((*model)->forward(b, **kv, ws, pool, &tap).is_ok());
      x.insert(x.end(), tap.x.begin(), tap.x.end());
      heads.insert(heads.end(), tap.heads.begin(), tap.heads.end());
    }
    const GgufFile& f = (*model)->gguf();
    auto w = [&](const char* nm) {
      auto v = f.read_f32(*f.find_tensor("blk." + std::to_string(il) + "." + nm));
      EXPECT_TRUE(v.is_ok());
      return *v;
    };
    const std::vector<float> wq = w("attn_q.weight"), wk = w("attn_k.weight"),
                             wv = w("attn_v.weight"), wo = w("attn_output.weight");
    const int64_t n_tok = 2 * n_ctx;
    std::vector<float> got(n_tok * d_q), got_o(n_tok * E);
    awq_attention(pool, hp, x.data(), n_tok, n_ctx, wq.data(), wk.data(), wv.data(), nullptr,
                  got.data());
    awq_attention(pool, hp, x.data(), n_tok, n_ctx, wq.data(), wk.data(), wv.data(), wo.data(),
                  got_o.data());
    double max_abs = 0.0, max_diff = 0.0, max_abs_o = 0.0, max_diff_o = 0.0;
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_FALSE(std::isnan(got[i]));
      max_abs = std::max(max_abs, static_cast<double>(std::fabs(heads[i])));
      max_diff = std::max(max_diff, static_cast<double>(std::fabs(got[i] - heads[i])));
    }
    for (int64_t t = 0; t < n_tok; ++t) {
      for (int64_t r = 0; r < E; ++r) {
        double ref = 0.0;
        for (int64_t c = 0; c < d_q; ++c) ref += static_cast<double>(wo[r * d_q + c]) * heads[t * d_q + c];
        ASSERT_FALSE(std::isnan(got_o[t * E + r]));
        max_abs_o = std::max(max_abs_o, std::fabs(ref));
        max_diff_o = std::max(max_diff_o, std::fabs(got_o[t * E + r] - ref));
      }
    }
    EXPECT_GT(max_abs, 0.0);
    EXPECT_LT(max_diff, 1e-4 * max_abs) << "layer " << il;
    EXPECT_LT(max_diff_o, 1e-4 * max_abs_o) << "layer " << il;
  }
}

// The fold keeps the full-precision model's function: scaled (unclipped) weights written as F32
// give the original model's logits up to float rounding. Covers attn_norm, v -> o under GQA
// (SmolLM2: 9 query heads, 3 KV heads), ffn_norm and up -> down.
TEST(QuantAwq, FoldingPreservesTheFullPrecisionModel) {
  const std::string f32 = test::f32_model_path();
  ASSERT_FALSE(f32.empty());
  auto model = LlamaModel::load(f32, WeightPlacement::Mapped);
  ASSERT_TRUE(model.is_ok()) << model.status().message();
  ThreadPool pool(2);
  std::vector<int32_t> tokens(64);
  for (int i = 0; i < 64; ++i) tokens[i] = 100 + 37 * i;
  auto cal = awq_calibrate(**model, tokens, 32, 1, pool, /*attn_windows=*/1);
  ASSERT_TRUE(cal.is_ok()) << cal.status().message();
  ASSERT_EQ(cal->attn_x.size(), static_cast<size_t>((*model)->hparams().n_layer));
  EXPECT_EQ(cal->attn_x[0].size(), static_cast<size_t>(32 * (*model)->hparams().n_embd));
  AwqOptions ao;
  ao.n_grid = 2;  // alpha in {0, 0.5}: nonzero scales, cheap
  ao.clip = false;
  ao.gqa_v_o = true;  // the tied fold is covered too
  auto r = awq_quantize(**model, *cal, pool, ao);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  int scaled = 0;
  for (const AwqLayerReport& l : r->layers) {
    for (float a : l.alpha) scaled += a > 0;
    EXPECT_LE(l.loss_scaled, l.loss_rtn);
  }
  EXPECT_GT(scaled, 0);
  char dir[] = "/tmp/qilin-awq-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string out = std::string(dir) + "/folded.gguf";
  QuantizeOptions qo;
  qo.target = DType::F32;
  qo.replace = &r->tensors;
  ASSERT_TRUE(quantize_gguf((*model)->gguf(), out, qo).is_ok());
  auto folded = LlamaModel::load(out, WeightPlacement::Mapped);
  ASSERT_TRUE(folded.is_ok()) << folded.status().message();
  // Logits of a short prompt, both models.
  auto logits = [&](const LlamaModel& m) {
    auto kv = KvCache::create(m.kv_config(32));
    EXPECT_TRUE(kv.is_ok());
    std::vector<int32_t> table{0, 1};
    Workspace ws = m.make_workspace(32, 32, 32, 2);
    Batch b;
    b.seqs.push_back({table.data(), 2});
    for (int i = 0; i < 20; ++i) b.add(tokens[i], i, 0, true);
    auto out = m.forward(b, **kv, ws, pool);
    EXPECT_TRUE(out.is_ok());
    return std::vector<float>(*out, *out + 20 * m.hparams().n_vocab);
  };
  const std::vector<float> a = logits(**model), b = logits(**folded);
  double max_diff = 0.0, max_abs = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    max_diff = std::max(max_diff, static_cast<double>(std::fabs(a[i] - b[i])));
    max_abs = std::max(max_abs, static_cast<double>(std::fabs(a[i])));
  }
  EXPECT_LT(max_diff, 1e-3 * max_abs) << "max |logit| " << max_abs;
  unlink(out.c_str());
  rmdir(dir);
}

}  // namespace
}  // namespace qilin
