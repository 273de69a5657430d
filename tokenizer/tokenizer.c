/* tokenizer.c - opening tokenizers, common accessors and the decoder pipeline. */
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unicode/ustring.h>

#include "../base/eg_internal.h"
#include "spm.h"
#include "tok_internal.h"

/* ---- small helpers --------------------------------------------------------- */

void eg_sha256(const void *data, size_t n, uint8_t out[32])
{
    unsigned int olen = 32;
    EVP_Digest(data, n, out, &olen, EVP_sha256(), NULL);
}

void eg_sha256_hex(const uint8_t d[32], char out[65])
{
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hx[d[i] >> 4];
        out[2 * i + 1] = hx[d[i] & 15];
    }
    out[64] = 0;
}

int eg_utf8_valid(const char *s, size_t n)
{
    /* ASCII runs first, 8 bytes at a time */
    size_t i = 0;
    while (i + 8 <= n) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        if (w & 0x8080808080808080ull)
            break;
        i += 8;
    }
    while (i < n && !((unsigned char)s[i] & 0x80))
        i++;
    if (i == n)
        return 1;
    s += i;
    n -= i;
    UErrorCode st = U_ZERO_ERROR;
    int32_t need = 0;
    if (n > INT32_MAX)
        return 0;
    u_strFromUTF8(NULL, 0, &need, s, (int32_t)n, &st);
    return st == U_BUFFER_OVERFLOW_ERROR || U_SUCCESS(st) || st == U_STRING_NOT_TERMINATED_WARNING;
}

int eg_utf8_lossy(const char *s, size_t n, eg_buf *out)
{
    if (n > INT32_MAX / 2)
        return -1;
    if (eg_utf8_valid(s, n))
        return eg_buf_put(out, s, n);
    /* ICU substitutes maximal subparts, like Rust's from_utf8_lossy. */
    UErrorCode st = U_ZERO_ERROR;
    int32_t n16 = 0, nsub = 0;
    u_strFromUTF8WithSub(NULL, 0, &n16, s, (int32_t)n, 0xFFFD, &nsub, &st);
    if (st != U_BUFFER_OVERFLOW_ERROR && U_FAILURE(st))
        return -1;
    UChar *u = malloc(((size_t)n16 + 1) * sizeof *u);
    if (!u)
        return -1;
    st = U_ZERO_ERROR;
    u_strFromUTF8WithSub(u, n16 + 1, &n16, s, (int32_t)n, 0xFFFD, &nsub, &st);
    int32_t n8 = 0;
    UErrorCode st2 = U_ZERO_ERROR;
    u_strToUTF8(NULL, 0, &n8, u, n16, &st2);
    int rc = -1;
    if (U_SUCCESS(st) && eg_buf_reserve(out, (size_t)n8 + 1) == 0) {
        st2 = U_ZERO_ERROR;
        u_strToUTF8(out->p + out->len, n8 + 1, &n8, u, n16, &st2);
        if (U_SUCCESS(st2)) {
            out->len += (size_t)n8;
            out->p[out->len] = 0;
            rc = 0;
        }
    }
    free(u);
    return rc;
}

eg_status eg_tok_alloc(eg_tokenizer *tok, size_t n, eg_err *err)
{
    tok->n = n;
    tok->off = calloc(n ? n : 1, sizeof *tok->off);
    tok->len = calloc(n ? n : 1, sizeof *tok->len);
    tok->flags = calloc(n ? n : 1, sizeof *tok->flags);
    if (!tok->off || !tok->len || !tok->flags)
        return eg_fail(err, EG_ENOMEM, "out of memory for %zu tokens", n);
    return EG_OK;
}

/* ---- open / free / accessors ------------------------------------------------ */

static eg_status read_whole(const char *path, char **data, size_t *len, eg_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return eg_fail(err, EG_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode)) {
        fclose(f);
        return eg_fail(err, EG_EIO, "%s: not a regular file", path);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(f);
        return eg_fail(err, EG_ENOMEM, "%s: out of memory for %zu bytes", path, n);
    }
    size_t got = fread(buf, 1, n, f);
    fclose(f);
    if (got != n) {
        free(buf);
        return eg_fail(err, EG_EIO, "%s: read error", path);
    }
    buf[n] = 0;
    *data = buf;
    *len = n;
    return EG_OK;
}

