// AWQ (see awq.h). The heavy parts are F32 matrix products, done with Qilin's own matmul (tiled
// gemm on the thread pool): H += X^T X per calibration window, E H per alpha, and per clipping
// ratio E_g H_g for each quantization group g. The q/k/v search runs the layer's attention
// (plain loops, causal softmax per window and head) once per alpha on a few windows.
#include "quant/awq.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/assert.h"
#include "cpu/quants.h"
#include "ops/batch.h"
#include "ops/kv_cache.h"
#include "ops/ops.h"
#include "quant/quantize.h"

namespace qilin {
namespace {

// y [n_tok, n_out] = x [n_tok, n_in] . w^T with F32 w [n_out, n_in].
void matmul_f32(ThreadPool& pool, const float* w, int64_t n_out, int64_t n_in, const float* x,
                int64_t n_tok, float* y, std::vector<uint8_t>& scratch) {
  WeightView v;
  v.type = DType::F32;
  v.data = reinterpret_cast<const uint8_t*>(w);
  v.n_in = n_in;
  v.n_out = n_out;
  v.row_bytes = static_cast<size_t>(n_in) * sizeof(float);
  scratch.resize(std::max(scratch.size(), matmul_scratch_bytes(DType::F32, n_in, n_tok)));
  matmul(pool, v, x, n_tok, y, scratch.data());
}

// sum over rows r of sum_i a[r, i] * b[r, i], per row into out (may be null) and in total.
double row_dots(ThreadPool& pool, const float* a, const float* b, int64_t n_rows, int64_t n,
                double* out) {
  std::vector<double> part(pool.size(), 0.0);
  pool.run([&](int ith, int nth) {
    int64_t r0, r1;
    split_range(n_rows, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; ++r) {
      double s = 0.0;
      for (int64_t i = 0; i < n; ++i) s += static_cast<double>(a[r * n + i]) * b[r * n + i];
      if (out) out[r] = s;
      part[ith] += s;
    }
  });
  double total = 0.0;
  for (double p : part) total += p;
  return total;
}

// The type the searches quantize with: NF4_DQ's second level spans blocks, so its search uses
// plain NF4 (the block scales then move by at most half an int8 step).
DType search_type(DType t) { return t == DType::NF4_DQ ? DType::NF4 : t; }

}  // namespace

void AwqInputStats::init(int64_t n_channels) {
  n = n_channels;
  n_tokens = 0;
  h.assign(static_cast<size_t>(n * n), 0.0f);
  abs_sum.assign(static_cast<size_t>(n), 0.0);
}

void AwqInputStats::add(ThreadPool& pool, const float* x, int64_t n_tok,
                        std::vector<float>& scratch) {
  QILIN_ASSERT(n > 0 && n_tok > 0);
  // H += X^T X as a product of X^T [n, n_tok] with itself: rows of X^T are the "weights" and
  // the "tokens" at once.
  scratch.resize(static_cast<size_t>(n * n_tok + n * n));
  float* xt = scratch.data();         // [n, n_tok]
  float* y = xt + n * n_tok;          // [n, n]
  for (int64_t t = 0; t < n_tok; ++t) {
    for (int64_t c = 0; c < n; ++c) {
      xt[c * n_tok + t] = x[t * n + c];
      abs_sum[c] += std::fabs(x[t * n + c]);
    }
  }
  std::vector<uint8_t> act;
  matmul_f32(pool, xt, n, n_tok, xt, n, y, act);
  for (int64_t i = 0; i < n * n; ++i) h[i] += y[i];
  n_tokens += static_cast<double>(n_tok);
}

std::vector<float> AwqInputStats::mean_abs() const {
  std::vector<float> m(static_cast<size_t>(n));
  for (int64_t c = 0; c < n; ++c) m[c] = n_tokens > 0 ? static_cast<float>(abs_sum[c] / n_tokens) : 0.0f;
  return m;
}

void fake_quantize(ThreadPool& pool, DType type, const float* w, float* out, int64_t n_out,
                   int64_t n_in) {
  const size_t rb = row_bytes(type, n_in);
  pool.run([&](int ith, int nth) {
    int64_t r0, r1;
    split_range(n_out, ith, nth, &r0, &r1);
    std::vector<uint8_t> buf(rb);
    for (int64_t r = r0; r < r1; ++r) {
      quantize_row_ref(type, w + r * n_in, buf.data(), n_in);
      dequantize_row_ref(type, buf.data(), out + r * n_in, n_in);
    }
  });
}

double awq_output_error(ThreadPool& pool, const float* w, const float* w_hat, int64_t n_out,
                        int64_t n_in, const float* h) {
  std::vector<float> e(static_cast<size_t>(n_out * n_in)), y(e.size());
  for (size_t i = 0; i < e.size(); ++i) e[i] = w[i] - w_hat[i];
  std::vector<uint8_t> scratch;
  matmul_f32(pool, h, n_in, n_in, e.data(), n_out, y.data(), scratch);
  return row_dots(pool, y.data(), e.data(), n_out, n_in, nullptr);
}

void awq_attention(ThreadPool& pool, const LlamaHparams& hp, const float* x, int64_t n_tok,
                   int32_t n_ctx, const float* wq, const float* wk, const float* wv,
                   const float* wo, float* out) {
  const int64_t E = hp.n_embd, hd = hp.head_dim;
  const int64_t d_q = static_cast<int64_t>(hp.n_head) * hd, d_kv = static_cast<int64_t>(hp.n_head_kv) * hd;
  QILIN_ASSERT(n_ctx > 0 && n_tok % n_ctx == 0);
  std::vector<float> q(n_tok * d_q), k(n_tok * d_kv), v(n_tok * d_kv);  // [n_tok, d_q|d_kv]
  std::vector<float> a(wo ? n_tok * d_q : 0);                             // [n_tok, d_q]
  float* heads = wo ? a.data() : out;
  std::vector<uint8_t> scratch;
  matmul_f32(pool, wq, d_q, E, x, n_tok, q.data(), scratch);
  matmul_f32(pool, wk, d_kv, E, x, n_tok, k.data(), scratch);
  matmul_f32(pool, wv, d_kv, E, x, n_tok, v.data(), scratch);
  for (int64_t t = 0; t < n_tok; ++t) {
    rope(q.data() + t * d_q, hp.n_head, static_cast<int32_t>(hd), static_cast<int32_t>(t % n_ctx), hp.rope);
    rope(k.data() + t * d_kv, hp.n_head_kv, static_cast<int32_t>(hd), static_cast<int32_t>(t % n_ctx), hp.rope);
  }
  const int64_t n_win = n_tok / n_ctx, n_rep = hp.n_head / hp.n_head_kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));  // as attention_args
  pool.run([&](int ith, int nth) {
    std::vector<float> p(n_ctx);
    for (int64_t job = ith; job < n_win * hp.n_head; job += nth) {
      const int64_t w = job / hp.n_head, h = job % hp.n_head, hk = h / n_rep;
      for (int64_t i = 0; i < n_ctx; ++i) {
        const float* qi = q.data() + (w * n_ctx + i) * d_q + h * hd;
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j <= i; ++j) {
          const float* kj = k.data() + (w * n_ctx + j) * d_kv + hk * hd;
          float d = 0.0f;
          for (int64_t c = 0; c < hd; ++c) d += qi[c] * kj[c];
          p[j] = d * scale;
          mx = std::max(mx, p[j]);
        }
        float sum = 0.0f;
        for (int64_t j = 0; j <= i; ++j) sum += (p[j] = std::exp(p[j] - mx));
        float* oi = heads + (w * n_ctx + i) * d_q + h * hd;
        for (int64_t c = 0; c < hd; ++c) oi[c] = 0.0f;
        for (int64_t j = 0; j <= i; ++j) {
          const float* vj = v.data() + (w * n_ctx + j) * d_kv + hk * hd;
          const float pj = p[j] / sum;
          for (int64_t c = 0; c < hd; ++c) oi[c] += pj * vj[c];
        }
      }
    }
  });
  if (wo) matmul_f32(pool, wo, E, d_q, a.data(), n_tok, out, scratch);
}

