/* counts_meta.h - the counts file's record of what it counted (version 2's
 * trailer, see eg_count.h): the configuration (N, V', pad, padding mode,
 * projection fingerprint) and every input shard (path, tokens, documents and
 * a fingerprint of its token stream). Written by eg_count_run and
 * eg_counts_merge; the merge refuses inputs whose configurations differ or
 * whose inputs overlap. Internal to tables/. */
#ifndef ENGRAM_COUNTS_META_H
#define ENGRAM_COUNTS_META_H

#include <stddef.h>
#include <stdint.h>

#include "../base/eg_internal.h"
#include "engram/eg_count.h"
#include "engram/eg_shard.h"

#define EGC_META_MAGIC "EGCMETA1"
#define EGC_TRAILER 16 /* after the JSON: u64 its length, the magic */

typedef struct egc_input {
    char *path;            /* as given to the count (owned) */
    uint64_t tokens, docs; /* the shard's size */
    char fp[65];           /* egc_shard_fingerprint, hex */
} egc_input;

typedef struct egc_meta {
    uint32_t N;
    uint64_t vprime;
    int64_t pad;
    int pad_mode; /* eg_pad_mode */
    uint64_t seq_len;
    char proj[65]; /* SHA-256 of the projection's P.u32 bytes; "" for none (compressed ids) */
    egc_input *in;
    size_t n_in;
} egc_meta;

/* A fingerprint of a shard's token stream, independent of its name and file
 * format: SHA-256 of its token and document counts, 64 windows of up to 1024
 * tokens spread evenly over it and 64 documents' bounds, in hex. It tells the
 * same shard under another name apart from a different one; it is not a
 * checksum of every byte. */
eg_status egc_shard_fingerprint(const eg_shard *s, const char *path, char hex[65], eg_err *err);

/* The configuration of o, and its shards [first, first + n) with their
 * sizes and fingerprints (every shard: first 0, n o->n_shards). */
eg_status egc_meta_from_opts(const eg_count_opts *o, size_t first, size_t n, egc_meta *m,
                             eg_err *err);
/* Append a copy of input `in` to m. */
int egc_meta_add(egc_meta *m, const egc_input *in);
/* The metadata as compact JSON with the inputs sorted (path, then
 * fingerprint), so that the same configuration and inputs give the same
 * bytes whichever way they were counted; *json is malloc'ed, NUL-terminated. */
eg_status egc_meta_json(egc_meta *m, char **json, size_t *len, eg_err *err);
/* Parse a counts file's metadata JSON (`path` for messages). */
eg_status egc_meta_parse(const char *json, size_t len, const char *path, egc_meta *m,
                         eg_err *err);
void egc_meta_free(egc_meta *m);
/* The fingerprint (hex) of a projection: SHA-256 of its P.u32 bytes. */
void egc_projection_fp(const uint32_t *proj, size_t n, char hex[65]);
/* The trailer (json, its length, the magic) written at byte `at` of fd. */
eg_status egc_write_trailer(int fd, uint64_t at, const char *json, size_t len, const char *path,
                            eg_err *err);

/* The end of writing a counts file whose records are written (ret: EG_OK
 * so far): the header from st, the metadata trailer after the records,
 * fsync, close, and the rename of tmp to `path`; on any error the
 * temporary file is removed and nothing takes the final name. */
eg_status egc_finish_file(eg_outfile *w, const char *tmp, const char *path, uint32_t N,
                          uint64_t vprime, int64_t pad, const eg_count_stats *st, const char *json,
                          size_t json_len, eg_status ret, eg_err *err);

#endif
