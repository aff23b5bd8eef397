#!/usr/bin/env bash
# The fuzzing campaign (fuzz/, docs/reliability.md "Fuzzing"). Builds the libFuzzer targets
# (clang, ASan+UBSan, in build-fuzz) when needed, replays every target's committed seeds and
# regression inputs, then runs each target for SECONDS on its seeds merged into a work corpus
# outside git (.cache/fuzz/<target>/corpus), one target and one job at a time. Prints per
# target: executions, exec/s, coverage (cov = edges, ft = features) and crashes; exits non-zero
# on any crash, leak, timeout or out-of-memory (reproducers under .cache/fuzz/<target>/artifacts).
#   scripts/fuzz.sh SECONDS [TARGET...]          (targets: all of fuzz/*/ by default)
# Environment: QILIN_FUZZ_BUILD (build folder, default build-fuzz), QILIN_FUZZ_WORK (default
# .cache/fuzz), QILIN_FUZZ_JOBS (build parallelism, default nproc), QILIN_FUZZ_KEEP_GOING=1
# (fork mode: keep fuzzing past crashes, collecting every reproducer; still exits non-zero),
# QILIN_FUZZ_NO_BUILD=1 (run the binaries already in $QILIN_FUZZ_BUILD/fuzz as they are: a long
# campaign on a copy of them goes on while the sources change).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
if [ $# -lt 1 ] || ! [[ $1 =~ ^[0-9]+$ ]]; then
  echo "usage: scripts/fuzz.sh SECONDS [TARGET...]" >&2
  exit 2
fi
seconds=$1
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for d in fuzz/*/; do
    t=$(basename "$d")
    [ -f "fuzz/$t/$t.cc" ] && targets+=("$t")
  done
fi
build=${QILIN_FUZZ_BUILD:-build-fuzz}
work=${QILIN_FUZZ_WORK:-$here/.cache/fuzz}
jobs=${QILIN_FUZZ_JOBS:-$(nproc)}

if [ "${QILIN_FUZZ_NO_BUILD:-0}" != 1 ]; then
  if [ ! -f "$build/build.ninja" ]; then
    CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Fuzz -DQILIN_FUZZ=ON \
      -DQILIN_NCCL=OFF -DQILIN_BUILD_TESTS=OFF -DQILIN_BUILD_BENCH=OFF >/dev/null
  fi
  build_targets=()
  for t in "${targets[@]}"; do build_targets+=("fuzz_$t"); done
  cmake --build "$build" -j "$jobs" --target "${build_targets[@]}"
fi

# Every limit turns into a reported failure: 2 GB of memory (also the largest single malloc),
# 10 s for one input, leaks (LeakSanitizer), any UBSan report (built with -fno-sanitize-recover).
opts=(-rss_limit_mb=2048 -timeout=10 -print_final_stats=1)
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
failed=0
summary=()
for t in "${targets[@]}"; do
  bin="$build/fuzz/fuzz_$t"
  mkdir -p "$work/$t/corpus" "$work/$t/artifacts" "$work/$t/logs"
  # Per-target extras: a dictionary, and libFuzzer flags (e.g. -max_len) in fuzz/<t>/<t>.options.
  extra=()
  [ -f "fuzz/$t/$t.dict" ] && extra+=(-dict="fuzz/$t/$t.dict")
  [ -f "fuzz/$t/$t.options" ] && read -r -a more <"fuzz/$t/$t.options" && extra+=("${more[@]}")
  # 1. Replay: every committed seed and regression input once.
  replay=("fuzz/$t/corpus")
  [ -d "fuzz/$t/regressions" ] && replay+=("fuzz/$t/regressions")
  if ! "$bin" "${opts[@]}" -runs=0 -artifact_prefix="$work/$t/artifacts/" "${replay[@]}" \
      >"$work/$t/logs/replay.log" 2>&1; then
    echo "== $t: replay of fuzz/$t/corpus and fuzz/$t/regressions FAILED:" >&2
    grep -E "ERROR|SUMMARY|Running:|==[0-9]+==|#[0-9]+ 0x" "$work/$t/logs/replay.log" | head -40 >&2
    summary+=("$t: replay FAILED (log $work/$t/logs/replay.log)")
    failed=1
    continue
  fi
  [ "$seconds" -gt 0 ] || { summary+=("$t: replay ok"); continue; }
  # 2. Fuzz: new inputs go to the work corpus (first folder); the seeds are read, not written.
  mode=()
  [ "${QILIN_FUZZ_KEEP_GOING:-0}" = 1 ] && mode=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
  log="$work/$t/logs/fuzz-$(date +%Y%m%d-%H%M%S).log"
  before=$(find "$work/$t/artifacts" -type f | wc -l)
  rc=0
  "$bin" "${opts[@]}" "${mode[@]}" "${extra[@]}" -max_total_time="$seconds" \
    -artifact_prefix="$work/$t/artifacts/" "$work/$t/corpus" "fuzz/$t/corpus" >"$log" 2>&1 || rc=$?
  after=$(find "$work/$t/artifacts" -type f | wc -l)
  execs=$(awk '/^stat::number_of_executed_units:/ {v = $2} END {print v}' "$log")
  rate=$(awk '/^stat::average_exec_per_sec:/ {v = $2} END {print v}' "$log")
  if [ -z "$execs" ]; then  # fork mode prints no final stats: take the last status line
    execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    rate=$(( ${execs:-0} / (seconds > 0 ? seconds : 1) ))
  fi
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
  crashes=$((after - before))
  line="$t: ${execs:-?} execs, ${rate:-?} exec/s, ${cov:-cov: ? ft: ?}, crashes: $crashes, rc $rc (log $log)"
  summary+=("$line")
  echo "== $line"
  if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    failed=1
    grep -E "ERROR: |SUMMARY: |Test unit written" "$log" | head -20 >&2 || true
  fi
done
echo "== fuzz summary ($seconds s per target)"
printf '%s\n' "${summary[@]}"
exit $failed
