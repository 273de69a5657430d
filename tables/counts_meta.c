/* counts_meta.c - the counts file's record of what it counted (see
 * counts_meta.h). */
#include "counts_meta.h"
#include "count_common.h"

#include <errno.h>
#include <stdio.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void hex_of(const unsigned char d[32], char hex[65])
{
    static const char x[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = x[d[i] >> 4];
        hex[2 * i + 1] = x[d[i] & 15];
    }
    hex[64] = 0;
}

static void put64(EVP_MD_CTX *h, uint64_t v)
{
    unsigned char b[8];
    eg_put_le64(b, v);
    EVP_DigestUpdate(h, b, 8);
}

eg_status egc_shard_fingerprint(const eg_shard *s, const char *path, char hex[65], eg_err *err)
{
    enum { W = 64, L = 1024 };
    const uint64_t n = eg_shard_n_tokens(s), nd = eg_shard_n_docs(s);
    uint32_t *x = malloc(L * sizeof *x);
    unsigned char *le = malloc(L * 4);
    EVP_MD_CTX *h = EVP_MD_CTX_new();
    eg_status st = EG_OK;
    if (!x || !le || !h || !EVP_DigestInit_ex(h, EVP_sha256(), NULL)) {
        st = eg_fail(err, EG_ENOMEM, "out of memory");
        goto done;
    }
    EVP_DigestUpdate(h, "egshard1", 8);
    put64(h, n);
    put64(h, nd);
    const uint64_t len = n < L ? n : L;
    for (uint64_t w = 0; w < W && len; w++) {
        const uint64_t at = (n - len) / (W - 1) * w;
        if ((st = eg_shard_read(s, at, (size_t)len, x, err)) != EG_OK)
            goto done; /* the shard's message names it */
        for (uint64_t i = 0; i < len; i++)
            eg_put_le32(le + 4 * i, x[i]);
        put64(h, at);
        EVP_DigestUpdate(h, le, (size_t)len * 4);
    }
    for (uint64_t w = 0; w < W && nd; w++) {
        const uint64_t d = (nd - 1) / (W - 1) * w;
        uint64_t first = 0, dn = 0;
        if ((st = eg_shard_doc(s, d, &first, &dn)) != EG_OK) {
            st = eg_fail(err, st, "%s: document %llu cannot be read", path, (unsigned long long)d);
            goto done;
        }
        put64(h, first);
        put64(h, dn);
    }
    unsigned char d[32];
    unsigned dl = 0;
    EVP_DigestFinal_ex(h, d, &dl);
    hex_of(d, hex);
done:
    EVP_MD_CTX_free(h);
    free(x);
    free(le);
    return st;
}

void egc_projection_fp(const uint32_t *proj, size_t n, char hex[65])
{
    EVP_MD_CTX *h = EVP_MD_CTX_new();
    unsigned char b[4096], d[32];
    unsigned dl = 0;
    if (!h || !EVP_DigestInit_ex(h, EVP_sha256(), NULL)) {
        EVP_MD_CTX_free(h);
        hex[0] = 0;
        return;
    }
    for (size_t i = 0; i < n;) {
        size_t k = 0;
        for (; i < n && k + 4 <= sizeof b; i++, k += 4)
            eg_put_le32(b + k, proj[i]);
        EVP_DigestUpdate(h, b, k);
    }
    EVP_DigestFinal_ex(h, d, &dl);
    EVP_MD_CTX_free(h);
    hex_of(d, hex);
}

int egc_meta_add(egc_meta *m, const egc_input *in)
{
    egc_input *g = realloc(m->in, (m->n_in + 1) * sizeof *g);
    if (!g)
        return -1;
    m->in = g;
    g[m->n_in] = *in;
    if (!(g[m->n_in].path = strdup(in->path ? in->path : "")))
        return -1;
    m->n_in++;
    return 0;
}

