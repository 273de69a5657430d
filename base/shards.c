/* shards.c - token shards: Megatron-LM MMIDIDX, llm.c .bin and raw uint32;
 * writers (temporary names, renamed when complete) and checked readers. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "eg_internal.h"
#include "engram/eg_shard.h"

static const char MMIDIDX_MAGIC[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};
#define LLMC_MAGIC_16 20240520
#define LLMC_MAGIC_32 20240801
#define LLMC_VERSION_16 1
#define LLMC_VERSION_32 7
#define LLMC_HEADER_BYTES 1024
#define MEGATRON_UINT16 8
#define MEGATRON_INT32 4

/* ---- the writer ------------------------------------------------------------------ */

struct eg_shard_writer {
    char *prefix;
    eg_shard_format fmt;
    int wide;      /* 4-byte tokens */
    uint64_t shard_tokens;
    /* the open shard */
    FILE *bin;
    char *bin_tmp, *bin_final, *idx_tmp, *idx_final;
    uint64_t tokens; /* in the open shard */
    int32_t *sizes;
    size_t n_docs, docs_cap;
    int doc_open;
    /* finished files (for abort) and shard token files (for listing) */
    char **done;
    size_t n_done, done_cap;
    char **shards;
    size_t n_shards, shards_cap;
    size_t index; /* next shard number */
    unsigned char *buf;
    size_t buf_cap;
};

static int remember(char ***list, size_t *n, size_t *cap, const char *s)
{
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 8;
        char **l = realloc(*list, *cap * sizeof *l);
        if (!l)
            return -1;
        *list = l;
    }
    if (!((*list)[*n] = strdup(s)))
        return -1;
    (*n)++;
    return 0;
}

static char *path_of(const char *prefix, size_t index, int numbered, const char *ext,
                     const char *tmp)
{
    size_t len = strlen(prefix) + 64;
    char *p = malloc(len);
    if (!p)
        return NULL;
    if (numbered)
        snprintf(p, len, "%s_%06zu%s%s", prefix, index, ext, tmp);
    else
        snprintf(p, len, "%s%s%s", prefix, ext, tmp);
    return p;
}

static eg_status shard_begin(eg_shard_writer *w, eg_err *err)
{
    const int numbered = w->shard_tokens > 0;
    const char *ext = w->fmt == EG_SHARD_U32 ? ".u32" : ".bin";
    char tmp[32];
    snprintf(tmp, sizeof tmp, ".tmp.%ld", (long)getpid());
    w->bin_final = path_of(w->prefix, w->index, numbered, ext, "");
    w->bin_tmp = path_of(w->prefix, w->index, numbered, ext, tmp);
    if (w->fmt == EG_SHARD_MEGATRON) {
        w->idx_final = path_of(w->prefix, w->index, numbered, ".idx", "");
        w->idx_tmp = path_of(w->prefix, w->index, numbered, ".idx", tmp);
    }
    if (!w->bin_final || !w->bin_tmp ||
        (w->fmt == EG_SHARD_MEGATRON && (!w->idx_final || !w->idx_tmp)))
        return eg_fail(err, EG_ENOMEM, "out of memory");
    w->bin = fopen(w->bin_tmp, "wb");
    if (!w->bin)
        return eg_fail(err, EG_EIO, "%s: cannot create: %s", w->bin_tmp, strerror(errno));
    w->tokens = 0;
    w->n_docs = 0;
    w->doc_open = 0;
    w->index++;
    if (w->fmt == EG_SHARD_LLMC) { /* header placeholder, written at the end */
        unsigned char zero[LLMC_HEADER_BYTES] = {0};
        if (fwrite(zero, 1, sizeof zero, w->bin) != sizeof zero)
            return eg_fail(err, EG_EIO, "%s: write failed: %s", w->bin_tmp, strerror(errno));
    }
    return EG_OK;
}

static eg_status write_file_bytes(const char *path, const unsigned char *p, size_t n, eg_err *err)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return eg_fail(err, EG_EIO, "%s: cannot create: %s", path, strerror(errno));
    int bad = fwrite(p, 1, n, f) != n;
    bad |= fflush(f) != 0 || fsync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    return bad ? eg_fail(err, EG_EIO, "%s: write failed: %s", path, strerror(errno)) : EG_OK;
}

