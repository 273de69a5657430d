/* count_ranges.h - partition first, the ranges: each range counted in cache
 * (a counter per key, radix sort, or a table), written in order, and the
 * passes planned from the sample; a stage of count_impl.h. */

/* A thread's table for one partition at a time (memory reused: it stays in
 * cache), and its buffers. */
typedef struct {
    entry *slot;
    size_t cap, used, mem; /* slots in use as the table; allocated */
    entry *tmp;            /* radix sort / rehash: tmp_cap entries */
    size_t tmp_cap;
    unsigned char *ka, *kt; /* a range's stored keys and the radix sort's other half */
    size_t ka_cap, kt_cap;  /* bytes */
    unsigned char *out; /* the partition's records */
    size_t out_cap;
    uint32_t *cnt; /* direct counting: a counter per key of a narrow range */
    size_t cnt_cap;
    size_t hint; /* the last range's distinct n-grams: the next table's size */
    size_t bytes, allowed; /* what these take; the most they may */
} ltable;

/* Make room: buffers grown with realloc within the thread's allowance. */
static int lt_reserve(ltable *t, void **p, size_t *cap, size_t want, size_t unit)
{
    if (*cap >= want)
        return 0;
    const size_t grow = (want - *cap) * unit;
    if (t->bytes + grow > t->allowed)
        return -1;
    void *q = realloc(*p, want * unit);
    if (!q)
        return -1;
    *p = q;
    *cap = want;
    t->bytes += grow;
    return 0;
}

/* Start the table at cap slots (cleared). */
static int lt_start(ltable *t, size_t cap)
{
    if (lt_reserve(t, (void **)&t->slot, &t->mem, cap, sizeof(entry)))
        return -1;
    memset(t->slot, 0, cap * sizeof(entry));
    t->cap = cap;
    t->used = 0;
    return 0;
}

/* Double the table, its entries rehashed through tmp. */
static int lt_grow(ltable *t)
{
    if (lt_reserve(t, (void **)&t->tmp, &t->tmp_cap, t->used, sizeof(entry)))
        return -1;
    const size_t k = used_entries(t->slot, t->cap, t->tmp);
    if (lt_start(t, 2 * t->cap))
        return -1;
    table_refill(t->slot, t->cap, t->tmp, k);
    t->used = k;
    return 0;
}

/* The bytes chunk k of list i (thread x partition) holds: all of them but
 * in the list's last. */
static inline size_t chunk_used(const counter *c, size_t i, uint32_t k)
{
    return k == c->ks_tail[i] ? c->ks_fill[i] : CHUNK_BYTES;
}

/* Every chunk of range p (every thread's, in order): its bytes at `v`, `u` of them. */
#define FOR_RANGE_CHUNKS(c, p, v, u, BODY)                                                 \
    for (int th_ = 0; th_ < (c)->nt; th_++)                                                \
        for (uint32_t ch_ = (c)->ks_head[(size_t)th_ * (c)->P + (p)]; ch_ != NO_CHUNK;     \
             ch_ = (c)->ks_link[ch_]) {                                                    \
            const unsigned char *v = (const unsigned char *)(c)->ks + (size_t)ch_ * CHUNK_BYTES; \
            const size_t u = chunk_used((c), (size_t)th_ * (c)->P + (p), ch_);             \
            BODY                                                                           \
        }

/* The keys partition p holds (every thread's chunks). */
static size_t range_keys(const counter *c, size_t p)
{
    size_t bytes = 0;
    FOR_RANGE_CHUNKS(c, p, v, u, {
        (void)v;
        bytes += u;
    })
    return bytes / c->ks_kb[p];
}

/* Count partition p's keys (every thread's chunks) into t; -1 when its table
 * would outgrow the thread's allowance. */
