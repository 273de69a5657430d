/* test_backend.c - the backend table: every operation of the CUDA backend
 * against the CPU oracle, case by case (tests named cuda_parity_<op> so a
 * failure can be rerun alone: `build/engram-tests cuda_parity_gather`), with
 * guard bytes around outputs. Skipped with the reason when no CUDA device or
 * no libengram_cuda.so is present; the CPU backend's own cases always run. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engram/engram.h"
#include "engram/eg_backend.h"
#include "test.h"

#define GUARD 64

static const eg_backend *cuda_or_skip(void)
{
    const eg_backend *b = NULL;
    eg_err err;
    if (eg_backend_get("cuda", &b, &err))
        return NULL;
    return b;
}

#define NEED_CUDA(b)                                                                               \
    const eg_backend *b = cuda_or_skip();                                                         \
    if (!b) {                                                                                      \
        eg_err e_;                                                                                 \
        const eg_backend *x_;                                                                      \
        eg_backend_get("cuda", &x_, &e_);                                                          \
        SKIP(e_.msg);                                                                              \
    }

static void *guarded(size_t n)
{
    unsigned char *p = malloc(n + 2 * GUARD);
    memset(p, 0xA5, n + 2 * GUARD);
    return p + GUARD;
}

static int guards_ok(void *q, size_t n)
{
    unsigned char *p = (unsigned char *)q - GUARD;
    for (size_t i = 0; i < GUARD; i++)
        if (p[i] != 0xA5 || p[GUARD + n + i] != 0xA5)
            return 0;
    return 1;
}

static void unguard(void *q) { free((unsigned char *)q - GUARD); }

static eg_spec *spec_for(uint32_t N, uint32_t K, uint64_t size, uint64_t vprime)
{
    char js[512], sizes[128] = "";
    for (uint32_t n = 2; n <= N; n++)
        snprintf(sizes + strlen(sizes), sizeof sizes - strlen(sizes), "%s%llu", n > 2 ? ", " : "",
                 (unsigned long long)(size + 1000 * n));
    snprintf(js, sizeof js,
             "{\"engram_vocab_size\": [%s], \"max_ngram_size\": %u, \"n_embed_per_ngram\": %u,"
             " \"n_head_per_ngram\": %u, \"layer_ids\": [2, 7], \"pad_id\": 3, \"seed\": 9,"
             " \"kernel_size\": 4, \"hidden_size\": 16, \"hc_mult\": 2}",
             sizes, N, 16 * K, K);
    eg_config cfg;
    eg_spec *sp = NULL;
    if (eg_config_parse(js, strlen(js), "test", &cfg, NULL) || eg_spec_create(&cfg, vprime, 3, &sp, NULL))
        return NULL;
    return sp;
}

TEST(backend_table_cpu_and_unknown)
{
    const eg_backend *b = NULL;
    eg_err err;
    REQUIRE(!eg_backend_get("cpu", &b, &err) && b && !strcmp(b->name, "cpu"));
    CHECK_EQ(eg_backend_get("tpu", &b, &err), EG_EINVAL);
    /* without a device the CUDA backend says why, in one line */
    if (eg_backend_get("cuda", &b, &err))
        CHECK(err.code == EG_EUNSUPPORTED && strlen(err.msg) > 10 && !strchr(err.msg, '\n'));
    /* the CPU table's unique and adam against their definitions */
    REQUIRE(!eg_backend_get("cpu", &b, &err));
    uint64_t rows[7] = {5, 1, 5, 9, 1, 1, 0}, u[7];
    size_t nu;
    REQUIRE(!b->unique(rows, 7, u, &nu, &err));
    CHECK(nu == 4 && u[0] == 0 && u[1] == 1 && u[2] == 5 && u[3] == 9);
    float val[4] = {1, 2, 3, 4}, m[4] = {0}, v[4] = {0}, g[4] = {0.5f, -1, 0, 2};
    uint32_t steps[1] = {0};
    eg_adam hp = {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
    REQUIRE(!b->adam(val, m, v, steps, g, 1, 4, &hp, &err));
    CHECK(steps[0] == 1);
    /* step 1 of Adam moves every coordinate with a non-zero gradient by ~lr */
    CHECK(fabs((double)val[0] - 0.9) < 1e-6 && fabs((double)val[1] - 2.1) < 1e-6 &&
          val[2] == 3.0f && fabs((double)val[3] - 3.9) < 1e-6);
}