static void free_names(eg_shard_writer *w)
{
    free(w->bin_tmp);
    free(w->bin_final);
    free(w->idx_tmp);
    free(w->idx_final);
    w->bin_tmp = w->bin_final = w->idx_tmp = w->idx_final = NULL;
}

/* Complete the open shard: headers, index, fsync, rename. */
static eg_status shard_end(eg_shard_writer *w, eg_err *err)
{
    if (!w->bin)
        return EG_OK;
    eg_status st = EG_OK;
    if (w->fmt == EG_SHARD_LLMC) {
        if (w->tokens > INT32_MAX) {
            st = eg_fail(err, EG_ERANGE, "%s: an llm.c shard holds at most 2^31-1 tokens",
                         w->bin_final);
        } else {
            unsigned char h[12];
            uint32_t v[3] = {w->wide ? LLMC_MAGIC_32 : LLMC_MAGIC_16,
                             w->wide ? LLMC_VERSION_32 : LLMC_VERSION_16, (uint32_t)w->tokens};
            for (int i = 0; i < 3; i++)
                for (int b = 0; b < 4; b++)
                    h[4 * i + b] = (unsigned char)(v[i] >> (8 * b));
            if (fseek(w->bin, 0, SEEK_SET) || fwrite(h, 1, 12, w->bin) != 12)
                st = eg_fail(err, EG_EIO, "%s: write failed: %s", w->bin_tmp, strerror(errno));
        }
    }
    if (!st && (fflush(w->bin) || fsync(fileno(w->bin))))
        st = eg_fail(err, EG_EIO, "%s: write failed: %s", w->bin_tmp, strerror(errno));
    if (fclose(w->bin) && !st)
        st = eg_fail(err, EG_EIO, "%s: close failed: %s", w->bin_tmp, strerror(errno));
    w->bin = NULL;
    if (!st && w->fmt == EG_SHARD_MEGATRON) {
        const size_t n = w->n_docs;
        const size_t bytes = 9 + 8 + 1 + 8 + 8 + n * 4 + n * 8 + (n + 1) * 8;
        unsigned char *p = malloc(bytes);
        if (!p) {
            st = eg_fail(err, EG_ENOMEM, "out of memory");
        } else {
            unsigned char *q = p;
            memcpy(q, MMIDIDX_MAGIC, 9);
            q += 9;
            eg_put_le64(q, 1);
            q += 8;
            *q++ = w->wide ? MEGATRON_INT32 : MEGATRON_UINT16;
            eg_put_le64(q, n);
            q += 8;
            eg_put_le64(q, n + 1);
            q += 8;
            for (size_t i = 0; i < n; i++, q += 4)
                for (int b = 0; b < 4; b++)
                    q[b] = (unsigned char)((uint32_t)w->sizes[i] >> (8 * b));
            uint64_t ptr = 0;
            for (size_t i = 0; i < n; i++, q += 8) {
                eg_put_le64(q, ptr);
                ptr += (uint64_t)w->sizes[i] * (w->wide ? 4 : 2);
            }
            for (size_t i = 0; i <= n; i++, q += 8)
                eg_put_le64(q, i);
            st = write_file_bytes(w->idx_tmp, p, bytes, err);
            free(p);
        }
    }
    if (!st && rename(w->bin_tmp, w->bin_final))
        st = eg_fail(err, EG_EIO, "%s: cannot rename into place: %s", w->bin_final,
                     strerror(errno));
    if (!st && (remember(&w->done, &w->n_done, &w->done_cap, w->bin_final) ||
                remember(&w->shards, &w->n_shards, &w->shards_cap, w->bin_final)))
        st = eg_fail(err, EG_ENOMEM, "out of memory");
    if (!st && w->fmt == EG_SHARD_MEGATRON) {
        if (rename(w->idx_tmp, w->idx_final))
            st = eg_fail(err, EG_EIO, "%s: cannot rename into place: %s", w->idx_final,
                         strerror(errno));
        else if (remember(&w->done, &w->n_done, &w->done_cap, w->idx_final))
            st = eg_fail(err, EG_ENOMEM, "out of memory");
    }
    if (st) {
        unlink(w->bin_tmp);
        if (w->idx_tmp)
            unlink(w->idx_tmp);
    }
    free_names(w);
    return st;
}

