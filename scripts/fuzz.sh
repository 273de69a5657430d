#!/usr/bin/env bash
# Build the libFuzzer targets with clang and run each for FUZZ_SECONDS
# (default 60). New crashes are written to tests/fuzz/corpus/<target>/ by
# libFuzzer's -artifact_prefix; keep them there: they then run in `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-60}
CLANG=${CLANG:-clang}
OUT=build-fuzz
mkdir -p "$OUT"
LIB_SRC=$(ls base/*.c tokenizer/*.c runtime/*.c 2>/dev/null; ls tables/*.c prep/*.c 2>/dev/null || true)
for target in config; do
  src=tests/fuzz/fuzz_$target.c
  bin=$OUT/fuzz_$target
  echo "fuzz: building $bin"
  $CLANG -std=c11 -D_GNU_SOURCE -O1 -g -Wno-pass-failed -fsanitize=fuzzer,address,undefined -fopenmp \
    -DEG_LIBFUZZER -DEG_NO_CLONES -Iinclude -Ibase -Itests "$src" $LIB_SRC \
    $(pkg-config --libs jansson 2>/dev/null || echo -ljansson) -lm -o "$bin"
  corpus=tests/fuzz/corpus/$target
  work=$OUT/corpus-$target
  mkdir -p "$work"
  echo "fuzz: running $target for ${SECONDS_EACH}s"
  "$bin" -max_total_time="$SECONDS_EACH" -max_len=4096 -artifact_prefix="$corpus/crash-" \
    "$work" "$corpus" 2>&1 | tail -n 3
done