TEST(cuda_parity_hash)
{
    NEED_CUDA(cu);
    const eg_backend *cpu;
    REQUIRE(!eg_backend_get("cpu", &cpu, NULL));
    static const uint32_t cfgs[][2] = {{2, 1}, {3, 8}, {4, 4}, {3, 3}};
    uint64_t rs = 1;
    for (int c = 0; c < 4; c++) {
        eg_spec *sp = spec_for(cfgs[c][0], cfgs[c][1], c == 3 ? 5000000 : 700, 1000 + 777 * c);
        REQUIRE(sp);
        const size_t S = 3, T = 257, H = eg_spec_n_heads(sp), n = S * T * H;
        uint32_t *ids = malloc(S * T * 4);
        for (size_t i = 0; i < S * T; i++)
            ids[i] = (uint32_t)(t_rand(&rs) % eg_spec_compressed_vocab(sp));
        ids[5] = (uint32_t)eg_spec_compressed_vocab(sp) - 1;
        for (uint32_t fl = 0; fl < 2; fl++)
            for (uint32_t li = 0; li < 2; li++) {
                uint32_t *a = guarded(n * 4), *b = guarded(n * 4);
                eg_err err;
                REQUIRE(!cpu->hash(sp, li, ids, S, T, fl, a, n, &err));
                CHECK_MSG(!cu->hash(sp, li, ids, S, T, fl, b, n, &err), "%s", err.msg);
                CHECK_MSG(!memcmp(a, b, n * 4), "config %d layer %u flags %u differs", c, li, fl);
                CHECK(guards_ok(b, n * 4));
                unguard(a);
                unguard(b);
            }
        ids[7] = (uint32_t)eg_spec_compressed_vocab(sp);
        uint32_t *o = malloc(n * 4);
        CHECK_EQ(cu->hash(sp, 0, ids, S, T, 0, o, n, NULL), EG_ERANGE);
        free(o);
        free(ids);
        eg_spec_free(sp);
    }
}

TEST(cuda_parity_gather)
{
    NEED_CUDA(cu);
    const eg_backend *cpu;
    REQUIRE(!eg_backend_get("cpu", &cpu, NULL));
    static const size_t rbs[] = {2, 64, 66, 128, 256};
    uint64_t rs = 2;
    for (int c = 0; c < 5; c++) {
        const size_t rb = rbs[c], nr = 5000, n = 20000;
        unsigned char *table = malloc(nr * rb);
        for (size_t i = 0; i < nr * rb; i++)
            table[i] = (unsigned char)t_rand(&rs);
        uint64_t *rows = malloc(n * 8);
        for (size_t i = 0; i < n; i++)
            rows[i] = t_rand(&rs) % nr;
        rows[0] = nr - 1;
        void *a = guarded(n * rb), *b = guarded(n * rb);
        eg_err err;
        REQUIRE(!cpu->gather(table, nr, rb, rows, n, a, &err));
        CHECK_MSG(!cu->gather(table, nr, rb, rows, n, b, &err), "%s", err.msg);
        CHECK_MSG(!memcmp(a, b, n * rb), "row bytes %zu differ", rb);
        CHECK(guards_ok(b, n * rb));
        rows[n / 2] = nr;
        CHECK_EQ(cu->gather(table, nr, rb, rows, n, b, &err), EG_ERANGE);
        unguard(a);
        unguard(b);
        free(rows);
        free(table);
    }
}

