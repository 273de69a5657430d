/* read.c - rows out of an open store through its map: a block's crc on first
 * touch, generated rows of absent blocks, the batch gather, training state. */
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

/* Block index of (li, row), after range checks. */
eg_status eg_store_block_of(eg_store *s, uint32_t li, uint64_t row, uint64_t *idx, eg_err *err)
{
    if (li >= s->n_layers)
        return eg_fail(err, EG_ERANGE, "%s: layer index %u >= %u", s->path, li, s->n_layers);
    if (row >= eg_spec_layer_rows(s->spec, li))
        return eg_fail(err, EG_ERANGE, "%s: row %llu >= layer %u's %llu rows", s->path,
                       (unsigned long long)row, li, (unsigned long long)eg_spec_layer_rows(s->spec, li));
    *idx = s->base[li] + row / s->info.rows_per_block;
    return EG_OK;
}

eg_status eg_store_check_crc(eg_store *s, uint32_t li, uint64_t idx, eg_err *err)
{
    uint8_t state = __atomic_load_n(&s->crc_state[idx], __ATOMIC_ACQUIRE);
    if (state == 0) {
        const uint64_t b = idx - s->base[li], R = s->info.rows_per_block;
        const uint64_t rws = eg_spec_layer_rows(s->spec, li);
        const size_t len = (size_t)((b * R + R <= rws ? R : rws - b * R) * s->info.row_bytes);
        const uint32_t want = eg_get_le32(s->blk[idx] + len);
        const uint32_t got = (uint32_t)crc32(0L, s->blk[idx], (uInt)len);
        state = want == got ? 1 : 2;
        __atomic_store_n(&s->crc_state[idx], state, __ATOMIC_RELEASE);
    }
    if (state == 2)
        return eg_fail(err, EG_EFORMAT, "%s: layer %u block %llu (rows %llu..%llu) is corrupt: crc32 mismatch",
                       s->path, li, (unsigned long long)(idx - s->base[li]),
                       (unsigned long long)((idx - s->base[li]) * s->info.rows_per_block),
                       (unsigned long long)((idx - s->base[li] + 1) * s->info.rows_per_block - 1));
    return EG_OK;
}

eg_status eg_store_row_ptr(eg_store *s, uint32_t li, uint64_t row, const void **p, eg_err *err)
{
    if (!s || !p)
        return eg_fail(err, EG_EINVAL, "eg_store_row_ptr: NULL argument");
    *p = NULL;
    uint64_t idx = 0;
    eg_status st = eg_store_block_of(s, li, row, &idx, err);
    if (st)
        return st;
    if (!s->blk[idx])
        return EG_OK;
    if (!(s->flags & EG_STORE_NO_CRC) && (st = eg_store_check_crc(s, li, idx, err)))
        return st;
    *p = s->blk[idx] + (row % s->info.rows_per_block) * s->info.row_bytes;
    return EG_OK;
}

eg_status eg_store_read_rows(eg_store *s, uint32_t li, uint64_t row0, uint64_t n, float *out,
                             size_t cap, eg_err *err)
{
    if (!s || (!out && n))
        return eg_fail(err, EG_EINVAL, "eg_store_read_rows: NULL argument");
    const uint32_t dim = s->info.dim;
    if (n > cap / dim)
        return eg_fail(err, EG_ECAPACITY, "eg_store_read_rows: %llu rows need %llu values, the "
                                          "buffer holds %zu",
                       (unsigned long long)n, (unsigned long long)(n * dim), cap);
    /* one row at a time through the stored encoding: absent blocks give the
     * initializer's values exactly as a dense store holds them */
    unsigned char *enc = malloc(s->info.row_bytes);
    if (!enc)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    for (uint64_t i = 0; i < n; i++) {
        eg_status st = eg_store_read_encoded(s, li, row0 + i, 1, enc, s->info.row_bytes, err);
        if (st) {
            free(enc);
            return st;
        }
        eg_row_decode(s->info.dtype, dim, enc, out + i * dim);
    }
    free(enc);
    return EG_OK;
}

eg_status eg_store_read_encoded(eg_store *s, uint32_t li, uint64_t row0, uint64_t n, void *dst,
                                size_t cap, eg_err *err)
{
    if (!s || (!dst && n))
        return eg_fail(err, EG_EINVAL, "eg_store_read_encoded: NULL argument");
    const size_t rb = s->info.row_bytes;
    if (n > cap / rb)
        return eg_fail(err, EG_ECAPACITY, "eg_store_read_encoded: %llu rows need %llu bytes, the "
                                          "buffer holds %zu",
                       (unsigned long long)n, (unsigned long long)(n * rb), cap);
    float *tmp = NULL;
    unsigned char *d = dst;
    for (uint64_t i = 0; i < n; i++) {
        const void *p;
        eg_status st = eg_store_row_ptr(s, li, row0 + i, &p, err);
        if (st) {
            free(tmp);
            return st;
        }
        if (p) {
            memcpy(d + i * rb, p, rb);
            continue;
        }
        if (!tmp && !(tmp = malloc((size_t)s->info.dim * sizeof *tmp)))
            return eg_fail(err, EG_ENOMEM, "out of memory");
        eg_init_row(s->info.seed, eg_spec_config(s->spec)->layer_ids[li], row0 + i, s->info.dim,
                    s->info.init_std, tmp);
        eg_row_encode(s->info.dtype, s->info.dim, tmp, d + i * rb);
    }
    free(tmp);
    return EG_OK;
}

