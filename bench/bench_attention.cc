// Attention kernels per ISA: the two-pass kernel (one row at a time) against FlashAttention
// (a block of consecutive rows per K/V pass), on the 135M model's shape (3 query heads per KV
// head, head_dim 64, 3 KV heads in the slot) and head_dim 128, over a shuffled block table.
// "prefill": the last `rows` rows of a causal prompt of length ctx (rows = the flash kernel's
// block); "decode": one row at the end of ctx. GFLOP/s counts 4 * head_dim per (query head,
// key) pair: q.k and p.v. The cache is F32 (kernel comparisons), F16 (the default format) or
// BF16 (on AVX512_BF16 CPUs the avx512 decode rows run VDPBF16PS: attention_flash_kernel).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cpu/attention.h"
#include "cpu/kv_types.h"

namespace qilin {
namespace {

constexpr int32_t kGroup = 3, kNumKv = 3, kBlockSize = 16;

struct Problem {
  std::vector<float> q, out, k, v, scores;
  std::vector<uint8_t> k_typed, v_typed;  // k and v in the task's kv_type (not F32)
  std::vector<int32_t> table;
  AttnTask task;
};

Problem make_problem(int32_t head_dim, int32_t ctx, int32_t rows, KvType kv_type) {
  Problem p;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int32_t n_blocks = (ctx + kBlockSize - 1) / kBlockSize;
  const int64_t slot = static_cast<int64_t>(kNumKv) * head_dim;
  p.k.resize(static_cast<size_t>(n_blocks) * kBlockSize * slot);
  p.v.resize(p.k.size());
  for (float& x : p.k) x = nd(rng);
  for (float& x : p.v) x = nd(rng);
  p.q.resize(static_cast<size_t>(rows) * kGroup * head_dim);
  for (float& x : p.q) x = nd(rng);
  p.out.resize(p.q.size());
  p.scores.resize(static_cast<size_t>(kGroup) * ctx);
  p.table.resize(n_blocks);
  std::iota(p.table.begin(), p.table.end(), 0);
  std::shuffle(p.table.begin(), p.table.end(), rng);
  AttnTask& t = p.task;
  t.q = p.q.data();
  t.out = p.out.data();
  t.n_q = kGroup;
  t.n_rows = rows;
  t.q_stride = static_cast<int64_t>(kGroup) * head_dim;
  t.out_stride = t.q_stride;
  t.head_dim = head_dim;
  t.n_ctx = ctx - rows + 1;
  t.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  t.k = p.k.data();
  t.v = p.v.data();
  t.block_table = p.table.data();
  t.block_size = kBlockSize;
  t.slot_elems = slot;
  t.head_offset = head_dim;  // KV head 1 of 3
  if (kv_type != KvType::F32) {  // every row converted, the pools then read in place
    const size_t rb = kv_row_bytes(kv_type, head_dim);
    const size_t n_rows = p.k.size() / static_cast<size_t>(head_dim);
    p.k_typed.resize(n_rows * rb);
    p.v_typed.resize(n_rows * rb);
    for (size_t r = 0; r < n_rows; ++r) {
      kv_quantize_row(kv_type, p.k.data() + r * head_dim, head_dim, p.k_typed.data() + r * rb);
      kv_quantize_row(kv_type, p.v.data() + r * head_dim, head_dim, p.v_typed.data() + r * rb);
    }
    t.k = p.k_typed.data();
    t.v = p.v_typed.data();
    t.kv_type = kv_type;
  }
  return p;
}

void bm_attention(benchmark::State& state, Isa isa, bool flash, int32_t head_dim, int32_t ctx,
                  int32_t rows, KvType kv_type) {
  Problem p = make_problem(head_dim, ctx, rows, kv_type);
  const AttnFn fn = flash ? attention_flash_kernel(isa, head_dim) : attention_kernel(isa, head_dim);
  for (auto _ : state) {
    if (flash) {
      fn(p.task, p.scores.data());
    } else {  // the two-pass kernels take one row at a time
      AttnTask t = p.task;
      t.n_rows = 1;
      for (int32_t r = 0; r < rows; ++r) {
        t.q = p.task.q + r * t.q_stride;
        t.out = p.task.out + r * t.out_stride;
        t.n_ctx = p.task.n_ctx + r;
        fn(t, p.scores.data());
      }
    }
    benchmark::DoNotOptimize(p.out.data());
    benchmark::ClobberMemory();
  }
  double pairs = 0;
  for (int32_t r = 0; r < rows; ++r) pairs += static_cast<double>(p.task.n_ctx + r) * kGroup;
  state.counters["GFLOP/s"] =
      benchmark::Counter(4.0 * head_dim * pairs * static_cast<double>(state.iterations()) / 1e9,
                         benchmark::Counter::kIsRate);
}

// Registered at static-init time for every ISA this CPU can run.
const int kRegistered = [] {
  for (Isa isa : {Isa::Avx2, Isa::Avx512}) {
    if (!cpu_supports(isa)) continue;
    for (int32_t hd : {64, 128}) {
      for (int32_t ctx : {512, 2048, 8192}) {
        for (bool decode : {false, true}) {
          const int32_t rows = decode ? 1 : attention_flash_rows(isa, kGroup);
          for (bool flash : {false, true}) {
            const std::string name = std::string("Attention/") + isa_name(isa) + "/" +
                                     (flash ? "flash" : "two_pass") + "/hd" + std::to_string(hd) +
                                     "/ctx" + std::to_string(ctx) +
                                     (decode ? "/decode" : "/prefill_rows" + std::to_string(rows));
            benchmark::RegisterBenchmark(name.c_str(), bm_attention, isa, flash, hd, ctx, rows,
                                         KvType::F32);
          }
          // The default cache format and BF16, flash only.
          for (KvType type : {KvType::F16, KvType::BF16}) {
            const std::string name = std::string("Attention/") + isa_name(isa) + "/flash_" +
                                     kv_type_name(type) + "/hd" + std::to_string(hd) + "/ctx" +
                                     std::to_string(ctx) +
                                     (decode ? "/decode" : "/prefill_rows" + std::to_string(rows));
            benchmark::RegisterBenchmark(name.c_str(), bm_attention, isa, true, hd, ctx, rows,
                                         type);
          }
        }
      }
    }
  }
  return 0;
}();

}  // namespace
}  // namespace qilin
