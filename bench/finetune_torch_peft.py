"""The fine-tune of docs/finetune.md's memory table in PyTorch + PEFT, for the ratio.

SmolLM2-135M-Instruct (from the F16 GGUF, through transformers' GGUF loader, as F32), LoRA r=8
alpha=16 on q,k,v,o,gate,up,down, AdamW lr 2e-4, 512-token packed sequences of the same text
as `qilin finetune --data ft_text.jsonl --pack --seq-len 512`, one sequence per step, on the CPU.
Run under /usr/bin/time -v for the peak RSS; prints tokens/s of the steps after the first.

usage: python bench/finetune_torch_peft.py MODEL.F16.gguf DATA.jsonl [--steps 4] [--threads 2]
       [--bf16] [--checkpoint]
"""
import argparse
import json
import os
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--bf16", action="store_true", help="autocast the compute to bfloat16")
    ap.add_argument("--checkpoint", action="store_true", help="gradient checkpointing")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    d, f = os.path.split(os.path.abspath(a.model))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    if a.checkpoint:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                     "down_proj"])
    model = get_peft_model(model, cfg)
    ids = []
    with open(a.data) as fh:
        for line in fh:
            ids += tok(json.loads(line)["text"])["input_ids"]
    seqs = [ids[i:i + a.seq_len] for i in range(0, len(ids) - a.seq_len, a.seq_len)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    model.train()
    times = []
    for step in range(a.steps):
        x = torch.tensor([seqs[step % len(seqs)]])
        t0 = time.time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.time() - t0)
        print(f"step {step + 1}/{a.steps} loss {loss.item():.4f} {x.shape[1] / times[-1]:.1f} tok/s", flush=True)
    steady = times[1:] or times
    print(f"torch {torch.__version__}: {a.seq_len * len(steady) / sum(steady):.1f} tokens/s over steps 2-{a.steps}")


if __name__ == "__main__":
    main()
