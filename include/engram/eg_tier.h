/*
 * eg_tier.h - the row tier: rows of a store larger than memory read from its
 * file with parallel direct reads into a hot-row cache of a size the caller
 * sets, and lookups prefetched ahead of the step that needs them.
 *
 * Why: a store opened as today (eg_store_open) reads rows through LMDB's
 * memory map, so a table larger than RAM becomes page faults, one 4 KiB page
 * at a time on the calling thread, nothing fetched ahead. The tier reads the
 * same bytes with pread from a pool of reader threads (O_DIRECT where the
 * file system allows: the page cache is not filled with cold rows), requests
 * sorted by file offset, duplicates read once, neighbours in one read.
 * Values come out bit for bit as eg_store_gather_encoded gives them.
 *
 * The cache: cache_bytes / (row_bytes + 26) slots in sets of 8 ways, least
 * recently used replaced (eg_rowcache's directory; the 26 bytes are a slot's
 * directory entry and read state, so the cache with its directory holds
 * cache_bytes). A step's rows are pinned for that
 * step and the next, so a prefetch never evicts rows that a gather of the
 * step before it still has to copy. With cache_bytes 0 there is no cache:
 * every gather reads every row it needs (sorted and deduplicated), and
 * prefetch does nothing.
 *
 * Prefetch: eg_tier_prefetch(t, keys, n) plans one step's rows (all layers:
 * keys EG_TIER_KEY(li, row)), starts the reads of those not cached and
 * returns at once. A later eg_tier_gather of a layer the prefetch covered
 * waits only for the rows whose reads have not completed. A gather of rows no
 * prefetch covered plans and reads them itself (synchronously). A plan (a
 * prefetch, or a gather that plans) first waits for the reads still in flight
 * from earlier plans.
 *
 * What is checked: a row whose read comes back short (a file truncated under
 * the reader) and a read error (EIO) fail the gather with one line naming the
 * layer and row (the runtime stays usable: a later gather reads the row
 * again); the file's size and modification time are compared with those at
 * open before and after each gather's reads, so a store file changed under
 * the reader is an error (EG_EIO), never rows of another content. Blocks'
 * crc32 is not checked (a row read alone cannot be checked against its
 * block's crc without reading the whole block): `engram verify` checks a
 * store once, when it lands.
 *
 * Threads: calls on one tier are serialized internally (a mutex); the reads
 * run on the tier's own threads.
 */
#ifndef ENGRAM_EG_TIER_H
#define ENGRAM_EG_TIER_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "eg_base.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef struct eg_store eg_store;
typedef struct eg_tier eg_tier;

/* A prefetch key: layer index li (< 2^23) and layer-local row (< 2^40). */
#define EG_TIER_KEY(li, row) ((uint64_t)(li) << 40 | (uint64_t)(row))

typedef struct eg_tier_opts {
    uint64_t cache_bytes; /* the hot-row cache, in bytes of rows (0: none, every row read) */
    int n_readers;        /* reader threads (0: 16) */
    int buffered;         /* 1: buffered pread (rows go through, and are shared by, the page
                           * cache); 0: O_DIRECT where the file system allows it */
    /* The read call (NULL: pread(2)); for fault injection and instrumentation.
     * Same contract as pread: bytes read, 0 at end of file, -1 with errno. */
    ssize_t (*read_fn)(void *ctx, int fd, void *buf, size_t n, off_t off);
    void *read_ctx;
} eg_tier_opts;

/* Open a tier over an open store `s` (borrowed: it must outlive the tier).
 * opts may be NULL (no cache, 16 readers, O_DIRECT). EG_EUNSUPPORTED where the
 * store's rows cannot be located in its file; EG_ENOMEM for a cache that
 * cannot be allocated; EG_EIO when the file cannot be opened again. */
eg_status eg_tier_open(eg_store *s, const eg_tier_opts *opts, eg_tier **out, eg_err *err);
void eg_tier_close(eg_tier *t); /* NULL is fine; waits for reads in flight */

/* dst[i*row_bytes ..] = row rows[i] of layer li in the stored encoding (n rows,
 * any order, repeats allowed; cap = dst's capacity in bytes), exactly as
 * eg_store_gather_encoded gives them (rows of absent blocks of a sparse store
 * are generated, not read). EG_ERANGE for a row outside the layer, EG_EIO for
 * a failed or short read or a changed file (naming layer and row). */
eg_status eg_tier_gather(eg_tier *t, uint32_t li, const uint64_t *rows, size_t n, void *dst,
                         size_t cap, eg_err *err);

/* Plan one step's rows (keys EG_TIER_KEY(li, row), any layers, repeats
 * allowed) and start reading those not cached; returns without waiting.
 * Errors of the reads are reported by the gather that needs the row.
 * EG_ERANGE for a key outside the store (nothing started). */
eg_status eg_tier_prefetch(eg_tier *t, const uint64_t *keys, size_t n, eg_err *err);

/* Wait until every read started so far has completed. */
void eg_tier_drain(eg_tier *t);

typedef struct eg_tier_stats {
    uint64_t lookups;    /* rows asked for by gathers (positions) */
    uint64_t hits;       /* of those, found in the cache already read */
    uint64_t waited;     /* of those, found with the read in flight (waited for) */
    uint64_t rows_read;  /* rows read from the file (loads and direct reads) */
    uint64_t reads;      /* read calls */
    uint64_t bytes_read; /* bytes those calls read */
    uint64_t cache_slots, cache_bytes; /* the cache's size (row slots, bytes of rows) */
    int direct;          /* 1: the file is read with O_DIRECT */
} eg_tier_stats;
void eg_tier_get_stats(const eg_tier *t, eg_tier_stats *st);

#ifdef __cplusplus
}
#endif
#endif
