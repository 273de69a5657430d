/* count_driver.h - exact counting's driver: the budget divided, the method
 * chosen (partition first, else tables), and eg_count_run per width; a stage
 * of count_impl.h. */

static eg_status counter_begin(counter *c, const eg_count_opts *o, eg_count_stats *st,
                               eg_status (*sink)(counter *), eg_err *err)
{
    if (!st)
        return eg_fail(err, EG_EINVAL, "count: NULL statistics");
    memset(st, 0, sizeof *st);
    memset(c, 0, sizeof *c);
    eg_status ret = egc_check_opts(o, err);
    if (ret)
        return ret;
    c->o = o;
    c->err = err;
    c->sink = sink;
    c->bits = egc_id_bits(o->vprime);
    c->idmask = (1ull << c->bits) - 1;
    if (o->max_ngram * c->bits > 124)
        return eg_fail(err, EG_EUNSUPPORTED,
                       "count: %u-grams of %u-bit ids do not fit a 124-bit key", o->max_ngram,
                       c->bits);
    return EG_OK;
}

/* What both exact methods do first: the shared checks, the output path and
 * the threads. */
static eg_status exact_begin(counter *c, const eg_count_opts *o, eg_count_stats *st,
                             eg_status (*sink)(counter *), eg_err *err)
{
    eg_status ret = counter_begin(c, o, st, sink, err);
    if (ret)
        return ret;
    if (!o->output)
        return eg_fail(err, EG_EINVAL, "count: no output path");
#ifdef _OPENMP
    c->nt = o->n_threads > 0 ? o->n_threads : omp_get_max_threads();
#else
    c->nt = 1;
#endif
    return EG_OK;
}

/* Partition first (see above), where the key stream fits 60% of the budget;
 * *declined (nothing done, st cleared) where it does not, or where a key
 * range outgrew a thread's share of the rest: then the tables count. */
