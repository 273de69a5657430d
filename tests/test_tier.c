/* test_tier.c - the row tier (eg_tier.h): rows equal the map's bit for bit
 * (every dtype, sparse stores, caches of 0, a few sets and ample, buffered
 * and O_DIRECT, with and without prefetch), the runtime on the tier equals
 * the runtime on the map through training and a checkpoint, injected read
 * errors and short reads fail one gather and leave the tier usable, a file
 * truncated or written under the reader is an error naming layer and row,
 * and two processes reading one store through the map hold its pages once. */
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engram/engram.h"
#include "engram/eg_runtime.h"
#include "engram/eg_tier.h"
#include "eg_internal.h"
#include "test.h"

static eg_spec *tier_spec(uint32_t dim)
{
    char js[512];
    snprintf(js, sizeof js,
             "{\"engram_vocab_size\": [3001, 4001], \"max_ngram_size\": 3,"
             " \"n_embed_per_ngram\": %u, \"n_head_per_ngram\": 2, \"layer_ids\": [2, 7],"
             " \"pad_id\": 1, \"seed\": 3, \"kernel_size\": 4, \"hidden_size\": 16, \"hc_mult\": 1}",
             dim * 2);
    eg_config cfg;
    eg_spec *sp = NULL;
    if (eg_config_parse(js, strlen(js), "test", &cfg, NULL) || eg_spec_create(&cfg, 500, 1, &sp, NULL))
        return NULL;
    return sp;
}

static int build(const char *path, const eg_spec *sp, eg_dtype dt, const uint8_t *const *hit)
{
    eg_store_params p = {.spec = sp, .dtype = dt, .seed = 19, .init_std = 0.3, .hit = hit};
    eg_err err;
    return eg_store_build(path, &p, NULL, &err) == EG_OK;
}

/* n rows of layer li drawn Zipf-like (many repeats, some neighbours) */
static void draw_rows(uint64_t *rows, size_t n, uint64_t lr, uint64_t *rs)
{
    for (size_t i = 0; i < n; i++) {
        const uint64_t u = t_rand(rs);
        rows[i] = (u & 3) ? (u >> 8) % 64 * 31 % lr : (u >> 8) % lr;
    }
}

/* The tier's gather equals the map's, with guard bytes after the output. */
static int same_as_map(eg_store *s, eg_tier *t, uint32_t li, const uint64_t *rows, size_t n,
                       eg_err *err)
{
    const size_t rb = eg_store_get_info(s)->row_bytes;
    unsigned char *a = malloc(n * rb + 64), *b = malloc(n * rb + 64);
    if (!a || !b)
        return 0;
    memset(a, 0x5A, n * rb + 64);
    int ok = !eg_store_gather_encoded(s, li, rows, n, b, n * rb, 1, err) &&
             !eg_tier_gather(t, li, rows, n, a, n * rb, err) && !memcmp(a, b, n * rb);
    for (int g = 0; g < 64; g++)
        ok &= a[n * rb + (size_t)g] == 0x5A;
    free(a);
    free(b);
    return ok;
}

TEST(tier_rows_equal_the_map_every_dtype_cache_and_mode)
{
    eg_spec *sp = tier_spec(32);
    REQUIRE(sp);
    TMP(path, "tier.store");
    uint64_t rs = 17;
    for (int dt = 0; dt < EG_N_DTYPES; dt++) {
        for (int sparse = 0; sparse < 2; sparse++) {
            uint8_t *hit[2] = {NULL, NULL};
            if (sparse)
                for (uint32_t li = 0; li < 2; li++) {
                    const uint64_t lr = eg_spec_layer_rows(sp, li);
                    hit[li] = calloc(lr / 8 + 1, 1);
                    REQUIRE(hit[li]);
                    for (uint64_t r = 0; r < lr; r += 1 + t_rand(&rs) % 40)
                        hit[li][r >> 3] |= (uint8_t)(1u << (r & 7));
                }
            REQUIRE(build(path, sp, (eg_dtype)dt, sparse ? (const uint8_t *const *)hit : NULL));
            free(hit[0]);
            free(hit[1]);
            eg_store *s = NULL;
            eg_err err;
            REQUIRE(!eg_store_open(path, 0, &s, &err));
            const size_t rb = eg_store_get_info(s)->row_bytes;
            const uint64_t caches[3] = {0, 8 * 4 * rb, 1u << 22}; /* none, 4 sets, ample */
            for (int c = 0; c < 3; c++)
                for (int mode = 0; mode < 3; mode++) { /* O_DIRECT, buffered, shared cache */
                    if (mode == 2 && c == 0)
                        continue;
                    const int buffered = mode == 1;
                    eg_tier_opts o = {.cache_bytes = caches[c], .n_readers = 3,
                                      .buffered = buffered, .shared = mode == 2};
                    eg_tier *t = NULL;
                    REQUIRE_MSG(!eg_tier_open(s, &o, &t, &err), "%s", err.msg);
                    for (int step = 0; step < 6; step++) {
                        uint64_t rows[2][300], keys[600];
                        for (uint32_t li = 0; li < 2; li++) {
                            draw_rows(rows[li], 300, eg_spec_layer_rows(sp, li), &rs);
                            for (int i = 0; i < 300; i++)
                                keys[li * 300 + (unsigned)i] = EG_TIER_KEY(li, rows[li][i]);
                        }
                        if (step & 1) /* every other step prefetched */
                            CHECK(!eg_tier_prefetch(t, keys, 600, &err));
                        for (uint32_t li = 0; li < 2; li++)
                            CHECK_MSG(same_as_map(s, t, li, rows[li], 300, &err),
                                      "dtype %d sparse %d cache %d mode %d step %d layer %u: %s",
                                      dt, sparse, c, mode, step, li, err.msg);
                    }
                    eg_tier_stats ts;
                    eg_tier_get_stats(t, &ts);
                    CHECK_EQ(ts.lookups, 6 * 600);
                    if (c == 2)
                        CHECK_MSG(ts.hits > ts.lookups / 2, "ample cache: %llu hits of %llu",
                                  (unsigned long long)ts.hits, (unsigned long long)ts.lookups);
                    if (c == 0)
                        CHECK_EQ(ts.hits, 0);
                    eg_tier_close(t);
                }
            eg_store_close(s);
        }
    }
    eg_spec_free(sp);
}

