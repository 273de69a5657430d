/* count_dist.h - counting across processes (eg_count_opts.comm; MPI in the
 * engram command, threads in the tests); a stage of count_impl.h.
 *
 * Each rank reads its share of the shards (contiguous, by tokens) and makes
 * their keys as a single process does (count_read.h). The key space is cut
 * into one range per rank at splitters from a sample every rank contributes
 * to (sample_keys over its share, gathered), and the rank's own tables'
 * partitions at the sample's keys inside its range. A full key block is
 * sorted by owner and exchanged (all-to-all) in rounds of at most
 * kcap / ranks keys per pair of ranks, so that what a rank receives fits its
 * key buffers, and each rank counts what it receives with tables that spill
 * as usual (count_insert.h). A rank out of input keeps joining the rounds
 * until every rank is. Each rank then writes its range as a counts file of
 * its own (count_write.h), and the ranks copy their records into the one
 * output at offsets known from everyone's sizes; rank 0 writes the header
 * (everyone's statistics) and the metadata (everyone's inputs) and renames
 * it into place. Every collective step carries each rank's status, so a
 * failure anywhere stops every rank with the failing rank's message. */

typedef struct dist_ {
    const eg_comm *cm;
    int R, me;
    kkey *rspl;        /* R - 1: rank r owns keys in [rspl[r - 1], rspl[r]) */
    kkey *send, *recv; /* kcap keys each */
    uint32_t *dst;     /* kcap: each local key's rank */
    uint64_t *mine, *rows; /* this rank's row; every rank's (R x (R + 2)): keys per
                            * destination, done, failed */
    size_t *start, *sb, *sa, *rb, *ra; /* R each */
    size_t quota;                      /* keys per pair of ranks per round */
    int failed_seen, echo, all_done, local_failed;
    eg_status local_st;
    uint64_t bytes_out; /* key bytes sent to other ranks */
    double t_exchange;
} dist;

#define DIST_ROW(d, r) ((d)->rows + (size_t)(r) * ((size_t)(d)->R + 2))

/* The rank owning key k: how many rank splitters are <= k. */
static inline size_t rank_of(const dist *d, kkey k)
{
    size_t a = 0, b = (size_t)d->R - 1;
    while (a < b) {
        const size_t m = (a + b) / 2;
        if (d->rspl[m] <= k)
            a = m + 1;
        else
            b = m;
    }
    return a;
}

/* Every rank's status, gathered (eg_comm_agree), the time counted as
 * exchange. */
static eg_status dist_agree(dist *d, eg_status st, eg_err *err)
{
    const double t0 = now_s();
    const eg_status ret = eg_comm_agree(d->cm, st, err);
    d->t_exchange += now_s() - t0;
    return ret;
}

/* One exchange: this rank's c->kn keys (none when `done`) sent to their
 * owners in rounds, and what arrives counted (flush_keys). EG_EIO when a
 * rank has failed (d->failed_seen; the message comes with dist_agree), else
 * this rank's own counting failure, if any. */
