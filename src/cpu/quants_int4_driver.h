// Private: the row drivers of the 4-bit dot products (quants_int4.h) written once over a kernel
// struct `K`: the NF4 and NF4-DQ block loops and the five entry points, for the scalar
// reference (quants_int4.cc) and the AVX2 / AVX-512 files, each compiled with its own flags.
// NOTE: everything here has internal linkage, so the copies never merge.
//
// K provides: Acc, zero(), nf4_block(acc, d, qs, y) -> acc (one NF4 block of 64 codes with
// scale d against Q8_0 blocks y[0], y[1]), sum(acc) -> float; kPairs (NF4 blocks two at a time
// into two accumulators, then add(a, b)); qi4<G>(n, w, a), the QI4_G<G> dot product.
#pragma once

#include <cstdint>

#include "cpu/quants.h"
#include "cpu/quants_int4.h"

namespace qilin::int4_driver {
namespace {

// The integer sums are in units of 2^-kNf4KernelShift (kNf4Int); scaled once per row.
template <class K>
float vec_dot_nf4(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const BlockNF4*>(w);
  const auto* y = static_cast<const BlockQ8_0*>(a);
  const int64_t nb = n / kQKNf4;
  typename K::Acc acc0 = K::zero();
  int64_t b = 0;
  if constexpr (K::kPairs) {
    typename K::Acc acc1 = K::zero();
    for (; b + 2 <= nb; b += 2) {  // two accumulators cover the FMA latency
      acc0 = K::nf4_block(acc0, x[b].d, x[b].qs, y + 2 * b);
      acc1 = K::nf4_block(acc1, x[b + 1].d, x[b + 1].qs, y + 2 * b + 2);
    }
    if (b < nb) acc0 = K::nf4_block(acc0, x[b].d, x[b].qs, y + 2 * b);
    return K::sum(K::add(acc0, acc1)) * (1.0f / (1 << kNf4KernelShift));
  } else {
    for (; b < nb; ++b) acc0 = K::nf4_block(acc0, x[b].d, x[b].qs, y + 2 * b);
    return K::sum(acc0) * (1.0f / (1 << kNf4KernelShift));
  }
}

template <class K>
float vec_dot_nf4dq(int64_t n, const void* w, const void* a) {
  const auto* y = static_cast<const BlockQ8_0*>(a);
  typename K::Acc acc = K::zero();
  for_nf4dq_blocks(w, n, [&](int64_t b, float d, const uint8_t* qs) {
    acc = K::nf4_block(acc, d, qs, y + 2 * b);
  });
  return K::sum(acc) * (1.0f / (1 << kNf4KernelShift));
}

}  // namespace
}  // namespace qilin::int4_driver

// The 4-bit entry points of quants_int4.h for a kernel struct K, inside its ISA's namespace.
#define QILIN_DEFINE_INT4_DOTS(K)                                        \
  float vec_dot_qi4_g32_q8_1(int64_t n, const void* w, const void* a) {  \
    return K::qi4<32>(n, w, a);                                          \
  }                                                                      \
  float vec_dot_qi4_g64_q8_1(int64_t n, const void* w, const void* a) {  \
    return K::qi4<64>(n, w, a);                                          \
  }                                                                      \
  float vec_dot_qi4_g128_q8_1(int64_t n, const void* w, const void* a) { \
    return K::qi4<128>(n, w, a);                                         \
  }                                                                      \
  float vec_dot_nf4_q8_0(int64_t n, const void* w, const void* a) {      \
    return int4_driver::vec_dot_nf4<K>(n, w, a);                         \
  }                                                                      \
  float vec_dot_nf4dq_q8_0(int64_t n, const void* w, const void* a) {    \
    return int4_driver::vec_dot_nf4dq<K>(n, w, a);                       \
  }
