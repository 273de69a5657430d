/* open.c - opening a table store read-only: metadata, projection, keys, the
 * block index over LMDB's map; the accessors and the spec check. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "store_impl.h"
#include "engram/eg_config.h"

eg_status eg_store_lmdb_fail(eg_err *err, int rc, const char *path, const char *what)
{
    if (rc == MDB_MAP_FULL)
        return eg_fail(err, EG_ECAPACITY,
                       "%s: the LMDB map is too small for this store while %s (raise --map-size)",
                       path, what);
    if (rc == ENOSPC)
        return eg_fail(err, EG_EIO, "%s: no space left on the device while %s", path, what);
    return eg_fail(err, rc == MDB_INVALID || rc == MDB_CORRUPTED ? EG_EFORMAT : EG_EIO,
                   "%s: %s: %s", path, what, mdb_strerror(rc));
}

/* The start of the file mapping (offset 0) that holds p, from
 * /proc/self/maps; NULL where it cannot be told. LMDB does not give its map's
 * address (mdb_env_info's me_mapaddr is set only with MDB_FIXEDMAP). */
const unsigned char *eg_store_map_start_of(const void *p)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        return NULL;
    char line[512];
    const unsigned char *found = NULL;
    const unsigned long long a = (unsigned long long)(uintptr_t)p;
    while (!found && fgets(line, sizeof line, f)) {
        unsigned long long lo, hi, off;
        char perms[8];
        if (sscanf(line, "%llx-%llx %7s %llx", &lo, &hi, perms, &off) == 4 && lo <= a &&
            a < hi && off == 0 && perms[3] == 's')
            found = (const unsigned char *)(uintptr_t)lo;
    }
    fclose(f);
    return found;
}

const unsigned char *eg_store_rows_map(const eg_store *s, int *any)
{
    const uint64_t total = s->base[s->n_layers];
    for (uint64_t i = 0; i < total; i++)
        if (s->blk[i]) {
            *any = 1;
            return eg_store_map_start_of(s->blk[i]);
        }
    *any = 0;
    return NULL;
}

int eg_store_reopen(const eg_store *s, int flags)
{
    int lfd = -1;
    if (mdb_env_get_fd(s->env, &lfd) || lfd < 0) {
        errno = EBADF;
        return -1;
    }
    char fdpath[64];
    snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", lfd);
    const int fd = open(fdpath, O_RDONLY | O_CLOEXEC | flags);
    return fd >= 0 || flags ? fd : fcntl(lfd, F_DUPFD_CLOEXEC, 0); /* no /proc: a duplicate */
}

static int get(MDB_txn *t, MDB_dbi d, const char *key, MDB_val *v)
{
    MDB_val k = {strlen(key), (void *)(uintptr_t)key};
    return mdb_get(t, d, &k, v);
}

static eg_status get_u64(eg_store *s, MDB_dbi d, const char *key, uint64_t *out, eg_err *err)
{
    MDB_val v;
    int rc = get(s->txn, d, key, &v);
    if (rc || v.mv_size != 8)
        return eg_fail(err, EG_EFORMAT, "%s: metadata '%s' is missing or malformed", s->path, key);
    *out = eg_get_le64(v.mv_data);
    return EG_OK;
}

static char *get_str(eg_store *s, MDB_dbi d, const char *key)
{
    MDB_val v;
    if (get(s->txn, d, key, &v))
        return NULL;
    char *r = malloc(v.mv_size + 1);
    if (r) {
        memcpy(r, v.mv_data, v.mv_size);
        r[v.mv_size] = 0;
    }
    return r;
}

/* An array of `n` little-endian 64-bit values under `key`. */
static eg_status get_arr(eg_store *s, MDB_dbi d, const char *key, size_t n, uint64_t *out,
                         eg_err *err)
{
    MDB_val v;
    if (get(s->txn, d, key, &v) || v.mv_size != n * 8)
        return eg_fail(err, EG_EFORMAT, "%s: metadata '%s' is missing or has the wrong length",
                       s->path, key);
    for (size_t i = 0; i < n; i++)
        out[i] = eg_get_le64((const unsigned char *)v.mv_data + 8 * i);
    return EG_OK;
}

