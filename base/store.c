/* store.c - the LMDB table store: build (temporary file, sync, rename), open
 * (block index over the map, crc on first touch), verify. Layout: docs/FORMAT.md. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <lmdb.h>
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

#include "eg_internal.h"
#include "engram/eg_config.h"
#include "engram/eg_store.h"

#define STORE_MAGIC "engram-store"
#define BLOCK_SHIFT 40
#define PAGE_HDR 16 /* LMDB's page header on 64-bit hosts (PAGEHDRSZ) */

static eg_status lmdb_fail(eg_err *err, int rc, const char *path, const char *what)
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

/* The start of the file mapping (offset 0) that holds p, from
 * /proc/self/maps; NULL where it cannot be told. LMDB does not give its map's
 * address (mdb_env_info's me_mapaddr is set only with MDB_FIXEDMAP). */
static const unsigned char *map_start_of(const void *p)
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
            st = lmdb_fail(err, rc, tmp, "creating the store");
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
        st = lmdb_fail(err, rc, tmp, "creating the databases");
        goto fail;
    }
    if (write_meta(txn, meta, vocab, &pl, cfg_json, &rc) != EG_OK) {
        st = rc ? lmdb_fail(err, rc, tmp, "writing the metadata")
                : eg_fail(err, EG_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = mdb_txn_commit(txn))) {
        txn = NULL;
        st = lmdb_fail(err, rc, tmp, "writing the metadata");
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
            st = lmdb_fail(err, rc, tmp, "writing rows");
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
            st = lmdb_fail(err, rc, tmp, "writing rows");
            break;
        }
        if (writemap && !mapbase && kn) /* found once, from a value inside the map */
            mapbase = map_start_of(dst[0]);
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
            st = lmdb_fail(err, rc, tmp, "writing rows");
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
            st = lmdb_fail(err, rc, tmp, "writing the training state");
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
            st = lmdb_fail(err, rc, tmp, "writing the training state");
            goto fail;
        }
    }
    /* the marker, last */
    if ((rc = mdb_txn_begin(env, NULL, 0, &txn)) ||
        (rc = put_u64(txn, meta, "blocks", stored_blocks)) ||
        (rc = put_u64(txn, meta, "complete", 1))) {
        st = lmdb_fail(err, rc, tmp, "finishing the store");
        goto fail;
    }
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (!rc)
        rc = mdb_env_sync(env, 1);
    if (rc) {
        st = lmdb_fail(err, rc, tmp, "finishing the store");
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

/* ---- reading ---------------------------------------------------------------------- */

#define STORE_LENIENT (1u << 31) /* verify: record block problems instead of failing */

struct eg_store {
    MDB_env *env;
    MDB_txn *txn;
    char *path;
    unsigned flags;
    eg_spec *spec;
    eg_store_info info;
    char *config_json, *build_json;
    const uint32_t *proj;
    uint32_t *proj_own; /* a copy when the map's value is not 4-aligned */
    size_t n_proj;
    const char **keys;
    uint32_t n_layers;
    uint64_t *base;               /* per layer: index of its first block; [n_layers] = total */
    const unsigned char **blk;    /* per block: its bytes in the map, or NULL */
    uint8_t *crc_state;           /* 0 unchecked, 1 good, 2 bad */
    eg_store_verify_report *report; /* lenient opens */
};

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

static void problem(eg_store *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(eg_store *s, const char *fmt, ...)
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
        return lmdb_fail(err, rc, s->path, "reading the rows");
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
                problem(s, "rows: unexpected key %#llx", (unsigned long long)key);
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
                problem(s, "layer %u block %llu: %zu bytes, expected %llu", li,
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
        return lmdb_fail(err, rc, s->path, "reading the rows");
    if (n != s->info.blocks || (!s->info.sparse && n != total)) {
        if (s->report) {
            s->report->blocks_missing = (s->info.sparse ? s->info.blocks : total) > n
                                            ? (s->info.sparse ? s->info.blocks : total) - n
                                            : 0;
            problem(s, "%llu blocks stored, %llu recorded, %llu in the tables",
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

static eg_status store_open(const char *path, unsigned flags, eg_store_verify_report *report,
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
                               : lmdb_fail(err, rc, path, "opening the store");
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
        st = lmdb_fail(err, rc, path, "opening the store");
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
    return store_open(path, flags & ~STORE_LENIENT, NULL, out, err);
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

/* Block index of (li, row), after range checks. */
static eg_status block_of(eg_store *s, uint32_t li, uint64_t row, uint64_t *idx, eg_err *err)
{
    if (li >= s->n_layers)
        return eg_fail(err, EG_ERANGE, "%s: layer index %u >= %u", s->path, li, s->n_layers);
    if (row >= eg_spec_layer_rows(s->spec, li))
        return eg_fail(err, EG_ERANGE, "%s: row %llu >= layer %u's %llu rows", s->path,
                       (unsigned long long)row, li, (unsigned long long)eg_spec_layer_rows(s->spec, li));
    *idx = s->base[li] + row / s->info.rows_per_block;
    return EG_OK;
}

static eg_status check_crc(eg_store *s, uint32_t li, uint64_t idx, eg_err *err)
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
    eg_status st = block_of(s, li, row, &idx, err);
    if (st)
        return st;
    if (!s->blk[idx])
        return EG_OK;
    if (!(s->flags & EG_STORE_NO_CRC) && (st = check_crc(s, li, idx, err)))
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
        return lmdb_fail(err, rc, s->path, "reading the training state");
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
        st = lmdb_fail(err, rc, s->path, "reading the training state");
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
    const uint64_t total = s->base[s->n_layers];
    for (uint64_t i = 0; i < total && !*base; i++)
        if (s->blk[i])
            *base = map_start_of(s->blk[i]);
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

/* ---- verify ------------------------------------------------------------------------ */

eg_status eg_store_verify(const char *path, eg_store_verify_report *r, eg_err *err)
{
    eg_store_verify_report local;
    if (!r)
        r = &local;
    memset(r, 0, sizeof *r);
    eg_store *s = NULL;
    eg_status st = store_open(path, EG_STORE_NO_CRC, r, &s, err);
    if (st) {
        snprintf(r->first_problem, sizeof r->first_problem, "%.380s", err ? err->msg : "cannot open");
        return st;
    }
    r->meta_ok = 1;
    /* the recorded arrays against the reference schedule for the config */
    eg_spec *ref = NULL;
    eg_err e2 = {0};
    if (eg_spec_create(eg_spec_config(s->spec), eg_spec_compressed_vocab(s->spec), eg_spec_pad(s->spec),
                       &ref, &e2) ||
        eg_store_expect(s, NULL, ref, &e2)) {
        r->meta_ok = 0;
        problem(s, "metadata: %s", e2.msg);
    }
    eg_spec_free(ref);
    for (uint32_t li = 0; li < s->n_layers; li++)
        for (uint64_t idx = s->base[li]; idx < s->base[li + 1]; idx++) {
            if (!s->blk[idx])
                continue;
            r->blocks_checked++;
            eg_err e3 = {0};
            if (check_crc(s, li, idx, &e3)) {
                r->blocks_bad++;
                problem(s, "%s", e3.msg);
            }
        }
    eg_store_close(s);
    if (r->blocks_bad || r->blocks_missing || r->blocks_unexpected || !r->meta_ok)
        return eg_fail(err, EG_EFORMAT, "%s: %s", path, r->first_problem);
    return EG_OK;
}
