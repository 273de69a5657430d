/* count_write.h - the counts file: records encoded with their statistics, the
 * header, and the two writers (sorted partitions at known offsets without
 * spills; the per-range merge of tables and runs, in order, with them); a
 * stage of count_impl.h. */

/* ---- the counts file -------------------------------------------------------------- */

#define OUT_STAGE ((size_t)4 << 20)             /* per writer: see eg_seqout */

/* Encode one merged n-gram as a counts-file record at `out` (returns its
 * size) and account for it in the statistics. */
static size_t emit_record(const counter *c, const entry *e, eg_count_stats *st,
                          unsigned char *out)
{
    const u128 key = key_of(e);
    const uint32_t n = (uint32_t)(key >> ORDER_SHIFT);
    const uint64_t count = e->count;
    uint32_t ids[EG_COUNT_MAX_ORDER];
#if KW == 1
    uint64_t v = e->lo; /* one-word arithmetic: ids fill the low 60 bits */
#else
    u128 v = key;
#endif
    for (uint32_t k = n; k-- > 0;) {
        ids[k] = (uint32_t)(v & c->idmask);
        v >>= c->bits;
    }
    for (uint32_t k = 0; k < n; k++)
        eg_put_le32(out + 4 * k, ids[k]);
    eg_put_le64(out + 4 * n, count);
    st->distinct[n]++;
    st->total[n] += count;
    st->singletons[n] += count == 1;
    st->fof[n][fof_bucket(count)]++;
    if (c->o->top_k && top_may_take(st, n, c->o->top_k, count)) {
        eg_ngram_top t;
        memset(&t, 0, sizeof t);
        memcpy(t.ids, ids, n * sizeof *ids);
        t.count = count;
        egc_top_offer(st, n, c->o->top_k, &t);
    }
    return 4 * (size_t)n + 8;
}

/* Records of m runs of sorted keys (base + rk[j], ending one before key
 * index re[j]; *prev: where the first starts), at out; returns their bytes.
 * Runs of one order (nearly always) take a loop with the order fixed and
 * the statistics kept locally. */
#define RUNS_W 1024 /* runs gathered at a time */
static size_t emit_runs(const counter *c, eg_count_stats *st, unsigned char *out, kkey base,
                        const uint64_t *rk, const uint64_t *re, size_t m, size_t *prev)
{
    if (!m)
        return 0;
    size_t bytes = 0, at = *prev;
    const size_t first = at;
    *prev = (size_t)re[m - 1];
    const uint32_t n = (uint32_t)((base + rk[0]) >> ORDER_SHIFT);
    if ((uint32_t)((base + rk[m - 1]) >> ORDER_SHIFT) != n) {
        for (size_t j = 0; j < m; j++) {
            const kkey key = base + rk[j];
            entry e;
            e.lo = (uint64_t)key;
            E_SET_HI(e, (uint64_t)(key >> 32 >> 32));
            e.count = (uint64_t)(re[j] - at); /* narrows to the entry's count type: it fits */
            at = (size_t)re[j];
            bytes += emit_record(c, &e, st, out + bytes);
        }
        return bytes;
    }
    const unsigned bits = c->bits;
    const uint64_t mask = c->idmask;
    const size_t rec = 4 * (size_t)n + 8, top_k = c->o->top_k;
    uint64_t singles = 0, fof[EG_FOF_BUCKETS] = {0};
    for (size_t j = 0; j < m; j++) {
        const uint64_t count = re[j] - at;
        at = (size_t)re[j];
#if KW == 1
        uint64_t v = (uint64_t)(base + rk[j]);
#else
        u128 v = base + rk[j];
#endif
        unsigned char *p = out + bytes;
        for (uint32_t k = n; k-- > 0;) {
            eg_put_le32(p + 4 * k, (uint32_t)(v & mask));
            v >>= bits;
        }
        eg_put_le64(p + 4 * n, count);
        bytes += rec;
        singles += count == 1;
        fof[fof_bucket(count)]++;
        if (top_k && top_may_take(st, n, top_k, count)) {
            eg_ngram_top t;
            memset(&t, 0, sizeof t);
            for (uint32_t k = 0; k < n; k++)
                t.ids[k] = eg_get_le32(p + 4 * k);
            t.count = count;
            egc_top_offer(st, n, top_k, &t);
        }
    }
    st->distinct[n] += m;
    st->total[n] += re[m - 1] - first;
    st->singletons[n] += singles;
    for (unsigned b = 0; b < EG_FOF_BUCKETS; b++)
        st->fof[n][b] += fof[b];
    return bytes;
}

/* A range's runs gathered for emit_runs, RUNS_W at a time, into records at
 * out (bytes so far in `bytes`). runs_add offers the run of relative key k
 * ending before key index `end`, kept when `keep` (no branch per key). */
typedef struct {
    uint64_t rk[RUNS_W], re[RUNS_W];
    size_t m, prev, bytes;
} runs;