void eg_store_problem(eg_store *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void eg_store_problem(eg_store *s, const char *fmt, ...)
{
    if (!s->report || s->report->first_problem[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->report->first_problem, sizeof s->report->first_problem, fmt, ap);
    va_end(ap);
}

static eg_status open_meta(eg_store *s, MDB_dbi meta, eg_err *err)
{
    char *magic = get_str(s, meta, "magic");
    int ok = magic && !strcmp(magic, STORE_MAGIC);
    free(magic);
    if (!ok)
        return eg_fail(err, EG_EFORMAT, "%s: not an engram store (no '%s' magic)", s->path,
                       STORE_MAGIC);
    MDB_val v;
    if (get(s->txn, meta, "format_version", &v) || v.mv_size != 4)
        return eg_fail(err, EG_EFORMAT, "%s: no format version", s->path);
    s->info.format_version = eg_get_le32(v.mv_data);
    if (s->info.format_version < 1 || s->info.format_version > EG_STORE_FORMAT_VERSION)
        return eg_fail(err, EG_EUNSUPPORTED,
                       "%s: store format version %u; this build of engram reads versions 1..%d "
                       "(upgrade engram to open it)",
                       s->path, s->info.format_version, EG_STORE_FORMAT_VERSION);
    uint64_t complete = 0;
    if (get_u64(s, meta, "complete", &complete, NULL) || complete != 1)
        return eg_fail(err, EG_EFORMAT,
                       "%s: incomplete store (no build-complete marker): its build did not finish",
                       s->path);
    s->config_json = get_str(s, meta, "config");
    s->build_json = get_str(s, meta, "build");
    if (!s->config_json || !s->build_json)
        return eg_fail(err, EG_EFORMAT, "%s: metadata 'config' or 'build' is missing", s->path);
    eg_config cfg;
    eg_status st = eg_config_parse(s->config_json, strlen(s->config_json), s->path, &cfg, err);
    if (st)
        return st;
    uint64_t vprime, pad, dim, row_bytes, rpb, seed, stdbits, sparse, blocks;
    if ((st = get_u64(s, meta, "vprime", &vprime, err)) || (st = get_u64(s, meta, "pad", &pad, err)) ||
        (st = get_u64(s, meta, "dim", &dim, err)) ||
        (st = get_u64(s, meta, "row_bytes", &row_bytes, err)) ||
        (st = get_u64(s, meta, "rows_per_block", &rpb, err)) ||
        (st = get_u64(s, meta, "init_seed", &seed, err)) ||
        (st = get_u64(s, meta, "init_std", &stdbits, err)) ||
        (st = get_u64(s, meta, "sparse", &sparse, err)) ||
        (st = get_u64(s, meta, "blocks", &blocks, err)))
        return st;
    if (vprime == 0 || vprime > ((uint64_t)1 << 32))
        return eg_fail(err, EG_EFORMAT, "%s: V' = %llu is outside 1..2^32", s->path,
                       (unsigned long long)vprime);
    const uint32_t L = cfg.n_layers, N = cfg.max_ngram_size, H = (N - 1) * cfg.n_head_per_ngram;
    uint64_t *a = malloc(((size_t)L * (N + 2 * H) + L) * 8);
    if (!a)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    uint64_t *mult = a, *primes = a + (size_t)L * N, *offs = primes + (size_t)L * H,
             *lrows = offs + (size_t)L * H;
    if ((st = get_arr(s, meta, "multipliers", (size_t)L * N, mult, err)) ||
        (st = get_arr(s, meta, "primes", (size_t)L * H, primes, err)) ||
        (st = get_arr(s, meta, "offsets", (size_t)L * H, offs, err)) ||
        (st = get_arr(s, meta, "layer_rows", L, lrows, err))) {
        free(a);
        return st;
    }
    st = eg_spec_create_explicit(&cfg, vprime, (int64_t)pad, (const int64_t *)mult, primes,
                                 &s->spec, err);
    for (uint32_t li = 0; !st && li < L; li++) {
        if (eg_spec_layer_rows(s->spec, li) != lrows[li] ||
            memcmp(eg_spec_offsets(s->spec, li), offs + (size_t)li * H, (size_t)H * 8))
            st = eg_fail(err, EG_EFORMAT, "%s: layer %u's offsets or rows disagree with its primes",
                         s->path, li);
    }
    free(a);
    if (st)
        return st;
    char *dt = get_str(s, meta, "dtype");
    st = eg_dtype_parse(dt, &s->info.dtype, err);
    free(dt);
    if (st)
        return st;
    s->info.dim = (uint32_t)dim;
    s->info.row_bytes = (size_t)row_bytes;
    if (dim != eg_spec_head_dim(s->spec) || row_bytes != eg_dtype_row_bytes(s->info.dtype, (uint32_t)dim) ||
        !rpb || rpb > UINT32_MAX)
        return eg_fail(err, EG_EFORMAT, "%s: dim %llu / row bytes %llu / rows per block %llu are "
                                        "inconsistent with the config and dtype",
                       s->path, (unsigned long long)dim, (unsigned long long)row_bytes,
                       (unsigned long long)rpb);
    s->info.rows_per_block = (uint32_t)rpb;
    s->info.seed = seed;
    memcpy(&s->info.init_std, &stdbits, 8);
    s->info.sparse = sparse != 0;
    s->info.blocks = blocks;
    char *ts = get_str(s, meta, "tokenizer_sha256"), *ps = get_str(s, meta, "projection_sha256");
    snprintf(s->info.tokenizer_sha256, 65, "%s", ts ? ts : "");
    snprintf(s->info.projection_sha256, 65, "%s", ps ? ps : "");
    free(ts);
    free(ps);
    return EG_OK;
}

static eg_status open_vocab(eg_store *s, MDB_dbi vocab, eg_err *err)
{
    MDB_val v;
    if (!get(s->txn, vocab, "projection", &v)) {
        if (v.mv_size % 4)
            return eg_fail(err, EG_EFORMAT, "%s: the projection's length is not a multiple of 4",
                           s->path);
        s->n_proj = v.mv_size / 4;
        if ((uintptr_t)v.mv_data % 4) { /* small values sit unaligned in a leaf page */
            uint32_t *own = malloc(v.mv_size ? v.mv_size : 1);
            if (!own)
                return eg_fail(err, EG_ENOMEM, "out of memory");
            memcpy(own, v.mv_data, v.mv_size);
            s->proj_own = own;
            s->proj = own;
        } else {
            s->proj = v.mv_data; /* overflow pages: page-aligned + 16 */
        }
        const uint64_t V = eg_spec_compressed_vocab(s->spec);
        for (size_t i = 0; i < s->n_proj; i++)
            if (s->proj[i] >= V)
                return eg_fail(err, EG_EFORMAT, "%s: projection entry %zu is %u, outside V' = %llu",
                               s->path, i, s->proj[i], (unsigned long long)V);
    }
    if (!get(s->txn, vocab, "keys", &v)) {
        const uint64_t V = eg_spec_compressed_vocab(s->spec);
        const char *p = v.mv_data, *end = p + v.mv_size;
        if (V > v.mv_size) /* every key ends with a NUL byte */
            return eg_fail(err, EG_EFORMAT, "%s: %zu bytes of keys cannot hold V' = %llu keys",
                           s->path, v.mv_size, (unsigned long long)V);
        s->keys = malloc((size_t)V * sizeof *s->keys);
        if (!s->keys)
            return eg_fail(err, EG_ENOMEM, "out of memory");
        for (uint64_t i = 0; i < V; i++) {
            const char *z = p < end ? memchr(p, 0, (size_t)(end - p)) : NULL;
            if (!z)
                return eg_fail(err, EG_EFORMAT, "%s: the keys end after %llu of %llu", s->path,
                               (unsigned long long)i, (unsigned long long)V);
            s->keys[i] = p;
            p = z + 1;
        }
    }
    return EG_OK;
}

static eg_status open_blocks(eg_store *s, MDB_dbi rows, eg_err *err)
{
    const uint32_t L = s->n_layers, R = s->info.rows_per_block;
    s->base = calloc(L + 1, sizeof *s->base);
    if (!s->base)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    for (uint32_t li = 0; li < L; li++) {
        const uint64_t rws = eg_spec_layer_rows(s->spec, li);
        s->info.rows_total += rws;
        s->base[li + 1] = s->base[li] + (rws + R - 1) / R;
    }
    const uint64_t total = s->base[L];
    /* the per-block index is allocated from the metadata: bound it by what
     * the file holds (a dense store has every block) or, for a sparse one,
     * by 2^27 blocks (1 GiB of index; at least 4G rows) */
    MDB_stat rs;
    if (!s->report && !s->info.sparse && !mdb_stat(s->txn, rows, &rs) && rs.ms_entries != total)
        return eg_fail(err, EG_EFORMAT, "%s: %llu blocks stored, the tables need %llu (a dense "
                                        "store has every block)",
                       s->path, (unsigned long long)rs.ms_entries, (unsigned long long)total);
    if (total > ((uint64_t)1 << 27) &&
        (s->info.sparse || total > s->info.file_bytes / 4096 + 1))
        return eg_fail(err, EG_EFORMAT, "%s: %llu blocks of rows: more than this store can hold",
                       s->path, (unsigned long long)total);
    s->blk = calloc(total ? total : 1, sizeof *s->blk);
    s->crc_state = calloc(total ? total : 1, 1);
    if (!s->blk || !s->crc_state)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    MDB_cursor *cur;
    int rc = mdb_cursor_open(s->txn, rows, &cur);
    if (rc)
        return eg_store_lmdb_fail(err, rc, s->path, "reading the rows");
    MDB_val k, v;
    uint64_t n = 0;
    eg_status st = EG_OK;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); !rc; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        size_t key = 0;
        if (k.mv_size == sizeof key)
            memcpy(&key, k.mv_data, sizeof key);
        const uint32_t li = (uint32_t)((uint64_t)key >> BLOCK_SHIFT);
        const uint64_t b = (uint64_t)key & ((1ull << BLOCK_SHIFT) - 1);
        if (k.mv_size != sizeof key || li >= L || b >= s->base[li + 1] - s->base[li]) {
            if (s->report) {
                s->report->blocks_unexpected++;
                eg_store_problem(s, "rows: unexpected key %#llx", (unsigned long long)key);
                continue;
            }
            st = eg_fail(err, EG_EFORMAT, "%s: rows: unexpected key %#llx", s->path,
                         (unsigned long long)key);
            break;
        }
        const uint64_t rws = eg_spec_layer_rows(s->spec, li);
        const uint64_t nr = b * R + R <= rws ? R : rws - b * R;
        if (v.mv_size != nr * s->info.row_bytes + 4) {
            if (s->report) {
                s->report->blocks_bad++;
                eg_store_problem(s, "layer %u block %llu: %zu bytes, expected %llu", li,
                        (unsigned long long)b, v.mv_size,
                        (unsigned long long)(nr * s->info.row_bytes + 4));
                continue;
            }
            st = eg_fail(err, EG_EFORMAT, "%s: layer %u block %llu: %zu bytes, expected %llu",
                         s->path, li, (unsigned long long)b, v.mv_size,
                         (unsigned long long)(nr * s->info.row_bytes + 4));
            break;
        }
        s->blk[s->base[li] + b] = v.mv_data;
        n++;
    }
    mdb_cursor_close(cur);
    if (st)
        return st;
    if (rc != MDB_NOTFOUND)
        return eg_store_lmdb_fail(err, rc, s->path, "reading the rows");
    if (n != s->info.blocks || (!s->info.sparse && n != total)) {
        if (s->report) {
            s->report->blocks_missing = (s->info.sparse ? s->info.blocks : total) > n
                                            ? (s->info.sparse ? s->info.blocks : total) - n
                                            : 0;
            eg_store_problem(s, "%llu blocks stored, %llu recorded, %llu in the tables",
                    (unsigned long long)n, (unsigned long long)s->info.blocks,
                    (unsigned long long)total);
            return EG_OK;
        }
        return eg_fail(err, EG_EFORMAT, "%s: %llu blocks stored, the metadata records %llu%s",
                       s->path, (unsigned long long)n, (unsigned long long)s->info.blocks,
                       s->info.sparse ? "" : " (a dense store has every block)");
    }
    return EG_OK;
}

