/* rowcache.c - the host-side directory of a device row cache (eg_rowcache.h). */
#include <stdlib.h>
#include <string.h>

#include "eg_internal.h"
#include "engram/eg_rowcache.h"

#define EMPTY UINT64_MAX

struct eg_rowcache {
    uint64_t n_sets, n_slots;
    uint32_t ways;
    uint64_t *tag;    /* row held by each slot, EMPTY */
    uint64_t *used;   /* the last batch that used the slot (0: never) */
    uint64_t *loaded; /* the batch that loaded the row into the slot */
    uint8_t *dirty;
    uint64_t batch;
};

static inline uint64_t set_of(const eg_rowcache *c, uint64_t row)
{
    uint64_t x = row * 0x9E3779B97F4A7C15ull;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    __extension__ typedef unsigned __int128 u128;
    return (uint64_t)(((u128)x * c->n_sets) >> 64);
}

eg_status eg_rowcache_create(uint64_t n_slots, uint32_t ways, eg_rowcache **out, eg_err *err)
{
    if (!out)
        return eg_fail(err, EG_EINVAL, "eg_rowcache_create: NULL argument");
    *out = NULL;
    if (ways < 1 || ways > 64)
        return eg_fail(err, EG_EINVAL, "row cache: %u ways (1..64)", ways);
    if (n_slots / ways < 1)
        return eg_fail(err, EG_EINVAL, "row cache: %llu slots cannot make one set of %u ways",
                       (unsigned long long)n_slots, ways);
    if (n_slots > ((uint64_t)1 << 40))
        return eg_fail(err, EG_EINVAL, "row cache: %llu slots is more than 2^40",
                       (unsigned long long)n_slots);
    eg_rowcache *c = calloc(1, sizeof *c);
    if (!c)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    c->ways = ways;
    c->n_sets = n_slots / ways;
    c->n_slots = c->n_sets * ways;
    c->tag = malloc(c->n_slots * sizeof *c->tag);
    c->used = calloc(c->n_slots, sizeof *c->used);
    c->loaded = calloc(c->n_slots, sizeof *c->loaded);
    c->dirty = calloc(c->n_slots, 1);
    if (!c->tag || !c->used || !c->loaded || !c->dirty) {
        eg_rowcache_free(c);
        return eg_fail(err, EG_ENOMEM, "row cache: out of memory for %llu slots",
                       (unsigned long long)n_slots);
    }
    for (uint64_t s = 0; s < c->n_slots; s++)
        c->tag[s] = EMPTY;
    *out = c;
    return EG_OK;
}

void eg_rowcache_free(eg_rowcache *c)
{
    if (!c)
        return;
    free(c->tag);
    free(c->used);
    free(c->loaded);
    free(c->dirty);
    free(c);
}

uint64_t eg_rowcache_slots(const eg_rowcache *c) { return c ? c->n_slots : 0; }
uint32_t eg_rowcache_ways(const eg_rowcache *c) { return c ? c->ways : 0; }

uint64_t eg_rowcache_slot_row(const eg_rowcache *c, uint64_t slot)
{
    return c && slot < c->n_slots ? c->tag[slot] : EG_ROWCACHE_DIRECT;
}