TEST(tier_prefetch_then_gather_waits_only_for_what_is_missing)
{
    eg_spec *sp = tier_spec(64);
    REQUIRE(sp);
    TMP(path, "tier-pf.store");
    REQUIRE(build(path, sp, EG_FP8_E4M3, NULL));
    eg_store *s = NULL;
    eg_err err;
    REQUIRE(!eg_store_open(path, 0, &s, &err));
    eg_tier_opts o = {.cache_bytes = 1u << 22, .n_readers = 4};
    eg_tier *t = NULL;
    REQUIRE(!eg_tier_open(s, &o, &t, &err));
    uint64_t rows[500], keys[500], rs = 5;
    draw_rows(rows, 500, eg_spec_layer_rows(sp, 1), &rs);
    for (int i = 0; i < 500; i++)
        keys[i] = EG_TIER_KEY(1, rows[i]);
    REQUIRE(!eg_tier_prefetch(t, keys, 500, &err));
    eg_tier_drain(t); /* every read done: the gather finds them all */
    eg_tier_stats a, b;
    eg_tier_get_stats(t, &a);
    CHECK(a.rows_read > 0 && a.lookups == 0);
    CHECK(same_as_map(s, t, 1, rows, 500, &err));
    eg_tier_get_stats(t, &b);
    CHECK_EQ(b.hits, 500);
    CHECK_EQ(b.rows_read, a.rows_read); /* nothing read again */
    /* distinct rows read once each, in fewer calls than rows (neighbours) */
    uint64_t distinct = 0;
    for (int i = 0; i < 500; i++) {
        int seen = 0;
        for (int j = 0; j < i && !seen; j++)
            seen = rows[j] == rows[i];
        distinct += !seen;
    }
    CHECK_EQ(a.rows_read, distinct);
    CHECK(a.reads <= a.rows_read);
    /* a prefetch of a bad key starts nothing */
    keys[3] = EG_TIER_KEY(1, eg_spec_layer_rows(sp, 1));
    CHECK_EQ(eg_tier_prefetch(t, keys, 500, &err), EG_ERANGE);
    keys[3] = EG_TIER_KEY(2, 0);
    CHECK_EQ(eg_tier_prefetch(t, keys, 500, &err), EG_ERANGE);
    rows[9] = eg_spec_layer_rows(sp, 1);
    unsigned char buf[16];
    CHECK_EQ(eg_tier_gather(t, 1, rows, 500, buf, sizeof buf, &err), EG_ECAPACITY);
    eg_tier_close(t);
    eg_store_close(s);
    eg_spec_free(sp);
}

/* ---- faults --------------------------------------------------------------------- */

typedef struct {
    int mode; /* 0 pass, 1 EIO, 2 short (end of file) */
    int calls;
} fault;

static ssize_t faulty_read(void *ctx, int fd, void *buf, size_t n, off_t off)
{
    fault *f = ctx;
    __atomic_add_fetch(&f->calls, 1, __ATOMIC_RELAXED);
    if (f->mode == 1) {
        errno = EIO;
        return -1;
    }
    if (f->mode == 2)
        return 0;
    return pread(fd, buf, n, off);
}

