// Causal grouped-query attention over one packed training sequence: the forward that saves the
// log-sum-exp and FlashAttention's backward (probabilities recomputed from it), as per-ISA
// tiled kernels. The scalar reference is ops/train_ops.h's attention_forward/backward (checked
// against finite differences); tests compare every ISA's kernels with it.
// A KV head g's query vectors are numbered item i = t * group + j (row t, query head
// g * group + j, group = H / Hkv); a call covers items [i0, i1) of one KV head, so threads split
// the work by item ranges (train_attention_split balances the causal cost).
#pragma once

#include <cstdint>

#include "cpu/isa.h"

namespace qilin {

struct TrainAttnArgs {
  const float* q = nullptr;  // [n, H, hd] after RoPE
  const float* k = nullptr;  // [n, Hkv, hd] after RoPE
  const float* v = nullptr;  // [n, Hkv, hd]
  int64_t n = 0;
  int32_t H = 0, Hkv = 0, hd = 0;
};

// out[t, h] = sum_{s <= t} softmax_s(q[t,h].k[s,g] / sqrt(hd)) v[s,g] and lse[t, h] (the
// log-sum-exp of the scaled scores) for items [i0, i1) of KV head g. Writes those rows only.
using TrainAttnForwardFn = void (*)(const TrainAttnArgs& a, int32_t g, int64_t i0, int64_t i1,
                                    float* out /*[n, H, hd]*/, float* lse /*[n, H]*/);
// The backward of the same items: ADDS to dq's rows of the items, and to dk, dv (every key row
// up to the items' last row may receive a share, so threads give each their own dk, dv).
using TrainAttnBackwardFn = void (*)(const TrainAttnArgs& a, const float* out, const float* lse,
                                     const float* dout /*[n, H, hd]*/, int32_t g, int64_t i0,
                                     int64_t i1, float* dq /*[n, H, hd]*/,
                                     float* dk /*[n, Hkv, hd]*/, float* dv /*[n, Hkv, hd]*/);

struct TrainAttnKernels {
  int32_t lanes;  // query vectors per tile (thread ranges are split on multiples of it)
  TrainAttnForwardFn forward;
  TrainAttnBackwardFn backward;
};
// Null for Isa::Scalar: the caller runs the reference (ops/train_ops.h) instead.
const TrainAttnKernels* train_attention_kernels(Isa isa);
inline const TrainAttnKernels* train_attention_kernels() {
  return train_attention_kernels(cpu_best_isa());
}

// Thread ith of nth's items [*i0, *i1) of one KV head: whole tiles of `lanes` items, with about
// 1/nth of the causal cost (a tile of late rows reads more keys than one of early rows).
void train_attention_split(int64_t n, int32_t group, int32_t lanes, int ith, int nth, int64_t* i0,
                           int64_t* i1);

namespace avx2 {
extern const TrainAttnKernels kTrainAttnKernels;
}  // namespace avx2
namespace avx512 {
extern const TrainAttnKernels kTrainAttnKernels;
}  // namespace avx512

}  // namespace qilin
