/* count_common.c - what exact and approximate counting share that does not
 * depend on the key width: checks of the options, the input's segments and
 * projection, and the top-k statistics (see count_common.h). */
#include "count_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engram/eg_shard.h"

uint64_t eg_fof_bucket_min(unsigned b) { return b < 8 ? b + 1 : 1ull << (b - 4); }

/* The tokens of every input shard; UINT64_MAX when one cannot be opened (the
 * count then reports it). */
uint64_t egc_input_tokens(const eg_count_opts *o)
{
    uint64_t total = 0;
    for (size_t i = 0; i < o->n_shards; i++) {
        eg_shard *s = NULL;
        eg_err e;
        if (eg_shard_open(o->shards[i], &s, &e))
            return UINT64_MAX;
        total += eg_shard_n_tokens(s);
        eg_shard_close(s);
    }
    return total;
}

/* Project n ids in place and check them (ids outside the projection, or
 * compressed ids >= V'): the checks as one maximum each, which vectorizes;
 * the first offender named only when there is one. */
EG_VEC static uint32_t max_id(const uint32_t *x, size_t n)
{
    uint32_t most = 0;
    for (size_t i = 0; i < n; i++)
        most = x[i] > most ? x[i] : most;
    return most;
}

eg_status egc_project_ids(const eg_count_opts *o, uint32_t *x, size_t n, const char *path,
                             uint64_t pos, eg_err *err)
{
    uint32_t most = max_id(x, n);
    if (o->proj) {
        if (most >= o->n_proj)
            for (size_t i = 0; i < n; i++)
                if (x[i] >= o->n_proj)
                    return eg_fail(err, EG_ERANGE,
                                   "%s: token %llu is id %u, outside the projection's %zu ids",
                                   path, (unsigned long long)(pos + i), x[i], o->n_proj);
        for (size_t i = 0; i < n; i++)
            x[i] = o->proj[x[i]];
        most = max_id(x, n);
    }
    if (most >= o->vprime)
        for (size_t i = 0; i < n; i++)
            if (x[i] >= o->vprime)
                return eg_fail(err, EG_ERANGE, "%s: token %llu: compressed id %u >= V' = %llu",
                               path, (unsigned long long)(pos + i), x[i],
                               (unsigned long long)o->vprime);
    return EG_OK;
}

static int top_worse(const eg_ngram_top *a, const eg_ngram_top *b)
{
    /* "worse" = lower count, or equal count and larger ids (kept last) */
    if (a->count != b->count)
        return a->count < b->count;
    return memcmp(a->ids, b->ids, sizeof a->ids) > 0;
}

void egc_top_offer(eg_count_stats *st, uint32_t n, size_t k, const eg_ngram_top *t)
{
    if (!k || !st->top[n])
        return;
    eg_ngram_top *h = st->top[n]; /* a min-heap of the k best, worst at the root */
    size_t m = st->n_top[n];
    if (m < k) {
        size_t i = m;
        h[i] = *t;
        while (i && top_worse(&h[i], &h[(i - 1) / 2])) {
            eg_ngram_top tmp = h[i];
            h[i] = h[(i - 1) / 2];
            h[(i - 1) / 2] = tmp;
            i = (i - 1) / 2;
        }
        st->n_top[n] = m + 1;
        return;
    }
    if (!top_worse(&h[0], t))
        return;
    h[0] = *t;
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, s = i;
        if (l < m && top_worse(&h[l], &h[s]))
            s = l;
        if (l + 1 < m && top_worse(&h[l + 1], &h[s]))
            s = l + 1;
        if (s == i)
            break;
        eg_ngram_top tmp = h[i];
        h[i] = h[s];
        h[s] = tmp;
        i = s;
    }
}

int egc_cmp_top(const void *a, const void *b)
{
    const eg_ngram_top *x = a, *y = b;
    return top_worse(x, y) ? 1 : top_worse(y, x) ? -1 : 0;
}

void eg_count_stats_free(eg_count_stats *st)
{
    if (!st)
        return;
    for (int n = 0; n <= EG_COUNT_MAX_ORDER; n++) {
        free(st->top[n]);
        st->top[n] = NULL;
        st->n_top[n] = 0;
    }
}

eg_status egc_check_opts(const eg_count_opts *o, eg_err *err)
{
    if (!o || !o->shards || (!o->n_shards && !o->comm)) /* a rank may have none */
        return eg_fail(err, EG_EINVAL, "count: no input shards");
    if (o->max_ngram < 2 || o->max_ngram > EG_COUNT_MAX_ORDER)
        return eg_fail(err, EG_EINVAL, "count: orders 2..N with N in 2..%d (got %u)",
                       EG_COUNT_MAX_ORDER, o->max_ngram);
    if (o->vprime == 0 || o->vprime > (1ull << 32))
        return eg_fail(err, EG_EINVAL, "count: V' must be in 1..2^32");
    if (o->pad < 0 || (uint64_t)o->pad >= o->vprime)
        return eg_fail(err, EG_ERANGE, "count: the compressed pad id %lld is outside V' = %llu",
                       (long long)o->pad, (unsigned long long)o->vprime);
    if (o->pad_mode == EG_PAD_SEQLEN && !o->seq_len)
        return eg_fail(err, EG_EINVAL, "count: --seq-len needs T >= 1");
    return EG_OK;
}

