/* count_read.h - reading the input: token blocks with their sequences' left
 * context, the keys of each position, and the segments of a shard; a stage
 * of count_impl.h. */

/* The token block: projected ids with the N-1 previous tokens of the stream
 * in front (xb), and per position how far back its own sequence reaches, at
 * most N-1 (db); several sequences share a block. flush_block generates the
 * keys of every position in parallel, N-1 per position in fixed slots, and
 * hands them to the sink (partition first's sink makes them itself). */

/* The keys of position i (orders 2..H+1; di: how far back its sequence
 * reaches) that fall in [glo, glo + gspan), at out; returns how many. */
static inline __attribute__((always_inline)) size_t
position_keys(const uint32_t *x, uint32_t di, size_t i, uint32_t H, unsigned bits, uint32_t pad,
              kkey glo, kkey gspan, kkey *out)
{
    kkey v = x[i];
    size_t m = 0;
    for (uint32_t k = 1; k <= H; k++) {
        /* order k+1: ids x[i-k..i], oldest first = most significant */
        const uint32_t id = k <= di ? x[(long long)i - (long long)k] : pad;
        v |= (kkey)id << (bits * k);
        const kkey key = (kkey)(k + 1) << ORDER_SHIFT | v;
        out[m] = key;
        m += (kkey)(key - glo) < gspan;
    }
    return m;
}

/* The block's keys into klo (and khi): N-1 per position. */
static void block_keys(counter *c)
{
    const uint32_t N = c->o->max_ngram, H = N - 1;
    const unsigned b = c->bits;
    const uint32_t pad = (uint32_t)c->o->pad;
    const long long n = (long long)c->xn;
    const uint32_t *x = c->xb + H;
    const uint8_t *d = c->db;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(c->nt) if (n > 65536)
#endif
    for (long long i = 0; i < n; i++) {
        kkey key[EG_COUNT_MAX_ORDER];
        const size_t o = (size_t)i * H;
        position_keys(x, d[i], (size_t)i, H, b, pad, 0, ~(kkey)0, key); /* every key */
        for (uint32_t k = 0; k < H; k++) {
#if KW == 2
            c->khi[o + k] = (uint64_t)(key[k] >> 64);
#endif
            c->klo[o + k] = (uint64_t)key[k];
        }
    }
    c->kn = (size_t)n * H;
}

static eg_status flush_block(counter *c)
{
    if (!c->sink_tokens)
        block_keys(c);
    eg_status st = c->sink(c);
    /* the last H tokens of the stream become the next block's history */
    const uint32_t H = c->o->max_ngram - 1;
    memmove(c->xb, c->xb + c->xn, H * sizeof *c->xb);
    c->xn = 0;
    return st;
}

/* Read and project tokens [pos, pos + n) of a shard into x: the threads
 * side by side, each a slice (the copy from the page cache and the checks
 * were a fifth of the scatter's time when one thread did them while the
 * other waited); the first failing slice reports. */
static eg_status read_tokens(counter *c, const eg_shard *s, const char *path, uint64_t pos,
                             size_t n, uint32_t *x)
{
    enum { MIN_SLICE = 1 << 16, MOST = 16 /* readers */ };
    const int nt = n < 2 * (size_t)MIN_SLICE ? 1 : c->nt < MOST ? c->nt : MOST;
    if (nt == 1) {
        eg_status st = eg_shard_read(s, pos, n, x, c->err);
        return st ? st : egc_project_ids(c->o, x, n, path, pos, c->err);
    }
    eg_status sts[MOST] = {0};
    eg_err errs[MOST];
#ifdef _OPENMP
#pragma omp parallel for schedule(static, 1) num_threads(nt)
#endif
    for (int t = 0; t < nt; t++) {
        const size_t i = n * (size_t)t / (size_t)nt, j = n * (size_t)(t + 1) / (size_t)nt;
        sts[t] = eg_shard_read(s, pos + i, j - i, x + i, &errs[t]);
        if (!sts[t])
            sts[t] = egc_project_ids(c->o, x + i, j - i, path, pos + i, &errs[t]);
    }
    for (int t = 0; t < nt; t++)
        if (sts[t]) {
            if (c->err)
                *c->err = errs[t];
            return sts[t];
        }
    return EG_OK;
}

/* Count tokens [a, b) of a shard. Sequences (each padded at its start) begin
 * every `seq` tokens from a on, or, where starts is not NULL, at the ns
 * ascending positions starts[] (starts[0] == a: documents). A block's worth
 * is read at a time, across sequences: reading a sequence of 4096 at a time
 * cost a third of the scatter's time here, most of it per call. */
static eg_status count_segment(counter *c, const eg_shard *s, const char *path, uint64_t a,
                               uint64_t b, uint64_t seq, const uint64_t *starts, size_t ns,
                               uint64_t *done_tokens, uint64_t total)
{
    const eg_count_opts *o = c->o;
    const uint32_t H = o->max_ngram - 1;
    size_t k = 0; /* starts[k]: the start of the sequence at pos */
    for (uint64_t pos = a; pos < b;) {
        size_t n = (size_t)(b - pos < c->B - c->xn ? b - pos : c->B - c->xn);
        uint32_t *x = c->xb + H + c->xn;
        eg_status st = read_tokens(c, s, path, pos, n, x);
        if (st)
            return st;
        /* how far back each position's sequence reaches: H past its first H
         * (a later sequence's first positions overwrite an earlier's) */
        uint8_t *d = c->db + c->xn;
        memset(d, (int)H, n);
        if (starts) {
            while (k + 1 < ns && starts[k + 1] <= pos)
                k++;
            for (size_t q = k; q < ns && starts[q] < pos + n; q++)
                for (uint64_t j = starts[q] < pos ? pos - starts[q] : 0;
                     j < H && starts[q] + j < pos + n; j++)
                    d[starts[q] + j - pos] = (uint8_t)j;
        } else {
            for (uint64_t r = (pos - a) % seq, i = 0; i < n; i += seq - r, r = 0)
                for (uint64_t j = r; j < H && i + (j - r) < n; j++)
                    d[i + (j - r)] = (uint8_t)j;
        }
        c->xn += n;
        pos += n;
        if (c->xn == c->B && (st = flush_block(c)))
            return st;
        *done_tokens += n;
        if (o->progress) /* partition first: every pass reads the input */
            o->progress(c->pass * total + *done_tokens, (c->passes ? c->passes : 1) * total,
                        o->progress_ctx);
    }
    return EG_OK;
}

static eg_status exact_segment(void *vctx, const eg_shard *s, const char *path, uint64_t a,
                               uint64_t b, uint64_t seq, const uint64_t *starts, size_t ns,
                               uint64_t *done, uint64_t total)
{
    return count_segment(vctx, s, path, a, b, seq, starts, ns, done, total);
}

/* The token block of a counter: kcap keys are N-1 per position. */
static int alloc_block(counter *c)
{
    const uint32_t H = c->o->max_ngram - 1;
    c->B = c->kcap / H;
    c->xb = calloc(c->B + H, sizeof *c->xb);
    c->db = malloc(c->B);
    return c->xb && c->db ? 0 : -1;
}