TEST(tier_read_errors_fail_the_step_and_leave_it_usable)
{
    eg_spec *sp = tier_spec(32);
    REQUIRE(sp);
    TMP(path, "tier-fault.store");
    REQUIRE(build(path, sp, EG_BF16, NULL));
    eg_store *s = NULL;
    eg_err err;
    REQUIRE(!eg_store_open(path, 0, &s, &err));
    for (int c = 0; c < 3; c++) /* no cache, a private one, a shared one */
        for (int mode = 1; mode <= 2; mode++) {
            fault f = {0, 0};
            eg_tier_opts o = {.cache_bytes = c ? 1u << 20 : 0, .n_readers = 2,
                              .read_fn = faulty_read, .read_ctx = &f, .shared = c == 2};
            eg_tier *t = NULL;
            REQUIRE(!eg_tier_open(s, &o, &t, &err));
            uint64_t rows[100], keys[100], rs = 9 + (uint64_t)mode;
            draw_rows(rows, 100, eg_spec_layer_rows(sp, 0), &rs);
            for (int i = 0; i < 100; i++)
                keys[i] = EG_TIER_KEY(0, rows[i]);
            f.mode = mode;
            CHECK(!eg_tier_prefetch(t, keys, 100, &err)); /* errors reach the gather */
            unsigned char *buf = malloc(100 * 64);
            REQUIRE(buf);
            CHECK_EQ(eg_tier_gather(t, 0, rows, 100, buf, 100 * 64, &err), EG_EIO);
            CHECK_MSG(strstr(err.msg, "layer 0 row ") &&
                          strstr(err.msg, mode == 1 ? "Input/output error" : "truncated"),
                      "%s", err.msg);
            f.mode = 0; /* the fault passes: the same step again succeeds, exactly */
            CHECK(!eg_tier_prefetch(t, keys, 100, &err));
            CHECK_MSG(same_as_map(s, t, 0, rows, 100, &err), "cache %d mode %d: %s", c, mode,
                      err.msg);
            CHECK_MSG(same_as_map(s, t, 0, rows, 100, &err), "cache %d mode %d again: %s", c,
                      mode, err.msg);
            free(buf);
            eg_tier_close(t);
        }
    eg_store_close(s);
    eg_spec_free(sp);
}

static int copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    char buf[65536];
    size_t n;
    int ok = a && b;
    while (ok && (n = fread(buf, 1, sizeof buf, a)) > 0)
        ok = fwrite(buf, 1, n, b) == n;
    if (a)
        fclose(a);
    if (b && fclose(b))
        ok = 0;
    return ok;
}

TEST(tier_file_truncated_or_written_under_the_reader)
{
    eg_spec *sp = tier_spec(32);
    REQUIRE(sp);
    TMP(orig, "tier-orig.store");
    TMP(path, "tier-trunc.store");
    REQUIRE(build(orig, sp, EG_F32, NULL));
    for (int what = 0; what < 2; what++) {
        REQUIRE(copy_file(orig, path));
        eg_runtime *rt = NULL;
        eg_err err;
        eg_runtime_opts ro = {.rows = EG_RT_ROWS_TIER, .tier = {.cache_bytes = 1u << 20}};
        REQUIRE_MSG(!eg_runtime_open(path, &ro, &rt, &err), "%s", err.msg);
        const uint32_t dim = eg_runtime_dim(rt);
        const uint64_t lr = eg_spec_layer_rows(sp, 1);
        uint64_t rows[4] = {lr - 1, lr - 2, 5, 6};
        float *out = malloc(4 * dim * sizeof *out);
        REQUIRE(out);
        CHECK(!eg_rt_gather(rt, 1, rows, 4, EG_F32, out, 4 * dim * 4, &err));
        struct stat sb;
        REQUIRE(!stat(path, &sb));
        if (what == 0) {
            REQUIRE(!truncate(path, sb.st_size / 2));
        } else { /* a byte written in place, a second later (mtime) */
            sleep(1);
            int fd = open(path, O_WRONLY);
            REQUIRE(fd >= 0);
            CHECK(pwrite(fd, "x", 1, sb.st_size - 100) == 1);
            close(fd);
        }
        uint64_t cold[2] = {lr - 3, 7};
        CHECK_EQ(eg_rt_gather(rt, 1, cold, 2, EG_F32, out, 4 * dim * 4, &err), EG_EIO);
        CHECK_MSG(strstr(err.msg, "layer 1 row ") && strstr(err.msg, "changed under the reader"),
                  "%s", err.msg);
        free(out);
        eg_runtime_close(rt);
    }
    eg_spec_free(sp);
}

/* ---- the runtime on the tier ------------------------------------------------------ */

