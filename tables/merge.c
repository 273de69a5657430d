/* merge.c - eg_counts_merge: counts files of disjoint inputs summed into one,
 * byte-identical to counting all their inputs at once. Each order's key space
 * is cut into ranges at keys of the largest input (every input's share of a
 * range found by binary search); the threads merge whole ranges k-way into a
 * buffer of their own (a heap over the inputs, equal keys summed) and the
 * ranges are written in order (OpenMP `ordered`), a range whose records
 * outgrow its buffer finishing in its turn, writing as it goes. The inputs
 * are mapped, read once, in order; memory is the buffers (--memory). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "count_common.h"
#include "counts_meta.h"

#define OUT_STAGE ((size_t)4 << 20) /* the ordered writer's stage (see eg_seqout) */
#define RANGE_MIN 65536             /* records of the largest input per range, at least */

typedef struct {
    const unsigned char *p; /* order n's records of each input */
    uint64_t n;
} section;

/* A range of one order: per input, records [lo[j], hi[j]). */
typedef struct {
    uint32_t n;
    uint64_t *lo, *hi;
} range;

typedef struct {
    u128 key;
    uint32_t src;
} head;

typedef struct {
    const eg_merge_opts *o;
    eg_counts **in;
    size_t k;
    uint32_t N;
    unsigned bits;
    section *sec; /* [n * k + j] */
} merge_ctx;

static inline u128 key_at(const unsigned char *r, uint32_t n, unsigned bits)
{
    u128 v = 0;
    for (uint32_t i = 0; i < n; i++)
        v = v << bits | eg_get_le32(r + 4 * i);
    return v;
}

/* The first record of s (order n) whose key is >= key. */
static uint64_t lower_bound(const section *s, uint32_t n, unsigned bits, u128 key)
{
    const size_t rec = 4 * (size_t)n + 8;
    uint64_t a = 0, b = s->n;
    while (a < b) {
        const uint64_t m = a + (b - a) / 2;
        if (key_at(s->p + m * rec, n, bits) < key)
            a = m + 1;
        else
            b = m;
    }
    return a;
}

/* A range being merged: the heap over its inputs' next records. */
typedef struct {
    head *h;
    size_t m;
    uint64_t *at; /* per input: the next record */
    const range *r;
    unsigned char *buf;
    size_t wn, cap;
} part;

static inline int head_lt(const head *a, const head *b)
{
    return a->key < b->key || (a->key == b->key && a->src < b->src);
}

static void sift_down(head *h, size_t m, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, s = i;
        if (l < m && head_lt(&h[l], &h[s]))
            s = l;
        if (l + 1 < m && head_lt(&h[l + 1], &h[s]))
            s = l + 1;
        if (s == i)
            return;
        head t = h[i];
        h[i] = h[s];
        h[s] = t;
        i = s;
    }
}

static void part_start(const merge_ctx *x, part *pt, const range *r)
{
    const uint32_t n = r->n;
    const size_t rec = 4 * (size_t)n + 8;
    pt->r = r;
    pt->m = 0;
    pt->wn = 0;
    for (size_t j = 0; j < x->k; j++) {
        pt->at[j] = r->lo[j];
        if (r->lo[j] < r->hi[j])
            pt->h[pt->m++] = (head){key_at(x->sec[n * x->k + j].p + r->lo[j] * rec, n, x->bits),
                                    (uint32_t)j};
    }
    for (size_t i = pt->m / 2; i-- > 0;)
        sift_down(pt->h, pt->m, i);
}

/* One merged record into the buffer, with its statistics. */
static void put_record(const eg_merge_opts *o, eg_count_stats *st, unsigned char *out,
                       const unsigned char *ids, uint32_t n, uint64_t count)
{
    memcpy(out, ids, 4 * (size_t)n);
    eg_put_le64(out + 4 * n, count);
    st->distinct[n]++;
    st->total[n] += count;
    st->singletons[n] += count == 1;
    st->fof[n][fof_bucket(count)]++;
    if (o->top_k && top_may_take(st, n, o->top_k, count)) {
        eg_ngram_top t;
        memset(&t, 0, sizeof t);
        for (uint32_t i = 0; i < n; i++)
            t.ids[i] = eg_get_le32(ids + 4 * i);
        t.count = count;
        egc_top_offer(st, n, o->top_k, &t);
    }
}