static int lt_count(counter *c, ltable *t, size_t p, size_t hint, size_t keys)
{
    const size_t kb = c->ks_kb[p];
    const kkey base = c->ks_base[p];
    /* distinct n-grams are at most the keys; the last partition's count is
     * the better guess (the splitters balance distinct n-grams) */
    const size_t want = hint < keys ? hint : keys;
    size_t cap = 1024;
    while (cap < want + want / 2 + want / 10)
        cap *= 2;
    if (lt_start(t, cap))
        return -1;
    enum { AHEAD = 8 };
    kkey kk[CHUNK_BYTES / sizeof(nkey)];
    uint64_t h[CHUNK_BYTES / sizeof(nkey)];
    FOR_RANGE_CHUNKS(c, p, ck, u, {
        const size_t m = u / kb;
        if (kb == sizeof(nkey))
            for (size_t i = 0; i < m; i++) {
                nkey v;
                memcpy(&v, ck + i * sizeof v, sizeof v);
                kk[i] = base + v;
            }
        else
            for (size_t i = 0; i < m; i++) {
                kkey v;
                memcpy(&v, ck + i * sizeof v, sizeof v);
                kk[i] = base + v;
            }
        for (size_t i = 0; i < m; i++)
            h[i] = mix_key((uint64_t)(kk[i] >> 32 >> 32), (uint64_t)kk[i]);
        for (size_t i = 0; i < m; i++) {
            if (t->used * 10 >= t->cap * 7 && lt_grow(t))
                return -1;
            if (i + AHEAD < m)
                __builtin_prefetch(&t->slot[slot_of(h[i + AHEAD], t->cap)], 1);
            table_put(t->slot, t->cap, &t->used, (uint64_t)(kk[i] >> 32 >> 32), (uint64_t)kk[i],
                      h[i], 1);
        }
    })
    /* compact to the front, then sort */
    const size_t w = t->used = used_entries(t->slot, t->cap, t->slot);
#if KW == 1
    if (lt_reserve(t, (void **)&t->tmp, &t->tmp_cap, w, sizeof(entry)))
        return -1;
    radix_sort_entries(t->slot, t->tmp, w);
#else
    sort_entries(t->slot, w);
#endif
    return 0;
}

/* Give back what lt_reserve took for *p. */
static void lt_release(ltable *t, void **p, size_t *cap, size_t unit)
{
    free(*p);
    *p = NULL;
    t->bytes -= *cap * unit;
    *cap = 0;
}

/* Sorting a key range: its stored keys (4 or 8 bytes: a key less the range's
 * lowest) go through an LSD radix sort over the bits the range spans, in as
 * few passes of at most 11 bits as cover them (a pass is skipped where every
 * key has the same digit), and their runs become the records. One function
 * per stored width; hist holds RADIX_HIST counters. Returns the
 * records' bytes at t->out, or SIZE_MAX when they outgrow the allowance. */
#define RADIX_BITS 11
#define RADIX_DIGITS ((64 + RADIX_BITS - 1) / RADIX_BITS)
#define RADIX_HIST (RADIX_DIGITS * ((size_t)1 << RADIX_BITS)) /* counters per thread */
#define SORT_RANGE(NAME, T)                                                                 \
    static size_t sort_range_##NAME(const counter *c, ltable *t, size_t n, unsigned bits,   \
                                    kkey base, size_t *hist, eg_count_stats *ts, size_t *hint) \
    {                                                                                      \
        T *src = (T *)(void *)t->ka, *dst = (T *)(void *)t->kt;                            \
        if (bits && n > 1) {                                                               \
            const unsigned D = (bits + RADIX_BITS - 1) / RADIX_BITS, w = (bits + D - 1) / D; \
            const size_t R = (size_t)1 << w;                                               \
            const T mask = (T)(R - 1);                                                     \
            memset(hist, 0, D * R * sizeof *hist);                                         \
            T any = 0, all = (T)~(T)0;                                                     \
            for (size_t i = 0; i < n; i++) {                                               \
                const T k = src[i];                                                        \
                any |= k;                                                                  \
                all &= k;                                                                  \
                for (unsigned d = 0; d < D; d++)                                           \
                    hist[d * R + ((k >> (w * d)) & mask)]++;                               \
            }                                                                              \
            for (unsigned d = 0; d < D; d++) {                                             \
                if ((((any ^ all) >> (w * d)) & mask) == 0)                                \
                    continue;                                                              \
                size_t *h = hist + d * R, off = 0;                                         \
                for (size_t v = 0; v < R; v++) {                                           \
                    const size_t m = h[v];                                                 \
                    h[v] = off;                                                            \
                    off += m;                                                              \
                }                                                                          \
                for (size_t i = 0; i < n; i++) {                                           \
                    const T k = src[i];                                                    \
                    dst[h[(k >> (w * d)) & mask]++] = k;                                   \
                }                                                                          \
                T *x = src;                                                                \
                src = dst;                                                                 \
                dst = x;                                                                   \
            }                                                                              \
        }                                                                                  \
        const T *a = src;                                                                  \
        size_t distinct = n > 0;                                                           \
        for (size_t i = 1; i < n; i++)                                                     \
            distinct += a[i] != a[i - 1];                                                  \
        if (lt_reserve(t, (void **)&t->out, &t->out_cap, distinct * MAX_RECORD + 1, 1))    \
            return SIZE_MAX;                                                               \
        runs r;                                                                            \
        r.m = r.prev = r.bytes = 0;                                                        \
        for (size_t i = 0; i < n; i++) /* a run ends where the next key differs */         \
            runs_add(c, ts, t->out, base, &r, a[i], i + 1, i + 1 == n || a[i] != a[i + 1]); \
        *hint = distinct > 1024 ? distinct : 1024;                                         \
        return runs_end(c, ts, t->out, base, &r);                                          \
    }
