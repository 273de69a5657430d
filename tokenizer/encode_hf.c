/* encode_hf.c - encoding with a HuggingFace tokenizer.json, as HF tokenizers
 * does with add_special_tokens=False:
 *   1. added tokens found in the text (leftmost-longest) become single ids;
 *   2. the normalizer (none, Sequence, Prepend, Replace with a string);
 *   3. the pre-tokenizer (Sequence, Split with an Oniguruma regex or a string,
 *      ByteLevel, Metaspace) cuts the text into words;
 *   4. BPE merges each word (lowest rank first, then leftmost), with
 *      byte_fallback, unk and fuse_unk as in HF's BPE model.
 * Oniguruma is HF's own regex engine (Ruby syntax, UTF-8), so lookarounds
 * such as (?!\S) match exactly as there. */
#include <jansson.h>
#include <oniguruma.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../base/eg_internal.h"
#include "tok_internal.h"

enum { BEH_ISOLATED, BEH_REMOVED, BEH_MERGED_PREV, BEH_MERGED_NEXT, BEH_CONTIGUOUS };
enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE };
enum { NORM_PREPEND, NORM_REPLACE };
enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };

typedef struct {
    int kind;
    regex_t *re;       /* PRE_SPLIT with a regex; PRE_BYTELEVEL with use_regex */
    char *lit;         /* PRE_SPLIT with a string */
    size_t lit_len;
    int behavior;
    int add_prefix_space; /* PRE_BYTELEVEL */
    char rep[8];          /* PRE_METASPACE: replacement, UTF-8 */
    size_t rep_len;
    int prepend; /* PREPEND_* */
    int split;
} pre_step;

typedef struct {
    int kind;
    char *a, *b; /* PREPEND: a; REPLACE: a -> b */
    size_t alen, blen;
} norm_step;

typedef struct {
    const char *s;
    uint32_t len, id;
} str_ent;

typedef struct {
    str_ent *slot; /* s == NULL: empty */
    size_t cap;
} str_map;

typedef struct {
    uint64_t key; /* a << 32 | b; UINT64_MAX = empty */
    uint32_t rank, id;
} merge_ent;

struct hf_encoder {
    str_map vocab;         /* model vocabulary */
    merge_ent *merges;
    size_t merge_cap;
    str_map added;         /* added tokens, for splitting the text */
    uint32_t added_maxlen; /* longest added token in bytes */
    uint8_t added_first[256]; /* first bytes of added tokens */
    norm_step norm[8];
    size_t n_norm;
    pre_step pre[8];
    size_t n_pre;
    int byte_fallback, fuse_unk, ignore_merges;
    int64_t unk_id;
    uint32_t byte_ids[256]; /* <0xNN> ids when byte_fallback */
    int have_byte_ids;
    char bl[256][3]; /* ByteLevel: byte -> its char, UTF-8 */
    uint8_t bl_len[256];
};

/* ---- small hash maps ------------------------------------------------------ */

static uint64_t hash_str(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 32);
}

static int map_init(str_map *m, size_t n)
{
    m->cap = 64;
    while (m->cap < 2 * n + 1)
        m->cap *= 2;
    m->slot = calloc(m->cap, sizeof *m->slot);
    return m->slot ? 0 : -1;
}

static void map_put(str_map *m, const char *s, size_t n, uint32_t id)
{
    size_t i = hash_str(s, n) & (m->cap - 1);
    while (m->slot[i].s && !(m->slot[i].len == n && !memcmp(m->slot[i].s, s, n)))
        i = (i + 1) & (m->cap - 1);
    m->slot[i].s = s;
    m->slot[i].len = (uint32_t)n;
    m->slot[i].id = id;
}

static int map_get(const str_map *m, const char *s, size_t n, uint32_t *id)
{
    if (!m->cap)
        return 0;
    size_t i = hash_str(s, n) & (m->cap - 1);
    while (m->slot[i].s) {
        if (m->slot[i].len == n && !memcmp(m->slot[i].s, s, n)) {
            *id = m->slot[i].id;
            return 1;
        }
        i = (i + 1) & (m->cap - 1);
    }
    return 0;
}

static uint64_t mix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

static const merge_ent *merge_get(const struct hf_encoder *e, uint32_t a, uint32_t b)
{
    uint64_t key = (uint64_t)a << 32 | b;
    size_t i = mix64(key) & (e->merge_cap - 1);
    while (e->merges[i].key != UINT64_MAX) {
        if (e->merges[i].key == key)
            return &e->merges[i];
        i = (i + 1) & (e->merge_cap - 1);
    }
    return NULL;
}

/* ---- Oniguruma ------------------------------------------------------------ */

static pthread_once_t onig_once = PTHREAD_ONCE_INIT;
static void onig_init_once(void)
{
    OnigEncoding encs[1] = {ONIG_ENCODING_UTF8};
    onig_initialize(encs, 1);
}

static regex_t *compile_regex(const char *pat, size_t n, char *why, size_t why_cap)
{
    pthread_once(&onig_once, onig_init_once);
    regex_t *re = NULL;
    OnigErrorInfo einfo;
    int r = onig_new(&re, (const OnigUChar *)pat, (const OnigUChar *)pat + n, ONIG_OPTION_NONE,
                     ONIG_ENCODING_UTF8, ONIG_SYNTAX_RUBY, &einfo);
    if (r != ONIG_NORMAL) {
        OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
        onig_error_code_to_str(msg, r, &einfo);
        snprintf(why, why_cap, "regex '%.*s' does not compile: %s", (int)(n > 60 ? 60 : n), pat,
                 (const char *)msg);
        return NULL;
    }
    return re;
}