/* Merge more of the range into the buffer: 1 when done, 0 when full. */
static int merge_some(const merge_ctx *x, part *pt, eg_count_stats *st)
{
    const uint32_t n = pt->r->n;
    const size_t rec = 4 * (size_t)n + 8;
    const section *sec = x->sec + n * x->k;
    while (pt->m) {
        if (pt->wn + rec > pt->cap)
            return 0;
        const u128 key = pt->h[0].key;
        const unsigned char *ids = sec[pt->h[0].src].p + pt->at[pt->h[0].src] * rec;
        uint64_t count = 0;
        while (pt->m && pt->h[0].key == key) {
            const uint32_t j = pt->h[0].src;
            count += eg_get_le64(sec[j].p + pt->at[j] * rec + 4 * n);
            if (++pt->at[j] < pt->r->hi[j]) {
                pt->h[0].key = key_at(sec[j].p + pt->at[j] * rec, n, x->bits);
            } else {
                pt->h[0] = pt->h[--pt->m];
            }
            sift_down(pt->h, pt->m, 0);
        }
        put_record(x->o, st, pt->buf + pt->wn, ids, n, count);
        pt->wn += rec;
    }
    return 1;
}

struct fpi {
    const char *fp, *path;
    size_t file;
};

static int cmp_fpi(const void *a, const void *b)
{
    const struct fpi *x = a, *y = b;
    const int r = strcmp(x->fp, y->fp);
    return r ? r : x->file < y->file ? -1 : x->file > y->file;
}

static const char *mode_name(int m) { return m == EG_PAD_SEQLEN ? "seq_len" : "docs"; }

/* The inputs' configurations agree (else one error naming both files and
 * what differs); their inputs do not overlap unless allowed. */
static eg_status check_inputs(const eg_merge_opts *o, const egc_meta *m, eg_err *err)
{
    const char *const *f = o->inputs;
    for (size_t i = 1; i < o->n_inputs; i++) {
        const egc_meta *a = &m[0], *b = &m[i];
        char va[80], vb[80];
        const char *what = NULL;
        if (a->N != b->N) {
            what = "max n-gram order";
            snprintf(va, sizeof va, "%u", a->N);
            snprintf(vb, sizeof vb, "%u", b->N);
        } else if (a->vprime != b->vprime) {
            what = "V'";
            snprintf(va, sizeof va, "%llu", (unsigned long long)a->vprime);
            snprintf(vb, sizeof vb, "%llu", (unsigned long long)b->vprime);
        } else if (a->pad != b->pad) {
            what = "pad id";
            snprintf(va, sizeof va, "%lld", (long long)a->pad);
            snprintf(vb, sizeof vb, "%lld", (long long)b->pad);
        } else if (a->pad_mode != b->pad_mode || a->seq_len != b->seq_len) {
            what = "padding";
            snprintf(va, sizeof va, "%s %llu", mode_name(a->pad_mode),
                     (unsigned long long)a->seq_len);
            snprintf(vb, sizeof vb, "%s %llu", mode_name(b->pad_mode),
                     (unsigned long long)b->seq_len);
        } else if (strcmp(a->proj, b->proj)) {
            what = "projection";
            snprintf(va, sizeof va, "%.12s", a->proj[0] ? a->proj : "none");
            snprintf(vb, sizeof vb, "%.12s", b->proj[0] ? b->proj : "none");
        }
        if (what)
            return eg_fail(err, EG_EINVAL,
                           "merge: %s and %s were counted with a different %s (%s vs %s)", f[0],
                           f[i], what, va, vb);
    }
    if (o->allow_overlap)
        return EG_OK;
    size_t total = 0;
    for (size_t i = 0; i < o->n_inputs; i++)
        total += m[i].n_in;
    struct fpi *all = malloc((total ? total : 1) * sizeof *all);
    if (!all)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < o->n_inputs; i++)
        for (size_t j = 0; j < m[i].n_in; j++)
            all[k++] = (struct fpi){m[i].in[j].fp, m[i].in[j].path, i};
    qsort(all, total, sizeof *all, cmp_fpi);
    eg_status st = EG_OK;
    for (size_t a = 0; a + 1 < total && !st; a++) /* sorted by fingerprint, then file */
        if (all[a].file != all[a + 1].file && !strcmp(all[a].fp, all[a + 1].fp))
            st = eg_fail(err, EG_EINVAL,
                         "merge: %s and %s both counted the same shard (%s, %s): merged it "
                         "would count twice (--allow-overlap merges anyway)",
                         f[all[a].file], f[all[a + 1].file], all[a].path, all[a + 1].path);
    free(all);
    return st;
}

