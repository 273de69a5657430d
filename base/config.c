/* config.c - Engram configs from JSON (reference shape or a HF config.json). */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engram/eg_config.h"
#include "eg_internal.h"

#define SRC(s) ((s) ? (s) : "config")

void eg_config_demo(eg_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->engram_vocab_size[0] = 129280u * 5;
    cfg->engram_vocab_size[1] = 129280u * 5;
    cfg->max_ngram_size = 3;
    cfg->n_embed_per_ngram = 512;
    cfg->n_head_per_ngram = 8;
    cfg->n_layers = 2;
    cfg->layer_ids[0] = 1;
    cfg->layer_ids[1] = 15;
    cfg->pad_id = 2;
    cfg->seed = 0;
    cfg->kernel_size = 4;
    cfg->hidden_size = 1024;
    cfg->hc_mult = 4;
    snprintf(cfg->name, sizeof cfg->name, "demo");
}

eg_status eg_config_validate(const eg_config *c, const char *src, eg_err *err)
{
    if (c->max_ngram_size < 2 || c->max_ngram_size > EG_MAX_NGRAM)
        return eg_fail(err, EG_ECONFIG, "%s: max_ngram_size must be in 2..%d (got %u)",
                       SRC(src), EG_MAX_NGRAM, c->max_ngram_size);
    if (c->n_head_per_ngram < 1 || c->n_head_per_ngram > EG_MAX_HEADS)
        return eg_fail(err, EG_ECONFIG, "%s: n_head_per_ngram must be in 1..%d (got %u)",
                       SRC(src), EG_MAX_HEADS, c->n_head_per_ngram);
    if (c->n_embed_per_ngram < 1 || c->n_embed_per_ngram % c->n_head_per_ngram)
        return eg_fail(err, EG_ECONFIG,
                       "%s: n_embed_per_ngram (%u) must be a positive multiple of "
                       "n_head_per_ngram (%u)",
                       SRC(src), c->n_embed_per_ngram, c->n_head_per_ngram);
    if (c->n_layers < 1 || c->n_layers > EG_MAX_LAYERS)
        return eg_fail(err, EG_ECONFIG, "%s: layer_ids must list 1..%d layers (got %u)",
                       SRC(src), EG_MAX_LAYERS, c->n_layers);
    for (uint32_t i = 0; i < c->n_layers; i++)
        for (uint32_t j = 0; j < i; j++)
            if (c->layer_ids[i] == c->layer_ids[j])
                return eg_fail(err, EG_ECONFIG, "%s: layer_ids lists layer %u twice",
                               SRC(src), c->layer_ids[i]);
    for (uint32_t n = 2; n <= c->max_ngram_size; n++)
        if (c->engram_vocab_size[n - 2] < 2 || c->engram_vocab_size[n - 2] > (1ull << 62))
            return eg_fail(err, EG_ECONFIG,
                           "%s: engram_vocab_size[%u] (the %u-gram table size) must be in "
                           "2..2^62 (got %llu)",
                           SRC(src), n - 2, n, (unsigned long long)c->engram_vocab_size[n - 2]);
    if (c->pad_id < 0)
        return eg_fail(err, EG_ECONFIG, "%s: pad_id must be a raw id >= 0 (got %lld)", SRC(src),
                       (long long)c->pad_id);
    if (c->kernel_size < 1)
        return eg_fail(err, EG_ECONFIG, "%s: kernel_size must be >= 1", SRC(src));
    if (c->hidden_size < 1 || c->hc_mult < 1)
        return eg_fail(err, EG_ECONFIG, "%s: hidden_size and hc_mult must be >= 1", SRC(src));
    return EG_OK;
}

/* ---- JSON helpers ----------------------------------------------------- */

