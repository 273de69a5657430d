#!/usr/bin/env bash
# Build the libFuzzer targets with clang and run each for FUZZ_SECONDS
# (default 60), or until FUZZ_RUNS executions when that is set. Crashes are written to tests/fuzz/corpus/<target>/crash-*;
# keep them there: every file in a corpus folder is replayed by `make test`.
# usage: scripts/fuzz.sh [TARGET ...]   (config tokenizer text reader shard store counts safetensors)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-60}
CLANG=${CLANG:-clang}
CLANGXX=${CLANGXX:-clang++}
OUT=build-fuzz
mkdir -p "$OUT/obj"
SAN="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined"
FLAGS="-O1 -g -D_GNU_SOURCE -DEG_NO_CLONES -Wno-pass-failed -Iinclude -Ibase -Itests $(pkg-config --cflags icu-uc)"
LIBS="-llmdb $(pkg-config --libs jansson icu-uc icu-i18n libzstd zlib oniguruma libcrypto 2>/dev/null || echo -ljansson -licuuc -licudata -licui18n -lzstd -lz -lonig -lcrypto) -lsentencepiece -fopenmp -lm"
objs=()
for src in base/*.c store/*.c tokenizer/*.c runtime/*.c prep/*.c tables/*.c; do
  o="$OUT/obj/$(echo "$src" | tr / _).o"
  [ "$o" -nt "$src" ] || $CLANG -std=c11 -fopenmp $SAN $FLAGS -c "$src" -o "$o"
  objs+=("$o")
done
o="$OUT/obj/spm_shim.o"
[ "$o" -nt tokenizer/spm_shim.cc ] || $CLANGXX -std=c++17 $SAN $FLAGS -c tokenizer/spm_shim.cc -o "$o"
objs+=("$o")
declare -A SRC=([config]=fuzz_config [tokenizer]=fuzz_tokenizer [text]=fuzz_text
                [reader]=fuzz_files [shard]=fuzz_files [store]=fuzz_store [counts]=fuzz_store
                [safetensors]=fuzz_store)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config tokenizer text reader shard store counts safetensors)
for t in "${targets[@]}"; do
  def=$(echo "EG_LIBFUZZER_$t" | tr a-z A-Z)
  bin=$OUT/fuzz_$t
  echo "fuzz: building $bin"
  $CLANGXX -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined $FLAGS -x c -std=c11 -D"$def" \
    "tests/fuzz/${SRC[$t]}.c" -x none "${objs[@]}" $LIBS -o "$bin"
  corpus=tests/fuzz/corpus/$t
  work=$OUT/corpus-$t
  mkdir -p "$work"
  if [ -n "${FUZZ_RUNS:-}" ]; then echo "fuzz: running $t for $FUZZ_RUNS executions"
  else echo "fuzz: running $t for ${SECONDS_EACH}s"; fi
  limit=(-max_total_time="$SECONDS_EACH")
  [ -z "${FUZZ_RUNS:-}" ] || limit=(-runs="$FUZZ_RUNS")
  "$bin" "${limit[@]}" -max_len=8192 -artifact_prefix="$corpus/crash-" \
    -print_final_stats=1 "$work" "$corpus" 2>&1 | grep -E "stat::number_of_executed_units|ERROR|SUMMARY|Done" || true
done
