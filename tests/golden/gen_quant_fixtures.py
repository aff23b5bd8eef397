#!/usr/bin/env python3
"""Writes the golden fixtures for tests/unit/test_quants.cc under tests/golden/quants/.

Independent references: the `gguf` package's numpy quantizers (gguf.quants, tested with 0.19.0
and numpy 2.4.6) and, when llama-cpp-python is installed, ggml's own C reference functions
(quantize_row_*_ref, dequantize_row_*) called through ctypes from its libggml-base. Where both
exist they must agree bit for bit, else this script stops. gguf-py has no Q8_1 and no Q8_K, and
quantizes none of IQ4_NL and the K-quants, so those quantized rows come from ggml only.
The fixtures in git were made with gguf 0.19.0 and the ggml of llama-cpp-python 0.3.36's
vendored llama.cpp (ggml 0.25.3): ggml.c and ggml-quants.c built without FMA into a
libggml-base.so (the backend functions they name stubbed out with abort()).

Usage: python tests/golden/gen_quant_fixtures.py [--ggml-lib path/to/libggml-base.so]

Output (all little-endian):
  manifest.json        n_rows, n (elements per row), the per-type files and their sources
  input.f32            [n_rows, n] float32 rows to quantize
  <TYPE>.q             [n_rows, row_bytes] the quantized rows ("types")
  <TYPE>.deq.f32       [n_rows, n] dequantize(<TYPE>.q), where "dequant" is listed
  <TYPE>.blocks        [n_block_rows, row_bytes] pseudo-random valid blocks ("blocks": every
                       bit pattern of codes and sub-block scales, f16/f32 scales finite)
  <TYPE>.blocks.f32    [n_block_rows, n] their dequantization by gguf-py (ggml for Q8_K)
"""
import argparse
import ctypes
import glob
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

N = 256  # 8 blocks per row: small files, and every block position is exercised
N_BLOCK_ROWS = 4  # rows of random blocks per type (4 K-quant super-blocks, 32 small blocks)

# Types quantized from input.f32 by ggml's C reference (and gguf-py where it can), checked
# against Qilin's quantize_row_ref; their dequantization is checked through "blocks".
QUANTIZED_NEW = ["Q5_0", "Q5_1", "Q8_K", "IQ4_NL", "Q4_K", "Q5_K", "Q6_K"]
# name -> (block elements, block bytes, byte offsets of f16 scales, byte offsets of f32 scales)
BLOCK_TYPES = {
    "Q5_0": (32, 22, [0], []),
    "Q5_1": (32, 24, [0, 2], []),
    "IQ4_NL": (32, 18, [0], []),
    "Q2_K": (256, 84, [80, 82], []),
    "Q3_K": (256, 110, [108], []),
    "Q4_K": (256, 144, [0, 2], []),
    "Q5_K": (256, 176, [0, 2], []),
    "Q6_K": (256, 210, [208], []),
    "Q8_K": (256, 292, [], [0]),
    "IQ4_XS": (256, 136, [0], []),
}
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quants")