/* GPT-2's pre-tokenizer pattern (ByteLevel with use_regex). */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ---- building ------------------------------------------------------------- */

void eg_hfenc_free(struct hf_encoder *e)
{
    if (!e)
        return;
    free(e->vocab.slot);
    free(e->added.slot);
    free(e->merges);
    for (size_t i = 0; i < e->n_pre; i++) {
        if (e->pre[i].re)
            onig_free(e->pre[i].re);
        free(e->pre[i].lit);
    }
    for (size_t i = 0; i < e->n_norm; i++) {
        free(e->norm[i].a);
        free(e->norm[i].b);
    }
    free(e);
}

static char *dup_bytes(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

/* Returns 0, or -1 with the reason in `why`. */
static int parse_pre(struct hf_encoder *e, json_t *p, char *why, size_t cap)
{
    if (!p || json_is_null(p))
        return 0;
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!type) {
        snprintf(why, cap, "pre_tokenizer without a type");
        return -1;
    }
    if (!strcmp(type, "Sequence")) {
        json_t *l = json_object_get(p, "pretokenizers");
        for (size_t i = 0; i < json_array_size(l); i++)
            if (parse_pre(e, json_array_get(l, i), why, cap))
                return -1;
        return 0;
    }
    if (e->n_pre == sizeof e->pre / sizeof e->pre[0]) {
        snprintf(why, cap, "too many pre-tokenizer steps");
        return -1;
    }
    pre_step *s = &e->pre[e->n_pre];
    memset(s, 0, sizeof *s);
    if (!strcmp(type, "Split")) {
        json_t *pat = json_object_get(p, "pattern");
        const char *beh = json_string_value(json_object_get(p, "behavior"));
        if (json_is_true(json_object_get(p, "invert"))) {
            snprintf(why, cap, "Split with invert=true is not supported");
            return -1;
        }
        s->kind = PRE_SPLIT;
        if (!beh || !strcmp(beh, "Isolated"))
            s->behavior = BEH_ISOLATED;
        else if (!strcmp(beh, "Removed"))
            s->behavior = BEH_REMOVED;
        else if (!strcmp(beh, "MergedWithPrevious"))
            s->behavior = BEH_MERGED_PREV;
        else if (!strcmp(beh, "MergedWithNext"))
            s->behavior = BEH_MERGED_NEXT;
        else if (!strcmp(beh, "Contiguous"))
            s->behavior = BEH_CONTIGUOUS;
        else {
            snprintf(why, cap, "Split behavior '%s' is not supported", beh);
            return -1;
        }
        json_t *rx = json_object_get(pat, "Regex"), *st = json_object_get(pat, "String");
        if (json_is_string(rx)) {
            if (!(s->re = compile_regex(json_string_value(rx), json_string_length(rx), why, cap)))
                return -1;
        } else if (json_is_string(st) && json_string_length(st)) {
            if (!(s->lit = dup_bytes(json_string_value(st), json_string_length(st))))
                return -1;
            s->lit_len = json_string_length(st);
        } else {
            snprintf(why, cap, "Split without a pattern");
            return -1;
        }
    } else if (!strcmp(type, "ByteLevel")) {
        s->kind = PRE_BYTELEVEL;
        s->add_prefix_space = json_is_true(json_object_get(p, "add_prefix_space"));
        json_t *ur = json_object_get(p, "use_regex");
        if (!ur || json_is_true(ur))
            if (!(s->re = compile_regex(gpt2_pattern, strlen(gpt2_pattern), why, cap)))
                return -1;
    } else if (!strcmp(type, "Metaspace")) {
        s->kind = PRE_METASPACE;
        const char *r = json_string_value(json_object_get(p, "replacement"));
        snprintf(s->rep, sizeof s->rep, "%s", r ? r : "\xE2\x96\x81");
        s->rep_len = strlen(s->rep);
        const char *scheme = json_string_value(json_object_get(p, "prepend_scheme"));
        json_t *aps = json_object_get(p, "add_prefix_space");
        if (scheme)
            s->prepend = !strcmp(scheme, "first")   ? PREPEND_FIRST
                         : !strcmp(scheme, "never") ? PREPEND_NEVER
                                                    : PREPEND_ALWAYS;
        else
            s->prepend = (aps && !json_is_true(aps)) ? PREPEND_NEVER : PREPEND_ALWAYS;
        json_t *sp = json_object_get(p, "split");
        s->split = sp ? json_is_true(sp) : 1;
    } else {
        snprintf(why, cap, "pre-tokenizer '%s' is not supported (Sequence, Split, ByteLevel, "
                           "Metaspace)",
                 type);
        return -1;
    }
    e->n_pre++;
    return 0;
}