namespace {

// s = mean_abs^alpha clamped to >= 1e-4, normalised by sqrt(max * min) (llm-awq).
void scales_for(const std::vector<float>& xm, float alpha, std::vector<float>& s) {
  s.resize(xm.size());
  float mx = 0.0f, mn = std::numeric_limits<float>::infinity();
  for (size_t c = 0; c < xm.size(); ++c) {
    s[c] = std::max(std::pow(xm[c], alpha), 1e-4f);
    mx = std::max(mx, s[c]);
    mn = std::min(mn, s[c]);
  }
  const float norm = 1.0f / std::sqrt(mx * mn);
  for (float& v : s) v *= norm;
}

// out = Q(w diag(s)) diag(s)^-1, w [n_out, n_in].
void fake_quantize_scaled(ThreadPool& pool, DType type, const float* w, int64_t n_out,
                          int64_t n_in, const std::vector<float>& s, std::vector<float>& ws,
                          std::vector<float>& out) {
  const size_t sz = static_cast<size_t>(n_out * n_in);
  ws.resize(sz);
  out.resize(sz);
  for (int64_t r = 0; r < n_out; ++r) {
    for (int64_t c = 0; c < n_in; ++c) ws[r * n_in + c] = w[r * n_in + c] * s[c];
  }
  fake_quantize(pool, type, ws.data(), out.data(), n_out, n_in);
  for (int64_t r = 0; r < n_out; ++r) {
    for (int64_t c = 0; c < n_in; ++c) out[r * n_in + c] /= s[c];
  }
}

// llm-awq's grid: alpha = i / n_grid for i in [0, n_grid), s = scales_for(xm, alpha); keeps the
// scales of the least loss(s), and alpha = 0's loss as the plain-RTN baseline.
template <typename Loss>
AwqScaleSearch grid_search(const std::vector<float>& xm, int n_grid, Loss&& loss_of) {
  AwqScaleSearch best;
  best.loss_best = std::numeric_limits<double>::infinity();
  std::vector<float> s;
  for (int i = 0; i < n_grid; ++i) {
    const float alpha = static_cast<float>(i) / static_cast<float>(n_grid);
    scales_for(xm, alpha, s);
    const double loss = loss_of(s);
    if (i == 0) best.loss_rtn = loss;
    if (loss < best.loss_best) {
      best.loss_best = loss;
      best.alpha = alpha;
      best.scales = s;
    }
  }
  return best;
}

}  // namespace