static eg_status get_int(json_t *v, const char *src, const char *key, int64_t lo, int64_t hi,
                         int64_t *out, eg_err *err)
{
    if (!json_is_integer(v))
        return eg_fail(err, EG_ECONFIG, "%s: field '%s' must be an integer", SRC(src), key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return eg_fail(err, EG_ECONFIG, "%s: field '%s' must be in %lld..%lld (got %lld)",
                       SRC(src), key, (long long)lo, (long long)hi, (long long)x);
    *out = (int64_t)x;
    return EG_OK;
}

static eg_status get_u32(json_t *v, const char *src, const char *key, int64_t lo, uint32_t *out,
                         eg_err *err)
{
    int64_t x = 0;
    eg_status st = get_int(v, src, key, lo, UINT32_MAX, &x, err);
    if (!st)
        *out = (uint32_t)x;
    return st;
}

/* An int list (or, when allow_scalar, one int repeated `want` times). */
static eg_status get_list(json_t *v, const char *src, const char *key, size_t maxn,
                          int allow_scalar, size_t want, int64_t lo, int64_t *vals, size_t *n,
                          eg_err *err)
{
    if (allow_scalar && json_is_integer(v)) {
        int64_t x;
        eg_status st = get_int(v, src, key, lo, INT64_MAX, &x, err);
        if (st)
            return st;
        for (size_t i = 0; i < want; i++)
            vals[i] = x;
        *n = want;
        return EG_OK;
    }
    if (!json_is_array(v))
        return eg_fail(err, EG_ECONFIG, "%s: field '%s' must be a list of integers", SRC(src),
                       key);
    size_t len = json_array_size(v);
    if (len > maxn)
        return eg_fail(err, EG_ECONFIG, "%s: field '%s' has %zu entries (at most %zu)",
                       SRC(src), key, len, maxn);
    for (size_t i = 0; i < len; i++) {
        char name[96];
        snprintf(name, sizeof name, "%s[%zu]", key, i);
        eg_status st = get_int(json_array_get(v, i), src, name, lo, INT64_MAX, &vals[i], err);
        if (st)
            return st;
    }
    *n = len;
    return EG_OK;
}

static void copy_str(json_t *v, char *dst, size_t cap)
{
    if (json_is_string(v))
        snprintf(dst, cap, "%s", json_string_value(v));
}

/* ---- the reference shape ---------------------------------------------- */

static const char *const ref_fields[] = {
    "engram_vocab_size", "max_ngram_size", "n_embed_per_ngram", "n_head_per_ngram",
    "layer_ids", "pad_id", "seed", "kernel_size", "name", "description",
    "tokenizer_name_or_path", "compressed_vocab_size", "hidden_size", "hc_mult", NULL};

static eg_status parse_reference(json_t *root, const char *src, eg_config *c, eg_err *err)
{
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        int known = 0;
        for (size_t i = 0; ref_fields[i]; i++)
            known |= !strcmp(key, ref_fields[i]);
        if (!known)
            return eg_fail(err, EG_ECONFIG,
                           "%s: unknown field '%s' (known: engram_vocab_size, max_ngram_size, "
                           "n_embed_per_ngram, n_head_per_ngram, layer_ids, pad_id, seed, "
                           "kernel_size, compressed_vocab_size, hidden_size, hc_mult, name, "
                           "description, tokenizer_name_or_path)",
                           SRC(src), key);
        if ((!strcmp(key, "name") || !strcmp(key, "description") ||
             !strcmp(key, "tokenizer_name_or_path")) &&
            !json_is_string(v))
            return eg_fail(err, EG_ECONFIG, "%s: field '%s' must be a string", SRC(src), key);
    }
    static const char *const required[] = {"engram_vocab_size", "max_ngram_size",
                                           "n_embed_per_ngram", "n_head_per_ngram",
                                           "layer_ids",         "pad_id",
                                           NULL};
    for (size_t i = 0; required[i]; i++)
        if (!json_object_get(root, required[i]))
            return eg_fail(err, EG_ECONFIG, "%s: missing required field '%s'", SRC(src),
                           required[i]);
    eg_status st;
    int64_t x;
    if ((st = get_u32(json_object_get(root, "max_ngram_size"), src, "max_ngram_size", 2,
                      &c->max_ngram_size, err)))
        return st;
    if (c->max_ngram_size > EG_MAX_NGRAM)
        return eg_fail(err, EG_ECONFIG, "%s: max_ngram_size must be in 2..%d (got %u)",
                       SRC(src), EG_MAX_NGRAM, c->max_ngram_size);
    if ((st = get_u32(json_object_get(root, "n_head_per_ngram"), src, "n_head_per_ngram", 1,
                      &c->n_head_per_ngram, err)))
        return st;
    if ((st = get_u32(json_object_get(root, "n_embed_per_ngram"), src, "n_embed_per_ngram", 1,
                      &c->n_embed_per_ngram, err)))
        return st;
    int64_t vals[EG_MAX_LAYERS];
    size_t n;
    if ((st = get_list(json_object_get(root, "engram_vocab_size"), src, "engram_vocab_size",
                       EG_MAX_NGRAM - 1, 0, 0, 2, vals, &n, err)))
        return st;
    if (n != c->max_ngram_size - 1)
        return eg_fail(err, EG_ECONFIG,
                       "%s: engram_vocab_size has %zu entries but max_ngram_size %u needs %u "
                       "(one per order 2..N)",
                       SRC(src), n, c->max_ngram_size, c->max_ngram_size - 1);
    for (size_t i = 0; i < n; i++)
        c->engram_vocab_size[i] = (uint64_t)vals[i];
    if ((st = get_list(json_object_get(root, "layer_ids"), src, "layer_ids", EG_MAX_LAYERS, 0,
                       0, 0, vals, &n, err)))
        return st;
    for (size_t i = 0; i < n; i++) {
        if (vals[i] > UINT32_MAX)
            return eg_fail(err, EG_ECONFIG, "%s: layer_ids[%zu] is too large", SRC(src), i);
        c->layer_ids[i] = (uint32_t)vals[i];
    }
    c->n_layers = (uint32_t)n;
    if ((st = get_int(json_object_get(root, "pad_id"), src, "pad_id", 0, UINT32_MAX, &c->pad_id,
                      err)))
        return st;
    if ((v = json_object_get(root, "seed"))) {
        if ((st = get_int(v, src, "seed", 0, INT64_MAX, &x, err)))
            return st;
        c->seed = (uint64_t)x;
    }
    if ((v = json_object_get(root, "kernel_size")) &&
        (st = get_u32(v, src, "kernel_size", 1, &c->kernel_size, err)))
        return st;
    if ((v = json_object_get(root, "hidden_size")) &&
        (st = get_u32(v, src, "hidden_size", 1, &c->hidden_size, err)))
        return st;
    if ((v = json_object_get(root, "hc_mult")) &&
        (st = get_u32(v, src, "hc_mult", 1, &c->hc_mult, err)))
        return st;
    if ((v = json_object_get(root, "compressed_vocab_size"))) {
        if ((st = get_int(v, src, "compressed_vocab_size", 1, UINT32_MAX + 1ll, &x, err)))
            return st;
        c->compressed_vocab_size = (uint64_t)x;
    }
    copy_str(json_object_get(root, "name"), c->name, sizeof c->name);
    return EG_OK;
}

