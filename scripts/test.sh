#!/usr/bin/env bash
# The whole test suite: installs dependencies, fetches the default model, builds Release and
# runs every test, then builds the parser tests with ASan+UBSan and runs them.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/install_deps.sh
scripts/fetch_model.sh
scripts/fetch_model.sh gemma3  # Gemma 3 270M: its SentencePiece vocabulary against llama.cpp
jobs=$(nproc)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"
# `qilin serve` end to end: the real server on a loopback port, the official openai client,
# concurrency, disconnects, bad input and a 64-client soak (~30 s).
echo "== server integration tests"
QILIN_BUILD=build "${QILIN_VENV:-$here/.cache/venv}/bin/python" -m unittest -v \
  tests/integration/test_server.py
# The model end to end on the ISA paths this CPU would not pick by itself (the kernel tests
# already cover every path one kernel at a time).
for isa in avx2 scalar; do
  echo "== model tests with QILIN_ISA=$isa"
  QILIN_ISA=$isa build/tests/qilin_tests \
    --gtest_filter='ModelGolden.LastPositionLogitsMatchLlamaCpp:ModelGolden.GreedyDecisionsMatchLlamaCppTeacherForced:LlamaBatch*'
done
# Sanitizer pass over everything that parses untrusted input (GGUF, tokenizer, templates,
# hostile model/adapter/checkpoint files, atomic writes)
# and over the SIMD kernels, whose packing and tails are where out-of-bounds reads hide.
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQILIN_SANITIZE=ON \
  -DQILIN_BUILD_BENCH=OFF >/dev/null
cmake --build build-asan -j "$jobs" --target qilin_tests qilin_cli  # QuantTool runs the CLI
ASAN_OPTIONS=detect_leaks=1 build-asan/tests/qilin_tests --gtest_filter='Gguf*:Tokenizer*:ChatTemplate*:Quant*:Gemm*:Gemv*:AttentionKernels*:AttentionFlash*:KvTypes*:ActivationKernels*:DotMixed*:ServerHttp*:Hostile*:Printable*:AtomicFile*'
# Fuzz smoke (fuzz/, docs/reliability.md "Fuzzing"): the libFuzzer targets (clang, ASan+UBSan);
# every committed seed and regression input replayed, then 15 s of fuzzing per target. Any
# crash, leak, timeout or out-of-memory fails the suite.
echo "== fuzz smoke"
QILIN_FUZZ_JOBS=$jobs scripts/fuzz.sh 15
