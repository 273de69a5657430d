/* count_sort.h - sorting a partition's entries (comparison sort, and LSD radix
 * for one-word keys) and compacting the tables; a stage of count_impl.h. */

static inline int entry_lt(const entry *a, const entry *b)
{
    return key_of(a) < key_of(b);
}

/* Introsort-free quicksort with an inlined comparison (median of three,
 * insertion sort for short ranges); recursion on the smaller side. */
static void sort_entries(entry *a, size_t n)
{
    while (n > 24) {
        entry *m = a + n / 2, *z = a + n - 1;
        if (entry_lt(m, a)) {
            entry t = *m; *m = *a; *a = t;
        }
        if (entry_lt(z, m)) {
            entry t = *z; *z = *m; *m = t;
            if (entry_lt(m, a)) {
                t = *m; *m = *a; *a = t;
            }
        }
        const entry piv = *m;
        size_t i = 0, j = n - 1;
        for (;;) {
            while (entry_lt(&a[i], &piv))
                i++;
            while (entry_lt(&piv, &a[j]))
                j--;
            if (i >= j)
                break;
            entry t = a[i];
            a[i] = a[j];
            a[j] = t;
            i++;
            j--;
        }
        /* [0, j] <= piv <= [j+1, n) */
        size_t left = j + 1;
        if (left < n - left) {
            sort_entries(a, left);
            a += left;
            n -= left;
        } else {
            sort_entries(a + left, n - left);
            n = left;
        }
    }
    for (size_t i = 1; i < n; i++) {
        entry v = a[i];
        size_t k = i;
        while (k && entry_lt(&v, &a[k - 1])) {
            a[k] = a[k - 1];
            k--;
        }
        a[k] = v;
    }
}

#if KW == 1
/* LSD radix sort of one-word keys, 11 bits a pass, skipping the digits in
 * which every key agrees; tmp holds n entries. */
static void radix_sort_entries(entry *a, entry *tmp, size_t n)
{
    enum { RB = 11, R = 1 << RB, D = (64 + RB - 1) / RB };
    if (n < 64) {
        sort_entries(a, n);
        return;
    }
    size_t (*cnt)[R] = calloc(D, sizeof *cnt);
    if (!cnt) {
        sort_entries(a, n);
        return;
    }
    uint64_t any = 0, all = ~0ull;
    for (size_t i = 0; i < n; i++) {
        const uint64_t k = a[i].lo;
        any |= k;
        all &= k;
        for (unsigned d = 0; d < D; d++)
            cnt[d][(k >> (RB * d)) & (R - 1)]++;
    }
    entry *src = a, *dst = tmp;
    for (unsigned d = 0; d < D; d++) {
        if ((((any ^ all) >> (RB * d)) & (R - 1)) == 0)
            continue; /* every key has the same digit here */
        size_t off = 0;
        for (unsigned v = 0; v < R; v++) {
            const size_t c = cnt[d][v];
            cnt[d][v] = off;
            off += c;
        }
        for (size_t i = 0; i < n; i++)
            dst[cnt[d][(src[i].lo >> (RB * d)) & (R - 1)]++] = src[i];
        entry *x = src;
        src = dst;
        dst = x;
    }
    if (src != a)
        memcpy(a, src, n * sizeof *a);
    free(cnt);
}
#endif

/* Compact each partition's entries to its front (counting the bytes its
 * records take in the counts file), in parallel. */
static void compact_partitions(counter *c)
{
    const long long P = (long long)c->P;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(c->nt)
#endif
    for (long long p = 0; p < P; p++) {
        ptable *t = &c->part[p];
        t->used = used_entries(t->slot, t->cap, t->slot);
        uint64_t bytes = 0;
        for (size_t i = 0; i < t->used; i++)
            bytes += 4 * (uint64_t)(key_of(&t->slot[i]) >> ORDER_SHIFT) + 8;
        c->pbytes[p] = bytes;
    }
}

/* The radix sort's buffer (KW 1): entries of the fullest partition. */
static entry *sort_buffer(const counter *c)
{
#if KW == 1
    size_t most = 0;
    for (size_t p = 0; p < c->P; p++)
        most = c->part[p].used > most ? c->part[p].used : most;
    return malloc(most * sizeof(entry) + 1);
#else
    (void)c;
    return NULL;
#endif
}

/* Sort a compacted partition (tmp: sort_buffer's, or NULL). */
static void sort_partition(ptable *t, entry *tmp)
{
#if KW == 1
    if (tmp) {
        radix_sort_entries(t->slot, tmp, t->used);
        return;
    }
#else
    (void)tmp;
#endif
    sort_entries(t->slot, t->used);
}

/* Compact and sort every partition: end to end, they are sorted. */
static void sort_partitions(counter *c)
{
    compact_partitions(c);
    const long long P = (long long)c->P;
#ifdef _OPENMP
#pragma omp parallel num_threads(c->nt)
#endif
    {
        entry *tmp = sort_buffer(c);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (long long p = 0; p < P; p++)
            sort_partition(&c->part[p], tmp);
        free(tmp);
    }
}
