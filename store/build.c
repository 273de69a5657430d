/* build.c - writing a table store: blocks generated ahead of LMDB, a temporary
 * file synced and renamed into place. Layout: docs/FORMAT.md. */
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

/* Rows per block so that a block (rows, crc32, LMDB's page header) fills
 * whole overflow pages with the least waste: 16..64 pages of psize, or 1..4
 * for a sparse store (small blocks keep it sparse). */
static uint32_t rows_per_block(size_t row_bytes, size_t psize, int sparse)
{
    uint32_t best = 1;
    double best_waste = 2;
    for (size_t pages = sparse ? 1 : 16; pages <= (sparse ? 4u : 64u); pages++) {
        size_t avail = pages * psize - PAGE_HDR - 4;
        size_t r = avail / row_bytes;
        if (!r)
            continue;
        double waste = (double)(avail - r * row_bytes) / (double)(pages * psize);
        if (waste < best_waste - 1e-12) {
            best_waste = waste;
            best = r > UINT32_MAX ? UINT32_MAX : (uint32_t)r;
        }
    }
    return best;
}

static size_t block_pages(size_t bytes, size_t psize) { return (bytes + 4 + PAGE_HDR + psize - 1) / psize; }

static int put(MDB_txn *t, MDB_dbi d, const char *key, const void *v, size_t n)
{
    MDB_val k = {strlen(key), (void *)(uintptr_t)key}, val = {n, (void *)(uintptr_t)v};
    return mdb_put(t, d, &k, &val, 0);
}

static int put_u64(MDB_txn *t, MDB_dbi d, const char *key, uint64_t v)
{
    unsigned char b[8];
    eg_put_le64(b, v);
    return put(t, d, key, b, 8);
}

static int put_str(MDB_txn *t, MDB_dbi d, const char *key, const char *s)
{
    return put(t, d, key, s, strlen(s));
}

typedef struct {
    const eg_store_params *p;
    uint32_t n_layers, dim, R;
    size_t row_bytes, blk_bytes;
    uint64_t *nblocks; /* per layer */
} plan;

static int block_stored(const plan *pl, uint32_t li, uint64_t b)
{
    if (!pl->p->hit || !pl->p->hit[li])
        return 1;
    const uint64_t rows = eg_spec_layer_rows(pl->p->spec, li);
    const uint64_t r0 = b * pl->R, r1 = r0 + pl->R < rows ? r0 + pl->R : rows;
    const uint8_t *h = pl->p->hit[li];
    for (uint64_t r = r0; r < r1; r++) {
        if (!(r & 7) && r + 8 <= r1 && !h[r >> 3]) {
            r += 7;
            continue;
        }
        if (h[r >> 3] >> (r & 7) & 1)
            return 1;
    }
    return 0;
}

/* Fill one block's rows and crc at dst (tmp: FILL_ROWS * dim floats);
 * returns its byte length. */
#define FILL_ROWS 32
static size_t fill_block(const plan *pl, uint32_t li, uint64_t b, unsigned char *dst, float *tmp)
{
    const eg_store_params *p = pl->p;
    const uint64_t rows = eg_spec_layer_rows(p->spec, li);
    const uint64_t r0 = b * pl->R, n = r0 + pl->R < rows ? pl->R : rows - r0;
    const uint32_t lid = eg_spec_config(p->spec)->layer_ids[li];
    for (uint64_t i = 0; i < n && !p->rows; i += FILL_ROWS) {
        const uint64_t m = n - i < FILL_ROWS ? n - i : FILL_ROWS;
        eg_init_rows(p->seed, lid, r0 + i, m, pl->dim, p->init_std, tmp);
        for (uint64_t k = 0; k < m; k++)
            eg_row_encode(p->dtype, pl->dim, tmp + k * pl->dim, dst + (i + k) * pl->row_bytes);
    }
    const size_t len = (size_t)n * pl->row_bytes;
    eg_put_le32(dst + len, (uint32_t)crc32(0L, dst, (uInt)len));
    return len + 4;
}