TEST(cuda_parity_unique)
{
    NEED_CUDA(cu);
    const eg_backend *cpu;
    REQUIRE(!eg_backend_get("cpu", &cpu, NULL));
    uint64_t rs = 3;
    static const size_t ns[] = {0, 1, 1000, 300000};
    for (int c = 0; c < 4; c++) {
        const size_t n = ns[c];
        uint64_t *rows = malloc((n + 1) * 8), *a = guarded((n + 1) * 8), *b = guarded((n + 1) * 8);
        for (size_t i = 0; i < n; i++)
            rows[i] = t_rand(&rs) % (c == 3 ? 50000 : 1ull << 40);
        size_t na = 0, nb = 0;
        REQUIRE(!cpu->unique(rows, n, a, &na, NULL));
        CHECK(!cu->unique(rows, n, b, &nb, NULL));
        CHECK(na == nb && !memcmp(a, b, na * 8));
        CHECK(guards_ok(b, (n + 1) * 8));
        free(rows);
        unguard(a);
        unguard(b);
    }
}

TEST(cuda_parity_adam)
{
    NEED_CUDA(cu);
    const eg_backend *cpu;
    REQUIRE(!eg_backend_get("cpu", &cpu, NULL));
    const size_t n = 300;
    const uint32_t dim = 64;
    float *va = malloc(n * dim * 4), *ma = calloc(n * dim, 4), *sa = calloc(n * dim, 4);
    float *vb = malloc(n * dim * 4), *mb = calloc(n * dim, 4), *sb = calloc(n * dim, 4);
    float *g = malloc(n * dim * 4);
    uint32_t *ta = calloc(n, 4), *tb = calloc(n, 4);
    uint64_t rs = 4;
    for (size_t i = 0; i < n * dim; i++)
        va[i] = vb[i] = (float)((double)(t_rand(&rs) >> 11) * 0x1p-53 - 0.5);
    eg_adam hp = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .lr_mult = 5};
    for (int step = 0; step < 5; step++) {
        for (size_t i = 0; i < n * dim; i++)
            g[i] = (float)((double)(t_rand(&rs) >> 11) * 0x1p-53 - 0.5);
        REQUIRE(!cpu->adam(va, ma, sa, ta, g, n, dim, &hp, NULL));
        REQUIRE(!cu->adam(vb, mb, sb, tb, g, n, dim, &hp, NULL));
    }
    CHECK_MSG(!memcmp(va, vb, n * dim * 4) && !memcmp(ma, mb, n * dim * 4) &&
                  !memcmp(sa, sb, n * dim * 4) && !memcmp(ta, tb, n * 4),
              "Adam on CUDA is not bit-identical to the CPU's");
    free(va); free(ma); free(sa); free(vb); free(mb); free(sb); free(g); free(ta); free(tb);
}

static double relerr(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - (double)b[i]) * ((double)a[i] - (double)b[i]);
        den += (double)b[i] * (double)b[i];
    }
    return sqrt(num / (den > 0 ? den : 1e-300));
}

