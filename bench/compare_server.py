#!/usr/bin/env python3
"""Serving throughput: `qilin serve` against llama.cpp's `llama-server`, same model, threads
and load (bench/load_gen: N clients streaming ~P-token prompts and M output tokens each, back
to back, for D seconds per point). llama-server runs in several configurations (slots, flash
attention on/off, continuous batching on); the table keeps every row and marks its best per
client count. Writes the table into docs/benchmarks.md between the compare_server markers.

    python3 bench/compare_server.py --qilin build/qilin --load-gen build/bench/load_gen \\
        --llama-server /path/to/llama-server --model models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --threads 2 --clients 1 4 16 64 --duration 20 --write docs/benchmarks.md
"""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, timeout=120):
    import urllib.request
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.5)
    sys.exit("server did not become ready")


def run_point(args, port, clients, label):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    subprocess.run([args.load_gen, "--url", f"http://127.0.0.1:{port}", "-c", str(clients),
                    "-d", str(args.duration), "-p", str(args.prompt_tokens), "-m", str(args.max_tokens),
                    "--json", out, "--label", label], check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        r = json.load(f)
    os.unlink(out)
    return r


def serve(cmd, port):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(port, proc)
    return proc


def stop(proc):
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qilin", required=True)
    ap.add_argument("--load-gen", required=True)
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--write")
    args = ap.parse_args()
    max_c = max(args.clients)
    ctx_per_slot = args.prompt_tokens + args.max_tokens + 64
    configs = [("llama-server", f"-np 16 -fa off", ["-np", "16", "-fa", "off"], 16),
               ("llama-server", f"-np 16 -fa on", ["-np", "16", "-fa", "on"], 16),
               ("llama-server", f"-np {max_c} -fa off", ["-np", str(max_c), "-fa", "off"], max_c)]
    rows = []
    port = free_port()
    q = serve([args.qilin, "serve", "-m", args.model, "-t", str(args.threads), "--port", str(port),
               "--max-running", str(max_c)], port)
    for c in args.clients:
        rows.append(("qilin", "defaults", c, run_point(args, port, c, "qilin")))
    stop(q)
    for name, label, extra, slots in configs:
        port = free_port()
        p = serve([args.llama_server, "-m", args.model, "-t", str(args.threads), "--port", str(port),
                   "-c", str(slots * ctx_per_slot), "-cb"] + extra, port)
        for c in args.clients:
            rows.append((name, label, c, run_point(args, port, c, name + " " + label)))
        stop(p)
    best = {}
    for name, label, c, r in rows:
        if name == "llama-server":
            best[c] = max(best.get(c, 0), r["output_tokens_per_s"])
    lines = ["| server | config | clients | output t/s | req/s | TTFT p50 ms | ITL p50 ms | "
             "qilin / llama-server best |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, label, c, r in rows:
        ratio = f"{r['output_tokens_per_s'] / best[c]:.2f}" if name == "qilin" else ""
        mark = " (best)" if name == "llama-server" and r["output_tokens_per_s"] == best[c] else ""
        lines.append(f"| {name} | {label}{mark} | {c} | {r['output_tokens_per_s']:.1f} | "
                     f"{r['requests_per_s']:.2f} | {r['ttft_ms']['p50']:.0f} | {r['itl_ms']['p50']:.1f} | {ratio} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        with open(args.write) as f:
            doc = f.read()
        begin, end = "<!-- compare_server:begin -->", "<!-- compare_server:end -->"
        block = f"{begin}\n{table}\n{end}"
        doc = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda m: block, doc, flags=re.S) \
            if begin in doc else doc + "\n" + block + "\n"
        with open(args.write, "w") as f:
            f.write(doc)


if __name__ == "__main__":
    main()
