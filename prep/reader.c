/* reader.c - streaming corpus readers: plain, gzip (zlib) and zstd (libzstd)
 * text; one document per file, per line, or per JSONL record (jansson).
 * Memory: a 1 MiB input buffer, the decompressed window and one document
 * (at most max_doc_bytes; longer documents are cut at line boundaries). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unicode/utf8.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "../base/eg_internal.h"
#include "engram/eg_prep.h"

#define RAW_CAP_DEFAULT ((size_t)1 << 20)
#define RAW_CAP_MIN ((size_t)16)
#define DEFAULT_MAX_DOC ((size_t)64 << 20)

typedef enum { SRC_PLAIN, SRC_GZIP, SRC_ZSTD } src_kind;

struct eg_reader {
    eg_reader_opts o;
    char **files;
    size_t n_files, next_file;
    /* the current file */
    int fd, open, is_stdin;
    src_kind kind;
    const char *name;
    unsigned char *raw;
    size_t raw_cap; /* bytes per read and per refill of the text */
    size_t raw_len, raw_pos;
    int raw_eof;
    z_stream zs;
    int zs_init, z_end;
    ZSTD_DStream *zd;
    size_t zd_last;
    /* decompressed text not consumed yet: text.p[pos .. text.len) */
    eg_buf text;
    size_t pos;
    int src_eof;
    uint64_t off;  /* decompressed offset of text.p[pos] in the current file */
    uint64_t line; /* 1-based line of text.p[pos] */
    /* the document handed out */
    eg_buf doc, clean;
    int continuing; /* per-file mode: the next chunk continues a document */
    eg_reader_stats st;
};

/* ---- input expansion ----------------------------------------------------- */