eg_status egc_meta_from_opts(const eg_count_opts *o, size_t first, size_t n, egc_meta *m,
                             eg_err *err)
{
    memset(m, 0, sizeof *m);
    m->N = o->max_ngram;
    m->vprime = o->vprime;
    m->pad = o->pad;
    m->pad_mode = (int)o->pad_mode;
    m->seq_len = o->pad_mode == EG_PAD_SEQLEN ? o->seq_len : 0;
    if (o->proj)
        egc_projection_fp(o->proj, o->n_proj, m->proj);
    for (size_t i = first; i < first + n; i++) {
        eg_shard *s = NULL;
        eg_status st = eg_shard_open(o->shards[i], &s, err);
        if (st)
            return st;
        egc_input in = {.path = (char *)(uintptr_t)o->shards[i],
                        .tokens = eg_shard_n_tokens(s),
                        .docs = eg_shard_n_docs(s)};
        st = egc_shard_fingerprint(s, o->shards[i], in.fp, err);
        eg_shard_close(s);
        if (st)
            return st;
        if (egc_meta_add(m, &in))
            return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    return EG_OK;
}

static int cmp_input(const void *a, const void *b)
{
    const egc_input *x = a, *y = b;
    int r = strcmp(x->path, y->path);
    return r ? r : strcmp(x->fp, y->fp);
}

eg_status egc_meta_json(egc_meta *m, char **json, size_t *len, eg_err *err)
{
    *json = NULL;
    if (m->n_in > 1)
        qsort(m->in, m->n_in, sizeof *m->in, cmp_input);
    json_t *root = json_object(), *ins = json_array();
    int bad = !root || !ins;
    bad |= json_object_set_new(root, "format", json_string("engram-counts-meta")) != 0;
    bad |= json_object_set_new(root, "max_ngram", json_integer(m->N)) != 0;
    bad |= json_object_set_new(root, "vprime", json_integer((json_int_t)m->vprime)) != 0;
    bad |= json_object_set_new(root, "pad", json_integer((json_int_t)m->pad)) != 0;
    bad |= json_object_set_new(root, "pad_mode",
                               json_string(m->pad_mode == EG_PAD_SEQLEN ? "seq_len" : "docs")) != 0;
    bad |= json_object_set_new(root, "seq_len", json_integer((json_int_t)m->seq_len)) != 0;
    bad |= json_object_set_new(root, "projection_sha256",
                               m->proj[0] ? json_string(m->proj) : json_null()) != 0;
    for (size_t i = 0; i < m->n_in && !bad; i++) {
        json_t *e = json_object();
        bad |= !e;
        bad |= json_object_set_new(e, "path", json_string(m->in[i].path)) != 0;
        bad |= json_object_set_new(e, "tokens", json_integer((json_int_t)m->in[i].tokens)) != 0;
        bad |= json_object_set_new(e, "docs", json_integer((json_int_t)m->in[i].docs)) != 0;
        bad |= json_object_set_new(e, "fingerprint", json_string(m->in[i].fp)) != 0;
        bad |= json_array_append_new(ins, e) != 0;
    }
    bad |= json_object_set(root, "inputs", ins) != 0;
    char *s = bad ? NULL : json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(ins);
    json_decref(root);
    if (!s)
        return eg_fail(err, EG_ENOMEM, "out of memory (or a shard path that is not UTF-8)");
    *json = s;
    *len = strlen(s);
    return EG_OK;
}

eg_status egc_meta_parse(const char *json, size_t len, const char *path, egc_meta *m,
                         eg_err *err)
{
    memset(m, 0, sizeof *m);
    json_error_t je;
    json_t *root = json_loadb(json, len, 0, &je);
    if (!root)
        return eg_fail(err, EG_EFORMAT, "%s: bad metadata (byte %d: %s)", path, je.position,
                       je.text);
    eg_status st = EG_OK;
    json_t *ins = json_object_get(root, "inputs"), *pj = json_object_get(root, "projection_sha256");
    const char *mode = json_string_value(json_object_get(root, "pad_mode"));
    if (!json_is_array(ins) || !mode || !json_is_integer(json_object_get(root, "max_ngram")) ||
        !json_is_integer(json_object_get(root, "vprime")) ||
        !json_is_integer(json_object_get(root, "pad"))) {
        st = eg_fail(err, EG_EFORMAT, "%s: metadata lacks its configuration or inputs", path);
        goto done;
    }
    m->N = (uint32_t)json_integer_value(json_object_get(root, "max_ngram"));
    m->vprime = (uint64_t)json_integer_value(json_object_get(root, "vprime"));
    m->pad = (int64_t)json_integer_value(json_object_get(root, "pad"));
    m->pad_mode = strcmp(mode, "seq_len") ? EG_PAD_DOCS : EG_PAD_SEQLEN;
    m->seq_len = (uint64_t)json_integer_value(json_object_get(root, "seq_len"));
    snprintf(m->proj, sizeof m->proj, "%s", json_is_string(pj) ? json_string_value(pj) : "");
    for (size_t i = 0; i < json_array_size(ins); i++) {
        json_t *e = json_array_get(ins, i);
        const char *p = json_string_value(json_object_get(e, "path"));
        const char *fp = json_string_value(json_object_get(e, "fingerprint"));
        if (!p || !fp || strlen(fp) != 64) {
            st = eg_fail(err, EG_EFORMAT, "%s: metadata input %zu lacks its path or fingerprint",
                         path, i);
            goto done;
        }
        egc_input in = {.path = (char *)(uintptr_t)p,
                        .tokens = (uint64_t)json_integer_value(json_object_get(e, "tokens")),
                        .docs = (uint64_t)json_integer_value(json_object_get(e, "docs"))};
        memcpy(in.fp, fp, 65);
        if (egc_meta_add(m, &in)) {
            st = eg_fail(err, EG_ENOMEM, "out of memory");
            goto done;
        }
    }
done:
    json_decref(root);
    if (st)
        egc_meta_free(m);
    return st;
}

void egc_meta_free(egc_meta *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_in; i++)
        free(m->in[i].path);
    free(m->in);
    m->in = NULL;
    m->n_in = 0;
}

