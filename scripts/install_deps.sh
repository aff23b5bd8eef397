#!/usr/bin/env bash
# Installs the Debian packages Qilin builds and tests with. Safe to re-run.
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config git unzip
      libcli11-dev nlohmann-json3-dev libpcre2-dev libgtest-dev libgmock-dev libbenchmark-dev
      python3.11-doc)  # python3.11-doc: English text for perplexity (tests/golden/model/perplexity.json)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install_deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