TEST(cuda_parity_layer)
{
    NEED_CUDA(cu);
    const eg_backend *cpu;
    REQUIRE(!eg_backend_get("cpu", &cpu, NULL));
    static const uint32_t shapes[][6] = {{1, 1, 1, 8, 8, 3}, {2, 9, 2, 16, 24, 3}, {3, 33, 4, 32, 64, 3},
                                         {1, 130, 4, 128, 256, 2}};
    uint64_t rs = 5;
    for (int c = 0; c < 4; c++) {
        const size_t B = shapes[c][0], T = shapes[c][1], hc = shapes[c][2], d = shapes[c][3],
                     De = shapes[c][4];
        eg_layer_dims dm = {.B = B, .T = T, .hc = (uint32_t)hc, .d = (uint32_t)d, .De = (uint32_t)De,
                            .kernel = 4, .dilation = shapes[c][5]};
        const size_t wn[8] = {hc * d * De, hc * d, d * De, d, hc * d, hc * d, hc * d, hc * d * 4};
        float *w[8], *ga[8], *gb[8];
        for (int i = 0; i < 8; i++) {
            w[i] = malloc(wn[i] * 4);
            ga[i] = malloc(wn[i] * 4);
            gb[i] = guarded(wn[i] * 4);
            for (size_t k = 0; k < wn[i]; k++)
                w[i][k] = (float)((i >= 4 && i <= 6 ? 1.0 : 0.0) +
                                  ((double)(t_rand(&rs) >> 11) * 0x1p-53 - 0.5) * 0.4);
        }
        const size_t ne = B * T * De, nh = B * T * hc * d;
        float *e = malloc(ne * 4), *h = malloc(nh * 4), *dout = malloc(nh * 4);
        for (size_t k = 0; k < ne; k++)
            e[k] = (float)((double)(t_rand(&rs) >> 11) * 0x1p-53 - 0.5);
        for (size_t k = 0; k < nh; k++) {
            h[k] = (float)((double)(t_rand(&rs) >> 11) * 0x1p-53 * 4 - 2);
            dout[k] = (float)((double)(t_rand(&rs) >> 11) * 0x1p-53 - 0.5);
        }
        eg_layer_weights lw = {w[0], c % 2 ? w[1] : NULL, w[2], c % 2 ? w[3] : NULL, w[4], w[5], w[6], w[7]};
        float *oa = malloc(nh * 4), *ob = guarded(nh * 4);
        eg_err err;
        REQUIRE(!cpu->layer_forward(&dm, &lw, e, h, oa, &err));
        CHECK_MSG(!cu->layer_forward(&dm, &lw, e, h, ob, &err), "%s", err.msg);
        CHECK_MSG(relerr(ob, oa, nh) < 1e-5, "shape %d forward: relative error %.3g", c, relerr(ob, oa, nh));
        CHECK(guards_ok(ob, nh * 4));
        float *dea = malloc(ne * 4), *deb = guarded(ne * 4), *dha = malloc(nh * 4), *dhb = guarded(nh * 4);
        eg_layer_grads A = {dea, dha, ga[0], c % 2 ? ga[1] : NULL, ga[2], c % 2 ? ga[3] : NULL, ga[4], ga[5], ga[6], ga[7]};
        eg_layer_grads Bg = {deb, dhb, gb[0], c % 2 ? gb[1] : NULL, gb[2], c % 2 ? gb[3] : NULL, gb[4], gb[5], gb[6], gb[7]};
        REQUIRE(!cpu->layer_backward(&dm, &lw, e, h, dout, &A, &err));
        CHECK_MSG(!cu->layer_backward(&dm, &lw, e, h, dout, &Bg, &err), "%s", err.msg);
        CHECK_MSG(relerr(deb, dea, ne) < 1e-5 && relerr(dhb, dha, nh) < 1e-5, "shape %d: de %.3g dh %.3g", c,
                  relerr(deb, dea, ne), relerr(dhb, dha, nh));
        for (int i = 0; i < 8; i++)
            if (i % 2 == 0 || c % 2) {
                CHECK_MSG(relerr(gb[i], ga[i], wn[i]) < 1e-5, "shape %d grad %d: %.3g", c, i,
                          relerr(gb[i], ga[i], wn[i]));
                CHECK(guards_ok(gb[i], wn[i] * 4));
            }
        for (int i = 0; i < 8; i++) {
            free(w[i]);
            free(ga[i]);
            unguard(gb[i]);
        }
        free(e); free(h); free(dout); free(oa); unguard(ob); free(dea); unguard(deb); free(dha); unguard(dhb);
    }
}

/* A bf16 store of spec_for(3, 4, 3000, 500) at `name` in the test folder, its
 * 700 raw ids projected by id * mult % 500; NULL when it cannot be built. */
static const char *bf16_store(const char *name, eg_spec *sp, uint32_t mult, uint64_t seed)
{
    const char *path = t_tmp_path(name);
    uint32_t proj[700];
    for (int i = 0; i < 700; i++)
        proj[i] = (uint32_t)(i * mult % 500);
    eg_store_params p = {.spec = sp, .dtype = EG_BF16, .seed = seed, .init_std = 0.1,
                         .projection = proj, .n_projection = 700};
    eg_err err;
    return eg_store_build(path, &p, NULL, &err) ? NULL : path;
}