TEST(rt_tier_equals_rt_map_through_training_and_checkpoint)
{
    eg_spec *sp = tier_spec(32);
    REQUIRE(sp);
    TMP(pa, "rt-map.store");
    TMP(pb, "rt-tier.store");
    REQUIRE(build(pa, sp, EG_FP8_E4M3, NULL));
    REQUIRE(build(pb, sp, EG_FP8_E4M3, NULL));
    eg_runtime *ra = NULL, *rb = NULL;
    eg_err err;
    eg_runtime_opts tier = {.rows = EG_RT_ROWS_TIER, .tier = {.cache_bytes = 64 * 1024, .n_readers = 3}};
    REQUIRE(!eg_runtime_open(pa, NULL, &ra, &err));
    REQUIRE_MSG(!eg_runtime_open(pb, &tier, &rb, &err), "%s", err.msg);
    const uint32_t dim = eg_runtime_dim(ra), H = eg_spec_n_heads(sp);
    const size_t B = 2, T = 40, n = B * T * H;
    uint32_t ids[80];
    uint64_t *rows = malloc(n * sizeof *rows), *uniq = malloc(n * sizeof *uniq);
    float *ea = malloc(n * dim * 4), *eb = malloc(n * dim * 4), *g = malloc(n * dim * 4),
          *us = malloc(n * dim * 4);
    uint16_t *ha = malloc(n * dim * 2), *hb = malloc(n * dim * 2);
    REQUIRE(rows && uniq && ea && eb && g && us && ha && hb);
    uint64_t rs = 77;
    eg_adam hp = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .lr_mult = 5};
    int same = 1;
    for (int step = 0; step < 8; step++) {
        for (size_t i = 0; i < B * T; i++)
            ids[i] = (uint32_t)(t_rand(&rs) % 60); /* a small vocabulary: rows repeat */
        CHECK(!eg_rt_prefetch(rb, ids, B, T, NULL, NULL, &err));
        for (uint32_t li = 0; li < 2; li++) {
            REQUIRE(!eg_rt_hash(ra, li, ids, B, T, NULL, NULL, rows, n, &err));
            REQUIRE(!eg_rt_gather(ra, li, rows, n, EG_F32, ea, n * dim * 4, &err));
            REQUIRE_MSG(!eg_rt_gather(rb, li, rows, n, EG_F32, eb, n * dim * 4, &err), "%s", err.msg);
            REQUIRE(!eg_rt_gather(ra, li, rows, n, EG_BF16, ha, n * dim * 2, &err));
            REQUIRE(!eg_rt_gather(rb, li, rows, n, EG_BF16, hb, n * dim * 2, &err));
            same &= !memcmp(ea, eb, n * dim * 4) && !memcmp(ha, hb, n * dim * 2);
            for (size_t i = 0; i < n * dim; i++)
                g[i] = ea[i] * 0.5f - 0.01f * (float)(i % 7);
            size_t nu = 0;
            REQUIRE(!eg_rt_reduce_rows(ra, rows, g, n, uniq, us, &nu, &err));
            REQUIRE(!eg_rt_adam_step(ra, li, uniq, us, nu, &hp, &err));
            REQUIRE(!eg_rt_adam_step(rb, li, uniq, us, nu, &hp, &err));
        }
        if (step == 4) { /* a checkpoint of each; the tier reopens on the new generation */
            REQUIRE(!eg_rt_checkpoint(ra, NULL, &err));
            REQUIRE_MSG(!eg_rt_checkpoint(rb, NULL, &err), "%s", err.msg);
        }
    }
    CHECK_MSG(same, "the runtime on the tier gathers other values than on the map");
    eg_tier_stats ts;
    eg_rt_tier_stats(rb, &ts);
    CHECK(ts.lookups > 0 && ts.rows_read > 0 && ts.cache_slots > 0);
    eg_rt_tier_stats(ra, &ts);
    CHECK_EQ(ts.lookups, 0);
    /* prefetch through the map is a no-op; bad arguments are refused */
    CHECK(!eg_rt_prefetch(ra, ids, B, T, NULL, NULL, &err));
    CHECK_EQ(eg_rt_prefetch(rb, NULL, B, T, NULL, NULL, &err), EG_EINVAL);
    ids[3] = 100000;
    CHECK_EQ(eg_rt_prefetch(rb, ids, B, T, NULL, NULL, &err), EG_ERANGE);
    eg_runtime_opts bad = {.rows = 7};
    eg_runtime *rc = NULL;
    CHECK_EQ(eg_runtime_open(pb, &bad, &rc, &err), EG_EINVAL);
    eg_runtime_close(ra);
    eg_runtime_close(rb);
    free(rows);
    free(uniq);
    free(ea);
    free(eb);
    free(g);
    free(us);
    free(ha);
    free(hb);
    eg_spec_free(sp);
}

/* ---- one copy per node ------------------------------------------------------------ */

/* Rss and Pss (kB) of this process's mappings of `path`, from smaps. */
static void file_mem(pid_t pid, const char *path, long *rss, long *pss)
{
    char fn[64], line[4400], real[4096];
    *rss = *pss = 0;
    if (!realpath(path, real))
        return;
    snprintf(fn, sizeof fn, "/proc/%d/smaps", (int)pid);
    FILE *f = fopen(fn, "re");
    if (!f)
        return;
    int in = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char perms[8];
        long v;
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3) { /* a mapping's header */
            char *sl = strchr(line, '/');
            if (sl)
                sl[strcspn(sl, "\n")] = 0;
            in = sl && !strcmp(sl, real);
            continue;
        }
        if (in && sscanf(line, "Rss: %ld kB", &v) == 1)
            *rss += v;
        if (in && sscanf(line, "Pss: %ld kB", &v) == 1)
            *pss += v;
    }
    fclose(f);
}