unsigned egc_id_bits(uint64_t vprime)
{
    unsigned b = 1;
    while (b < 32 && (1ull << b) < vprime)
        b++;
    return b;
}

/* Run the input through `each_segment` (shared by exact and approximate). */

eg_status egc_for_each_segment(const eg_count_opts *o, segment_fn fn, void *ctx,
                                  uint64_t *tokens, eg_err *err)
{
    /* totals first, for progress and early format errors */
    uint64_t total = 0, done = 0;
    for (size_t i = 0; i < o->n_shards; i++) {
        eg_shard *s = NULL;
        eg_status st = eg_shard_open(o->shards[i], &s, err);
        if (st)
            return st;
        total += eg_shard_n_tokens(s);
        eg_shard_close(s);
    }
    uint64_t *starts = NULL;
    if (o->pad_mode == EG_PAD_DOCS && !(starts = malloc(DOC_BATCH * sizeof *starts)))
        return eg_fail(err, EG_ENOMEM, "out of memory");
    for (size_t i = 0; i < o->n_shards; i++) {
        eg_shard *s = NULL;
        eg_status st = eg_shard_open(o->shards[i], &s, err);
        if (st) {
            free(starts);
            return st;
        }
        const uint64_t n = eg_shard_n_tokens(s);
        if (o->pad_mode == EG_PAD_DOCS) {
            /* runs of contiguous documents as one segment each */
            uint64_t a = 0, b = 0;
            size_t ns = 0;
            for (uint64_t d = 0; d < eg_shard_n_docs(s) && !st; d++) {
                uint64_t first, len;
                if ((st = eg_shard_doc(s, d, &first, &len)) != EG_OK || !len)
                    continue;
                if (ns && (first != b || ns == DOC_BATCH)) {
                    st = fn(ctx, s, o->shards[i], a, b, 0, starts, ns, &done, total);
                    ns = 0;
                }
                if (!ns)
                    a = first;
                starts[ns++] = first;
                b = first + len;
            }
            if (!st && ns)
                st = fn(ctx, s, o->shards[i], a, b, 0, starts, ns, &done, total);
        } else if (n) { /* the shard as one segment of sequences */
            st = fn(ctx, s, o->shards[i], 0, n, o->seq_len, NULL, 0, &done, total);
        }
        eg_shard_close(s);
        if (st) {
            free(starts);
            return st;
        }
    }
    free(starts);
    *tokens = done;
    return EG_OK;
}

eg_status egc_stats_sum(eg_count_stats *st, eg_count_stats *ts, int T, uint32_t N, size_t top_k,
                        eg_err *err)
{
    for (int t = 0; t < T; t++)
        for (uint32_t n = 2; n <= N; n++) {
            st->distinct[n] += ts[t].distinct[n];
            st->total[n] += ts[t].total[n];
            st->singletons[n] += ts[t].singletons[n];
            for (unsigned b = 0; b < EG_FOF_BUCKETS; b++)
                st->fof[n][b] += ts[t].fof[n][b];
        }
    for (uint32_t n = 2; n <= N && top_k; n++) {
        if (!(st->top[n] = calloc(top_k, sizeof *st->top[n])))
            return eg_fail(err, EG_ENOMEM, "out of memory");
        for (int t = 0; t < T; t++)
            for (size_t i = 0; i < ts[t].n_top[n]; i++)
                egc_top_offer(st, n, top_k, &ts[t].top[n][i]);
        qsort(st->top[n], st->n_top[n], sizeof *st->top[n], egc_cmp_top);
    }
    return EG_OK;
}

eg_status egc_write_header(int fd, uint32_t N, uint64_t vprime, int64_t pad,
                           const eg_count_stats *st, const char *path, eg_err *err)
{
    unsigned char hdr[8 + 4 + 4 + 8 + 8 + 8 + 16 * EG_COUNT_MAX_ORDER];
    memset(hdr, 0, sizeof hdr);
    memcpy(hdr, "EGCOUNT1", 8);
    eg_put_le32(hdr + 8, 2);
    eg_put_le32(hdr + 12, N);
    eg_put_le64(hdr + 16, vprime);
    eg_put_le64(hdr + 24, (uint64_t)pad);
    eg_put_le64(hdr + 32, st->tokens);
    for (uint32_t n = 2; n <= N; n++) {
        eg_put_le64(hdr + 40 + 16 * (n - 2), st->distinct[n]);
        eg_put_le64(hdr + 48 + 16 * (n - 2), st->total[n]);
    }
    size_t len = header_bytes(N);
    if (pwrite(fd, hdr, len, 0) != (ssize_t)len)
        return eg_fail(err, EG_EIO, "%s: write failed: %s", path, strerror(errno));
    return EG_OK;
}
