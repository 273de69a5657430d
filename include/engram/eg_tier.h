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
 * One cache per host (opts.shared = 1): serving processes on one host that
 * open one store file (data-parallel replicas) share one hot-row cache in
 * POSIX shared memory, /dev/shm/engram-tier-<the file's device, inode, size
 * and mtime>, created by the first and sized by cache_bytes (cache_bytes /
 * (row_bytes + 40) slots; /dev/shm must hold it: posix_fallocate'd at
 * creation, EG_ENOMEM otherwise); a process that opens it with another
 * cache_bytes gets EG_EINVAL naming the size in use. A row one process reads
 * is a hit for all. No lock is held across processes: each slot has a word
 * (a sequence number and a state) changed by compare-and-swap, and a row is
 * copied out and kept only if its slot's word did not change meanwhile, else
 * it is read from the file; a process that dies holds nothing (the slots it
 * was loading are taken over). Rows a process found or loaded are leased for
 * lease_ms (250 ms unless set: a step's gathers find what its prefetch
 * planned; a row evicted even so is read again, never wrong) instead of the
 * private cache's "this step and the next". The last process to close the
 * tier removes the segment's name; processes must share a pid namespace
 * (liveness is checked with kill(pid, 0)). A new store generation (another
 * inode or mtime) gets a cache of its own.
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
    int shared;           /* 1: the cache lives in shared memory, one per store file and host,
                           * used by every process that opens the file with shared = 1 and
                           * the same cache_bytes (see "One cache per host" above) */
    uint32_t lease_ms;    /* shared: how long a row found or loaded is kept from eviction
                           * (0: 250 ms; a step's prefetch to its last gather should fit) */
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
    int shared;          /* 1: the cache is in shared memory (opts.shared) */
} eg_tier_stats;
void eg_tier_get_stats(const eg_tier *t, eg_tier_stats *st);

/* The shared cache's name under /dev/shm ("/engram-tier-..."), NULL for a
 * private cache or none; borrowed, valid while the tier is open. */
const char *eg_tier_cache_name(const eg_tier *t);

#ifdef __cplusplus
}
#endif
#endif