eg_status eg_store_open_report(const char *path, unsigned flags, eg_store_verify_report *report,
                            eg_store **out, eg_err *err)
{
    if (!path || !out)
        return eg_fail(err, EG_EINVAL, "eg_store_open: NULL argument");
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb))
        return eg_fail(err, EG_EIO, "%s: cannot open: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode))
        return eg_fail(err, EG_EFORMAT, "%s: not a store file (a store is one LMDB file)", path);
    eg_store *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    s->flags = flags;
    s->report = report;
    s->info.file_bytes = (uint64_t)sb.st_size;
    MDB_dbi meta, vocab, rows;
    eg_status st = EG_OK;
    int rc = mdb_env_create(&s->env);
    if (!rc)
        rc = mdb_env_set_maxdbs(s->env, 4);
    if (!rc)
        rc = mdb_env_open(s->env, path, MDB_RDONLY | MDB_NOSUBDIR | MDB_NOLOCK | MDB_NORDAHEAD, 0);
    if (rc) {
        st = rc == MDB_INVALID ? eg_fail(err, EG_EFORMAT, "%s: not an engram store (not an LMDB file)", path)
                               : eg_store_lmdb_fail(err, rc, path, "opening the store");
        goto fail;
    }
    {   /* pages past the end of a truncated file would be SIGBUS in the map;
         * the size of the file LMDB opened (the path may have been renamed
         * over since the stat above: a new generation) */
        MDB_envinfo ei;
        MDB_stat es;
        int fd = -1;
        if (!mdb_env_get_fd(s->env, &fd) && fd >= 0 && !fstat(fd, &sb))
            s->info.file_bytes = (uint64_t)sb.st_size;
        if (!mdb_env_info(s->env, &ei) && !mdb_env_stat(s->env, &es) &&
            ((uint64_t)ei.me_last_pgno + 1) * es.ms_psize > (uint64_t)sb.st_size) {
            st = eg_fail(err, EG_EFORMAT,
                         "%s: truncated store: the file has %llu bytes, its pages reach to %llu",
                         path, (unsigned long long)sb.st_size,
                         ((unsigned long long)ei.me_last_pgno + 1) * es.ms_psize);
            goto fail;
        }
    }
    if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &s->txn))) {
        st = eg_store_lmdb_fail(err, rc, path, "opening the store");
        goto fail;
    }
    if (mdb_dbi_open(s->txn, "meta", 0, &meta)) {
        st = eg_fail(err, EG_EFORMAT, "%s: not an engram store (no 'meta' database)", path);
        goto fail;
    }
    if ((st = open_meta(s, meta, err)))
        goto fail;
    s->n_layers = eg_spec_n_layers(s->spec);
    if (mdb_dbi_open(s->txn, "vocab", 0, &vocab) || mdb_dbi_open(s->txn, "rows", MDB_INTEGERKEY, &rows)) {
        st = eg_fail(err, EG_EFORMAT, "%s: the 'vocab' or 'rows' database is missing", path);
        goto fail;
    }
    if ((st = open_vocab(s, vocab, err)) || (st = open_blocks(s, rows, err)))
        goto fail;
    *out = s;
    return EG_OK;
