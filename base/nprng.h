/*
 * nprng.h - numpy's SeedSequence, PCG64 and Generator.integers(int64),
 * reproduced exactly (../shared/CONTRACT.md section 2). Internal to libengram;
 * tests include it to check the published test vectors.
 */
#ifndef ENGRAM_NPRNG_H
#define ENGRAM_NPRNG_H

#include <stddef.h>
#include <stdint.h>

__extension__ typedef unsigned __int128 eg_np_u128;

/* numpy's coercion of a non-negative integer seed into uint32 words
 * (little-endian; 0 -> one word 0). Returns the word count (<= 2). */
size_t eg_np_seed_words(uint64_t seed, uint32_t words[2]);

/* SeedSequence(entropy words).pool (4 words) and generate_state(4, uint64). */
void eg_np_seedseq_pool(const uint32_t *words, size_t n, uint32_t pool[4]);
void eg_np_seedseq_state(const uint32_t pool[4], uint64_t state[4]);

typedef struct eg_pcg64 {
    eg_np_u128 state;
    eg_np_u128 inc;
    int has_uint32;
    uint32_t uinteger;
} eg_pcg64;

/* PCG64 seeded from generate_state's four words, as numpy does. */
void eg_pcg64_seed(eg_pcg64 *g, const uint64_t s[4]);
/* numpy.random.default_rng(seed) for an integer seed. */
void eg_pcg64_from_seed(eg_pcg64 *g, uint64_t seed);
uint64_t eg_pcg64_next64(eg_pcg64 *g);
uint32_t eg_pcg64_next32(eg_pcg64 *g);

/* Generator.integers(low, high, size=n, dtype=int64) with endpoint=False;
 * requires low < high. */
void eg_np_integers_i64(eg_pcg64 *g, int64_t low, int64_t high, size_t n, int64_t *out);

#endif
