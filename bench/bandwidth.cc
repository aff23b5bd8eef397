// STREAM-like main-memory bandwidth: read (sum a 1 GiB float array), copy and triad over
// 256 MiB arrays, with 1 and 2 threads (each thread a contiguous share), AVX-512 or AVX2 code
// picked at run time. The read figure is the ceiling that generation speed is compared against
// (bytes of weights read per token x tokens/s / read bandwidth).
// NOTE: arrays are written before being timed; untouched pages all map the kernel's one zero
// page, which sits in cache and would report impossible bandwidth.
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <cstdlib>

#include "cpu/dot_mixed.h"
#include "cpu/isa.h"

namespace qilin {
namespace {

constexpr size_t kReadBytes = size_t{1} << 30;   // far beyond any L3
constexpr size_t kArrayBytes = size_t{1} << 28;  // per copy/triad array: 3 x 256 MiB

// Page-aligned, written once (see the NOTE above), kept for the whole run.
float* big_array(size_t bytes, float fill) {
  float* p = static_cast<float*>(std::aligned_alloc(4096, bytes));
  const size_t count = bytes / sizeof(float);
  for (size_t i = 0; i < count; ++i) p[i] = fill + static_cast<float>(i & 1023) * 1e-3f;
  return p;
}
float* read_array() {
  static float* p = big_array(kReadBytes, 1.0f);
  return p;
}
// The same array in anonymous memory with transparent huge pages requested, the way
// `qilin --no-mmap` holds weights: the fair denominator for those generation runs.
float* read_array_huge() {
  static float* p = [] {
    void* m = mmap(nullptr, kReadBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) std::abort();
    madvise(m, kReadBytes, MADV_HUGEPAGE);
    float* f = static_cast<float*>(m);
    for (size_t i = 0; i < kReadBytes / sizeof(float); ++i) f[i] = 1.0f + (i & 1023) * 1e-3f;
    return f;
  }();
  return p;
}
struct Arrays {
  float* a;
  float* b;
  float* c;
};
Arrays copy_arrays() {
  static Arrays arr{big_array(kArrayBytes, 1.0f), big_array(kArrayBytes, 2.0f),
                    big_array(kArrayBytes, 3.0f)};
  return arr;
}

// Kernels over [0, count) floats; count is a multiple of 64 and pointers are 64-byte aligned.
// Four (AVX-512) or eight (AVX2) independent sums keep enough loads in flight that the adds'
// latency never limits the rate.
__attribute__((target("avx512f"))) float sum_avx512(const float* x, size_t count) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (size_t i = 0; i < count; i += 64) {
    s0 = _mm512_add_ps(s0, _mm512_load_ps(x + i));
    s1 = _mm512_add_ps(s1, _mm512_load_ps(x + i + 16));
    s2 = _mm512_add_ps(s2, _mm512_load_ps(x + i + 32));
    s3 = _mm512_add_ps(s3, _mm512_load_ps(x + i + 48));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

__attribute__((target("avx2"))) float sum_avx2(const float* x, size_t count) {
  __m256 s[8];
  for (__m256& v : s) v = _mm256_setzero_ps();
  for (size_t i = 0; i < count; i += 64) {
    for (int j = 0; j < 8; ++j) s[j] = _mm256_add_ps(s[j], _mm256_load_ps(x + i + 8 * j));
  }
  for (int j = 1; j < 8; ++j) s[0] = _mm256_add_ps(s[0], s[j]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, s[0]);
  float total = 0.0f;
  for (float v : lanes) total += v;
  return total;
}

__attribute__((target("avx512f"))) void copy_avx512(float* dst, const float* src, size_t count) {
  for (size_t i = 0; i < count; i += 16) _mm512_store_ps(dst + i, _mm512_load_ps(src + i));
}
__attribute__((target("avx2"))) void copy_avx2(float* dst, const float* src, size_t count) {
  for (size_t i = 0; i < count; i += 8) _mm256_store_ps(dst + i, _mm256_load_ps(src + i));
}

// a = b + s * c
__attribute__((target("avx512f"))) void triad_avx512(float* a, const float* b, const float* c,
                                                     float s, size_t count) {
  const __m512 sv = _mm512_set1_ps(s);
  for (size_t i = 0; i < count; i += 16) {
    _mm512_store_ps(a + i, _mm512_fmadd_ps(sv, _mm512_load_ps(c + i), _mm512_load_ps(b + i)));
  }
}
__attribute__((target("avx2,fma"))) void triad_avx2(float* a, const float* b, const float* c,
                                                    float s, size_t count) {
  const __m256 sv = _mm256_set1_ps(s);
  for (size_t i = 0; i < count; i += 8) {
    _mm256_store_ps(a + i, _mm256_fmadd_ps(sv, _mm256_load_ps(c + i), _mm256_load_ps(b + i)));
  }
}

// Google Benchmark's bytes_per_second prints in 2^30 units (G/s = GiB/s); "SI_bytes/s" is the
// same rate in 10^9 units (G/s = GB/s), the unit the qilin bench table's "GB/s read" uses.
void set_bytes(benchmark::State& state, size_t bytes_per_iter) {
  const int64_t total =
      static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(bytes_per_iter);
  state.SetBytesProcessed(total);
  state.counters["SI_bytes/s"] = benchmark::Counter(
      static_cast<double>(total), benchmark::Counter::kIsRate, benchmark::Counter::OneK::kIs1000);
}

// Runs body(begin, count) on n_threads contiguous shares of [0, total) floats; the calling
// thread takes the first share. Thread start-up (~tens of us) is noise beside a 1 GiB pass.
template <class Body>
void split(int n_threads, size_t total, Body body) {
  const size_t share = total / static_cast<size_t>(n_threads);  // multiples of 64 floats here
  std::vector<std::thread> others;
  for (int i = 1; i < n_threads; ++i) others.emplace_back(body, share * i, share);
  body(size_t{0}, share);
  for (std::thread& t : others) t.join();
}

void bm_read(benchmark::State& state, Isa isa, int n_threads, bool huge) {
  const float* x = huge ? read_array_huge() : read_array();
  const size_t count = kReadBytes / sizeof(float);
  std::vector<float> sums(static_cast<size_t>(n_threads));
  for (auto _ : state) {
    split(n_threads, count, [&](size_t begin, size_t n) {
      const size_t i = begin / (count / n_threads);
      sums[i] = isa == Isa::Avx512 ? sum_avx512(x + begin, n) : sum_avx2(x + begin, n);
    });
    benchmark::DoNotOptimize(sums.data());
  }
  set_bytes(state, kReadBytes);
}

// STREAM's convention: copy moves 2 x array bytes (read + write), triad 3 x.
void bm_copy(benchmark::State& state, Isa isa, int n_threads) {
  const Arrays arr = copy_arrays();
  for (auto _ : state) {
    split(n_threads, kArrayBytes / sizeof(float), [&](size_t begin, size_t n) {
      if (isa == Isa::Avx512) {
        copy_avx512(arr.a + begin, arr.b + begin, n);
      } else {
        copy_avx2(arr.a + begin, arr.b + begin, n);
      }
    });
    benchmark::ClobberMemory();
  }
  set_bytes(state, 2 * kArrayBytes);
}

void bm_triad(benchmark::State& state, Isa isa, int n_threads) {
  const Arrays arr = copy_arrays();
  for (auto _ : state) {
    split(n_threads, kArrayBytes / sizeof(float), [&](size_t begin, size_t n) {
      if (isa == Isa::Avx512) {
        triad_avx512(arr.a + begin, arr.b + begin, arr.c + begin, 3.0f, n);
      } else {
        triad_avx2(arr.a + begin, arr.b + begin, arr.c + begin, 3.0f, n);
      }
    });
    benchmark::ClobberMemory();
  }
  set_bytes(state, 3 * kArrayBytes);
}

// The F16 generation kernel's view of the same huge-page array: rows of 576 halves (the
// model's width) dotted with one f32 activation, one thread, the rows read as one sequential
// stream or as two (the array's halves, a row of each in turn), and "streams:2x" both halves
// side by side in one loop (dot_f16_f32_rows: what ops/matmul.cc runs).
void bm_f16_rows(benchmark::State& state, int streams) {
  constexpr int64_t kWidth = 576;
  const auto* w = reinterpret_cast<const uint16_t*>(read_array_huge());
  const int64_t rows = static_cast<int64_t>(kReadBytes / (kWidth * sizeof(uint16_t))) / 2 * 2;
  const std::vector<float> act(kWidth, 0.5f);
  std::vector<float> out(static_cast<size_t>(rows));
  const DotF16F32Fn dot = dot_f16_f32_kernel(cpu_best_isa());
  for (auto _ : state) {
    if (streams == 1) {
      for (int64_t r = 0; r < rows; ++r) out[r] = dot(kWidth, w + r * kWidth, act.data());
    } else if (streams == 3) {  // the two halves side by side in one loop (ops/matmul.cc)
      dot_f16_f32_rows_kernel(cpu_best_isa())(kWidth, w, kWidth * sizeof(uint16_t), rows,
                                              act.data(), out.data());
    } else {
      const int64_t h = rows / 2;
      for (int64_t r = 0; r < h; ++r) {
        out[r] = dot(kWidth, w + r * kWidth, act.data());
        out[r + h] = dot(kWidth, w + (r + h) * kWidth, act.data());
      }
    }
    benchmark::DoNotOptimize(out.data());
  }
  set_bytes(state, static_cast<size_t>(rows) * kWidth * sizeof(uint16_t));
}

int register_all() {
  if (dot_f16_f32_kernel(cpu_best_isa()) != nullptr) {
    for (int streams : {1, 2, 3}) {
      benchmark::RegisterBenchmark(
          ("Bandwidth/f16_rows/streams:" + (streams == 3 ? std::string("2x") : std::to_string(streams))).c_str(), bm_f16_rows, streams)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
  }
  for (Isa isa : {Isa::Avx2, Isa::Avx512}) {
    if (!cpu_supports(isa)) continue;
    for (int n_threads : {1, 2}) {
      const std::string tail =
          std::string("/") + isa_name(isa) + "/threads:" + std::to_string(n_threads);
      // Real time: the work runs on threads the benchmark's CPU timer does not see.
      benchmark::RegisterBenchmark(("Bandwidth/read" + tail).c_str(), bm_read, isa, n_threads,
                                   false)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(("Bandwidth/read_hugepages" + tail).c_str(), bm_read, isa,
                                   n_threads, true)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(("Bandwidth/copy" + tail).c_str(), bm_copy, isa, n_threads)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(("Bandwidth/triad" + tail).c_str(), bm_triad, isa, n_threads)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
  }
  return 0;
}

const int kRegistered = register_all();

}  // namespace
}  // namespace qilin