static eg_status write_meta(MDB_txn *t, MDB_dbi meta, MDB_dbi vocab, const plan *pl,
                            const char *cfg_json, int *rc)
{
    const eg_store_params *p = pl->p;
    const eg_spec *sp = p->spec;
    const uint32_t L = pl->n_layers, N = eg_spec_max_ngram(sp), H = eg_spec_n_heads(sp);
    unsigned char *a = malloc((size_t)L * (N > H ? N : H) * 8 + 8 * L + 8);
    if (!a)
        return EG_ENOMEM;
    unsigned char u4[4];
    eg_put_le32(u4, EG_STORE_FORMAT_VERSION);
    int r = put_str(t, meta, "magic", STORE_MAGIC);
    if (!r)
        r = put(t, meta, "format_version", u4, 4);
    if (!r)
        r = put_str(t, meta, "config", cfg_json);
    if (!r)
        r = put_u64(t, meta, "vprime", eg_spec_compressed_vocab(sp));
    if (!r)
        r = put_u64(t, meta, "pad", (uint64_t)eg_spec_pad(sp));
    if (!r) {
        for (uint32_t li = 0; li < L; li++)
            for (uint32_t k = 0; k < N; k++)
                eg_put_le64(a + 8 * ((size_t)li * N + k), (uint64_t)eg_spec_multipliers(sp, li)[k]);
        r = put(t, meta, "multipliers", a, (size_t)L * N * 8);
    }
    if (!r) {
        for (uint32_t li = 0; li < L; li++)
            for (uint32_t k = 0; k < H; k++)
                eg_put_le64(a + 8 * ((size_t)li * H + k), eg_spec_primes(sp, li)[k]);
        r = put(t, meta, "primes", a, (size_t)L * H * 8);
    }
    if (!r) {
        for (uint32_t li = 0; li < L; li++)
            for (uint32_t k = 0; k < H; k++)
                eg_put_le64(a + 8 * ((size_t)li * H + k), eg_spec_offsets(sp, li)[k]);
        r = put(t, meta, "offsets", a, (size_t)L * H * 8);
    }
    if (!r) {
        for (uint32_t li = 0; li < L; li++)
            eg_put_le64(a + 8 * (size_t)li, eg_spec_layer_rows(sp, li));
        r = put(t, meta, "layer_rows", a, (size_t)L * 8);
    }
    free(a);
    if (!r)
        r = put_str(t, meta, "dtype", eg_dtype_name(p->dtype));
    if (!r)
        r = put_u64(t, meta, "dim", pl->dim);
    if (!r)
        r = put_u64(t, meta, "row_bytes", pl->row_bytes);
    if (!r)
        r = put_u64(t, meta, "rows_per_block", pl->R);
    if (!r)
        r = put_u64(t, meta, "init_seed", p->seed);
    if (!r) {
        uint64_t bits;
        memcpy(&bits, &p->init_std, 8);
        r = put_u64(t, meta, "init_std", bits);
    }
    if (!r)
        r = put_str(t, meta, "init", "philox4x32-10 uniform");
    if (!r)
        r = put_u64(t, meta, "sparse", p->hit ? 1 : 0);
    if (!r && p->tokenizer_sha256)
        r = put_str(t, meta, "tokenizer_sha256", p->tokenizer_sha256);
    if (!r && p->projection_sha256)
        r = put_str(t, meta, "projection_sha256", p->projection_sha256);
    if (!r)
        r = put_str(t, meta, "build", p->build_json ? p->build_json : "{}");
    if (!r && p->projection) {
        unsigned char *b = malloc(p->n_projection * 4 + 1);
        if (!b)
            return EG_ENOMEM;
        for (size_t i = 0; i < p->n_projection; i++)
            eg_put_le32(b + 4 * i, p->projection[i]);
        r = put(t, vocab, "projection", b, p->n_projection * 4);
        free(b);
    }
    if (!r && p->keys) {
        eg_buf kb = {0};
        const uint64_t V = eg_spec_compressed_vocab(sp);
        for (uint64_t i = 0; i < V; i++)
            if (eg_buf_put(&kb, p->keys[i] ? p->keys[i] : "", strlen(p->keys[i] ? p->keys[i] : "") + 1)) {
                eg_buf_free(&kb);
                return EG_ENOMEM;
            }
        r = put(t, vocab, "keys", kb.p, kb.len);
        eg_buf_free(&kb);
    }
    *rc = r;
    return r ? EG_EIO : EG_OK;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The folder of `path` into dir ("." when it names none, "/" for the root);
 * returns its last component, inside path. */
static const char *split_dir(const char *path, char *dir, size_t cap)
{
    const char *sl = strrchr(path, '/');
    if (!sl)
        snprintf(dir, cap, ".");
    else
        snprintf(dir, cap, "%.*s", sl == path ? 1 : (int)(sl - path), path);
    return sl ? sl + 1 : path;
}

/* Remove what killed builds of `path` left: `path.tmp.PID` files that no live
 * build holds (each build keeps an flock on its temporary file until it is
 * renamed) and that were not written in the last minute. Best effort. */
static void sweep_stale_tmp(const char *path)
{
    char dir[4200];
    const char *base = split_dir(path, dir, sizeof dir);
    DIR *d = opendir(dir);
    if (!d)
        return;
    const size_t bl = strlen(base);
    const time_t now = time(NULL);
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *n = de->d_name;
        if (strncmp(n, base, bl) || strncmp(n + bl, ".tmp.", 5) || !n[bl + 5] ||
            strspn(n + bl + 5, "0123456789") != strlen(n + bl + 5))
            continue;
        char full[8400];
        snprintf(full, sizeof full, "%s/%s", dir, n);
        int fd = open(full, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
            continue;
        struct stat sb;
        if (!flock(fd, LOCK_EX | LOCK_NB) && !fstat(fd, &sb) && S_ISREG(sb.st_mode) &&
            sb.st_mtime + 60 < now)
            unlink(full);
        close(fd);
    }
    closedir(d);
}

eg_status eg_store_build(const char *path, const eg_store_params *p, eg_store_build_stats *stats,
                         eg_err *err)
{
    if (!path || !p || !p->spec)
        return eg_fail(err, EG_EINVAL, "eg_store_build: NULL argument");
    const double t0 = now_s();
    plan pl = {.p = p, .n_layers = eg_spec_n_layers(p->spec), .dim = eg_spec_head_dim(p->spec)};
    pl.row_bytes = eg_dtype_row_bytes(p->dtype, pl.dim);
    if (!eg_dtype_name(p->dtype) || !pl.row_bytes)
        return eg_fail(err, EG_EINVAL, "%s: dtype %s cannot hold rows of %u values%s", path,
                       eg_dtype_name(p->dtype) ? eg_dtype_name(p->dtype) : "(unknown)", pl.dim,
                       p->dtype == EG_FP8_E4M3 ? " (fp8 needs a multiple of 32)" : "");
    const size_t psize = 4096;
    pl.R = rows_per_block(pl.row_bytes, psize, p->hit != NULL);
    pl.blk_bytes = (size_t)pl.R * pl.row_bytes + 4;
    char cfgbuf[16384];
    const char *cfg_json = p->config_json;
    if (!cfg_json) {
        eg_status s0 = eg_config_to_json(eg_spec_config(p->spec), cfgbuf, sizeof cfgbuf, err);
        if (s0)
            return s0;
        cfg_json = cfgbuf;
    }
    pl.nblocks = calloc(pl.n_layers + 1, sizeof *pl.nblocks);
    if (!pl.nblocks)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    uint64_t total_blocks = 0, stored_blocks = 0, total_bytes = 0;
    for (uint32_t li = 0; li < pl.n_layers; li++) {
        pl.nblocks[li] = (eg_spec_layer_rows(p->spec, li) + pl.R - 1) / pl.R;
        total_blocks += pl.nblocks[li];
    }
    /* which blocks are stored, in key order */
    uint64_t *keys = malloc((total_blocks + 1) * sizeof *keys);
    if (!keys) {
        free(pl.nblocks);
        return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    for (uint32_t li = 0; li < pl.n_layers; li++)
        for (uint64_t b = 0; b < pl.nblocks[li]; b++)
            if (block_stored(&pl, li, b)) {
                const uint64_t rows = eg_spec_layer_rows(p->spec, li);
                keys[stored_blocks++] = (uint64_t)li << BLOCK_SHIFT | b;
                total_bytes += (b * pl.R + pl.R < rows ? pl.R : rows - b * pl.R) * pl.row_bytes;
            }
    uint64_t extra = (uint64_t)p->n_projection * 4 + (eg_spec_compressed_vocab(p->spec) * 16) +
                     (1u << 20);
    uint64_t need = stored_blocks * block_pages(pl.blk_bytes - 4, psize) * psize;
    need += (uint64_t)p->n_opt * (((uint64_t)12 * pl.dim + 4 + 64 + psize - 1) / psize * psize);
    need += need / 64 + 2 * extra + ((uint64_t)4 << 20);
    uint64_t map = p->map_size ? p->map_size : need;
    map = (map + psize - 1) / psize * psize;

    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    unlink(tmp);
    sweep_stale_tmp(path);
    int lock_fd = -1; /* held until the rename: tells sweep_stale_tmp this build is alive */
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi meta, vocab, rowsdb, optdb = 0;
    eg_status st = EG_OK;
    /* With the whole map preallocated (fallocate), rows are generated straight
     * into the file's pages (MDB_WRITEMAP): a full disk is reported here, not
     * as a SIGBUS later. Where fallocate is not supported, LMDB's ordinary
     * write path (pwrite at commit, ENOSPC as an error) is used. */
    int rc = 0;
    for (int writemap = 1; writemap >= 0; writemap--) {
        rc = mdb_env_create(&env);
        if (!rc)
            rc = mdb_env_set_maxdbs(env, 4);
        if (!rc)
            rc = mdb_env_set_mapsize(env, (size_t)map);
        if (!rc)
            rc = mdb_env_open(env, tmp,
                              MDB_NOSUBDIR | MDB_NOLOCK | MDB_NOSYNC | MDB_NORDAHEAD |
                                  (writemap ? MDB_WRITEMAP : 0),
                              0644);
        if (rc) {
            st = eg_store_lmdb_fail(err, rc, tmp, "creating the store");
            goto fail;
        }
        if (lock_fd < 0 && (lock_fd = open(tmp, O_RDONLY | O_CLOEXEC)) >= 0)
            (void)flock(lock_fd, LOCK_EX | LOCK_NB);
        int fd = -1;
        if (mdb_env_get_fd(env, &fd) || fd < 0)
            continue;
        if (!fallocate(fd, 0, 0, (off_t)map))
            break;
        const int e = errno;
        if (e == ENOSPC || e == EFBIG || e == EDQUOT) {
            st = eg_fail(err, EG_EIO, "%s: no space for a store of %.1f MiB: %s", tmp,
                         (double)map / 1048576.0, strerror(e));
            goto fail;
        }
        if (!writemap)
            break;
        mdb_env_close(env); /* no fallocate here: the pwrite path */
        env = NULL;
        if (lock_fd >= 0)
            close(lock_fd);
        lock_fd = -1;
        unlink(tmp);
    }
    if ((rc = mdb_txn_begin(env, NULL, 0, &txn)) ||
        (rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &meta)) ||
        (rc = mdb_dbi_open(txn, "vocab", MDB_CREATE, &vocab)) ||
        (rc = mdb_dbi_open(txn, "rows", MDB_CREATE | MDB_INTEGERKEY, &rowsdb)) ||
        (p->n_opt && (rc = mdb_dbi_open(txn, "opt", MDB_CREATE | MDB_INTEGERKEY, &optdb)))) {
        st = eg_store_lmdb_fail(err, rc, tmp, "creating the databases");
        goto fail;
    }
    if (write_meta(txn, meta, vocab, &pl, cfg_json, &rc) != EG_OK) {
        st = rc ? eg_store_lmdb_fail(err, rc, tmp, "writing the metadata")
                : eg_fail(err, EG_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = mdb_txn_commit(txn))) {
        txn = NULL;
        st = eg_store_lmdb_fail(err, rc, tmp, "writing the metadata");
        goto fail;
    }
    txn = NULL;
    /* rows: per chunk of blocks, reserve them in key order (MDB_APPEND), fill
     * them in parallel, commit. A reserved value's pages stay put until the
     * commit: with MDB_WRITEMAP they are the file's pages, otherwise dirty
     * pages that a chunk of 64 MiB is far too small to make LMDB spill. */
    const size_t per_chunk = (64u << 20) / pl.blk_bytes ? (64u << 20) / pl.blk_bytes : 1;
    unsigned char **dst = malloc(per_chunk * sizeof *dst);
    if (!dst) {
        st = eg_fail(err, EG_ENOMEM, "out of memory");
        goto fail;
    }
    int nt = p->n_threads > 0 ? p->n_threads : 0;
#ifdef _OPENMP
    if (!nt)
        nt = omp_get_max_threads();
#else
    nt = 1;
#endif
    uint64_t done_bytes = 0;
    const unsigned char *mapbase = NULL; /* with MDB_WRITEMAP: the file's map */
    int env_fd = -1, writemap = 0;
    {
        unsigned fl = 0;
        writemap = !mdb_env_get_flags(env, &fl) && (fl & MDB_WRITEMAP) &&
                   !mdb_env_get_fd(env, &env_fd) && env_fd >= 0;
    }
    for (uint64_t k0 = 0; k0 < stored_blocks && !st; k0 += per_chunk) {
        const uint64_t kn = stored_blocks - k0 < per_chunk ? stored_blocks - k0 : per_chunk;
        if ((rc = mdb_txn_begin(env, NULL, 0, &txn))) {
            st = eg_store_lmdb_fail(err, rc, tmp, "writing rows");
            break;
        }
        for (uint64_t k = 0; k < kn && !rc; k++) {
            const uint32_t li = (uint32_t)(keys[k0 + k] >> BLOCK_SHIFT);
            const uint64_t b = keys[k0 + k] & ((1ull << BLOCK_SHIFT) - 1);
            const uint64_t rows = eg_spec_layer_rows(p->spec, li);
            const uint64_t n = b * pl.R + pl.R < rows ? pl.R : rows - b * pl.R;
            size_t key = (size_t)keys[k0 + k];
            MDB_val kv = {sizeof key, &key}, dv = {(size_t)n * pl.row_bytes + 4, NULL};
            rc = mdb_put(txn, rowsdb, &kv, &dv, MDB_APPEND | MDB_RESERVE);
            dst[k] = dv.mv_data;
            done_bytes += dv.mv_size - 4;
        }
        if (rc) {
            st = eg_store_lmdb_fail(err, rc, tmp, "writing rows");
            break;
        }
        if (writemap && !mapbase && kn) /* found once, from a value inside the map */
            mapbase = eg_store_map_start_of(dst[0]);
        if (p->rows) { /* the caller's source: serial */
            for (uint64_t k = 0; k < kn && !st; k++) {
                const uint32_t li = (uint32_t)(keys[k0 + k] >> BLOCK_SHIFT);
                const uint64_t b = keys[k0 + k] & ((1ull << BLOCK_SHIFT) - 1);
                const uint64_t rows = eg_spec_layer_rows(p->spec, li);
                const uint64_t n = b * pl.R + pl.R < rows ? pl.R : rows - b * pl.R;
                st = p->rows(p->rows_ctx, li, b * pl.R, n, dst[k], err);
            }
            if (st)
                break;
        }
        const long long KN = (long long)kn;
        int oom = 0, wfail = 0;
        /* With the map (MDB_WRITEMAP), a block is generated in a buffer of
         * the thread's and written to its place in the file with pwrite:
         * the page cache takes whole pages, where a first write through the
         * map makes the kernel zero each page before we fill it (a quarter
         * of the build's time). The map and the file share the page cache
         * (LMDB relies on that too), and the block's pages are reserved for
         * it in this transaction (only LMDB's page header, before the value,
         * is written through the map). Without the map, LMDB writes its dirty
         * pages itself at commit: fill them in place. */
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) reduction(| : oom)
#endif
        {
            const int via_pwrite = mapbase && !p->rows; /* the caller's rows are in place */
            float *tmpv = malloc((size_t)FILL_ROWS * pl.dim * sizeof *tmpv);
            unsigned char *own = via_pwrite ? malloc(pl.blk_bytes) : NULL;
            if (!tmpv || (via_pwrite && !own))
                oom = 1;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
            for (long long k = 0; k < KN; k++) {
                if (oom || __atomic_load_n(&wfail, __ATOMIC_RELAXED))
                    continue;
                const uint32_t li = (uint32_t)(keys[k0 + (uint64_t)k] >> BLOCK_SHIFT);
                const uint64_t b = keys[k0 + (uint64_t)k] & ((1ull << BLOCK_SHIFT) - 1);
                if (!via_pwrite) {
                    fill_block(&pl, li, b, dst[k], tmpv);
                    continue;
                }
                const size_t len = fill_block(&pl, li, b, own, tmpv);
                const off_t at = (off_t)(dst[k] - mapbase);
                for (size_t w = 0; w < len;) {
                    ssize_t r = pwrite(env_fd, own + w, len - w, at + (off_t)w);
                    if (r > 0) {
                        w += (size_t)r;
                    } else if (r == 0 || errno != EINTR) { /* shared: the first error stops all */
                        __atomic_store_n(&wfail, r == 0 ? EIO : errno, __ATOMIC_RELAXED);
                        break;
                    }
                }
            }
            free(tmpv);
            free(own);
        }
        if (oom) {
            st = eg_fail(err, EG_ENOMEM, "out of memory");
            break;
        }
        if (wfail) {
            st = eg_fail(err, EG_EIO, "%s: writing rows: %s", tmp, strerror(wfail));
            break;
        }
        rc = mdb_txn_commit(txn);
        txn = NULL;
        if (rc) {
            st = eg_store_lmdb_fail(err, rc, tmp, "writing rows");
            break;
        }
        if (mapbase && kn) { /* start writing this chunk back now, overlapping the next */
            const unsigned char *lo = dst[0], *hi = dst[kn - 1] + pl.blk_bytes;
            if (lo >= mapbase && hi <= mapbase + map && hi > lo)
                sync_file_range(env_fd, lo - mapbase, hi - lo, SYNC_FILE_RANGE_WRITE);
        }
        if (p->progress)
            p->progress(done_bytes, total_bytes, p->progress_ctx);
    }
    free(dst);
    if (st)
        goto fail;
    /* the training state */
    for (size_t k0 = 0; k0 < p->n_opt; k0 += 4096) {
        const size_t vb = (size_t)3 * pl.dim * sizeof(float);
        if ((rc = mdb_txn_begin(env, NULL, 0, &txn))) {
            st = eg_store_lmdb_fail(err, rc, tmp, "writing the training state");
            goto fail;
        }
        for (size_t k = k0; k < p->n_opt && k < k0 + 4096 && !rc; k++) {
            size_t key = (size_t)p->opt_keys[k];
            MDB_val kv = {sizeof key, &key}, dv = {4 + vb, NULL};
            rc = mdb_put(txn, optdb, &kv, &dv, MDB_APPEND | MDB_RESERVE);
            if (!rc) {
                eg_put_le32(dv.mv_data, p->opt_steps[k]);
                memcpy((unsigned char *)dv.mv_data + 4, p->opt_vals + k * 3 * pl.dim, vb);
            }
        }
        if (!rc)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        txn = NULL;
        if (rc) {
            st = eg_store_lmdb_fail(err, rc, tmp, "writing the training state");
            goto fail;
        }
    }
    /* the marker, last */
    if ((rc = mdb_txn_begin(env, NULL, 0, &txn)) ||
        (rc = put_u64(txn, meta, "blocks", stored_blocks)) ||
        (rc = put_u64(txn, meta, "complete", 1))) {
        st = eg_store_lmdb_fail(err, rc, tmp, "finishing the store");
        goto fail;
    }
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (!rc)
        rc = mdb_env_sync(env, 1);
    if (rc) {
        st = eg_store_lmdb_fail(err, rc, tmp, "finishing the store");
        goto fail;
    }
    {
        int fd = -1;
        if (!mdb_env_get_fd(env, &fd) && fd >= 0) {
            /* drop the preallocated tail beyond LMDB's last page */
            MDB_envinfo ei;
            mdb_env_info(env, &ei);
            off_t used = (off_t)((ei.me_last_pgno + 1) * psize);
            struct stat sb;
            if (!fstat(fd, &sb) && sb.st_size > used && (ftruncate(fd, used) || fsync(fd))) {
                st = eg_fail(err, EG_EIO, "%s: %s", tmp, strerror(errno));
                goto fail;
            }
        }
    }
    mdb_env_close(env);
    env = NULL;
    if (rename(tmp, path)) {
        st = eg_fail(err, EG_EIO, "%s: cannot rename into place: %s", path, strerror(errno));
        goto fail;
    }
    {
        char dir[4200];
        split_dir(path, dir, sizeof dir);
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    if (lock_fd >= 0)
        close(lock_fd);
    if (stats) {
        struct stat sb;
        memset(stats, 0, sizeof *stats);
        stats->blocks = stored_blocks;
        stats->bytes = total_bytes;
        stats->rows = total_bytes / pl.row_bytes;
        stats->file_bytes = stat(path, &sb) ? 0 : (uint64_t)sb.st_size;
        stats->seconds = now_s() - t0;
    }
    free(keys);
    free(pl.nblocks);
    return EG_OK;
fail:
    if (txn)
        mdb_txn_abort(txn);
    if (env)
        mdb_env_close(env);
    unlink(tmp);
    if (lock_fd >= 0)
        close(lock_fd);
    free(keys);
    free(pl.nblocks);
    return st;
}