#if KW == 1
SORT_RANGE(u32, uint32_t)
#endif
SORT_RANGE(u64, uint64_t)

/* Direct counting, for ranges at most 2^DIRECT_BITS keys wide with at least
 * one stored key per DIRECT_SPARSE of their width: a counter per key (in L2)
 * taken straight from the chunks, then a scan of the counters; no sort. */
#define DIRECT_BITS 17
#define DIRECT_SPARSE 16
static size_t count_direct(counter *c, ltable *t, size_t p, size_t span, size_t *hint,
                           eg_count_stats *ts)
{
    uint32_t *cnt = t->cnt;
    memset(cnt, 0, span * sizeof *cnt);
    FOR_RANGE_CHUNKS(c, p, v, u, {
        const uint32_t *k = (const uint32_t *)(const void *)v;
        for (size_t i = 0; i < u / sizeof *k; i++)
            cnt[k[i]]++;
    })
    size_t distinct = 0;
    for (size_t v = 0; v < span; v++)
        distinct += cnt[v] != 0;
    if (lt_reserve(t, (void **)&t->out, &t->out_cap, distinct * MAX_RECORD + 1, 1))
        return SIZE_MAX;
    runs r;
    r.m = r.prev = r.bytes = 0;
    uint64_t upto = 0;
    for (size_t v = 0; v < span; v++) { /* the nonzero counters as runs */
        upto += cnt[v];
        runs_add(c, ts, t->out, c->ks_base[p], &r, v, upto, cnt[v] != 0);
    }
    *hint = distinct > 1024 ? distinct : 1024;
    return runs_end(c, ts, t->out, c->ks_base[p], &r);
}

/* Count partition p into records at t->out, in key order: by sorting its
 * keys where they are stored in 4 or 8 bytes and the sort fits the thread's
 * allowance (no table to probe: measured about twice as fast on Zipfian
 * text), else in a table. Returns the records' bytes, or SIZE_MAX when
 * neither fits. */
