#!/usr/bin/env bash
# The main job on sample data the project installs itself (no ../shared):
# the King James Bible from Debian's bible-kjv (public domain), a SentencePiece
# model trained on it with Debian's spm_train, then
#   vocab -> prep -> count -> plan -> build -> inspect (with plots) -> verify -> export.
set -euo pipefail
cd "$(dirname "$0")/.."
ENGRAM=${ENGRAM:-build/engram}
OUT=${OUT:-build/sample}
mkdir -p "$OUT"
for tool in bible spm_train; do
  command -v "$tool" >/dev/null || { echo "demo: '$tool' is missing: run scripts/install-deps.sh" >&2; exit 1; }
done

step() { echo; echo "== $*"; }

if [ ! -s "$OUT/kjv.txt" ]; then
  step "the corpus: the King James Bible (Debian bible-kjv), one verse per line"
  bible -f gen1:1-rev22:21 2>/dev/null | sed -n 's/^[0-9A-Za-z]*[0-9]*:[0-9]* //p' > "$OUT/kjv.txt.tmp"
  mv "$OUT/kjv.txt.tmp" "$OUT/kjv.txt"
  wc -lc "$OUT/kjv.txt"
fi
if [ ! -s "$OUT/kjv.model" ]; then
  step "spm_train: a SentencePiece model of 4,000 pieces on the corpus"
  spm_train --input="$OUT/kjv.txt" --model_prefix="$OUT/kjv" --vocab_size=4000 \
    --character_coverage=1.0 --num_threads=2 --minloglevel=2 >/dev/null 2>&1
  ls -l "$OUT/kjv.model"
fi

step "engram vocab: the projection V -> V'"
"$ENGRAM" vocab "$OUT/kjv.model" -o "$OUT/kjv.proj.u32" --top 3

step "engram prep: tokenize the corpus into Megatron shards"
"$ENGRAM" prep --tokenizer "$OUT/kjv.model" --doc-per-line -o "$OUT/kjv" "$OUT/kjv.txt"

step "engram count: every 2- and 3-gram over compressed ids"
"$ENGRAM" count "$OUT/kjv" --tokenizer "$OUT/kjv.model" --config configs/sample.json \
  -o "$OUT/kjv.counts" -k 3

step "engram plan: table sizes for a 50% per-head collision target (small tables for a demo), measured with the real hash"
"$ENGRAM" plan --config configs/sample.json --counts "$OUT/kjv.counts" --target 0.5 \
  --verify -o "$OUT/planned.json"

step "engram build: the table store (fp8 e4m3 rows with ue8m0 scales) for the planned config"
"$ENGRAM" build --config "$OUT/planned.json" --tokenizer "$OUT/kjv.model" --dtype fp8_e4m3 \
  -o "$OUT/kjv.store"

step "engram inspect: occupancy, loads, collisions, worst buckets, plots"
"$ENGRAM" inspect "$OUT/kjv.store" --counts "$OUT/kjv.counts" --worst 3 --plot "$OUT/plots"

step "engram verify and export"
"$ENGRAM" verify "$OUT/kjv.store"
"$ENGRAM" export "$OUT/kjv.store" -o "$OUT/kjv.safetensors"
ls -l "$OUT/kjv.safetensors"
echo
echo "outputs in $OUT/: kjv.store, kjv.counts, planned.json, kjv.safetensors, plots/*.png"