TEST(store_two_readers_share_one_copy_of_the_rows)
{
    eg_spec *sp = tier_spec(64);
    REQUIRE(sp);
    TMP(path, "shared.store");
    REQUIRE(build(path, sp, EG_F32, NULL));
    int go[2], ready[2];
    REQUIRE(!pipe(go) && !pipe(ready));
    pid_t kid[2];
    for (int k = 0; k < 2; k++) {
        kid[k] = fork();
        REQUIRE(kid[k] >= 0);
        if (kid[k] == 0) { /* a serving process: every row once, then hold */
            eg_store *s = NULL;
            eg_err err;
            if (eg_store_open(path, 0, &s, &err))
                _exit(2);
            const eg_spec *ss = eg_store_spec(s);
            unsigned char *buf = malloc(eg_store_get_info(s)->row_bytes * 256);
            for (uint32_t li = 0; li < 2; li++)
                for (uint64_t r = 0; r < eg_spec_layer_rows(ss, li); r += 256) {
                    uint64_t n = eg_spec_layer_rows(ss, li) - r < 256 ? eg_spec_layer_rows(ss, li) - r : 256;
                    if (eg_store_read_encoded(s, li, r, n, buf, n * eg_store_get_info(s)->row_bytes, &err))
                        _exit(3);
                }
            char c = 'r';
            if (write(ready[1], &c, 1) != 1 || read(go[0], &c, 1) != 1)
                _exit(4);
            _exit(0);
        }
    }
    close(ready[1]); /* a child that dies: its read ends, not hangs */
    close(go[0]);
    char c;
    for (int k = 0; k < 2; k++)
        CHECK(read(ready[0], &c, 1) == 1);
    long rss[2], pss[2];
    for (int k = 0; k < 2; k++)
        file_mem(kid[k], path, &rss[k], &pss[k]);
    struct stat sb;
    REQUIRE(!stat(path, &sb));
    const long file_kb = (long)(sb.st_size / 1024);
    for (int k = 0; k < 2; k++)
        if (write(go[1], "g", 1) != 1)
            break;
    for (int k = 0; k < 2; k++) {
        int ws = 0;
        waitpid(kid[k], &ws, 0);
        CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    }
    /* each process has the rows resident (its Rss is about the file), but
     * their proportional shares add up to one copy */
    CHECK_MSG(rss[0] > file_kb * 3 / 4 && rss[1] > file_kb * 3 / 4,
              "rss %ld and %ld kB of a %ld kB store", rss[0], rss[1], file_kb);
    CHECK_MSG(pss[0] + pss[1] <= file_kb + 64 && pss[0] + pss[1] >= file_kb * 3 / 4,
              "pss %ld + %ld kB of a %ld kB store: not one copy", pss[0], pss[1], file_kb);
    close(go[1]);
    close(ready[0]);
    eg_spec_free(sp);
}

/* Pages of the file in the page cache (mincore). */
static long cached_pages(const char *path, long *total)
{
    int fd = open(path, O_RDONLY);
    struct stat sb;
    *total = 0;
    if (fd < 0 || fstat(fd, &sb))
        return -1;
    const long ps = sysconf(_SC_PAGESIZE);
    *total = (long)((sb.st_size + ps - 1) / ps);
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    unsigned char *vec = malloc((size_t)*total);
    long n = -1;
    if (m != MAP_FAILED && vec && !mincore(m, (size_t)sb.st_size, vec)) {
        n = 0;
        for (long i = 0; i < *total; i++)
            n += vec[i] & 1;
    }
    free(vec);
    if (m != MAP_FAILED)
        munmap(m, (size_t)sb.st_size);
    return n;
}

TEST(store_verify_leaves_the_page_cache_alone)
{
    eg_spec *sp = tier_spec(64);
    REQUIRE(sp);
    TMP(path, "verify-pc.store");
    REQUIRE(build(path, sp, EG_F32, NULL));
    int fd = open(path, O_RDONLY);
    REQUIRE(fd >= 0);
    fsync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    long total = 0, before = cached_pages(path, &total);
    eg_store_verify_report r;
    eg_err err;
    REQUIRE_MSG(!eg_store_verify(path, &r, &err), "%s", err.msg);
    CHECK(r.blocks_checked > 0 && !r.blocks_bad);
    long after = cached_pages(path, &total);
    if (before < 0 || after < 0) {
        t_skip("mincore is not available");
    } else {
        /* the metadata and the B-tree's pages only: far from the whole file */
        CHECK_MSG(after - before < total / 10, "verify left %ld of %ld pages cached (%ld before)",
                  after, total, before);
    }
    /* a flipped byte in a row is still found */
    struct stat sb;
    REQUIRE(!stat(path, &sb));
    fd = open(path, O_RDWR);
    REQUIRE(fd >= 0);
    unsigned char c;
    CHECK(pread(fd, &c, 1, sb.st_size / 2) == 1);
    c ^= 0x10;
    CHECK(pwrite(fd, &c, 1, sb.st_size / 2) == 1);
    close(fd);
    CHECK_EQ(eg_store_verify(path, &r, &err), EG_EFORMAT);
    CHECK_MSG(r.blocks_bad == 1 && strstr(r.first_problem, "crc32"), "%llu bad: %s",
              (unsigned long long)r.blocks_bad, r.first_problem);
    eg_spec_free(sp);
}