AwqScaleSearch awq_search_scale_attention(ThreadPool& pool, const LlamaHparams& hp,
                                          const AwqLinear& q, const AwqLinear& k,
                                          const AwqLinear& v, const float* wo,
                                          const AwqInputStats& stats, const std::vector<float>& x,
                                          int32_t n_ctx, int n_grid) {
  const int64_t E = hp.n_embd, n_tok = static_cast<int64_t>(x.size()) / E;
  QILIN_ASSERT(stats.n == E && n_grid >= 1 && n_tok > 0 && n_tok % n_ctx == 0);
  std::vector<float> ref(n_tok * E), out(n_tok * E);  // [n_tok, n_embd]
  awq_attention(pool, hp, x.data(), n_tok, n_ctx, q.w, k.w, v.w, wo, ref.data());
  std::vector<float> ws, wq, wk, wv;
  return grid_search(stats.mean_abs(), n_grid, [&](const std::vector<float>& s) {
    fake_quantize_scaled(pool, search_type(q.type), q.w, q.n_out, E, s, ws, wq);
    fake_quantize_scaled(pool, search_type(k.type), k.w, k.n_out, E, s, ws, wk);
    fake_quantize_scaled(pool, search_type(v.type), v.w, v.n_out, E, s, ws, wv);
    awq_attention(pool, hp, x.data(), n_tok, n_ctx, wq.data(), wk.data(), wv.data(), wo, out.data());
    double loss = 0.0;
    for (size_t j = 0; j < out.size(); ++j) {
      const double d = static_cast<double>(out[j]) - ref[j];
      loss += d * d;
    }
    return loss;
  });
}

