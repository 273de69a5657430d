/* normalize.c - the projection's key normalizer (CONTRACT section 1), on ICU.
 *
 * HF's normalizers use Unicode 9.0 tables; ICU 72 has Unicode 15.0. NFKC and
 * NFD are therefore filtered to the characters assigned in Unicode 9.0
 * ([:age=9.0:]): a later character passes through unchanged, as it does in
 * HF, and it is not taken for a combining mark either. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/uset.h>
#include <unicode/ustring.h>

#include "../base/eg_internal.h"
#include "engram/eg_tokenizer.h"

static const UNormalizer2 *nfkc9, *nfd9;
static USet *age9;
static UErrorCode init_status = U_ZERO_ERROR;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init_icu(void)
{
    UErrorCode st = U_ZERO_ERROR;
    static const UChar pattern[] = {'[', ':', 'a', 'g', 'e', '=', '9', '.', '0', ':', ']', 0};
    age9 = uset_openPattern(pattern, -1, &st);
    if (U_SUCCESS(st))
        uset_freeze(age9);
    const UNormalizer2 *nfkc = unorm2_getNFKCInstance(&st);
    const UNormalizer2 *nfd = unorm2_getNFDInstance(&st);
    if (U_SUCCESS(st)) {
        nfkc9 = (const UNormalizer2 *)unorm2_openFiltered(nfkc, age9, &st);
        nfd9 = (const UNormalizer2 *)unorm2_openFiltered(nfd, age9, &st);
    }
    init_status = st;
}

/* A growable UTF-16 buffer. */
typedef struct {
    UChar *p;
    int32_t len, cap;
} u16buf;

static int u16_reserve(u16buf *b, int32_t need)
{
    if (need <= b->cap)
        return 0;
    int32_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    UChar *p = realloc(b->p, (size_t)cap * sizeof *p);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int u16_put(u16buf *b, UChar32 c)
{
    if (u16_reserve(b, b->len + 2))
        return -1;
    if (c < 0x10000) {
        b->p[b->len++] = (UChar)c;
    } else {
        b->p[b->len++] = (UChar)(0xD7C0 + (c >> 10));
        b->p[b->len++] = (UChar)(0xDC00 | (c & 0x3FF));
    }
    return 0;
}

static int normalize_into(const UNormalizer2 *n, const u16buf *in, u16buf *out)
{
    UErrorCode st = U_ZERO_ERROR;
    int32_t need = unorm2_normalize(n, in->p, in->len, NULL, 0, &st);
    if (st != U_BUFFER_OVERFLOW_ERROR && U_FAILURE(st))
        return -1;
    if (u16_reserve(out, need + 1))
        return -1;
    st = U_ZERO_ERROR;
    out->len = unorm2_normalize(n, in->p, in->len, out->p, out->cap, &st);
    return U_FAILURE(st) ? -1 : 0;
}

static int is_mark9(UChar32 c)
{
    int8_t t = u_charType(c);
    return (t == U_NON_SPACING_MARK || t == U_ENCLOSING_MARK || t == U_COMBINING_SPACING_MARK) &&
           uset_contains(age9, c);
}

/* ASCII text: NFKC and NFD are the identity, there are no marks, and the
 * White_Space characters are TAB..CR and SPACE. Same result, no ICU. */
static eg_status normalize_ascii(const char *text, size_t len, char *out, size_t cap,
                                 size_t *out_len)
{
    char stackbuf[256];
    char *t = len <= sizeof stackbuf ? stackbuf : malloc(len);
    if (!t)
        return EG_ENOMEM;
    size_t n = 0;
    int in_run = 0;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            if (!in_run)
                t[n++] = ' ';
            in_run = 1;
        } else {
            t[n++] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
            in_run = 0;
        }
    }
    size_t a = 0, z = n;
    if (!(n == 1 && t[0] == ' ')) {
        while (a < z && (t[a] == ' ' || (t[a] >= 9 && t[a] <= 13)))
            a++;
        while (z > a && (t[z - 1] == ' ' || (t[z - 1] >= 9 && t[z - 1] <= 13)))
            z--;
    }
    *out_len = z - a;
    eg_status st = EG_OK;
    if (z - a > cap)
        st = EG_ECAPACITY;
    else if (z > a)
        memcpy(out, t + a, z - a);
    if (t != stackbuf)
        free(t);
    return st;
}