TEST(cuda_parity_lookup_device_host_and_cached)
{
    /* the same store read by the CPU and by the GPU with its table in
     * device memory and in host memory: identical rows and bytes */
    const eg_backend *cpu;
    REQUIRE(!eg_backend_get("cpu", &cpu, NULL));
    eg_spec *sp = spec_for(3, 4, 3000, 500);
    REQUIRE(sp);
    const char *path = bf16_store("backend.store", sp, 3, 2);
    REQUIRE(path);
    eg_err err;
    eg_runtime *rt = NULL;
    REQUIRE(!eg_runtime_open(path, NULL, &rt, &err));
    const size_t S = 2, T = 100, H = eg_spec_n_heads(sp), rb = eg_store_get_info(eg_runtime_store(rt))->row_bytes;
    uint32_t ids[200];
    uint64_t rs = 6;
    for (int i = 0; i < 200; i++)
        ids[i] = (uint32_t)(t_rand(&rs) % 700);
    uint64_t *ra = malloc(S * T * H * 8), *rb2 = malloc(S * T * H * 8);
    unsigned char *oa = malloc(S * T * H * rb), *ob = guarded(S * T * H * rb);
    REQUIRE(!cpu->lookup(rt, 1, 0, ids, S, T, ra, oa, &err));
    /* the CPU lookup is the runtime's hash and the store's rows */
    uint64_t *rr = malloc(S * T * H * 8);
    REQUIRE(!eg_rt_hash(rt, 1, ids, S, T, NULL, NULL, rr, S * T * H, &err));
    CHECK(!memcmp(ra, rr, S * T * H * 8));
    free(rr);
    const eg_backend *cu = cuda_or_skip();
    if (cu) {
        /* 3: cached (a device cache of 1/16 of the rows, batches of 256 staged
         * one ahead, the last batch marked dirty and written back) */
        for (int where = 0; where < 4; where++) {
            CHECK_MSG(!cu->lookup(rt, 1, where, ids, S, T, rb2, ob, &err), "residency %d: %s", where, err.msg);
            CHECK_MSG(!memcmp(ra, rb2, S * T * H * 8) && !memcmp(oa, ob, S * T * H * rb),
                      "residency %d differs from the CPU", where);
            CHECK(guards_ok(ob, S * T * H * rb));
        }
        /* the write-back gave the runtime the rows it had */
        REQUIRE(!cpu->lookup(rt, 1, 0, ids, S, T, rb2, ob, &err));
        CHECK(!memcmp(oa, ob, S * T * H * rb));
        /* a runtime on the row tier: the cached residency stages its loads
         * through the tier (prefetched), host residency is refused */
        eg_runtime_opts to = {.rows = EG_RT_ROWS_TIER, .tier = {.cache_bytes = 1u << 16}};
        eg_runtime *rt2 = NULL;
        REQUIRE(!eg_runtime_open(path, &to, &rt2, &err));
        CHECK(!eg_rt_prefetch(rt2, ids, S, T, NULL, NULL, &err));
        for (int where = 0; where < 4; where += 3) {
            CHECK_MSG(!cu->lookup(rt2, 1, where, ids, S, T, rb2, ob, &err), "tier, residency %d: %s",
                      where, err.msg);
            CHECK_MSG(!memcmp(ra, rb2, S * T * H * 8) && !memcmp(oa, ob, S * T * H * rb),
                      "tier, residency %d differs from the CPU", where);
            CHECK(guards_ok(ob, S * T * H * rb));
        }
        CHECK_EQ(cu->lookup(rt2, 1, 1, ids, S, T, rb2, ob, &err), EG_EUNSUPPORTED);
        CHECK_MSG(strstr(err.msg, "EG_CUDA_CACHED"), "%s", err.msg);
        eg_tier_stats ts;
        eg_rt_tier_stats(rt2, &ts);
        CHECK(ts.rows_read > 0);
        eg_runtime_close(rt2);
    }
    free(ra);
    free(rb2);
    free(oa);
    unguard(ob);
    eg_runtime_close(rt);
    eg_spec_free(sp);
    if (!cu)
        SKIP("no CUDA device: the CPU half of the case ran");
}