static eg_status dist_exchange(counter *c, int done, int failed)
{
    dist *d = c->dist;
    const int R = d->R, me = d->me;
    const size_t n = done ? 0 : c->kn, W = (size_t)R + 2;
    memset(d->mine, 0, W * sizeof *d->mine);
    const long long nn = (long long)n;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(c->nt) if (n > 65536)
#endif
    for (long long i = 0; i < nn; i++)
        d->dst[i] = (uint32_t)rank_of(d, KEY_AT(c->khi, c->klo, (size_t)i));
    for (size_t i = 0; i < n; i++)
        d->mine[d->dst[i]]++;
    d->mine[R] = (uint64_t)done;
    d->mine[R + 1] = (uint64_t)failed;
    for (int r = 0, at = 0; r < R; r++) {
        d->start[r] = (size_t)at;
        d->sa[r] = (size_t)at; /* the cursor while placing */
        at += (int)d->mine[r];
    }
    for (size_t i = 0; i < n; i++)
        d->send[d->sa[d->dst[i]]++] = KEY_AT(c->khi, c->klo, i);
    c->kn = 0;
    double t0 = now_s();
    if (d->cm->allgather(d->cm->ctx, d->mine, W * sizeof *d->mine, d->rows)) {
        d->failed_seen = 1;
        return eg_fail(c->err, EG_EIO, "count: the exchange between ranks failed");
    }
    d->t_exchange += now_s() - t0;
    uint64_t most = 0, moving = 0;
    int all_done = 1;
    for (int s = 0; s < R; s++) {
        const uint64_t *row = DIST_ROW(d, s);
        if (row[R + 1]) {
            d->failed_seen = 1;
            d->echo = !failed && !d->local_failed;
            return EG_EIO;
        }
        all_done &= row[R] != 0;
        for (int r = 0; r < R; r++) {
            most = row[r] > most ? row[r] : most;
            moving += row[r];
        }
    }
    d->all_done = all_done && !moving;
    const size_t q = d->quota, ks = sizeof(kkey);
    const uint64_t rounds = (most + q - 1) / q;
    for (uint64_t t = 0; t < rounds; t++) {
        size_t got = 0;
        for (int r = 0; r < R; r++) {
            const uint64_t to = DIST_ROW(d, me)[r], from = DIST_ROW(d, r)[me], off = t * q;
            const size_t take = (size_t)(to > off ? (to - off < q ? to - off : q) : 0);
            const size_t give = (size_t)(from > off ? (from - off < q ? from - off : q) : 0);
            d->sb[r] = take * ks;
            d->sa[r] = (d->start[r] + (size_t)off) * ks;
            d->rb[r] = give * ks;
            d->ra[r] = got * ks;
            got += give;
            if (r != me)
                d->bytes_out += take * ks;
        }
        t0 = now_s();
        if (d->cm->alltoallv(d->cm->ctx, d->send, d->sb, d->sa, d->recv, d->rb, d->ra)) {
            d->failed_seen = 1;
            return eg_fail(c->err, EG_EIO, "count: the exchange between ranks failed");
        }
        d->t_exchange += now_s() - t0;
        if (d->local_failed || !got)
            continue;
        for (size_t i = 0; i < got; i++) {
#if KW == 2
            c->khi[i] = (uint64_t)(d->recv[i] >> 64);
#endif
            c->klo[i] = (uint64_t)d->recv[i];
        }
        c->kn = got;
        eg_status st = flush_keys(c);
        c->kn = 0;
        if (st) {
            d->local_failed = 1;
            d->local_st = st;
        }
    }
    return d->local_failed ? d->local_st : EG_OK;
}

static eg_status dist_sink(counter *c) { return dist_exchange(c, 0, 0); }

/* The key ranges: this rank's sample gathered with everyone's; the ranks'
 * splitters at its quantiles, and this rank's partitions' splitters at the
 * quantiles of its keys in its range (none found: the first batch's). */
static eg_status dist_splitters(counter *c, dist *d)
{
    const int R = d->R;
    kkey *k = NULL, *all = NULL;
    size_t m = 0;
    sample_keys(c, (size_t)R, &k, &m);
    uint64_t mm = k ? m : 0, *ms = malloc((size_t)R * sizeof *ms);
    size_t *bytes = malloc((size_t)R * sizeof *bytes);
    eg_status ret = ms && bytes ? EG_OK : eg_fail(c->err, EG_ENOMEM, "out of memory");
    const double t0 = now_s();
    if (!ret && d->cm->allgather(d->cm->ctx, &mm, sizeof mm, ms))
        ret = eg_fail(c->err, EG_EIO, "count: the exchange between ranks failed");
    size_t total = 0;
    for (int r = 0; !ret && r < R; r++) {
        bytes[r] = (size_t)ms[r] * sizeof(kkey);
        total += (size_t)ms[r];
    }
    if (!ret && !(all = malloc(total * sizeof *all + 1)))
        ret = eg_fail(c->err, EG_ENOMEM, "out of memory");
    if (!ret && d->cm->allgatherv(d->cm->ctx, k, (size_t)mm * sizeof(kkey), all, bytes))
        ret = eg_fail(c->err, EG_EIO, "count: the exchange between ranks failed");
    d->t_exchange += now_s() - t0;
    if (!ret) {
        qsort(all, total, sizeof *all, cmp_kkey);
        for (int r = 0; r + 1 < R; r++)
            d->rspl[r] = ~(kkey)0; /* no sample: every key to rank 0 */
        quantile_splitters(all, total, (size_t)R, d->rspl);
        size_t a = 0, b = total; /* this rank's keys in the sample */
        while (a < total && d->me > 0 && all[a] < d->rspl[d->me - 1])
            a++;
        b = a;
        while (b < total && (d->me + 1 == R || all[b] < d->rspl[d->me]))
            b++;
        if (b > a)
            splitters_from(c, all + a, b - a, 1);
    }
    free(k);
    free(all);
    free(ms);
    free(bytes);
    return ret;
}

