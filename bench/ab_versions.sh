#!/bin/bash
# Two builds of qilin side by side in one sitting, alternating A B A B (the noisy-VM rule of
# docs/benchmarks.md): `qilin bench` pp512 and tg128 on each model given, then the 16-client
# served throughput (bench/serve_load.sh). Prints one line per run, then the medians.
#   bench/ab_versions.sh OLD_BIN NEW_BIN ROUNDS MODEL...
# THREADS (default 2), CLIENTS (16), SECONDS_EACH (20) and LOAD_GEN (build/load_gen) may be set;
# CLIENTS=0 skips the served runs.
set -euo pipefail
old=$1 new=$2 rounds=$3
shift 3
models=("$@")
threads=${THREADS:-2} clients=${CLIENTS:-16} seconds=${SECONDS_EACH:-20}
here=$(cd "$(dirname "$0")/.." && pwd)
results=$(mktemp)
trap 'rm -f "$results"' EXIT

# `qilin bench` prints a markdown table; the t/s median is column 10, the test name column 9.
bench_once() {  # side bin model
  "$2" bench -m "$3" -t "$threads" -p 512 -n 128 -r 1 2>/dev/null |
    awk -F'|' -v side="$1" -v model="$(basename "$3")" \
      '$9 ~ /pp512|tg128/ {gsub(/ /, "", $9); gsub(/ /, "", $10); print side, model, $9, $10}'
}
serve_once() {  # side bin
  local row
  row=$(MODEL=${models[0]} THREADS=$threads "$here/bench/serve_load.sh" "$2" "$clients" "$seconds")
  # load_gen's row: | clients | req/s | output tok/s | ...: the 4th field.
  echo "$1 served c$clients $(echo "$row" | awk -F'|' '{gsub(/ /, "", $4); print $4}')"
}

for r in $(seq 1 "$rounds"); do
  for side in old new; do
    bin=$old
    [ "$side" = new ] && bin=$new
    for m in "${models[@]}"; do bench_once "$side" "$bin" "$m" | tee -a "$results"; done
    if [ "$clients" -gt 0 ]; then serve_once "$side" "$bin" | tee -a "$results"; fi
  done
done

echo "== medians over $rounds rounds (t/s; spread = min..max)"
awk '{k = $2 " " $3; v[k, $1] = v[k, $1] " " $4; keys[k] = 1}
     END {for (k in keys) for (s = 0; s < 2; s++) {side = s ? "new" : "old"; print k, side, v[k, side]}}' \
  "$results" | sort | while read -r model test side vals; do
  sorted=$(tr ' ' '\n' <<<"$vals" | grep -v '^$' | sort -g)
  n=$(wc -l <<<"$sorted")
  med=$(sed -n "$(((n + 1) / 2))p" <<<"$sorted")
  echo "$model $test $side median $med spread $(head -1 <<<"$sorted")..$(tail -1 <<<"$sorted") (n=$n)"
done