/* ---- the device row cache's directory, with the device emulated in host memory ---- */

#include "engram/eg_rowcache.h"

TEST(rowcache_pipelined_training_equals_the_table)
{
    /* batches of Zipf-like rows through a cache smaller than the rows they
     * touch, pipelined as eg_rowcache.h describes; every batch "trains" its
     * rows (slot or host table for direct rows). Every gathered row equals a
     * reference table that got the same changes, and after the final
     * write-back the host table equals the reference. */
    enum { ROWS = 5000, DIM = 4, BATCH = 300, BATCHES = 200 };
    const uint32_t ways_list[3] = {1, 4, 8};
    for (int wi = 0; wi < 3; wi++) {
        const uint32_t W = ways_list[wi];
        eg_rowcache *c = NULL;
        eg_err err;
        REQUIRE(!eg_rowcache_create(1500, W, &c, &err));
        const uint64_t S = eg_rowcache_slots(c);
        CHECK_EQ(S, 1500 / W * W);
        float *T = malloc(ROWS * DIM * 4), *R = malloc(ROWS * DIM * 4), *C = malloc(S * DIM * 4);
        REQUIRE(T && R && C);
        for (int i = 0; i < ROWS * DIM; i++)
            T[i] = R[i] = (float)i;
        static uint64_t rows[2][BATCH], slots[2][BATCH], lr[BATCH], ls[BATCH], wr[BATCH],
            ws[BATCH];
        uint64_t rs = 42 + W;
        size_t hits = 0, loads = 0, direct = 0, wbs = 0, bad = 0;
        for (int b = 0; b <= BATCHES; b++) {
            const int cur = b & 1, prev = cur ^ 1;
            eg_rowcache_plan_stats st = {0};
            if (b < BATCHES) {
                for (int i = 0; i < BATCH; i++) { /* skewed: small ids much more often */
                    const double u = (double)(t_rand(&rs) % 1000000) / 1e6;
                    rows[cur][i] = (uint64_t)(ROWS * u * u * u * u * u * u);
                }
                REQUIRE(!eg_rowcache_plan(c, rows[cur], BATCH, slots[cur], lr, ls, BATCH, wr, ws,
                                          BATCH, &st, &err));
            }
            if (b > 0) { /* batch b-1's step: +1 to each distinct row, once */
                uint64_t seen[BATCH];
                size_t ns = 0;
                for (int i = 0; i < BATCH; i++) {
                    const uint64_t r = rows[prev][i], sl = slots[prev][i];
                    int dup = 0;
                    for (size_t k = 0; k < ns; k++)
                        dup |= seen[k] == r;
                    if (dup)
                        continue;
                    seen[ns++] = r;
                    float *dst = sl == EG_ROWCACHE_DIRECT ? T + r * DIM : C + sl * DIM;
                    for (int k = 0; k < DIM; k++) {
                        dst[k] += 1.0f + (float)b;
                        R[r * DIM + k] += 1.0f + (float)b;
                    }
                }
                REQUIRE(!eg_rowcache_mark_dirty(c, slots[prev], BATCH, &err));
            }
            if (b == BATCHES)
                break;
            /* the copies of batch b: write-backs, then loads */
            for (size_t j = 0; j < st.writebacks; j++)
                memcpy(T + wr[j] * DIM, C + ws[j] * DIM, DIM * 4);
            for (size_t j = 0; j < st.loads; j++)
                memcpy(C + ls[j] * DIM, T + lr[j] * DIM, DIM * 4);
            /* gather batch b */
            for (int i = 0; i < BATCH; i++) {
                const uint64_t r = rows[cur][i], sl = slots[cur][i];
                const float *src = sl == EG_ROWCACHE_DIRECT ? T + r * DIM : C + sl * DIM;
                bad += memcmp(src, R + r * DIM, DIM * 4) != 0;
                bad += sl != EG_ROWCACHE_DIRECT && eg_rowcache_slot_row(c, sl) != r;
            }
            hits += st.hits;
            loads += st.loads;
            direct += st.direct;
            wbs += st.writebacks;
        }
        /* the checkpoint: every dirty row back to the table */
        uint64_t dr[64], dsl[64];
        size_t got;
        while ((got = eg_rowcache_take_dirty(c, dr, dsl, 64)) > 0)
            for (size_t j = 0; j < got; j++)
                memcpy(T + dr[j] * DIM, C + dsl[j] * DIM, DIM * 4);
        CHECK_MSG(!bad, "ways %u: %zu gathered rows differ from the reference", W, bad);
        CHECK_MSG(!memcmp(T, R, ROWS * DIM * 4), "ways %u: the table after write-back differs", W);
        CHECK_EQ(eg_rowcache_take_dirty(c, dr, dsl, 64), 0);
        /* the cache did its job: hits, evictions with write-backs */
        CHECK_MSG(hits > loads && wbs > 0, "ways %u: %zu hits, %zu loads, %zu write-backs", W,
                  hits, loads, wbs);
        if (W == 8)
            CHECK_MSG(direct < (size_t)BATCH * BATCHES / 100, "8 ways: %zu direct", direct);
        free(T);
        free(R);
        free(C);
        eg_rowcache_free(c);
    }
}