eg_status eg_shard_writer_open(const char *prefix, eg_shard_format fmt, uint64_t vocab_size,
                               uint64_t shard_tokens, eg_shard_writer **out, eg_err *err)
{
    if (!prefix || !out || fmt < EG_SHARD_MEGATRON || fmt > EG_SHARD_U32)
        return eg_fail(err, EG_EINVAL, "eg_shard_writer_open: bad argument");
    *out = NULL;
    eg_shard_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->prefix = strdup(prefix))) {
        free(w);
        return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    w->fmt = fmt;
    w->shard_tokens = shard_tokens;
    /* Megatron's best_fitting_dtype: uint16 below 65,500 ids */
    w->wide = fmt == EG_SHARD_U32 ||
              (fmt == EG_SHARD_MEGATRON ? vocab_size >= 65500 : vocab_size > 65536);
    eg_status st = shard_begin(w, err);
    if (st) {
        eg_shard_writer_abort(w);
        eg_shard_writer_free(w);
        return st;
    }
    *out = w;
    return EG_OK;
}

static eg_status write_tokens(eg_shard_writer *w, const uint32_t *ids, size_t n, eg_err *err)
{
    const size_t item = w->wide ? 4 : 2;
    if (n * item > w->buf_cap) {
        free(w->buf);
        w->buf_cap = n * item;
        if (!(w->buf = malloc(w->buf_cap)))
            return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t v = ids[i];
        if (!w->wide && v > 0xFFFF)
            return eg_fail(err, EG_ERANGE, "token id %u does not fit the shard's uint16", v);
        for (size_t b = 0; b < item; b++)
            w->buf[i * item + b] = (unsigned char)(v >> (8 * b));
    }
    if (n && fwrite(w->buf, item, n, w->bin) != n)
        return eg_fail(err, EG_EIO, "%s: write failed: %s", w->bin_tmp, strerror(errno));
    w->tokens += n;
    return EG_OK;
}

eg_status eg_shard_writer_append(eg_shard_writer *w, const uint32_t *ids, size_t n, eg_err *err)
{
    if (!w->doc_open)
        return eg_shard_writer_add_doc(w, ids, n, err);
    if (w->fmt == EG_SHARD_MEGATRON &&
        (uint64_t)w->sizes[w->n_docs - 1] + n > (uint64_t)INT32_MAX)
        return eg_fail(err, EG_ERANGE, "a document of more than 2^31-1 tokens");
    eg_status st = write_tokens(w, ids, n, err);
    if (!st && w->fmt == EG_SHARD_MEGATRON)
        w->sizes[w->n_docs - 1] += (int32_t)n;
    return st;
}

eg_status eg_shard_writer_add_doc(eg_shard_writer *w, const uint32_t *ids, size_t n, eg_err *err)
{
    eg_status st;
    if (w->shard_tokens && w->tokens >= w->shard_tokens) {
        if ((st = shard_end(w, err)) || (st = shard_begin(w, err)))
            return st;
    }
    if (w->fmt == EG_SHARD_MEGATRON) {
        if (n > (size_t)INT32_MAX)
            return eg_fail(err, EG_ERANGE, "a document of more than 2^31-1 tokens");
        if (w->n_docs == w->docs_cap) {
            size_t cap = w->docs_cap ? 2 * w->docs_cap : 1024;
            int32_t *s = realloc(w->sizes, cap * sizeof *s);
            if (!s)
                return eg_fail(err, EG_ENOMEM, "out of memory");
            w->sizes = s;
            w->docs_cap = cap;
        }
        w->sizes[w->n_docs++] = 0;
    }
    w->doc_open = 1;
    if ((st = write_tokens(w, ids, n, err)))
        return st;
    if (w->fmt == EG_SHARD_MEGATRON)
        w->sizes[w->n_docs - 1] = (int32_t)n;
    return EG_OK;
}

