#!/usr/bin/env bash
# Install what engram needs from Debian, only what is missing. Idempotent:
# a second run installs nothing and says so.
set -euo pipefail

PKGS=(
  build-essential pkg-config   # compiler, make, dependency probes
  libjansson-dev               # JSON (configs, tokenizer.json)
  libicu-dev                   # Unicode normalization for the projection
  libsentencepiece-dev         # SentencePiece .model files
  liblmdb-dev                  # the table store
  fio                          # the disk's own random-read rate beside the row tier's (make bench)
  zlib1g-dev libzstd-dev       # compressed corpora, block checksums
  libonig-dev                  # HF pre-tokenizer regexes
  libssl-dev                   # SHA-256 fingerprints (libcrypto)
  python3 python3-numpy        # the numpy peer in `make bench`
  bible-kjv sentencepiece      # the main job's sample corpus (public domain) and spm_train
  gnuplot-nox                  # `engram inspect --plot`
  python3-torch                # engram.torch, its tests, examples/train_lm.py
  libopenblas0-openmp          # a BLAS for torch on the OpenMP pool libengram uses (Debian's
                               # torch otherwise gets the reference BLAS, ~6x slower here)
  python3-matplotlib           # the training sweep's plot (docs/training-sweep.png)
  python3-sentencepiece        # examples/generate.py: prompts in, text out
  clang libomp-dev             # libFuzzer (make fuzz) and ThreadSanitizer with OpenMP (make tsan)
  libopenmpi-dev openmpi-bin   # engram count/prep --mpi across processes and nodes (optional:
                               # without mpicc everything else builds)
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
