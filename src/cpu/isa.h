// The CPU's instruction sets, detected once at run time: the one place that reads CPUID. Every
// per-ISA kernel table (quants, gemv, gemm, attention, activation, round16, training attention)
// is indexed by Isa and picks its entry from cpu_best_isa() unless a test names one.
#pragma once

namespace qilin {

enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2 };
const char* isa_name(Isa isa);
Isa cpu_best_isa();            // from CPUID/XGETBV at run time (QILIN_ISA env may lower it)
bool cpu_supports(Isa isa);
// AVX512_BF16 (VDPBF16PS, VCVTNE2PS2BF16) on top of cpu_supports(Avx512), and the best ISA is
// AVX-512 (QILIN_ISA lower turns it off). Kernels that use it are picked separately: the
// Avx512 tier does not require it.
bool cpu_has_avx512_bf16();

}  // namespace qilin