static eg_status count_partitioned(const eg_count_opts *o, eg_count_stats *st, eg_err *err,
                                   int *declined)
{
    counter c;
    *declined = 0;
    eg_status ret = exact_begin(&c, o, st, scatter_block, err);
    c.sink_tokens = 1;
    if (ret)
        return ret;
    const size_t mem = o->memory ? o->memory : ((size_t)1 << 30);
    const uint64_t tokens = egc_input_tokens(o), H = o->max_ngram - 1;
    *declined = 1; /* until the stream is known to fit */
    if (tokens == UINT64_MAX || mem < ((size_t)1 << 20) || tokens > (uint64_t)SIZE_MAX / 64)
        return EG_OK; /* the tables report what is wrong */
    const size_t keys = (size_t)(tokens * H);
    c.kcap = mem / 32 / sizeof(kkey);
    c.kcap = c.kcap < ((size_t)8 << 20) ? c.kcap : (size_t)8 << 20;
    if (c.kcap < 4 * (size_t)o->max_ngram)
        return EG_OK;
    /* about 64 Ki keys each, so that a range's table stays in cache, but at
     * most 2048 ranges: beyond that the scatter's lines and lookups spill
     * out of cache themselves (measured: 2048 beat 1024, 4096 and 16384) */
    c.P = 256;
    while (c.P < 2048 && keys / c.P > 65536)
        c.P *= 2;
    const size_t chunks = (keys + CHUNK - 1) / CHUNK + (size_t)c.nt * c.P;
    if (chunks >= NO_CHUNK)
        return EG_OK;
    const size_t fixed = chunks * (CHUNK_BYTES + sizeof(uint32_t)) +
                         c.kcap * (sizeof(kkey) + 5) + (size_t)c.nt * c.P * (12 + 64) +
                         c.P * (sizeof(kkey) + 1);
    if (fixed > mem / 10 * 6)
        return EG_OK;
    c.ks_chunks = chunks;
    c.ks_bytes = chunks * CHUNK_BYTES;
    c.ks = eg_big_alloc(c.ks_bytes);
    c.ks_link = malloc(chunks * sizeof *c.ks_link);
    c.ks_head = malloc((size_t)c.nt * c.P * sizeof *c.ks_head);
    c.ks_tail = malloc((size_t)c.nt * c.P * sizeof *c.ks_tail);
    c.ks_fill = malloc((size_t)c.nt * c.P * sizeof *c.ks_fill);
    c.ks_line = aligned_alloc(64, (size_t)c.nt * c.P * 64);
    c.ks_base = malloc(c.P * sizeof *c.ks_base);
    c.ks_kb = calloc(c.P, 1);
    c.klo = malloc(c.kcap * sizeof *c.klo);
#if KW == 2
    c.khi = malloc(c.kcap * sizeof *c.khi);
#endif
    c.spl = calloc(c.P, sizeof *c.spl);
    c.ks_est = calloc(c.P, sizeof *c.ks_est);
    ltable *lts = calloc((size_t)c.nt, sizeof *lts);
    size_t *hist = malloc((size_t)c.nt * RADIX_HIST * sizeof *hist);
    if (!c.ks || !c.ks_link || !c.ks_head || !c.ks_tail || !c.ks_fill || !c.ks_line ||
        !c.ks_base || !c.ks_kb || !c.klo || (KW == 2 && !c.khi) || !c.spl || !c.ks_est || !lts ||
        !hist || alloc_block(&c)) {
        free(lts);
        free(hist);
        counter_free(&c);
        return EG_OK;
    }
    *declined = 0;
    for (int t = 0; t < c.nt; t++) {
        lts[t].allowed = (mem - fixed) / (size_t)c.nt;
        lts[t].hint = keys / c.P; /* the first range: its share of the keys */
    }
    st->buffer_bytes = c.ks_bytes + c.kcap * sizeof(kkey);
    const double t0 = now_s();
    sample_splitters(&c);
    if (c.have_spl)
        range_bases(&c);
    /* passes are planned to about 1/passes of the stream (estimated from the
     * sample) each; the window they may fill is 8/7 of that (the estimate's
     * slack); a pass whose ranges outgrow it is redone with fewer */
    size_t window = chunks, target = chunks / 8 * 7;
    c.passes = 1;
    if (c.have_spl && c.ks_est_n) {
        const double stream = plan_chunks(&c, keys);
        const uint32_t want = o->passes ? o->passes
                                        : stream * CHUNK_BYTES > (double)(128u << 20) ? 3 : 1;
        if (want > 1 && (size_t)(stream / want * 8 / 7) + 1 < chunks) {
            window = (size_t)(stream / want * 8 / 7) + 1;
            target = window / 8 * 7;
        }
        size_t n = 0;
        for (size_t p0 = 0; p0 < c.P; n++)
            p0 = plan_pass(&c, p0, target, keys);
        c.passes = (uint32_t)n;
    }
    counts_out out = {0};
    ret = begin_counts(&c, &out, 1);
    double t_scatter = 0;
    int failed = 0, big = 0;
    for (size_t p0 = 0; !ret && p0 < c.P; c.pass++) {
        size_t p1 = plan_pass(&c, p0, target, keys);
        c.ks_limit = window;
        const double ta = now_s();
        for (;;) { /* the pass; again with fewer ranges when they outgrow the window */
            const kkey lowest = (kkey)2 << ORDER_SHIFT;
            c.g_p0 = p0;
            c.g_p1 = p1;
            c.g_lo = p0 ? c.spl[p0 - 1] : lowest;
            c.g_span = range_end(&c, p1 - 1) - c.g_lo;
            if (tree_build(&c, p0, p1)) {
                ret = eg_fail(c.err, EG_ENOMEM, "out of memory");
                break;
            }
            c.ks_next = 0;
            for (size_t i = 0; i < (size_t)c.nt * c.P; i++) {
                c.ks_head[i] = c.ks_tail[i] = NO_CHUNK;
                c.ks_fill[i] = CHUNK_BYTES;
            }
            populate_chunks(&c, 0);
            ret = egc_for_each_segment(o, exact_segment, &c, &st->tokens, err);
            if (!ret)
                ret = flush_block(&c);
            if (!ret || !c.ks_over || c.ks_limit == chunks)
                break;
            c.ks_over = 0; /* fewer ranges; one range gets the whole reservation */
            c.xn = 0;
            if (p1 - p0 > 1)
                p1 = p0 + (p1 - p0) / 2;
            else
                c.ks_limit = chunks;
            c.passes++;
            c.pass++;
            st->passes_redone++;
        }
        if (!ret)
            drain_lines(&c);
        t_scatter += now_s() - ta;
        if (!ret) {
            write_ranges(&c, &out, lts, hist, p0, p1, &failed, &big);
            if (big)
                ret = eg_fail(c.err, EG_ENOMEM, "count: a key range outgrew its share of the budget");
            else if (failed)
                ret = eg_fail(c.err, EG_EIO, "%s: write failed: %s", out.tmp, strerror(errno));
        }
        p0 = p1;
    }
    if (!ret && eg_seqout_flush(&out.q))
        ret = eg_fail(c.err, EG_EIO, "%s: write failed: %s", out.tmp, strerror(errno));
    ret = finish_counts(&c, st, &out, ret);
    st->seconds_count = t_scatter;
    st->seconds_merge = now_s() - t0 - t_scatter;
    st->key_words = KW;
    st->entry_bytes = (uint32_t)sizeof(entry);
    st->method = EG_COUNT_PARTITION;
    st->partitions = (uint32_t)c.P;
    st->passes = c.passes;
    if (ret)
        eg_count_stats_free(st);
    for (int t = 0; t < c.nt; t++) {
        free(lts[t].slot);
        free(lts[t].tmp);
        free(lts[t].ka);
        free(lts[t].kt);
        free(lts[t].out);
        free(lts[t].cnt);
    }
    free(lts);
    free(hist);
    counter_free(&c);
    if (big) {
        *declined = 1;
        return EG_OK;
    }
    return ret;
}