TEST(rowcache_pins_and_bad_arguments)
{
    eg_rowcache *c = NULL;
    eg_err err;
    CHECK_EQ(eg_rowcache_create(3, 4, &c, &err), EG_EINVAL);
    CHECK_EQ(eg_rowcache_create(8, 0, &c, &err), EG_EINVAL);
    CHECK_EQ(eg_rowcache_create(8, 65, &c, &err), EG_EINVAL);
    REQUIRE(!eg_rowcache_create(2, 2, &c, &err)); /* one set of two ways */
    uint64_t rows[3] = {10, 11, 12}, slots[3], lr[3], ls[3], wr[3], ws[3];
    eg_rowcache_plan_stats st;
    /* a set asked for more rows than ways in one batch: the extra one is direct */
    REQUIRE(!eg_rowcache_plan(c, rows, 3, slots, lr, ls, 3, wr, ws, 3, &st, &err));
    CHECK(st.loads == 2 && st.direct == 1 && slots[2] == EG_ROWCACHE_DIRECT);
    /* the next batch may not evict the previous batch's rows either */
    uint64_t r2[1] = {13}, s2[1];
    REQUIRE(!eg_rowcache_plan(c, r2, 1, s2, lr, ls, 1, wr, ws, 1, &st, &err));
    CHECK(st.direct == 1 && s2[0] == EG_ROWCACHE_DIRECT);
    /* two batches later it may: the least recently used way, written back if dirty */
    uint64_t r3[1] = {11}, s3[1];
    REQUIRE(!eg_rowcache_plan(c, r3, 1, s3, lr, ls, 1, wr, ws, 1, &st, &err)); /* hit; 10 older */
    CHECK(st.hits == 1 && st.loads == 0);
    REQUIRE(!eg_rowcache_mark_dirty(c, slots, 3, &err));
    REQUIRE(!eg_rowcache_plan(c, r2, 1, s2, lr, ls, 1, wr, ws, 1, &st, &err));
    CHECK(st.loads == 1 && lr[0] == 13 && ls[0] == slots[0]);
    CHECK(st.writebacks == 1 && wr[0] == 10 && ws[0] == slots[0]);
    /* errors: capacity (nothing changes), a reserved row id, a slot out of range */
    uint64_t big[3] = {20, 21, 22};
    CHECK_EQ(eg_rowcache_plan(c, big, 3, slots, lr, ls, 1, wr, ws, 3, &st, &err), EG_ECAPACITY);
    CHECK(strstr(err.msg, "need 2 entries"));
    big[1] = UINT64_MAX;
    CHECK_EQ(eg_rowcache_plan(c, big, 3, slots, lr, ls, 3, wr, ws, 3, &st, &err), EG_EINVAL);
    uint64_t oob = 2;
    CHECK_EQ(eg_rowcache_mark_dirty(c, &oob, 1, &err), EG_ERANGE);
    CHECK_EQ(eg_rowcache_slot_row(c, 5), EG_ROWCACHE_DIRECT);
    eg_rowcache_free(c);
    eg_rowcache_free(NULL);
}