def make_rows() -> np.ndarray:
    rng = np.random.default_rng(20240611)
    rows = []

    def add(x):
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        assert x.size == N
        rows.append(x)

    add(rng.standard_normal(N))                        # ordinary weights
    add(rng.standard_normal(N) * 0.02)                 # typical LLM weight scale
    add(rng.standard_normal(N) * 3.0e3)                # large magnitudes (f16 scales stay finite)
    add(-np.abs(rng.standard_normal(N)) - 0.1)         # negative only
    add(np.abs(rng.standard_normal(N)) + 5.0)          # positive only, far from zero (Q4_1 min)
    add(np.zeros(N))                                   # d = 0 -> id = 0 path
    add(np.full(N, 0.37))                              # all equal: Q4_1 has d = 0, m = x
    add(np.full(N, -1.25))
    add(rng.uniform(-1.0, 1.0, N) * 1.0e-6)            # tiny: f16 subnormal scales
    x = rng.standard_normal(N)                         # one outlier per block
    x[::32] = 40.0
    x[17::32] = -40.0                                  # equal magnitude, opposite sign: first wins
    add(x)
    # Exact ties: with amax = 127 the Q8 scale is exactly 1, so x*id lands on k + 0.5 and roundf
    # (halves away from zero) differs from round-half-even; likewise Q4_0 with max = -8.
    ties = np.tile(np.array([127.0, -0.5, 0.5, 1.5, 2.5, -1.5, -2.5, 3.5, -126.5, 125.5, 0.0,
                             -127.0, 63.5, -63.5, 7.5, -7.5], dtype=np.float32), N // 16)
    add(ties)
    add(np.tile(np.array([-8.0, 0.5, -0.5, 1.5, -1.5, 6.5, -7.5, 7.0], dtype=np.float32), N // 8))
    add(np.tile(np.arange(16, dtype=np.float32) + 0.5, N // 16) - 0.5)  # Q4_1 with d = 1, m = 0
    add(rng.standard_normal(N) * np.repeat(10.0 ** rng.uniform(-3, 3, N // 32), 32))  # mixed
    add(np.round(rng.standard_normal(N) * 8) / 8)      # values on a coarse grid
    add(rng.uniform(-65504.0 / 8, 65504.0 / 8, N))     # Q4_0's d near the f16 range top
    return np.stack(rows)


def cname(name):
    """ggml's spelling of a type in function names: q5_0, iq4_nl, q4_K."""
    return name.lower().replace("_k", "_K")


def random_blocks(name, rng):
    """Random bytes (every code and sub-block scale bit pattern) with each scale field set to
    a finite value of either sign between 1e-3 and 2, rounded to its storage type."""
    qk, size, f16_at, f32_at = BLOCK_TYPES[name]
    n_blocks = N_BLOCK_ROWS * N // qk
    b = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for at, dt in [(o, np.float16) for o in f16_at] + [(o, np.float32) for o in f32_at]:
        v = rng.choice([-1.0, 1.0], n_blocks) * 10.0 ** rng.uniform(-3, 0.3, n_blocks)
        w = np.dtype(dt).itemsize
        b[:, at:at + w] = v.astype(dt).reshape(-1, 1).view(np.uint8)
    return b.reshape(N_BLOCK_ROWS, -1)


def load_ggml(path):
    if path is None:
        try:
            import llama_cpp  # noqa: F401 (only to locate the bundled libraries)
            cands = glob.glob(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
            path = cands[0] if cands else None
        except ImportError:
            path = None
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    f32p, vp, i64 = ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_int64
    for name in ["quantize_row_q4_0_ref", "quantize_row_q4_1_ref", "quantize_row_q8_0_ref",
                 "quantize_row_q8_1_ref", "ggml_fp32_to_bf16_row_ref"] + \
            [f"quantize_row_{cname(t)}_ref" for t in QUANTIZED_NEW]:
        getattr(lib, name).argtypes = [f32p, vp, i64]
    for name in ["dequantize_row_q4_0", "dequantize_row_q4_1", "dequantize_row_q8_0"] + \
            [f"dequantize_row_{cname(t)}" for t in BLOCK_TYPES]:
        getattr(lib, name).argtypes = [vp, f32p, i64]
    return lib


def ggml_quantize(lib, fn, rows, row_bytes):
    out = np.zeros((rows.shape[0], row_bytes), dtype=np.uint8)
    for i, r in enumerate(rows):
        r = np.ascontiguousarray(r, dtype=np.float32)
        getattr(lib, fn)(r.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out[i].ctypes.data, N)
    return out


def ggml_dequantize(lib, fn, q):
    out = np.zeros((q.shape[0], N), dtype=np.float32)
    for i in range(q.shape[0]):
        qi = np.ascontiguousarray(q[i])
        getattr(lib, fn)(qi.ctypes.data, out[i].ctypes.data_as(ctypes.POINTER(ctypes.c_float)), N)
    return out


def dequant_q8_1(q: np.ndarray) -> np.ndarray:
    # Block: f16 d, f16 s, 32 x int8. ggml has no to_float for Q8_1; qs * d is its meaning.
    b = q.reshape(-1, 36)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
    qs = b[:, 4:].copy().view(np.int8).astype(np.float32)
    return (qs * d).reshape(q.shape[0], N)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ggml-lib", default=None, help="libggml-base.so for the C cross-check")
    args = ap.parse_args()
    lib = load_ggml(args.ggml_lib)
    rows = make_rows()
    os.makedirs(OUT, exist_ok=True)
    rows.tofile(os.path.join(OUT, "input.f32"))
    manifest = {"n_rows": int(rows.shape[0]), "n": N, "input": "input.f32", "types": {},
                "generator": f"gguf {getattr(gguf, '__version__', '0.19.0')}, numpy {np.__version__}"
                             + (", libggml-base (llama-cpp-python)" if lib else "")}

    def emit(name, q, deq, source):
        q = np.ascontiguousarray(q).view(np.uint8).reshape(rows.shape[0], -1)
        deq = np.ascontiguousarray(deq, dtype=np.float32).reshape(rows.shape[0], N)
        q.tofile(os.path.join(OUT, f"{name}.q"))
        deq.tofile(os.path.join(OUT, f"{name}.deq.f32"))
        manifest["types"][name] = {"quant": f"{name}.q", "dequant": f"{name}.deq.f32",
                                   "row_bytes": int(q.shape[1]), "source": source}

    def same(a, b, what):
        a = np.ascontiguousarray(a).view(np.uint8)
        b = np.ascontiguousarray(b).view(np.uint8)
        if a.shape != b.shape or not np.array_equal(a, b):
            bad = np.nonzero(a.reshape(-1) != b.reshape(-1))[0]
            sys.exit(f"{what}: gguf-py and ggml disagree at {bad.size} bytes (first {bad[:8]})")

    # F16: numpy's float16 cast rounds to nearest even with subnormals, like F16C.
    f16 = rows.astype(np.float16)
    emit("F16", f16, f16.astype(np.float32), "numpy astype(float16)")

    bf16 = gguf.quants.quantize(rows, T.BF16)
    src = "gguf.quants BF16"
    if lib:
        same(bf16, ggml_quantize(lib, "ggml_fp32_to_bf16_row_ref", rows, 2 * N), "BF16")
        src += " == ggml_fp32_to_bf16_row_ref"
    emit("BF16", bf16, gguf.quants.dequantize(bf16, T.BF16), src)

    for name, qt, fn, dfn, rb in [("Q4_0", T.Q4_0, "quantize_row_q4_0_ref", "dequantize_row_q4_0", 144),
                                  ("Q4_1", T.Q4_1, "quantize_row_q4_1_ref", "dequantize_row_q4_1", 160),
                                  ("Q8_0", T.Q8_0, "quantize_row_q8_0_ref", "dequantize_row_q8_0", 272)]:
        q = gguf.quants.quantize(rows, qt)
        deq = gguf.quants.dequantize(q, qt)
        src = f"gguf.quants {name}"
        if lib:
            same(q, ggml_quantize(lib, fn, rows, rb), f"{name} quantize")
            gdeq = ggml_dequantize(lib, dfn, q)
            if np.array_equal(gdeq.view(np.uint32), deq.view(np.uint32)):
                src += f" == {fn} / {dfn}"
            else:
                # ggml's dequantize may be built with FMA contraction (x*d + m rounded once);
                # the fixture keeps the separately rounded C-source semantics of gguf-py.
                diff = np.abs(gdeq - deq).max()
                src += f" == {fn}; {dfn} differs by <= {diff:g} (FMA contraction in the build)"
        emit(name, q, deq, src)

    if lib:
        q81 = ggml_quantize(lib, "quantize_row_q8_1_ref", rows, 288)
        emit("Q8_1", q81, dequant_q8_1(q81), "ggml quantize_row_q8_1_ref (gguf-py has no Q8_1)")
    else:
        print("warning: no libggml-base; Q8_1 fixture not written", file=sys.stderr)

    # Newer formats: quantized rows (no dequant file: "blocks" checks their dequantization).
    for name in QUANTIZED_NEW:
        qk, size = BLOCK_TYPES[name][:2]
        rb = N // qk * size
        fn = f"quantize_row_{cname(name)}_ref"
        if not lib:
            print(f"warning: no libggml-base; {name} quantized rows not written", file=sys.stderr)
            continue
        q = ggml_quantize(lib, fn, rows, rb)
        src = f"ggml {fn}"
        if name == "IQ4_NL":
            # ggml leaves the codes of a block with max |x| < 1e-15 (scale 0) unwritten: stack
            # garbage. Qilin writes code 0 there; the block dequantizes to 0 either way.
            blocks = q.reshape(-1, size)
            flat = rows.reshape(-1, qk)
            blocks[np.abs(flat).max(axis=1) < 1e-15, 2:] = 0
            src += " (codes of all-zero blocks set to 0)"
        qt = getattr(T, name)
        try:
            same(q, gguf.quants.quantize(rows, qt), f"{name} quantize")
            src += f" == gguf.quants {name}"
        except NotImplementedError:
            pass
        q = np.ascontiguousarray(q).view(np.uint8).reshape(rows.shape[0], -1)
        q.tofile(os.path.join(OUT, f"{name}.q"))
        manifest["types"][name] = {"quant": f"{name}.q", "row_bytes": int(q.shape[1]),
                                   "source": src}

    # Random valid blocks of every newer format and their dequantization.
    manifest["n_block_rows"] = N_BLOCK_ROWS
    manifest["blocks"] = {}
    rng = np.random.default_rng(20261208)
    for name in BLOCK_TYPES:
        b = random_blocks(name, rng)
        qt = getattr(T, name)
        dfn = f"dequantize_row_{cname(name)}"
        if name == "Q8_K":  # gguf-py has no Q8_K
            if not lib:
                print("warning: no libggml-base; Q8_K blocks not written", file=sys.stderr)
                continue
            deq = ggml_dequantize(lib, dfn, b)
            src = f"ggml {dfn} (gguf-py has no Q8_K)"
        else:
            deq = gguf.quants.dequantize(b, qt).astype(np.float32).reshape(N_BLOCK_ROWS, N)
            src = f"gguf.quants {name}"
            if lib:
                same(deq, ggml_dequantize(lib, dfn, b), f"{name} dequantize")
                src += f" == {dfn}"
        assert np.all(np.isfinite(deq)), name
        b.tofile(os.path.join(OUT, f"{name}.blocks"))
        deq.tofile(os.path.join(OUT, f"{name}.blocks.f32"))
        manifest["blocks"][name] = {"quant": f"{name}.blocks", "dequant": f"{name}.blocks.f32",
                                    "row_bytes": int(b.shape[1]), "source": src}

    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    for k, v in list(manifest["types"].items()) + list(manifest["blocks"].items()):
        print(k, v["source"])


if __name__ == "__main__":
    main()
