// Microbenchmarks of the matmul kernels per ISA: one weight matrix times one activation vector
// (the decode-step shape of a 135M model, hidden 576 / FFN 1536), looping vec_dot over rows,
// plus the activation converters. Bytes/s counts the weight and activation bytes read.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "cpu/quants.h"

namespace qilin {
namespace {

constexpr DType kWeightTypes[] = {DType::Q4_0, DType::Q4_1, DType::Q8_0,
                                  DType::F16,  DType::BF16, DType::F32};
struct Shape {
  int64_t rows, cols;
};
constexpr Shape kShapes[] = {{1536, 576}, {576, 1536}};

std::vector<float> random_floats(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = nd(rng);
  return v;
}

void bm_matvec(benchmark::State& state, DType wt, Isa isa, Shape s) {
  const MatmulKernels* k = matmul_kernels(wt, isa);
  const size_t w_row = row_bytes(wt, s.cols);
  std::vector<uint8_t> w(w_row * s.rows);
  const std::vector<float> wf = random_floats(s.cols, 1);
  for (int64_t r = 0; r < s.rows; ++r)
    quantize_row_ref(wt, wf.data(), w.data() + r * w_row, s.cols);
  const std::vector<float> x = random_floats(s.cols, 2);
  std::vector<uint8_t> a(row_bytes(k->vec_dot_type, s.cols));
  k->quantize_act(x.data(), a.data(), s.cols);
  std::vector<float> y(static_cast<size_t>(s.rows));
  for (auto _ : state) {
    for (int64_t r = 0; r < s.rows; ++r) y[r] = k->vec_dot(s.cols, w.data() + r * w_row, a.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(w.size() + a.size()));
  state.SetItemsProcessed(state.iterations() * s.rows * s.cols);
}

void bm_quantize_act(benchmark::State& state, DType wt, Isa isa, int64_t n) {
  const MatmulKernels* k = matmul_kernels(wt, isa);
  const std::vector<float> x = random_floats(n, 3);
  std::vector<uint8_t> a(row_bytes(k->vec_dot_type, n));
  for (auto _ : state) {
    k->quantize_act(x.data(), a.data(), n);
    benchmark::DoNotOptimize(a.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * n * static_cast<int64_t>(sizeof(float)));
  state.SetItemsProcessed(state.iterations() * n);
}

// With --benchmark_repetitions=N, "_min" is the run least disturbed by other processes.
double min_of(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

int register_all() {
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (!cpu_supports(isa)) continue;
    for (DType wt : kWeightTypes) {
      for (Shape s : kShapes) {
        const std::string name = std::string("matvec/") + isa_name(isa) + "/" + dtype_name(wt) +
                                 "/" + std::to_string(s.rows) + "x" + std::to_string(s.cols);
        benchmark::RegisterBenchmark(name.c_str(), bm_matvec, wt, isa, s)
            ->ComputeStatistics("min", min_of);
      }
    }
    for (DType wt : {DType::Q4_0, DType::Q4_1, DType::F16, DType::BF16}) {
      const std::string name = std::string("quantize_act/") + isa_name(isa) + "/" +
                               dtype_name(matmul_kernels(wt, isa)->vec_dot_type) + "/1536";
      benchmark::RegisterBenchmark(name.c_str(), bm_quantize_act, wt, isa, int64_t{1536})
          ->ComputeStatistics("min", min_of);
    }
  }
  return 0;
}

const int kRegistered = register_all();

}  // namespace
}  // namespace qilin
