// Generation matmuls per weight type and ISA: one activation row against the 135M model's
// weight shapes (1536 x 576 ffn up/gate, 576 x 1536 ffn down, 49152 x 576 output head), as one
// gemv call against the vec_dot-per-row loop it replaces. GB/s counts weight bytes read.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "cpu/gemv.h"
#include "cpu/quants.h"

namespace qilin {
namespace {

constexpr DType kWeightTypes[] = {DType::Q4_0, DType::Q4_1, DType::Q8_0,
                                  DType::F16,  DType::BF16, DType::F32};
struct Shape {
  int64_t rows, cols;
};
constexpr Shape kShapes[] = {{1536, 576}, {576, 1536}, {49152, 576}};

void bm_gemv(benchmark::State& state, DType wt, Isa isa, Shape s, bool use_gemv) {
  const MatmulKernels& k = *matmul_kernels(wt, isa);
  const GemvFn gemv = gemv_kernel(wt, isa);
  std::mt19937 rng(42);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> f(s.cols);
  const size_t stride = row_bytes(wt, s.cols);
  std::vector<uint8_t> w(stride * s.rows), a(row_bytes(k.vec_dot_type, s.cols));
  for (int64_t r = 0; r < s.rows; ++r) {
    for (auto& v : f) v = dist(rng);
    quantize_row_ref(wt, f.data(), w.data() + r * stride, s.cols);
  }
  for (auto& v : f) v = dist(rng);
  k.quantize_act(f.data(), a.data(), s.cols);
  std::vector<float> y(s.rows);
  for (auto _ : state) {
    if (use_gemv) {
      gemv(s.cols, w.data(), stride, s.rows, a.data(), y.data());
    } else {
      for (int64_t r = 0; r < s.rows; ++r) y[r] = k.vec_dot(s.cols, w.data() + r * stride, a.data());
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(w.size()) * state.iterations(),
                                              benchmark::Counter::kIsRate,
                                              benchmark::Counter::kIs1000);
}

// Registered at static-init time for every ISA this CPU can run.
const int kRegistered = [] {
  for (Isa isa : {Isa::Avx2, Isa::Avx512}) {
    if (!cpu_supports(isa)) continue;
    for (DType wt : kWeightTypes) {
      for (const Shape& s : kShapes) {
        for (bool g : {false, true}) {
          const std::string name = std::string("Gemv/") + dtype_name(wt) + "/" + isa_name(isa) +
                                   "/" + std::to_string(s.rows) + "x" + std::to_string(s.cols) +
                                   (g ? "/gemv" : "/vec_dot");
          benchmark::RegisterBenchmark(name.c_str(), bm_gemv, wt, isa, s, g);
        }
      }
    }
  }
  return 0;
}();

}  // namespace
}  // namespace qilin