fail:
    eg_store_close(s);
    return st;
}

eg_status eg_store_open(const char *path, unsigned flags, eg_store **out, eg_err *err)
{
    return eg_store_open_report(path, flags & ~STORE_LENIENT, NULL, out, err);
}

void eg_store_close(eg_store *s)
{
    if (!s)
        return;
    if (s->txn)
        mdb_txn_abort(s->txn);
    if (s->env)
        mdb_env_close(s->env);
    eg_spec_free(s->spec);
    free(s->config_json);
    free(s->build_json);
    free(s->keys);
    free(s->proj_own);
    free(s->base);
    free(s->blk);
    free(s->crc_state);
    free(s->path);
    free(s);
}

const eg_spec *eg_store_spec(const eg_store *s) { return s ? s->spec : NULL; }
const eg_store_info *eg_store_get_info(const eg_store *s) { return s ? &s->info : NULL; }
const char *eg_store_config_json(const eg_store *s) { return s ? s->config_json : NULL; }
const char *eg_store_build_json(const eg_store *s) { return s ? s->build_json : NULL; }

const uint32_t *eg_store_projection(const eg_store *s, size_t *n)
{
    if (n)
        *n = s ? s->n_proj : 0;
    return s ? s->proj : NULL;
}

const char *eg_store_key(const eg_store *s, uint32_t cid)
{
    if (!s || !s->keys || cid >= eg_spec_compressed_vocab(s->spec))
        return NULL;
    return s->keys[cid];
}

