/* projection.c - the vocabulary projection: built from a tokenizer, checked
 * and applied as a flat array. */
#include <stdlib.h>
#include <string.h>

#include "../base/eg_internal.h"
#include "engram/eg_projection.h"
#include "engram/eg_tokenizer.h"
#include "tok_internal.h"

eg_status eg_projection_vprime(const uint32_t *proj, size_t n, const char *source,
                               uint64_t *vprime, eg_err *err)
{
    const char *src = source ? source : "projection";
    if (!proj || n == 0)
        return eg_fail(err, EG_EFORMAT, "%s: empty projection", src);
    uint32_t max = 0;
    for (size_t i = 0; i < n; i++)
        if (proj[i] > max)
            max = proj[i];
    if ((uint64_t)max + 1 > n)
        return eg_fail(err, EG_EFORMAT,
                       "%s: maps %zu raw ids to values up to %u: a projection is onto "
                       "0..V'-1 with V' <= V",
                       src, n, max);
    unsigned char *used = calloc((size_t)max + 1, 1);
    if (!used)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        used[proj[i]] = 1;
    for (uint64_t v = 0; v <= max; v++)
        if (!used[v]) {
            free(used);
            return eg_fail(err, EG_EFORMAT,
                           "%s: compressed id %llu is never used: not a surjection onto "
                           "0..%u",
                           src, (unsigned long long)v, max);
        }
    free(used);
    *vprime = (uint64_t)max + 1;
    return EG_OK;
}

eg_status eg_project_ids(const uint32_t *proj, size_t n_proj, const uint32_t *ids, size_t n,
                         uint32_t *out, eg_err *err)
{
    if ((!proj && n_proj) || (!ids && n) || (!out && n))
        return eg_fail(err, EG_EINVAL, "eg_project_ids: NULL argument");
    for (size_t i = 0; i < n; i++) {
        uint32_t id = ids[i];
        if (id >= n_proj)
            return eg_fail(err, EG_ERANGE,
                           "id %u at position %zu is outside the tokenizer's %zu ids", id, i,
                           n_proj);
        out[i] = proj[id];
    }
    return EG_OK;
}

/* ---- building the projection from a tokenizer ------------------------------ */

struct eg_vocab_projection {
    uint32_t *map; /* raw id -> compressed id */
    size_t n_raw;
    uint32_t n_keys;
    char *arena; /* keys */
    size_t *key_off;
    uint32_t *key_len;
    uint32_t *group; /* raw ids per key */
};

/* Open-addressing table from key bytes to compressed id. */
typedef struct {
    uint32_t *slot; /* cid + 1, 0 = empty */
    size_t cap;
} key_table;

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

void eg_projection_free(eg_vocab_projection *p)
{
    if (!p)
        return;
    free(p->map);
    free(p->arena);
    free(p->key_off);
    free(p->key_len);
    free(p->group);
    free(p);
}

