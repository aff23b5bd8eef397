// Tiled kernels for Q4_0, Q4_1 and Q8_0 weights: picks the per-ISA gemm, and holds the ISA-free
// parts of the packed layout (group plan, tail gather offsets; see gemm_quant_impl.h). No scalar
// tile: the caller's vec_dot-per-pair fallback is already the scalar reference.
// NOTE: shared helpers live here, compiled without ISA flags, rather than inline in the header:
// an inline function compiled into both an AVX-512 and an AVX2 file may be merged by the linker
// into the AVX-512 copy and then run on a CPU that lacks it.
#include "cpu/gemm.h"
#include "cpu/gemm_quant_impl.h"

#include <map>
#include <mutex>
#include <tuple>
#include <vector>

namespace qilin {

GemmFn gemm_quant_kernel(DType weight, Isa isa) {
  if (!cpu_supports(isa)) return nullptr;
  switch (isa) {
    case Isa::Avx512:
      if (weight == DType::Q4_0) return avx512::gemm_q4_0_q8_0;
      if (weight == DType::Q4_1) return avx512::gemm_q4_1_q8_1;
      if (weight == DType::Q8_0) return avx512::gemm_q8_0_q8_0;
      return nullptr;
    case Isa::Avx2:
      if (weight == DType::Q4_0) return avx2::gemm_q4_0_q8_0;
      if (weight == DType::Q4_1) return avx2::gemm_q4_1_q8_1;
      if (weight == DType::Q8_0) return avx2::gemm_q8_0_q8_0;
      return nullptr;
    case Isa::Scalar:
      return nullptr;
  }
  return nullptr;
}

namespace {

struct CacheKey {
  const void* w;
  size_t stride;
  int64_t n_rows, n;
  int kind;
  bool operator<(const CacheKey& o) const {
    return std::tie(w, stride, n_rows, n, kind) < std::tie(o.w, o.stride, o.n_rows, o.n, o.kind);
  }
};
struct Cache {
  std::mutex mu;
  std::map<const uint8_t*, size_t> ranges;  // registered [begin, begin + bytes)
  std::map<CacheKey, std::vector<uint8_t>> packed;
};
Cache& cache() {
  static Cache c;
  return c;
}

}  // namespace

void gemm_register_immutable(const void* begin, size_t bytes) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.ranges[static_cast<const uint8_t*>(begin)] = bytes;
}

void gemm_unregister_immutable(const void* begin) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = c.ranges.find(static_cast<const uint8_t*>(begin));
  if (it == c.ranges.end()) return;
  const uint8_t* lo = it->first;
  const uint8_t* hi = lo + it->second;
  for (auto p = c.packed.begin(); p != c.packed.end();) {
    const auto* w = static_cast<const uint8_t*>(p->first.w);
    p = w >= lo && w < hi ? c.packed.erase(p) : std::next(p);
  }
  c.ranges.erase(it);
}

namespace gemm_cache {

const uint8_t* get(const void* w, size_t w_stride, int64_t n_rows, int64_t n, int kind,
                   size_t row_bytes_packed, void (*pack)(const void* ctx, uint8_t* dst),
                   const void* ctx) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  if (c.ranges.empty()) return nullptr;
  const auto* p = static_cast<const uint8_t*>(w);
  auto r = c.ranges.upper_bound(p);
  if (r == c.ranges.begin()) return nullptr;
  --r;
  if (p + (n_rows - 1) * w_stride >= r->first + r->second) return nullptr;  // not inside
  std::vector<uint8_t>& buf = c.packed[CacheKey{w, w_stride, n_rows, n, kind}];
  if (buf.empty()) {
    // Packed under the lock: each thread packs its own row range once, on its first call.
    buf.resize(static_cast<size_t>(n_rows) * row_bytes_packed + 64);
    pack(ctx, buf.data());
  }
  return buf.data();
}

}  // namespace gemm_cache

namespace gemm_quant {

GroupPlan plan_groups(int64_t n, int lanes) {
  GroupPlan p;
  p.lanes = lanes;
  const int64_t nb = n / kQK;
  p.n_full = nb / lanes;
  const int rem = static_cast<int>(nb % lanes);
  if (rem > 0) {
    // The smallest power of two that holds the tail, but at least lanes / 8 blocks: a block
    // cannot spread over more than its 8 dwords.
    int g = lanes / 8;
    while (g < rem) g *= 2;
    p.tail_real = rem;
    p.tail_blocks = g;
    p.tail_steps = 8 * g / lanes;
  }
  const size_t vec = static_cast<size_t>(lanes) * 4;
  p.full_bytes = 8 * vec + 2 * vec;
  p.row_bytes = static_cast<size_t>(p.n_full) * p.full_bytes +
                (p.tail_steps > 0 ? static_cast<size_t>(p.tail_steps) * vec + 2 * vec : 0);
  return p;
}

TailLayout plan_tail(const GroupPlan& plan, DType type) {
  TailLayout t;
  const bool q4 = type == DType::Q4_0 || type == DType::Q4_1;
  const int32_t block_bytes = static_cast<int32_t>(row_bytes(type, kQK));
  const int32_t qs = type == DType::Q4_0 || type == DType::Q8_0 ? 2 : 4;
  const int per_block = plan.tail_blocks > 0 ? plan.lanes / plan.tail_blocks : 0;
  for (int lane = 0; lane < plan.lanes && per_block > 0; ++lane) {
    const int b = lane / per_block, i = lane % per_block;
    if (b >= plan.tail_real) continue;
    t.valid[lane] = true;
    t.first[lane] = i == 0;
    t.header[lane] = b * block_bytes;
    for (int k = 0; k < plan.tail_steps; ++k) {
      const int m = k * per_block + i;  // the lane's dword of the unpacked 32-byte block
      // A Q4 block's unpacked dwords m and m + 4 both come from qs dword m % 4 (low and high
      // nibbles).
      t.offset[k][lane] = b * block_bytes + qs + 4 * (q4 ? m % 4 : m);
      t.shift[k][lane] = q4 ? 4 * (m / 4) : 0;
    }
  }
  return t;
}

}  // namespace gemm_quant

}  // namespace qilin