static int parse_norm(struct hf_encoder *e, json_t *n, char *why, size_t cap)
{
    if (!n || json_is_null(n))
        return 0;
    const char *type = json_string_value(json_object_get(n, "type"));
    if (!type) {
        snprintf(why, cap, "normalizer without a type");
        return -1;
    }
    if (!strcmp(type, "Sequence")) {
        json_t *l = json_object_get(n, "normalizers");
        for (size_t i = 0; i < json_array_size(l); i++)
            if (parse_norm(e, json_array_get(l, i), why, cap))
                return -1;
        return 0;
    }
    if (e->n_norm == sizeof e->norm / sizeof e->norm[0]) {
        snprintf(why, cap, "too many normalizer steps");
        return -1;
    }
    norm_step *s = &e->norm[e->n_norm];
    memset(s, 0, sizeof *s);
    if (!strcmp(type, "Prepend")) {
        json_t *p = json_object_get(n, "prepend");
        if (!json_is_string(p))
            goto bad;
        s->kind = NORM_PREPEND;
        s->alen = json_string_length(p);
        s->a = dup_bytes(json_string_value(p), s->alen);
    } else if (!strcmp(type, "Replace")) {
        json_t *p = json_object_get(json_object_get(n, "pattern"), "String");
        json_t *c = json_object_get(n, "content");
        if (!json_is_string(p) || !json_is_string(c) || !json_string_length(p)) {
            snprintf(why, cap, "normalizer Replace is supported with a string pattern only");
            return -1;
        }
        s->kind = NORM_REPLACE;
        s->alen = json_string_length(p);
        s->blen = json_string_length(c);
        s->a = dup_bytes(json_string_value(p), s->alen);
        s->b = dup_bytes(json_string_value(c), s->blen);
    } else {
        snprintf(why, cap, "normalizer '%s' is not supported for encoding", type);
        return -1;
    }
    e->n_norm++;
    return 0;
bad:
    snprintf(why, cap, "malformed normalizer '%s'", type);
    return -1;
}

/* GPT-2's bytes_to_unicode. */
static void bytelevel_table(struct hf_encoder *e)
{
    int k = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        uint32_t cp = printable ? (uint32_t)b : (uint32_t)(256 + k++);
        if (cp < 0x80) {
            e->bl[b][0] = (char)cp;
            e->bl_len[b] = 1;
        } else {
            e->bl[b][0] = (char)(0xC0 | cp >> 6);
            e->bl[b][1] = (char)(0x80 | (cp & 0x3F));
            e->bl_len[b] = 2;
        }
    }
}