/* The rank's share of the shards: shard i goes to the rank whose share of
 * the tokens its first token falls in (contiguous, every shard once). */
static void dist_share(const eg_count_opts *o, const uint64_t *ntok, int R, int me,
                       size_t *first, size_t *n)
{
    uint64_t total = 0, at = 0;
    for (size_t i = 0; i < o->n_shards; i++)
        total += ntok[i];
    *first = o->n_shards;
    *n = 0;
    for (size_t i = 0; i < o->n_shards; i++) {
        const int r = total ? (int)((u128)at * (uint64_t)R / total) : (int)(i * (size_t)R / o->n_shards);
        if (r == me) {
            if (*first == o->n_shards)
                *first = i;
            ++*n;
        }
        at += ntok[i];
    }
    if (!*n)
        *first = 0;
}

/* What each rank tells the others once its part is written. */
typedef struct {
    uint64_t rec_bytes, tokens, spills, bytes_out, pid, meta_len, top_bytes;
    double t_count, t_merge, t_exchange;
    uint64_t distinct[EG_COUNT_MAX_ORDER + 1], total[EG_COUNT_MAX_ORDER + 1];
    uint64_t singletons[EG_COUNT_MAX_ORDER + 1], n_top[EG_COUNT_MAX_ORDER + 1];
    uint64_t fof[EG_COUNT_MAX_ORDER + 1][EG_FOF_BUCKETS];
} rank_sum;

/* Copy bytes [from, from + len) of file `src` to offset `to` of file dst,
 * beside the page cache: the part is read a chunk at a time and its pages
 * dropped once read, and the output's whole blocks are written with
 * O_DIRECT (eg_outfile_put; the edges, which the neighbouring ranks' ranges
 * share, through the plain descriptor), so that copying gigabytes recycles
 * a few megabytes of pages instead of touching fresh memory for every 4 KiB
 * (the slowest thing on the VMs measured: docs/SCALING.md). */
static eg_status copy_range(const char *src, uint64_t from, uint64_t len, const char *dst,
                            uint64_t to, eg_err *err)
{
    enum { BUF = 8 << 20 };
    const uint64_t A = EG_OUT_ALIGN;
    eg_outfile out = {.fd = -1, .dfd = -1};
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return eg_fail(err, EG_EIO, "%s: cannot open: %s", src, strerror(errno));
    if (eg_outfile_reopen(&out, dst)) {
        close(in);
        return eg_fail(err, EG_EIO, "%s: cannot open: %s", dst, strerror(errno));
    }
    unsigned char *b = aligned_alloc(A, BUF);
    eg_status ret = b ? EG_OK : eg_fail(err, EG_ENOMEM, "out of memory");
    for (uint64_t done = 0; !ret && done < len;) {
        const uint64_t s = to + done, bw = s / A * A; /* b holds the file from bw */
        const size_t want = (size_t)(len - done < BUF - (s - bw) ? len - done : BUF - (s - bw));
        const ssize_t got = pread(in, b + (s - bw), want, (off_t)(from + done));
        if (got <= 0) {
            ret = eg_fail(err, EG_EIO, "%s: read failed: %s", src, got ? strerror(errno) : "short");
            break;
        }
        posix_fadvise(in, (off_t)(from + done), got, POSIX_FADV_DONTNEED);
        if (eg_outfile_put(&out, b, bw, s, s + (uint64_t)got))
            ret = eg_fail(err, EG_EIO, "%s: write failed: %s", dst, strerror(errno));
        done += (uint64_t)got;
    }
    if (!ret && fsync(out.fd))
        ret = eg_fail(err, EG_EIO, "%s: write failed: %s", dst, strerror(errno));
    free(b);
    close(in);
    if (eg_outfile_close(&out) && !ret)
        ret = eg_fail(err, EG_EIO, "%s: write failed: %s", dst, strerror(errno));
    return ret;
}

