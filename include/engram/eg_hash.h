/*
 * eg_hash.h - batch hashing of compressed ids into head indices or rows
 * (the CPU backend of the runtime; the per-position rule is eg_contract.h).
 */
#ifndef ENGRAM_EG_HASH_H
#define ENGRAM_EG_HASH_H

#include <stddef.h>
#include <stdint.h>

#include "eg_base.h"
#include "eg_spec.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    EG_HASH_OFFSETS = 1u << 0,   /* add each head's row offset (layer-local row ids) */
    EG_HASH_REFERENCE = 1u << 1  /* use the scalar oracle (slow; for tests) */
};

/* Hash `n_seq` independent sequences of `seq_len` compressed ids each
 * (ids[n_seq * seq_len], row-major), each left-padded with the spec's pad, for
 * the layer at position `li` of the config.
 *
 * out[(s*seq_len + t) * H + c] receives head c's index (H = eg_spec_n_heads):
 * the index within the head's table, or with EG_HASH_OFFSETS the row in the
 * layer's table. out_cap is out's capacity in elements; it must be at least
 * n_seq*seq_len*H. Every id must be < V' (EG_ERANGE otherwise, naming the
 * first offending position; out is then unspecified).
 * EG_EUNSUPPORTED when a result can exceed uint32 (a prime, or with offsets a
 * layer's rows, >= 2^32).
 * n_threads: 0 = OpenMP's default, 1 = the calling thread only.
 * The result does not depend on n_threads. `ids` and `out` must not overlap. */
eg_status eg_hash_batch(const eg_spec *spec, uint32_t li, const uint32_t *ids,
                        size_t n_seq, size_t seq_len, uint32_t flags, int n_threads,
                        uint32_t *out, size_t out_cap, eg_err *err);

#ifdef __cplusplus
}
#endif
#endif