eg_status eg_tokenizer_open_memory(const void *bytes, size_t len, const char *name,
                                   eg_tokenizer **out, eg_err *err)
{
    if (!out || (!bytes && len))
        return eg_fail(err, EG_EINVAL, "eg_tokenizer_open_memory: NULL argument");
    *out = NULL;
    const char *path = name ? name : "tokenizer";
    const char *data = bytes;
    if (len == 0)
        return eg_fail(err, EG_EFORMAT, "%s: empty file, not a tokenizer", path);
    eg_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    eg_sha256(data, len, tok->sha);
    size_t i = 0;
    while (i < len && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r'))
        i++;
    eg_status st = (i < len && data[i] == '{') ? eg_tok_load_hf(tok, data, len, path, err)
                                                : eg_tok_load_spm(tok, data, len, path, err);
    if (st) {
        eg_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return EG_OK;
}

eg_status eg_tokenizer_open(const char *path, eg_tokenizer **out, eg_err *err)
{
    if (!path || !out)
        return eg_fail(err, EG_EINVAL, "eg_tokenizer_open: NULL argument");
    *out = NULL;
    char *data = NULL;
    size_t len = 0;
    eg_status st = read_whole(path, &data, &len, err);
    if (st)
        return st;
    st = eg_tokenizer_open_memory(data, len, path, out, err);
    free(data);
    return st;
}

void eg_tokenizer_free(eg_tokenizer *tok)
{
    if (!tok)
        return;
    for (size_t i = 0; i < tok->n_steps; i++) {
        free(tok->steps[i].pattern);
        free(tok->steps[i].content);
    }
    if (tok->spm)
        eg_spm_free(tok->spm);
    eg_hfenc_free(tok->enc);
    free(tok->arena);
    free(tok->off);
    free(tok->len);
    free(tok->flags);
    free(tok);
}

eg_tokenizer_kind eg_tokenizer_get_kind(const eg_tokenizer *tok) { return tok->kind; }
const char *eg_tokenizer_describe(const eg_tokenizer *tok) { return tok->describe; }
size_t eg_tokenizer_vocab_size(const eg_tokenizer *tok) { return tok->n; }

eg_status eg_tokenizer_piece(const eg_tokenizer *tok, uint32_t id, const char **text,
                             size_t *len)
{
    if (id >= tok->n)
        return EG_ERANGE;
    *text = tok->arena + tok->off[id];
    *len = tok->len[id];
    return EG_OK;
}

uint32_t eg_tokenizer_flags(const eg_tokenizer *tok, uint32_t id)
{
    return id < tok->n ? tok->flags[id] : 0;
}

void eg_tokenizer_sha256(const eg_tokenizer *tok, uint8_t out[32]) { memcpy(out, tok->sha, 32); }

eg_status eg_tokenizer_can_encode(const eg_tokenizer *tok, eg_err *err)
{
    if (tok->kind == EG_TOKENIZER_SPM || tok->enc)
        return EG_OK;
    return eg_fail(err, EG_EUNSUPPORTED, "this tokenizer.json cannot be used to encode: %s",
                   tok->enc_error[0] ? tok->enc_error : "unsupported");
}

eg_status eg_tokenizer_encode(const eg_tokenizer *tok, const char *text, size_t len,
                              uint32_t flags, uint32_t *ids, size_t cap, size_t *n_out,
                              eg_err *err)
{
    eg_status st = eg_tokenizer_can_encode(tok, err);
    if (st)
        return st;
    if (!eg_utf8_valid(text, len))
        return eg_fail(err, EG_EFORMAT, "text to encode is not valid UTF-8");
    if (tok->kind == EG_TOKENIZER_HF_JSON)
        return eg_hfenc_encode(tok, text, len, flags, ids, cap, n_out, err);
    /* libsentencepiece; int32 ids are never negative */
    long n = eg_spm_encode(tok->spm, text, len, (int32_t *)(void *)ids, cap);
    if (n < 0)
        return eg_fail(err, EG_EFORMAT, "libsentencepiece could not encode the text");
    *n_out = (size_t)n;
    if ((size_t)n > cap)
        return eg_fail(err, EG_ECAPACITY, "encoding needs %ld ids, buffer holds %zu", n, cap);
    return EG_OK;
}

eg_status eg_tokenizer_token_id(const eg_tokenizer *tok, const char *s, size_t len,
                                uint32_t *id)
{
    /* added tokens first, as HF's token_to_id */
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < tok->n; i++) {
            if (tok->flags[i] & EG_PIECE_MISSING)
                continue;
            const int want_added = pass == 0;
            if (!!(tok->flags[i] & EG_PIECE_ADDED) != want_added)
                continue;
            if (tok->len[i] == len && !memcmp(tok->arena + tok->off[i], s, len)) {
                *id = (uint32_t)i;
                return EG_OK;
            }
        }
    return EG_ERANGE;
}

eg_status eg_tokenizer_decode_id(const eg_tokenizer *tok, uint32_t id, char *buf, size_t cap,
                                 size_t *len)
{
    if (id >= tok->n)
        return EG_ERANGE;
    eg_buf b = {0};
    eg_status st = eg_tok_decode_pieces(tok, &id, 1, &b);
    if (st) {
        eg_buf_free(&b);
        return st;
    }
    *len = b.len;
    if (b.len > cap) {
        eg_buf_free(&b);
        return EG_ECAPACITY;
    }
    if (b.len)
        memcpy(buf, b.p, b.len);
    eg_buf_free(&b);
    return EG_OK;
}

/* ---- the decoder pipeline ---------------------------------------------------- */

/* Decode one UTF-8 code point at s[*i]; the input is valid UTF-8 or the
 * caller accepts U+FFFD for a bad byte. */
static uint32_t next_cp(const char *s, size_t n, size_t *i)
{
    const unsigned char *u = (const unsigned char *)s;
    uint32_t c = u[*i];
    size_t k = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if (c >= 0x80 && (c < 0xC2 || c > 0xF4 || *i + k > n)) {
        (*i)++;
        return 0xFFFD;
    }
    if (k == 1) {
        (*i)++;
        return c;
    }
    c &= (k == 2) ? 0x1F : (k == 3) ? 0x0F : 0x07;
    for (size_t j = 1; j < k; j++)
        c = c << 6 | (u[*i + j] & 0x3F);
    *i += k;
    return c;
}

static int put_cp(eg_buf *b, uint32_t c)
{
    char t[4];
    size_t n;
    if (c < 0x80) {
        t[0] = (char)c;
        n = 1;
    } else if (c < 0x800) {
        t[0] = (char)(0xC0 | c >> 6);
        t[1] = (char)(0x80 | (c & 0x3F));
        n = 2;
    } else if (c < 0x10000) {
        t[0] = (char)(0xE0 | c >> 12);
        t[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        t[2] = (char)(0x80 | (c & 0x3F));
        n = 3;
    } else {
        t[0] = (char)(0xF0 | c >> 18);
        t[1] = (char)(0x80 | ((c >> 12) & 0x3F));
        t[2] = (char)(0x80 | ((c >> 6) & 0x3F));
        t[3] = (char)(0x80 | (c & 0x3F));
        n = 4;
    }
    return eg_buf_put(b, t, n);
}

/* GPT-2's bytes_to_unicode, inverted: code point -> byte, or -1. */
static int bytelevel_byte(uint32_t cp)
{
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return (int)cp;
    if (cp >= 0x100 && cp < 0x100 + 68) {
        /* the 68 other bytes, in increasing order, got 256.. */
        int k = (int)(cp - 0x100);
        for (int b = 0; b < 256; b++) {
            int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) ||
                            (b >= 0xAE && b <= 0xFF);
            if (!printable && k-- == 0)
                return b;
        }
    }
    return -1;
}

typedef struct {
    eg_buf *t;
    size_t n, cap;
} tok_list;

static int list_push(tok_list *l, const char *s, size_t n)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        eg_buf *t = realloc(l->t, cap * sizeof *t);
        if (!t)
            return -1;
        memset(t + l->cap, 0, (cap - l->cap) * sizeof *t);
        l->t = t;
        l->cap = cap;
    }
    l->t[l->n].len = 0;
    return eg_buf_put(&l->t[l->n++], s, n);
}

