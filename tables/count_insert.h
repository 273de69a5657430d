/* count_insert.h - counting a batch of keys with tables: the batch scattered
 * by key range, each range inserted into its table by one thread, tables grown
 * within the budget and spilled when full; a stage of count_impl.h. */

/* Insert partition p's keys [from, to) of the scattered batch; stops early
 * (returns the position) when the table is 90% full. */
static size_t insert_part(counter *c, size_t p, size_t from, size_t to)
{
    ptable *t = &c->part[p];
    enum { AHEAD = 20 }; /* prefetch the slots of keys this far ahead: the
                          * inserts are bound by memory latency, not work */
    for (size_t i = from; i < to; i++) {
        if (t->used * 10 >= t->cap * 7 && !t->stuck && pt_grow(c, t))
            t->stuck = 1; /* fills to 90%, then spills */
        if (i + AHEAD < to) {
            const uint64_t ha = c->sh[i + AHEAD];
            __builtin_prefetch(&t->slot[slot_of(ha, t->cap)], 1);
        }
        const size_t limit = t->cap - t->cap / 10;
        const uint64_t hi = KHI(c->shi, i), lo = c->slo[i];
        const uint64_t h = c->sh[i];
        size_t s = slot_of(h, t->cap);
        for (;;) {
            entry *e = &t->slot[s];
            if (E_HI(*e) == hi && e->lo == lo) {
                e->count++;
                break;
            }
            if (!E_USED(*e)) {
                if (t->used >= limit)
                    return i;
                E_SET_HI(*e, hi);
                e->lo = lo;
                e->count = 1;
                t->used++;
                break;
            }
            if (++s == t->cap)
                s = 0;
        }
    }
    return to;
}

static eg_status flush_keys(counter *c)
{
    const size_t n = c->kn, P = c->P;
    const int nt = c->nt;
    if (!n)
        return EG_OK;
    if (!c->have_spl) {
        eg_status st = choose_splitters(c);
        if (st)
            return st;
    }
    memset(c->hist, 0, (size_t)nt * P * sizeof *c->hist);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        size_t a, b;
        int T;
        const int t = thread_slice(n, &a, &b, &T);
        size_t *h = c->hist + (size_t)t * P;
        for (size_t i = a; i < b; i++) {
            const size_t p = part_of(c, KEY_AT(c->khi, c->klo, i));
            c->kp[i] = (uint8_t)p;
            h[p]++;
        }
#ifdef _OPENMP
#pragma omp barrier
#pragma omp single
#endif
        {
            size_t off = 0;
            for (size_t p = 0; p < P; p++) {
                c->start[p] = off;
                for (int tt = 0; tt < T; tt++) {
                    size_t v = c->hist[(size_t)tt * P + p];
                    c->hist[(size_t)tt * P + p] = off;
                    off += v;
                }
            }
            c->start[P] = off;
        }
        for (size_t i = a; i < b; i++) {
            size_t dst = h[c->kp[i]]++;
            c->sh[dst] = mix_key(KHI(c->khi, i), c->klo[i]);
#if KW == 2
            c->shi[dst] = c->khi[i];
#endif
            c->slo[dst] = c->klo[i];
        }
    }
    for (size_t p = 0; p < P; p++)
        c->done[p] = c->start[p];
    for (;;) {
        int full = 0;
        const long long PP = (long long)P;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 4) num_threads(nt) reduction(| : full)
#endif
        for (long long p = 0; p < PP; p++) {
            c->done[p] = insert_part(c, (size_t)p, c->done[p], c->start[p + 1]);
            full |= c->done[p] < c->start[p + 1];
        }
        if (!full)
            break;
        eg_status st = spill(c);
        if (st)
            return st;
    }
    c->kn = 0;
    return EG_OK;
}