/* ---- a DeepSeek-V4.1 Hugging Face config.json ---------------------------- */

static eg_status parse_hf(json_t *root, json_t *tc, const char *src, eg_config *c, eg_err *err)
{
    static const char *const required[] = {"engram_layer_ids", "engram_max_ngram_size",
                                           "engram_n_heads",   "engram_head_dim",
                                           "engram_vocab_size", NULL};
    for (size_t i = 0; required[i]; i++)
        if (!json_object_get(tc, required[i]))
            return eg_fail(err, EG_ECONFIG, "%s: HF config is missing '%s'", SRC(src),
                           required[i]);
    eg_status st;
    int64_t x, vals[EG_MAX_LAYERS];
    size_t n;
    if ((st = get_u32(json_object_get(tc, "engram_max_ngram_size"), src,
                      "engram_max_ngram_size", 2, &c->max_ngram_size, err)))
        return st;
    if (c->max_ngram_size > EG_MAX_NGRAM)
        return eg_fail(err, EG_ECONFIG, "%s: engram_max_ngram_size must be in 2..%d", SRC(src),
                       EG_MAX_NGRAM);
    if ((st = get_u32(json_object_get(tc, "engram_n_heads"), src, "engram_n_heads", 1,
                      &c->n_head_per_ngram, err)))
        return st;
    uint32_t head_dim;
    if ((st = get_u32(json_object_get(tc, "engram_head_dim"), src, "engram_head_dim", 1,
                      &head_dim, err)))
        return st;
    uint64_t embed;
    if (!eg_mul_ok(head_dim, c->n_head_per_ngram, &embed) || embed > UINT32_MAX)
        return eg_fail(err, EG_ECONFIG, "%s: engram_head_dim * engram_n_heads is too large",
                       SRC(src));
    c->n_embed_per_ngram = (uint32_t)embed;
    if ((st = get_list(json_object_get(tc, "engram_vocab_size"), src, "engram_vocab_size",
                       EG_MAX_NGRAM - 1, 1, c->max_ngram_size - 1, 2, vals, &n, err)))
        return st;
    if (n != c->max_ngram_size - 1)
        return eg_fail(err, EG_ECONFIG, "%s: engram_vocab_size has %zu entries, expected %u",
                       SRC(src), n, c->max_ngram_size - 1);
    for (size_t i = 0; i < n; i++)
        c->engram_vocab_size[i] = (uint64_t)vals[i];
    if ((st = get_list(json_object_get(tc, "engram_layer_ids"), src, "engram_layer_ids",
                       EG_MAX_LAYERS, 0, 0, 0, vals, &n, err)))
        return st;
    for (size_t i = 0; i < n; i++) {
        if (vals[i] > UINT32_MAX)
            return eg_fail(err, EG_ECONFIG, "%s: engram_layer_ids[%zu] is too large", SRC(src),
                           i);
        c->layer_ids[i] = (uint32_t)vals[i];
    }
    c->n_layers = (uint32_t)n;
    json_t *v;
    if ((v = json_object_get(tc, "engram_num_embeddings"))) {
        size_t m;
        if ((st = get_list(v, src, "engram_num_embeddings", EG_MAX_LAYERS, 0, 0, 1, vals, &m,
                           err)))
            return st;
        if (m != c->n_layers)
            return eg_fail(err, EG_ECONFIG,
                           "%s: engram_num_embeddings has %zu entries for %u Engram layers",
                           SRC(src), m, c->n_layers);
        for (size_t i = 0; i < m; i++)
            c->declared_rows[i] = (uint64_t)vals[i];
    }
    c->pad_id = 2; /* the reference default */
    if ((v = json_object_get(tc, "engram_pad_token_id")) &&
        (st = get_int(v, src, "engram_pad_token_id", 0, UINT32_MAX, &c->pad_id, err)))
        return st;
    if ((v = json_object_get(tc, "engram_compressed_vocab_size")) && !json_is_null(v)) {
        if ((st = get_int(v, src, "engram_compressed_vocab_size", 0, UINT32_MAX + 1ll, &x, err)))
            return st;
        c->compressed_vocab_size = (uint64_t)x; /* 0 means not declared */
    }
    if ((v = json_object_get(tc, "engram_seed")) &&
        (st = get_int(v, src, "engram_seed", 0, INT64_MAX, &x, err)) == EG_OK)
        c->seed = (uint64_t)x;
    else if (v)
        return st;
    if ((v = json_object_get(tc, "hidden_size")) &&
        (st = get_u32(v, src, "hidden_size", 1, &c->hidden_size, err)))
        return st;
    if ((v = json_object_get(tc, "hc_mult")) &&
        (st = get_u32(v, src, "hc_mult", 1, &c->hc_mult, err)))
        return st;
    copy_str(json_object_get(root, "model_type"), c->name, sizeof c->name);
    c->from_hf = 1;
    return EG_OK;
}

