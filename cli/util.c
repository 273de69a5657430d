/* util.c - helpers of the engram command: errors, files, timing. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

const char *cli_cmd = "engram";

int cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "engram%s%s: error: ", cli_cmd[0] ? " " : "", cli_cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

int cli_fail(const eg_err *err) { return cli_error("%s", err->msg); }

void cli_note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

int cli_parse_threads(const char *s, int *out)
{
    uint64_t v;
    if (cli_parse_u64(s, &v) || v > 4096)
        return cli_error("--threads: '%s' must be 0..4096 (0 = all cores)", s);
    *out = (int)v;
    return 0;
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void cli_progress_begin(cli_progress *p, int on, const char *unit)
{
    p->t0 = p->last = cli_now();
    p->on = on;
    p->unit = unit;
}

void cli_progress_cb(uint64_t done, uint64_t total, void *vp)
{
    cli_progress *c = vp;
    double now = cli_now();
    if (!c->on || now - c->last < 0.5)
        return;
    c->last = now;
    double dt = now - c->t0, frac = total ? (double)done / (double)total : 0;
    fprintf(stderr, "\r  %.1f M %s (%.0f%%), %.2f M %s/s, ETA %.0f s   ", done / 1e6, c->unit,
            100 * frac, done / 1e6 / (dt > 0 ? dt : 1e-9), c->unit,
            frac > 0 ? dt / frac - dt : 0.0);
}

void cli_progress_end(const cli_progress *p)
{
    if (p->on)
        fputs("\r\033[K", stderr);
}

double cli_peak_rss_mib(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru))
        return 0;
    return (double)ru.ru_maxrss / 1024.0;
}

int cli_parse_u64(const char *s, uint64_t *out)
{
    if (!s || !*s || *s == '-' || *s == '+')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        return -1;
    uint64_t mul = 1;
    if (*end == 'k' || *end == 'K')
        mul = 1000, end++;
    else if (*end == 'M')
        mul = 1000000, end++;
    else if (*end == 'G')
        mul = 1000000000, end++;
    if (*end)
        return -1;
    if (v > UINT64_MAX / mul)
        return -1;
    *out = (uint64_t)v * mul;
    return 0;
}

int cli_parse_size(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || *s == '-')
        return -1;
    uint64_t mul = 1;
    switch (*end) {
    case 'k': case 'K': mul = 1ull << 10; end++; break;
    case 'm': case 'M': mul = 1ull << 20; end++; break;
    case 'g': case 'G': mul = 1ull << 30; end++; break;
    default: break;
    }
    if (*end || v > UINT64_MAX / mul)
        return -1;
    *out = v * mul;
    return 0;
}

int cli_read_u32_file(const char *path, const char *what, uint32_t **out, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return cli_error("%s: cannot open %s: %s", path, what, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode)) {
        fclose(f);
        return cli_error("%s: %s is not a regular file", path, what);
    }
    if (st.st_size % 4) {
        fclose(f);
        return cli_error("%s: %lld bytes is not a whole number of uint32 values (%s)", path,
                         (long long)st.st_size, what);
    }
    size_t count = (size_t)st.st_size / 4;
    uint32_t *buf = malloc(count ? count * 4 : 4);
    if (!buf) {
        fclose(f);
        return cli_error("%s: out of memory for %zu values", path, count);
    }
    size_t got = fread(buf, 4, count, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || got != count) {
        free(buf);
        return cli_error("%s: read error or file changed while reading", path);
    }
    *out = buf;
    *n = count;
    return 0;
}

int cli_out_open(cli_out *o, const char *path)
{
    memset(o, 0, sizeof *o);
    if (!strcmp(path, "-")) {
        if (isatty(STDOUT_FILENO))
            return cli_error("refusing to write binary output to a terminal; use -o FILE");
        o->f = stdout;
        o->is_stdout = 1;
        return 0;
    }
    size_t len = strlen(path);
    o->final_path = strdup(path);
    o->tmp_path = malloc(len + 32);
    if (!o->final_path || !o->tmp_path) {
        cli_out_abort(o);
        return cli_error("out of memory");
    }
    snprintf(o->tmp_path, len + 32, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(o->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || !(o->f = fdopen(fd, "wb"))) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        cli_error("%s: cannot create: %s", o->tmp_path, strerror(e));
        free(o->tmp_path);
        o->tmp_path = NULL; /* nothing to remove */
        cli_out_abort(o);
        return 1;
    }
    return 0;
}

