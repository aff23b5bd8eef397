// matmul_backward_input and the training attention's threading: see backward.h.
#include "ops/backward.h"

#include <algorithm>
#include <cstring>

#include "cpu/quants.h"
#include "cpu/round16.h"
#include "ops/train_ops.h"

namespace qilin {
namespace {
// Rows of W per input-gradient tile: [in, 128] floats is at most 768 KiB for SmolLM2's widest
// input (1536), so the tile stays in L2 while every token row reads it.
constexpr int64_t kTile = 128;
}  // namespace

void matmul_backward_input(ThreadPool& pool, const WeightView& w, const WeightView* wt,
                           const float* dy, int64_t n, float* dx, DType tile_type,
                           MatmulBackwardScratch& s) {
  const int64_t in = w.n_in, out = w.n_out;
  s.tmp.resize(static_cast<size_t>(n * in));
  if (wt) {  // dx += dy (W^T)^T
    const size_t need = matmul_scratch_bytes(wt->type, wt->n_in, n);
    if (s.act.size() < need) s.act.resize(need);
    matmul(pool, *wt, dy, n, s.tmp.data(), s.act.data());
    for (size_t i = 0; i < s.tmp.size(); ++i) dx[i] += s.tmp[i];
    return;
  }
  const size_t esize = static_cast<size_t>(dtype_info(tile_type).block_bytes);
  const size_t per_thread = static_cast<size_t>(in);
  s.tile.resize(static_cast<size_t>(in * kTile) * esize);
  s.dyc.resize(static_cast<size_t>(n * kTile));
  if (s.rows.size() < per_thread * pool.size()) s.rows.resize(per_thread * pool.size());
  if (s.codes.size() < per_thread * pool.size()) s.codes.resize(per_thread * pool.size());
  for (int64_t o0 = 0; o0 < out; o0 += kTile) {
    const int64_t rows = std::min(kTile, out - o0);
    // tile[i, r] = W[o0 + r, i], in the tile type.
    pool.run([&](int ith, int nth) {
      int64_t r0, r1;
      split_range(rows, ith, nth, &r0, &r1);
      float* row = s.rows.data() + static_cast<size_t>(ith) * per_thread;
      for (int64_t r = r0; r < r1; ++r) {
        dequantize_row_ref(w.type, w.data + (o0 + r) * w.row_bytes, row, in);
        if (tile_type == DType::F32) {
          float* t = reinterpret_cast<float*>(s.tile.data());
          for (int64_t i = 0; i < in; ++i) t[i * rows + r] = row[i];
        } else {
          // Converted a row at a time (SIMD), then transposed.
          uint16_t* t = reinterpret_cast<uint16_t*>(s.tile.data());
          uint16_t* h = s.codes.data() + static_cast<size_t>(ith) * per_thread;
          const Round16Kernels& k = round16_kernels();
          (tile_type == DType::BF16 ? k.to_bf16 : k.to_f16)(row, h, in);
          for (int64_t i = 0; i < in; ++i) t[i * rows + r] = h[i];
        }
      }
    });
    for (int64_t t = 0; t < n; ++t) std::memcpy(&s.dyc[t * rows], dy + t * out + o0, rows * sizeof(float));
    WeightView tv;
    tv.type = tile_type;
    tv.data = s.tile.data();
    tv.n_in = rows;
    tv.n_out = in;
    tv.row_bytes = static_cast<size_t>(rows) * esize;
    const size_t need = matmul_scratch_bytes(tile_type, rows, n);
    if (s.act.size() < need) s.act.resize(need);
    matmul(pool, tv, s.dyc.data(), n, s.tmp.data(), s.act.data());
    for (int64_t i = 0; i < n * in; ++i) dx[i] += s.tmp[i];
  }
}

namespace {

// fn(g, i0, i1, thread) over every KV head's query items (cpu/train_attention.h), each thread
// taking about an equal share of each head's causal cost.
template <typename F>
void for_items(ThreadPool& pool, const TrainAttnArgs& a, int32_t lanes, F&& fn) {
  const int32_t group = a.H / a.Hkv;
  pool.run([&](int ith, int nth) {
    for (int32_t g = 0; g < a.Hkv; ++g) {
      int64_t i0, i1;
      train_attention_split(a.n, group, lanes, ith, nth, &i0, &i1);
      if (i0 < i1) fn(g, i0, i1, ith);
    }
  });
}
// fn(h0, h1, thread) over the query heads (the reference loops).
template <typename F>
void for_heads(ThreadPool& pool, int32_t H, F&& fn) {
  pool.run([&](int ith, int nth) {
    int64_t h0, h1;
    split_range(H, ith, nth, &h0, &h1);
    fn(static_cast<int32_t>(h0), static_cast<int32_t>(h1), ith);
  });
}

}  // namespace

void train_attention_forward(ThreadPool& pool, const TrainAttnKernels* k, const TrainAttnArgs& a,
                             float* out, float* lse) {
  if (k) {
    for_items(pool, a, k->lanes, [&](int32_t g, int64_t i0, int64_t i1, int) {
      k->forward(a, g, i0, i1, out, lse);
    });
  } else {
    for_heads(pool, a.H, [&](int32_t h0, int32_t h1, int) {
      attention_forward(a.q, a.k, a.v, a.n, a.H, a.Hkv, a.hd, out, lse, h0, h1);
    });
  }
}

void train_attention_backward(ThreadPool& pool, const TrainAttnKernels* k,
                              const TrainAttnArgs& a, const float* out, const float* lse,
                              const float* dout, float* dq, float* dk, float* dv,
                              std::vector<float>& part) {
  const int64_t m = a.n * a.Hkv * a.hd;
  const int n_parts = pool.size();
  part.assign(static_cast<size_t>(n_parts) * 2 * m, 0.0f);
  if (k) {
    for_items(pool, a, k->lanes, [&](int32_t g, int64_t i0, int64_t i1, int ith) {
      float* pk = part.data() + ith * 2 * m;
      k->backward(a, out, lse, dout, g, i0, i1, dq, pk, pk + m);
    });
  } else {
    for_heads(pool, a.H, [&](int32_t h0, int32_t h1, int ith) {
      float* pk = part.data() + ith * 2 * m;
      attention_backward(dout, a.q, a.k, a.v, out, lse, a.n, a.H, a.Hkv, a.hd, dq, pk, pk + m, h0, h1);
    });
  }
  for (int i = 0; i < n_parts; ++i) {
    const float* pk = part.data() + i * 2 * m;
    for (int64_t j = 0; j < m; ++j) {
      dk[j] += pk[j];
      dv[j] += pk[m + j];
    }
  }
}

}  // namespace qilin
