#!/usr/bin/env bash
# ZeRO data-parallel fine-tuning of SmolLM2-135M (Q4_1 base kept quantized, BF16 compute, LoRA r=8
# on all seven projections) on the bracket-answer data: for each rank count and stage, tokens/s
# (global, mean of steps 2..STEPS), what rank 0 reports holding against ZeRO's formulas, the ring
# bytes each rank sent per step, and every rank's peak RSS. One process without --zero first.
# Usage: bench/zero_bench.sh [build dir] [steps]; wrap in flock on shared machines.
set -euo pipefail
BUILD=${1:-build}
STEPS=${2:-4}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
ARGS=(finetune -m "$MODEL" --base-type keep --precision bf16 --data tests/data/finetune_brackets.jsonl
      --steps "$STEPS" --grad-accum 4 --val-fraction 0 --lr 1e-3 -t 1)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

report() {  # $1: label, $2: log
  local toks mem bytes rss
  toks=$(grep -o '[0-9]* tok/s' "$2" | awk 'NR > 1 { s += $1; n++ } END { printf "%.1f", n ? s / n : 0 }')
  mem=$(grep -m1 '^rank 0/' "$2" | sed -E 's/.*params ([0-9.]+) MiB, grads ([0-9.]+) MiB, optimizer states ([0-9.]+) MiB.*\(formula ([0-9.]+) \+ ([0-9.]+) \+ ([0-9.]+) MiB\).*/\1 + \2 + \3 MiB (formula \4 + \5 + \6)/' || true)
  bytes=$(grep -m1 '^rank 0/.*ring bytes' "$2" | sed -E 's/.*ring bytes sent ([0-9]+) per step.*/\1/' || true)
  rss=$(grep -o '^maxrss [0-9]*' "$2" | awk '{ printf "%s%d", (NR > 1 ? "/" : ""), $2 / 1024 }')
  printf '| %s | %s | %s | %s | %s |\n' "$1" "$toks" "${mem:--}" "${bytes:--}" "$rss"
}

echo "| run | tokens/s | rank 0: params + grads + optimizer states | ring bytes sent per rank per step | peak RSS per rank (MB) |"
echo "| --- | ---: | --- | ---: | --- |"
/usr/bin/time -f 'maxrss %M' "$BUILD"/qilin "${ARGS[@]}" -o "$OUT/one" > "$OUT/log" 2>&1
report "1 process, no --zero" "$OUT/log"
for np in 2 4; do
  for cfg in "0" "1" "2" "2 cpu" "3" "3 cpu"; do
    set -- $cfg
    extra=(--zero "$1")
    label="$np ranks, stage $1"
    if [ $# -gt 1 ]; then extra+=(--offload-optimizer "$2"); label+=" + offload"; fi
    mpirun --oversubscribe --allow-run-as-root -np "$np" /usr/bin/time -f 'maxrss %M' \
      "$BUILD"/qilin "${ARGS[@]}" "${extra[@]}" -o "$OUT/z" > "$OUT/log" 2>&1
    report "$label" "$OUT/log"
  done
done
