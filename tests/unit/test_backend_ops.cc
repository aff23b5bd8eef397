// One table of CPU kernel cases (op x dtype x shape, each with its tolerance rule) run on every
// ISA, Scalar / Avx2 / Avx512, against the scalar reference, in the manner of llama.cpp's
// test-backend-ops: seeded random inputs, the ISA's kernel and the reference on the same bytes,
// one normalised error per case. An ISA the CPU lacks, or one that has no kernel of its own for
// a case (the dispatcher hands back the scalar code), is a GTEST_SKIP naming it, never a pass.
// The Scalar column checks the scalar reference itself against a double-precision evaluation
// of the same arithmetic (ops whose scalar path is not a kernel skip it). The per-kernel files
// (test_quants.cc, test_gemv.cc, test_gemm_*.cc, test_attention_*.cc, ...) keep the exact,
// NaN and edge-case tests; this one is the sweep that every new op, dtype or ISA joins. It is
// longer than ~600 lines because the case table and one runner per op family belong together.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <map>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/dtype.h"
#include "core/fp16.h"
#include "cpu/activation.h"
#include "cpu/attention.h"
#include "cpu/dot_mixed.h"
#include "cpu/gemm.h"
#include "cpu/gemv.h"
#include "cpu/kv_types.h"
#include "cpu/quants.h"
#include "cpu/quants_int4.h"
#include "cpu/round16.h"
#include "cpu/train_attention.h"
#include "ops/train_ops.h"

