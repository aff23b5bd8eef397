// Prompt-processing matmul throughput for float weights: the tiled gemm (gemm_float_kernel) vs
// the vec_dot-per-(row, token) loop it replaces, per ISA and type, on the 135M model's FFN
// shapes x 512 tokens. The gemm is also run split the way a caller splits it (row chunks x
// token tiles) to pick those sizes. FLOP/s counts 2 * rows * cols * tokens.
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

constexpr DType kTypes[] = {DType::F16, DType::BF16, DType::F32};
struct Shape {
  int64_t rows, cols;  // weight [rows, cols]: cols is the dot length n
};
constexpr Shape kShapes[] = {{1536, 576}, {576, 1536}};
constexpr int64_t kTokens = 512;

struct Problem {
  const MatmulKernels* k;
  size_t w_row, a_row;
  std::vector<uint8_t> w;  // [rows][w_row bytes]
  std::vector<uint8_t> a;  // [kTokens][a_row bytes], already in vec_dot_type
  std::vector<float> c;    // [kTokens][rows]
};

Problem make_problem(DType wt, Isa isa, Shape s) {
  Problem p;
  p.k = matmul_kernels(wt, isa);
  p.w_row = row_bytes(wt, s.cols);
  p.a_row = row_bytes(p.k->vec_dot_type, s.cols);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(s.cols));
  p.w.resize(p.w_row * s.rows);
  for (int64_t r = 0; r < s.rows; ++r) {
    for (float& v : x) v = nd(rng);
    quantize_row_ref(wt, x.data(), p.w.data() + r * p.w_row, s.cols);
  }
  p.a.resize(p.a_row * kTokens);
  for (int64_t t = 0; t < kTokens; ++t) {
    for (float& v : x) v = nd(rng);
    p.k->quantize_act(x.data(), p.a.data() + t * p.a_row, s.cols);
  }
  p.c.assign(static_cast<size_t>(kTokens * s.rows), 0.0f);
  return p;
}

void set_counters(benchmark::State& state, Shape s) {
  state.counters["FLOP/s"] =
      benchmark::Counter(2.0 * static_cast<double>(s.rows * s.cols * kTokens) *
                             static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
}

// The gemm over the whole matrix, called per (row chunk, token tile) as a threaded caller would
// (one thread's share; row_chunk = rows is a single call per token tile).
void bm_gemm(benchmark::State& state, DType wt, Isa isa, Shape s, int64_t row_chunk,
             int64_t tok_tile) {
  Problem p = make_problem(wt, isa, s);
  const GemmFn gemm = gemm_float_kernel(wt, isa);
  for (auto _ : state) {
    for (int64_t r0 = 0; r0 < s.rows; r0 += row_chunk) {
      const int64_t nr = std::min(row_chunk, s.rows - r0);
      for (int64_t t0 = 0; t0 < kTokens; t0 += tok_tile) {
        const int64_t nt = std::min(tok_tile, kTokens - t0);
        gemm(s.cols, p.w.data() + r0 * p.w_row, p.w_row, nr, p.a.data() + t0 * p.a_row, p.a_row, nt,
             p.c.data() + t0 * s.rows + r0, s.rows);
      }
    }
    benchmark::DoNotOptimize(p.c.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, s);
}

// What matmul did before: one vec_dot per (weight row, token) pair.
void bm_vec_dot_loop(benchmark::State& state, DType wt, Isa isa, Shape s) {
  Problem p = make_problem(wt, isa, s);
  for (auto _ : state) {
    gemm_ref(*p.k, s.cols, p.w.data(), p.w_row, s.rows, p.a.data(), p.a_row, kTokens, p.c.data(),
             s.rows);
    benchmark::DoNotOptimize(p.c.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, s);
}

int register_all() {
  for (Isa isa : {Isa::Avx2, Isa::Avx512}) {
    if (!cpu_supports(isa)) continue;
    for (DType wt : kTypes) {
      for (Shape s : kShapes) {
        const std::string base = std::string(isa_name(isa)) + "/" + dtype_name(wt) + "/" +
                                 std::to_string(s.rows) + "x" + std::to_string(s.cols) + "x" +
                                 std::to_string(kTokens);
        benchmark::RegisterBenchmark(("GemmFloat/vec_dot_loop/" + base).c_str(), bm_vec_dot_loop,
                                     wt, isa, s)
            ->Unit(benchmark::kMillisecond);
        // rows/tokens per call: whole matrix; L2-sized row chunks with all tokens; small tiles.
        for (auto [rc, tt] : {std::pair<int64_t, int64_t>{s.rows, kTokens},
                              {64, kTokens},
                              {128, kTokens},
                              {256, kTokens},
                              {64, 64},
                              {128, 96}}) {
          benchmark::RegisterBenchmark(("GemmFloat/gemm/" + base + "/rows:" + std::to_string(rc) +
                                        "/toks:" + std::to_string(tt))
                                           .c_str(),
                                       bm_gemm, wt, isa, s, rc, tt)
              ->Unit(benchmark::kMillisecond);
        }
      }
    }
  }
  return 0;
}

const int kRegistered = register_all();

}  // namespace
}  // namespace qilin
