// Tiled kernels for Q4_0, Q4_1 and Q8_0 weights, and Qilin's 4-bit types run through them
// (pack_int4_row): picks the per-ISA gemm, and holds the ISA-free parts of the packed layout
// (group plan, tail gather offsets, the 4-bit packer; see gemm_quant_impl.h). No scalar tile:
// the caller's vec_dot-per-pair fallback is already the scalar reference.
// NOTE: shared helpers live here, compiled without ISA flags, rather than inline in the header:
// an inline function compiled into both an AVX-512 and an AVX2 file may be merged by the linker
// into the AVX-512 copy and then run on a CPU that lacks it.
#include "cpu/gemm.h"
#include "cpu/gemm_quant_impl.h"

#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "core/assert.h"
#include "core/fp16.h"
#include "cpu/quants_int4.h"

namespace qilin {

GemmFn gemm_quant_kernel(DType weight, Isa isa) {
  if (!cpu_supports(isa)) return nullptr;
  switch (isa) {
    case Isa::Avx512:
      if (weight == DType::Q4_0) return avx512::gemm_q4_0_q8_0;
      if (weight == DType::Q4_1) return avx512::gemm_q4_1_q8_1;
      if (weight == DType::Q8_0) return avx512::gemm_q8_0_q8_0;
      if (weight == DType::QI4_G32) return avx512::gemm_qi4_g32_q8_1;
      if (weight == DType::QI4_G64) return avx512::gemm_qi4_g64_q8_1;
      if (weight == DType::QI4_G128) return avx512::gemm_qi4_g128_q8_1;
      if (weight == DType::NF4) return avx512::gemm_nf4_q8_0;
      if (weight == DType::NF4_DQ) return avx512::gemm_nf4dq_q8_0;
      return nullptr;
    case Isa::Avx2:
      if (weight == DType::Q4_0) return avx2::gemm_q4_0_q8_0;
      if (weight == DType::Q4_1) return avx2::gemm_q4_1_q8_1;
      if (weight == DType::Q8_0) return avx2::gemm_q8_0_q8_0;
      if (weight == DType::QI4_G32) return avx2::gemm_qi4_g32_q8_1;
      if (weight == DType::QI4_G64) return avx2::gemm_qi4_g64_q8_1;
      if (weight == DType::QI4_G128) return avx2::gemm_qi4_g128_q8_1;
      if (weight == DType::NF4) return avx2::gemm_nf4_q8_0;
      if (weight == DType::NF4_DQ) return avx2::gemm_nf4dq_q8_0;
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

int64_t int4_kernel_len(DType type, int64_t n) { return qi4_group(type) > 0 ? n : 2 * n; }

void nf4_duplicate_act(const uint8_t* a, int64_t n, uint8_t* dst) {
  for (int64_t b = 0; b < n / kQK; ++b, a += sizeof(BlockQ8_0)) {
    std::memcpy(dst, a, sizeof(BlockQ8_0));
    std::memcpy(dst + sizeof(BlockQ8_0), a, sizeof(BlockQ8_0));
    dst += 2 * sizeof(BlockQ8_0);
  }
}

namespace {

// One 32-element block of the packed row, decoded: bytes as the microkernel reads them, d, x.
struct Block32 {
  uint8_t q[kQK];
  float d, x;
};

// Decodes a row of n elements into its packed blocks in order (out[int4_kernel_len / 32]).
void decode_int4_row(DType type, uint8_t xor_byte, const uint8_t* src, int64_t n, Block32* out) {
  if (const int g = qi4_group(type); g > 0) {
    const size_t gbytes = row_bytes(type, g);
    for (int64_t b = 0; b < n / g; ++b, src += gbytes) {
      // BlockQI4: f16 d, u8 z, qs[g / 2] (element j low nibble, j + g / 2 high nibble).
      uint16_t d16;
      std::memcpy(&d16, src, 2);
      const float d = fp16_to_fp32(d16);
      const uint8_t* qs = src + 3;
      for (int s = 0; s < g / kQK; ++s) {
        Block32& o = out[b * (g / kQK) + s];
        for (int j = 0; j < kQK; ++j) {
          const int e = s * kQK + j;
          o.q[j] = e < g / 2 ? qs[e] & 15 : qs[e - g / 2] >> 4;
        }
        o.d = d;
        o.x = -d * static_cast<float>(src[2]);
      }
    }
    return;
  }
  // 64-element block b, half h -> packed blocks 4b + 2h (hi) and 4b + 2h + 1 (lo).
  auto nf4 = [&](int64_t b, float absmax, const uint8_t* qs) {
    for (int h = 0; h < 2; ++h) {
      Block32& hi = out[4 * b + 2 * h];
      Block32& lo = out[4 * b + 2 * h + 1];
      for (int j = 0; j < kQK; ++j) {
        const int v = kNf4Int[h == 0 ? qs[j] & 15 : qs[j] >> 4];
        hi.q[j] = static_cast<uint8_t>(v >> 6) ^ xor_byte;  // floor(v / 64)
        lo.q[j] = static_cast<uint8_t>(v & 63) ^ xor_byte;
      }
      hi.d = absmax * (1.0f / 64);
      lo.d = absmax * (1.0f / 4096);
      hi.x = lo.x = 0.0f;
    }
  };
  if (type == DType::NF4) {
    const auto* x = reinterpret_cast<const BlockNF4*>(src);
    for (int64_t b = 0; b < n / kQKNf4; ++b) nf4(b, x[b].d, x[b].qs);
  } else {
    QILIN_ASSERT(type == DType::NF4_DQ);
    for_nf4dq_blocks(src, n, nf4);
  }
}

}  // namespace

void pack_int4_row(const GroupPlan& plan, DType type, uint8_t xor_byte, const uint8_t* src,
                   int64_t n, uint8_t* dst) {
  QILIN_ASSERT(n % dtype_info(type).block_size == 0);
  const int64_t nk = int4_kernel_len(type, n);
  thread_local std::vector<Block32> blocks;
  if (blocks.size() < static_cast<size_t>(nk / kQK)) blocks.resize(nk / kQK);
  decode_int4_row(type, xor_byte, src, n, blocks.data());
  const int lanes = plan.lanes;
  const size_t vec = static_cast<size_t>(lanes) * 4;
  const Block32* b = blocks.data();
  for (int64_t g = 0; g < plan.n_full; ++g, dst += plan.full_bytes, b += lanes) {
    for (int lane = 0; lane < lanes; ++lane) {
      for (int k = 0; k < 8; ++k) std::memcpy(dst + k * vec + lane * 4, b[lane].q + 4 * k, 4);
      std::memcpy(dst + 8 * vec + lane * 4, &b[lane].d, 4);
      std::memcpy(dst + 9 * vec + lane * 4, &b[lane].x, 4);
    }
  }
  if (plan.tail_steps == 0) return;
  // The tail spreads each block over lanes / tail_blocks lanes (plan_tail); padding lanes hold
  // zero data and zero scales.
  std::memset(dst, 0, static_cast<size_t>(plan.tail_steps + 2) * vec);
  const int per_block = lanes / plan.tail_blocks;
  for (int tb = 0; tb < plan.tail_real; ++tb) {
    for (int i = 0; i < per_block; ++i) {
      const int lane = tb * per_block + i;
      for (int k = 0; k < plan.tail_steps; ++k) {
        std::memcpy(dst + k * vec + lane * 4, b[tb].q + 4 * (k * per_block + i), 4);
      }
      std::memcpy(dst + plan.tail_steps * vec + lane * 4, &b[tb].d, 4);
      if (i == 0) std::memcpy(dst + (plan.tail_steps + 1) * vec + lane * 4, &b[tb].x, 4);
    }
  }
}

SlicePrefetch::SlicePrefetch(const void* begin, size_t bytes, int64_t calls)
    : p_(static_cast<const uint8_t*>(begin)), end_(p_ + bytes) {
  const size_t lines = (bytes + 63) / 64;
  per_call_ = (lines + static_cast<size_t>(calls) - 1) / static_cast<size_t>(calls) * 64;
}

void SlicePrefetch::step_slow() {
  const uint8_t* e = end_ - p_ > static_cast<ptrdiff_t>(per_call_) ? p_ + per_call_ : end_;
  for (; p_ < e; p_ += 64) __builtin_prefetch(p_, 0, 2);  // into L2 (prefetcht1)
}

}  // namespace gemm_quant

}  // namespace qilin