eg_status eg_hfenc_build(eg_tokenizer *tok, struct json_t *root, const char *path, eg_err *err)
{
    (void)path;
    struct hf_encoder *e = calloc(1, sizeof *e);
    if (!e)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    char *why = tok->enc_error;
    const size_t wcap = sizeof tok->enc_error;
    json_t *model = json_object_get(root, "model");
    json_t *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    json_t *added = json_object_get(root, "added_tokens");
    bytelevel_table(e);
    e->unk_id = -1;
    if (json_string_value(json_object_get(model, "continuing_subword_prefix")) ||
        json_string_value(json_object_get(model, "end_of_word_suffix"))) {
        snprintf(why, wcap, "BPE with continuing_subword_prefix or end_of_word_suffix");
        goto unsupported;
    }
    if (json_is_number(json_object_get(model, "dropout")) &&
        json_number_value(json_object_get(model, "dropout")) > 0) {
        snprintf(why, wcap, "BPE dropout is random: not supported for encoding");
        goto unsupported;
    }
    if (!json_is_array(merges)) {
        snprintf(why, wcap, "model.merges is missing");
        goto unsupported;
    }
    e->byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
    e->fuse_unk = json_is_true(json_object_get(model, "fuse_unk"));
    e->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    if (map_init(&e->vocab, json_object_size(vocab)))
        goto nomem;
    const char *key;
    json_t *v;
    /* Keys point into the tokenizer's piece arena, which lives as long. */
    json_object_foreach(vocab, key, v)
    {
        uint32_t id = (uint32_t)json_integer_value(v);
        map_put(&e->vocab, tok->arena + tok->off[id], tok->len[id], id);
    }
    /* vocab entries overridden by added tokens keep their own strings */
    json_object_foreach(vocab, key, v)
    {
        uint32_t id = (uint32_t)json_integer_value(v), got;
        if (!map_get(&e->vocab, key, strlen(key), &got)) {
            snprintf(why, wcap, "vocabulary entry '%s' shadowed by an added token", key);
            goto unsupported;
        }
        (void)id;
    }
    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    uint32_t uid;
    if (unk && map_get(&e->vocab, unk, strlen(unk), &uid))
        e->unk_id = uid;
    if (e->byte_fallback) {
        e->have_byte_ids = 1;
        for (int b = 0; b < 256; b++) {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", b);
            if (!map_get(&e->vocab, name, 6, &e->byte_ids[b]))
                e->have_byte_ids = 0;
        }
    }
    /* merges: "a b" strings or [a, b] pairs */
    size_t nm = json_array_size(merges);
    e->merge_cap = 64;
    while (e->merge_cap < 2 * nm + 1)
        e->merge_cap *= 2;
    e->merges = malloc(e->merge_cap * sizeof *e->merges);
    if (!e->merges)
        goto nomem;
    for (size_t i = 0; i < e->merge_cap; i++)
        e->merges[i].key = UINT64_MAX;
    char *joined = NULL;
    size_t jcap = 0;
    for (size_t r = 0; r < nm; r++) {
        json_t *m = json_array_get(merges, r);
        const char *a, *b;
        size_t al, bl;
        if (json_is_string(m)) {
            const char *s = json_string_value(m);
            const char *sp = strchr(s, ' ');
            if (!sp) {
                snprintf(why, wcap, "merge %zu ('%s') is not 'a b'", r, s);
                free(joined);
                goto unsupported;
            }
            a = s;
            al = (size_t)(sp - s);
            b = sp + 1;
            bl = strlen(b);
        } else if (json_is_array(m) && json_array_size(m) == 2) {
            a = json_string_value(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            if (!a || !b) {
                snprintf(why, wcap, "merge %zu is malformed", r);
                free(joined);
                goto unsupported;
            }
            al = strlen(a);
            bl = strlen(b);
        } else {
            snprintf(why, wcap, "merge %zu is malformed", r);
            free(joined);
            goto unsupported;
        }
        uint32_t ia, ib, ij;
        if (al + bl + 1 > jcap) {
            jcap = 2 * (al + bl + 1);
            char *nj = realloc(joined, jcap);
            if (!nj) {
                free(joined);
                goto nomem;
            }
            joined = nj;
        }
        memcpy(joined, a, al);
        memcpy(joined + al, b, bl);
        if (!map_get(&e->vocab, a, al, &ia) || !map_get(&e->vocab, b, bl, &ib) ||
            !map_get(&e->vocab, joined, al + bl, &ij)) {
            snprintf(why, wcap, "merge %zu uses a token missing from the vocabulary", r);
            free(joined);
            goto unsupported;
        }
        uint64_t k = (uint64_t)ia << 32 | ib;
        size_t i = mix64(k) & (e->merge_cap - 1);
        while (e->merges[i].key != UINT64_MAX && e->merges[i].key != k)
            i = (i + 1) & (e->merge_cap - 1);
        if (e->merges[i].key == UINT64_MAX) { /* the first (lowest) rank wins */
            e->merges[i].key = k;
            e->merges[i].rank = (uint32_t)r;
            e->merges[i].id = ij;
        }
    }
    free(joined);
    /* added tokens */
    if (map_init(&e->added, json_array_size(added)))
        goto nomem;
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *a = json_array_get(added, i);
        if (json_is_true(json_object_get(a, "lstrip")) ||
            json_is_true(json_object_get(a, "rstrip")) ||
            json_is_true(json_object_get(a, "single_word"))) {
            snprintf(why, wcap, "added token '%s' uses lstrip/rstrip/single_word",
                     json_string_value(json_object_get(a, "content")));
            goto unsupported;
        }
        uint32_t id = (uint32_t)json_integer_value(json_object_get(a, "id"));
        size_t n = tok->len[id];
        if (!n)
            continue;
        map_put(&e->added, tok->arena + tok->off[id], n, id);
        if (n > e->added_maxlen)
            e->added_maxlen = (uint32_t)n;
        e->added_first[(unsigned char)tok->arena[tok->off[id]]] = 1;
    }
    if (parse_norm(e, json_object_get(root, "normalizer"), why, wcap) ||
        parse_pre(e, json_object_get(root, "pre_tokenizer"), why, wcap))
        goto unsupported;
    tok->enc = e;
    return EG_OK;
unsupported:
    eg_hfenc_free(e);
    return EG_OK;
nomem:
    eg_hfenc_free(e);
    return eg_fail(err, EG_ENOMEM, "out of memory building the encoder");
}

/* ---- encoding --------------------------------------------------------------- */

/* A piece of text under pre-tokenization: bytes in an arena, and whether it
 * starts at the beginning of the document (for Metaspace's "first"). */
typedef struct {
    size_t off, len;
    int at_start;
} piece;

typedef struct {
    piece *p;
    size_t n, cap;
} piece_list;

static int pl_push(piece_list *l, size_t off, size_t len, int at_start)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        piece *p = realloc(l->p, cap * sizeof *p);
        if (!p)
            return -1;
        l->p = p;
        l->cap = cap;
    }
    l->p[l->n++] = (piece){off, len, at_start};
    return 0;
}

typedef struct {
    size_t start, end;
    int match;
} split_t;

typedef struct {
    uint32_t koff, len, ids; /* key at cache_keys + koff; ids at cache_ids + ids */
    uint32_t used;
} cache_ent;

/* Per-thread scratch: buffers and a cache of word -> ids. */
typedef struct {
    split_t *splits;
    size_t n_splits, cap_splits;
    eg_buf arena, arena2;
    piece_list a, b;
    /* BPE */
    uint32_t *sym_id;
    int32_t *sym_prev, *sym_next;
    uint32_t *sym_len;
    size_t sym_cap;
    uint64_t *heap; /* (rank << 32 | pos), min-heap; new id checked on pop */
    size_t heap_n, heap_cap;
    /* word cache */
    cache_ent *cache;
    uint32_t *cache_ids;
    size_t cache_cap, cache_n, cache_ids_n, cache_ids_cap;
    eg_buf cache_keys;
    const void *owner;
    OnigRegion *region;
} scratch;

static _Thread_local scratch *tls;