eg_status eg_config_parse(const char *text, size_t len, const char *src, eg_config *c,
                          eg_err *err)
{
    if (!text || !c)
        return eg_fail(err, EG_EINVAL, "eg_config_parse: NULL argument");
    memset(c, 0, sizeof *c);
    c->kernel_size = 4;
    c->hidden_size = 1024;
    c->hc_mult = 4;
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return eg_fail(err, EG_EFORMAT, "%s:%d:%d: invalid JSON: %s", SRC(src), je.line,
                       je.column, je.text);
    eg_status st;
    if (!json_is_object(root)) {
        st = eg_fail(err, EG_ECONFIG, "%s: a config must be a JSON object", SRC(src));
    } else {
        json_t *tc = json_object_get(root, "text_config");
        if (json_object_get(root, "engram_layer_ids"))
            st = parse_hf(root, root, src, c, err);
        else if (json_is_object(tc) && json_object_get(tc, "engram_layer_ids"))
            st = parse_hf(root, tc, src, c, err);
        else
            st = parse_reference(root, src, c, err);
    }
    json_decref(root);
    if (!st)
        st = eg_config_validate(c, src, err);
    return st;
}

eg_status eg_config_load(const char *path, eg_config *c, eg_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return eg_fail(err, EG_EIO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) {
            if (cap >= (64u << 20)) {
                free(buf);
                fclose(f);
                return eg_fail(err, EG_EFORMAT, "%s: larger than 64 MiB, not a config", path);
            }
            char *nb = realloc(buf, cap *= 2);
            if (!nb)
                free(buf);
            buf = nb;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf)
        return eg_fail(err, EG_ENOMEM, "out of memory reading %s", path);
    if (bad) {
        free(buf);
        return eg_fail(err, EG_EIO, "%s: read error", path);
    }
    eg_status st = eg_config_parse(buf, len, path, c, err);
    free(buf);
    if (!st && !c->name[0]) {
        const char *base = strrchr(path, '/');
        snprintf(c->name, sizeof c->name, "%s", base ? base + 1 : path);
    }
    return st;
}