AwqScaleSearch awq_search_scale(ThreadPool& pool, const std::vector<AwqLinear>& group,
                                int64_t n_in, const AwqInputStats& stats, int n_grid,
                                const std::vector<int32_t>* tie) {
  QILIN_ASSERT(stats.n == n_in && n_grid >= 1);
  std::vector<float> xm = stats.mean_abs();
  if (tie) {
    // Tied channels share the mean of their activation magnitudes.
    std::vector<double> sum(n_in, 0.0);
    std::vector<int> cnt(n_in, 0);
    for (int64_t c = 0; c < n_in; ++c) sum[(*tie)[c]] += xm[c], cnt[(*tie)[c]]++;
    for (int64_t c = 0; c < n_in; ++c) xm[c] = static_cast<float>(sum[(*tie)[c]] / cnt[(*tie)[c]]);
  }
  std::vector<float> ws, wq;
  return grid_search(xm, n_grid, [&](const std::vector<float>& s) {
    double loss = 0.0;
    for (const AwqLinear& lin : group) {
      fake_quantize_scaled(pool, search_type(lin.type), lin.w, lin.n_out, n_in, s, ws, wq);
      loss += awq_output_error(pool, lin.w, wq.data(), lin.n_out, n_in, stats.h.data());
    }
    return loss;
  });
}

std::pair<double, double> awq_clip(ThreadPool& pool, const AwqLinear& lin, int64_t n_in,
                                   const std::vector<float>& h, int n_grid, float max_shrink) {
  const DType type = search_type(lin.type);
  const int64_t G = dtype_info(type).block_size;
  const int64_t n_out = lin.n_out, n_groups = n_in / G;
  QILIN_ASSERT(n_in % G == 0 && static_cast<int64_t>(h.size()) == n_in * n_in);
  const size_t sz = static_cast<size_t>(n_out * n_in);
  std::vector<float> org_max(static_cast<size_t>(n_out * n_groups));
  for (int64_t r = 0; r < n_out; ++r) {
    for (int64_t g = 0; g < n_groups; ++g) {
      float m = 0.0f;
      for (int64_t j = 0; j < G; ++j) m = std::max(m, std::fabs(lin.w[r * n_in + g * G + j]));
      org_max[r * n_groups + g] = m;
    }
  }
  // The diagonal blocks H_g of H, contiguous.
  std::vector<float> hg(static_cast<size_t>(n_groups * G * G));
  for (int64_t g = 0; g < n_groups; ++g) {
    for (int64_t a = 0; a < G; ++a) {
      for (int64_t b = 0; b < G; ++b) hg[(g * G + a) * G + b] = h[(g * G + a) * n_in + g * G + b];
    }
  }
  std::vector<double> best_err(org_max.size(), std::numeric_limits<double>::infinity());
  std::vector<float> best_max(org_max.size());
  std::vector<float> wc(sz), wq(sz), eg(static_cast<size_t>(n_out * G)), yg(eg.size());
  std::vector<double> err_r(n_out);
  std::vector<uint8_t> scratch;
  double err_first = 0.0;
  const int n_steps = std::max(1, static_cast<int>(max_shrink * n_grid));
  for (int i = 0; i < n_steps; ++i) {
    const float ratio = 1.0f - static_cast<float>(i) / static_cast<float>(n_grid);
    for (int64_t r = 0; r < n_out; ++r) {
      for (int64_t g = 0; g < n_groups; ++g) {
        const float m = org_max[r * n_groups + g] * ratio;
        for (int64_t j = 0; j < G; ++j) {
          const int64_t k = r * n_in + g * G + j;
          wc[k] = std::clamp(lin.w[k], -m, m);
        }
      }
    }
    fake_quantize(pool, type, wc.data(), wq.data(), n_out, n_in);
    for (int64_t g = 0; g < n_groups; ++g) {
      for (int64_t r = 0; r < n_out; ++r) {
        for (int64_t j = 0; j < G; ++j) {
          const int64_t k = r * n_in + g * G + j;
          eg[r * G + j] = wq[k] - lin.w[k];
        }
      }
      matmul_f32(pool, hg.data() + g * G * G, G, G, eg.data(), n_out, yg.data(), scratch);
      const double total = row_dots(pool, yg.data(), eg.data(), n_out, G, err_r.data());
      if (i == 0) err_first += total;
      for (int64_t r = 0; r < n_out; ++r) {
        const size_t k = static_cast<size_t>(r * n_groups + g);
        if (err_r[r] < best_err[k]) best_err[k] = err_r[r], best_max[k] = org_max[k] * ratio;
      }
    }
  }
  double err_best = 0.0;
  for (size_t k = 0; k < best_err.size(); ++k) err_best += best_err[k];
  for (int64_t r = 0; r < n_out; ++r) {
    for (int64_t g = 0; g < n_groups; ++g) {
      const float m = best_max[r * n_groups + g];
      for (int64_t j = 0; j < G; ++j) {
        float& v = lin.w[r * n_in + g * G + j];
        v = std::clamp(v, -m, m);
      }
    }
  }
  return {err_first, err_best};
}