static void list_free(tok_list *l)
{
    for (size_t i = 0; i < l->cap; i++)
        eg_buf_free(&l->t[i]);
    free(l->t);
    memset(l, 0, sizeof *l);
}

static int is_byte_token(const eg_buf *t, int *byte)
{
    if (t->len != 6 || memcmp(t->p, "<0x", 3) || t->p[5] != '>')
        return 0;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = t->p[i];
        int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                : (c >= 'a' && c <= 'f')                ? c - 'a' + 10
                                                        : -1;
        if (d < 0)
            return 0;
        v = v * 16 + d;
    }
    *byte = v;
    return 1;
}

static int step_apply(const dec_step *s, tok_list *in, tok_list *out)
{
    out->n = 0;
    switch (s->kind) {
    case DEC_BYTELEVEL: {
        eg_buf bytes = {0};
        int rc = 0;
        for (size_t k = 0; k < in->n && !rc; k++) {
            const eg_buf *t = &in->t[k];
            size_t start = bytes.len;
            int ok = 1;
            for (size_t i = 0; i < t->len && ok;) {
                int b = bytelevel_byte(next_cp(t->p, t->len, &i));
                if (b < 0)
                    ok = 0;
                else {
                    char c = (char)b;
                    rc |= eg_buf_put(&bytes, &c, 1);
                }
            }
            if (!ok) { /* a char outside the byte map: the token's own bytes */
                bytes.len = start;
                rc |= eg_buf_put(&bytes, t->p, t->len);
            }
        }
        eg_buf lossy = {0};
        if (!rc)
            rc = eg_utf8_lossy(bytes.p ? bytes.p : "", bytes.len, &lossy);
        if (!rc)
            rc = list_push(out, lossy.p ? lossy.p : "", lossy.len);
        eg_buf_free(&bytes);
        eg_buf_free(&lossy);
        return rc;
    }
    case DEC_REPLACE:
    case DEC_METASPACE:
        for (size_t k = 0; k < in->n; k++) {
            const eg_buf *t = &in->t[k];
            eg_buf r = {0};
            int rc = eg_buf_put(&r, "", 0);
            if (s->kind == DEC_REPLACE) {
                for (size_t i = 0; i < t->len && !rc;) {
                    if (s->pattern_len && i + s->pattern_len <= t->len &&
                        !memcmp(t->p + i, s->pattern, s->pattern_len)) {
                        rc = eg_buf_put(&r, s->content, s->content_len);
                        i += s->pattern_len;
                    } else {
                        rc = eg_buf_put(&r, t->p + i, 1);
                        i++;
                    }
                }
            } else {
                for (size_t i = 0; i < t->len && !rc;) {
                    uint32_t c = next_cp(t->p, t->len, &i);
                    rc = put_cp(&r, c == s->replacement ? ' ' : c);
                }
                if (!rc && k == 0 && s->prepend && r.len && r.p[0] == ' ')
                    memmove(r.p, r.p + 1, r.len--);
            }
            if (!rc)
                rc = list_push(out, r.p, r.len);
            eg_buf_free(&r);
            if (rc)
                return rc;
        }
        return 0;
    case DEC_BYTEFALLBACK: {
        eg_buf pend = {0};
        int rc = 0;
        for (size_t k = 0; k <= in->n && !rc; k++) {
            int b;
            if (k < in->n && is_byte_token(&in->t[k], &b)) {
                char c = (char)b;
                rc = eg_buf_put(&pend, &c, 1);
                continue;
            }
            if (pend.len) {
                if (eg_utf8_valid(pend.p, pend.len))
                    rc = list_push(out, pend.p, pend.len);
                else
                    for (size_t i = 0; i < pend.len && !rc; i++)
                        rc = list_push(out, "\xEF\xBF\xBD", 3);
                pend.len = 0;
            }
            if (k < in->n && !rc)
                rc = list_push(out, in->t[k].p, in->t[k].len);
        }
        eg_buf_free(&pend);
        return rc;
    }
    case DEC_FUSE: {
        eg_buf all = {0};
        int rc = eg_buf_put(&all, "", 0);
        for (size_t k = 0; k < in->n && !rc; k++)
            rc = eg_buf_put(&all, in->t[k].p, in->t[k].len);
        if (!rc)
            rc = list_push(out, all.p, all.len);
        eg_buf_free(&all);
        return rc;
    }
    case DEC_STRIP:
        for (size_t k = 0; k < in->n; k++) {
            const eg_buf *t = &in->t[k];
            /* code point boundaries */
            size_t ncp = 0, i = 0;
            size_t *pos = malloc((t->len + 1) * sizeof *pos);
            uint32_t *cps = malloc((t->len + 1) * sizeof *cps);
            if (!pos || !cps) {
                free(pos);
                free(cps);
                return -1;
            }
            while (i < t->len) {
                pos[ncp] = i;
                cps[ncp++] = next_cp(t->p, t->len, &i);
            }
            pos[ncp] = t->len;
            size_t a = 0, z = ncp;
            while (a < s->strip_start && a < ncp && cps[a] == s->strip_char)
                a++;
            for (uint32_t j = 0; j < s->strip_stop && z > a && cps[z - 1] == s->strip_char; j++)
                z--;
            int rc = list_push(out, t->p + pos[a], pos[z] - pos[a]);
            free(pos);
            free(cps);
            if (rc)
                return rc;
        }
        return 0;
    }
    return -1;
}

eg_status eg_tok_decode_pieces(const eg_tokenizer *tok, const uint32_t *ids, size_t n,
                               eg_buf *out)
{
    tok_list a = {0}, b = {0};
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        if (ids[i] >= tok->n) {
            list_free(&a);
            return EG_ERANGE;
        }
        if (tok->flags[ids[i]] & EG_PIECE_MISSING)
            continue;
        rc = list_push(&a, tok->arena + tok->off[ids[i]], tok->len[ids[i]]);
    }
    for (size_t k = 0; k < tok->n_steps && !rc; k++) {
        rc = step_apply(&tok->steps[k], &a, &b);
        tok_list t = a;
        a = b;
        b = t;
    }
    /* No decoder: HF joins the tokens with spaces. */
    for (size_t i = 0; i < a.n && !rc; i++) {
        if (i && !tok->n_steps)
            rc = eg_buf_put(out, " ", 1);
        if (!rc)
            rc = eg_buf_put(out, a.t[i].p, a.t[i].len);
    }
    if (!rc && !out->p)
        rc = eg_buf_put(out, "", 0);
    list_free(&a);
    list_free(&b);
    return rc ? EG_ENOMEM : EG_OK;
}
