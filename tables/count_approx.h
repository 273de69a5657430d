/* count_approx.h - approximate counting: HyperLogLog + Misra-Gries over the
 * same token blocks (two-word keys only: included by count.c after
 * count_impl.h). */

#define HLL_P 14
#define HLL_M (1u << HLL_P)

typedef struct {
    uint8_t reg[EG_COUNT_MAX_ORDER + 1][HLL_M];
    /* Misra-Gries: k counters per order, open addressing on 2k slots */
    size_t k;
    entry *mg[EG_COUNT_MAX_ORDER + 1];
    size_t mg_n[EG_COUNT_MAX_ORDER + 1];
    uint64_t total[EG_COUNT_MAX_ORDER + 1];
} sketch;

static void mg_rebuild(sketch *sk, uint32_t n, int decrement)
{
    entry *t = sk->mg[n];
    const size_t cap = 2 * sk->k;
    entry *keep = malloc(sk->mg_n[n] * sizeof *keep + 1);
    size_t m = 0;
    for (size_t i = 0; i < cap; i++)
        if (t[i].hi && (!decrement || t[i].count > 1)) {
            if (keep) {
                keep[m] = t[i];
                keep[m].count -= (uint64_t)decrement;
                m++;
            }
        }
    memset(t, 0, cap * sizeof *t);
    for (size_t i = 0; i < m; i++) {
        size_t s = (size_t)(mix_key(keep[i].hi, keep[i].lo) % cap);
        while (t[s].hi)
            s = (s + 1) % cap;
        t[s] = keep[i];
    }
    sk->mg_n[n] = m;
    free(keep);
}

static void mg_add(sketch *sk, uint32_t n, uint64_t hi, uint64_t lo, uint64_t h)
{
    entry *t = sk->mg[n];
    const size_t cap = 2 * sk->k;
    size_t s = (size_t)(h % cap);
    while (t[s].hi) {
        if (t[s].hi == hi && t[s].lo == lo) {
            t[s].count++;
            return;
        }
        s = (s + 1) % cap;
    }
    if (sk->mg_n[n] < sk->k) {
        t[s].hi = hi;
        t[s].lo = lo;
        t[s].count = 1;
        sk->mg_n[n]++;
        return;
    }
    mg_rebuild(sk, n, 1); /* the new item's own decrement cancels its count */
}

static eg_status sketch_sink(counter *c)
{
    sketch *sk = c->sketch;
    for (size_t i = 0; i < c->kn; i++) {
        const uint64_t hi = c->khi[i], lo = c->klo[i], h = mix_key(hi, lo);
        const uint32_t n = (uint32_t)(hi >> 60);
        const uint32_t idx = (uint32_t)(h >> (64 - HLL_P));
        const uint64_t w = h << HLL_P | (1ull << (HLL_P - 1));
        const uint8_t rank = (uint8_t)(__builtin_clzll(w) + 1);
        if (rank > sk->reg[n][idx])
            sk->reg[n][idx] = rank;
        sk->total[n]++;
        if (sk->k)
            mg_add(sk, n, hi, lo, h);
    }
    c->kn = 0;
    return EG_OK;
}

static double hll_estimate(const uint8_t *reg)
{
    double sum = 0;
    unsigned zeros = 0;
    for (unsigned i = 0; i < HLL_M; i++) {
        sum += 1.0 / (double)(1ull << reg[i]);
        zeros += reg[i] == 0;
    }
    const double m = HLL_M, alpha = 0.7213 / (1 + 1.079 / m);
    double e = alpha * m * m / sum;
    if (e <= 2.5 * m && zeros)
        e = m * log((double)m / zeros);
    return e;
}

eg_status eg_count_approx(const eg_count_opts *o, eg_count_stats *st, eg_err *err)
{
    counter c;
    eg_status ret = counter_begin(&c, o, st, sketch_sink, err);
    if (ret)
        return ret;
    c.kcap = 1 << 16;
    c.khi = malloc(c.kcap * 8);
    c.klo = malloc(c.kcap * 8);
    sketch *sk = calloc(1, sizeof *sk);
    if (sk)
        sk->k = o->top_k ? (o->top_k * 64 > 1024 ? o->top_k * 64 : 1024) : 0;
    int ok = c.khi && c.klo && sk && !alloc_block(&c);
    for (uint32_t n = 2; ok && n <= o->max_ngram && sk->k; n++)
        ok = (sk->mg[n] = calloc(2 * sk->k, sizeof(entry))) != NULL;
    if (!ok) {
        ret = eg_fail(err, EG_ENOMEM, "out of memory");
        goto done;
    }
    c.sketch = sk;
    if ((ret = egc_for_each_segment(o, exact_segment, &c, &st->tokens, err)) ||
        (ret = flush_block(&c)))
        goto done;
    for (uint32_t n = 2; n <= o->max_ngram; n++) {
        st->distinct[n] = (uint64_t)llround(hll_estimate(sk->reg[n]));
        st->total[n] = sk->total[n];
        if (!o->top_k)
            continue;
        if (!(st->top[n] = calloc(o->top_k, sizeof *st->top[n]))) {
            ret = eg_fail(err, EG_ENOMEM, "out of memory");
            goto done;
        }
        for (size_t i = 0; i < 2 * sk->k; i++) {
            const entry *e = &sk->mg[n][i];
            if (!e->hi)
                continue;
            eg_ngram_top t;
            memset(&t, 0, sizeof t);
            u128 v = key_of(e);
            for (uint32_t k = n; k-- > 0;) {
                t.ids[k] = (uint32_t)(v & c.idmask);
                v >>= c.bits;
            }
            t.count = e->count;
            egc_top_offer(st, n, o->top_k, &t);
        }
        qsort(st->top[n], st->n_top[n], sizeof *st->top[n], egc_cmp_top);
    }
done:
    if (ret)
        eg_count_stats_free(st);
    for (uint32_t n = 0; sk && n <= EG_COUNT_MAX_ORDER; n++)
        free(sk->mg[n]);
    free(sk);
    counter_free(&c);
    return ret;
}
