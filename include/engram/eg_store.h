/*
 * eg_store.h - the table store: one LMDB file holding everything needed to
 * use a set of Engram tables (config, projection, multipliers, primes,
 * offsets, the rows), written once and never modified afterwards.
 *
 * The layout is written down in docs/FORMAT.md. In short: a single LMDB file
 * (MDB_NOSUBDIR; no lock file) with three named databases, "meta" (format
 * version, config JSON, spec arrays, dtype, init, fingerprints, and last the
 * build-complete marker), "vocab" (the projection and the compressed ids'
 * keys) and "rows" (blocks of consecutive rows under integer keys
 * layer_index << 40 | block, each followed by the crc32 of its bytes).
 *
 * Crash safety: eg_store_build writes "PATH.tmp.PID", syncs it, and renames
 * it over PATH, then syncs the directory: PATH is at every moment either
 * absent, the previous complete store, or the new complete one. A killed
 * build leaves only its ".tmp.PID" file. eg_store_open refuses a file without
 * the complete marker and a format version it does not know.
 *
 * Threads: an open eg_store may be read from any number of threads at once
 * (its block index and crc states are immutable or atomic).
 */
#ifndef ENGRAM_EG_STORE_H
#define ENGRAM_EG_STORE_H
#include <stddef.h>
#include <stdint.h>
#include "eg_base.h"
#include "eg_dtype.h"
#include "eg_spec.h"
#ifdef __cplusplus
extern "C" {
#endif

/* The format version this build writes; it reads versions 1..this. */
#define EG_STORE_FORMAT_VERSION 1

typedef struct eg_store eg_store;

/* Where build rows come from when not from the initializer (import): fill
 * `n` encoded rows (row_bytes each) of layer index li starting at row0. */
typedef eg_status (*eg_store_row_source)(void *ctx, uint32_t li, uint64_t row0, uint64_t n,
                                         void *dst, eg_err *err);

typedef struct eg_store_params {
    const eg_spec *spec;         /* required; borrowed for the call */
    const char *config_json;     /* the config as JSON; NULL: eg_config_to_json of the spec's */
    const uint32_t *projection;  /* raw id -> compressed id, n_projection values; NULL: none */
    size_t n_projection;
    const char *const *keys;     /* V' keys (normalized strings) of the compressed ids; NULL: none */
    const char *tokenizer_sha256;  /* 64 hex digits, or NULL */
    const char *projection_sha256; /* 64 hex digits, or NULL */
    eg_dtype dtype;
    uint64_t seed;   /* initializer seed */
    double init_std; /* initializer standard deviation (0: zeros) */
    /* Sparse: per layer index a bitmap of the rows to store (bit r of byte
     * r/8); blocks without a set bit are not stored and read back as the
     * initializer's values. NULL: every block is stored. */
    const uint8_t *const *hit;
    eg_store_row_source rows; /* NULL: the initializer */
    void *rows_ctx;
    const char *build_json;   /* a JSON object recorded as "build"; NULL: {} */
    uint64_t map_size;        /* LMDB map size in bytes; 0: computed from the tables */
    int n_threads;            /* 0: OpenMP's default */
    void (*progress)(uint64_t done_bytes, uint64_t total_bytes, void *ctx);
    void *progress_ctx;
    /* Training state (a runtime checkpoint; 0 rows: none): n_opt rows with
     * keys li << 40 | row in ascending order, each its Adam step count and
     * 3 * dim binary32 values (the row's exact value, m, v). Stored in the
     * "opt" database. */
    size_t n_opt;
    const uint64_t *opt_keys;
    const uint32_t *opt_steps;
    const float *opt_vals;
} eg_store_params;

typedef struct eg_store_build_stats {
    uint64_t blocks, rows, bytes; /* stored blocks, rows in them, row bytes */
    uint64_t file_bytes;
    double seconds;
} eg_store_build_stats;

/* Build a new store at `path` (see the crash-safety note above). stats may
 * be NULL. Errors: EG_EIO (cannot write; a full disk names ENOSPC),
 * EG_ECAPACITY (map_size too small), EG_EINVAL (bad parameters). On failure
 * the temporary file is removed and `path` is untouched. */
eg_status eg_store_build(const char *path, const eg_store_params *p, eg_store_build_stats *stats,
                         eg_err *err);

/* ---- reading ------------------------------------------------------------------ */

#define EG_STORE_NO_CRC 1u /* flags: do not check blocks' crc on first read */

typedef struct eg_store_info {
    uint32_t format_version;
    eg_dtype dtype;
    uint32_t dim, rows_per_block;
    size_t row_bytes;
    uint64_t seed;
    double init_std;
    int sparse;
    uint64_t blocks;     /* stored blocks */
    uint64_t rows_total; /* all layers */
    char tokenizer_sha256[65], projection_sha256[65]; /* "" when not recorded */
    uint64_t file_bytes;
} eg_store_info;

/* Open a complete store read-only (memory-mapped; rows are read in place).
 * *out owns the handle (eg_store_close). EG_EFORMAT for a file that is not a
 * store or is incomplete, EG_EUNSUPPORTED for a newer format version. */
eg_status eg_store_open(const char *path, unsigned flags, eg_store **out, eg_err *err);
void eg_store_close(eg_store *s);

/* Borrowed from the store, valid until eg_store_close. */
const eg_spec *eg_store_spec(const eg_store *s);
const eg_store_info *eg_store_get_info(const eg_store *s);
const char *eg_store_config_json(const eg_store *s);
const char *eg_store_build_json(const eg_store *s);
/* The projection (NULL and *n = 0 when none was recorded). */
const uint32_t *eg_store_projection(const eg_store *s, size_t *n);
/* The key of compressed id cid (NULL when keys were not recorded). */
const char *eg_store_key(const eg_store *s, uint32_t cid);

/* Refuse (EG_EMISMATCH, naming what differs) a store whose tokenizer
 * fingerprint is not `tokenizer_sha256` (NULL: not checked) or whose spec
 * differs from `spec` (V', pad, multipliers, primes, dim; NULL: not checked). */
eg_status eg_store_expect(const eg_store *s, const char *tokenizer_sha256, const eg_spec *spec,
                          eg_err *err);

/* Rows of layer index li as stored: a pointer into the map to row `row`'s
 * encoded bytes, valid until eg_store_close, or NULL in *p when the row's
 * block is not stored (sparse: use eg_store_read_rows, which generates it).
 * EG_EFORMAT when the block's crc does not match. */
eg_status eg_store_row_ptr(eg_store *s, uint32_t li, uint64_t row, const void **p, eg_err *err);

/* Decode rows [row0, row0 + n) of layer index li into out (n * dim binary32
 * values; cap = out's capacity in values). */
eg_status eg_store_read_rows(eg_store *s, uint32_t li, uint64_t row0, uint64_t n, float *out,
                             size_t cap, eg_err *err);

/* Rows [row0, row0 + n) of layer index li in the stored encoding (n *
 * row_bytes bytes into dst, cap = dst's capacity in bytes); rows of blocks
 * that are not stored are the initializer's values encoded, exactly the bytes
 * a dense build stores. */
eg_status eg_store_read_encoded(eg_store *s, uint32_t li, uint64_t row0, uint64_t n, void *dst,
                                size_t cap, eg_err *err);

/* The training state recorded by a checkpoint: calls fn for each row in key
 * order (vals: 3 * dim binary32 values, the row, m and v; borrowed for the
 * call). Stops early and returns fn's non-zero status. */
eg_status eg_store_opt_foreach(eg_store *s,
                               eg_status (*fn)(void *ctx, uint32_t li, uint64_t row,
                                               uint32_t step, const float *vals),
                               void *ctx, eg_err *err);

/* Gather rows[i] (any order, repeats allowed) of layer li in the stored
 * encoding into dst (n * row_bytes bytes; cap in bytes), from the map, with
 * the same crc checks and generated rows of absent blocks as above; the
 * batch form of eg_store_read_encoded for lookups. n_threads as elsewhere. */
eg_status eg_store_gather_encoded(eg_store *s, uint32_t li, const uint64_t *rows, size_t n,
                                  void *dst, size_t cap, int n_threads, eg_err *err);

/* The store's memory map (read-only; valid until eg_store_close): every
 * pointer eg_store_row_ptr returns lies inside it. For registering the map
 * with a device driver (the CUDA backend's host-resident tables). *base is
 * NULL and *len 0 when the store holds no block of rows, or where the
 * mapping cannot be told (it is read from /proc/self/maps: LMDB gives its
 * map's address only to MDB_FIXEDMAP environments). */
void eg_store_map(const eg_store *s, const void **base, size_t *len);

/* ---- verification ------------------------------------------------------------- */

typedef struct eg_store_verify_report {
    uint64_t blocks_checked, blocks_bad, blocks_missing, blocks_unexpected;
    int meta_ok; /* metadata readable and consistent with the config */
    char first_problem[384];
} eg_store_verify_report;

/* Check the metadata (spec recomputed from the config equals the recorded
 * arrays, sizes add up) and every block's crc and length. Returns EG_OK
 * when the store is sound; EG_EFORMAT with the report filled when not. */
eg_status eg_store_verify(const char *path, eg_store_verify_report *r, eg_err *err);

#ifdef __cplusplus
}
#endif
#endif