int cli_out_write(cli_out *o, const void *buf, size_t n)
{
    if (n && fwrite(buf, 1, n, o->f) != n)
        return cli_error("%s: write failed: %s", o->is_stdout ? "stdout" : o->tmp_path,
                         strerror(errno));
    return 0;
}

int cli_out_commit(cli_out *o)
{
    if (o->is_stdout) {
        if (fflush(stdout))
            return cli_error("stdout: write failed: %s", strerror(errno));
        return 0;
    }
    int rc = 0;
    if (fflush(o->f) || fsync(fileno(o->f)))
        rc = cli_error("%s: write failed: %s", o->tmp_path, strerror(errno));
    if (fclose(o->f) && !rc)
        rc = cli_error("%s: close failed: %s", o->tmp_path, strerror(errno));
    o->f = NULL;
    if (!rc && rename(o->tmp_path, o->final_path))
        rc = cli_error("%s: cannot rename into place: %s", o->final_path, strerror(errno));
    if (rc)
        unlink(o->tmp_path);
    free(o->tmp_path);
    free(o->final_path);
    o->tmp_path = o->final_path = NULL;
    return rc;
}

void cli_out_abort(cli_out *o)
{
    if (o->f && !o->is_stdout)
        fclose(o->f);
    if (o->tmp_path)
        unlink(o->tmp_path);
    free(o->tmp_path);
    free(o->final_path);
    memset(o, 0, sizeof *o);
}

int cli_model_load_tok(cli_model *m, const char *config, const char *tokenizer,
                       const char *projection, uint64_t vprime)
{
    eg_err err;
    memset(m, 0, sizeof *m);
    m->config_path = config;
    if (!config)
        return cli_error("--config CFG is required (e.g. configs/demo.json)");
    if (eg_config_load(config, &m->cfg, &err))
        return cli_fail(&err);
    if (!!projection + !!vprime + !!tokenizer > 1)
        return cli_error("give one of --tokenizer, --projection and --compressed-vocab");
    m->pad_compressed = m->cfg.pad_id;
    if (tokenizer) {
        if (eg_tokenizer_open(tokenizer, &m->tok, &err) || eg_projection_build(m->tok, &m->vp, &err))
            return cli_fail(&err);
        size_t n;
        const uint32_t *map = eg_projection_map(m->vp, &n);
        if (!(m->proj = malloc(n * sizeof *m->proj + 1)))
            return cli_error("out of memory");
        memcpy(m->proj, map, n * sizeof *m->proj);
        m->n_proj = n;
        m->vprime = eg_projection_compressed_size(m->vp);
        uint8_t d[32];
        eg_tokenizer_sha256(m->tok, d);
        eg_sha256_hex(d, m->tok_sha);
        eg_projection_sha256(m->vp, d);
        eg_sha256_hex(d, m->proj_sha);
        if ((uint64_t)m->cfg.pad_id >= m->n_proj)
            return cli_error("%s: pad_id %lld is outside the tokenizer's %zu ids", config,
                             (long long)m->cfg.pad_id, m->n_proj);
        m->pad_compressed = m->proj[m->cfg.pad_id];
    } else if (projection) {
        if (cli_read_u32_file(projection, "projection", &m->proj, &m->n_proj))
            return 1;
        if (eg_projection_vprime(m->proj, m->n_proj, projection, &m->vprime, &err))
            return cli_fail(&err);
        if ((uint64_t)m->cfg.pad_id >= m->n_proj)
            return cli_error("%s: pad_id %lld is outside the projection's %zu raw ids", config,
                             (long long)m->cfg.pad_id, m->n_proj);
        m->pad_compressed = m->proj[m->cfg.pad_id];
    } else if (vprime) {
        m->vprime = vprime;
    } else if (m->cfg.compressed_vocab_size) {
        m->vprime = m->cfg.compressed_vocab_size;
    } else {
        return cli_error("%s declares no compressed vocabulary: give --projection P.u32 or "
                         "--compressed-vocab V'",
                         config);
    }
    if (eg_spec_create(&m->cfg, m->vprime, m->pad_compressed, &m->spec, &err))
        return cli_error("%s: %s", config, err.msg);
    return 0;
}

int cli_model_load(cli_model *m, const char *config, const char *projection, uint64_t vprime)
{
    return cli_model_load_tok(m, config, NULL, projection, vprime);
}

void cli_model_free(cli_model *m)
{
    free(m->proj);
    eg_projection_free(m->vp);
    eg_tokenizer_free(m->tok);
    eg_spec_free(m->spec);
    memset(m, 0, sizeof *m);
}
