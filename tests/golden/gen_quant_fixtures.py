#!/usr/bin/env python3
"""Writes the golden fixtures for tests/unit/test_quants.cc under tests/golden/quants/.

Independent references: the `gguf` package's numpy quantizers (gguf.quants, tested with 0.19.0)
and, when llama-cpp-python is installed, ggml's own C reference functions (quantize_row_*_ref,
dequantize_row_*) called through ctypes from its libggml-base. Where both exist they must agree
bit for bit, else this script stops. gguf-py has no Q8_1, so Q8_1 comes from ggml only.

Usage: python tests/golden/gen_quant_fixtures.py [--ggml-lib path/to/libggml-base.so]

Output (all little-endian):
  manifest.json        n_rows, n (elements per row), the per-type files and their sources
  input.f32            [n_rows, n] float32 rows to quantize
  <TYPE>.q             [n_rows, row_bytes] the quantized rows
  <TYPE>.deq.f32       [n_rows, n] dequantize(<TYPE>.q)
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
                 "quantize_row_q8_1_ref", "ggml_fp32_to_bf16_row_ref"]:
        getattr(lib, name).argtypes = [f32p, vp, i64]
    for name in ["dequantize_row_q4_0", "dequantize_row_q4_1", "dequantize_row_q8_0"]:
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

    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    for k, v in manifest["types"].items():
        print(k, v["source"])


if __name__ == "__main__":
    main()