static long vm_rss_kb(pid_t pid)
{
    char fn[64], line[256];
    long v = -1;
    snprintf(fn, sizeof fn, "/proc/%d/status", (int)pid);
    FILE *f = fopen(fn, "re");
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &v) == 1)
            break;
    if (f)
        fclose(f);
    return v;
}

/* Serving processes on the tier without a private cache, reading through the
 * page cache (buffered): the rows are held once, in the page cache of the one
 * file, and no process keeps a copy of its own. */
TEST(tier_buffered_readers_share_the_page_cache)
{
    eg_spec *sp = tier_spec(512); /* 57 MB: well above a process's own overheads (ASan's too) */
    REQUIRE(sp);
    TMP(path, "shared-tier.store");
    REQUIRE(build(path, sp, EG_F32, NULL));
    int fd = open(path, O_RDONLY);
    REQUIRE(fd >= 0);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    int go[2], ready[2];
    REQUIRE(!pipe(go) && !pipe(ready));
    pid_t kid[2];
    for (int k = 0; k < 2; k++) {
        kid[k] = fork();
        REQUIRE(kid[k] >= 0);
        if (kid[k] == 0) {
            eg_store *s = NULL;
            eg_tier *t = NULL;
            eg_err err;
            eg_tier_opts o = {.cache_bytes = 0, .n_readers = 4, .buffered = 1};
            if (eg_store_open(path, 0, &s, &err) || eg_tier_open(s, &o, &t, &err))
                _exit(2);
            const eg_spec *ss = eg_store_spec(s);
            const size_t rb = eg_store_get_info(s)->row_bytes;
            uint64_t rows[512];
            unsigned char *buf = malloc(rb * 512);
            if (buf)
                memset(buf, 0, rb * 512); /* its pages counted before, not during */
            const long rss0 = vm_rss_kb(getpid());
            for (uint32_t li = 0; li < 2 && buf; li++)
                for (uint64_t r = 0; r < eg_spec_layer_rows(ss, li); r += 512) {
                    size_t n = 0;
                    for (; n < 512 && r + n < eg_spec_layer_rows(ss, li); n++)
                        rows[n] = r + n;
                    if (eg_tier_gather(t, li, rows, n, buf, rb * 512, &err))
                        _exit(3);
                }
            const long grew = vm_rss_kb(getpid()) - rss0; /* what reading every row cost it */
            char c;
            if (write(ready[1], &grew, sizeof grew) != sizeof grew || read(go[0], &c, 1) != 1)
                _exit(4);
            _exit(0);
        }
    }
    close(ready[1]);
    close(go[0]);
    long grew[2] = {0, 0};
    for (int k = 0; k < 2; k++)
        CHECK(read(ready[0], &grew[k], sizeof grew[k]) == sizeof grew[k]);
    struct stat sb;
    REQUIRE(!stat(path, &sb));
    const long file_kb = (long)(sb.st_size / 1024);
    long total = 0;
    const long cached = cached_pages(path, &total);
    for (int k = 0; k < 2; k++)
        if (write(go[1], "g", 1) != 1)
            break;
    for (int k = 0; k < 2; k++) {
        int ws = 0;
        waitpid(kid[k], &ws, 0);
        CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    }
    /* the rows are in the page cache (read once per page, whichever process
     * read it), and neither process holds them */
    CHECK_MSG(cached < 0 || cached > total * 3 / 4, "%ld of %ld pages cached", cached, total);
    for (int k = 0; k < 2; k++)
        CHECK_MSG(grew[k] < file_kb / 4, "reader %d grew by %ld kB reading a %ld kB store", k,
                  grew[k], file_kb);
    close(go[1]);
    close(ready[0]);
    eg_spec_free(sp);
}

/* ---- the cache in shared memory ------------------------------------------------- */

static int shm_exists(const char *name)
{
    char p[160];
    snprintf(p, sizeof p, "/dev/shm%s", name);
    return access(p, F_OK) == 0;
}

/* Gather every row of both layers in chunks of 512, each chunk checked against
 * the map; 0 when all equal. */
static int gather_all(eg_store *s, eg_tier *t, eg_err *err)
{
    const eg_spec *ss = eg_store_spec(s);
    uint64_t rows[512];
    for (uint32_t li = 0; li < 2; li++)
        for (uint64_t r = 0; r < eg_spec_layer_rows(ss, li); r += 512) {
            size_t n = 0;
            for (; n < 512 && r + n < eg_spec_layer_rows(ss, li); n++)
                rows[n] = r + n;
            if (!same_as_map(s, t, li, rows, n, err))
                return 1;
        }
    return 0;
}

typedef struct {
    eg_tier_stats st;
    char name[96];
    int status;
} shm_report;

/* Two serving processes with one cache in shared memory: the second finds
 * every row the first read (reads none itself), the rows are resident once
 * (the two processes' proportional shares of the segment add up to one copy),
 * and the last to close removes the segment's name. */
