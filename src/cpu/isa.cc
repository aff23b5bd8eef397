// CPU feature detection (CPUID, XGETBV) and the QILIN_ISA override; see isa.h.
#include "cpu/isa.h"

#include <algorithm>
#include <cstdlib>
#include <string_view>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define QILIN_X86 1
#endif

namespace qilin {
namespace {

struct CpuFeatures {
  bool avx2 = false;    // AVX2 + FMA + F16C, and the OS saves YMM state
  bool avx512 = false;  // F/BW/VL/DQ + VNNI, and the OS saves ZMM and opmask state
  bool avx512_bf16 = false;  // avx512 + AVX512_BF16
};

CpuFeatures detect_cpu() {
  CpuFeatures f;
#ifdef QILIN_X86
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28),
             f16c = c & (1u << 29);
  if (!osxsave || !avx) return f;
  // XGETBV(0): which register states the OS saves on context switch. Without this check a
  // kernel that lacks AVX-512 support would corrupt ZMM registers across task switches.
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  const bool os_ymm = (xcr0_lo & 0x6) == 0x6;
  const bool os_zmm = (xcr0_lo & 0xe6) == 0xe6;  // + opmask, ZMM_Hi256, Hi16_ZMM
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5);
  const bool avx512 = (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) &&
                      (b & (1u << 31)) && (c & (1u << 11));  // F, DQ, BW, VL; ECX: VNNI
  f.avx2 = os_ymm && avx2 && fma && f16c;
  // The AVX-512 file is also compiled with -mavx2 -mfma -mf16c, so it needs all of those too.
  f.avx512 = f.avx2 && os_zmm && avx512;
  if (a >= 1) {  // leaf 7's EAX: the highest subleaf
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512_bf16 = f.avx512 && (a & (1u << 5));  // CPUID.(7,1):EAX[5]
  }
#endif
  return f;
}

Isa detect_best_isa() {
  const CpuFeatures f = detect_cpu();
  Isa best = f.avx512 ? Isa::Avx512 : f.avx2 ? Isa::Avx2 : Isa::Scalar;
  // QILIN_ISA may only lower the choice: asking for an ISA the CPU lacks must not SIGILL.
  if (const char* env = std::getenv("QILIN_ISA")) {
    const std::string_view v(env);
    Isa want = best;
    if (v == "scalar")
      want = Isa::Scalar;
    else if (v == "avx2")
      want = Isa::Avx2;
    else if (v == "avx512")
      want = Isa::Avx512;
    best = std::min(best, want);
  }
  return best;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar:
      return "scalar";
    case Isa::Avx2:
      return "avx2";
    case Isa::Avx512:
      return "avx512";
  }
  return "unknown";
}

bool cpu_supports(Isa isa) {
  static const CpuFeatures f = detect_cpu();
  switch (isa) {
    case Isa::Scalar:
      return true;
    case Isa::Avx2:
      return f.avx2;
    case Isa::Avx512:
      return f.avx512;
  }
  return false;
}

Isa cpu_best_isa() {
  static const Isa best = detect_best_isa();
  return best;
}

bool cpu_has_avx512_bf16() {
  static const bool has = cpu_best_isa() == Isa::Avx512 && detect_cpu().avx512_bf16;
  return has;
}

}  // namespace qilin
