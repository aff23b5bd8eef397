#!/usr/bin/env python3
"""Golden fixture for `qilin quantize`: llama.cpp's own llama-quantize, and llama.cpp running
Qilin's output.

Input: the shipped SmolLM2-135M-Instruct.Q4_1.gguf dequantized to F32 by gguf-py
(gen_model_fixtures.dequantize_to_f32), the same bytes as tests/test_util.h f32_model_path().
1. llama-quantize F32 -> Q8_0, Q4_0, Q4_1: the type and a checksum of every tensor (the test
   quantizes the same input with Qilin and compares tensor by tensor: bit-exact).
2. `qilin quantize` (the binary given) F32 -> Q8_0, Q4_0, Q4_1, and llama.cpp (llama-cpp-python)
   loads and runs each output on a fixed prompt: its logits must equal those it computes on
   llama-quantize's file (recorded as max |difference|, expected 0).
Writes tests/golden/quants/quantize_llama.json.

    python tests/golden/gen_quantize_fixtures.py models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        /path/to/llama-quantize build/qilin
"""
import json
import os
import re
import subprocess
import sys
import tempfile

import gguf
import llama_cpp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_model_fixtures import dequantize_to_f32  # noqa: E402

TYPES = ["q8_0", "q4_0", "q4_1"]
PROMPT = "The Python tutorial explains lists, dictionaries and classes."


def checksum(data: bytes) -> str:
    """sum_i w_i * (2i + 1) + len mod 2^64 over little-endian u64 words (zero-padded tail);
    tests/unit/test_quant_tool.cc computes the same. Any single-word change alters it."""
    pad = (-len(data)) % 8
    w = np.frombuffer(data + b"\0" * pad, dtype="<u8")
    idx = np.arange(w.size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    with np.errstate(over="ignore"):
        h = np.uint64(len(data)) + np.sum(w * idx, dtype=np.uint64)
    return "%016x" % int(h)


def tensor_sums(path):
    r = gguf.GGUFReader(path)
    return {t.name: {"type": t.tensor_type.name, "sum": checksum(t.data.tobytes())}
            for t in r.tensors}


def logits(path, tokens):
    llm = llama_cpp.Llama(model_path=path, n_ctx=128, n_batch=128, n_threads=2, seed=0,
                          type_k=0, type_v=0, flash_attn=False, logits_all=True, verbose=False)
    llm.eval(tokens)
    out = np.array(llm.scores[:len(tokens)], dtype=np.float32)
    del llm
    return out


def main():
    model, quantize_bin, qilin_bin = sys.argv[1], sys.argv[2], sys.argv[3]
    ver = subprocess.run([quantize_bin, "--version"], capture_output=True, text=True)
    commit = re.search(r"commit ([0-9a-f]+)", ver.stdout + ver.stderr)
    fixture = {"llama_cpp_commit": commit.group(1) if commit else "unknown",
               "checksum": "sum_i u64_i * (2i+1) + bytes mod 2^64", "types": {}}
    with tempfile.TemporaryDirectory() as tmp:
        f32 = os.path.join(tmp, "f32.gguf")
        dequantize_to_f32(model, f32)
        fixture["f32_input"] = tensor_sums(f32)
        tok = llama_cpp.Llama(model_path=f32, n_ctx=64, vocab_only=True, verbose=False)
        tokens = tok.tokenize(PROMPT.encode(), add_bos=True, special=False)
        del tok
        for t in TYPES:
            ref = os.path.join(tmp, "ref-%s.gguf" % t)
            subprocess.run([quantize_bin, f32, ref, t.upper(), "2"], check=True,
                           capture_output=True)
            ours = os.path.join(tmp, "qilin-%s.gguf" % t)
            subprocess.run([qilin_bin, "quantize", f32, ours, "--type", t, "-q"], check=True,
                           capture_output=True)
            ref_sums, our_sums = tensor_sums(ref), tensor_sums(ours)
            diff = float(np.max(np.abs(logits(ref, tokens) - logits(ours, tokens))))
            fixture["types"][t] = {
                "tensors": ref_sums,
                "qilin_tensors_equal": ref_sums == our_sums,
                "llama_cpp_runs_qilin_output_max_abs_logit_diff": diff,
                "prompt_tokens": len(tokens),
            }
            print(t, "tensors equal:", ref_sums == our_sums, "max logit diff:", diff)
    with open("tests/golden/quants/quantize_llama.json", "w") as f:
        json.dump(fixture, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