eg_status eg_store_expect(const eg_store *s, const char *tokenizer_sha256, const eg_spec *spec,
                          eg_err *err)
{
    if (!s)
        return eg_fail(err, EG_EINVAL, "eg_store_expect: NULL store");
    if (tokenizer_sha256 && strcmp(tokenizer_sha256, s->info.tokenizer_sha256))
        return eg_fail(err, EG_EMISMATCH,
                       "%s: the store was built for tokenizer sha256 %s, not %s", s->path,
                       s->info.tokenizer_sha256[0] ? s->info.tokenizer_sha256 : "(none recorded)",
                       tokenizer_sha256);
    if (!spec)
        return EG_OK;
    const eg_spec *a = s->spec;
    if (eg_spec_compressed_vocab(a) != eg_spec_compressed_vocab(spec) || eg_spec_pad(a) != eg_spec_pad(spec))
        return eg_fail(err, EG_EMISMATCH, "%s: the store has V' = %llu and pad %lld, expected %llu and %lld",
                       s->path, (unsigned long long)eg_spec_compressed_vocab(a), (long long)eg_spec_pad(a),
                       (unsigned long long)eg_spec_compressed_vocab(spec), (long long)eg_spec_pad(spec));
    if (eg_spec_n_layers(a) != eg_spec_n_layers(spec) || eg_spec_max_ngram(a) != eg_spec_max_ngram(spec) ||
        eg_spec_heads_per_ngram(a) != eg_spec_heads_per_ngram(spec) || eg_spec_head_dim(a) != eg_spec_head_dim(spec))
        return eg_fail(err, EG_EMISMATCH, "%s: the store's shape (layers, N, K, dim) differs from the expected config",
                       s->path);
    for (uint32_t li = 0; li < eg_spec_n_layers(a); li++) {
        if (eg_spec_config(a)->layer_ids[li] != eg_spec_config(spec)->layer_ids[li] ||
            memcmp(eg_spec_multipliers(a, li), eg_spec_multipliers(spec, li), eg_spec_max_ngram(a) * 8) ||
            memcmp(eg_spec_primes(a, li), eg_spec_primes(spec, li), eg_spec_n_heads(a) * 8))
            return eg_fail(err, EG_EMISMATCH, "%s: layer %u's id, multipliers or primes differ from the expected config",
                           s->path, li);
    }
    return EG_OK;
}

