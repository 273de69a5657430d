/* fuzz.h - fuzz targets, callable from libFuzzer and from the test runner. */
#ifndef ENGRAM_FUZZ_H
#define ENGRAM_FUZZ_H
#include <stddef.h>
#include <stdint.h>
int eg_fuzz_config(const uint8_t *data, size_t size);
int eg_fuzz_tokenizer(const uint8_t *data, size_t size);
int eg_fuzz_text(const uint8_t *data, size_t size);
int eg_fuzz_reader(const uint8_t *data, size_t size);
int eg_fuzz_shard(const uint8_t *data, size_t size);
int eg_fuzz_store(const uint8_t *data, size_t size);
int eg_fuzz_counts(const uint8_t *data, size_t size);
int eg_fuzz_safetensors(const uint8_t *data, size_t size);
#endif