eg_status eg_counts_merge(const eg_merge_opts *o, eg_count_stats *st, eg_err *err)
{
    if (!o || !st || !o->inputs || !o->n_inputs || !o->output)
        return eg_fail(err, EG_EINVAL, "merge: no inputs or no output");
    memset(st, 0, sizeof *st);
    const size_t k = o->n_inputs;
    merge_ctx x = {.o = o, .k = k};
    eg_counts **in = calloc(k, sizeof *in);
    egc_meta *meta = calloc(k, sizeof *meta), all = {0};
    range *rg = NULL;
    size_t n_rg = 0;
    uint64_t *bounds = NULL;
    char *json = NULL;
    size_t json_len = 0;
    eg_status ret = in && meta ? EG_OK : eg_fail(err, EG_ENOMEM, "out of memory");
    for (size_t i = 0; i < k && !ret; i++) {
        size_t ml = 0;
        const char *mj;
        if ((ret = eg_counts_open(o->inputs[i], &in[i], err)))
            break;
        if (!(mj = eg_counts_meta(in[i], &ml)))
            ret = eg_fail(err, EG_EUNSUPPORTED,
                          "merge: %s is a version 1 counts file, which does not record its "
                          "inputs; count them again with this build",
                          o->inputs[i]);
        else
            ret = egc_meta_parse(mj, ml, o->inputs[i], &meta[i], err);
        if (!ret && (meta[i].N != eg_counts_max_ngram(in[i]) ||
                     meta[i].vprime != eg_counts_vprime(in[i]) ||
                     meta[i].pad != eg_counts_pad(in[i])))
            ret = eg_fail(err, EG_EFORMAT, "%s: the metadata disagrees with the header",
                          o->inputs[i]);
    }
    if (!ret)
        ret = check_inputs(o, meta, err);
    if (ret)
        goto done;
    /* the merged file's metadata: every input's inputs */
    all = meta[0];
    all.in = NULL;
    all.n_in = 0;
    for (size_t i = 0; i < k && !ret; i++)
        for (size_t j = 0; j < meta[i].n_in && !ret; j++)
            if (egc_meta_add(&all, &meta[i].in[j]))
                ret = eg_fail(err, EG_ENOMEM, "out of memory");
    if (ret || (ret = egc_meta_json(&all, &json, &json_len, err)))
        goto done;
    const uint32_t N = x.N = meta[0].N;
    x.bits = egc_id_bits(meta[0].vprime);
    if (N * x.bits > 124) {
        ret = eg_fail(err, EG_EUNSUPPORTED, "merge: %u-grams of %u-bit ids do not fit a key", N,
                      x.bits);
        goto done;
    }
    x.in = in;
    if (!(x.sec = calloc((size_t)(N + 1) * k, sizeof *x.sec))) {
        ret = eg_fail(err, EG_ENOMEM, "out of memory");
        goto done;
    }
    uint64_t records = 0;
    for (uint32_t n = 2; n <= N; n++)
        for (size_t j = 0; j < k; j++) {
            section *s = &x.sec[n * k + j];
            s->n = eg_counts_distinct(in[j], n);
            records += s->n;
            s->p = eg_counts_record(in[j], n, 0);
        }
    for (size_t j = 0; j < k; j++)
        st->tokens += eg_counts_tokens(in[j]);
#ifdef _OPENMP
    const int T = o->n_threads > 0 ? o->n_threads : omp_get_max_threads();
#else
    const int T = 1;
#endif
    /* the ranges: per order, at keys of its largest input */
    size_t cap_rg = 0;
    for (uint32_t n = 2; n <= N && !ret; n++) {
        size_t big = 0;
        for (size_t j = 1; j < k; j++)
            big = x.sec[n * k + j].n > x.sec[n * k + big].n ? j : big;
        const section *bs = &x.sec[n * k + big];
        uint64_t R = bs->n / RANGE_MIN;
        R = R < 1 ? 1 : R > (uint64_t)64 * T ? (uint64_t)64 * T : R;
        const size_t rec = 4 * (size_t)n + 8;
        for (uint64_t r = 0; r < R; r++) {
            if (n_rg == cap_rg) {
                cap_rg = cap_rg ? 2 * cap_rg : 64;
                range *g = realloc(rg, cap_rg * sizeof *g);
                uint64_t *bb = realloc(bounds, cap_rg * 2 * k * sizeof *bb);
                if (g)
                    rg = g;
                if (bb)
                    bounds = bb;
                if (!g || !bb) {
                    ret = eg_fail(err, EG_ENOMEM, "out of memory");
                    break;
                }
            }
            uint64_t *lo = bounds + n_rg * 2 * k, *hi = lo + k;
            const int last = r + 1 == R;
            const u128 key = last ? 0 : key_at(bs->p + (r + 1) * (bs->n / R) * rec, n, x.bits);
            for (size_t j = 0; j < k; j++) {
                const section *s = &x.sec[n * k + j];
                lo[j] = r ? bounds[(n_rg - 1) * 2 * k + k + j] : 0;
                hi[j] = last ? s->n : lower_bound(s, n, x.bits, key);
            }
            rg[n_rg++] = (range){.n = n};
        }
    }
    for (size_t r = 0; r < n_rg; r++) { /* bounds moved as it grew: point now */
        rg[r].lo = bounds + r * 2 * k;
        rg[r].hi = rg[r].lo + k;
    }
    if (ret)
        goto done;
    /* the output: records through the ordered writer, then header, metadata */
    eg_outfile w = {.fd = -1, .dfd = -1};
    eg_seqout q = {0};
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", o->output, (long)getpid());
    eg_count_stats *ts = calloc((size_t)T, sizeof *ts);
    if (!ts)
        ret = eg_fail(err, EG_ENOMEM, "out of memory");
    for (int t = 0; t < T && o->top_k && !ret; t++)
        for (uint32_t n = 2; n <= N && !ret; n++)
            if (!(ts[t].top[n] = calloc(o->top_k, sizeof *ts[t].top[n])))
                ret = eg_fail(err, EG_ENOMEM, "out of memory");
    if (!ret && eg_outfile_open(&w, tmp))
        ret = eg_fail(err, EG_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    if (!ret && eg_seqout_init_async(&q, &w, OUT_STAGE))
        ret = eg_fail(err, EG_ENOMEM, "out of memory");
    if (!ret)
        eg_seqout_seek(&q, header_bytes(N));
    const size_t mem = o->memory ? o->memory : (size_t)256 << 20;
    const size_t cap = mem / (size_t)T > ((size_t)1 << 20) ? mem / (size_t)T : (size_t)1 << 20;
    uint64_t done_recs = 0;
    int failed = ret != EG_OK;
    const long long NR = (long long)n_rg;
#ifdef _OPENMP
#pragma omp parallel num_threads(T) reduction(| : failed)
#endif
    {
        const int t = thread_num();
        part pt = {.h = malloc(k * sizeof(head)), .at = malloc(k * sizeof(uint64_t)),
                   .buf = malloc(cap), .cap = cap};
        failed |= !pt.h || !pt.at || !pt.buf;
#ifdef _OPENMP
#pragma omp for ordered schedule(dynamic, 1)
#endif
        for (long long r = 0; r < NR; r++) {
            int fin = 1;
            if (!failed) {
                part_start(&x, &pt, &rg[r]);
                fin = merge_some(&x, &pt, &ts[t]);
            }
#ifdef _OPENMP
#pragma omp ordered
#endif
            {
                while (!failed) {
                    if (pt.wn && eg_seqout_write(&q, pt.buf, pt.wn)) {
                        failed = 1;
                        break;
                    }
                    pt.wn = 0;
                    if (fin)
                        break;
                    fin = merge_some(&x, &pt, &ts[t]);
                }
                for (size_t j = 0; j < k; j++)
                    done_recs += rg[r].hi[j] - rg[r].lo[j];
                if (o->progress && !failed)
                    o->progress(done_recs, records, o->progress_ctx);
            }
        }
        free(pt.h);
        free(pt.at);
        free(pt.buf);
    }
    if (!ret && failed)
        ret = eg_fail(err, EG_EIO, "%s: write failed: %s", tmp, strerror(errno));
    if (!ret && eg_seqout_flush(&q))
        ret = eg_fail(err, EG_EIO, "%s: write failed: %s", tmp, strerror(errno));
    eg_seqout_free(&q);
    if (!ret)
        ret = egc_stats_sum(st, ts, T, N, o->top_k, err);
    ret = egc_finish_file(&w, tmp, o->output, N, meta[0].vprime, meta[0].pad, st, json, json_len,
                          ret, err);
    for (int t = 0; ts && t < T; t++)
        eg_count_stats_free(&ts[t]);
    free(ts);
done:
    if (ret)
        eg_count_stats_free(st);
    free(json);
    free(rg);
    free(bounds);
    free(x.sec);
    egc_meta_free(&all);
    for (size_t i = 0; i < k; i++) {
        if (meta)
            egc_meta_free(&meta[i]);
        if (in)
            eg_counts_close(in[i]);
    }
    free(meta);
    free(in);
    return ret;
}