/* The ranks' parts into the one output (see the top); st becomes the
 * whole count's statistics on every rank. */
static eg_status dist_assemble(counter *c, dist *d, const eg_count_opts *o, const char *part,
                               eg_count_stats *st)
{
    const int R = d->R, me = d->me;
    const uint32_t N = o->max_ngram;
    eg_err *err = c->err;
    rank_sum mine, *all = calloc((size_t)R, sizeof *all);
    memset(&mine, 0, sizeof mine);
    for (uint32_t n = 2; n <= N; n++) {
        mine.rec_bytes += st->distinct[n] * (4ull * n + 8);
        mine.distinct[n] = st->distinct[n];
        mine.total[n] = st->total[n];
        mine.singletons[n] = st->singletons[n];
        mine.n_top[n] = st->n_top[n];
        mine.top_bytes += st->n_top[n] * sizeof(eg_ngram_top);
        memcpy(mine.fof[n], st->fof[n], sizeof mine.fof[n]);
    }
    mine.tokens = st->tokens;
    mine.spills = st->spills;
    mine.bytes_out = d->bytes_out;
    mine.pid = (uint64_t)getpid();
    mine.meta_len = c->meta_len;
    mine.t_count = st->seconds_count;
    mine.t_merge = st->seconds_merge;
    mine.t_exchange = d->t_exchange;
    size_t *bytes = malloc((size_t)R * sizeof *bytes);
    unsigned char *tops = NULL, *mytop = malloc(mine.top_bytes + 1);
    char *metas = NULL, *json = NULL, tmp[1100];
    size_t json_len = 0;
    egc_meta m = {0};
    eg_status ret = all && bytes && mytop ? EG_OK : eg_fail(err, EG_ENOMEM, "out of memory");
    if (!ret && d->cm->allgather(d->cm->ctx, &mine, sizeof mine, all))
        ret = eg_fail(err, EG_EIO, "count: the exchange between ranks failed");
    if ((ret = dist_agree(d, ret, err)))
        goto done;
    /* the statistics of the whole count, on every rank */
    size_t tb = 0, mb = 0;
    uint64_t offset = 0, records = 0;
    for (int r = 0; r < R; r++) {
        if (r == me)
            offset = records;
        records += all[r].rec_bytes;
        tb += (size_t)all[r].top_bytes;
        mb += (size_t)all[r].meta_len;
    }
    const eg_count_stats local = *st;
    memset(st, 0, sizeof *st);
    st->key_words = local.key_words;
    st->entry_bytes = local.entry_bytes;
    st->method = local.method;
    st->partitions = local.partitions;
    st->table_bytes = local.table_bytes;
    st->buffer_bytes = local.buffer_bytes;
    st->ranks = (uint32_t)R;
    for (int r = 0; r < R; r++) {
        const rank_sum *a = &all[r];
        st->tokens += a->tokens;
        st->spills += a->spills;
        st->exchange_bytes += a->bytes_out;
        st->seconds_count = a->t_count > st->seconds_count ? a->t_count : st->seconds_count;
        st->seconds_merge = a->t_merge > st->seconds_merge ? a->t_merge : st->seconds_merge;
        st->seconds_exchange =
            a->t_exchange > st->seconds_exchange ? a->t_exchange : st->seconds_exchange;
        for (uint32_t n = 2; n <= N; n++) {
            st->distinct[n] += a->distinct[n];
            st->total[n] += a->total[n];
            st->singletons[n] += a->singletons[n];
            for (unsigned b = 0; b < EG_FOF_BUCKETS; b++)
                st->fof[n][b] += a->fof[n][b];
        }
    }
    /* the top lists: everyone's, offered to one heap per order */
    for (uint32_t n = 2, k = 0; n <= N; n++)
        for (size_t i = 0; i < local.n_top[n]; i++, k++)
            memcpy(mytop + k * sizeof(eg_ngram_top), &local.top[n][i], sizeof(eg_ngram_top));
    for (uint32_t n = 2; n <= N; n++)
        free(local.top[n]);
    for (int r = 0; r < R; r++)
        bytes[r] = (size_t)all[r].top_bytes;
    if (!(tops = malloc(tb + 1)) || d->cm->allgatherv(d->cm->ctx, mytop, (size_t)mine.top_bytes,
                                                      tops, bytes))
        ret = eg_fail(err, EG_EIO, "count: the exchange between ranks failed");
    for (uint32_t n = 2; n <= N && o->top_k && !ret; n++)
        if (!(st->top[n] = calloc(o->top_k, sizeof *st->top[n])))
            ret = eg_fail(err, EG_ENOMEM, "out of memory");
    for (int r = 0, at = 0; r < R && o->top_k && !ret; r++)
        for (uint32_t n = 2; n <= N; n++)
            for (uint64_t i = 0; i < all[r].n_top[n]; i++, at++) {
                eg_ngram_top t;
                memcpy(&t, tops + (size_t)at * sizeof t, sizeof t);
                egc_top_offer(st, n, o->top_k, &t);
            }
    for (uint32_t n = 2; n <= N && o->top_k && !ret; n++)
        qsort(st->top[n], st->n_top[n], sizeof *st->top[n], egc_cmp_top);
    /* the inputs: everyone's metadata, combined on rank 0 */
    for (int r = 0; r < R; r++)
        bytes[r] = (size_t)all[r].meta_len;
    if (!ret && (!(metas = malloc(mb + 1)) ||
                 d->cm->allgatherv(d->cm->ctx, c->meta, c->meta_len, metas, bytes)))
        ret = eg_fail(err, EG_EIO, "count: the exchange between ranks failed");
    for (int r = 0, at = 0; r < R && me == 0 && !ret; at += (int)bytes[r], r++) {
        egc_meta one;
        if ((ret = egc_meta_parse(metas + at, bytes[r], part, &one, err)))
            break;
        if (!r) {
            m = one;
            continue;
        }
        for (size_t i = 0; i < one.n_in && !ret; i++)
            if (egc_meta_add(&m, &one.in[i]))
                ret = eg_fail(err, EG_ENOMEM, "out of memory");
        egc_meta_free(&one);
    }
    if (!ret && me == 0)
        ret = egc_meta_json(&m, &json, &json_len, err);
    /* rank 0 makes the output, at its full length; every rank writes its part */
    snprintf(tmp, sizeof tmp, "%s.tmp.%llu", o->output, (unsigned long long)all[0].pid);
    eg_outfile w = {.fd = -1, .dfd = -1};
    if (!ret && me == 0) {
        w.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (w.fd < 0 || ftruncate(w.fd, (off_t)(header_bytes(N) + records)))
            ret = eg_fail(err, EG_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    }
    if ((ret = dist_agree(d, ret, err)))
        goto done;
    ret = copy_range(part, header_bytes(N), mine.rec_bytes, tmp, header_bytes(N) + offset, err);
    if ((ret = dist_agree(d, ret, err)))
        goto done;
    if (me == 0) /* the header, the metadata, the rename */
        ret = egc_finish_file(&w, tmp, o->output, N, o->vprime, o->pad, st, json, json_len,
                              EG_OK, err);
    ret = dist_agree(d, ret, err);
done:
    if (ret && me == 0) {
        if (w.fd >= 0)
            close(w.fd);
        unlink(tmp);
    }
    egc_meta_free(&m);
    free(json);
    free(metas);
    free(tops);
    free(mytop);
    free(bytes);
    free(all);
    return ret;
}

static void dist_free(dist *d)
{
    free(d->rspl);
    free(d->send);
    free(d->recv);
    free(d->dst);
    free(d->mine);
    free(d->rows);
    free(d->start);
    free(d->sb);
    free(d->sa);
    free(d->rb);
    free(d->ra);
}

static eg_status count_distributed(const eg_count_opts *o, eg_count_stats *st, eg_err *err)
{
    const eg_comm *cm = o->comm;
    if (!st)
        return eg_fail(err, EG_EINVAL, "count: NULL statistics");
    memset(st, 0, sizeof *st);
    if (cm->size < 1 || cm->rank < 0 || cm->rank >= cm->size || !cm->allgather ||
        !cm->allgatherv || !cm->alltoallv)
        return eg_fail(err, EG_EINVAL, "count: rank %d of %d, or a missing collective", cm->rank,
                       cm->size);
    dist d = {.cm = cm, .R = cm->size, .me = cm->rank};
    const int R = d.R, me = d.me;
    uint64_t *ntok = NULL;
    char part[1100] = "";
    counter c;
    int began = 0;
    eg_status ret = egc_check_opts(o, err);
    if (!ret && !o->output)
        ret = eg_fail(err, EG_EINVAL, "count: no output path");
    if (!ret && !(ntok = calloc(o->n_shards + 1, sizeof *ntok)))
        ret = eg_fail(err, EG_ENOMEM, "out of memory");
    for (size_t i = 0; !ret && i < o->n_shards; i++) { /* the shares need every shard's size */
        eg_shard *s = NULL;
        if (!(ret = eg_shard_open(o->shards[i], &s, err)))
            ntok[i] = eg_shard_n_tokens(s);
        eg_shard_close(s);
    }
    if ((ret = dist_agree(&d, ret, err)))
        goto out;
    size_t first, n;
    dist_share(o, ntok, R, me, &first, &n);
    eg_count_opts lo = *o; /* this rank's shards, counted into a part of its own */
    lo.shards = o->shards + first;
    lo.n_shards = n;
    lo.method = EG_COUNT_TABLES;
    /* the part where spills go (--tmp: a node's local disk), else beside the
     * output; then copied into the output */
    if (o->tmp_dir)
        snprintf(part, sizeof part, "%s/egcount-part.%ld.%d", o->tmp_dir, (long)getpid(), me);
    else
        snprintf(part, sizeof part, "%s.part-%d.%ld", o->output, me, (long)getpid());
    lo.output = part;
    ret = tables_begin(&c, &lo, st, 2 * sizeof(kkey) + sizeof(uint32_t), me, err);
    began = !ret;
    if (!ret) {
        const size_t W = (size_t)R + 2;
        d.rspl = malloc((size_t)R * sizeof *d.rspl);
        d.send = malloc(c.kcap * sizeof *d.send);
        d.recv = malloc(c.kcap * sizeof *d.recv);
        d.dst = malloc(c.kcap * sizeof *d.dst);
        d.mine = malloc(W * sizeof *d.mine);
        d.rows = malloc((size_t)R * W * sizeof *d.rows);
        d.start = malloc((size_t)R * sizeof(size_t));
        d.sb = malloc((size_t)R * sizeof(size_t));
        d.sa = malloc((size_t)R * sizeof(size_t));
        d.rb = malloc((size_t)R * sizeof(size_t));
        d.ra = malloc((size_t)R * sizeof(size_t));
        d.quota = c.kcap / (size_t)R ? c.kcap / (size_t)R : 1;
        if (!d.rspl || !d.send || !d.recv || !d.dst || !d.mine || !d.rows || !d.start || !d.sb ||
            !d.sa || !d.rb || !d.ra)
            ret = eg_fail(err, EG_ENOMEM, "count: out of memory for a budget of %zu bytes",
                          o->memory);
    }
    if ((ret = dist_agree(&d, ret, err)))
        goto out;
    c.dist = &d;
    c.sink = dist_sink;
    st->partitions = (uint32_t)c.P;
    const double t0 = now_s();
    ret = dist_splitters(&c, &d);
    if ((ret = dist_agree(&d, ret, err)))
        goto out;
    ret = egc_for_each_segment(&lo, exact_segment, &c, &st->tokens, err);
    if (!ret)
        ret = flush_block(&c);
    /* this rank's own failure (not another's, seen in an exchange) */
    const eg_status local = !ret || (d.failed_seen && d.echo) ? EG_OK
                            : d.local_failed                  ? d.local_st
                                                              : ret;
    while (!d.failed_seen && !d.all_done) /* until every rank is through its input */
        dist_exchange(&c, 1, local != EG_OK);
    if ((ret = dist_agree(&d, local, err)))
        goto out;
    const double t1 = now_s();
    ret = write_counts(&c, st);
    st->seconds_count = t1 - t0;
    st->seconds_merge = now_s() - t1;
    st->spills = c.spills;
    if ((ret = dist_agree(&d, ret, err)))
        goto out;
    ret = dist_assemble(&c, &d, o, part, st);
out:
    if (part[0])
        unlink(part);
    if (ret)
        eg_count_stats_free(st);
    if (began)
        counter_free(&c);
    dist_free(&d);
    free(ntok);
    return ret;
}