namespace {

struct CalibrationTap : ForwardTap {
  ThreadPool& pool;
  AwqCalibration& cal;
  std::vector<float> scratch;
  bool keep_attn = false;  // this window's attn_norm outputs are kept
  CalibrationTap(ThreadPool& p, AwqCalibration& c) : pool(p), cal(c) {}
  void linear_input(int32_t il, LinearInput site, const float* x, int32_t n_tokens,
                    int64_t n) override {
    if (keep_attn && site == LinearInput::Attn) {
      cal.attn_x[il].insert(cal.attn_x[il].end(), x, x + static_cast<int64_t>(n_tokens) * n);
    }
    AwqInputStats& s = cal.layers[il][static_cast<int>(site)];
    if (s.n == 0) s.init(n);
    s.add(pool, x, n_tokens, scratch);
  }
};

}  // namespace

Result<AwqCalibration> awq_calibrate(const LlamaModel& model, const std::vector<int32_t>& tokens,
                                     int32_t n_ctx, int32_t bos, ThreadPool& pool,
                                     int32_t attn_windows,
                                     const std::function<void(int, int)>& progress) {
  if (n_ctx < 2) return errorf("awq: calibration window must be at least 2 tokens, got %d", n_ctx);
  const int64_t n_windows = static_cast<int64_t>(tokens.size()) / n_ctx;
  if (n_windows < 1) {
    return errorf("awq: the calibration text has %zu tokens, fewer than one window of %d",
                  tokens.size(), n_ctx);
  }
  AwqCalibration cal;
  cal.layers.resize(model.hparams().n_layer);
  cal.n_ctx = n_ctx;
  if (attn_windows > 0) cal.attn_x.resize(model.hparams().n_layer);
  constexpr int32_t kBlock = 16;
  auto kv = KvCache::create(model.kv_config(n_ctx, kBlock));
  QILIN_TRY(kv);
  // One sequence at a time over the whole cache: its block table is every block in order.
  std::vector<int32_t> table((*kv)->config().n_blocks);
  std::iota(table.begin(), table.end(), 0);
  Workspace ws = model.make_workspace(n_ctx, 1, n_ctx, pool.size());
  CalibrationTap tap(pool, cal);
  Batch batch;
  for (int64_t w = 0; w < n_windows; ++w) {
    batch.clear();
    batch.seqs.push_back({table.data(), static_cast<int32_t>(table.size())});
    for (int32_t i = 0; i < n_ctx; ++i) {
      const int32_t t = i == 0 && bos >= 0 ? bos : tokens[w * n_ctx + i];
      batch.add(t, i, 0, false);
    }
    tap.keep_attn = w < attn_windows;
    auto out = model.forward(batch, **kv, ws, pool, &tap);
    QILIN_TRY(out);
    cal.n_tokens += n_ctx;
    if (progress) progress(static_cast<int>(w + 1), static_cast<int>(n_windows));
  }
  return cal;
}