static inline void runs_add(const counter *c, eg_count_stats *st, unsigned char *out, kkey base,
                            runs *r, uint64_t k, uint64_t end, int keep)
{
    r->rk[r->m] = k;
    r->re[r->m] = end;
    r->m += keep != 0;
    if (r->m == RUNS_W) {
        r->bytes += emit_runs(c, st, out + r->bytes, base, r->rk, r->re, r->m, &r->prev);
        r->m = 0;
    }
}

static inline size_t runs_end(const counter *c, eg_count_stats *st, unsigned char *out, kkey base,
                              runs *r)
{
    return r->bytes + emit_runs(c, st, out + r->bytes, base, r->rk, r->re, r->m, &r->prev);
}

/* A counts file being written: its temporary name, the threads' statistics
 * (with their top-k heaps), the file, and for the writers that write in
 * order, their sequential writer. */
typedef struct {
    char tmp[1100];
    eg_count_stats *ts;
    eg_outfile w;
    eg_seqout q;
} counts_out;

/* The start of writing a counts file (out zeroed by the caller); `ordered`:
 * the records follow the header through out->q (only in `ordered`). Whatever
 * happens, finish_counts ends it. */
static eg_status begin_counts(counter *c, counts_out *out, int ordered)
{
    const eg_count_opts *o = c->o;
    out->w.fd = out->w.dfd = -1;
    snprintf(out->tmp, sizeof out->tmp, "%s.tmp.%ld", o->output, (long)getpid());
    if (!(out->ts = calloc((size_t)c->nt, sizeof *out->ts)))
        return eg_fail(c->err, EG_ENOMEM, "out of memory");
    for (int t = 0; t < c->nt && o->top_k; t++)
        for (uint32_t n = 2; n <= o->max_ngram; n++)
            if (!(out->ts[t].top[n] = calloc(o->top_k, sizeof *out->ts[t].top[n])))
                return eg_fail(c->err, EG_ENOMEM, "out of memory");
    if (eg_outfile_open(&out->w, out->tmp))
        return eg_fail(c->err, EG_EIO, "%s: cannot create: %s", out->tmp, strerror(errno));
    if (ordered) {
        if (eg_seqout_init_async(&out->q, &out->w, OUT_STAGE))
            return eg_fail(c->err, EG_ENOMEM, "out of memory");
        eg_seqout_seek(&out->q, header_bytes(o->max_ngram));
    }
    return EG_OK;
}

/* The end of writing a counts file (the records flushed): the threads'
 * statistics summed, the header, fsync, and the rename into place (or the
 * file removed on error). */
static eg_status finish_counts(counter *c, eg_count_stats *st, counts_out *out, eg_status ret)
{
    const eg_count_opts *o = c->o;
    const uint32_t N = o->max_ngram;
    const int T = c->nt;
    eg_count_stats *ts = out->ts;
    eg_outfile *w = &out->w;
    const char *tmp = out->tmp;
    eg_seqout_free(&out->q);
    if (ret)
        goto done;
    if ((ret = egc_stats_sum(st, ts, T, N, o->top_k, c->err)))
        goto done;
    if (!c->meta) { /* what the file counted (the shards fingerprinted) */
        egc_meta m;
        if (!(ret = egc_meta_from_opts(o, 0, o->n_shards, &m, c->err)))
            ret = egc_meta_json(&m, &c->meta, &c->meta_len, c->err);
        egc_meta_free(&m);
    }
done:
    ret = egc_finish_file(w, tmp, o->output, N, o->vprime, o->pad, st, c->meta, c->meta_len, ret,
                          c->err);
    for (int t = 0; ts && t < T; t++)
        eg_count_stats_free(&ts[t]);
    free(ts);
    return ret;
}

/* Without spills the sorted partitions laid end to end are the output, and
 * each partition's place in the file is known once they are compacted: the
 * threads sort and write whole partitions, each at its offset, with pwrite. */
static eg_status write_counts_ranges(counter *c, eg_count_stats *st)
{
    const eg_count_opts *o = c->o;
    const uint32_t N = o->max_ngram;
    const int T = c->nt;
    const size_t P = c->P;
    compact_partitions(c);
    uint64_t at = header_bytes(N);
    for (size_t p = 0; p <= P; p++) { /* pbytes[p] becomes partition p's offset */
        const uint64_t b = p < P ? c->pbytes[p] : 0;
        c->pbytes[p] = at;
        at += b;
    }
    counts_out out = {0};
    eg_status ret = begin_counts(c, &out, 0);
    if (ret)
        goto done;
    /* the whole length first: the writes then land inside the file */
    if (ftruncate(out.w.fd, (off_t)at)) {
        ret = eg_fail(c->err, EG_EIO, "%s: cannot size: %s", out.tmp, strerror(errno));
        goto done;
    }
    int failed = 0;
    const long long PP = (long long)P;
#ifdef _OPENMP
#pragma omp parallel num_threads(T) reduction(| : failed)
#endif
    {
        const int t = thread_num();
        entry *stmp = sort_buffer(c);
        eg_seqout q;
        failed |= eg_seqout_init(&q, &out.w, OUT_STAGE) != 0;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (long long p = 0; p < PP; p++) {
            if (failed)
                continue;
            ptable *pt = &c->part[p];
            sort_partition(pt, stmp);
            eg_seqout_seek(&q, c->pbytes[p]);
            for (size_t i = 0; i < pt->used && !failed; i++) {
                unsigned char *r = eg_seqout_room(&q, MAX_RECORD);
                if (!r)
                    failed = 1;
                else
                    q.n += emit_record(c, &pt->slot[i], &out.ts[t], r);
            }
            failed |= eg_seqout_flush(&q) != 0;
        }
        eg_seqout_free(&q);
        free(stmp);
    }
    if (failed)
        ret = eg_fail(c->err, EG_EIO, "%s: write failed", out.tmp);
done:
    return finish_counts(c, st, &out, ret);
}

