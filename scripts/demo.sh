#!/usr/bin/env bash
# The main job on bundled sample data: the reference demo config's table spec,
# then the hash of sample ids for both Engram layers. Needs only this repo.
set -euo pipefail
cd "$(dirname "$0")/.."
ENGRAM=${ENGRAM:-build/engram}
OUT=${OUT:-build/demo}
mkdir -p "$OUT"

echo "== engram spec: the reference demo config (DeepSeek-V3 tokenizer, V' = 98,627)"
"$ENGRAM" spec --config configs/demo.json --compressed-vocab 98627

for layer in 1 15; do
  echo
  echo "== engram hash: data/sample/demo-ids.u32, sequences of 64, layer $layer"
  "$ENGRAM" hash --config configs/demo.json --compressed-vocab 98627 \
    --ids data/sample/demo-ids.u32 --seq-len 64 --layer "$layer" \
    -o "$OUT/demo-hash-layer$layer.u32" --show 4
done
echo
echo "outputs in $OUT/ (uint32 LE, [tokens, 16] head indices per layer)"