eg_status eg_shard_writer_finish(eg_shard_writer *w, eg_err *err) { return shard_end(w, err); }

void eg_shard_writer_abort(eg_shard_writer *w)
{
    if (!w)
        return;
    if (w->bin) {
        fclose(w->bin);
        w->bin = NULL;
    }
    if (w->bin_tmp)
        unlink(w->bin_tmp);
    if (w->idx_tmp)
        unlink(w->idx_tmp);
    for (size_t i = 0; i < w->n_done; i++)
        unlink(w->done[i]);
    for (size_t i = 0; i < w->n_shards; i++)
        free(w->shards[i]);
    w->n_shards = 0;
}

size_t eg_shard_writer_n_shards(const eg_shard_writer *w) { return w->n_shards; }

const char *eg_shard_writer_path(const eg_shard_writer *w, size_t i)
{
    return i < w->n_shards ? w->shards[i] : NULL;
}

void eg_shard_writer_free(eg_shard_writer *w)
{
    if (!w)
        return;
    if (w->bin) { /* never finished: remove the partial shard */
        fclose(w->bin);
        unlink(w->bin_tmp);
    }
    free_names(w);
    for (size_t i = 0; i < w->n_done; i++)
        free(w->done[i]);
    for (size_t i = 0; i < w->n_shards; i++)
        free(w->shards[i]);
    free(w->done);
    free(w->shards);
    free(w->sizes);
    free(w->buf);
    free(w->prefix);
    free(w);
}

/* ---- the reader ---------------------------------------------------------------- */

struct eg_shard {
    eg_shard_format fmt;
    int wide;
    /* Tokens are read with pread (no mapping: a corpus-scale read must not
     * grow the process's resident memory); the map is used while opening. */
    int fd;
    uint64_t data_off; /* byte offset of token 0 in the token file */
    void *map;
    size_t map_len;
    uint64_t n_tokens, n_docs;
    uint64_t *doc_first; /* Megatron: n_docs + 1 token offsets */
    char *path;
};

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static eg_status open_megatron(eg_shard *s, const char *prefix, eg_err *err)
{
    size_t n = strlen(prefix) + 8;
    char *idx = malloc(n), *bin = malloc(n);
    void *im = NULL;
    size_t il = 0;
    eg_status st = (!idx || !bin) ? eg_fail(err, EG_ENOMEM, "out of memory") : EG_OK;
    if (!st) {
        snprintf(idx, n, "%s.idx", prefix);
        snprintf(bin, n, "%s.bin", prefix);
        st = eg_map_file(idx, &im, &il, err);
    }
    const unsigned char *p = im;
    if (!st && (il < 34 || memcmp(p, MMIDIDX_MAGIC, 9)))
        st = eg_fail(err, EG_EFORMAT, "%s: not a Megatron index (no MMIDIDX header)", idx);
    uint64_t nseq = 0, ndoc = 0;
    if (!st) {
        uint64_t ver = eg_get_le64(p + 9);
        uint8_t dt = p[17];
        nseq = eg_get_le64(p + 18);
        ndoc = eg_get_le64(p + 26);
        if (ver != 1)
            st = eg_fail(err, EG_EUNSUPPORTED, "%s: index version %llu (only 1 is known)", idx,
                         (unsigned long long)ver);
        else if (dt != MEGATRON_UINT16 && dt != MEGATRON_INT32)
            st = eg_fail(err, EG_EUNSUPPORTED, "%s: token dtype code %u (uint16=8, int32=4)", idx,
                         dt);
        else if (nseq > il / 12 || ndoc > il / 8 || 34 + nseq * 12 + ndoc * 8 != il)
            st = eg_fail(err, EG_EFORMAT,
                         "%s: counts (%llu sequences, %llu documents) do not match the file "
                         "size %zu",
                         idx, (unsigned long long)nseq, (unsigned long long)ndoc, il);
        s->wide = dt == MEGATRON_INT32;
    }
    if (!st)
        st = eg_map_file(bin, &s->map, &s->map_len, err);
    if (!st) {
        const size_t item = s->wide ? 4 : 2;
        const unsigned char *sizes = p + 34, *ptrs = sizes + nseq * 4, *docs = ptrs + nseq * 8;
        uint64_t expect = 0;
        for (uint64_t i = 0; i < nseq && !st; i++) {
            uint32_t sz = eg_get_le32(sizes + 4 * i);
            uint64_t ptr = eg_get_le64(ptrs + 8 * i);
            if (sz > INT32_MAX || ptr != expect)
                st = eg_fail(err, EG_EFORMAT, "%s: sequence %llu has a bad size or pointer", idx,
                             (unsigned long long)i);
            expect += (uint64_t)sz * item;
        }
        if (!st && expect != s->map_len)
            st = eg_fail(err, EG_EFORMAT,
                         "%s: %zu bytes but the index describes %llu (truncated shard?)", bin,
                         s->map_len, (unsigned long long)expect);
        if (!st && (ndoc == 0 || eg_get_le64(docs) != 0 || eg_get_le64(docs + 8 * (ndoc - 1)) != nseq))
            st = eg_fail(err, EG_EFORMAT, "%s: document index does not span the sequences", idx);
        for (uint64_t i = 1; i < ndoc && !st; i++)
            if (eg_get_le64(docs + 8 * i) < eg_get_le64(docs + 8 * (i - 1)))
                st = eg_fail(err, EG_EFORMAT, "%s: document index is not ascending", idx);
        if (!st) {
            s->n_docs = ndoc - 1;
            s->n_tokens = s->map_len / item;
            s->data_off = 0;
            s->fd = open(bin, O_RDONLY | O_CLOEXEC);
            if (s->fd < 0)
                st = eg_fail(err, EG_EIO, "%s: cannot open: %s", bin, strerror(errno));
            s->doc_first = malloc((ndoc + 1) * sizeof *s->doc_first);
            if (!s->doc_first)
                st = eg_fail(err, EG_ENOMEM, "out of memory");
            for (uint64_t d = 0; d < ndoc && !st; d++) {
                uint64_t seq = eg_get_le64(docs + 8 * d);
                s->doc_first[d] = seq < nseq ? eg_get_le64(ptrs + 8 * seq) / item : s->n_tokens;
            }
        }
    }
    if (im)
        munmap(im, il);
    free(idx);
    free(bin);
    return st;
}