static int split_add(scratch *s, size_t a, size_t b, int match)
{
    if (s->n_splits == s->cap_splits) {
        size_t cap = s->cap_splits ? 2 * s->cap_splits : 64;
        split_t *p = realloc(s->splits, cap * sizeof *p);
        if (!p)
            return -1;
        s->splits = p;
        s->cap_splits = cap;
    }
    s->splits[s->n_splits++] = (split_t){a, b, match};
    return 0;
}

static void scratch_destroy(void *p)
{
    scratch *s = p;
    if (!s)
        return;
    eg_buf_free(&s->arena);
    eg_buf_free(&s->arena2);
    free(s->a.p);
    free(s->b.p);
    free(s->sym_id);
    free(s->sym_prev);
    free(s->sym_next);
    free(s->sym_len);
    free(s->heap);
    free(s->splits);
    free(s->cache);
    free(s->cache_ids);
    eg_buf_free(&s->cache_keys);
    if (s->region)
        onig_region_free(s->region, 1);
    free(s);
}

static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;
static void tls_key_init(void) { pthread_key_create(&tls_key, scratch_destroy); }

#define CACHE_CAP 65536
#define CACHE_MAX_WORD 64

static scratch *get_scratch(const eg_tokenizer *tok)
{
    if (tls && tls->owner == tok)
        return tls;
    pthread_once(&tls_once, tls_key_init);
    if (!tls) {
        tls = calloc(1, sizeof *tls);
        if (!tls)
            return NULL;
        tls->region = onig_region_new();
        pthread_setspecific(tls_key, tls);
    }
    /* a cache belongs to one tokenizer: reset it for another */
    free(tls->cache);
    tls->cache = calloc(CACHE_CAP, sizeof *tls->cache);
    tls->cache_cap = CACHE_CAP;
    tls->cache_n = tls->cache_ids_n = 0;
    tls->cache_keys.len = 0;
    tls->owner = tok;
    return tls->cache ? tls : NULL;
}

static int sym_reserve(scratch *s, size_t n)
{
    if (n <= s->sym_cap)
        return 0;
    size_t cap = s->sym_cap ? s->sym_cap : 64;
    while (cap < n)
        cap *= 2;
    uint32_t *a = realloc(s->sym_id, cap * sizeof *a);
    if (a)
        s->sym_id = a;
    int32_t *b = realloc(s->sym_prev, cap * sizeof *b);
    if (b)
        s->sym_prev = b;
    int32_t *c = realloc(s->sym_next, cap * sizeof *c);
    if (c)
        s->sym_next = c;
    uint32_t *d = realloc(s->sym_len, cap * sizeof *d);
    if (d)
        s->sym_len = d;
    if (!a || !b || !c || !d)
        return -1;
    s->sym_cap = cap;
    return 0;
}

