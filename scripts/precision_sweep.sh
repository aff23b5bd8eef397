#!/usr/bin/env bash
# How far 16-bit training's loss curve strays from FP32's, over seeds: the calibration behind
# TrainQLora.SixteenBitLossCurvesTrackFp32's tolerance. For each seed, `qilin finetune` runs the
# same short LoRA job (the tests' bracket data, SmolLM2) in FP32 and in PRECISION (bf16 or fp16), and prints
# the worst and mean per-step deviation as a fraction of that test's per-step bound
# (5% of the FP32 loss + 0.05): a ratio above 1 is a step outside the bound.
#   scripts/precision_sweep.sh QILIN_BINARY [SEEDS [PRECISION [MODEL]]]
#   (defaults: seeds 1-8, bf16, the fetched default model)
# Run it with two builds to compare trainers: the ratio spreads, not one seed, say whether a
# change moved 16-bit training.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
qilin=${1:?usage: scripts/precision_sweep.sh QILIN_BINARY [SEEDS [PRECISION [MODEL]]]}
seeds=${2:-1-8}
prec=${3:-bf16}
model=()
[ $# -ge 4 ] && model=(-m "$4")
data=$here/tests/data/finetune_brackets.jsonl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curve() {  # seed precision -> one loss per line
  "$qilin" finetune "${model[@]}" --data "$data" -o "$tmp/out" --steps 8 --warmup 2 --lr 1e-3 \
    --lora-r 8 --lora-alpha 16 --seq-len 128 --seed "$1" --precision "$2" -t 2 2>&1 |
    tr '\r' '\n' | sed -n 's/^step [0-9]*\/[0-9]*  loss \([0-9.]*\).*/\1/p' | awk '!seen[NR]++'
}
for seed in $(seq "${seeds%-*}" "${seeds#*-}"); do
  curve "$seed" fp32 >"$tmp/a"
  curve "$seed" "$prec" >"$tmp/b"
  paste "$tmp/a" "$tmp/b" | awk -v s="$seed" -v p="$prec" '
    { r = ($2 > $1 ? $2 - $1 : $1 - $2) / (0.05 * $1 + 0.05); sum += r; if (r > w) { w = r; at = NR } }
    END { if (NR == 0) { print "seed " s ": no loss lines (did finetune fail?)"; exit 1 }
          printf "seed %d  %s vs fp32 over %d steps: worst %.3f (step %d)  mean %.3f\n", s, p, NR, w, at, sum / NR }'
done
