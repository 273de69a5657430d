/* count_runs.h - spilled runs: sorted sources (a table, or a zstd frame of a
 * run on disk), the loser-tree k-way merge over them, and spilling the tables
 * as a run; a stage of count_impl.h. */

typedef struct {
    /* in memory (a sorted table) */
    const entry *arr;
    size_t n, i;
    /* or a run file */
    FILE *f;
    ZSTD_DStream *zd;
    unsigned char *in;
    size_t in_len, in_pos;
    entry *buf;
    size_t buf_n, buf_i;
    uint64_t left; /* bytes of the run's frame not read yet */
    int eof;
    entry cur;
} source;

#define RUN_BUF 1024 /* entries decoded at a time, per run */
#define RUN_IN 16384 /* compressed bytes read at a time, per run */

static int source_next(source *s)
{
    if (!s->f) {
        if (s->i >= s->n)
            return 0;
        s->cur = s->arr[s->i++];
        return 1;
    }
    while (s->buf_i >= s->buf_n) {
        if (s->eof)
            return 0;
        ZSTD_outBuffer ob = {s->buf, RUN_BUF * sizeof(entry), 0};
        while (ob.pos < ob.size && !s->eof) {
            if (s->in_pos == s->in_len) {
                const size_t want = RUN_IN;
                s->in_len = fread(s->in, 1, s->left < want ? (size_t)s->left : want, s->f);
                s->left -= s->in_len;
                s->in_pos = 0;
                if (s->in_len == 0) {
                    s->eof = 1;
                    break;
                }
            }
            ZSTD_inBuffer ib = {s->in, s->in_len, s->in_pos};
            size_t r = ZSTD_decompressStream(s->zd, &ob, &ib);
            s->in_pos = ib.pos;
            if (ZSTD_isError(r)) {
                s->eof = 1;
                return -1;
            }
        }
        if (ob.pos % sizeof(entry))
            return -1;
        s->buf_n = ob.pos / sizeof(entry);
        s->buf_i = 0;
    }
    s->cur = s->buf[s->buf_i++];
    return 1;
}

static void source_close(source *s)
{
    if (s->f)
        fclose(s->f);
    if (s->zd)
        ZSTD_freeDStream(s->zd);
    free(s->in);
    free(s->buf);
}

/* A loser tree over the sources: tree[0] is the current winner, tree[1..k)
 * the loser of each match; key[] caches each leaf's current key, UINT64_MAX
 * in both words once the source is done (real keys have an order <= 8 in the
 * top bits). One comparison per level when the winner advances. */
typedef struct {
    source *src;
    size_t k; /* leaves: a power of two >= the number of sources */
    uint32_t *tree;
    uint64_t (*key)[2];
    void *heap; /* the one allocation (tree and keys) */
} merger;

static inline int leaf_less(const merger *m, uint32_t a, uint32_t b)
{
    const uint64_t *x = m->key[a], *y = m->key[b];
    return x[0] != y[0] ? x[0] < y[0] : x[1] != y[1] ? x[1] < y[1] : a < b;
}

static void leaf_set(merger *m, uint32_t i, int live)
{
    m->key[i][0] = live ? E_HI(m->src[i].cur) : UINT64_MAX;
    m->key[i][1] = live ? m->src[i].cur.lo : UINT64_MAX;
}

static uint32_t lt_build(merger *m, size_t node)
{
    if (node >= m->k)
        return (uint32_t)(node - m->k);
    uint32_t a = lt_build(m, 2 * node), b = lt_build(m, 2 * node + 1);
    if (leaf_less(m, b, a)) {
        m->tree[node] = a;
        return b;
    }
    m->tree[node] = b;
    return a;
}

/* Start the merge: every source positioned on its first entry. */
static int merger_init(merger *m, source *src, size_t n)
{
    m->src = src;
    m->k = 1;
    while (m->k < n)
        m->k *= 2;
    m->heap = malloc(m->k * (sizeof *m->tree + sizeof *m->key));
    if (!m->heap)
        return -1;
    m->key = m->heap;
    m->tree = (uint32_t *)(m->key + m->k);
    for (size_t i = 0; i < m->k; i++) {
        int r = i < n ? source_next(&src[i]) : 0;
        if (r < 0)
            return -1;
        leaf_set(m, (uint32_t)i, r);
    }
    m->tree[0] = lt_build(m, 1);
    return 0;
}

