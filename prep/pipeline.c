/* pipeline.c - read a batch of documents, tokenize it in parallel (OpenMP,
 * dynamic schedule), write it in input order; repeat. Memory is bounded by the
 * batch (its text and its ids); the output does not depend on the thread count. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "../base/eg_internal.h"
#include "engram/eg_prep.h"

__extension__ typedef unsigned __int128 u128;

static const char no_document[] =
    "the input holds no document (every one was empty or skipped): nothing written";

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

/* Prepare `inputs` into shards at `output`. A share with no document is an
 * error when need_doc, else writes nothing (stats->shards 0). On success the
 * finished writer goes to *keep where keep is non-NULL (to be renamed or
 * aborted by the caller), else it is freed; on failure nothing is left. */
static eg_status prep_share(const eg_prep_opts *o, const char *const *inputs, size_t n_inputs,
                            const char *output, int need_doc, eg_prep_stats *stats,
                            eg_shard_writer **keep, eg_err *err)
{
    memset(stats, 0, sizeof *stats);
    eg_status st;
    const uint64_t V = eg_tokenizer_vocab_size(o->tok);
    const size_t batch_bytes = o->batch_bytes ? o->batch_bytes : DEFAULT_BATCH;
    eg_reader *rd = NULL;
    eg_shard_writer *w = NULL;
    if ((st = eg_reader_open(inputs, n_inputs, &o->reader, &rd, err)))
        return st;
    if ((st = eg_shard_writer_open(output, o->format, V, o->shard_tokens, &w, err))) {
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
    if (!st && !doc_open && need_doc)
        st = eg_fail(err, EG_EFORMAT, "%s", no_document);
    if (!st && doc_open)
        st = eg_shard_writer_finish(w, err);
    if (st || !doc_open)
        eg_shard_writer_abort(w);
    stats->shards = st ? 0 : eg_shard_writer_n_shards(w);
    eg_reader_get_stats(rd, &stats->in);
    for (size_t i = 0; docs && i < MAX_BATCH_DOCS; i++)
        free(docs[i].own);
    free(docs);
    free(ids_all);
    free(text);
    if (!st && keep) {
        *keep = w;
        w = NULL;
    }
    eg_shard_writer_free(w);
    eg_reader_close(rd);
    return st;
}

/* ---- across ranks ----------------------------------------------------------- */

/* The files of this rank: the expanded inputs divided by size into runs in
 * reading order, file i to the rank whose 1/R of the bytes holds the
 * file's midpoint (so runs are contiguous and every rank computes the same
 * division). *first and *count index eg_reader_file. */
static eg_status share_of(const eg_prep_opts *o, eg_reader **all, size_t *first, size_t *count,
                          eg_err *err)
{
    eg_status st = eg_reader_open(o->inputs, o->n_inputs, &o->reader, all, err);
    if (st)
        return st;
    size_t n = 0;
    while (eg_reader_file(*all, n))
        n++;
    uint64_t total = 0, *size = malloc((n + 1) * sizeof *size);
    if (!size)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    for (size_t i = 0; i < n && !st; i++) {
        const char *f = eg_reader_file(*all, i);
        struct stat sb;
        if (!strcmp(f, "-"))
            st = eg_fail(err, EG_EINVAL, "standard input cannot be divided among ranks: "
                                         "name the input files");
        else if (stat(f, &sb))
            st = eg_fail(err, EG_EIO, "%s: %s", f, strerror(errno));
        else
            total += size[i] = (uint64_t)sb.st_size;
    }
    const unsigned R = (unsigned)o->comm->size, me = (unsigned)o->comm->rank;
    uint64_t at = 0;
    *first = n;
    *count = 0;
    for (size_t i = 0; i < n && !st; i++) {
        const uint64_t mid2 = 2 * at + size[i]; /* twice the file's midpoint */
        at += size[i];
        /* rank = floor(R * mid / total), in 128 bits; all at rank 0 when empty */
        const unsigned r = total ? (unsigned)((u128)mid2 * R / (2 * (u128)total)) : 0;
        if ((r < R ? r : R - 1) == me) {
            if (!*count)
                *first = i;
            (*count)++;
        }
    }
    free(size);
    return st;
}

/* A Megatron shard's path (...bin) made its index's (...idx), in place. */
static void to_idx(char *path) { memcpy(path + strlen(path) - 4, ".idx", 4); }

/* The final name of w's shard i (written under the temporary prefix tmp),
 * or its .idx. */
static void final_name(char *to, size_t cap, const eg_shard_writer *w, size_t i, int idx,
                       const char *tmp, const char *prefix)
{
    snprintf(to, cap, "%s%s", prefix, eg_shard_writer_path(w, i) + strlen(tmp));
    if (idx)
        to_idx(to);
}

/* Remove the final names of w's first n shards. */
static void unlink_final(const eg_shard_writer *w, size_t n, eg_shard_format fmt,
                         const char *tmp, const char *prefix)
{
    char to[4200];
    for (size_t i = 0; i < n; i++)
        for (int idx = 0; idx < 1 + (fmt == EG_SHARD_MEGATRON); idx++) {
            final_name(to, sizeof to, w, i, idx, tmp, prefix);
            unlink(to);
        }
}

/* Rename every file of w (its shards and, for Megatron, their .idx) from
 * the temporary prefix tmp to prefix. On failure the files renamed so far
 * are removed, and the rest by the caller (eg_shard_writer_abort). */
static eg_status rename_shards(eg_shard_writer *w, eg_shard_format fmt, const char *tmp,
                               const char *prefix, eg_err *err)
{
    char from[4200], to[4200];
    for (size_t i = 0; i < eg_shard_writer_n_shards(w); i++)
        for (int idx = 0; idx < 1 + (fmt == EG_SHARD_MEGATRON); idx++) {
            snprintf(from, sizeof from, "%s", eg_shard_writer_path(w, i));
            if (idx)
                to_idx(from);
            final_name(to, sizeof to, w, i, idx, tmp, prefix);
            if (rename(from, to)) {
                eg_status st = eg_fail(err, EG_EIO, "%s: cannot rename into place: %s", to,
                                       strerror(errno));
                unlink_final(w, i + 1, fmt, tmp, prefix);
                return st;
            }
        }
    return EG_OK;
}

static void stats_add(eg_prep_stats *a, const eg_prep_stats *b)
{
    a->in.files += b->in.files;
    a->in.bytes_read += b->in.bytes_read;
    a->in.bytes_total += b->in.bytes_total;
    a->in.bytes += b->in.bytes;
    a->in.docs += b->in.docs;
    a->in.chunks += b->in.chunks;
    a->in.empty += b->in.empty;
    a->in.bad_utf8 += b->in.bad_utf8;
    a->in.bad_records += b->in.bad_records;
    a->in.missing_field += b->in.missing_field;
    a->tokens += b->tokens;
    a->shards += b->shards;
}

static eg_status prep_distributed(const eg_prep_opts *o, eg_prep_stats *stats, eg_err *err)
{
    const eg_comm *cm = o->comm;
    eg_reader *all = NULL;
    eg_shard_writer *w = NULL;
    size_t first = 0, count = 0;
    char prefix[4096], tmp[4200];
    snprintf(prefix, sizeof prefix, "%s_r%05d", o->output, cm->rank);
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", prefix, (long)getpid());
    eg_status st = strlen(o->output) + 64 > sizeof prefix
                       ? eg_fail(err, EG_EINVAL, "%s: the output prefix is too long", o->output)
                       : share_of(o, &all, &first, &count, err);
    eg_prep_stats mine;
    memset(&mine, 0, sizeof mine);
    if (!st && count) {
        const char **files = malloc(count * sizeof *files);
        for (size_t i = 0; files && i < count; i++)
            files[i] = eg_reader_file(all, first + i);
        st = files ? prep_share(o, files, count, tmp, 0, &mine, &w, err)
                   : eg_fail(err, EG_ENOMEM, "out of memory");
        free(files);
    }
    eg_reader_close(all);
    /* every rank's verdict, then the whole job's statistics */
    eg_prep_stats *each = malloc((size_t)cm->size * sizeof *each);
    if (!st && !each)
        st = eg_fail(err, EG_ENOMEM, "out of memory");
    st = eg_comm_agree(cm, st, err);
    if (!st && cm->allgather(cm->ctx, &mine, sizeof mine, each))
        st = eg_fail(err, EG_EIO, "the ranks could not exchange their statistics");
    memset(stats, 0, sizeof *stats);
    for (int r = 0; !st && r < cm->size; r++)
        stats_add(stats, &each[r]);
    free(each);
    if (!st && !stats->in.docs)
        st = eg_fail(err, EG_EFORMAT, "%s", no_document);
    /* temporary names to final ones on every rank, or on none */
    if (!st) {
        const eg_status renamed = w ? rename_shards(w, o->format, tmp, prefix, err) : EG_OK;
        st = eg_comm_agree(cm, renamed, err);
        if (st && !renamed && w) /* another rank could not rename: undo ours */
            unlink_final(w, eg_shard_writer_n_shards(w), o->format, tmp, prefix);
    }
    if (st && w) /* what is left under temporary names */
        eg_shard_writer_abort(w);
    eg_shard_writer_free(w);
    return st;
}

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
    if (o->comm)
        return prep_distributed(o, stats, err);
    return prep_share(o, o->inputs, o->n_inputs, o->output, 1, stats, NULL, err);
}
