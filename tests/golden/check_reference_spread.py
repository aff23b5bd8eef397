#!/usr/bin/env python3
"""How far llama.cpp's own logits move under changes that do not alter the model: F16 instead of
F32 KV cache, token-by-token instead of batched prompt, 1 thread instead of 2. Justifies the
tolerance of tests/golden/test_model_golden.cc. Run from the repo root with llama-cpp-python:

    python tests/golden/check_reference_spread.py
Measured with llama-cpp-python 0.3.36: max |delta| over the top-100 logits per prompt
  token-by-token vs batch: 0, 0, 0, 0, 0.343;  1 thread: 0 everywhere;
  F16 KV cache: 0.316, 0.382, 0.590, 0.665, 0.405 (mean |delta| 0.104, 0.121, 0.147,
  0.156, 0.093).
"""
import json, numpy as np, llama_cpp
d=json.load(open('tests/golden/model/smollm2_q4_1.json'))
def run(toks, step, threads=2, tk=0):
    llm = llama_cpp.Llama(model_path='models/SmolLM2-135M-Instruct.Q4_1.gguf', n_ctx=512, n_batch=512, n_threads=threads, type_k=tk, type_v=tk, flash_attn=False, logits_all=True, verbose=False)
    for i in range(0, len(toks), step): llm.eval(toks[i:i+step])
    return np.array(llm.scores[llm.n_tokens-1])
for c in d['cases']:
    t=c['tokens']; ids=c['top_ids']; ref=np.array(c['top_logits'])
    a=run(t,1); b=run(t,512,1); f=run(t,512,2,1)
    print(len(t), 'tok-by-tok vs batch: %.4f'%np.max(np.abs(a[ids]-ref)), '1 thread: %.4f'%np.max(np.abs(b[ids]-ref)),
          'f16 kv: max %.4f mean %.4f' % (np.max(np.abs(f[ids]-ref)), np.mean(np.abs(f[ids]-ref))))