Result<AwqResult> awq_quantize(const LlamaModel& model, const AwqCalibration& cal,
                               ThreadPool& pool, const AwqOptions& opt) {
  const GgufFile& f = model.gguf();
  const LlamaHparams& hp = model.hparams();
  if (static_cast<int32_t>(cal.layers.size()) != hp.n_layer) {
    return errorf("awq: calibration has %zu layers, the model %d", cal.layers.size(), hp.n_layer);
  }
  const bool tied = f.find_tensor("output.weight") == nullptr;
  const int64_t E = hp.n_embd, d_q = static_cast<int64_t>(hp.n_head) * hp.head_dim;
  const int64_t d_kv = static_cast<int64_t>(hp.n_head_kv) * hp.head_dim, n_ff = hp.n_ff;
  // attn_output's input channel c (head h, dim j) reads V channel (h / n_rep) * head_dim + j.
  std::vector<int32_t> tie(d_q);
  const int32_t n_rep = hp.n_head / hp.n_head_kv;
  for (int64_t c = 0; c < d_q; ++c) {
    tie[c] = static_cast<int32_t>((c / hp.head_dim) / n_rep * hp.head_dim + c % hp.head_dim);
  }
  AwqResult res;
  res.layers.resize(hp.n_layer);
  for (int32_t il = 0; il < hp.n_layer; ++il) {
    const std::string p = "blk." + std::to_string(il) + ".";
    const char* names[] = {"attn_norm.weight", "ffn_norm.weight", "attn_q.weight",
                           "attn_k.weight",    "attn_v.weight",   "attn_output.weight",
                           "ffn_gate.weight",  "ffn_up.weight",   "ffn_down.weight"};
    std::map<std::string, std::vector<float>> t;
    std::map<std::string, DType> type;
    for (const char* nm : names) {
      const GgufTensorInfo* info = f.find_tensor(p + nm);
      if (!info) return errorf("%s: tensor '%s%s' is missing", f.path().c_str(), p.c_str(), nm);
      auto v = f.read_f32(*info, "qilin quantize");
      QILIN_TRY(v);
      t[nm] = std::move(*v);
      type[nm] = quant_tensor_type(*info, opt.target, tied);
    }
    for (int s = 0; s < 4; ++s) {
      if (cal.layers[il][s].n == 0) return errorf("awq: layer %d has no calibration data", il);
    }
    auto lin = [&](const char* nm, int64_t n_out) { return AwqLinear{t[nm].data(), n_out, type[nm]}; };
    const AwqLinear q = lin("attn_q.weight", d_q), k = lin("attn_k.weight", d_kv),
                    v = lin("attn_v.weight", d_kv), o = lin("attn_output.weight", E),
                    gate = lin("ffn_gate.weight", n_ff), up = lin("ffn_up.weight", n_ff),
                    down = lin("ffn_down.weight", E);
    const auto& st = cal.layers[il];
    // All four searches see the original weights, as llm-awq's auto_scale_block.
    // q/k/v as llm-awq: on the self-attention output when windows were kept.
    const AwqScaleSearch sa =
        cal.attn_x.empty()
            ? awq_search_scale(pool, {q, k, v}, E, st[0], opt.n_grid)
            : awq_search_scale_attention(pool, hp, q, k, v, o.w, st[0], cal.attn_x[il], cal.n_ctx,
                                         opt.n_grid);
    // v -> o only when v and o read and write the same channels: under GQA llm-awq and AutoAWQ
    // skip it (the shapes differ), and so does this (s = 1, o quantized plainly).
    AwqScaleSearch so;
    if (n_rep == 1 || opt.gqa_v_o) {
      so = awq_search_scale(pool, {o}, d_q, st[1], opt.n_grid, n_rep > 1 ? &tie : nullptr);
    } else {
      so.scales.assign(d_q, 1.0f);
    }
    const AwqScaleSearch sf = awq_search_scale(pool, {gate, up}, E, st[2], opt.n_grid);
    const AwqScaleSearch sd = awq_search_scale(pool, {down}, n_ff, st[3], opt.n_grid);
    AwqLayerReport& rep = res.layers[il];
    rep.alpha[0] = sa.alpha, rep.alpha[1] = so.alpha, rep.alpha[2] = sf.alpha, rep.alpha[3] = sd.alpha;
    // The linears' output errors (the attention search's loss is of another kind: not summed).
    const bool sa_h = cal.attn_x.empty();
    rep.loss_rtn = (sa_h ? sa.loss_rtn : 0.0) + so.loss_rtn + sf.loss_rtn + sd.loss_rtn;
    rep.loss_scaled = (sa_h ? sa.loss_best : 0.0) + so.loss_best + sf.loss_best + sd.loss_best;

    // Fold: the previous operator's output channel c is divided by s_c, the weights' input
    // column c multiplied by it, so the full-precision model computes the same function.
    auto scale_cols = [](const AwqLinear& l, int64_t n_in, const std::vector<float>& s) {
      for (int64_t r = 0; r < l.n_out; ++r) {
        for (int64_t c = 0; c < n_in; ++c) l.w[r * n_in + c] *= s[c];
      }
    };
    std::vector<float>& an = t["attn_norm.weight"];
    for (int64_t c = 0; c < E; ++c) an[c] /= sa.scales[c];
    for (const AwqLinear* l : {&q, &k, &v}) scale_cols(*l, E, sa.scales);
    // v's output row tie[c] carries attn_output column c's scale (equal within a class).
    std::vector<float> s_v(d_kv, 1.0f);
    for (int64_t c = 0; c < d_q; ++c) s_v[tie[c]] = so.scales[c];
    for (int64_t r = 0; r < d_kv; ++r) {
      for (int64_t j = 0; j < E; ++j) v.w[r * E + j] /= s_v[r];
    }
    scale_cols(o, d_q, so.scales);
    std::vector<float>& fn = t["ffn_norm.weight"];
    for (int64_t c = 0; c < E; ++c) fn[c] /= sf.scales[c];
    scale_cols(gate, E, sf.scales);
    scale_cols(up, E, sf.scales);
    for (int64_t r = 0; r < n_ff; ++r) {
      for (int64_t j = 0; j < E; ++j) up.w[r * E + j] /= sd.scales[r];
    }
    scale_cols(down, n_ff, sd.scales);

    if (opt.clip) {
      // The inputs are now x / s: H' = D^-1 H D^-1.
      auto scaled_h = [](const AwqInputStats& s, const std::vector<float>& sc) {
        std::vector<float> h(s.h.size());
        for (int64_t a = 0; a < s.n; ++a) {
          for (int64_t b = 0; b < s.n; ++b) h[a * s.n + b] = s.h[a * s.n + b] / (sc[a] * sc[b]);
        }
        return h;
      };
      const std::vector<float> ha = scaled_h(st[0], sa.scales), ho = scaled_h(st[1], so.scales),
                               hf = scaled_h(st[2], sf.scales), hd = scaled_h(st[3], sd.scales);
      // q and k are not clipped (llm-awq: their errors pass through the softmax).
      const std::pair<const AwqLinear*, std::pair<int64_t, const std::vector<float>*>> clips[] = {
          {&v, {E, &ha}}, {&o, {d_q, &ho}}, {&gate, {E, &hf}}, {&up, {E, &hf}}, {&down, {n_ff, &hd}}};
      for (const auto& [l, nh] : clips) {
        const auto [before, after] = awq_clip(pool, *l, nh.first, *nh.second, opt.n_grid);
        rep.loss_clip_before += before;
        rep.loss_clip_after += after;
      }
    }
    for (auto& [nm, data] : t) res.tensors[p + nm] = std::move(data);
    if (opt.progress) opt.progress(il + 1, hp.n_layer);
  }
  return res;
}

}  // namespace qilin
