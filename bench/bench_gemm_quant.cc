// Prompt-processing matmuls with quantized weights, per ISA: a weight matrix (the 135M model's
// 576 -> 1536 and 1536 -> 576 projections) times 512 tokens, as the tiled gemm (called in
// 64-row x 64-token pieces as src/ops/matmul.cc does, and as one call for the whole matrix)
// against vec_dot per (row, token) pair. GOP/s counts 2 * n * rows * tokens.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "cpu/gemm.h"
#include "cpu/quants.h"

namespace qilin {
namespace {

// Qilin's 4-bit types run through the same kernels (gemm_quant_impl.h, pack_int4_row).
constexpr DType kWeightTypes[] = {DType::Q4_0,    DType::Q4_1,     DType::Q8_0,
                                  DType::QI4_G32, DType::QI4_G64,  DType::QI4_G128,
                                  DType::NF4,     DType::NF4_DQ};
struct Shape {
  int64_t rows, cols;
};
constexpr Shape kShapes[] = {{1536, 576}, {576, 1536}};
constexpr int64_t kTokens = 512;

// How the matrix is handed to the kernel: in pieces of `rows` x `toks` (0 = all), or not at
// all (vec_dot per pair).
struct Calls {
  const char* name;
  bool tiled;
  int64_t rows, toks;
};
constexpr Calls kCalls[] = {
    {"vec_dot", false, 0, 0},
    {"gemm_64x64", true, 64, 64},
    {"gemm_whole", true, 0, 0},
};

std::vector<float> random_floats(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = nd(rng);
  return v;
}

void bm_gemm(benchmark::State& state, DType wt, Isa isa, Shape s, Calls calls) {
  const MatmulKernels* k = matmul_kernels(wt, isa);
  const int64_t n = s.cols;
  const size_t w_row = row_bytes(wt, n), a_row = row_bytes(k->vec_dot_type, n);
  std::vector<uint8_t> w(w_row * s.rows), a(a_row * kTokens);
  const std::vector<float> wf = random_floats(s.rows * n, 1);
  const std::vector<float> af = random_floats(kTokens * n, 2);
  for (int64_t r = 0; r < s.rows; ++r)
    quantize_row_ref(wt, wf.data() + r * n, w.data() + r * w_row, n);
  for (int64_t t = 0; t < kTokens; ++t) k->quantize_act(af.data() + t * n, a.data() + t * a_row, n);
  std::vector<float> c(static_cast<size_t>(s.rows * kTokens));
  const GemmFn gemm = gemm_kernel(wt, isa);
  const int64_t call_rows = calls.rows > 0 ? calls.rows : s.rows;
  const int64_t call_toks = calls.toks > 0 ? calls.toks : kTokens;
  for (auto _ : state) {
    if (!calls.tiled) {
      gemm_ref(*k, n, w.data(), w_row, s.rows, a.data(), a_row, kTokens, c.data(), s.rows);
    } else {
      for (int64_t r0 = 0; r0 < s.rows; r0 += call_rows) {
        for (int64_t t0 = 0; t0 < kTokens; t0 += call_toks) {
          gemm(n, w.data() + r0 * w_row, w_row, std::min(call_rows, s.rows - r0),
               a.data() + t0 * a_row, a_row, std::min(call_toks, kTokens - t0),
               c.data() + t0 * s.rows + r0, s.rows);
        }
      }
    }
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  state.counters["GOP/s"] = benchmark::Counter(
      2e-9 * static_cast<double>(n * s.rows * kTokens) * static_cast<double>(state.iterations()),
      benchmark::Counter::kIsRate);
}

// Batched decode: every projection of the 135M model (30 layers x q, k, v, o, gate, up, down:
// 106M weights, more than the caches hold) times n_tok tokens, the weights registered as a
// loaded model's are (packed once into the cache), one thread: an engine step's matmuls.
void bm_decode_batch(benchmark::State& state, DType wt, Isa isa, int64_t n_tok) {
  const MatmulKernels* k = matmul_kernels(wt, isa);
  struct Proj {
    int64_t rows, cols;
  };
  const Proj layer[] = {{576, 576}, {192, 576}, {192, 576}, {576, 576},
                        {1536, 576}, {1536, 576}, {576, 1536}};
  // One random copy of each shape, replicated: the cache packs per address, so every layer is
  // its own stream from DRAM all the same.
  std::vector<size_t> offset;
  size_t total = 0;
  for (int l = 0; l < 30; ++l) {
    for (const Proj& p : layer) {
      offset.push_back(total);
      total += (row_bytes(wt, p.cols) * p.rows + 63) / 64 * 64;
    }
  }
  std::vector<uint8_t> w(total);
  for (size_t i = 0; i < std::size(layer); ++i) {
    const Proj& p = layer[i];
    const size_t wr = row_bytes(wt, p.cols);
    const std::vector<float> wf = random_floats(p.rows * p.cols, 7 + static_cast<uint32_t>(i));
    for (int64_t r = 0; r < p.rows; ++r)
      quantize_row_ref(wt, wf.data() + r * p.cols, w.data() + offset[i] + r * wr, p.cols);
    for (int l = 1; l < 30; ++l) {
      std::copy_n(w.data() + offset[i], wr * p.rows, w.data() + offset[l * std::size(layer) + i]);
    }
  }
  gemm_register_immutable(w.data(), w.size());
  std::vector<uint8_t> a576(row_bytes(k->vec_dot_type, 576) * n_tok),
      a1536(row_bytes(k->vec_dot_type, 1536) * n_tok);
  const std::vector<float> af = random_floats(n_tok * 1536, 3);
  for (int64_t t = 0; t < n_tok; ++t) {
    k->quantize_act(af.data() + t * 576, a576.data() + t * row_bytes(k->vec_dot_type, 576), 576);
    k->quantize_act(af.data() + t * 1536, a1536.data() + t * row_bytes(k->vec_dot_type, 1536), 1536);
  }
  std::vector<float> c(static_cast<size_t>(1536 * n_tok));
  const GemmFn gemm = gemm_kernel(wt, isa);
  double ops = 0;
  for (auto _ : state) {
    for (size_t i = 0; i < offset.size(); ++i) {
      const Proj& p = layer[i % std::size(layer)];
      const std::vector<uint8_t>& a = p.cols == 576 ? a576 : a1536;
      gemm(p.cols, w.data() + offset[i], row_bytes(wt, p.cols), p.rows, a.data(),
           row_bytes(k->vec_dot_type, p.cols), n_tok, c.data(), p.rows);
      ops += 2.0 * static_cast<double>(p.rows * p.cols * n_tok);
    }
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  gemm_unregister_immutable(w.data());
  state.counters["GOP/s"] = benchmark::Counter(1e-9 * ops, benchmark::Counter::kIsRate);
}

// With --benchmark_repetitions=N, "_min" is the run least disturbed by other processes.
double min_of(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

int register_all() {
  for (Isa isa : {Isa::Avx2, Isa::Avx512}) {
    if (!cpu_supports(isa)) continue;
    for (DType wt : kWeightTypes) {
      if (gemm_kernel(wt, isa) == nullptr) continue;
      for (Shape s : kShapes) {
        if (s.cols % dtype_info(wt).block_size != 0) continue;  // QI4_G128 on 576
        for (Calls calls : kCalls) {
          const std::string name = std::string("GemmQuant/") + isa_name(isa) + "/" +
                                   dtype_name(wt) + "/" + std::to_string(s.rows) + "x" +
                                   std::to_string(s.cols) + "x" + std::to_string(kTokens) + "/" +
                                   calls.name;
          benchmark::RegisterBenchmark(name.c_str(), bm_gemm, wt, isa, s, calls)
              ->Unit(benchmark::kMillisecond)
              ->ComputeStatistics("min", min_of);
        }
      }
    }
  }
  for (Isa isa : {Isa::Avx2, Isa::Avx512}) {
    if (!cpu_supports(isa)) continue;
    for (DType wt : {DType::Q4_1, DType::Q4_0, DType::Q8_0}) {
      for (int64_t n_tok : {4, 16, 64}) {
        const std::string name = std::string("GemmQuantDecodeBatch/") + isa_name(isa) + "/" +
                                 dtype_name(wt) + "/tok" + std::to_string(n_tok);
        benchmark::RegisterBenchmark(name.c_str(), bm_decode_batch, wt, isa, n_tok)
            ->Unit(benchmark::kMillisecond)
            ->ComputeStatistics("min", min_of);
      }
    }
  }
  return 0;
}

const int kRegistered = register_all();

}  // namespace
}  // namespace qilin