/* Tables (any budget): the counter set up, the budget divided between key
 * buffers (extra_key_bytes more per key for the caller's: a distributed
 * count's exchange) and the tables' arena; spill runs named for the process
 * and `rank`. On error nothing is left to free. */
static eg_status tables_begin(counter *c, const eg_count_opts *o, eg_count_stats *st,
                              size_t extra_key_bytes, int rank, eg_err *err)
{
    eg_status ret = exact_begin(c, o, st, flush_keys, err);
    if (ret)
        return ret;
    /* the budget: a quarter for two key buffers, the rest for the tables */
    const size_t mem = o->memory ? o->memory : ((size_t)1 << 30);
    if (mem < ((size_t)1 << 20))
        return eg_fail(err, EG_ENOMEM,
                       "count: a budget of %zu bytes is too small to make progress (at least "
                       "1 MiB)",
                       mem);
    /* per key: the key and its hash, and their scattered copy (and the caller's) */
    const size_t KEY_BYTES = 16 * KW + 16 + extra_key_bytes;
    c->kcap = mem / 4 / KEY_BYTES;
    if (c->kcap > ((size_t)8 << 20))
        c->kcap = (size_t)8 << 20;
    if (c->kcap < 4 * (size_t)o->max_ngram)
        return eg_fail(err, EG_ENOMEM, "count: a budget of %zu bytes cannot hold a block", mem);
    const size_t table_bytes = mem - c->kcap * KEY_BYTES - mem / 16;
    c->P = 256;
    while (c->P > (size_t)(2 * c->nt) && table_bytes / sizeof(entry) / c->P < 4096)
        c->P /= 2;
    size_t per = table_bytes / sizeof(entry) / c->P;
    if (per < 64)
        return eg_fail(err, EG_ENOMEM,
                       "count: a budget of %zu bytes is too small to make progress (at least "
                       "1 MiB)",
                       mem);
    c->klo = malloc(c->kcap * 8);
    c->slo = malloc(c->kcap * 8);
    c->kp = malloc(c->kcap);
    c->sh = malloc(c->kcap * 8);
#if KW == 2
    c->khi = malloc(c->kcap * 8);
    c->shi = malloc(c->kcap * 8);
#endif
    c->budget = per * c->P;
    c->part = calloc(c->P, sizeof *c->part);
    c->spl = calloc(c->P, sizeof *c->spl);
    c->pbytes = calloc(c->P + 1, sizeof *c->pbytes);
    c->hist = malloc((size_t)c->nt * c->P * sizeof *c->hist);
    c->start = malloc((c->P + 1) * sizeof *c->start);
    c->done = malloc(c->P * sizeof *c->done);
    int ok = (KW == 1 || (c->khi && c->shi)) && c->klo && c->slo && c->kp && c->sh && c->part &&
             c->spl && c->pbytes && c->hist && c->start && c->done && !alloc_block(c);
    /* each partition's region: 8 shares of the budget (partitions are key
     * ranges chosen from a sample, so some fill more than others), in 2 MiB
     * units; one share each where the address space is refused */
    const size_t hb = (size_t)2 << 20, huge = hb / sizeof(entry);
    for (size_t shares = c->P > 8 ? 8 : 1; ok && !c->arena; shares = 1) {
        /* whole 2 MiB units, so that every table starts on a huge page
         * (entries of 12 bytes do not divide 2 MiB) */
        c->region_bytes = (per * shares * sizeof(entry) + hb - 1) / hb * hb;
        c->region = c->region_bytes / sizeof(entry);
        c->arena_bytes = c->region_bytes * c->P;
        void *a = mmap(NULL, c->arena_bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (a != MAP_FAILED)
            c->arena = a;
        else if (shares == 1)
            ok = 0;
    }
#ifdef MADV_HUGEPAGE
    /* huge pages (2 MiB: a fault each, not 512) where rounding every table up
     * to them costs at most a sixteenth of the budget, which then pays it */
    if (ok && c->P * huge <= c->budget / 16) {
        c->huge_pages = 1; /* asked for per table in pt_grow, once it is large */
        c->budget -= c->P * huge;
    }
#endif
    c->scratch = calloc((size_t)c->nt, sizeof *c->scratch);
    c->scratch_cap = calloc((size_t)c->nt, sizeof *c->scratch_cap);
    ok = ok && c->scratch && c->scratch_cap;
    for (size_t p = 0; ok && p < c->P; p++) {
        c->part[p].cap = per < PT_START ? per : PT_START;
        c->part[p].slot = (entry *)(void *)((unsigned char *)c->arena + p * c->region_bytes);
        c->inuse += c->part[p].cap;
    }
    if (!ok) {
        counter_free(c);
        return eg_fail(err, EG_ENOMEM, "count: out of memory for a budget of %zu bytes", mem);
    }
    st->table_bytes = c->budget * sizeof(entry);
    st->buffer_bytes = c->kcap * KEY_BYTES;
    st->key_words = KW;
    st->entry_bytes = (uint32_t)sizeof(entry);
    st->method = EG_COUNT_TABLES;
    st->partitions = (uint32_t)c->P;
    const char *slash = strrchr(o->output, '/');
    const long id = (long)getpid(); /* and the rank, where several share a process (tests) */
    if (o->tmp_dir)
        snprintf(c->tmp_prefix, sizeof c->tmp_prefix, "%s/egcount.%ld.%d", o->tmp_dir, id, rank);
    else if (slash)
        snprintf(c->tmp_prefix, sizeof c->tmp_prefix, "%.*s/.egcount.%ld.%d",
                 (int)(slash - o->output), o->output, id, rank);
    else
        snprintf(c->tmp_prefix, sizeof c->tmp_prefix, ".egcount.%ld.%d", id, rank);
    return EG_OK;
}

static eg_status count_distributed(const eg_count_opts *o, eg_count_stats *st, eg_err *err);
eg_status eg_count_run_k64(const eg_count_opts *o, eg_count_stats *st, eg_err *err);
eg_status eg_count_run_k32(const eg_count_opts *o, eg_count_stats *st, eg_err *err);
#if KW == 1 && defined(CNT32)
eg_status eg_count_run_k32(const eg_count_opts *o, eg_count_stats *st, eg_err *err)
#elif KW == 1
eg_status eg_count_run_k64(const eg_count_opts *o, eg_count_stats *st, eg_err *err)
#else
eg_status eg_count_run(const eg_count_opts *o, eg_count_stats *st, eg_err *err)
#endif
{
#if KW == 2
    /* one-word keys when every n-gram fits 60 bits (and the caller allows it) */
    if (o && o->max_ngram >= 2 && o->max_ngram <= EG_COUNT_MAX_ORDER && o->vprime &&
        o->vprime <= (1ull << 32) && o->max_ngram * egc_id_bits(o->vprime) <= 60 && !o->wide_keys)
        return !o->wide_counts && egc_input_tokens(o) < UINT32_MAX ? eg_count_run_k32(o, st, err)
                                                               : eg_count_run_k64(o, st, err);
#endif
    if (o && o->comm) /* across processes: count_dist.h */
        return count_distributed(o, st, err);
    if (o && o->method != EG_COUNT_TABLES) {
        int declined;
        eg_status r = count_partitioned(o, st, err, &declined);
        if (!declined)
            return r;
    }
    counter c;
    eg_status ret = tables_begin(&c, o, st, 0, 0, err);
    if (ret)
        return ret;
    double t0 = now_s();
    sample_splitters(&c);
    ret = egc_for_each_segment(o, exact_segment, &c, &st->tokens, err);
    if (!ret)
        ret = flush_block(&c);
    double t1 = now_s();
    if (!ret)
        ret = write_counts(&c, st);
    st->seconds_count = t1 - t0;
    st->seconds_merge = now_s() - t1;
    st->spills = c.spills;
    if (ret)
        eg_count_stats_free(st);
    counter_free(&c);
    return ret;
}
