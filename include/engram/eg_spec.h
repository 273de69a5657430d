/*
 * eg_spec.h - the table specification derived from a config and V':
 * multipliers (numpy-exact), the prime schedule, row offsets and sizes
 * (../shared/CONTRACT.md sections 2 and 3).
 *
 * An eg_spec is immutable once created and may be shared by any number of
 * threads. Layers are addressed by their position `li` in config.layer_ids
 * (0 .. n_layers-1); eg_spec_layer_index maps a layer id to its position.
 * Heads are numbered c = (n-2)*K + j for order n and head j.
 */
#ifndef ENGRAM_EG_SPEC_H
#define ENGRAM_EG_SPEC_H

#include <stddef.h>
#include <stdint.h>

#include "eg_base.h"
#include "eg_config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct eg_spec eg_spec;

/* Build the spec for `cfg` (copied; not borrowed) and a compressed vocabulary
 * of `compressed_vocab` ids (V' >= 1). `pad_compressed` is the projected pad id
 * P(cfg->pad_id) that pads sequence starts (pass cfg->pad_id when ids are
 * already compressed with the identity projection).
 * Fails with EG_EMISMATCH when the config declares another V' or published
 * per-layer row counts that the prime schedule does not reproduce.
 * On success *out owns a new spec (free with eg_spec_free); on failure *out
 * is NULL. */
eg_status eg_spec_create(const eg_config *cfg, uint64_t compressed_vocab,
                         int64_t pad_compressed, eg_spec **out, eg_err *err);
void eg_spec_free(eg_spec *spec);

/* Build a spec from explicit multipliers and primes instead of deriving them:
 * for tables whose store records its own (and for tests of the hash rule).
 * mult: n_layers * N values (each odd and > 0), primes: n_layers * (N-1)*K
 * values >= 2, both copied. Only their shapes and ranges are checked. */
eg_status eg_spec_create_explicit(const eg_config *cfg, uint64_t compressed_vocab,
                                  int64_t pad_compressed, const int64_t *mult,
                                  const uint64_t *primes, eg_spec **out, eg_err *err);

/* The config the spec was built from (owned by the spec). */
const eg_config *eg_spec_config(const eg_spec *spec);
uint64_t eg_spec_compressed_vocab(const eg_spec *spec);
int64_t eg_spec_pad(const eg_spec *spec);
uint32_t eg_spec_n_layers(const eg_spec *spec);
uint32_t eg_spec_max_ngram(const eg_spec *spec);       /* N */
uint32_t eg_spec_heads_per_ngram(const eg_spec *spec); /* K */
uint32_t eg_spec_n_heads(const eg_spec *spec);         /* (N-1)*K per layer */
uint32_t eg_spec_head_dim(const eg_spec *spec);        /* n_embed_per_ngram / K */

/* Position of layer id `layer_id` in the config, or -1. */
int eg_spec_layer_index(const eg_spec *spec, uint32_t layer_id);

/* Borrowed arrays, valid while the spec lives; NULL for li out of range.
 * multipliers: N values; primes and offsets: (N-1)*K values. */
const int64_t *eg_spec_multipliers(const eg_spec *spec, uint32_t li);
const uint64_t *eg_spec_primes(const eg_spec *spec, uint32_t li);
const uint64_t *eg_spec_offsets(const eg_spec *spec, uint32_t li);

/* Rows of layer li's table (the sum of its primes); 0 for li out of range. */
uint64_t eg_spec_layer_rows(const eg_spec *spec, uint32_t li);

/* Bytes of layer li's table at `bytes_per_value` (2 for bf16, 4 for f32). */
uint64_t eg_spec_layer_bytes(const eg_spec *spec, uint32_t li, uint32_t bytes_per_value);

/* The multipliers of the reference for one layer id, without a spec:
 * numpy.random.default_rng(seed + 10007*layer_id).integers(0, half, N), times
 * 2 plus 1, with half = max(1, ((2^63-1) // V') // 2). */
eg_status eg_multipliers(uint64_t seed, uint32_t layer_id, uint64_t compressed_vocab,
                         uint32_t max_ngram, int64_t *out, eg_err *err);

/* Deterministic primality test for every 64-bit value. */
int eg_is_prime_u64(uint64_t n);

#ifdef __cplusplus
}
#endif
#endif