eg_status eg_store_opt_foreach(eg_store *s,
                               eg_status (*fn)(void *ctx, uint32_t li, uint64_t row,
                                               uint32_t step, const float *vals),
                               void *ctx, eg_err *err)
{
    if (!s || !fn)
        return eg_fail(err, EG_EINVAL, "eg_store_opt_foreach: NULL argument");
    MDB_dbi opt;
    if (mdb_dbi_open(s->txn, "opt", MDB_INTEGERKEY, &opt))
        return EG_OK; /* no training state */
    MDB_cursor *cur;
    int rc = mdb_cursor_open(s->txn, opt, &cur);
    if (rc)
        return eg_store_lmdb_fail(err, rc, s->path, "reading the training state");
    const size_t vb = (size_t)3 * s->info.dim * sizeof(float);
    float *vals = malloc(vb);
    eg_status st = vals ? EG_OK : eg_fail(err, EG_ENOMEM, "out of memory");
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); !rc && !st;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        size_t key = 0;
        if (k.mv_size == sizeof key)
            memcpy(&key, k.mv_data, sizeof key);
        const uint32_t li = (uint32_t)((uint64_t)key >> BLOCK_SHIFT);
        const uint64_t row = (uint64_t)key & ((1ull << BLOCK_SHIFT) - 1);
        if (k.mv_size != sizeof key || v.mv_size != 4 + vb || li >= s->n_layers ||
            row >= eg_spec_layer_rows(s->spec, li)) {
            st = eg_fail(err, EG_EFORMAT, "%s: training state entry %#llx is malformed", s->path,
                         (unsigned long long)key);
            break;
        }
        memcpy(vals, (const unsigned char *)v.mv_data + 4, vb);
        st = fn(ctx, li, row, eg_get_le32(v.mv_data), vals);
    }
    mdb_cursor_close(cur);
    free(vals);
    if (!st && rc && rc != MDB_NOTFOUND)
        st = eg_store_lmdb_fail(err, rc, s->path, "reading the training state");
    return st;
}

void eg_store_map(const eg_store *s, const void **base, size_t *len)
{
    MDB_envinfo ei;
    *base = NULL;
    *len = 0;
    if (!s || mdb_env_info(s->env, &ei))
        return;
    /* the mapping that holds a stored block (mdb_env_info's me_mapaddr is
     * set only with MDB_FIXEDMAP) */
    int any;
    *base = eg_store_rows_map(s, &any);
    if (*base)
        *len = s->info.file_bytes < ei.me_mapsize ? (size_t)s->info.file_bytes : ei.me_mapsize;
}

eg_status eg_store_gather_encoded(eg_store *s, uint32_t li, const uint64_t *rows, size_t n,
                                  void *dst, size_t cap, int n_threads, eg_err *err)
{
    if (!s || (n && (!rows || !dst)))
        return eg_fail(err, EG_EINVAL, "eg_store_gather_encoded: NULL argument");
    if (li >= s->n_layers)
        return eg_fail(err, EG_ERANGE, "%s: layer index %u >= %u", s->path, li, s->n_layers);
    const size_t rb = s->info.row_bytes;
    if (n > cap / rb)
        return eg_fail(err, EG_ECAPACITY, "eg_store_gather_encoded: %zu rows need %zu bytes, the "
                                          "buffer holds %zu",
                       n, n * rb, cap);
    const uint64_t lr = eg_spec_layer_rows(s->spec, li), R = s->info.rows_per_block;
    const unsigned char *const *blk = s->blk + s->base[li];
    const int check = !(s->flags & EG_STORE_NO_CRC);
    int bad = 0;
    const long long NN = (long long)n;
    enum { AHEAD = 8 };
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(n_threads > 0 ? n_threads : omp_get_max_threads()) if (n > 4096) reduction(| : bad)
#endif
    for (long long i = 0; i < NN; i++) {
        if (i + AHEAD < NN && rows[i + AHEAD] < lr) {
            const uint64_t ra = rows[i + AHEAD];
            const unsigned char *pb = blk[ra / R];
            if (pb) {
                __builtin_prefetch(pb + (ra % R) * rb);
                __builtin_prefetch(pb + (ra % R) * rb + rb - 1);
            }
        }
        const uint64_t r = rows[i];
        unsigned char *o = (unsigned char *)dst + (size_t)i * rb;
        if (r >= lr) {
            bad = 1;
            continue;
        }
        const uint64_t b = r / R;
        if (blk[b] && (!check || s->crc_state[s->base[li] + b] == 1)) {
            memcpy(o, blk[b] + (r % R) * rb, rb);
            continue;
        }
        if (eg_store_read_encoded(s, li, r, 1, o, rb, NULL))
            bad = 1;
    }
    if (bad) /* find the first problem again, serially, for its message */
        for (size_t i = 0; i < n; i++) {
            if (rows[i] >= lr)
                return eg_fail(err, EG_ERANGE, "%s: row %llu at %zu >= layer %u's %llu rows",
                               s->path, (unsigned long long)rows[i], i, li, (unsigned long long)lr);
            eg_status st = eg_store_read_encoded(s, li, rows[i], 1, (unsigned char *)dst + i * rb,
                                                 rb, err);
            if (st)
                return st;
        }
    return EG_OK;
}