static int add_file(eg_reader *r, const char *path, size_t *cap)
{
    if (r->n_files == *cap) {
        *cap = *cap ? 2 * *cap : 16;
        char **f = realloc(r->files, *cap * sizeof *f);
        if (!f)
            return -1;
        r->files = f;
    }
    if (!(r->files[r->n_files] = strdup(path)))
        return -1;
    r->n_files++;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static eg_status add_dir(eg_reader *r, const char *dir, size_t *cap, eg_err *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return eg_fail(err, EG_EIO, "%s: cannot list: %s", dir, strerror(errno));
    char **names = NULL;
    size_t n = 0, ncap = 0;
    struct dirent *e;
    eg_status st = EG_OK;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        if (n == ncap) {
            ncap = ncap ? 2 * ncap : 64;
            char **nn = realloc(names, ncap * sizeof *nn);
            if (!nn) {
                st = eg_fail(err, EG_ENOMEM, "out of memory");
                break;
            }
            names = nn;
        }
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        if (!(names[n] = malloc(len))) {
            st = eg_fail(err, EG_ENOMEM, "out of memory");
            break;
        }
        snprintf(names[n++], len, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    if (!st)
        qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        struct stat sb;
        if (!st && stat(names[i], &sb) == 0) {
            if (S_ISDIR(sb.st_mode))
                st = add_dir(r, names[i], cap, err);
            else if (S_ISREG(sb.st_mode) && add_file(r, names[i], cap))
                st = eg_fail(err, EG_ENOMEM, "out of memory");
            if (S_ISREG(sb.st_mode))
                r->st.bytes_total += (uint64_t)sb.st_size;
        }
        free(names[i]);
    }
    free(names);
    return st;
}

static eg_status expand(eg_reader *r, const char *path, size_t *cap, eg_err *err)
{
    if (!strcmp(path, "-"))
        return add_file(r, path, cap) ? eg_fail(err, EG_ENOMEM, "out of memory") : EG_OK;
    struct stat sb;
    if (stat(path, &sb) == 0) {
        if (S_ISDIR(sb.st_mode))
            return add_dir(r, path, cap, err);
        r->st.bytes_total += (uint64_t)sb.st_size;
        return add_file(r, path, cap) ? eg_fail(err, EG_ENOMEM, "out of memory") : EG_OK;
    }
    if (strpbrk(path, "*?[")) {
        glob_t g;
        int rc = glob(path, 0, NULL, &g);
        if (rc == GLOB_NOMATCH)
            return eg_fail(err, EG_EIO, "%s: no file matches", path);
        if (rc)
            return eg_fail(err, EG_EIO, "%s: glob failed", path);
        eg_status st = EG_OK;
        for (size_t i = 0; i < g.gl_pathc && !st; i++)
            st = expand(r, g.gl_pathv[i], cap, err);
        globfree(&g);
        return st;
    }
    return eg_fail(err, EG_EIO, "%s: %s", path, strerror(errno));
}

eg_status eg_reader_open(const char *const *paths, size_t n_paths, const eg_reader_opts *opts,
                         eg_reader **out, eg_err *err)
{
    if (!out || !opts || (n_paths && !paths))
        return eg_fail(err, EG_EINVAL, "eg_reader_open: NULL argument");
    *out = NULL;
    if (opts->mode == EG_DOC_JSONL && (!opts->field || !opts->field[0]))
        return eg_fail(err, EG_EINVAL, "JSONL input needs the name of its text field");
    eg_reader *r = calloc(1, sizeof *r);
    if (!r)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    r->o = *opts;
    if (!r->o.max_doc_bytes)
        r->o.max_doc_bytes = DEFAULT_MAX_DOC;
    r->fd = -1;
    r->raw_cap = r->o.read_bytes ? r->o.read_bytes : RAW_CAP_DEFAULT;
    if (r->raw_cap < RAW_CAP_MIN)
        r->raw_cap = RAW_CAP_MIN;
    r->raw = malloc(r->raw_cap);
    size_t cap = 0;
    eg_status st = r->raw ? EG_OK : eg_fail(err, EG_ENOMEM, "out of memory");
    for (size_t i = 0; i < n_paths && !st; i++)
        st = expand(r, paths[i], &cap, err);
    if (!st && r->n_files == 0)
        st = eg_fail(err, EG_EIO, "no input files");
    if (st) {
        eg_reader_close(r);
        return st;
    }
    *out = r;
    return EG_OK;
}

/* ---- one source ------------------------------------------------------------- */

static void close_source(eg_reader *r)
{
    if (r->fd >= 0 && !r->is_stdin)
        close(r->fd);
    r->fd = -1;
    if (r->zs_init)
        inflateEnd(&r->zs);
    r->zs_init = 0;
    if (r->zd)
        ZSTD_freeDStream(r->zd);
    r->zd = NULL;
    r->open = 0;
}

static eg_status raw_fill(eg_reader *r, eg_err *err)
{
    if (r->raw_pos < r->raw_len || r->raw_eof)
        return EG_OK;
    ssize_t n;
    do
        n = read(r->fd, r->raw, r->raw_cap);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return eg_fail(err, EG_EIO, "%s: read error: %s", r->name, strerror(errno));
    r->raw_len = (size_t)n;
    r->raw_pos = 0;
    r->raw_eof = n == 0;
    r->st.bytes_read += (uint64_t)n;
    return EG_OK;
}

static eg_status open_source(eg_reader *r, const char *path, eg_err *err)
{
    r->is_stdin = !strcmp(path, "-");
    r->name = r->is_stdin ? "<stdin>" : path;
    r->fd = r->is_stdin ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    if (r->fd < 0)
        return eg_fail(err, EG_EIO, "%s: cannot open: %s", path, strerror(errno));
    r->open = 1;
    r->raw_len = r->raw_pos = 0;
    r->raw_eof = 0;
    r->src_eof = 0;
    r->text.len = r->pos = 0;
    r->off = 0;
    r->line = 1;
    r->continuing = 0;
    r->z_end = 0;
    r->zd_last = 0;
    r->st.files++;
    eg_status st = raw_fill(r, err);
    if (st)
        return st;
    /* a magic needs up to 4 bytes: top up a short first read */
    while (!r->raw_eof && r->raw_len < 4) {
        ssize_t n = read(r->fd, r->raw + r->raw_len, r->raw_cap - r->raw_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            r->raw_eof = n == 0;
            break;
        }
        r->raw_len += (size_t)n;
        r->st.bytes_read += (uint64_t)n;
    }
    const unsigned char *m = r->raw;
    if (r->raw_len >= 2 && m[0] == 0x1f && m[1] == 0x8b) {
        r->kind = SRC_GZIP;
        memset(&r->zs, 0, sizeof r->zs);
        if (inflateInit2(&r->zs, 15 + 16) != Z_OK)
            return eg_fail(err, EG_ENOMEM, "%s: cannot start zlib", r->name);
        r->zs_init = 1;
    } else if (r->raw_len >= 4 && m[0] == 0x28 && m[1] == 0xb5 && m[2] == 0x2f && m[3] == 0xfd) {
        r->kind = SRC_ZSTD;
        if (!(r->zd = ZSTD_createDStream()))
            return eg_fail(err, EG_ENOMEM, "%s: cannot start zstd", r->name);
        ZSTD_initDStream(r->zd);
    } else {
        r->kind = SRC_PLAIN;
    }
    return EG_OK;
}

/* Append more decompressed text; sets src_eof at the end of the file. */
static eg_status fill(eg_reader *r, eg_err *err)
{
    if (r->pos > 0 && r->pos == r->text.len) {
        r->text.len = r->pos = 0;
    } else if (r->pos > r->raw_cap && r->pos * 2 > r->text.len) {
        memmove(r->text.p, r->text.p + r->pos, r->text.len - r->pos);
        r->text.len -= r->pos;
        r->pos = 0;
    }
    if (eg_buf_reserve(&r->text, r->raw_cap + 1))
        return eg_fail(err, EG_ENOMEM, "out of memory");
    size_t before = r->text.len;
    while (r->text.len == before && !r->src_eof) {
        eg_status st = raw_fill(r, err);
        if (st)
            return st;
        size_t room = r->text.cap - r->text.len;
        if (r->kind == SRC_PLAIN) {
            if (r->raw_eof) {
                r->src_eof = 1;
                break;
            }
            size_t n = r->raw_len - r->raw_pos < room ? r->raw_len - r->raw_pos : room;
            memcpy(r->text.p + r->text.len, r->raw + r->raw_pos, n);
            r->text.len += n;
            r->raw_pos += n;
        } else if (r->kind == SRC_GZIP) {
            if (r->raw_eof) {
                if (!r->z_end)
                    return eg_fail(err, EG_EFORMAT,
                                   "%s: truncated gzip stream (ends inside a member, after %llu "
                                   "bytes of text)",
                                   r->name, (unsigned long long)(r->off + r->text.len - r->pos));
                r->src_eof = 1;
                break;
            }
            if (r->z_end) { /* another member follows */
                if (inflateReset(&r->zs) != Z_OK)
                    return eg_fail(err, EG_EFORMAT, "%s: bad gzip member", r->name);
                r->z_end = 0;
            }
            r->zs.next_in = r->raw + r->raw_pos;
            r->zs.avail_in = (uInt)(r->raw_len - r->raw_pos);
            r->zs.next_out = (Bytef *)r->text.p + r->text.len;
            r->zs.avail_out = (uInt)room;
            int zr = inflate(&r->zs, Z_NO_FLUSH);
            if (zr != Z_OK && zr != Z_STREAM_END && zr != Z_BUF_ERROR)
                return eg_fail(err, EG_EFORMAT, "%s: corrupt gzip data at input byte %llu: %s",
                               r->name,
                               (unsigned long long)(r->st.bytes_read - r->zs.avail_in),
                               r->zs.msg ? r->zs.msg : "inflate error");
            r->raw_pos = r->raw_len - r->zs.avail_in;
            r->text.len += room - r->zs.avail_out;
            if (zr == Z_STREAM_END)
                r->z_end = 1;
        } else {
            if (r->raw_eof) {
                if (r->zd_last != 0)
                    return eg_fail(err, EG_EFORMAT,
                                   "%s: truncated zstd stream (ends inside a frame, after %llu "
                                   "bytes of text)",
                                   r->name, (unsigned long long)(r->off + r->text.len - r->pos));
                r->src_eof = 1;
                break;
            }
            ZSTD_inBuffer in = {r->raw + r->raw_pos, r->raw_len - r->raw_pos, 0};
            ZSTD_outBuffer ob = {r->text.p + r->text.len, room, 0};
            size_t zr = ZSTD_decompressStream(r->zd, &ob, &in);
            if (ZSTD_isError(zr))
                return eg_fail(err, EG_EFORMAT, "%s: corrupt zstd data: %s", r->name,
                               ZSTD_getErrorName(zr));
            r->zd_last = zr;
            r->raw_pos += in.pos;
            r->text.len += ob.pos;
        }
    }
    return EG_OK;
}

/* ---- documents ----------------------------------------------------------------- */

/* Validate UTF-8 (ICU's U8_NEXT: an ill-formed maximal subpart is one error)
 * into r->clean, replacing errors with U+FFFD, or failing under `strict`.
 * `base_off` is the decompressed offset of s[0]. */
static eg_status clean_utf8(eg_reader *r, const char *s, size_t n, uint64_t base_off,
                            const char **out, eg_err *err)
{
    int32_t i = 0, len = n > INT32_MAX ? INT32_MAX : (int32_t)n;
    size_t bad = 0;
    while (i < len && !((unsigned char)s[i] & 0x80)) /* ASCII prefix */
        i++;
    while (i < len) {
        int32_t start = i;
        UChar32 c;
        U8_NEXT(s, i, len, c);
        if (c < 0) {
            if (r->o.strict)
                return eg_fail(err, EG_EFORMAT, "%s: invalid UTF-8 at byte offset %llu", r->name,
                               (unsigned long long)(base_off + (uint64_t)start));
            bad++;
        }
    }
    if (!bad) {
        *out = s;
        return EG_OK;
    }
    r->st.bad_utf8 += bad;
    r->clean.len = 0;
    if (eg_buf_reserve(&r->clean, n + 2 * bad + 1))
        return eg_fail(err, EG_ENOMEM, "out of memory");
    for (i = 0; i < len;) {
        int32_t start = i;
        UChar32 c;
        U8_NEXT(s, i, len, c);
        if (c < 0) {
            memcpy(r->clean.p + r->clean.len, "\xEF\xBF\xBD", 3);
            r->clean.len += 3;
        } else {
            memcpy(r->clean.p + r->clean.len, s + start, (size_t)(i - start));
            r->clean.len += (size_t)(i - start);
        }
    }
    *out = r->clean.p;
    return EG_OK;
}

/* A safe place to cut a long document: after a newline followed by a
 * non-space byte (pre-tokenizers never join across it); else after the last
 * newline; else at a UTF-8 boundary. Returns the cut length (> 0). */
static size_t cut_point(const char *s, size_t n)
{
    size_t any_nl = 0;
    for (size_t i = n - 1; i > 0; i--) {
        if (s[i - 1] == '\n') {
            char c = s[i];
            if (c != ' ' && c != '\t' && c != '\r' && c != '\n' && c != '\v' && c != '\f')
                return i;
            if (!any_nl)
                any_nl = i;
        }
    }
    if (any_nl)
        return any_nl;
    size_t i = n;
    while (i > 1 && ((unsigned char)s[i] & 0xC0) == 0x80)
        i--;
    return i;
}

static eg_status next_file(eg_reader *r, int *done, eg_err *err)
{
    close_source(r);
    if (r->next_file >= r->n_files) {
        *done = 1;
        return EG_OK;
    }
    return open_source(r, r->files[r->next_file++], err);
}

/* Per-file mode: the whole file, in chunks of at most max_doc_bytes. */
static eg_status next_per_file(eg_reader *r, const char **text, size_t *len, uint32_t *flags,
                               eg_err *err)
{
    for (;;) {
        if (!r->open) {
            int done = 0;
            eg_status st = next_file(r, &done, err);
            if (st || done)
                return st;
        }
        while (!r->src_eof && r->text.len - r->pos <= r->o.max_doc_bytes) {
            eg_status st = fill(r, err);
            if (st)
                return st;
        }
        size_t avail = r->text.len - r->pos;
        if (avail == 0 && r->src_eof) {
            if (!r->continuing)
                r->st.empty++;
            close_source(r);
            continue;
        }
        size_t n = avail;
        if (avail > r->o.max_doc_bytes)
            n = cut_point(r->text.p + r->pos, r->o.max_doc_bytes);
        const char *s = r->text.p + r->pos;
        eg_status st = clean_utf8(r, s, n, r->off, text, err);
        if (st)
            return st;
        /* *text points into r->text or r->clean, both stable until the next call */
        size_t outn = *text == s ? n : r->clean.len;
        *len = outn;
        *flags = r->continuing ? EG_DOC_CONTINUES : 0;
        if (r->continuing)
            r->st.chunks++;
        else
            r->st.docs++;
        r->st.bytes += outn;
        r->pos += n;
        r->off += n;
        r->continuing = !(r->src_eof && r->pos == r->text.len);
        if (!r->continuing)
            close_source(r); /* keeps r->text: *text stays valid */
        return EG_OK;
    }
}

/* Line and JSONL modes: one line (without "\n"); long lines are cut. */
static eg_status next_line(eg_reader *r, const char **line, size_t *len, int *cut,
                           uint64_t *line_no, uint64_t *off, eg_err *err)
{
    for (;;) {
        if (!r->open) {
            int done = 0;
            eg_status st = next_file(r, &done, err);
            if (st)
                return st;
            if (done) {
                *line = NULL;
                return EG_OK;
            }
        }
        const char *s = r->text.p ? r->text.p + r->pos : NULL;
        size_t avail = r->text.len - r->pos;
        const char *nl = s ? memchr(s, '\n', avail) : NULL;
        if (nl || (r->src_eof && avail) || avail > r->o.max_doc_bytes) {
            size_t n = nl ? (size_t)(nl - s) : avail;
            *cut = 0;
            if (n > r->o.max_doc_bytes) {
                n = cut_point(s, r->o.max_doc_bytes);
                *cut = 1;
            }
            *line = s;
            *len = n;
            *line_no = r->line;
            *off = r->off;
            size_t adv = n + (nl && !*cut ? 1 : 0);
            r->pos += adv;
            r->off += adv;
            if (nl && !*cut)
                r->line++;
            return EG_OK;
        }
        if (r->src_eof) {
            close_source(r);
            continue;
        }
        eg_status st = fill(r, err);
        if (st)
            return st;
    }
}

eg_status eg_reader_next(eg_reader *r, const char **text, size_t *len, uint32_t *flags,
                         eg_err *err)
{
    *text = NULL;
    *len = 0;
    *flags = 0;
    if (r->o.mode == EG_DOC_PER_FILE)
        return next_per_file(r, text, len, flags, err);
    for (;;) {
        const char *line;
        size_t n;
        int cut;
        uint64_t line_no = 0, off = 0;
        eg_status st = next_line(r, &line, &n, &cut, &line_no, &off, err);
        if (st || !line)
            return st;
        int continues = r->continuing;
        r->continuing = cut;
        if (r->o.mode == EG_DOC_PER_LINE) {
            if (n == 0 && !continues) {
                r->st.empty++;
                continue;
            }
            const char *clean;
            if ((st = clean_utf8(r, line, n, off, &clean, err)))
                return st;
            *text = clean;
            *len = clean == line ? n : r->clean.len;
        } else {
            if (cut || continues)
                return eg_fail(err, EG_EFORMAT, "%s:%llu: JSONL record longer than %zu bytes",
                               r->name, (unsigned long long)line_no, r->o.max_doc_bytes);
            size_t k = 0;
            while (k < n && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r'))
                k++;
            if (k == n)
                continue; /* blank line */
            json_error_t je;
            json_t *rec = json_loadb(line, n, JSON_ALLOW_NUL, &je);
            if (!rec || !json_is_object(rec)) {
                json_decref(rec);
                if (r->o.strict)
                    return eg_fail(err, EG_EFORMAT, "%s:%llu: malformed JSONL record: %s",
                                   r->name, (unsigned long long)line_no,
                                   rec ? "not an object" : je.text);
                r->st.bad_records++;
                continue;
            }
            json_t *f = json_object_get(rec, r->o.field);
            if (!json_is_string(f)) {
                json_decref(rec);
                if (r->o.strict)
                    return eg_fail(err, EG_EFORMAT, "%s:%llu: record has no string field '%s'",
                                   r->name, (unsigned long long)line_no, r->o.field);
                r->st.missing_field++;
                continue;
            }
            size_t fl = json_string_length(f);
            r->doc.len = 0;
            if (eg_buf_reserve(&r->doc, fl + 1)) {
                json_decref(rec);
                return eg_fail(err, EG_ENOMEM, "out of memory");
            }
            memcpy(r->doc.p, json_string_value(f), fl);
            r->doc.len = fl;
            json_decref(rec);
            if (fl == 0) {
                r->st.empty++;
                continue;
            }
            *text = r->doc.p; /* jansson guarantees valid UTF-8 */
            *len = fl;
        }
        *flags = continues ? EG_DOC_CONTINUES : 0;
        if (continues)
            r->st.chunks++;
        else
            r->st.docs++;
        r->st.bytes += *len;
        return EG_OK;
    }
}

void eg_reader_get_stats(const eg_reader *r, eg_reader_stats *st) { *st = r->st; }

const char *eg_reader_file(const eg_reader *r, size_t i)
{
    return r && i < r->n_files ? r->files[i] : NULL;
}

void eg_reader_close(eg_reader *r)
{
    if (!r)
        return;
    close_source(r);
    for (size_t i = 0; i < r->n_files; i++)
        free(r->files[i]);
    free(r->files);
    free(r->raw);
    free(r->text.p);
    free(r->doc.p);
    free(r->clean.p);
    free(r);
}