/* With spills, partition p of the output merges table p with frame p of
 * every run. The threads merge whole partitions into a buffer of their own
 * (a slice of the key buffer, idle by now: no memory beyond the budget) and
 * write them in order (OpenMP `ordered`); a partition whose records outgrow
 * the buffer finishes its merge in its turn, writing as it goes. */
typedef struct {
    merger m;
    source *src;
    unsigned char *buf;
    size_t wn, cap;
} part_merge;

/* Merge more of the partition into the buffer; 1 when done, 0 when the
 * buffer is full, -1 on a bad run. */
static int merge_some(counter *c, part_merge *pm, eg_count_stats *ts)
{
    entry e;
    int r;
    while (pm->wn + MAX_RECORD <= pm->cap) {
        if ((r = merger_next(&pm->m, &e)) <= 0)
            return r < 0 ? -1 : 1;
        pm->wn += emit_record(c, &e, ts, pm->buf + pm->wn);
    }
    return 0;
}

static eg_status write_counts(counter *c, eg_count_stats *st)
{
    if (c->n_runs == 0)
        return write_counts_ranges(c, st);
    sort_partitions(c);
    counts_out out = {0};
    eg_status ret = begin_counts(c, &out, 1);
    if (ret)
        return finish_counts(c, st, &out, ret);
    const size_t R = c->n_runs, P = c->P;
    const long long PP = (long long)P;
    int failed = 0, bad_run = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(c->nt) reduction(| : failed, bad_run)
#endif
    {
        const int t = thread_num();
        part_merge pm = {0};
        pm.src = calloc(1 + R, sizeof *pm.src);
        pm.cap = c->kcap * sizeof *c->klo / (size_t)c->nt;
        pm.buf = (unsigned char *)c->klo + (size_t)t * pm.cap;
        failed |= !pm.src || pm.cap < MAX_RECORD;
        for (size_t r = 0; !failed && r < R; r++) {
            source *s = &pm.src[1 + r];
            s->f = fopen(c->runs[r], "rb");
            s->zd = ZSTD_createDStream();
            s->in = malloc(RUN_IN);
            s->buf = malloc(RUN_BUF * sizeof(entry));
            failed |= !s->f || !s->zd || !s->in || !s->buf;
        }
#ifdef _OPENMP
#pragma omp for ordered schedule(dynamic, 1)
#endif
        for (long long p = 0; p < PP; p++) {
            int done = 1;
            if (!failed) {
                pm.src[0] = (source){.arr = c->part[p].slot, .n = c->part[p].used};
                for (size_t r = 0; r < R; r++) {
                    source *s = &pm.src[1 + r];
                    const uint64_t *off = c->run_off + r * (P + 1);
                    s->left = off[p + 1] - off[p];
                    s->in_len = s->in_pos = s->buf_n = s->buf_i = 0;
                    s->eof = 0;
                    ZSTD_initDStream(s->zd);
                    failed |= fseeko(s->f, (off_t)off[p], SEEK_SET) != 0;
                }
                pm.wn = 0;
                if (!failed && merger_init(&pm.m, pm.src, 1 + R))
                    bad_run = 1;
                done = failed || bad_run ? 1 : merge_some(c, &pm, &out.ts[t]);
                bad_run |= done < 0;
            }
#ifdef _OPENMP
#pragma omp ordered
#endif
            for (;;) {
                if (failed || bad_run)
                    break;
                if (pm.wn && eg_seqout_write(&out.q, pm.buf, pm.wn)) {
                    failed = 1;
                    break;
                }
                pm.wn = 0;
                if (done)
                    break;
                done = merge_some(c, &pm, &out.ts[t]);
                bad_run |= done < 0;
            }
            free(pm.m.heap);
            pm.m.heap = NULL;
        }
        for (size_t r = 0; pm.src && r < R; r++)
            source_close(&pm.src[1 + r]);
        free(pm.src);
    }
    if (bad_run)
        ret = eg_fail(c->err, EG_EFORMAT, "a spill run is corrupt");
    else if (failed)
        ret = eg_fail(c->err, EG_EIO, "%s: write failed", out.tmp);
    else if (eg_seqout_flush(&out.q))
        ret = eg_fail(c->err, EG_EIO, "%s: write failed: %s", out.tmp, strerror(errno));
    return finish_counts(c, st, &out, ret);
}