TEST(cuda_parity_train_rows)
{
    /* a table trained on the device (state uploaded from the runtime, which
     * has trained rows already; three steps of repeated rows; synced back)
     * against the CPU runtime's reduce + Adam on a twin: every row's value,
     * m, v and step count bit for bit */
    const eg_backend *cpu;
    REQUIRE(!eg_backend_get("cpu", &cpu, NULL));
    eg_spec *sp = spec_for(3, 4, 3000, 500);
    REQUIRE(sp);
    const char *path = bf16_store("train.store", sp, 7, 3);
    REQUIRE(path);
    eg_err err;
    eg_runtime *a = NULL, *b = NULL;
    REQUIRE(!eg_runtime_open(path, NULL, &a, &err));
    REQUIRE(!eg_runtime_open(path, NULL, &b, &err));
    const size_t dim = eg_runtime_dim(a), lr = eg_spec_layer_rows(sp, 1), n = 500, S = 3;
    uint64_t *rows = malloc(S * n * 8);
    float *g = malloc(S * n * dim * 4);
    uint64_t rs = 9;
    for (size_t i = 0; i < S * n; i++) {
        rows[i] = t_rand(&rs) % 300 + (i % 5 == 0 ? lr - 300 : 0); /* repeats; both ends */
        for (size_t k = 0; k < dim; k++)
            g[i * dim + k] = (float)((double)(t_rand(&rs) >> 11) * 0x1p-53 - 0.5);
    }
    eg_adam hp = {.lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .lr_mult = 5};
    /* both runtimes have trained the first step's rows on the CPU already */
    REQUIRE(!cpu->train_rows(a, 1, rows, g, n, 1, &hp, &err));
    REQUIRE(!cpu->train_rows(b, 1, rows, g, n, 1, &hp, &err));
    REQUIRE(!cpu->train_rows(a, 1, rows, g, n, S, &hp, &err));
    const eg_backend *cu = cuda_or_skip();
    if (cu) {
        CHECK_MSG(!cu->train_rows(b, 1, rows, g, n, S, &hp, &err), "%s", err.msg);
        uint64_t *all = malloc(lr * 8);
        for (size_t r = 0; r < lr; r++)
            all[r] = r;
        float *sa = malloc(lr * dim * 12), *sb = malloc(lr * dim * 12);
        uint32_t *ta = malloc(lr * 4), *tb = malloc(lr * 4);
        REQUIRE(!eg_rt_get_rows_state(a, 1, all, lr, sa, sa + lr * dim, sa + 2 * lr * dim, ta, &err));
        REQUIRE(!eg_rt_get_rows_state(b, 1, all, lr, sb, sb + lr * dim, sb + 2 * lr * dim, tb, &err));
        CHECK_MSG(!memcmp(sa, sb, lr * dim * 12), "the device-trained rows differ from the CPU's");
        CHECK_MSG(!memcmp(ta, tb, lr * 4), "step counts differ");
        CHECK_EQ(eg_rt_trained_rows(a), eg_rt_trained_rows(b));
        /* a row out of range: an error, nothing trained */
        uint64_t bad[2] = {1, lr};
        float g2[32] = {1};
        CHECK_EQ(cu->train_rows(b, 1, bad, g2, 2, 1, &hp, &err), EG_ERANGE);
        free(all);
        free(sa);
        free(sb);
        free(ta);
        free(tb);
    }
    free(rows);
    free(g);
    eg_runtime_close(a);
    eg_runtime_close(b);
    eg_spec_free(sp);
    if (!cu) {
        eg_err e_;
        const eg_backend *x_;
        eg_backend_get("cuda", &x_, &e_);
        SKIP(e_.msg);
    }
}
