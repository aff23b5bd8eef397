// AWQ (Lin et al., "Activation-aware Weight Quantization"): per-input-channel activation
// statistics from a calibration run, a grid search over the scale exponent alpha, the scales
// folded into the preceding operator (RMSNorm weight; v -> o, up -> down), then a per-group
// clipping search; the caller quantizes the result with any blockwise type (quant/quantize.h).
// The q/k/v search measures the self-attention output (llm-awq's module2inspect = self_attn) on
// the first calibration windows; every other error is the layer output error
// sum_t |W x_t - W_hat x_t|^2, computed from the input's second moment H = sum_t x_t x_t^T so
// that all calibration tokens count at a fixed cost.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/thread_pool.h"
#include "model/llama.h"
#include "qilin/status.h"

namespace qilin {

// Statistics of one linear input over the calibration tokens.
struct AwqInputStats {
  int64_t n = 0;                // channels
  double n_tokens = 0;
  std::vector<float> h;         // [n, n] sum_t x_t x_t^T
  std::vector<double> abs_sum;  // [n] sum_t |x_t|
  void init(int64_t n_channels);
  // Adds x [n_tokens, n]. scratch is reused between calls.
  void add(ThreadPool& pool, const float* x, int64_t n_tokens, std::vector<float>& scratch);
  std::vector<float> mean_abs() const;  // [n] AWQ's activation scale, mean_t |x_t|
};

// One group of weights that read the same input: W_i [n_out_i, n_in] row-major F32.
struct AwqLinear {
  float* w = nullptr;
  int64_t n_out = 0;
  DType type = DType::QI4_G128;  // the quantizer of this weight (after row-length fallbacks)
};

struct AwqScaleSearch {
  float alpha = 0.0f;           // best exponent; 0 means no scaling (plain RTN)
  double loss_rtn = 0.0;        // output error of RTN (alpha = 0), summed over the group
  double loss_best = 0.0;
  std::vector<float> scales;    // [n_in] s (weights' columns are multiplied by s)
};

// Searches alpha in {0, 1/n_grid, ..., (n_grid - 1)/n_grid} (llm-awq's grid): s = mean_abs^alpha,
// clamped to >= 1e-4 and normalised by sqrt(max * min); loss = sum over the group of
// tr(E H E^T), E = W - Q(W diag(s)) diag(s)^-1. `tie` (optional, [n_in]) maps channels to
// classes that must share one scale (GQA: attn_output's inputs that read the same V head); a
// class's scale uses the mean of its channels' mean_abs. Weights are not modified.
AwqScaleSearch awq_search_scale(ThreadPool& pool, const std::vector<AwqLinear>& group,
                                int64_t n_in, const AwqInputStats& stats, int n_grid,
                                const std::vector<int32_t>* tie = nullptr);

// Clipping (llm-awq auto_clip): for each row and quantization group, the weights are clamped to
// +-max|w| * (1 - i / n_grid) for i < max_shrink * n_grid, the one with the least output error
// (with the group's block of H) kept. Modifies w [n_out, n_in]. Returns the error before/after.
std::pair<double, double> awq_clip(ThreadPool& pool, const AwqLinear& lin, int64_t n_in,
                                   const std::vector<float>& h, int n_grid = 20,
                                   float max_shrink = 0.5f);

// tr(E H E^T) for E = w - w_hat, both [n_out, n_in]; H [n_in, n_in].
double awq_output_error(ThreadPool& pool, const float* w, const float* w_hat, int64_t n_out,
                        int64_t n_in, const float* h);

// One layer's self-attention on F32 weights, as LlamaModel::forward computes it, over
// n_tok / n_ctx independent windows at positions 0 .. n_ctx - 1: x [n_tok, n_embd] (the
// attn_norm output), wq [n_head * head_dim, n_embd], wk and wv [n_head_kv * head_dim, n_embd],
// wo [n_embd, n_head * head_dim]; out [n_tok, n_embd]. With wo null, out [n_tok, n_head *
// head_dim] is the heads' output (attn_output's input).
void awq_attention(ThreadPool& pool, const LlamaHparams& hp, const float* x, int64_t n_tok,
                   int32_t n_ctx, const float* wq, const float* wk, const float* wv,
                   const float* wo, float* out);

// llm-awq's q/k/v search: the grid and s of awq_search_scale (on stats' mean_abs), loss = the
// squared error of the self-attention output (awq_attention with q, k, v quantized, o not) on
// x [n_tok, n_embd] (whole windows of n_ctx). Weights are not modified.
AwqScaleSearch awq_search_scale_attention(ThreadPool& pool, const LlamaHparams& hp,
                                          const AwqLinear& q, const AwqLinear& k,
                                          const AwqLinear& v, const float* wo,
                                          const AwqInputStats& stats, const std::vector<float>& x,
                                          int32_t n_ctx, int n_grid);

// Quantize-dequantize every row of w [n_out, n_in] with `type` into out.
void fake_quantize(ThreadPool& pool, DType type, const float* w, float* out, int64_t n_out,
                   int64_t n_in);

// Runs `model` over `tokens` in windows of n_ctx (each starting with BOS when the tokenizer adds
// one) and collects each layer's four linear inputs (LinearInput order), and the attn_norm
// outputs of the first attn_windows windows for the q/k/v search (none: that search falls back
// to the H-based error of q, k and v).
struct AwqCalibration {
  std::vector<std::array<AwqInputStats, 4>> layers;
  int64_t n_tokens = 0;
  int32_t n_ctx = 0;
  std::vector<std::vector<float>> attn_x;  // [n_layer][attn_windows * n_ctx, n_embd]
};
Result<AwqCalibration> awq_calibrate(const LlamaModel& model, const std::vector<int32_t>& tokens,
                                     int32_t n_ctx, int32_t bos, ThreadPool& pool,
                                     int32_t attn_windows = 0,
                                     const std::function<void(int, int)>& progress = nullptr);

struct AwqOptions {
  DType target = DType::QI4_G128;  // the quantizer searched for (the caller writes this type)
  int n_grid = 20;
  bool clip = true;
  // Under GQA, fold v -> o with scales tied per KV head (llm-awq skips v -> o there; measured
  // worse on SmolLM2, docs/quantization.md). Off by default.
  bool gqa_v_o = false;
  std::function<void(int layer, int n_layer)> progress;
};

struct AwqLayerReport {
  float alpha[4] = {};  // per LinearInput group (Out: v -> o, Down: up -> down)
  double loss_rtn = 0, loss_scaled = 0;  // output errors of the four groups, RTN and best alpha
  // Clipped weights (all but q, k), in the scaled inputs' space: before and after clipping.
  double loss_clip_before = 0, loss_clip_after = 0;
};

struct AwqResult {
  std::map<std::string, std::vector<float>> tensors;  // folded, clipped F32 weights and norms
  std::vector<AwqLayerReport> layers;
};

// The whole model: for each layer the four scale searches on the original weights, the scales
// applied (attn_norm -> q,k,v; v -> o unless GQA, see gqa_v_o; ffn_norm -> gate,up;
// up -> down), then clipping of every weight but q and k (as llm-awq) against the scaled inputs.
Result<AwqResult> awq_quantize(const LlamaModel& model, const AwqCalibration& cal,
                               ThreadPool& pool, const AwqOptions& opt);

}  // namespace qilin