eg_status egc_write_trailer(int fd, uint64_t at, const char *json, size_t len, const char *path,
                            eg_err *err)
{
    unsigned char t[EGC_TRAILER];
    eg_put_le64(t, (uint64_t)len);
    memcpy(t + 8, EGC_META_MAGIC, 8);
    if (pwrite(fd, json, len, (off_t)at) != (ssize_t)len ||
        pwrite(fd, t, sizeof t, (off_t)(at + len)) != (ssize_t)sizeof t)
        return eg_fail(err, EG_EIO, "%s: write failed: %s", path, strerror(errno));
    return EG_OK;
}

eg_status egc_finish_file(eg_outfile *w, const char *tmp, const char *path, uint32_t N,
                          uint64_t vprime, int64_t pad, const eg_count_stats *st, const char *json,
                          size_t json_len, eg_status ret, eg_err *err)
{
    if (!ret)
        ret = egc_write_header(w->fd, N, vprime, pad, st, tmp, err);
    if (!ret) {
        uint64_t end = header_bytes(N); /* the records' end: the metadata follows */
        for (uint32_t n = 2; n <= N; n++)
            end += st->distinct[n] * (4ull * n + 8);
        ret = egc_write_trailer(w->fd, end, json, json_len, tmp, err);
    }
    if (!ret && fsync(w->fd))
        ret = eg_fail(err, EG_EIO, "%s: write failed: %s", tmp, strerror(errno));
    const int opened = w->fd >= 0;
    if (opened && eg_outfile_close(w) && !ret)
        ret = eg_fail(err, EG_EIO, "%s: close failed", tmp);
    if (!ret && rename(tmp, path))
        ret = eg_fail(err, EG_EIO, "%s: cannot rename into place: %s", path, strerror(errno));
    if (ret && opened)
        unlink(tmp);
    return ret;
}
