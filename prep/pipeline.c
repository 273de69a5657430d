/* pipeline.c - read a batch of documents, tokenize it in parallel (OpenMP,
 * dynamic schedule), write it in input order; repeat. Memory is bounded by the
 * batch (its text and its ids); the output does not depend on the thread count. */
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "../base/eg_internal.h"
#include "engram/eg_prep.h"

#define DEFAULT_BATCH ((size_t)64 << 20)
#define MAX_BATCH_DOCS 65536

typedef struct {
    size_t off, len; /* text in the batch buffer */
    uint32_t flags;
    uint32_t *ids;   /* in the batch's id buffer, or `own` */
    uint32_t *own;   /* a document that needed more room than len + 2 */
    size_t n_ids;
    eg_status st;
    eg_err err;
} doc_slot;

eg_status eg_prep_run(const eg_prep_opts *o, eg_prep_stats *stats, eg_err *err)
{
    if (!o || !o->tok || !o->output || !stats)
        return eg_fail(err, EG_EINVAL, "eg_prep_run: NULL argument");
    memset(stats, 0, sizeof *stats);
    eg_status st = eg_tokenizer_can_encode(o->tok, err);
    if (st)
        return st;
    const uint64_t V = eg_tokenizer_vocab_size(o->tok);
    if ((o->bos >= 0 && (uint64_t)o->bos >= V) || (o->eos >= 0 && (uint64_t)o->eos >= V))
        return eg_fail(err, EG_ERANGE, "--bos/--eos id is outside the tokenizer's %llu ids",
                       (unsigned long long)V);
    const size_t batch_bytes = o->batch_bytes ? o->batch_bytes : DEFAULT_BATCH;
    eg_reader *rd = NULL;
    eg_shard_writer *w = NULL;
    if ((st = eg_reader_open(o->inputs, o->n_inputs, &o->reader, &rd, err)))
        return st;
    if ((st = eg_shard_writer_open(o->output, o->format, V, o->shard_tokens, &w, err))) {
        eg_reader_close(rd);
        return st;
    }
    char *text = NULL;
    size_t text_cap = 0, ids_cap = 0;
    uint32_t *ids_all = NULL;
    doc_slot *docs = calloc(MAX_BATCH_DOCS, sizeof *docs);
    if (!docs)
        st = eg_fail(err, EG_ENOMEM, "out of memory");
    int eof = 0, doc_open = 0;
#ifdef _OPENMP
    const int nt = o->n_threads > 0 ? o->n_threads : omp_get_max_threads();
#endif
    const uint32_t bos = (uint32_t)o->bos, eos = (uint32_t)o->eos;
    while (!st && !eof) {
        /* 1. a batch of documents */
        size_t nd = 0, used = 0;
        while (nd < MAX_BATCH_DOCS && used < batch_bytes) {
            const char *t;
            size_t len;
            uint32_t fl;
            if ((st = eg_reader_next(rd, &t, &len, &fl, err)))
                break;
            if (!t) {
                eof = 1;
                break;
            }
            if (used + len > text_cap) {
                size_t cap = text_cap ? text_cap : (1 << 20);
                while (cap < used + len)
                    cap *= 2;
                char *nt2 = realloc(text, cap);
                if (!nt2) {
                    st = eg_fail(err, EG_ENOMEM, "out of memory for a batch of %zu bytes", cap);
                    break;
                }
                text = nt2;
                text_cap = cap;
            }
            memcpy(text + used, t, len);
            docs[nd].off = used;
            docs[nd].len = len;
            docs[nd].flags = fl;
            used += len;
            nd++;
        }
        if (st)
            break;
        /* 2. tokenize in parallel, each document into its own slice of one
         * buffer (len + 2 ids always suffice; one allocation per batch) */
        if (used + 2 * nd > ids_cap) {
            size_t cap = ids_cap ? ids_cap : (1 << 20);
            while (cap < used + 2 * nd)
                cap *= 2;
            uint32_t *ni = realloc(ids_all, cap * sizeof *ni);
            if (!ni) {
                st = eg_fail(err, EG_ENOMEM, "out of memory for a batch's ids");
                break;
            }
            ids_all = ni;
            ids_cap = cap;
        }
        for (size_t i = 0; i < nd; i++) {
            docs[i].ids = ids_all + docs[i].off + 2 * i;
            free(docs[i].own);
            docs[i].own = NULL;
        }
        const long long n = (long long)nd;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 16) num_threads(nt)
#endif
        for (long long i = 0; i < n; i++) {
            doc_slot *d = &docs[i];
            const uint32_t ef = (d->flags & EG_DOC_CONTINUES) ? EG_ENCODE_CONTINUE : 0u;
            d->st = eg_tokenizer_encode(o->tok, text + d->off, d->len, ef, d->ids, d->len + 2,
                                        &d->n_ids, &d->err);
            if (d->st == EG_ECAPACITY && (d->own = malloc(d->n_ids * sizeof *d->own))) {
                d->ids = d->own;
                d->st = eg_tokenizer_encode(o->tok, text + d->off, d->len, ef, d->own, d->n_ids,
                                            &d->n_ids, &d->err);
            }
        }
        /* 3. write in order */
        for (size_t i = 0; i < nd && !st; i++) {
            doc_slot *d = &docs[i];
            if (d->st) {
                st = d->st;
                if (err)
                    *err = d->err;
                break;
            }
            if (!(d->flags & EG_DOC_CONTINUES)) {
                if (doc_open && o->eos >= 0 && (st = eg_shard_writer_append(w, &eos, 1, err)))
                    break;
                if (o->bos >= 0) {
                    if ((st = eg_shard_writer_add_doc(w, &bos, 1, err)) ||
                        (st = eg_shard_writer_append(w, d->ids, d->n_ids, err)))
                        break;
                } else if ((st = eg_shard_writer_add_doc(w, d->ids, d->n_ids, err))) {
                    break;
                }
                doc_open = 1;
                stats->tokens += (o->bos >= 0) + (o->eos >= 0);
            } else if ((st = eg_shard_writer_append(w, d->ids, d->n_ids, err))) {
                break;
            }
            stats->tokens += d->n_ids;
        }
        eg_reader_get_stats(rd, &stats->in);
        stats->shards = eg_shard_writer_n_shards(w);
        if (!st && o->progress)
            o->progress(stats, o->progress_ctx);
    }
    if (!st && doc_open && o->eos >= 0)
        st = eg_shard_writer_append(w, &eos, 1, err);
    if (!st && !doc_open)
        st = eg_fail(err, EG_EFORMAT, "the input holds no document (every one was empty or "
                                      "skipped): nothing written");
    if (!st)
        st = eg_shard_writer_finish(w, err);
    if (st)
        eg_shard_writer_abort(w);
    else
        stats->shards = eg_shard_writer_n_shards(w);
    eg_reader_get_stats(rd, &stats->in);
    for (size_t i = 0; docs && i < MAX_BATCH_DOCS; i++)
        free(docs[i].own);
    free(docs);
    free(ids_all);
    free(text);
    eg_shard_writer_free(w);
    eg_reader_close(rd);
    return st;
}