static int heap_push(scratch *s, uint64_t v)
{
    if (s->heap_n == s->heap_cap) {
        size_t cap = s->heap_cap ? 2 * s->heap_cap : 64;
        uint64_t *h = realloc(s->heap, cap * sizeof *h);
        if (!h)
            return -1;
        s->heap = h;
        s->heap_cap = cap;
    }
    size_t i = s->heap_n++;
    while (i && s->heap[(i - 1) / 2] > v) {
        s->heap[i] = s->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    s->heap[i] = v;
    return 0;
}

static uint64_t heap_pop(scratch *s)
{
    uint64_t top = s->heap[0], v = s->heap[--s->heap_n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= s->heap_n)
            break;
        if (c + 1 < s->heap_n && s->heap[c + 1] < s->heap[c])
            c++;
        if (s->heap[c] >= v)
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (s->heap_n)
        s->heap[i] = v;
    return top;
}

typedef struct {
    uint32_t *ids;
    size_t n, cap;
    int overflow;
} id_out;

static void emit(id_out *o, uint32_t id)
{
    if (o->n < o->cap)
        o->ids[o->n] = id;
    else
        o->overflow = 1;
    o->n++;
}

static int utf8_len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

/* HF's BPE on one word. */
static int bpe_word(const struct hf_encoder *e, scratch *s, const char *w, size_t n, id_out *o)
{
    if (e->ignore_merges) {
        uint32_t id;
        if (map_get(&e->vocab, w, n, &id)) {
            emit(o, id);
            return 0;
        }
    }
    /* word cache */
    uint64_t h = hash_str(w, n);
    if (n <= CACHE_MAX_WORD) {
        size_t i = h & (s->cache_cap - 1);
        while (s->cache[i].used) {
            const cache_ent *c = &s->cache[i];
            if (c->len == n && !memcmp(s->cache_keys.p + c->koff, w, n)) {
                const uint32_t *ids = s->cache_ids + c->ids;
                uint32_t k = ids[0];
                for (uint32_t j = 1; j <= k; j++)
                    emit(o, ids[j]);
                return 0;
            }
            i = (i + 1) & (s->cache_cap - 1);
        }
    }
    if (sym_reserve(s, n + 1))
        return -1;
    size_t ns = 0;
    int64_t unk = -1;
    size_t unk_len = 0;
    for (size_t i = 0; i < n;) {
        size_t cl = (size_t)utf8_len((unsigned char)w[i]);
        if (i + cl > n)
            cl = n - i;
        uint32_t id;
        if (map_get(&e->vocab, w + i, cl, &id)) {
            if (unk >= 0) {
                s->sym_id[ns] = (uint32_t)unk;
                s->sym_len[ns++] = (uint32_t)unk_len;
                unk = -1;
            }
            s->sym_id[ns] = id;
            s->sym_len[ns++] = (uint32_t)cl;
        } else if (e->byte_fallback && e->have_byte_ids) {
            if (unk >= 0) {
                s->sym_id[ns] = (uint32_t)unk;
                s->sym_len[ns++] = (uint32_t)unk_len;
                unk = -1;
            }
            for (size_t k = 0; k < cl; k++) {
                s->sym_id[ns] = e->byte_ids[(unsigned char)w[i + k]];
                s->sym_len[ns++] = 1;
            }
        } else if (e->unk_id >= 0) {
            if (unk >= 0 && e->fuse_unk) {
                unk_len += cl;
            } else {
                if (unk >= 0) {
                    s->sym_id[ns] = (uint32_t)unk;
                    s->sym_len[ns++] = (uint32_t)unk_len;
                }
                unk = e->unk_id;
                unk_len = cl;
            }
        } /* else: HF drops the char */
        i += cl;
    }
    if (unk >= 0) {
        s->sym_id[ns] = (uint32_t)unk;
        s->sym_len[ns++] = (uint32_t)unk_len;
    }
    for (size_t i = 0; i < ns; i++) {
        s->sym_prev[i] = (int32_t)i - 1;
        s->sym_next[i] = i + 1 < ns ? (int32_t)i + 1 : -1;
    }
    s->heap_n = 0;
    for (size_t i = 0; i + 1 < ns; i++) {
        const merge_ent *m = merge_get(e, s->sym_id[i], s->sym_id[i + 1]);
        if (m && heap_push(s, (uint64_t)m->rank << 32 | i))
            return -1;
    }
    while (s->heap_n) {
        uint64_t top = heap_pop(s);
        size_t pos = (size_t)(uint32_t)top;
        uint32_t rank = (uint32_t)(top >> 32);
        if (s->sym_len[pos] == 0 || s->sym_next[pos] < 0)
            continue;
        size_t nx = (size_t)s->sym_next[pos];
        const merge_ent *m = merge_get(e, s->sym_id[pos], s->sym_id[nx]);
        if (!m || m->rank != rank)
            continue; /* stale */
        s->sym_id[pos] = m->id;
        s->sym_len[pos] += s->sym_len[nx];
        s->sym_len[nx] = 0;
        s->sym_next[pos] = s->sym_next[nx];
        if (s->sym_next[nx] >= 0)
            s->sym_prev[s->sym_next[nx]] = (int32_t)pos;
        if (s->sym_prev[pos] >= 0) {
            size_t pv = (size_t)s->sym_prev[pos];
            const merge_ent *pm = merge_get(e, s->sym_id[pv], s->sym_id[pos]);
            if (pm && heap_push(s, (uint64_t)pm->rank << 32 | pv))
                return -1;
        }
        if (s->sym_next[pos] >= 0) {
            const merge_ent *nm = merge_get(e, s->sym_id[pos], s->sym_id[s->sym_next[pos]]);
            if (nm && heap_push(s, (uint64_t)nm->rank << 32 | pos))
                return -1;
        }
    }
    size_t first = o->n;
    for (size_t i = 0; i < ns; i = (size_t)(s->sym_next[i] >= 0 ? s->sym_next[i] : (int32_t)ns))
        emit(o, s->sym_id[i]);
    /* remember short words */
    size_t count = o->n - first;
    if (n <= CACHE_MAX_WORD && !o->overflow && count < 64) {
        if (s->cache_n * 2 > s->cache_cap || s->cache_ids_n + count + 1 > (1u << 22) ||
            s->cache_keys.len + n > (1u << 26)) {
            memset(s->cache, 0, s->cache_cap * sizeof *s->cache);
            s->cache_n = s->cache_ids_n = 0;
            s->cache_keys.len = 0;
        }
        if (s->cache_ids_n + count + 1 > s->cache_ids_cap) {
            size_t cap = s->cache_ids_cap ? 2 * s->cache_ids_cap : 4096;
            while (cap < s->cache_ids_n + count + 1)
                cap *= 2;
            uint32_t *ci = realloc(s->cache_ids, cap * sizeof *ci);
            if (!ci)
                return 0; /* no cache, still correct */
            s->cache_ids = ci;
            s->cache_ids_cap = cap;
        }
        size_t koff = s->cache_keys.len;
        if (eg_buf_put(&s->cache_keys, w, n))
            return 0;
        size_t i = h & (s->cache_cap - 1);
        while (s->cache[i].used)
            i = (i + 1) & (s->cache_cap - 1);
        s->cache[i].used = 1;
        s->cache[i].koff = (uint32_t)koff;
        s->cache[i].len = (uint32_t)n;
        s->cache[i].ids = (uint32_t)s->cache_ids_n;
        s->cache_ids[s->cache_ids_n++] = (uint32_t)count;
        for (size_t j = 0; j < count; j++)
            s->cache_ids[s->cache_ids_n++] = o->ids[first + j];
        s->cache_n++;
    }
    return 0;
}

/* Split piece `p` (in arena `ar`) by a regex or a literal into `out`, as HF's
 * NormalizedString::split: the matches and the gaps between them, folded by
 * the behavior, empty pieces dropped. */
static int split_piece(const pre_step *st, scratch *s, const eg_buf *ar, const piece *p,
                       piece_list *out)
{
    const char *base = ar->p + p->off;
    const size_t n = p->len;
    /* (start, end, is_match) triples in s->splits */
    s->n_splits = 0;
    size_t prev = 0, pos = 0;
    while (pos <= n) {
        size_t ms, me;
        if (st->re) {
            onig_region_clear(s->region);
            int r = onig_search(st->re, (const OnigUChar *)base, (const OnigUChar *)base + n,
                                (const OnigUChar *)base + pos, (const OnigUChar *)base + n,
                                s->region, ONIG_OPTION_NONE);
            if (r == ONIG_MISMATCH)
                break;
            if (r < 0)
                return -1;
            ms = (size_t)s->region->beg[0];
            me = (size_t)s->region->end[0];
            if (me == ms) { /* no empty matches (onig's find_iter never yields one here) */
                pos = ms + (ms < n ? (size_t)utf8_len((unsigned char)base[ms]) : 1);
                continue;
            }
        } else {
            const char *f = n - pos >= st->lit_len
                                ? memmem(base + pos, n - pos, st->lit, st->lit_len)
                                : NULL;
            if (!f)
                break;
            ms = (size_t)(f - base);
            me = ms + st->lit_len;
        }
        if (ms > prev && split_add(s, prev, ms, 0))
            return -1;
        if (split_add(s, ms, me, 1))
            return -1;
        prev = pos = me;
    }
    if (prev < n && split_add(s, prev, n, 0))
        return -1;
    /* fold by behavior */
    size_t m = 0;
    split_t *sp = s->splits;
    switch (st->behavior) {
    case BEH_ISOLATED: m = s->n_splits; break;
    case BEH_REMOVED:
        for (size_t i = 0; i < s->n_splits; i++)
            if (!sp[i].match)
                sp[m++] = sp[i];
        break;
    case BEH_CONTIGUOUS:
    case BEH_MERGED_PREV: {
        int prev_match = 0;
        for (size_t i = 0; i < s->n_splits; i++) {
            int merge = st->behavior == BEH_CONTIGUOUS ? (sp[i].match == prev_match && m)
                                                       : (sp[i].match && !prev_match && m);
            if (merge)
                sp[m - 1].end = sp[i].end;
            else
                sp[m++] = sp[i];
            prev_match = sp[i].match;
        }
        break;
    }
    case BEH_MERGED_NEXT: {
        /* right to left: a match joins the piece after it */
        int prev_match = 0;
        size_t w = s->n_splits;
        for (size_t i = s->n_splits; i-- > 0;) {
            if (sp[i].match && !prev_match && w < s->n_splits)
                sp[w].start = sp[i].start;
            else
                sp[--w] = sp[i];
            prev_match = sp[i].match;
        }
        m = s->n_splits - w;
        memmove(sp, sp + w, m * sizeof *sp);
        break;
    }
    }
    for (size_t i = 0; i < m; i++)
        if (sp[i].end > sp[i].start &&
            pl_push(out, p->off + sp[i].start, sp[i].end - sp[i].start,
                    p->at_start && sp[i].start == 0))
            return -1;
    return 0;
}

/* Apply one pre-tokenizer step to every piece of `in` (arena s->arena),
 * producing pieces in `out`; steps that rewrite text write a new arena. */
static int pre_apply(const struct hf_encoder *e, const pre_step *st, scratch *s, piece_list *in,
                     piece_list *out)
{
    out->n = 0;
    if (st->kind == PRE_SPLIT) {
        for (size_t i = 0; i < in->n; i++)
            if (split_piece(st, s, &s->arena, &in->p[i], out))
                return -1;
        return 0;
    }
    /* rewriting steps: build the new text in arena2, then swap */
    eg_buf *dst = &s->arena2;
    dst->len = 0;
    if (eg_buf_reserve(dst, 16))
        return -1;
    piece_list tmp = {0};
    for (size_t i = 0; i < in->n; i++) {
        const piece *p = &in->p[i];
        const char *src = s->arena.p + p->off;
        size_t start = dst->len;
        if (st->kind == PRE_BYTELEVEL) {
            /* prefix space, then (optionally) GPT-2 split, then the byte map */
            if (st->add_prefix_space && (p->len == 0 || src[0] != ' ') && eg_buf_put(dst, " ", 1))
                goto fail;
            if (eg_buf_put(dst, src, p->len))
                goto fail;
            piece whole = {start, dst->len - start, p->at_start};
            tmp.n = 0;
            if (st->re) {
                if (split_piece(st, s, dst, &whole, &tmp))
                    goto fail;
            } else if (pl_push(&tmp, whole.off, whole.len, whole.at_start)) {
                goto fail;
            }
            for (size_t k = 0; k < tmp.n; k++) {
                size_t o0 = dst->len;
                for (size_t b = 0; b < tmp.p[k].len; b++) {
                    unsigned char c = (unsigned char)dst->p[tmp.p[k].off + b];
                    if (eg_buf_put(dst, e->bl[c], e->bl_len[c]))
                        goto fail;
                }
                if (pl_push(out, o0, dst->len - o0, tmp.p[k].at_start))
                    goto fail;
            }
        } else { /* PRE_METASPACE */
            int prepend = st->prepend == PREPEND_ALWAYS ||
                          (st->prepend == PREPEND_FIRST && p->at_start);
            if (prepend && !(p->len >= st->rep_len && !memcmp(src, st->rep, st->rep_len)) &&
                !(p->len && src[0] == ' ') && eg_buf_put(dst, st->rep, st->rep_len))
                goto fail;
            for (size_t b = 0; b < p->len; b++) {
                int rc = src[b] == ' ' ? eg_buf_put(dst, st->rep, st->rep_len)
                                       : eg_buf_put(dst, src + b, 1);
                if (rc)
                    goto fail;
            }
            if (!st->split) {
                if (pl_push(out, start, dst->len - start, p->at_start))
                    goto fail;
            } else {
                /* MergedWithNext on the replacement */
                size_t seg = start;
                for (size_t b = start; b + st->rep_len <= dst->len;) {
                    if (b > seg && !memcmp(dst->p + b, st->rep, st->rep_len)) {
                        if (pl_push(out, seg, b - seg, p->at_start && seg == start))
                            goto fail;
                        seg = b;
                    }
                    b += (size_t)utf8_len((unsigned char)dst->p[b]);
                }
                if (dst->len > seg && pl_push(out, seg, dst->len - seg, p->at_start && seg == start))
                    goto fail;
            }
        }
    }
    free(tmp.p);
    {
        eg_buf t = s->arena;
        s->arena = *dst;
        *dst = t;
    }
    return 0;
fail:
    free(tmp.p);
    return -1;
}

/* Normalizer steps on a text segment, into s->arena; returns its length. */
static int normalize_segment(const struct hf_encoder *e, scratch *s, const char *text, size_t n,
                             int at_start)
{
    s->arena.len = 0;
    if (eg_buf_put(&s->arena, text, n))
        return -1;
    for (size_t k = 0; k < e->n_norm; k++) {
        const norm_step *st = &e->norm[k];
        eg_buf *d = &s->arena2;
        d->len = 0;
        if (eg_buf_reserve(d, s->arena.len + 16))
            return -1;
        if (st->kind == NORM_PREPEND) {
            if (s->arena.len && eg_buf_put(d, st->a, st->alen))
                return -1;
            if (eg_buf_put(d, s->arena.p, s->arena.len))
                return -1;
        } else {
            for (size_t i = 0; i < s->arena.len;) {
                if (i + st->alen <= s->arena.len && !memcmp(s->arena.p + i, st->a, st->alen)) {
                    if (eg_buf_put(d, st->b, st->blen))
                        return -1;
                    i += st->alen;
                } else {
                    if (eg_buf_put(d, s->arena.p + i, 1))
                        return -1;
                    i++;
                }
            }
        }
        eg_buf t = s->arena;
        s->arena = *d;
        *d = t;
    }
    (void)at_start;
    return 0;
}

static int encode_segment(const struct hf_encoder *e, scratch *s, const char *text, size_t n,
                          int at_start, id_out *o)
{
    if (normalize_segment(e, s, text, n, at_start))
        return -1;
    s->a.n = 0;
    if (pl_push(&s->a, 0, s->arena.len, at_start))
        return -1;
    for (size_t k = 0; k < e->n_pre; k++) {
        if (pre_apply(e, &e->pre[k], s, &s->a, &s->b))
            return -1;
        piece_list t = s->a;
        s->a = s->b;
        s->b = t;
    }
    for (size_t i = 0; i < s->a.n; i++) {
        const piece *p = &s->a.p[i];
        if (p->len && bpe_word(e, s, s->arena.p + p->off, p->len, o))
            return -1;
    }
    return 0;
}

eg_status eg_hfenc_encode(const eg_tokenizer *tok, const char *text, size_t len, uint32_t flags,
                          uint32_t *ids, size_t cap, size_t *n_out, eg_err *err)
{
    const struct hf_encoder *e = tok->enc;
    scratch *s = get_scratch(tok);
    if (!s)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    id_out o = {ids, 0, cap, 0};
    int at_start = !(flags & EG_ENCODE_CONTINUE);
    size_t seg = 0;
    int rc = 0;
    /* added tokens: leftmost, then longest */
    for (size_t i = 0; i < len && !rc;) {
        if (e->added_maxlen && e->added_first[(unsigned char)text[i]]) {
            size_t best = 0;
            uint32_t best_id = 0, id;
            size_t maxl = len - i < e->added_maxlen ? len - i : e->added_maxlen;
            for (size_t l = maxl; l > 0; l--)
                if (map_get(&e->added, text + i, l, &id)) {
                    best = l;
                    best_id = id;
                    break;
                }
            if (best) {
                if (i > seg)
                    rc = encode_segment(e, s, text + seg, i - seg, at_start && seg == 0, &o);
                emit(&o, best_id);
                i += best;
                seg = i;
                continue;
            }
        }
        i++;
    }
    if (!rc && len > seg)
        rc = encode_segment(e, s, text + seg, len - seg, at_start && seg == 0, &o);
    if (rc)
        return eg_fail(err, EG_ENOMEM, "out of memory while encoding");
    *n_out = o.n;
    if (o.overflow)
        return eg_fail(err, EG_ECAPACITY, "encoding needs %zu ids, buffer holds %zu", o.n, cap);
    return EG_OK;
}