static size_t count_range(counter *c, ltable *t, size_t p, size_t *hint, size_t *hist,
                          eg_count_stats *ts)
{
    const size_t keys = range_keys(c, p), kb = c->ks_kb[p];
    const kkey base = c->ks_base[p];
    if (!keys) /* an empty range (equal splitters) */
        return 0;
    if (kb == 4) {
        const size_t span = (size_t)(range_end(c, p) - base); /* < 2^32: stored in 4 bytes */
        if (span <= ((size_t)1 << DIRECT_BITS) && keys >= span / DIRECT_SPARSE &&
            keys <= UINT32_MAX && !lt_reserve(t, (void **)&t->cnt, &t->cnt_cap, span, sizeof(uint32_t)))
            return count_direct(c, t, p, span, hint, ts);
    }
    if (kb <= 8) {
        if (!lt_reserve(t, (void **)&t->ka, &t->ka_cap, keys * kb, 1) &&
            !lt_reserve(t, (void **)&t->kt, &t->kt_cap, keys * kb, 1)) {
            /* copied out first: sorting from the chunks themselves (the
             * histogram and the first scatter reading them) measured no faster */
            size_t m = 0; /* bytes */
            FOR_RANGE_CHUNKS(c, p, v, u, {
                memcpy(t->ka + m, v, u);
                m += u;
            })
            const kkey span = range_end(c, p) - base - 1; /* fits the stored width */
            unsigned bits = 0;
            while (bits < 8 * kb && (span >> bits))
                bits++;
#if KW == 1
            if (kb == 4)
                return sort_range_u32(c, t, m / kb, bits, base, hist, ts, hint);
#endif
            return sort_range_u64(c, t, m / kb, bits, base, hist, ts, hint);
        }
        /* the table may fit where the sort does not: it holds distinct keys */
        lt_release(t, (void **)&t->ka, &t->ka_cap, 1);
        lt_release(t, (void **)&t->kt, &t->kt_cap, 1);
    }
    size_t bytes = 0;
    if (lt_count(c, t, p, *hint, keys) ||
        lt_reserve(t, (void **)&t->out, &t->out_cap, t->used * MAX_RECORD + 1, 1))
        return SIZE_MAX;
    *hint = t->used > 1024 ? t->used : 1024;
    for (size_t i = 0; i < t->used; i++)
        bytes += emit_record(c, &t->slot[i], ts, t->out + bytes);
    return bytes;
}

/* Count ranges [p0, p1) and append their records in order: threads count
 * and encode ranges side by side (each with its ltable and radix counters,
 * kept from pass to pass); the records go out in order (OpenMP `ordered`).
 * *big: a range outgrew a thread's share of the budget; *failed: a write. */
static void write_ranges(counter *c, counts_out *out, ltable *lts, size_t *hist, size_t p0,
                         size_t p1, int *failed_, int *big_)
{
    const long long a = (long long)p0, b = (long long)p1;
    int failed = 0, big = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(c->nt) reduction(| : failed, big)
#endif
    {
        const int t = thread_num();
        ltable *lt = &lts[t];
        size_t *h = hist + (size_t)t * RADIX_HIST;
#ifdef _OPENMP
#pragma omp for ordered schedule(dynamic, 1)
#endif
        for (long long p = a; p < b; p++) {
            size_t bytes = 0;
            if (!failed && !big) {
                bytes = count_range(c, lt, (size_t)p, &lt->hint, h, &out->ts[t]);
                if (bytes == SIZE_MAX) {
                    big = 1;
                    bytes = 0;
                }
            }
#ifdef _OPENMP
#pragma omp ordered
#endif
            if (!failed && !big && bytes && eg_seqout_write(&out->q, lt->out, bytes))
                failed = 1;
        }
    }
    *failed_ |= failed;
    *big_ |= big;
}

/* The chunks a range's stored keys take, estimated from the sample (with a
 * part-filled chunk per thread); and all ranges'. */
static double range_chunks(const counter *c, size_t p, uint64_t keys)
{
    const double k = (double)c->ks_est[p] / (double)c->ks_est_n * (double)keys;
    return k * c->ks_kb[p] / CHUNK_BYTES + c->nt;
}

static double plan_chunks(const counter *c, uint64_t keys)
{
    double all = 0;
    for (size_t p = 0; p < c->P; p++)
        all += range_chunks(c, p, keys);
    return all;
}

/* The ranges from p0 on whose stored keys, estimated from the sample, take
 * about `window` chunks (one range at least); all of them without a
 * sample. */
static size_t plan_pass(const counter *c, size_t p0, size_t window, uint64_t keys)
{
    if (!c->have_spl || !c->ks_est_n)
        return c->P;
    double used = 0;
    size_t p = p0;
    for (; p < c->P; p++) {
        const double chunks = range_chunks(c, p, keys);
        if (p > p0 && used + chunks / 2 > (double)window) /* the nearer edge */
            break;
        used += chunks;
    }
    return p;
}

/* What exact and approximate counting share before they start. */