eg_status eg_rowcache_plan(eg_rowcache *c, const uint64_t *rows, size_t n, uint64_t *slots,
                           uint64_t *load_rows, uint64_t *load_slots, size_t load_cap,
                           uint64_t *wb_rows, uint64_t *wb_slots, size_t wb_cap,
                           eg_rowcache_plan_stats *stats, eg_err *err)
{
    if (!c || (n && (!rows || !slots || !load_rows || !load_slots || !wb_rows || !wb_slots)))
        return eg_fail(err, EG_EINVAL, "eg_rowcache_plan: NULL argument");
    const size_t need = n < c->n_slots ? n : (size_t)c->n_slots;
    if (load_cap < need || wb_cap < need)
        return eg_fail(err, EG_ECAPACITY,
                       "eg_rowcache_plan: the load and write-back lists need %zu entries (have "
                       "%zu and %zu)",
                       need, load_cap, wb_cap);
    for (size_t i = 0; i < n; i++)
        if (rows[i] == EMPTY)
            return eg_fail(err, EG_EINVAL, "eg_rowcache_plan: row id UINT64_MAX at %zu", i);
    eg_rowcache_plan_stats st = {0};
    const uint64_t b = ++c->batch;
    const uint32_t W = c->ways;
    for (size_t i = 0; i < n; i++) {
        const uint64_t r = rows[i], s0 = set_of(c, r) * W;
        uint64_t hit = EMPTY, victim = EMPTY;
        for (uint32_t w = 0; w < W; w++) {
            const uint64_t s = s0 + w;
            if (c->tag[s] == r) {
                hit = s;
                break;
            }
            /* a way may be replaced unless this batch or the one before used
             * it; an empty way first, else the least recently used */
            if (c->used[s] && c->used[s] + 1 >= b)
                continue;
            if (c->tag[s] == EMPTY) {
                if (victim == EMPTY || c->tag[victim] != EMPTY)
                    victim = s;
            } else if (victim == EMPTY ||
                       (c->tag[victim] != EMPTY && c->used[s] < c->used[victim])) {
                victim = s;
            }
        }
        if (hit != EMPTY) {
            st.hits += c->loaded[hit] != b;
            c->used[hit] = b;
            slots[i] = hit;
            continue;
        }
        if (victim == EMPTY) {
            slots[i] = EG_ROWCACHE_DIRECT;
            st.direct++;
            continue;
        }
        if (c->tag[victim] != EMPTY && c->dirty[victim]) {
            wb_rows[st.writebacks] = c->tag[victim];
            wb_slots[st.writebacks++] = victim;
        }
        c->dirty[victim] = 0;
        c->tag[victim] = r;
        c->used[victim] = b;
        c->loaded[victim] = b;
        load_rows[st.loads] = r;
        load_slots[st.loads++] = victim;
        slots[i] = victim;
    }
    if (stats)
        *stats = st;
    return EG_OK;
}

eg_status eg_rowcache_mark_dirty(eg_rowcache *c, const uint64_t *slots, size_t n, eg_err *err)
{
    if (!c || (n && !slots))
        return eg_fail(err, EG_EINVAL, "eg_rowcache_mark_dirty: NULL argument");
    for (size_t i = 0; i < n; i++)
        if (slots[i] != EG_ROWCACHE_DIRECT && slots[i] >= c->n_slots)
            return eg_fail(err, EG_ERANGE, "eg_rowcache_mark_dirty: slot %llu at %zu >= %llu",
                           (unsigned long long)slots[i], i, (unsigned long long)c->n_slots);
    for (size_t i = 0; i < n; i++)
        if (slots[i] != EG_ROWCACHE_DIRECT && c->tag[slots[i]] != EMPTY)
            c->dirty[slots[i]] = 1;
    return EG_OK;
}

size_t eg_rowcache_take_dirty(eg_rowcache *c, uint64_t *rows, uint64_t *slots, size_t cap)
{
    size_t k = 0;
    for (uint64_t s = 0; c && s < c->n_slots && k < cap; s++)
        if (c->dirty[s]) {
            rows[k] = c->tag[s];
            slots[k++] = s;
            c->dirty[s] = 0;
        }
    return k;
}

uint64_t eg_rowcache_lookup(const eg_rowcache *c, uint64_t row)
{
    if (!c || row == EMPTY)
        return EG_ROWCACHE_DIRECT;
    const uint64_t s0 = set_of(c, row) * c->ways;
    for (uint32_t w = 0; w < c->ways; w++)
        if (c->tag[s0 + w] == row)
            return s0 + w;
    return EG_ROWCACHE_DIRECT;
}

void eg_rowcache_drop(eg_rowcache *c, uint64_t slot)
{
    if (c && slot < c->n_slots) {
        c->tag[slot] = EMPTY;
        c->dirty[slot] = 0;
        c->used[slot] = 0;
    }
}