namespace qilin {
namespace {

constexpr double kU = 0x1p-24;  // f32 unit roundoff

enum class Op {
  kVecDot,         // MatmulKernels::vec_dot, one weight row x one activation row
  kActQuant,       // MatmulKernels::quantize_act, F32 -> the weight type's vec_dot_type
  kGemv,           // gemv_kernel: many weight rows x one activation row
  kGemm,           // gemm_kernel: many weight rows x many activation rows
  kAttn,           // attention_kernel: two-pass, one query row
  kAttnFlash,      // attention_flash_kernel: blocks of query rows
  kSwiglu,         // swiglu_kernel
  kRound16,        // round16_kernels, each of its six functions
  kDotF16F32,      // dot_f16_f32_kernel
  kDotF16F32Rows,  // dot_f16_f32_rows_kernel
  kTrainAttnFwd,   // train_attention_kernels()->forward
};

// Tolerance rules. Each compares element-wise |got - ref| <= tol * scale_i (NaN never passes),
// where scale_i is the quantity the rounding error of that element is proportional to; "x2"
// means kernel vs scalar reference (both round), "x1" the scalar reference vs double.
enum class Rule {
  // Bit-identical output: the SIMD converters emulate the reference's f32 operations and
  // rounding (roundf's halves away from zero, nearest-even f16/bf16), NaN payloads included.
  kExact,
  // Dot products. Every kernel forms exact integer (or exact 16-bit x 16-bit) products, scales
  // them once or twice in f32, and adds them in some tree. A sum's error is at most
  // depth * u * sum|terms| (first order), depth = roundings on the longest path from one term
  // to the result: quantized types add at most 2 terms per 32-element block along any lane
  // (Q4_1's minimum and QI4's zero point x Q8_1's s, NF4's hi/lo code halves) plus the scale
  // products and a lane-reduction tree, depth <= 2 n / 32 + 8; float types sum n products one
  // after another in the scalar reference, depth <= n + 8. scale_i = sum|terms|, from the
  // operands decoded in double. tol = (x1 or x2) * depth * 2^-24.
  kDotSum,
  // Softmax attention: the output is a convex combination of V rows, so its error scales with
  // cond_i = sum_p w_p |v_p[i]|. Rounding errors of random sign grow like a random walk: a score
  // is a head_dim-term dot, off by about sqrt(hd) * u * sum|q k| * scale (~5e-6 at hd 128 for
  // these N(0,1) inputs), which moves each weight by that relative amount; exp (<= 2 ulp) and the
  // <= n_ctx-term sums add less. tol = 1e-5 (x1; test_attention_flash.cc's bound vs double),
  // 2e-5 (x2). AVX512_BF16's decode kernel rounds q (the reference gets q rounded the same way)
  // and every softmax weight to bf16 (2^-8 relative, also in the normaliser): + 2^-7.
  kSoftmax,
  // SwiGLU g / (1 + e^-g) * u: exp about 2 ulp (vec_avx512.h; libm's expf under 1), then an add,
  // a divide and a multiply of 0.5 ulp each: under 4 ulp = 4 * 2^-23 of |ref| per side; tol
  // 8 * 2^-23 of |ref| + 1e-28 |u| (below -87.3 the vector exp clamps and silu(g) < 1e-34).
  kSilu,
  // Training attention forward (out and lse) against ops/train_ops.h's loops run in double:
  // 2e-5 of max(1, max|ref|), test_train_attention.cc's bound (float softmax attention over
  // <= 131 keys and head_dim <= 128: (hd + n) * u ~ 1.6e-5 even added in one direction).
  kTrainAttn,
};

struct OpCase {
  Op op;
  Rule rule;
  DType type = DType::F32;  // weight type (dot ops, activation quantize)
  KvType kv = KvType::F32;  // attention: the cache's element format
  int fn = 0;               // round16: 0 round_f16, 1 round_bf16, 2 from_f16, 3 from_bf16,
                            // 4 to_f16, 5 to_bf16
  int64_t n = 0;            // elements per row; attention: head_dim
  int64_t rows = 1;         // weight rows; training attention: sequence length
  int64_t n_tok = 1;        // gemm: activation rows
  int32_t n_q = 1;          // attention: query heads per KV head (GQA group)
  int32_t n_ctx = 0;        // attention: context of the first query row
  int32_t n_rows = 1;       // attention: consecutive query rows (flash)
  int32_t n_kv = 2;         // attention: KV heads (the task reads the last)
};

const char* op_name(Op op) {  // in Op's order
  static const char* const kNames[] = {
      "vec_dot",     "act_quant",        "gemv",          "gemm",
      "attn_2pass",  "attn_flash",       "swiglu",        "round16",
      "dot_f16_f32", "dot_f16_f32_rows", "train_attn_fwd"};
  return kNames[static_cast<int>(op)];
}

std::string lower(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

std::string case_name(const OpCase& c) {
  const char* kRound16Fns[] = {"round_f16", "round_bf16", "from_f16",
                               "from_bf16", "to_f16",     "to_bf16"};
  std::string s = op_name(c.op);
  auto add = [&](const char* key, int64_t v) { s += std::string("_") + key + std::to_string(v); };
  switch (c.op) {
    case Op::kVecDot:
    case Op::kActQuant:
    case Op::kGemv:
    case Op::kGemm:
      s += "_" + lower(dtype_name(c.type));
      add("n", c.n);
      if (c.op != Op::kVecDot && c.op != Op::kActQuant) add("rows", c.rows);
      if (c.op == Op::kGemm) add("tok", c.n_tok);
      break;
    case Op::kAttn:
    case Op::kAttnFlash:
      s += std::string("_") + kv_type_name(c.kv);
      add("hd", c.n);
      add("q", c.n_q);
      add("ctx", c.n_ctx);
      add("rows", c.n_rows);
      break;
    case Op::kRound16:
      s += std::string("_") + kRound16Fns[c.fn];
      add("n", c.n);
      break;
    case Op::kTrainAttnFwd:
      add("seq", c.rows);
      add("H", c.n_q * c.n_kv);
      add("Hkv", c.n_kv);
      add("hd", c.n);
      break;
    default:
      add("n", c.n);
      if (c.op == Op::kDotF16F32Rows) add("rows", c.rows);
  }
  return s;
}

// gtest prints a failing case's parameter with this.
void PrintTo(const OpCase& c, std::ostream* os) { *os << case_name(c); }

// ---------------------------------------------------------------------------------------------
// The table. Lengths leave tails: float rows of 1, 17, 100, 1543 elements (not multiples of 8 or
// 16), odd block counts (3, 49), NF4_DQ past one 256-block scale group; row counts off the 4-row
// gemv/gemm steps and token counts off the 3/6-token gemm tiles.

constexpr DType kWeightTypes[] = {DType::Q4_0,    DType::Q4_1,     DType::Q8_0, DType::QI4_G32,
                                  DType::QI4_G64, DType::QI4_G128, DType::NF4,  DType::NF4_DQ,
                                  DType::F16,     DType::BF16,     DType::F32};
constexpr DType kGemvTypes[] = {DType::Q4_0, DType::Q4_1, DType::Q8_0,
                                DType::F16,  DType::BF16, DType::F32};
constexpr Isa kIsas[] = {Isa::Scalar, Isa::Avx2, Isa::Avx512};

bool is_block_type(DType t) { return dtype_info(t).block_size > 1; }

// Elements of one weight block (32 for Q4/Q8 and QI4_G32, G for QI4_Gx, 64 for NF4).
int64_t block_len(DType t) { return dtype_info(t).block_size; }

std::vector<int64_t> dot_lengths(DType t) {
  if (!is_block_type(t)) return {1, 17, 100, 1543};
  const int64_t b = block_len(t);
  std::vector<int64_t> v = {b, 3 * b, 49 * b};
  if (t == DType::NF4_DQ) v.push_back(300 * b);  // two scale groups: 256 + 44 blocks
  return v;
}

// One case per line reads as a table (clang-format would break each over several).
// clang-format off
std::vector<OpCase> all_cases() {
  std::vector<OpCase> v;
  auto add = [&v](const OpCase& c) { v.push_back(c); };
  for (DType t : kWeightTypes) {
    const std::vector<int64_t> ns = dot_lengths(t);
    for (int64_t n : ns)
      add({.op = Op::kVecDot, .rule = Rule::kDotSum, .type = t, .n = n, .rows = 4});
    for (int64_t n : {ns[1], ns[2]})
      add({.op = Op::kActQuant, .rule = Rule::kExact, .type = t, .n = n});
  }
  for (DType t : kGemvTypes) {
    const std::vector<int64_t> ns = dot_lengths(t);
    add({.op = Op::kGemv, .rule = Rule::kDotSum, .type = t, .n = ns[2], .rows = 7});
    add({.op = Op::kGemv, .rule = Rule::kDotSum, .type = t, .n = ns[1], .rows = 100});
  }
  for (DType t : kWeightTypes) {
    const int64_t n = is_block_type(t) ? 3 * std::max<int64_t>(block_len(t), 64) : 100;
    for (auto [tok, rows] : {std::pair<int64_t, int64_t>{1, 67}, {3, 13}, {7, 5}, {64, 67}})
      add({.op = Op::kGemm, .rule = Rule::kDotSum, .type = t, .n = n, .rows = rows, .n_tok = tok});
  }
  // Attention: every KV type at head_dim 64 and 128 (the compiled sizes), 96 and 80 (generic
  // SIMD paths; Q8_0 needs multiples of 32) and 72 (not a multiple of 16: Avx512 dispatches to
  // the AVX2 kernel). Flash: decode shapes (<= 4 query vectors keep head_dim in the lanes) and
  // prefill blocks of rows.
  for (KvType kv : {KvType::F32, KvType::F16, KvType::BF16, KvType::Q8_0, KvType::FP8}) {
    for (int32_t hd : {64, 128, 96, 80, 72}) {
      if (kv_row_bytes(kv, hd) == 0) continue;
      if (hd == 72 && kv != KvType::F32 && kv != KvType::F16) continue;
      for (auto [q, ctx] : {std::pair<int32_t, int32_t>{1, 1}, {3, 37}, {8, 300}})
        add({.op = Op::kAttn, .rule = Rule::kSoftmax, .kv = kv, .n = hd, .n_q = q, .n_ctx = ctx});
      for (auto [q, ctx, r] : {std::tuple<int32_t, int32_t, int32_t>{1, 1, 1}, {4, 300, 1},
                               {3, 37, 7}, {8, 100, 5}})
        add({.op = Op::kAttnFlash, .rule = Rule::kSoftmax, .kv = kv, .n = hd, .n_q = q,
             .n_ctx = ctx, .n_rows = r});
    }
  }
  for (int64_t n : {1, 17, 1543}) add({.op = Op::kSwiglu, .rule = Rule::kSilu, .n = n});
  for (int fn = 0; fn < 6; ++fn)
    for (int64_t n : {7, 1543}) add({.op = Op::kRound16, .rule = Rule::kExact, .fn = fn, .n = n});
  for (int64_t n : {1, 17, 65, 1543})
    add({.op = Op::kDotF16F32, .rule = Rule::kDotSum, .type = DType::F16, .n = n});
  for (auto [n, rows] : {std::pair<int64_t, int64_t>{33, 7}, {1543, 64}, {16, 1}})
    add({.op = Op::kDotF16F32Rows, .rule = Rule::kDotSum, .type = DType::F16, .n = n,
         .rows = rows});
  // Training attention: sequence, group, Hkv, head_dim (SmolLM2's 9 heads over 3 at 64; 96 and
  // 24 are not multiples of 64 or 16, 7 not of 8 either).
  for (auto [seq, group, hkv, hd] : {std::tuple<int64_t, int32_t, int32_t, int64_t>{1, 1, 1, 64},
                                     {37, 3, 3, 64}, {70, 2, 1, 128}, {45, 1, 4, 96},
                                     {33, 3, 2, 24}, {20, 3, 1, 7}})
    add({.op = Op::kTrainAttnFwd, .rule = Rule::kTrainAttn, .n = hd, .rows = seq, .n_q = group,
         .n_kv = hkv});
  return v;
}
// clang-format on

// ---------------------------------------------------------------------------------------------
// Running one case

struct Outcome {
  std::string skip;  // non-empty: the ISA has no kernel of its own for this case
  std::string against;
  bool exact = false;
  std::vector<uint32_t> got_bits, ref_bits;  // kExact
  std::vector<double> got, ref, scale;       // otherwise: |got - ref| <= tol * scale
  double tol = 0.0;
};

Outcome skipped(std::string why) {
  Outcome o;
  o.skip = std::move(why);
  return o;
}

uint64_t seed_of(const std::string& s) {  // FNV-1a: the same inputs on every ISA and run
  uint64_t h = 1469598103934665603ull;
  for (char ch : s) h = (h ^ static_cast<unsigned char>(ch)) * 1099511628211ull;
  return h;
}

double dot_depth(DType t, int64_t n) {  // see Rule::kDotSum
  return is_block_type(t) ? 2.0 * static_cast<double>(n / kQK) + 8.0 : static_cast<double>(n) + 8.0;
}

// A weight row as the dot kernels' arithmetic sees it, in double: wq[j] is the part multiplied
// element by element with the activation, off[b] (per 32 elements) the part multiplied by the
// activation block's Q8_1 s (Q4_1: the minimum m; QI4: -d * z), else 0. NF4 codes are the
// kernels' integers kNf4Int / 2^12, as the scalar reference reads them.
void decode_weight(DType t, const uint8_t* row, int64_t n, double* wq, double* off) {
  std::fill(off, off + n / kQK, 0.0);
  switch (t) {
    case DType::Q4_1: {
      for (int64_t b = 0; b < n / kQK; ++b) {
        BlockQ4_1 blk;
        std::memcpy(&blk, row + b * sizeof blk, sizeof blk);
        const double d = fp16_to_fp32(blk.d);
        for (int j = 0; j < 16; ++j) {
          wq[b * kQK + j] = d * (blk.qs[j] & 15);
          wq[b * kQK + j + 16] = d * (blk.qs[j] >> 4);
        }
        off[b] = fp16_to_fp32(blk.m);
      }
      return;
    }
    case DType::QI4_G32:
    case DType::QI4_G64:
    case DType::QI4_G128: {
      const int g = qi4_group(t);
      const size_t bytes = dtype_info(t).block_bytes;
      for (int64_t b = 0; b < n / g; ++b) {
        const uint8_t* p = row + b * bytes;
        uint16_t d16;
        std::memcpy(&d16, p, 2);
        const double d = fp16_to_fp32(d16);
        const uint8_t z = p[2], *qs = p + 3;
        for (int j = 0; j < g / 2; ++j) {
          wq[b * g + j] = d * (qs[j] & 15);
          wq[b * g + j + g / 2] = d * (qs[j] >> 4);
        }
        for (int k = 0; k < g / kQK; ++k) off[b * (g / kQK) + k] = -d * z;
      }
      return;
    }
    case DType::NF4:
    case DType::NF4_DQ: {
      auto block = [&](int64_t b, double d, const uint8_t* qs) {
        for (int j = 0; j < kQKNf4 / 2; ++j) {
          wq[b * kQKNf4 + j] = d * kNf4Int[qs[j] & 15] / 4096.0;
          wq[b * kQKNf4 + j + kQKNf4 / 2] = d * kNf4Int[qs[j] >> 4] / 4096.0;
        }
      };
      if (t == DType::NF4_DQ) {
        for_nf4dq_blocks(row, n, [&](int64_t b, float d, const uint8_t* qs) { block(b, d, qs); });
      } else {
        for (int64_t b = 0; b < n / kQKNf4; ++b) {
          BlockNF4 blk;
          std::memcpy(&blk, row + b * sizeof blk, sizeof blk);
          block(b, blk.d, blk.qs);
        }
      }
      return;
    }
    default: {  // Q4_0, Q8_0 (d * q is exact in f32), F16, BF16, F32
      std::vector<float> f(static_cast<size_t>(n));
      dequantize_row_ref(t, row, f.data(), n);
      std::copy(f.begin(), f.end(), wq);
    }
  }
}

// An activation row in vec_dot_type: values (d * q exact in f32) and Q8_1's s per block.
void decode_act(DType at, const uint8_t* row, int64_t n, double* a, double* s) {
  std::vector<float> f(static_cast<size_t>(n));
  dequantize_row_ref(at, row, f.data(), n);
  std::copy(f.begin(), f.end(), a);
  for (int64_t b = 0; b < n / kQK; ++b) {
    s[b] = 0.0;
    if (at == DType::Q8_1) {
      BlockQ8_1 blk;
      std::memcpy(&blk, row + b * sizeof blk, sizeof blk);
      s[b] = fp16_to_fp32(blk.s);
    }
  }
}

// Weights with block-wise scales over two decades and offsets (so Q4_1's minimum and QI4's zero
// points vary), activations N(0, 1).
std::vector<float> random_weights(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> e(-1.0f, 1.0f);
  std::vector<float> w(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; i += kQK) {
    const float s = std::pow(10.0f, e(rng)), o = 0.5f * e(rng) * s;
    for (int64_t j = i; j < std::min(n, i + kQK); ++j) w[j] = nd(rng) * s + o;
  }
  return w;
}

constexpr float kSentinel = -12345.0f;  // output padding that a kernel must leave alone
constexpr size_t kJunk = 64;            // bytes of 0xff after every input row

// vec_dot, gemv and gemm: rows x n_tok outputs c[t * ldc + r], ldc = rows + 3 (the padding
// columns must keep kSentinel). Activations converted by the scalar quantize_act (the act_quant
// cases check every ISA's converter produces the same bytes).
Outcome run_matmul(const OpCase& c, Isa isa, std::mt19937& rng) {
  const MatmulKernels& ref_k = *matmul_kernels(c.type, Isa::Scalar);
  const MatmulKernels* k = matmul_kernels(c.type, isa);
  const std::string where = std::string(isa_name(isa)) + " " + dtype_name(c.type);
  GemvFn gemv = nullptr;
  GemmFn gemm = nullptr;
  if (c.op == Op::kVecDot) {
    if (k == nullptr) return skipped("no vec_dot for " + where);
    if (isa != Isa::Scalar && k->vec_dot == ref_k.vec_dot) {
      return skipped("vec_dot for " + where + " is the scalar code");
    }
  } else if (c.op == Op::kGemv) {
    gemv = gemv_kernel(c.type, isa);
    if (gemv == nullptr) return skipped("no gemv kernel for " + where + " (vec_dot per row)");
  } else {
    gemm = gemm_kernel(c.type, isa);
    if (gemm == nullptr) return skipped("no gemm kernel for " + where + " (vec_dot per pair)");
  }
  const DType at = ref_k.vec_dot_type;
  const int64_t n = c.n, rows = c.rows, n_tok = c.n_tok, nb = n / kQK, ldc = rows + 3;
  const size_t ws = row_bytes(c.type, n) + kJunk, as = row_bytes(at, n) + kJunk;
  std::vector<uint8_t> w(ws * rows, 0xff), a(as * n_tok, 0xff);
  std::vector<double> wq(n * rows), woff(nb * rows + 1), aq(n * n_tok), asum(nb * n_tok + 1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t r = 0; r < rows; ++r) {
    quantize_row_ref(c.type, random_weights(n, rng).data(), w.data() + r * ws, n);
    decode_weight(c.type, w.data() + r * ws, n, &wq[r * n], &woff[r * nb]);
  }
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t t = 0; t < n_tok; ++t) {
    for (float& v : x) v = nd(rng);
    ref_k.quantize_act(x.data(), a.data() + t * as, n);
    decode_act(at, a.data() + t * as, n, &aq[t * n], &asum[t * nb]);
  }

  std::vector<float> got(static_cast<size_t>(ldc * n_tok), kSentinel), ref(got);
  if (c.op == Op::kVecDot) {
    for (int64_t t = 0; t < n_tok; ++t)
      for (int64_t r = 0; r < rows; ++r)
        got[t * ldc + r] = k->vec_dot(n, w.data() + r * ws, a.data() + t * as);
  } else if (c.op == Op::kGemv) {
    gemv(n, w.data(), ws, rows, a.data(), got.data());
  } else {
    gemm(n, w.data(), ws, rows, a.data(), as, n_tok, got.data(), ldc);
  }
  gemm_ref(ref_k, n, w.data(), ws, rows, a.data(), as, n_tok, ref.data(), ldc);

  Outcome o;
  o.tol = (isa == Isa::Scalar ? 1.0 : 2.0) * dot_depth(c.type, n) * kU;
  o.against = isa == Isa::Scalar ? "the double-precision dot" : "scalar vec_dot per pair";
  for (int64_t t = 0; t < n_tok; ++t) {
    for (int64_t r = 0; r < ldc; ++r) {
      double exact = 0.0, mag = 0.0;
      if (r < rows) {
        for (int64_t j = 0; j < n; ++j) {
          const double p = wq[r * n + j] * aq[t * n + j];
          exact += p;
          mag += std::fabs(p);
        }
        for (int64_t b = 0; b < nb; ++b) {
          const double p = woff[r * nb + b] * asum[t * nb + b];
          exact += p;
          mag += std::fabs(p);
        }
      }
      o.got.push_back(got[t * ldc + r]);
      o.ref.push_back(r >= rows ? kSentinel : isa == Isa::Scalar ? exact : ref[t * ldc + r]);
      o.scale.push_back(r < rows ? mag : 0.0);
    }
  }
  return o;
}

void push_bytes(std::vector<uint32_t>& dst, const std::vector<uint8_t>& src) {
  dst.assign(src.begin(), src.end());
}

Outcome run_act_quant(const OpCase& c, Isa isa, std::mt19937& rng) {
  const MatmulKernels& ref_k = *matmul_kernels(c.type, Isa::Scalar);
  const MatmulKernels* k = matmul_kernels(c.type, isa);
  if (k == nullptr) return skipped(std::string("no kernels for ") + dtype_name(c.type));
  if (isa != Isa::Scalar && k->quantize_act == ref_k.quantize_act) {
    return skipped(std::string(isa_name(isa)) + "'s converter is the scalar code");
  }
  const DType at = ref_k.vec_dot_type;
  const int64_t n = c.n;
  std::vector<float> x = random_weights(n, rng);
  for (int64_t i = 0; i < n; i += 7) {  // halves: roundf's ties at a scale of exactly 1
    x[i] = static_cast<float>(static_cast<int>(rng() % 255) - 127) * 0.5f;
  }
  if (!is_block_type(at) && n >= 6) {  // plain types also carry the specials through
    x[0] = INFINITY;
    x[1] = -INFINITY;
    x[2] = NAN;
    x[3] = bits_to_f32(0x7f800001);  // signalling NaN
    x[4] = 1e-40f;                   // subnormal
    x[5] = 65520.0f;                 // rounds to f16 infinity
  }
  std::vector<uint8_t> got(row_bytes(at, n), 0xcd), ref(got.size(), 0xcd);
  k->quantize_act(x.data(), got.data(), n);
  if (isa == Isa::Scalar) {
    quantize_row_ref(at, x.data(), ref.data(), n);
  } else {
    ref_k.quantize_act(x.data(), ref.data(), n);
  }
  Outcome o;
  o.exact = true;
  o.against = isa == Isa::Scalar ? "quantize_row_ref" : "the scalar converter";
  push_bytes(o.got_bits, got);
  push_bytes(o.ref_bits, ref);
  return o;
}

// Floats over every exponent (random bit patterns: NaN payloads, infinities, subnormals) and
// the rounding edge cases of both 16-bit formats; codes over all 16-bit values.
std::vector<float> round16_floats(int64_t n, std::mt19937& rng) {
  std::vector<float> x(static_cast<size_t>(n));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t i = 0; i < n; ++i) x[i] = i % 2 ? bits_to_f32(rng()) : nd(rng) * 100.0f;
  const float edges[] = {65504.0f,
                         65520.0f,
                         1.0f + 0x1p-11f,
                         1.0f + 0x1p-8f,
                         1.0f + 3 * 0x1p-8f,
                         0x1p-25f,
                         0x1.8p-25f,
                         0x1p-130f,
                         -0.0f,
                         INFINITY,
                         NAN,
                         bits_to_f32(0x7f800001)};
  for (size_t i = 0; i < std::size(edges) && static_cast<int64_t>(i) < n; ++i) {
    x[static_cast<size_t>(n) - 1 - i] = edges[i];  // at the end: the masked tail too
  }
  return x;
}

Outcome run_round16(const OpCase& c, Isa isa, std::mt19937& rng) {
  const Round16Kernels& k = round16_kernels(isa);
  const Round16Kernels& s = round16_kernels(Isa::Scalar);
  const bool same[] = {k.round_f16 == s.round_f16, k.round_bf16 == s.round_bf16,
                       k.from_f16 == s.from_f16,   k.from_bf16 == s.from_bf16,
                       k.to_f16 == s.to_f16,       k.to_bf16 == s.to_bf16};
  if (isa != Isa::Scalar && same[c.fn]) {
    return skipped(std::string(isa_name(isa)) + "'s round16 entry is the scalar code");
  }
  const int64_t n = c.n;
  const bool bf = c.fn % 2 == 1;
  const Round16Kernels& r = s;  // the reference table (for Scalar: per element core/fp16.h)
  Outcome o;
  o.exact = true;
  o.against = isa == Isa::Scalar ? "core/fp16.h per element" : "the scalar table";
  if (c.fn < 2) {  // in place
    std::vector<float> x = round16_floats(n, rng), y = x;
    (bf ? k.round_bf16 : k.round_f16)(x.data(), n);
    if (isa == Isa::Scalar) {
      for (float& v : y) v = bf ? bf16_to_fp32(fp32_to_bf16(v)) : fp16_to_fp32(fp32_to_fp16(v));
    } else {
      (bf ? r.round_bf16 : r.round_f16)(y.data(), n);
    }
    for (int64_t i = 0; i < n; ++i) {
      o.got_bits.push_back(f32_to_bits(x[i]));
      o.ref_bits.push_back(f32_to_bits(y[i]));
    }
  } else if (c.fn < 4) {  // codes -> f32
    std::vector<uint16_t> h(static_cast<size_t>(n));
    for (auto& v : h) v = static_cast<uint16_t>(rng());
    if (n >= 3) h[0] = bf ? 0x7fc1 : 0x7e01, h[1] = bf ? 0x7f80 : 0x7c00, h[2] = 0x0001;
    std::vector<float> x(static_cast<size_t>(n)), y(x.size());
    (bf ? k.from_bf16 : k.from_f16)(h.data(), x.data(), n);
    if (isa == Isa::Scalar) {
      for (int64_t i = 0; i < n; ++i) y[i] = bf ? bf16_to_fp32(h[i]) : fp16_to_fp32(h[i]);
    } else {
      (bf ? r.from_bf16 : r.from_f16)(h.data(), y.data(), n);
    }
    for (int64_t i = 0; i < n; ++i) {
      o.got_bits.push_back(f32_to_bits(x[i]));
      o.ref_bits.push_back(f32_to_bits(y[i]));
    }
  } else {  // f32 -> codes
    const std::vector<float> x = round16_floats(n, rng);
    std::vector<uint16_t> h(static_cast<size_t>(n), 0xcdcd), g(h);
    (bf ? k.to_bf16 : k.to_f16)(x.data(), h.data(), n);
    if (isa == Isa::Scalar) {
      for (int64_t i = 0; i < n; ++i) g[i] = bf ? fp32_to_bf16(x[i]) : fp32_to_fp16(x[i]);
    } else {
      (bf ? r.to_bf16 : r.to_f16)(x.data(), g.data(), n);
    }
    o.got_bits.assign(h.begin(), h.end());
    o.ref_bits.assign(g.begin(), g.end());
  }
  return o;
}

Outcome run_swiglu(const OpCase& c, Isa isa, std::mt19937& rng) {
  const SwigluFn k = swiglu_kernel(isa);
  if (isa != Isa::Scalar && k == swiglu_ref) {
    return skipped(std::string(isa_name(isa)) +
                   " has no swiglu kernel (dispatch gives the reference)");
  }
  const int64_t n = c.n;
  std::normal_distribution<float> nd(0.0f, 4.0f);
  std::vector<float> g(static_cast<size_t>(n)), u(g.size()), out(g.size()), ref(g.size());
  for (int64_t i = 0; i < n; ++i) {
    g[i] = nd(rng);
    u[i] = nd(rng);
  }
  if (n >= 3) g[1] = -100.0f, g[2] = 100.0f;  // the exp's clamped ends
  k(g.data(), u.data(), out.data(), n);
  swiglu_ref(g.data(), u.data(), ref.data(), n);
  Outcome o;
  o.tol = 8.0 * 0x1p-23;
  o.against = isa == Isa::Scalar ? "the double formula" : "swiglu_ref";
  for (int64_t i = 0; i < n; ++i) {
    const double want = isa == Isa::Scalar ? g[i] / (1.0 + std::exp(-double(g[i]))) * u[i] : ref[i];
    o.got.push_back(out[i]);
    o.ref.push_back(want);
    o.scale.push_back(std::fabs(want) + 1e-28 * std::fabs(u[i]));
  }
  return o;
}

// F16 weight rows x an F32 activation; the reference is the plain loop in f32 (products rounded,
// summed in order), which the ISAs without a kernel would run.
Outcome run_dot_f16_f32(const OpCase& c, Isa isa, std::mt19937& rng) {
  const bool many = c.op == Op::kDotF16F32Rows;
  const DotF16F32Fn one = many ? nullptr : dot_f16_f32_kernel(isa);
  const DotF16F32RowsFn rows_fn = many ? dot_f16_f32_rows_kernel(isa) : nullptr;
  if (one == nullptr && rows_fn == nullptr) {
    return skipped(std::string("no ") + op_name(c.op) + " kernel for " + isa_name(isa));
  }
  const int64_t n = c.n, rows = c.rows, stride = n + 5;  // in halves: rows not back to back
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<uint16_t> w(static_cast<size_t>(rows * stride));
  std::vector<float> a(static_cast<size_t>(n)), y(static_cast<size_t>(rows) + 1, kSentinel);
  for (auto& v : w) v = fp32_to_fp16(nd(rng));
  for (auto& v : a) v = nd(rng);
  if (many) {
    rows_fn(n, w.data(), stride * sizeof(uint16_t), rows, a.data(), y.data());
  } else {
    for (int64_t r = 0; r < rows; ++r) y[r] = one(n, w.data() + r * stride, a.data());
  }
  Outcome o;
  o.tol = 2.0 * dot_depth(DType::F16, n) * kU;
  o.against = "the scalar f32 loop";
  for (int64_t r = 0; r <= rows; ++r) {
    float sum = 0.0f;
    double mag = 0.0;
    for (int64_t i = 0; r < rows && i < n; ++i) {
      const float p = fp16_to_fp32(w[r * stride + i]) * a[i];
      sum += p;
      mag += std::fabs(double(fp16_to_fp32(w[r * stride + i])) * a[i]);
    }
    o.got.push_back(y[r]);
    o.ref.push_back(r < rows ? sum : kSentinel);
    o.scale.push_back(mag);
  }
  return o;
}

Outcome run_attention(const OpCase& c, Isa isa, std::mt19937& rng) {
  const bool flash = c.op == Op::kAttnFlash;
  const int32_t hd = static_cast<int32_t>(c.n), n_q = c.n_q, n_ctx = c.n_ctx, n_rows = c.n_rows,
                n_kv = c.n_kv, bs = 16;
  const AttnFn ref_fn = flash ? attention_flash_ref : attention_ref;
  const AttnFn kernel = flash ? attention_flash_kernel(isa, hd) : attention_kernel(isa, hd);
  if (isa != Isa::Scalar && kernel == ref_fn) {
    return skipped(std::string(isa_name(isa)) + " has no kernel for head_dim " +
                   std::to_string(hd) + " (dispatch gives the reference)");
  }
  const bool bf16dot = flash && kernel == avx512::attention_flash_bf16dot && c.kv == KvType::BF16 &&
                       hd % 32 == 0 && n_rows * n_q <= 4;
  // Pools [n_blocks, bs, n_kv, hd] in the cache's format, a shuffled block table.
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int32_t n_pos = n_ctx + n_rows - 1, n_blocks = (n_pos + bs - 1) / bs + 3;
  const int64_t n_slots_rows = static_cast<int64_t>(n_blocks) * bs * n_kv;
  const size_t rb = kv_row_bytes(c.kv, hd);
  std::vector<uint8_t> kq(n_slots_rows * rb), vq(kq.size());
  std::vector<float> row(hd);
  for (int64_t r = 0; r < n_slots_rows; ++r) {
    for (float& x : row) x = nd(rng);
    kv_quantize_row(c.kv, row.data(), hd, kq.data() + r * rb);
    for (float& x : row) x = nd(rng);
    kv_quantize_row(c.kv, row.data(), hd, vq.data() + r * rb);
  }
  std::vector<int32_t> table(n_blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  // q and out rows wider than the group, the group at an offset (the model's [n_tok, n_head, hd]).
  const int64_t row_stride = static_cast<int64_t>(n_q + 2) * hd, q_offset = hd;
  std::vector<float> q(static_cast<size_t>(n_rows * row_stride));
  for (float& x : q) x = nd(rng);
  std::vector<float> out(q.size(), kSentinel), ref(q.size(), kSentinel), q_bf(q);
  if (bf16dot) {
    for (float& x : q_bf) x = bf16_to_fp32(fp32_to_bf16(x));
  }
  AttnTask t{.q = q.data() + q_offset,
             .out = out.data() + q_offset,
             .n_q = n_q,
             .n_rows = n_rows,
             .q_stride = row_stride,
             .out_stride = row_stride,
             .head_dim = hd,
             .n_ctx = n_ctx,
             .scale = 1.0f / std::sqrt(static_cast<float>(hd)),
             .k = kq.data(),
             .v = vq.data(),
             .kv_type = c.kv,
             .block_table = table.data(),
             .block_size = bs,
             .slot_elems = static_cast<int64_t>(n_kv) * hd,
             .head_offset = static_cast<int64_t>(n_kv - 1) * hd};  // the last KV head
  std::vector<float> scores(static_cast<size_t>(n_q) * (n_ctx + n_rows));
  kernel(t, scores.data());
  t.out = ref.data() + q_offset;
  t.q = q_bf.data() + q_offset;
  ref_fn(t, scores.data());

  Outcome o;
  o.tol = isa == Isa::Scalar ? 1e-5 : 2e-5 + (bf16dot ? 0x1p-7 : 0.0);
  o.against = isa == Isa::Scalar ? "double-precision softmax attention"
              : bf16dot          ? "the scalar reference on q rounded to bf16"
                                 : "the scalar reference";
  // Double-precision attention per query vector over the rows the cache holds, for the
  // condition scale (and, on Scalar, the reference itself).
  std::vector<double> want(q.size(), kSentinel), cond(q.size(), 0.0);
  const KvRows kv_rows(t);
  std::vector<float> kb(hd), vb(hd);
  for (int32_t r = 0; r < n_rows; ++r) {
    const int32_t len = n_ctx + r;
    for (int32_t g = 0; g < n_q; ++g) {
      const int64_t at = r * row_stride + q_offset + static_cast<int64_t>(g) * hd;
      std::vector<double> s(len);
      double mx = -1e300, sum = 0.0;
      for (int32_t p = 0; p < len; ++p) {
        kv_dequantize_row(c.kv, kv_rows.k + kv_rows.offset(p), hd, kb.data());
        double d = 0.0;
        for (int32_t i = 0; i < hd; ++i) d += double(q_bf[at + i]) * kb[i];
        s[p] = d * t.scale;
        mx = std::max(mx, s[p]);
      }
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int32_t i = 0; i < hd; ++i) want[at + i] = cond[at + i] = 0.0;
      for (int32_t p = 0; p < len; ++p) {
        kv_dequantize_row(c.kv, kv_rows.v + kv_rows.offset(p), hd, vb.data());
        for (int32_t i = 0; i < hd; ++i) {
          want[at + i] += s[p] / sum * vb[i];
          cond[at + i] += s[p] / sum * std::fabs(vb[i]);
        }
      }
    }
  }
  for (size_t i = 0; i < q.size(); ++i) {
    o.got.push_back(out[i]);
    o.ref.push_back(isa == Isa::Scalar ? want[i] : ref[i]);
    o.scale.push_back(cond[i]);
  }
  return o;
}

Outcome run_train_attention(const OpCase& c, Isa isa, std::mt19937& rng) {
  const TrainAttnKernels* k = train_attention_kernels(isa);
  if (isa != Isa::Scalar && k == nullptr) {
    return skipped(std::string("no training attention kernels for ") + isa_name(isa));
  }
  const int64_t n = c.rows;
  const int32_t hkv = c.n_kv, group = c.n_q, h = hkv * group, hd = static_cast<int32_t>(c.n);
  const int64_t nq = n * h * hd, nkv = n * hkv * hd;
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> q(nq), kk(nkv), v(nkv);
  for (float& x : q) x = 2.0f * nd(rng);  // peaked softmax rows as well as flat ones
  for (float& x : kk) x = nd(rng);
  for (float& x : v) x = nd(rng);
  const std::vector<double> qd(q.begin(), q.end()), kd(kk.begin(), kk.end()),
      vd(v.begin(), v.end());
  std::vector<double> out_r(nq), lse_r(n * h);
  attention_forward(qd.data(), kd.data(), vd.data(), n, h, hkv, hd, out_r.data(),
                           lse_r.data());
  std::vector<float> out(nq, NAN), lse(n * h, NAN);
  if (isa == Isa::Scalar) {
    attention_forward(q.data(), kk.data(), v.data(), n, h, hkv, hd, out.data(), lse.data());
  } else {
    const TrainAttnArgs a{q.data(), kk.data(), v.data(), n, h, hkv, hd};
    for (int32_t g = 0; g < hkv; ++g) {
      for (int ith = 0; ith < 3; ++ith) {  // item ranges as three threads split them
        int64_t i0, i1;
        train_attention_split(n, group, k->lanes, ith, 3, &i0, &i1);
        k->forward(a, g, i0, i1, out.data(), lse.data());
      }
    }
  }
  Outcome o;
  o.tol = 2e-5;
  o.against = "ops/train_ops.h's loops in double";
  double so = 1.0, sl = 1.0;
  for (double x : out_r) so = std::max(so, std::fabs(x));
  for (double x : lse_r) sl = std::max(sl, std::fabs(x));
  for (int64_t i = 0; i < nq; ++i) {
    o.got.push_back(out[i]);
    o.ref.push_back(out_r[i]);
    o.scale.push_back(so);
  }
  for (int64_t i = 0; i < n * h; ++i) {
    o.got.push_back(lse[i]);
    o.ref.push_back(lse_r[i]);
    o.scale.push_back(sl);
  }
  return o;
}

Outcome run_case(const OpCase& c, Isa isa) {
  std::mt19937 rng(static_cast<uint32_t>(seed_of(case_name(c))));
  switch (c.op) {
    case Op::kVecDot:
    case Op::kGemv:
    case Op::kGemm:
      return run_matmul(c, isa, rng);
    case Op::kActQuant:
      return run_act_quant(c, isa, rng);
    case Op::kAttn:
    case Op::kAttnFlash:
      return run_attention(c, isa, rng);
    case Op::kSwiglu:
      return run_swiglu(c, isa, rng);
    case Op::kRound16:
      return run_round16(c, isa, rng);
    case Op::kDotF16F32:
    case Op::kDotF16F32Rows:
      return run_dot_f16_f32(c, isa, rng);
    case Op::kTrainAttnFwd:
      return run_train_attention(c, isa, rng);
  }
  return skipped("unknown op");
}

// ---------------------------------------------------------------------------------------------
// The test: one instance per (case, ISA); a summary after the suite.

struct Tally {
  int passed = 0, failed = 0, skipped_no_isa = 0, skipped_no_kernel = 0;
  std::map<std::string, double> worst;  // op -> largest max_err / tol among passed and failed
};
Tally& tally() {
  static Tally t;
  return t;
}

class BackendOps : public testing::TestWithParam<std::tuple<OpCase, Isa>> {
 protected:
  static void TearDownTestSuite() {
    const Tally& t = tally();
    std::string worst;
    for (const auto& [op, w] : t.worst) worst += " " + op + "=" + std::to_string(w);
    std::printf(
        "[BackendOps] %d passed, %d failed, %d skipped (%d: ISA not on this CPU, %d: no kernel "
        "of its own); worst error / tolerance per op:%s\n",
        t.passed, t.failed, t.skipped_no_isa + t.skipped_no_kernel, t.skipped_no_isa,
        t.skipped_no_kernel, worst.c_str());
  }
};

TEST_P(BackendOps, MatchesScalarReference) {
  const auto& [c, isa] = GetParam();
  if (!cpu_supports(isa)) {
    ++tally().skipped_no_isa;
    GTEST_SKIP() << "this CPU lacks " << isa_name(isa);
  }
  const Outcome o = run_case(c, isa);
  if (!o.skip.empty()) {
    ++tally().skipped_no_kernel;
    GTEST_SKIP() << o.skip;
  }
  ASSERT_EQ(o.exact, c.rule == Rule::kExact) << "the runner and the table disagree on the rule";
  SCOPED_TRACE(testing::Message() << case_name(c) << " on " << isa_name(isa) << " against "
                                  << o.against);
  int bad = 0;
  if (o.exact) {
    ASSERT_EQ(o.got_bits.size(), o.ref_bits.size());
    ASSERT_FALSE(o.got_bits.empty());
    for (size_t i = 0; i < o.got_bits.size(); ++i) {
      if (o.got_bits[i] != o.ref_bits[i] && ++bad <= 3) {
        ADD_FAILURE() << "element " << i << ": got 0x" << std::hex << o.got_bits[i] << " want 0x"
                      << o.ref_bits[i];
      }
    }
  } else {
    ASSERT_EQ(o.got.size(), o.ref.size());
    ASSERT_FALSE(o.got.empty());
    double max_rel = 0.0, err2 = 0.0, ref2 = 0.0;
    for (size_t i = 0; i < o.got.size(); ++i) {
      const double e = std::fabs(o.got[i] - o.ref[i]);
      // Written so that NaN fails; scale 0 (padding) demands equality.
      const bool ok = e <= o.tol * o.scale[i];
      if (o.scale[i] > 0) {
        max_rel = std::max(max_rel, std::isnan(e) ? INFINITY : e / o.scale[i]);
        err2 += e * e;
        ref2 += o.ref[i] * o.ref[i];
      }
      if (!ok && ++bad <= 3) {
        ADD_FAILURE() << "element " << i << ": got " << o.got[i] << " want " << o.ref[i]
                      << " |err| / scale " << e / o.scale[i] << " > tol " << o.tol;
      }
    }
    const double nmse = ref2 > 0 ? err2 / ref2 : err2;
    auto& w = tally().worst[op_name(c.op)];
    w = std::max(w, max_rel / o.tol);
    if (bad > 0) {
      ADD_FAILURE() << "max |err| / scale " << max_rel << " (tol " << o.tol << "), NMSE " << nmse;
    }
  }
  if (bad > 3) ADD_FAILURE() << bad << " elements out of tolerance in all";
  ++(bad == 0 ? tally().passed : tally().failed);
}

std::string param_name(const testing::TestParamInfo<std::tuple<OpCase, Isa>>& info) {
  return case_name(std::get<0>(info.param)) + "_" + isa_name(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(BackendOps, BackendOps,
                         testing::Combine(testing::ValuesIn(all_cases()), testing::ValuesIn(kIsas)),
                         param_name);

}  // namespace
}  // namespace qilin