eg_status eg_normalize_key(const char *text, size_t len, char *out, size_t cap,
                           size_t *out_len, eg_err *err)
{
    size_t nonascii = 0;
    for (size_t i = 0; i < len && !nonascii; i++)
        nonascii = (unsigned char)text[i] >= 0x80;
    if (!nonascii) {
        eg_status st = normalize_ascii(text, len, out, cap, out_len);
        if (st == EG_ECAPACITY)
            return eg_fail(err, EG_ECAPACITY, "normalized key needs %zu bytes", *out_len);
        if (st)
            return eg_fail(err, st, "out of memory");
        return EG_OK;
    }
    pthread_once(&init_once, init_icu);
    if (U_FAILURE(init_status))
        return eg_fail(err, EG_EUNSUPPORTED, "ICU normalizers unavailable: %s",
                       u_errorName(init_status));
    if (len > INT32_MAX / 4)
        return eg_fail(err, EG_ERANGE, "text of %zu bytes is too long to normalize", len);
    u16buf a = {0}, b = {0};
    eg_status ret = EG_ENOMEM;
    UErrorCode st = U_ZERO_ERROR;
    int32_t n16 = 0;
    u_strFromUTF8(NULL, 0, &n16, text, (int32_t)len, &st);
    if (st != U_BUFFER_OVERFLOW_ERROR && U_FAILURE(st)) {
        ret = eg_fail(err, EG_EFORMAT, "text is not valid UTF-8");
        goto done;
    }
    if (u16_reserve(&a, n16 + 1))
        goto done;
    st = U_ZERO_ERROR;
    u_strFromUTF8(a.p, a.cap, &a.len, text, (int32_t)len, &st);
    if (U_FAILURE(st)) {
        ret = eg_fail(err, EG_EFORMAT, "text is not valid UTF-8");
        goto done;
    }
    /* NFKC, then NFD */
    if (normalize_into(nfkc9, &a, &b) || normalize_into(nfd9, &b, &a))
        goto done;
    /* drop marks, lowercase each code point (full mapping, root locale) */
    b.len = 0;
    for (int32_t i = 0; i < a.len;) {
        UChar32 c;
        U16_NEXT(a.p, i, a.len, c);
        if (is_mark9(c))
            continue;
        if (c < 0x80) {
            if (u16_put(&b, (c >= 'A' && c <= 'Z') ? c + 32 : c))
                goto done;
            continue;
        }
        UChar one[2], low[8];
        int32_t k = 0;
        U16_APPEND_UNSAFE(one, k, c);
        st = U_ZERO_ERROR;
        int32_t nl = u_strToLower(low, 8, one, k, "", &st);
        if (U_FAILURE(st) || nl > 8)
            goto done;
        if (u16_reserve(&b, b.len + nl))
            goto done;
        memcpy(b.p + b.len, low, (size_t)nl * sizeof *low);
        b.len += nl;
    }
    /* runs of [ \t\r\n] -> one space */
    a.len = 0;
    if (u16_reserve(&a, b.len + 1))
        goto done;
    int in_run = 0;
    for (int32_t i = 0; i < b.len; i++) {
        UChar c = b.p[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            if (!in_run)
                a.p[a.len++] = ' ';
            in_run = 1;
        } else {
            a.p[a.len++] = c;
            in_run = 0;
        }
    }
    /* a lone space stays; otherwise strip White_Space at both ends */
    int32_t s0 = 0, s1 = a.len;
    if (!(a.len == 1 && a.p[0] == ' ')) {
        while (s0 < s1) {
            UChar32 c;
            int32_t j = s0;
            U16_NEXT(a.p, j, s1, c);
            if (!u_isUWhiteSpace(c))
                break;
            s0 = j;
        }
        while (s1 > s0) {
            UChar32 c;
            int32_t j = s1;
            U16_PREV(a.p, s0, j, c);
            if (!u_isUWhiteSpace(c))
                break;
            s1 = j;
        }
    }
    /* the reference's sentinel U+E000 becomes a space */
    for (int32_t i = s0; i < s1; i++)
        if (a.p[i] == 0xE000)
            a.p[i] = ' ';
    int32_t n8 = 0;
    st = U_ZERO_ERROR;
    u_strToUTF8(NULL, 0, &n8, a.p + s0, s1 - s0, &st);
    if (st != U_BUFFER_OVERFLOW_ERROR && U_FAILURE(st)) {
        ret = eg_fail(err, EG_EFORMAT, "normalized text is not convertible to UTF-8");
        goto done;
    }
    *out_len = (size_t)n8;
    if ((size_t)n8 > cap) {
        ret = EG_ECAPACITY;
        if (err)
            eg_fail(err, EG_ECAPACITY, "normalized key needs %d bytes", n8);
        goto done;
    }
    st = U_ZERO_ERROR;
    u_strToUTF8(out, (int32_t)(cap > INT32_MAX ? INT32_MAX : cap), &n8, a.p + s0, s1 - s0, &st);
    ret = U_FAILURE(st) ? eg_fail(err, EG_EFORMAT, "UTF-8 conversion failed") : EG_OK;
done:
    free(a.p);
    free(b.p);
    return ret;
}
