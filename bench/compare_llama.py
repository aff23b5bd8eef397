#!/usr/bin/env python3
"""Side-by-side speed of Qilin and llama.cpp on one machine, in one sitting.

Runs `qilin bench` and `llama-bench` alternately (one repetition each per round, after their
own warm-up), for every model and thread count given, and prints a markdown table of medians,
spreads (min-max) and the Qilin/llama.cpp ratio. llama.cpp is built outside this repository
(the llama-cpp-python sdist from PyPI vendors its source; see docs/benchmarks.md).

    python3 bench/compare_llama.py --qilin build/qilin --llama-bench /path/to/llama-bench \\
        --model models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 1 2 --rounds 5 \\
        --bandwidth-bench build/bench/qilin_bench --write docs/benchmarks.md

--bandwidth-bench measures the read bandwidth (the STREAM-like `Bandwidth/read_hugepages`
benchmark: the weights live in huge pages) once per round, next to the runs of each row, so the
generation rows' share of bandwidth divides by readings taken under the same conditions (on a
shared VM the reading moves by 10-20% within a sitting, more at 2 threads); the share uses the
median of the row's readings. --bandwidth gives fixed figures instead.

With --write, the table replaces the text between the markers
<!-- compare_llama:begin --> and <!-- compare_llama:end --> in that file.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out[out.index("["):] if out.lstrip().startswith("[") else out)


BYTES_PER_TOKEN = {}


def qilin_once(args, model, threads):
    j = run_json([args.qilin, "bench", "-m", model, "-p", str(args.n_prompt), "-n",
                  str(args.n_gen), "-t", str(threads), "-r", "1", "-o", "json"])
    for r in j["results"]:
        if "bytes_per_token" in r:
            BYTES_PER_TOKEN[model] = r["bytes_per_token"]
    return {r["test"]: r["t_s_median"] for r in j["results"]}


def llama_once(args, model, threads):
    j = run_json([args.llama_bench, "-m", model, "-p", str(args.n_prompt), "-n", str(args.n_gen),
                  "-t", str(threads), "-r", "1", "-o", "json"])
    res = {}
    for e in j:
        test = f"pp{e['n_prompt']}" if e["n_gen"] == 0 else f"tg{e['n_gen']}"
        res[test] = e["avg_ts"]
        res["_commit"] = e.get("build_commit", "?")
    return res


def bandwidth_once(args, threads):
    """One read-bandwidth reading in GB/s at `threads` threads (the best ISA's kernel)."""
    out = subprocess.run([args.bandwidth_bench, "--benchmark_format=json",
                          f"--benchmark_filter=^Bandwidth/read_hugepages/.*/threads:{threads}/"],
                         check=True, capture_output=True, text=True).stdout
    rates = [b["bytes_per_second"] / 1e9 for b in json.loads(out)["benchmarks"]]
    if not rates:
        sys.exit(f"{args.bandwidth_bench}: no Bandwidth/read_hugepages result at {threads} threads")
    return max(rates)  # avx2 and avx512 loads: the better one is the machine's figure


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qilin", required=True)
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--model", nargs="+", required=True)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("--write", help="markdown file whose marked section gets the table")
    ap.add_argument("--bandwidth", nargs="*", default=[],
                    help="measured read bandwidth per thread count, e.g. 1=21.5 2=34.0 (GB/s), "
                         "from build/bench/qilin_bench --benchmark_filter=Bandwidth")
    ap.add_argument("--bandwidth-bench", help="qilin_bench binary: measure bandwidth every round")
    args = ap.parse_args()
    ap_write = args.write
    bw = {int(k): float(v) for k, v in (x.split("=") for x in args.bandwidth)}
    lines = []

    def emit(line):
        print(line, flush=True)
        lines.append(line)

    emit("| model | threads | test | Qilin t/s (median, min-max) | llama.cpp t/s (median, min-max) "
         "| ratio | Qilin / llama.cpp share of read bandwidth |")
    emit("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    commit = "?"
    bw_seen = {}
    for model in args.model:
        for t in args.threads:
            q, l, bw_row = {}, {}, []
            for _ in range(args.rounds):
                if args.bandwidth_bench:
                    bw_row.append(bandwidth_once(args, t))
                for k, v in qilin_once(args, model, t).items():
                    q.setdefault(k, []).append(v)
                for k, v in llama_once(args, model, t).items():
                    if k == "_commit":
                        commit = v
                    else:
                        l.setdefault(k, []).append(v)
            if bw_row:
                bw_seen.setdefault(t, []).extend(bw_row)
            row_bw = statistics.median(bw_row) if bw_row else bw.get(t)
            for test in q:
                qm, lm = statistics.median(q[test]), statistics.median(l[test])
                frac = ""
                if test.startswith("tg") and row_bw and model in BYTES_PER_TOKEN:
                    b = BYTES_PER_TOKEN[model] / 1e9
                    frac = f"{qm * b / row_bw:.0%} / {lm * b / row_bw:.0%}"
                    if bw_row:
                        frac += f" (of {row_bw:.1f} GB/s, {min(bw_row):.1f}-{max(bw_row):.1f})"
                emit(f"| {os.path.basename(model)} | {t} | {test} | {qm:.1f} ({min(q[test]):.1f}-{max(q[test]):.1f}) "
                     f"| {lm:.1f} ({min(l[test]):.1f}-{max(l[test]):.1f}) | {qm / lm:.2f} | {frac} |")
    emit("")
    if bw_seen:
        where = ", ".join(f"{t} thread(s) {statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})"
                          for t, v in sorted(bw_seen.items()))
        bw_note = (f"the row's median read bandwidth (Bandwidth/read_hugepages, one reading per "
                   f"round; all readings: {where} GB/s)")
    else:
        bw_note = f"measured read bandwidth {bw} GB/s"
    emit(f"llama.cpp build commit: {commit}; {args.rounds} alternating rounds per row. "
         f"Bandwidth share: bytes read per generated token (weights + mean KV) x t/s / "
         f"{bw_note}.")
    if ap_write:
        begin, end = "<!-- compare_llama:begin -->", "<!-- compare_llama:end -->"
        with open(ap_write) as f:
            doc = f.read()
        if begin not in doc or end not in doc:
            sys.exit(f"{ap_write}: markers {begin} / {end} not found")
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        tmp = ap_write + ".tmp"
        with open(tmp, "w") as f:
            f.write(head + begin + "\n" + "\n".join(lines) + "\n" + end + tail)
        os.replace(tmp, ap_write)


if __name__ == "__main__":
    main()
