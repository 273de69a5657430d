/* count_table.h - the open-addressing tables that count keys (linear probing,
 * multiply-shift home slots); a stage of count_impl.h. */

/* A hash's home slot in a table of cap slots (multiply-shift). */
static inline size_t slot_of(uint64_t h, size_t cap)
{
    return (size_t)(((u128)(uint32_t)h * cap) >> 32);
}

/* Add count to key (hi, lo) with hash h; *used counts the slots taken. */
static inline void table_put(entry *slot, size_t cap, size_t *used, uint64_t hi, uint64_t lo,
                             uint64_t h, uint64_t count)
{
    size_t s = slot_of(h, cap);
    for (;;) {
        entry *e = &slot[s];
        if (E_HI(*e) == hi && e->lo == lo) {
            e->count += count;
            return;
        }
        if (!E_USED(*e)) {
            E_SET_HI(*e, hi);
            e->lo = lo;
            e->count = count;
            ++*used;
            return;
        }
        if (++s == cap)
            s = 0;
    }
}

/* The used entries of slot[0, cap), in order, into dst (slot itself
 * compacts in place); their number. */
static size_t used_entries(const entry *slot, size_t cap, entry *dst)
{
    size_t k = 0;
    for (size_t i = 0; i < cap; i++)
        if (E_USED(slot[i]))
            dst[k++] = slot[i];
    return k;
}

/* Rehash n entries into a cleared table of cap slots. */
static void table_refill(entry *slot, size_t cap, const entry *e, size_t n)
{
    size_t used = 0;
    for (size_t i = 0; i < n; i++)
        table_put(slot, cap, &used, E_HI(e[i]), e[i].lo, mix_key(E_HI(e[i]), e[i].lo), e[i].count);
}