eg_status eg_shard_open(const char *path, eg_shard **out, eg_err *err)
{
    if (!path || !out)
        return eg_fail(err, EG_EINVAL, "eg_shard_open: NULL argument");
    *out = NULL;
    eg_shard *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    s->fd = -1;
    eg_status st = EG_OK;
    struct stat sb;
    /* a Megatron prefix, or its .bin/.idx */
    char *prefix = strdup(path);
    if (!prefix) {
        eg_shard_close(s);
        return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    if (ends_with(prefix, ".idx") || ends_with(prefix, ".bin"))
        prefix[strlen(prefix) - 4] = 0;
    char *idx = malloc(strlen(prefix) + 5);
    if (idx)
        snprintf(idx, strlen(prefix) + 5, "%s.idx", prefix);
    int is_megatron = idx && stat(idx, &sb) == 0 && !ends_with(path, ".u32");
    free(idx);
    if (is_megatron) {
        s->fmt = EG_SHARD_MEGATRON;
        st = open_megatron(s, prefix, err);
    } else {
        st = eg_map_file(path, &s->map, &s->map_len, err);
        const unsigned char *p = s->map;
        if (!st && s->map_len >= LLMC_HEADER_BYTES &&
            (eg_get_le32(p) == LLMC_MAGIC_16 || eg_get_le32(p) == LLMC_MAGIC_32)) {
            s->fmt = EG_SHARD_LLMC;
            uint32_t magic = eg_get_le32(p), ver = eg_get_le32(p + 4), ntok = eg_get_le32(p + 8);
            s->wide = magic == LLMC_MAGIC_32;
            if (ver != (s->wide ? LLMC_VERSION_32 : LLMC_VERSION_16))
                st = eg_fail(err, EG_EUNSUPPORTED, "%s: llm.c header version %u", path, ver);
            else if ((uint64_t)LLMC_HEADER_BYTES + (uint64_t)ntok * (s->wide ? 4 : 2) !=
                     s->map_len)
                st = eg_fail(err, EG_EFORMAT,
                             "%s: header says %u tokens but the file holds %zu bytes (truncated?)",
                             path, ntok, s->map_len);
            s->n_tokens = ntok;
            s->data_off = LLMC_HEADER_BYTES;
            s->n_docs = 1;
        } else if (!st && ends_with(path, ".u32")) {
            s->fmt = EG_SHARD_U32;
            s->wide = 1;
            if (s->map_len % 4)
                st = eg_fail(err, EG_EFORMAT, "%s: %zu bytes is not a whole number of uint32",
                             path, s->map_len);
            s->n_tokens = s->map_len / 4;
            s->data_off = 0;
            s->n_docs = 1;
        } else if (!st) {
            st = eg_fail(err, EG_EFORMAT,
                         "%s: unknown shard format (no .idx beside it, no llm.c magic, not .u32)",
                         path);
        }
    }
    free(prefix);
    if (!st && s->fd < 0) {
        s->fd = open(path, O_RDONLY | O_CLOEXEC);
        if (s->fd < 0)
            st = eg_fail(err, EG_EIO, "%s: cannot open: %s", path, strerror(errno));
    }
    if (s->map) { /* validated: from here on tokens are read with pread */
        munmap(s->map, s->map_len);
        s->map = NULL;
    }
    if (st) {
        eg_shard_close(s);
        return st;
    }
    *out = s;
    return EG_OK;
}

eg_shard_format eg_shard_get_format(const eg_shard *s) { return s->fmt; }
uint64_t eg_shard_n_tokens(const eg_shard *s) { return s->n_tokens; }
uint64_t eg_shard_n_docs(const eg_shard *s) { return s->n_docs; }

eg_status eg_shard_doc(const eg_shard *s, uint64_t doc, uint64_t *first, uint64_t *n)
{
    if (doc >= s->n_docs)
        return EG_ERANGE;
    if (!s->doc_first) {
        *first = 0;
        *n = s->n_tokens;
        return EG_OK;
    }
    *first = s->doc_first[doc];
    *n = s->doc_first[doc + 1] - s->doc_first[doc];
    return EG_OK;
}

eg_status eg_shard_read(const eg_shard *s, uint64_t first, size_t n, uint32_t *out, eg_err *err)
{
    if (first > s->n_tokens || n > s->n_tokens - first)
        return eg_fail(err, EG_ERANGE, "%s: tokens [%llu, +%zu) outside its %llu tokens", s->path,
                       (unsigned long long)first, n, (unsigned long long)s->n_tokens);
    const size_t item = s->wide ? 4 : 2;
    unsigned char buf[1 << 16];
    /* 32-bit little-endian ids on a little-endian machine: read in place */
    const int direct = s->wide && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
    for (size_t done = 0; done < n;) {
        size_t k = direct ? n - done : n - done < sizeof buf / item ? n - done : sizeof buf / item;
        off_t at = (off_t)(s->data_off + (first + done) * item);
        size_t want = k * item, got = 0;
        unsigned char *to = direct ? (unsigned char *)(out + done) : buf;
        while (got < want) {
            ssize_t r = pread(s->fd, to + got, want - got, at + (off_t)got);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                return eg_fail(err, EG_EIO, "%s: read failed at token %llu: %s", s->path,
                               (unsigned long long)(first + done),
                               r < 0 ? strerror(errno) : "file shrank");
            got += (size_t)r;
        }
        if (!direct && s->wide)
            for (size_t i = 0; i < k; i++)
                out[done + i] = eg_get_le32(buf + 4 * i);
        else if (!direct)
            for (size_t i = 0; i < k; i++)
                out[done + i] = (uint32_t)buf[2 * i] | (uint32_t)buf[2 * i + 1] << 8;
        done += k;
    }
    return EG_OK;
}

void eg_shard_close(eg_shard *s)
{
    if (!s)
        return;
    if (s->map)
        munmap(s->map, s->map_len);
    if (s->fd >= 0)
        close(s->fd);
    free(s->doc_first);
    free(s->path);
    free(s);
}
