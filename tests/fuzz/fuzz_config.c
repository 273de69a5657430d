/* fuzz_config.c - fuzz target: config JSON -> validated config -> spec ->
 * a short hash. Built two ways: into the test runner (replaying
 * tests/fuzz/corpus/config/ as a regression test) and, by `make fuzz`, with
 * libFuzzer (EG_LIBFUZZER defines the libFuzzer entry point). */
#include <stdlib.h>
#include <string.h>

#include "engram/engram.h"
#include "fuzz.h"

int eg_fuzz_config(const uint8_t *data, size_t size)
{
    eg_config cfg;
    eg_err err;
    if (eg_config_parse((const char *)data, size, "fuzz", &cfg, &err) != EG_OK)
        return 0;
    /* Keep the prime search cheap: the fuzzer is after parser and spec bugs,
     * not after finding primes near 2^62. */
    for (uint32_t n = 2; n <= cfg.max_ngram_size; n++)
        if (cfg.engram_vocab_size[n - 2] > 100000)
            return 0;
    if (cfg.n_layers * cfg.n_head_per_ngram * (cfg.max_ngram_size - 1) > 4096)
        return 0;
    char buf[8192];
    (void)eg_config_to_json(&cfg, buf, sizeof buf, &err);
    eg_spec *s = NULL;
    uint64_t vprime = cfg.compressed_vocab_size ? cfg.compressed_vocab_size : 1000;
    if (eg_spec_create(&cfg, vprime, 0, &s, &err) != EG_OK)
        return 0;
    uint32_t ids[8] = {0, 1, 2, 3, 4, 5, 6, 7}, out[8 * EG_MAX_NGRAM * EG_MAX_HEADS];
    for (int i = 0; i < 8; i++)
        ids[i] = (uint32_t)(ids[i] % vprime);
    (void)eg_hash_batch(s, 0, ids, 1, 8, 0, 1, out, sizeof out / sizeof out[0], &err);
    eg_spec_free(s);
    return 0;
}

#ifdef EG_LIBFUZZER_CONFIG
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return eg_fuzz_config(data, size);
}
#endif
