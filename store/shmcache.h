/* shmcache.h - the row tier's hot-row cache in shared memory, one per store
 * file and host, which every process serving that file attaches to
 * (eg_tier_opts.shared). Not a public header: the tier is its one user.
 *
 * The segment (POSIX shared memory, /dev/shm/engram-tier-<file identity>):
 * a header, then per slot its directory entry (below), then the slots' rows.
 * Sets of `ways` slots; a row's set is a hash of its key (EG_TIER_KEY).
 *
 * Every slot has one atomic word, seq << 2 | state (EMPTY, LOADING, READY),
 * and every change of state adds one to seq, so a word names one filling of
 * one slot. A process that claims a slot moves it to LOADING (compare-and-
 * swap, so two processes never claim one slot), writes the key and the row,
 * and publishes READY (or EMPTY on a failed read). A reader takes the word
 * (READY, for its key), copies the row, and takes the word again: unchanged,
 * the copy is the row; changed (another process evicted and refilled the
 * slot meanwhile), the copy is discarded and the row read from the file. So
 * no lock is held across processes, a process that dies holds nothing but the
 * slots it was loading (LOADING with a dead owner may be claimed again), and
 * a row is never served from a slot that holds another.
 *
 * Eviction: an EMPTY way first, else the least recently used READY way whose
 * lease has ended (a slot a process found or loaded is leased for lease_ns,
 * so the gather of the step that prefetched it finds it).
 * When every way is leased or loading, the row is read directly (DIRECT).
 *
 * Lifetime: attaching registers the pid in the header; detaching removes it,
 * and the last process to detach removes the segment's name. A segment whose
 * every registered pid is dead is reused as it is (its slots are still
 * valid: words say what each holds).
 */
#ifndef ENGRAM_STORE_SHMCACHE_H
#define ENGRAM_STORE_SHMCACHE_H
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "eg_internal.h"

#define EG_SHM_SLOT_OVERHEAD 40      /* a slot's directory entry, bytes */
#define EG_SHM_DIRECT UINT64_MAX

typedef struct eg_shmcache eg_shmcache;

/* Attach to (creating where none exists) the cache of the file identified by
 * `id` with n_slots slots (rounded down to whole sets) of row_bytes each.
 * EG_EINVAL when one exists with another geometry (naming its size and a pid
 * using it); EG_ENOMEM when shared memory cannot hold it (/dev/shm full). */
eg_status eg_shmcache_open(const struct stat *id, uint64_t n_slots, uint32_t ways, size_t row_bytes,
                           eg_shmcache **out, eg_err *err);
void eg_shmcache_close(eg_shmcache *c); /* NULL is fine */

uint64_t eg_shmcache_slots(const eg_shmcache *c);
const char *eg_shmcache_name(const eg_shmcache *c);
unsigned char *eg_shmcache_row(eg_shmcache *c, uint64_t slot);

enum { EG_SHM_HIT = 0, EG_SHM_INFLIGHT = 1, EG_SHM_CLAIMED = 2, EG_SHM_NONE = 3 };

/* Find key's slot or claim one for it (the caller then fills the row and
 * publishes); a slot loading key for a process that died is claimed. *slot gets the slot (EG_SHM_DIRECT for NONE), *want the word the
 * slot holds when the row is READY there. Leases the slot. */
int eg_shmcache_find(eg_shmcache *c, uint64_t key, uint64_t lease_ns, uint64_t *slot,
                     uint64_t *want);

/* The row of a slot this process claimed is written (ok) or its read failed. */
void eg_shmcache_publish(eg_shmcache *c, uint64_t slot, int ok);

/* The slot's word now (acquire). */
uint64_t eg_shmcache_word(const eg_shmcache *c, uint64_t slot);
/* The word that says "LOADING, to become want". */
static inline uint64_t eg_shm_loading_of(uint64_t want) { return ((want >> 2) - 1) << 2 | 1; }
/* 1 when the slot's loader is this process. */
int eg_shmcache_mine(const eg_shmcache *c, uint64_t slot);
/* 1 when the slot's loader has died (its LOADING will never end). */
int eg_shmcache_loader_dead(const eg_shmcache *c, uint64_t slot);

/* Copy slot's row to dst and say whether the slot held key's row as `want`
 * throughout (0: it holds another, or changed while copying: the copy is not
 * the row). */
int eg_shmcache_copy(const eg_shmcache *c, uint64_t slot, uint64_t want, uint64_t key, void *dst);

#endif
