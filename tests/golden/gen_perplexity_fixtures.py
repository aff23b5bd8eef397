#!/usr/bin/env python3
"""Golden fixture for `qilin perplexity`: llama.cpp's own llama-perplexity on the same text.

Text: the Python 3.11 tutorial's introduction, reStructuredText source shipped by Debian's
python3.11-doc package (real English no one here wrote):
    /usr/share/doc/python3.11/html/_sources/tutorial/introduction.rst.txt
Windows of 128 tokens, 16 windows. Two models, both with an F32 KV cache and flash attention
off (Qilin's reference configuration):
  q4_1  the shipped SmolLM2-135M-Instruct.Q4_1.gguf;
  f32   the same weights dequantized to F32 by gguf-py (gen_model_fixtures.dequantize_to_f32),
        where no 8-bit activation rounding amplifies float differences.
Writes tests/golden/model/perplexity.json with every running estimate and the final line.

    python tests/golden/gen_perplexity_fixtures.py models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        /path/to/llama-perplexity
"""
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_model_fixtures import dequantize_to_f32  # noqa: E402

TEXT = "/usr/share/doc/python3.11/html/_sources/tutorial/introduction.rst.txt"
CTX = 128
CHUNKS = 16


def run(binary, model):
    out = subprocess.run(
        [binary, "-m", model, "-f", TEXT, "-c", str(CTX), "-b", str(CTX), "--chunks", str(CHUNKS),
         "-t", "2", "-ctk", "f32", "-ctv", "f32", "-fa", "off"],
        capture_output=True, text=True, check=True)
    text = out.stdout + out.stderr
    running = [float(v) for v in re.findall(r"\[\d+\]([0-9.]+),", text)]
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", text)
    if not m or len(running) != CHUNKS:
        sys.exit("unexpected llama-perplexity output:\n" + text[-3000:])
    ver = subprocess.run([binary, "--version"], capture_output=True, text=True)
    commit = re.search(r"commit ([0-9a-f]+)", ver.stdout + ver.stderr)
    return {"running_ppl": running, "ppl": float(m.group(1)), "ppl_stderr": float(m.group(2)),
            "llama_cpp_commit": commit.group(1) if commit else "unknown"}


def main():
    model, binary = sys.argv[1], sys.argv[2]
    fixture = {"text": TEXT, "ctx": CTX, "chunks": CHUNKS, "kv_cache": "f32", "flash_attn": False}
    fixture["q4_1"] = run(binary, model)
    with tempfile.TemporaryDirectory() as tmp:
        f32 = os.path.join(tmp, "smollm2-f32.gguf")
        dequantize_to_f32(model, f32)
        fixture["f32"] = run(binary, f32)
    with open("tests/golden/model/perplexity.json", "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    print(json.dumps({k: v["ppl"] for k, v in fixture.items() if isinstance(v, dict)}))


if __name__ == "__main__":
    main()
