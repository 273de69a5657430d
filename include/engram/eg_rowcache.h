/*
 * eg_rowcache.h - the directory of a cache of table rows kept in accelerator
 * memory (the CUDA backend's EG_CUDA_CACHED tables; usable with any device).
 *
 * Engram's row ids depend only on the input ids, so the host knows the rows
 * of batch i+1 before the device needs them. The directory lives on the
 * host: eg_rowcache_plan maps a batch's rows to cache slots and lists the
 * copies that must happen before the batch's gather (rows to load into
 * slots, dirty rows to write back out of the slots they are evicted from).
 * The device holds only the slots' bytes.
 *
 * Organization: n_sets sets of `ways` slots; a row's set is a hash of its
 * id; within a set the least recently used way is replaced. Slot s belongs to
 * set s / ways. "Recently used" counts batches: the slots a batch uses are
 * pinned for that batch and the next one, so a batch never evicts its own
 * rows nor those of the batch before it, which may still be in flight on the
 * device while this one is staged (double buffering). When a set
 * is asked for more distinct rows in one batch than it has ways, the rows
 * that do not fit get EG_ROWCACHE_DIRECT: the caller reads them from the
 * host table for this batch (counted in the plan's n_direct).
 *
 * Dirty rows: a caller that changes rows in their slots (a training step on
 * the device) marks those slots dirty; an eviction lists a dirty row for
 * write-back, and eg_rowcache_take_dirty lists every dirty row (at a
 * checkpoint), clearing the marks. Mark batch i's slots before planning batch
 * i + 2 (the first plan that may evict them). Batch i's changes to its direct
 * rows must reach the host table before batch i + 1's loads are copied (a
 * row direct in batch i may be loaded for batch i + 1).
 *
 * Pipelined use, per batch i + 1 (while batch i computes on the device):
 *   plan(i + 1)                 directory only, on the host
 *   ... batch i's step ends: mark its changed slots dirty, its direct rows
 *       written to the host table
 *   copy out write-backs, copy in loads of i + 1 (a side stream)
 *   gather batch i + 1 from slots[] (after the copies: an event) 
 *
 * Not thread-safe: one thread plans; the copies it lists may run anywhere.
 */
#ifndef ENGRAM_EG_ROWCACHE_H
#define ENGRAM_EG_ROWCACHE_H
#include <stddef.h>
#include <stdint.h>
#include "eg_base.h"
#ifdef __cplusplus
extern "C" {
#endif

#define EG_ROWCACHE_DIRECT UINT64_MAX /* slot of a row served from the host this batch */

typedef struct eg_rowcache eg_rowcache;

/* A directory of n_slots slots in sets of `ways` (1..64; n_slots is rounded
 * down to a multiple of ways, and must leave at least one set). */
eg_status eg_rowcache_create(uint64_t n_slots, uint32_t ways, eg_rowcache **out, eg_err *err);
void eg_rowcache_free(eg_rowcache *c); /* NULL is fine */
uint64_t eg_rowcache_slots(const eg_rowcache *c);
uint32_t eg_rowcache_ways(const eg_rowcache *c);

typedef struct eg_rowcache_plan_stats {
    size_t hits;       /* positions whose row was already cached */
    size_t loads;      /* distinct rows to load (entries of load_rows) */
    size_t direct;     /* positions served from the host this batch */
    size_t writebacks; /* dirty rows evicted (entries of wb_rows) */
} eg_rowcache_plan_stats;

/* Plan one batch: slots[i] (n entries, caller's) receives the slot of
 * rows[i] or EG_ROWCACHE_DIRECT. Before the batch's gather the caller must
 * first copy every wb_slots[j] out to row wb_rows[j] of the host table, then
 * copy every row load_rows[j] into slot load_slots[j] (each slot appears at
 * most once in each list). load_cap and wb_cap are the lists' capacities in
 * entries: each must be at least min(n, slots) (EG_ECAPACITY before anything
 * changes otherwise). Rows are any uint64 ids except UINT64_MAX (EG_EINVAL). */
eg_status eg_rowcache_plan(eg_rowcache *c, const uint64_t *rows, size_t n, uint64_t *slots,
                           uint64_t *load_rows, uint64_t *load_slots, size_t load_cap,
                           uint64_t *wb_rows, uint64_t *wb_slots, size_t wb_cap,
                           eg_rowcache_plan_stats *stats, eg_err *err);

/* Mark slots dirty (their contents changed on the device); EG_ROWCACHE_DIRECT
 * entries and empty slots are ignored (a direct row's change must go to the
 * host table by the caller). EG_ERANGE for a slot out of range. */
eg_status eg_rowcache_mark_dirty(eg_rowcache *c, const uint64_t *slots, size_t n, eg_err *err);

/* Every dirty (row, slot), in slot order, up to cap entries; the marks of
 * the listed ones are cleared. Returns how many were listed; call again
 * until it returns less than cap. */
size_t eg_rowcache_take_dirty(eg_rowcache *c, uint64_t *rows, uint64_t *slots, size_t cap);

/* The slot holding `row`, or EG_ROWCACHE_DIRECT when no slot does; changes
 * nothing (no use is recorded). */
uint64_t eg_rowcache_lookup(const eg_rowcache *c, uint64_t row);

/* Empty a slot (its row is forgotten, not written back; e.g. its load
 * failed). Out of range: ignored. */
void eg_rowcache_drop(eg_rowcache *c, uint64_t slot);

/* The row held by a slot (EG_ROWCACHE_DIRECT when empty or out of range). */
uint64_t eg_rowcache_slot_row(const eg_rowcache *c, uint64_t slot);

#ifdef __cplusplus
}
#endif
#endif