eg_status eg_projection_build(const eg_tokenizer *tok, eg_vocab_projection **out, eg_err *err)
{
    if (!tok || !out)
        return eg_fail(err, EG_EINVAL, "eg_projection_build: NULL argument");
    *out = NULL;
    const size_t n = eg_tokenizer_vocab_size(tok);
    eg_vocab_projection *p = calloc(1, sizeof *p);
    key_table kt = {0};
    kt.cap = 1024;
    while (kt.cap < 2 * n)
        kt.cap *= 2;
    eg_buf arena = {0}, text = {0};
    char *norm = NULL;
    size_t norm_cap = 0;
    eg_status st = EG_ENOMEM;
    if (!p)
        goto fail;
    p->n_raw = n;
    p->map = malloc(n * sizeof *p->map);
    p->key_off = malloc(n * sizeof *p->key_off);
    p->key_len = malloc(n * sizeof *p->key_len);
    p->group = calloc(n, sizeof *p->group);
    kt.slot = calloc(kt.cap, sizeof *kt.slot);
    if (!p->map || !p->key_off || !p->key_len || !p->group || !kt.slot)
        goto fail;
    for (size_t id = 0; id < n; id++) {
        uint32_t rid = (uint32_t)id;
        text.len = 0;
        st = eg_tok_decode_pieces(tok, &rid, 1, &text);
        if (st)
            goto fail;
        const char *key;
        size_t klen;
        if (text.len && memmem(text.p, text.len, "\xEF\xBF\xBD", 3)) {
            /* the decode is lossy: the raw token string */
            eg_tokenizer_piece(tok, rid, &key, &klen);
        } else {
            for (;;) {
                st = eg_normalize_key(text.p ? text.p : "", text.len, norm, norm_cap, &klen, err);
                if (st != EG_ECAPACITY)
                    break;
                free(norm);
                norm_cap = klen * 2 + 64;
                if (!(norm = malloc(norm_cap))) {
                    st = EG_ENOMEM;
                    goto fail;
                }
            }
            if (st) {
                eg_fail(err, st, "token %zu: cannot normalize its text: %s", id,
                        err ? err->msg : "");
                goto fail;
            }
            key = norm;
            if (klen == 0) { /* normalizes to nothing: the decode itself */
                key = text.p ? text.p : "";
                klen = text.len;
            }
        }
        uint64_t h = hash_bytes(key, klen);
        size_t i = h & (kt.cap - 1);
        uint32_t cid = UINT32_MAX;
        while (kt.slot[i]) {
            uint32_t c = kt.slot[i] - 1;
            if (p->key_len[c] == klen && !memcmp(arena.p + p->key_off[c], key, klen)) {
                cid = c;
                break;
            }
            i = (i + 1) & (kt.cap - 1);
        }
        if (cid == UINT32_MAX) {
            cid = p->n_keys++;
            kt.slot[i] = cid + 1;
            p->key_off[cid] = arena.len;
            p->key_len[cid] = (uint32_t)klen;
            if (eg_buf_put(&arena, key, klen)) {
                st = EG_ENOMEM;
                goto fail;
            }
        }
        p->map[id] = cid;
        p->group[cid]++;
    }
    p->arena = arena.p ? arena.p : calloc(1, 1);
    free(kt.slot);
    free(norm);
    eg_buf_free(&text);
    *out = p;
    return EG_OK;
fail:
    if (st == EG_ENOMEM)
        eg_fail(err, EG_ENOMEM, "out of memory building the projection");
    free(kt.slot);
    free(norm);
    eg_buf_free(&text);
    eg_buf_free(&arena);
    eg_projection_free(p);
    return st;
}

const uint32_t *eg_projection_map(const eg_vocab_projection *p, size_t *n_raw)
{
    if (n_raw)
        *n_raw = p->n_raw;
    return p->map;
}

uint64_t eg_projection_compressed_size(const eg_vocab_projection *p) { return p->n_keys; }

const char *eg_projection_key(const eg_vocab_projection *p, uint32_t cid, size_t *len)
{
    if (cid >= p->n_keys)
        return NULL;
    *len = p->key_len[cid];
    return p->arena + p->key_off[cid];
}

uint32_t eg_projection_group_size(const eg_vocab_projection *p, uint32_t cid)
{
    return cid < p->n_keys ? p->group[cid] : 0;
}

void eg_projection_sha256(const eg_vocab_projection *p, uint8_t out[32])
{
    /* the P.u32 bytes: little-endian uint32 */
    uint32_t one = 1;
    if (*(unsigned char *)&one == 1) {
        eg_sha256(p->map, p->n_raw * 4, out);
        return;
    }
    unsigned char *le = malloc(p->n_raw * 4 + 1);
    if (!le) {
        memset(out, 0, 32);
        return;
    }
    for (size_t i = 0; i < p->n_raw; i++)
        for (int k = 0; k < 4; k++)
            le[4 * i + k] = (unsigned char)(p->map[i] >> (8 * k));
    eg_sha256(le, p->n_raw * 4, out);
    free(le);
}