/* The next n-gram with its summed count; 0 at the end, -1 on a bad run. */
static int merger_next(merger *m, entry *out)
{
    uint32_t w = m->tree[0];
    if (m->key[w][0] == UINT64_MAX && m->key[w][1] == UINT64_MAX)
        return 0;
    *out = m->src[w].cur;
    out->count = 0;
    while (m->key[w][0] == E_HI(*out) && m->key[w][1] == out->lo) {
        source *s = &m->src[w];
        out->count += s->cur.count;
        int r = source_next(s);
        if (r < 0)
            return -1;
        leaf_set(m, w, r);
        for (size_t t = (w + m->k) / 2; t; t /= 2)
            if (leaf_less(m, m->tree[t], w)) {
                uint32_t l = m->tree[t];
                m->tree[t] = w;
                w = l;
            }
        m->tree[0] = w;
    }
    return 1;
}

/* ---- spilling ------------------------------------------------------------------ */

static eg_status spill(counter *c)
{
    sort_partitions(c);
    char path[1100];
    snprintf(path, sizeof path, "%s.run%zu.zst", c->tmp_prefix, c->n_runs);
    FILE *f = fopen(path, "wb");
    if (!f)
        return eg_fail(c->err, EG_EIO, "%s: cannot create a spill run: %s", path,
                       strerror(errno));
    if (c->n_runs == c->runs_cap) {
        c->runs_cap = c->runs_cap ? 2 * c->runs_cap : 8;
        char **r = realloc(c->runs, c->runs_cap * sizeof *r);
        if (!r) {
            fclose(f);
            unlink(path);
            return eg_fail(c->err, EG_ENOMEM, "out of memory");
        }
        c->runs = r;
    }
    c->runs[c->n_runs++] = strdup(path);
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    size_t outcap = ZSTD_CStreamOutSize();
    unsigned char *out = malloc(outcap);
    eg_status st = EG_OK;
    if (!cc || !out || !c->runs[c->n_runs - 1]) {
        st = eg_fail(c->err, EG_ENOMEM, "out of memory");
        goto done;
    }
    ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, 1);
    /* a 128 KiB window: the final merge holds a decompressor per run and thread */
    ZSTD_CCtx_setParameter(cc, ZSTD_c_windowLog, 17);
    /* the partitions in order are one sorted run, each its own zstd frame
     * (so that the final merge can take the partitions apart) */
    uint64_t *off = realloc(c->run_off, c->n_runs * (c->P + 1) * sizeof *off);
    if (!off) {
        st = eg_fail(c->err, EG_ENOMEM, "out of memory");
        goto done;
    }
    c->run_off = off;
    off += (c->n_runs - 1) * (c->P + 1);
    uint64_t at = 0;
    for (size_t p = 0; p < c->P; p++) {
        off[p] = at;
        ZSTD_inBuffer ib = {c->part[p].slot, c->part[p].used * sizeof(entry), 0};
        for (size_t left = 1; left;) {
            ZSTD_outBuffer ob = {out, outcap, 0};
            left = ZSTD_compressStream2(cc, &ob, &ib, ZSTD_e_end);
            if (ZSTD_isError(left) || fwrite(out, 1, ob.pos, f) != ob.pos) {
                st = eg_fail(c->err, EG_EIO, "%s: writing a spill run failed", path);
                goto done;
            }
            at += ob.pos;
        }
    }
    off[c->P] = at;
    for (size_t p = 0; p < c->P; p++) {
        memset(c->part[p].slot, 0, c->part[p].cap * sizeof(entry));
        c->part[p].used = 0; /* keeps its grown size: it will fill again */
        c->part[p].stuck = 0;
    }
    c->spills++;
done:
    if (fclose(f) && !st)
        st = eg_fail(c->err, EG_EIO, "%s: writing a spill run failed", path);
    ZSTD_freeCCtx(cc);
    free(out);
    return st;
}