eg_status eg_config_to_json(const eg_config *c, char *buf, size_t cap, eg_err *err)
{
    json_t *o = json_object();
    json_t *vs = json_array(), *ls = json_array();
    if (!o || !vs || !ls) {
        json_decref(o);
        json_decref(vs);
        json_decref(ls);
        return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    for (uint32_t n = 2; n <= c->max_ngram_size; n++)
        json_array_append_new(vs, json_integer((json_int_t)c->engram_vocab_size[n - 2]));
    for (uint32_t i = 0; i < c->n_layers; i++)
        json_array_append_new(ls, json_integer(c->layer_ids[i]));
    json_object_set_new(o, "engram_vocab_size", vs);
    json_object_set_new(o, "max_ngram_size", json_integer(c->max_ngram_size));
    json_object_set_new(o, "n_embed_per_ngram", json_integer(c->n_embed_per_ngram));
    json_object_set_new(o, "n_head_per_ngram", json_integer(c->n_head_per_ngram));
    json_object_set_new(o, "layer_ids", ls);
    json_object_set_new(o, "pad_id", json_integer(c->pad_id));
    json_object_set_new(o, "seed", json_integer((json_int_t)c->seed));
    json_object_set_new(o, "kernel_size", json_integer(c->kernel_size));
    json_object_set_new(o, "hidden_size", json_integer(c->hidden_size));
    json_object_set_new(o, "hc_mult", json_integer(c->hc_mult));
    if (c->compressed_vocab_size)
        json_object_set_new(o, "compressed_vocab_size",
                            json_integer((json_int_t)c->compressed_vocab_size));
    if (c->name[0])
        json_object_set_new(o, "name", json_string(c->name));
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!s)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    size_t n = strlen(s);
    eg_status st = EG_OK;
    if (n + 1 > cap)
        st = eg_fail(err, EG_ECAPACITY, "config JSON needs %zu bytes, buffer has %zu", n + 1,
                     cap);
    else
        memcpy(buf, s, n + 1);
    free(s);
    return st;
}
