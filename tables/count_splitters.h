/* count_splitters.h - the key ranges: splitters from a sample of the whole
 * input (or the first batch); a stage of count_impl.h. */

static int cmp_kkey(const void *a, const void *b)
{
    const kkey x = *(const kkey *)a, y = *(const kkey *)b;
    return x < y ? -1 : x > y;
}

/* parts - 1 splitters from the m sorted keys k: of their d distinct values,
 * the ((j + 1) d / parts)-th for j = 0..parts-2, so that the parts hold
 * about as many distinct n-grams each; 0 when there are no keys. */
static int quantile_splitters(const kkey *k, size_t m, size_t parts, kkey *spl)
{
    size_t d = 0;
    for (size_t i = 0; i < m; i++)
        d += !i || k[i] != k[i - 1];
    if (!d)
        return 0;
    for (size_t i = 0, seen = 0, j = 0; i < m && j + 1 < parts; i++) {
        if (i && k[i] == k[i - 1])
            continue;
        while (j + 1 < parts && (size_t)((u128)(j + 1) * d / parts) == seen)
            spl[j++] = k[i];
        seen++;
    }
    return 1;
}

/* Splitters from m sampled keys, sorted (sorted here unless `sorted`): P - 1
 * of their distinct values at even quantiles. Where the sample misleads,
 * some partitions fill more than others; tables grow from one shared budget,
 * so that costs balance, never correctness or memory. 0 when there are no
 * keys to choose from. */
static int splitters_from(counter *c, kkey *k, size_t m, int sorted)
{
    if (!sorted)
        qsort(k, m, sizeof *k, cmp_kkey);
    if (!quantile_splitters(k, m, c->P, c->spl))
        return 0;
    c->have_spl = 1;
    if (c->ks_est) { /* each range's share of the sample's keys (repeats too) */
        memset(c->ks_est, 0, c->P * sizeof *c->ks_est);
        for (size_t i = 0, p = 0; i < m; i++) {
            while (p + 1 < c->P && c->spl[p] <= k[i])
                p++;
            c->ks_est[p]++;
        }
        c->ks_est_n = m;
    }
    return 1;
}

/* The sample: the n-grams of 256 windows spread evenly over the input (of
 * at most a sixteenth of the budget over `share`: its slack while tables
 * are small), into *k (malloc'ed, *m keys; NULL when the input cannot be
 * opened). */
static void sample_keys(counter *c, size_t share, kkey **out, size_t *out_m)
{
    const eg_count_opts *o = c->o;
    const uint32_t N = o->max_ngram, H = N - 1;
    enum { W = 256, L = 1024 };
    const size_t mem = o->memory ? o->memory : ((size_t)1 << 30);
    size_t most = mem / 16 / sizeof(kkey) / share;
    most = most > 4096 ? most : 4096;
    *out = NULL;
    *out_m = 0;
    const uint64_t total = egc_input_tokens(o);
    if (total == UINT64_MAX)
        return;
    const size_t cap = (size_t)W * L * H < most ? (size_t)W * L * H : most;
    const size_t wl = cap / W / H > H + 1 ? cap / W / H : H + 1; /* tokens per window */
    kkey *k = malloc(cap * sizeof *k + 1);
    uint32_t *x = malloc(L * sizeof *x);
    size_t m = 0;
    uint64_t base = 0; /* the first token of shard i */
    for (size_t i = 0, w = 0; k && x && i < o->n_shards && w < W; i++) {
        eg_shard *s = NULL;
        eg_err e;
        if (eg_shard_open(o->shards[i], &s, &e))
            break;
        const uint64_t n = eg_shard_n_tokens(s);
        for (uint64_t g; w < W && (g = (uint64_t)((u128)w * total / W)) < base + n; w++) {
            const uint64_t at = g - base;
            const size_t len = (size_t)(n - at < wl ? n - at : wl);
            if (eg_shard_read(s, at, len, x, &e))
                break;
            for (size_t j = 0; j < len; j++) {
                uint32_t id = x[j];
                id = o->proj ? (id < o->n_proj ? o->proj[id] : UINT32_MAX) : id;
                x[j] = id < o->vprime ? id : UINT32_MAX;
            }
            for (size_t j = H; j < len; j++) {
                u128 v = x[j];
                int bad = x[j] == UINT32_MAX;
                for (uint32_t q = 1; q <= H; q++) {
                    bad |= x[j - q] == UINT32_MAX;
                    v |= (u128)x[j - q] << (c->bits * q);
                    if (!bad && m < cap)
                        k[m++] = (kkey)((u128)(q + 1) << ORDER_SHIFT | v);
                }
            }
        }
        base += n;
        eg_shard_close(s);
    }
    free(x);
    *out = k;
    *out_m = m;
}

/* The splitters from the whole input: the n-grams of 256 windows of 1024
 * tokens spread evenly over it (a corpus's first block may be unlike the
 * rest). Ids the projection rejects are skipped here: the counting pass
 * reports them. Without keys (or on a read error, reported by the pass) the
 * first batch is used instead (choose_splitters). */
static void sample_splitters(counter *c)
{
    kkey *k = NULL;
    size_t m = 0;
    sample_keys(c, 1, &k, &m);
    if (k && m)
        splitters_from(c, k, m, 0);
    free(k);
}


/* Splitters from a sample of the first batch's keys, when sample_splitters
 * found none. */
static eg_status choose_splitters(counter *c)
{
    const size_t n = c->kn, m = n < ((size_t)1 << 20) ? n : (size_t)1 << 20;
    kkey *k = malloc(m * sizeof *k + 1);
    if (!k)
        return eg_fail(c->err, EG_ENOMEM, "out of memory");
    for (size_t i = 0; i < m; i++) {
        /* a random sample: keys are N-1 per position, so a stride aliases */
        const size_t j = m == n ? i : (size_t)(((u128)mix_key(0, i) * n) >> 64);
        k[i] = KEY_AT(c->khi, c->klo, j);
    }
    splitters_from(c, k, m, 0);
    free(k);
    return EG_OK;
}