TEST(tier_shared_cache_is_one_copy_per_host)
{
    eg_spec *sp = tier_spec(512); /* 57 MB of f32 rows */
    REQUIRE(sp);
    TMP(path, "shm-tier.store");
    REQUIRE(build(path, sp, EG_F32, NULL));
    int go[2], ready[2];
    REQUIRE(!pipe(go) && !pipe(ready));
    pid_t kid[2];
    shm_report rep[2];
    memset(rep, 0, sizeof rep);
    for (int k = 0; k < 2; k++) {
        kid[k] = fork();
        REQUIRE(kid[k] >= 0);
        if (kid[k] == 0) {
            shm_report me;
            memset(&me, 0, sizeof me);
            eg_store *s = NULL;
            eg_tier *t = NULL;
            eg_err err;
            eg_tier_opts o = {.cache_bytes = 256u << 20, .n_readers = 4, .shared = 1};
            if (eg_store_open(path, 0, &s, &err) || eg_tier_open(s, &o, &t, &err))
                me.status = 2;
            else if (gather_all(s, t, &err))
                me.status = 3;
            eg_tier_get_stats(t, &me.st);
            if (eg_tier_cache_name(t))
                snprintf(me.name, sizeof me.name, "%s", eg_tier_cache_name(t));
            char c;
            if (write(ready[1], &me, sizeof me) != sizeof me || read(go[0], &c, 1) != 1)
                _exit(4);
            eg_tier_close(t);
            eg_store_close(s);
            _exit(0);
        }
        /* the second starts when the first has read everything */
        CHECK(read(ready[0], &rep[k], sizeof rep[k]) == sizeof rep[k]);
    }
    close(ready[1]);
    close(go[0]);
    char shm[160];
    snprintf(shm, sizeof shm, "/dev/shm%s", rep[0].name);
    long rss[2] = {0, 0}, pss[2] = {0, 0};
    for (int k = 0; k < 2; k++)
        file_mem(kid[k], shm, &rss[k], &pss[k]);
    for (int k = 0; k < 2; k++)
        if (write(go[1], "g", 1) != 1)
            break;
    for (int k = 0; k < 2; k++) {
        int ws = 0;
        waitpid(kid[k], &ws, 0);
        CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    }
    const eg_spec *ss = sp;
    const uint64_t n_rows = eg_spec_layer_rows(ss, 0) + eg_spec_layer_rows(ss, 1);
    const long rows_kb = (long)(n_rows * 2048 / 1024);
    for (int k = 0; k < 2; k++) {
        CHECK_MSG(rep[k].status == 0, "process %d: status %d", k, rep[k].status);
        CHECK(rep[k].st.shared && rep[k].st.lookups == n_rows);
    }
    CHECK(rep[0].name[0] && !strcmp(rep[0].name, rep[1].name));
    CHECK_MSG(rep[0].st.rows_read == n_rows, "first: read %llu of %llu rows",
              (unsigned long long)rep[0].st.rows_read, (unsigned long long)n_rows);
    /* (a few of the 8-way sets hold more rows than ways: the first process
     * evicted those of its own rows; the second reads them again) */
    CHECK_MSG(rep[1].st.rows_read * 100 <= n_rows && rep[1].st.hits + rep[1].st.rows_read >= n_rows,
              "second: read %llu rows, %llu hits of %llu", (unsigned long long)rep[1].st.rows_read,
              (unsigned long long)rep[1].st.hits, (unsigned long long)n_rows);
    CHECK_MSG(rss[0] > rows_kb * 3 / 4 && rss[1] > rows_kb * 3 / 4,
              "rss %ld and %ld kB of %ld kB of rows", rss[0], rss[1], rows_kb);
    CHECK_MSG(pss[0] + pss[1] <= (long)(256u << 10) + 64 && pss[0] + pss[1] >= rows_kb * 3 / 4 &&
                  pss[0] + pss[1] < rss[0] + rss[1] - rows_kb / 2,
              "pss %ld + %ld kB (rss %ld + %ld) of %ld kB of rows: not one copy", pss[0], pss[1],
              rss[0], rss[1], rows_kb);
    CHECK_MSG(!shm_exists(rep[0].name), "%s left behind", rep[0].name);
    close(go[1]);
    close(ready[0]);
    eg_spec_free(sp);
}

/* Two processes evicting each other's rows from a small shared cache (32
 * slots over ~64 hot rows, leases of 1 ms): every gather equals the map. */
