// QuantLinear: see quant_linear.h.
#include "train/quant_linear.h"

#include <algorithm>
#include <cstring>

#include "core/assert.h"
#include "core/fp16.h"
#include "cpu/quants.h"

namespace qilin::train {

namespace {
// Rows of W per input-gradient tile: [in, 128] floats is at most 768 KiB for SmolLM2's widest
// input (1536), so the tile stays in L2 while every token row reads it.
constexpr int64_t kTile = 128;
}  // namespace

Result<std::unique_ptr<QuantLinear>> QuantLinear::create(const LlamaModel& model, ThreadPool& pool, DType requant,
                                                         Precision prec) {
  std::unique_ptr<QuantLinear> q(new QuantLinear(pool));
  const LlamaHparams& hp = model.hparams();
  q->embd_ = model.tok_embd();
  q->head_ = model.output();
  q->tied_ = model.output().data == q->embd_.data;
  q->tile_type_ = prec == Precision::BF16 ? DType::BF16 : prec == Precision::F16 ? DType::F16 : DType::F32;
  int64_t max_in = hp.n_embd;
  for (int32_t il = 0; il < hp.n_layer; ++il) {
    const LlamaLayer& L = model.layers()[il];
    const WeightView* w[kNumProj] = {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down};
    for (int p = 0; p < kNumProj; ++p) {
      WeightView v = *w[p];
      max_in = std::max(max_in, v.n_in);
      if (requant != DType::F32 && requant != v.type) {
        const DTypeInfo& info = dtype_info(requant);
        if (!info.supported || matmul_kernels(requant) == nullptr) {
          return errorf("finetune: cannot keep the base in %s (no quantizer or gemm for it)", dtype_name(requant));
        }
        if (v.n_in % info.block_size != 0) {
          return errorf("finetune: blk.%d.%s.weight has %lld columns, not a multiple of %s's block of %lld",
                        il, lora_proj_gguf_name(p), static_cast<long long>(v.n_in), dtype_name(requant),
                        static_cast<long long>(info.block_size));
        }
        const size_t rb = row_bytes(requant, v.n_in);
        std::vector<uint8_t>& dst = q->owned_.emplace_back(rb * static_cast<size_t>(v.n_out));
        pool.run([&](int ith, int nth) {
          int64_t r0, r1;
          split_range(v.n_out, ith, nth, &r0, &r1);
          std::vector<float> row(static_cast<size_t>(v.n_in));
          for (int64_t r = r0; r < r1; ++r) {
            dequantize_row_ref(v.type, v.data + r * v.row_bytes, row.data(), v.n_in);
            quantize_row_ref(requant, row.data(), dst.data() + r * rb, v.n_in);
          }
        });
        v.type = requant;
        v.data = dst.data();
        v.row_bytes = rb;
      }
      q->mats_.push_back(v);
    }
  }
  if (requant != DType::F32) {
    for (WeightView* w : {&q->embd_, &q->head_}) {
      if (w == &q->head_ && q->tied_) break;
      const size_t bytes = w->row_bytes * static_cast<size_t>(w->n_out);
      std::vector<uint8_t>& dst = q->owned_.emplace_back(w->data, w->data + bytes);
      w->data = dst.data();
    }
    if (q->tied_) q->head_.data = q->embd_.data;
  }
  q->rows_.resize(static_cast<size_t>(pool.size() * max_in));
  q->codes_.resize(q->rows_.size());
  return q;
}

size_t QuantLinear::weight_bytes() const {
  size_t b = embd_.row_bytes * static_cast<size_t>(embd_.n_out);
  if (!tied_) b += head_.row_bytes * static_cast<size_t>(head_.n_out);
  for (const WeightView& w : mats_) b += w.row_bytes * static_cast<size_t>(w.n_out);
  return b;
}

size_t QuantLinear::owned_bytes() const {
  size_t b = 0;
  for (const auto& o : owned_) b += o.size();
  return b;
}

void QuantLinear::forward(int32_t layer, int p, const float* x, int64_t n, float* y) {
  const WeightView& w = mat(layer, p);
  const size_t need = matmul_scratch_bytes(w.type, w.n_in, n);
  if (scratch_.size() < need) scratch_.resize(need);
  matmul(pool_, w, x, n, y, scratch_.data());
}

void QuantLinear::backward_input(int32_t layer, int p, const float* dy, int64_t n, float* dx) {
  const WeightView& w = mat(layer, p);
  const int64_t in = w.n_in, out = w.n_out;
  const size_t esize = static_cast<size_t>(dtype_info(tile_type_).block_bytes);
  tile_.resize(static_cast<size_t>(in * kTile) * esize);
  dyc_.resize(static_cast<size_t>(n * kTile));
  tmp_.resize(static_cast<size_t>(n * in));
  for (int64_t o0 = 0; o0 < out; o0 += kTile) {
    const int64_t rows = std::min(kTile, out - o0);
    // tile[i, r] = W[o0 + r, i], in the tile type.
    pool_.run([&](int ith, int nth) {
      int64_t r0, r1;
      split_range(rows, ith, nth, &r0, &r1);
      float* row = rows_.data() + static_cast<size_t>(ith) * (rows_.size() / pool_.size());
      for (int64_t r = r0; r < r1; ++r) {
        dequantize_row_ref(w.type, w.data + (o0 + r) * w.row_bytes, row, in);
        if (tile_type_ == DType::F32) {
          float* t = reinterpret_cast<float*>(tile_.data());
          for (int64_t i = 0; i < in; ++i) t[i * rows + r] = row[i];
        } else {
          // Converted a row at a time (SIMD), then transposed.
          uint16_t* t = reinterpret_cast<uint16_t*>(tile_.data());
          uint16_t* h = codes_.data() + static_cast<size_t>(ith) * (codes_.size() / pool_.size());
          const Round16Kernels& k = round16_kernels();
          (tile_type_ == DType::BF16 ? k.to_bf16 : k.to_f16)(row, h, in);
          for (int64_t i = 0; i < in; ++i) t[i * rows + r] = h[i];
        }
      }
    });
    for (int64_t t = 0; t < n; ++t) std::memcpy(&dyc_[t * rows], dy + t * out + o0, rows * sizeof(float));
    WeightView tv;
    tv.type = tile_type_;
    tv.data = tile_.data();
    tv.n_in = rows;
    tv.n_out = in;
    tv.row_bytes = static_cast<size_t>(rows) * esize;
    const size_t need = matmul_scratch_bytes(tile_type_, rows, n);
    if (scratch_.size() < need) scratch_.resize(need);
    matmul(pool_, tv, dyc_.data(), n, tmp_.data(), scratch_.data());
    for (int64_t i = 0; i < n * in; ++i) dx[i] += tmp_[i];
  }
}

void QuantLinear::embed(const int32_t* tokens, int64_t n, float* x) {
  for (int64_t t = 0; t < n; ++t) {
    QILIN_ASSERT(tokens[t] >= 0 && tokens[t] < embd_.n_out);
    dequantize_row_ref(embd_.type, embd_.data + tokens[t] * embd_.row_bytes, x + t * embd_.n_in, embd_.n_in);
  }
}

}  // namespace qilin::train
