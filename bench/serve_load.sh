#!/bin/bash
# One quick served measurement: starts `qilin serve` on a random loopback port, runs load_gen
# against it (~128-token prompts, 128 output tokens per request, back to back) and prints
# load_gen's table row, then stops the server. For interleaved A/B runs of two binaries:
#   bench/serve_load.sh BIN CLIENTS SECONDS [extra `qilin serve` flags, e.g. --kv-type bf16]
# MODEL (default: the shipped Q4_1 file), THREADS (2) and LOAD_GEN (build/load_gen) may be set.
set -euo pipefail
bin=$1 clients=$2 seconds=$3
shift 3
model=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
load_gen=${LOAD_GEN:-build/load_gen}
port=$((20000 + RANDOM % 20000))
log=$(mktemp)
"$bin" serve -m "$model" -t "${THREADS:-2}" --port "$port" "$@" >"$log" 2>&1 &
server=$!
trap 'kill -INT $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.3
done
"$load_gen" --url "http://127.0.0.1:$port" -c "$clients" -d "$seconds" -p 128 -m 128 2>&1 | tail -1