TEST(tier_shared_cache_processes_evicting_each_other_get_exact_rows)
{
    eg_spec *sp = tier_spec(32);
    REQUIRE(sp);
    TMP(path, "shm-evict.store");
    REQUIRE(build(path, sp, EG_BF16, NULL));
    pid_t kid[2];
    for (int k = 0; k < 2; k++) {
        kid[k] = fork();
        REQUIRE(kid[k] >= 0);
        if (kid[k] == 0) {
            eg_store *s = NULL;
            eg_tier *t = NULL;
            eg_err err;
            eg_tier_opts o = {.cache_bytes = 32 * (64 + 40), .n_readers = 3, .shared = 1,
                              .lease_ms = 1};
            if (eg_store_open(path, 0, &s, &err) || eg_tier_open(s, &o, &t, &err))
                _exit(2);
            uint64_t rs = 101 + (uint64_t)k;
            for (int step = 0; step < 300; step++) {
                uint64_t rows[2][100], keys[200];
                for (uint32_t li = 0; li < 2; li++) {
                    draw_rows(rows[li], 100, eg_spec_layer_rows(sp, li), &rs);
                    for (int i = 0; i < 100; i++)
                        keys[li * 100 + (unsigned)i] = EG_TIER_KEY(li, rows[li][i]);
                }
                if ((step & 1) && eg_tier_prefetch(t, keys, 200, &err))
                    _exit(3);
                for (uint32_t li = 0; li < 2; li++)
                    if (!same_as_map(s, t, li, rows[li], 100, &err))
                        _exit(4);
            }
            eg_tier_stats ts;
            eg_tier_get_stats(t, &ts);
            eg_tier_close(t);
            eg_store_close(s);
            _exit(ts.hits > 0 && ts.rows_read > 0 ? 0 : 5); /* it hit, and it evicted */
        }
    }
    for (int k = 0; k < 2; k++) {
        int ws = 0;
        waitpid(kid[k], &ws, 0);
        CHECK_MSG(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "process %d: status %d", k,
                  WIFEXITED(ws) ? WEXITSTATUS(ws) : -1);
    }
    eg_spec_free(sp);
}

typedef struct {
    int fd; /* told once a read starts */
} hang;

static ssize_t hanging_read(void *ctx, int fd, void *buf, size_t n, off_t off)
{
    (void)fd, (void)buf, (void)n, (void)off;
    hang *h = ctx;
    if (write(h->fd, "r", 1) != 1)
        return -1;
    for (;;)
        pause();
}

/* A process killed while it loads rows into the shared cache: the next one
 * reads those rows itself (exact), takes the dead loader's slots over (its
 * next gather hits), and a cache size of another value is refused by name. */
TEST(tier_shared_cache_survives_a_loader_killed_mid_read)
{
    eg_spec *sp = tier_spec(32);
    REQUIRE(sp);
    TMP(path, "shm-kill.store");
    REQUIRE(build(path, sp, EG_F32, NULL));
    uint64_t rows[200], rs = 5;
    draw_rows(rows, 200, eg_spec_layer_rows(sp, 1), &rs);
    int started[2];
    REQUIRE(!pipe(started));
    const uint64_t cache = 1u << 20;
    pid_t kid = fork();
    REQUIRE(kid >= 0);
    if (kid == 0) {
        eg_store *s = NULL;
        eg_tier *t = NULL;
        eg_err err;
        hang h = {started[1]};
        eg_tier_opts o = {.cache_bytes = cache, .n_readers = 2, .shared = 1,
                          .read_fn = hanging_read, .read_ctx = &h};
        if (eg_store_open(path, 0, &s, &err) || eg_tier_open(s, &o, &t, &err))
            _exit(2);
        unsigned char buf[200 * 128];
        (void)eg_tier_gather(t, 1, rows, 200, buf, sizeof buf, &err); /* hangs */
        _exit(3);
    }
    char c;
    CHECK(read(started[0], &c, 1) == 1);
    kill(kid, SIGKILL);
    int ws = 0;
    waitpid(kid, &ws, 0);
    CHECK(WIFSIGNALED(ws));
    eg_store *s = NULL;
    eg_tier *t = NULL, *t2 = NULL;
    eg_err err;
    REQUIRE(!eg_store_open(path, 0, &s, &err));
    eg_tier_opts o = {.cache_bytes = cache, .n_readers = 2, .shared = 1};
    REQUIRE_MSG(!eg_tier_open(s, &o, &t, &err), "%s", err.msg);
    CHECK_MSG(same_as_map(s, t, 1, rows, 200, &err), "%s", err.msg);
    eg_tier_stats a, b;
    eg_tier_get_stats(t, &a);
    CHECK(a.rows_read > 0);
    CHECK_MSG(same_as_map(s, t, 1, rows, 200, &err), "%s", err.msg);
    eg_tier_get_stats(t, &b);
    CHECK_MSG(b.rows_read == a.rows_read && b.hits - a.hits == 200,
              "after taking the slots over: %llu more reads, %llu more hits of 200",
              (unsigned long long)(b.rows_read - a.rows_read),
              (unsigned long long)(b.hits - a.hits));
    o.cache_bytes = 2 * cache;
    CHECK_EQ(eg_tier_open(s, &o, &t2, &err), EG_EINVAL);
    CHECK_MSG(strstr(err.msg, "same cache_bytes") && strstr(err.msg, "/dev/shm/engram-tier-"),
              "%s", err.msg);
    char name[96];
    snprintf(name, sizeof name, "%s", eg_tier_cache_name(t));
    eg_tier_close(t);
    CHECK_MSG(!shm_exists(name), "%s left behind", name);
    eg_store_close(s);
    close(started[0]);
    close(started[1]);
    eg_spec_free(sp);
}
