/* test_runtime.c - the CPU runtime: hashing with decode history and
 * barriers against the batch hash, gather, the layer's gradients against
 * finite differences, a short training loop with a checkpoint, bad input.
 * (Parity with PyTorch: tests/python/test_layer_torch.py, run from here.) */
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "engram/engram.h"
#include "engram/eg_runtime.h"
#include "eg_internal.h"
#include "test.h"

static const char *tpr(const char *name)
{
    static char pool[32][600];
    static unsigned i;
    char *d = pool[i++ % 32];
    snprintf(d, sizeof pool[0], "%s", t_tmp_path(name));
    return d;
}

static eg_spec *spec_n(uint32_t N, uint64_t vprime)
{
    char js[512];
    snprintf(js, sizeof js,
             "{\"engram_vocab_size\": [1009, 1500%s], \"max_ngram_size\": %u,"
             " \"n_embed_per_ngram\": 32, \"n_head_per_ngram\": 2, \"layer_ids\": [3, 9],"
             " \"pad_id\": 1, \"seed\": 5, \"kernel_size\": 4, \"hidden_size\": 16, \"hc_mult\": 2}",
             N == 4 ? ", 2000" : "", N);
    eg_config cfg;
    eg_spec *sp = NULL;
    if (eg_config_parse(js, strlen(js), "test", &cfg, NULL) || eg_spec_create(&cfg, vprime, 1, &sp, NULL))
        return NULL;
    return sp;
}

/* A store for spec sp at path (f32 rows unless dt says otherwise). */
static int make_store(const char *path, const eg_spec *sp, eg_dtype dt, const uint32_t *proj,
                      size_t np, const char *sha)
{
    eg_store_params p = {.spec = sp, .dtype = dt, .seed = 11, .init_std = 0.1, .projection = proj,
                         .n_projection = np, .tokenizer_sha256 = sha};
    eg_err err;
    return eg_store_build(path, &p, NULL, &err) == EG_OK;
}

TEST(rt_hash_equals_the_batch_hash_and_decodes_incrementally)
{
    for (uint32_t N = 3; N <= 4; N++) {
        eg_spec *sp = spec_n(N, 300);
        REQUIRE(sp);
        /* a projection of 400 raw ids onto 300 */
        uint32_t proj[400];
        for (uint32_t i = 0; i < 400; i++)
            proj[i] = (i * 7) % 300;
        const char *path = tpr("hash.store");
        REQUIRE(make_store(path, sp, EG_BF16, proj, 400, NULL));
        eg_runtime *rt = NULL;
        eg_err err;
        REQUIRE(!eg_runtime_open(path, NULL, &rt, &err));
        const size_t B = 3, T = 37, H = eg_spec_n_heads(sp);
        uint32_t raw[3 * 37], cmp[3 * 37];
        uint64_t rs = N;
        for (size_t i = 0; i < B * T; i++) {
            raw[i] = (uint32_t)(t_rand(&rs) % 400);
            cmp[i] = proj[raw[i]];
        }
        uint64_t *rows = malloc(B * T * H * sizeof *rows), *inc = malloc(B * T * H * sizeof *inc);
        uint32_t *ref = malloc(B * T * H * sizeof *ref);
        REQUIRE(rows && inc && ref);
        for (uint32_t li = 0; li < 2; li++) {
            REQUIRE(!eg_rt_hash(rt, li, raw, B, T, NULL, NULL, rows, B * T * H, &err));
            REQUIRE(!eg_hash_batch(sp, li, cmp, B, T, EG_HASH_OFFSETS | EG_HASH_REFERENCE, 1, ref,
                                   B * T * H, &err));
            int same = 1;
            for (size_t i = 0; i < B * T * H; i++)
                same &= rows[i] == ref[i];
            CHECK_MSG(same, "N=%u layer %u: rt hash differs from the batch hash", N, li);
            /* token by token with history, and in uneven pieces */
            for (int mode = 0; mode < 2; mode++) {
                eg_rt_history hist[3];
                eg_rt_history_reset(rt, hist, B);
                for (size_t b = 0; b < B; b++) {
                    size_t t = 0;
                    while (t < T) {
                        size_t n = mode == 0 ? 1 : 1 + (t_rand(&rs) % 6);
                        if (n > T - t)
                            n = T - t;
                        REQUIRE(!eg_rt_hash(rt, li, raw + b * T + t, 1, n, NULL, &hist[b],
                                            inc + (b * T + t) * H, n * H, &err));
                        t += n;
                    }
                }
                CHECK_MSG(!memcmp(inc, rows, B * T * H * sizeof *rows),
                          "N=%u layer %u mode %d: incremental hashing differs", N, li, mode);
            }
            /* a barrier at t: the sequence starts afresh there */
            uint8_t bar[3 * 37] = {0};
            bar[1 * T + 20] = 1;
            REQUIRE(!eg_rt_hash(rt, li, raw, B, T, bar, NULL, inc, B * T * H, &err));
            uint64_t *fresh = malloc((T - 20) * H * sizeof *fresh);
            REQUIRE(!eg_rt_hash(rt, li, raw + T + 20, 1, T - 20, NULL, NULL, fresh, (T - 20) * H, &err));
            CHECK(!memcmp(inc, rows, (T + 20) * H * sizeof *rows));
            CHECK(!memcmp(inc + (T + 20) * H, fresh, (T - 20) * H * sizeof *rows));
            CHECK(!memcmp(inc + 2 * T * H, rows + 2 * T * H, T * H * sizeof *rows));
            free(fresh);
        }
        /* bad input */
        raw[5] = 400;
        CHECK_EQ(eg_rt_hash(rt, 0, raw, B, T, NULL, NULL, rows, B * T * H, &err), EG_ERANGE);
        CHECK_MSG(strstr(err.msg, "position 5") && strstr(err.msg, "400"), "%s", err.msg);
        CHECK_EQ(eg_rt_hash(rt, 0, raw, B, T, NULL, NULL, rows, B * T * H - 1, &err), EG_ECAPACITY);
        CHECK_EQ(eg_rt_hash(rt, 2, raw, B, T, NULL, NULL, rows, B * T * H, &err), EG_ERANGE);
        free(rows);
        free(inc);
        free(ref);
        eg_runtime_close(rt);
        eg_spec_free(sp);
    }
}

TEST(rt_gather_dedups_and_converts)
{
    eg_spec *sp = spec_n(3, 300);
    REQUIRE(sp);
    const char *path = tpr("gather.store");
    REQUIRE(make_store(path, sp, EG_F16, NULL, 0, NULL));
    eg_runtime *rt = NULL;
    eg_err err;
    REQUIRE(!eg_runtime_open(path, NULL, &rt, &err));
    const uint32_t dim = eg_runtime_dim(rt);
    CHECK_EQ(dim, 16);
    uint64_t rows[200];
    uint64_t rs = 4;
    for (int i = 0; i < 200; i++)
        rows[i] = t_rand(&rs) % 50 * 97 % eg_spec_layer_rows(sp, 1); /* many repeats */
    float *f = malloc(200 * dim * 4 + 64), want[16];
    uint16_t *h = malloc(200 * dim * 2 + 64);
    REQUIRE(f && h);
    memset(f, 0xAB, 200 * dim * 4 + 64);
    REQUIRE(!eg_rt_gather(rt, 1, rows, 200, EG_F32, f, 200 * dim * 4, &err));
    REQUIRE(!eg_rt_gather(rt, 1, rows, 200, EG_BF16, h, 200 * dim * 2, &err));
    eg_store *st = NULL;
    REQUIRE(!eg_store_open(path, 0, &st, &err));
    int ok = 1;
    for (int i = 0; i < 200; i++) {
        REQUIRE(!eg_store_read_rows(st, 1, rows[i], 1, want, 16, &err));
        ok &= !memcmp(f + i * dim, want, dim * 4);
        for (uint32_t k = 0; k < dim; k++)
            ok &= h[i * dim + k] == eg_f32_to_bf16(want[k]);
    }
    CHECK(ok);
    /* guard bytes after the output stay untouched */
    const unsigned char *g = (const unsigned char *)(f + 200 * dim);
    for (int i = 0; i < 64; i++)
        CHECK(g[i] == 0xAB);
    eg_store_close(st);
    rows[7] = eg_spec_layer_rows(sp, 1);
    CHECK_EQ(eg_rt_gather(rt, 1, rows, 200, EG_F32, f, 200 * dim * 4, &err), EG_ERANGE);
    CHECK_EQ(eg_rt_gather(rt, 1, rows, 200, EG_F32, f, 200 * dim * 4 - 1, &err), EG_ECAPACITY);
    CHECK_EQ(eg_rt_gather(rt, 1, rows, 200, EG_F16, f, 200 * dim * 4, &err), EG_EINVAL);
    free(f);
    free(h);
    eg_runtime_close(rt);
    eg_spec_free(sp);
}

/* ---- the layer: gradients against finite differences ---------------------------- */

typedef struct {
    eg_layer_dims dm;
    float *w[8]; /* w_k b_k w_v b_v norm_k norm_q norm_c conv */
    size_t n[8];
    float *e, *h, *r; /* inputs, the loss weights */
    size_t ne, nh, no;
} layer_case;

static void case_init(layer_case *c, size_t B, size_t T, uint32_t hc, uint32_t d, uint32_t De,
                      uint64_t seed)
{
    memset(c, 0, sizeof *c);
    c->dm = (eg_layer_dims){.B = B, .T = T, .hc = hc, .d = d, .De = De, .kernel = 4, .dilation = 3,
                            .eps_kq = 1e-6f, .eps_conv = 1e-5f};
    const size_t sz[8] = {(size_t)hc * d * De, (size_t)hc * d, (size_t)d * De, d, (size_t)hc * d,
                          (size_t)hc * d, (size_t)hc * d, (size_t)hc * d * 4};
    uint64_t rs = seed;
    for (int i = 0; i < 8; i++) {
        c->n[i] = sz[i];
        c->w[i] = malloc(sz[i] * sizeof(float));
        for (size_t k = 0; k < sz[i]; k++) {
            double u = (double)(t_rand(&rs) >> 11) * 0x1p-53 * 2 - 1;
            c->w[i][k] = (float)(i >= 4 && i <= 6 ? 1.0 + 0.3 * u : (i == 7 ? 0.5 : 0.3) * u);
        }
    }
    c->ne = B * T * De;
    c->nh = B * T * hc * d;
    c->no = c->nh;
    c->e = malloc(c->ne * 4);
    c->h = malloc(c->nh * 4);
    c->r = malloc(c->no * 4);
    for (size_t k = 0; k < c->ne; k++)
        c->e[k] = (float)((double)(t_rand(&rs) >> 11) * 0x1p-53 * 2 - 1);
    for (size_t k = 0; k < c->nh; k++)
        c->h[k] = (float)((double)(t_rand(&rs) >> 11) * 0x1p-53 * 4 - 2);
    for (size_t k = 0; k < c->no; k++)
        c->r[k] = (float)((double)(t_rand(&rs) >> 11) * 0x1p-53 * 2 - 1);
}

static void case_free(layer_case *c)
{
    for (int i = 0; i < 8; i++)
        free(c->w[i]);
    free(c->e);
    free(c->h);
    free(c->r);
}

static eg_layer_weights case_weights(const layer_case *c)
{
    return (eg_layer_weights){c->w[0], c->w[1], c->w[2], c->w[3], c->w[4], c->w[5], c->w[6], c->w[7]};
}

static double loss(const layer_case *c)
{
    float *out = malloc(c->no * 4);
    eg_layer_weights w = case_weights(c);
    if (eg_layer_forward(&c->dm, &w, c->e, c->h, out, 1, NULL)) {
        free(out);
        return (double)NAN;
    }
    double l = 0;
    for (size_t k = 0; k < c->no; k++)
        l += (double)out[k] * (double)c->r[k];
    free(out);
    return l;
}

TEST(layer_gradients_against_finite_differences)
{
    layer_case c;
    case_init(&c, 2, 9, 2, 8, 12, 17);
    float *g[8];
    for (int i = 0; i < 8; i++)
        g[i] = malloc(c.n[i] * 4);
    float *de = malloc(c.ne * 4), *dh = malloc(c.nh * 4);
    eg_layer_grads gr = {de, dh, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]};
    eg_layer_weights w = case_weights(&c);
    eg_err err;
    REQUIRE(!eg_layer_backward(&c.dm, &w, c.e, c.h, c.r, &gr, 1, &err));
    /* directional derivatives along random directions, central differences */
    float *tensors[10] = {c.w[0], c.w[1], c.w[2], c.w[3], c.w[4], c.w[5], c.w[6], c.w[7], c.e, c.h};
    const float *grads[10] = {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], de, dh};
    const size_t sizes[10] = {c.n[0], c.n[1], c.n[2], c.n[3], c.n[4], c.n[5], c.n[6], c.n[7], c.ne, c.nh};
    static const char *names[10] = {"w_k", "b_k", "w_v", "b_v", "norm_k", "norm_q", "norm_c", "conv", "e", "h"};
    uint64_t rs = 99;
    for (int ti = 0; ti < 10; ti++) {
        float *x = tensors[ti];
        float *dir = malloc(sizes[ti] * 4), *save = malloc(sizes[ti] * 4);
        memcpy(save, x, sizes[ti] * 4);
        double an = 0;
        for (size_t k = 0; k < sizes[ti]; k++) {
            dir[k] = (float)((double)(t_rand(&rs) >> 11) * 0x1p-53 * 2 - 1);
            an += (double)dir[k] * (double)grads[ti][k];
        }
        const double hstep = 1e-2;
        for (size_t k = 0; k < sizes[ti]; k++)
            x[k] = save[k] + (float)hstep * dir[k];
        double lp = loss(&c);
        for (size_t k = 0; k < sizes[ti]; k++)
            x[k] = save[k] - (float)hstep * dir[k];
        double lm = loss(&c);
        memcpy(x, save, sizes[ti] * 4);
        const double fd = (lp - lm) / (2 * hstep);
        CHECK_MSG(fabs(fd - an) <= 2e-2 * fmax(1.0, fabs(an)), "%s: analytic %.6g, finite difference %.6g",
                  names[ti], an, fd);
        free(dir);
        free(save);
    }
    /* the thread count does not change a bit */
    float *o1 = malloc(c.no * 4), *o2 = malloc(c.no * 4), *de2 = malloc(c.ne * 4);
    float *gk2 = malloc(c.n[0] * 4);
    REQUIRE(!eg_layer_forward(&c.dm, &w, c.e, c.h, o1, 1, &err));
    REQUIRE(!eg_layer_forward(&c.dm, &w, c.e, c.h, o2, 2, &err));
    CHECK(!memcmp(o1, o2, c.no * 4));
    eg_layer_grads gr2 = gr;
    gr2.de = de2;
    gr2.dw_k = gk2;
    REQUIRE(!eg_layer_backward(&c.dm, &w, c.e, c.h, c.r, &gr2, 2, &err));
    CHECK(!memcmp(de, de2, c.ne * 4) && !memcmp(g[0], gk2, c.n[0] * 4));
    /* bad shapes */
    eg_layer_dims bad = c.dm;
    bad.hc = 0;
    CHECK_EQ(eg_layer_forward(&bad, &w, c.e, c.h, o1, 1, &err), EG_EINVAL);
    w.conv = NULL;
    CHECK_EQ(eg_layer_forward(&c.dm, &w, c.e, c.h, o1, 1, &err), EG_EINVAL);
    free(o1);
    free(o2);
    free(de2);
    free(gk2);
    for (int i = 0; i < 8; i++)
        free(g[i]);
    free(de);
    free(dh);
    case_free(&c);
}

TEST(layer_saved_forward_backward_equals_the_recomputing_one)
{
    for (int bias = 0; bias < 2; bias++) {
        layer_case c;
        case_init(&c, 3, 21, 2, 16, 24, 70 + (uint64_t)bias);
        eg_layer_weights w = case_weights(&c);
        if (!bias)
            w.b_k = w.b_v = NULL;
        float *g1[8], *g2[8];
        for (int i = 0; i < 8; i++) {
            g1[i] = malloc(c.n[i] * 4);
            g2[i] = malloc(c.n[i] * 4);
        }
        float *de1 = malloc(c.ne * 4), *dh1 = malloc(c.nh * 4), *de2 = malloc(c.ne * 4),
              *dh2 = malloc(c.nh * 4), *o1 = malloc(c.no * 4), *o2 = malloc(c.no * 4);
        eg_layer_grads a = {de1, dh1, g1[0], g1[1], g1[2], g1[3], g1[4], g1[5], g1[6], g1[7]};
        eg_layer_grads b = {de2, dh2, g2[0], g2[1], g2[2], g2[3], g2[4], g2[5], g2[6], g2[7]};
        eg_err err;
        REQUIRE(!eg_layer_forward(&c.dm, &w, c.e, c.h, o1, 2, &err));
        REQUIRE(!eg_layer_backward(&c.dm, &w, c.e, c.h, c.r, &a, 2, &err));
        const size_t nb = eg_layer_saved_bytes(&c.dm);
        double *saved = malloc(nb + 8);
        /* too small, and misaligned: refused */
        CHECK_EQ(eg_layer_forward_save(&c.dm, &w, c.e, c.h, o2, saved, nb - 1, 1, &err), EG_ECAPACITY);
        CHECK_EQ(eg_layer_forward_save(&c.dm, &w, c.e, c.h, o2, (char *)saved + 4, nb, 1, &err),
                 EG_ECAPACITY);
        REQUIRE(!eg_layer_forward_save(&c.dm, &w, c.e, c.h, o2, saved, nb, 1, &err));
        CHECK(!memcmp(o1, o2, c.no * 4));
        /* another call in between (the thread's workspace is reused) changes nothing */
        REQUIRE(!eg_layer_forward(&c.dm, &w, c.e, c.h, o1, 2, &err));
        REQUIRE(!eg_layer_backward_saved(&c.dm, &w, c.e, c.h, c.r, saved, nb, &b, 1, &err));
        CHECK(!memcmp(de1, de2, c.ne * 4) && !memcmp(dh1, dh2, c.nh * 4));
        for (int i = 0; i < 8; i++)
            if ((i != 1 && i != 3) || bias)
                CHECK_MSG(!memcmp(g1[i], g2[i], c.n[i] * 4), "weight gradient %d differs", i);
        CHECK_EQ(eg_layer_backward_saved(&c.dm, &w, c.e, c.h, c.r, saved, nb - 8, &b, 1, &err),
                 EG_ECAPACITY);
        free(saved);
        for (int i = 0; i < 8; i++) {
            free(g1[i]);
            free(g2[i]);
        }
        free(de1);
        free(dh1);
        free(de2);
        free(dh2);
        free(o1);
        free(o2);
        case_free(&c);
    }
}

TEST(layer_every_vector_width_gives_the_same_bits)
{
    /* the projections' kernels at 512, 256 and 128 bits (as far as this CPU
     * goes) and their tails (odd rows, odd columns, 2 threads): the forward,
     * the saved backward and the recomputing one bit for bit the same */
    const uint32_t shapes[][5] = {{3, 21, 2, 16, 24}, {2, 37, 1, 40, 72}, {1, 7, 3, 8, 20}};
    for (int sh = 0; sh < 3; sh++) {
        layer_case c;
        case_init(&c, shapes[sh][0], shapes[sh][1], shapes[sh][2], shapes[sh][3], shapes[sh][4],
                  90 + (uint64_t)sh);
        eg_layer_weights w = case_weights(&c);
        float *ref = NULL;
        size_t nref = c.no + c.ne + c.nh;
        for (int i = 0; i < 8; i++)
            nref += c.n[i];
        const int widths[3] = {512, 256, 128};
        int ran = 0;
        for (int wi = 0; wi < 3; wi++) {
            if (eg_layer_gemm_width_limit(widths[wi]) != widths[wi])
                continue; /* beyond this CPU */
            ran++;
            float *all = malloc(nref * 4), *p = all;
            float *o = p, *de = (p += c.no), *dh = (p += c.ne), *g[8];
            p += c.nh;
            for (int i = 0; i < 8; i++) {
                g[i] = p;
                p += c.n[i];
            }
            eg_layer_grads gr = {de, dh, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]};
            eg_err err;
            REQUIRE(!eg_layer_forward(&c.dm, &w, c.e, c.h, o, 2, &err));
            REQUIRE(!eg_layer_backward(&c.dm, &w, c.e, c.h, c.r, &gr, 2, &err));
            if (!ref) {
                ref = all;
                continue;
            }
            CHECK_MSG(!memcmp(ref, all, nref * 4), "shape %d: %d bits differ from %d", sh,
                      widths[wi], widths[0]);
            free(all);
        }
        CHECK(ran >= 1);
        free(ref);
        case_free(&c);
    }
    eg_layer_gemm_width_limit(0);
}

/* ---- decoding: piece by piece equals the whole sequence ---------------------------- */

TEST(layer_decode_piece_by_piece_equals_the_whole_forward)
{
    const size_t B = 3, T = 29;
    const uint32_t dils[2] = {3, 2};
    for (int di = 0; di < 2; di++) {
        layer_case c;
        case_init(&c, B, T, 2, 8, 12, 40 + (uint64_t)di);
        c.dm.dilation = dils[di];
        eg_layer_weights w = case_weights(&c);
        const size_t CH = (size_t)c.dm.hc * c.dm.d, De = c.dm.De;
        float *whole = malloc(c.no * 4), *piece = malloc(c.no * 4);
        eg_err err;
        REQUIRE(!eg_layer_forward(&c.dm, &w, c.e, c.h, whole, 2, &err));
        eg_layer_state *st = NULL;
        REQUIRE(!eg_layer_state_create(B, c.dm.hc, c.dm.d, c.dm.kernel, c.dm.dilation, &st, &err));
        /* a prompt of 7, then single tokens, then a piece of 5, then single tokens:
         * pieces shorter and longer than the conv's reach (9 and 6 positions) */
        const size_t cuts[] = {7, 1, 1, 1, 5, 1, 2, 1, 1, 10};
        size_t t0 = 0;
        for (size_t ci = 0; ci < sizeof cuts / sizeof cuts[0] && t0 < T; ci++) {
            const size_t n = cuts[ci] < T - t0 ? cuts[ci] : T - t0;
            float *e = malloc(B * n * De * 4), *h = malloc(B * n * CH * 4), *o = malloc(B * n * CH * 4);
            for (size_t b = 0; b < B; b++) {
                memcpy(e + b * n * De, c.e + (b * T + t0) * De, n * De * 4);
                memcpy(h + b * n * CH, c.h + (b * T + t0) * CH, n * CH * 4);
            }
            eg_layer_dims dm = c.dm;
            dm.T = n;
            CHECK(!eg_layer_decode(&dm, &w, e, h, st, o, 1 + (int)(ci % 2), &err));
            for (size_t b = 0; b < B; b++)
                memcpy(piece + (b * T + t0) * CH, o + b * n * CH, n * CH * 4);
            free(e);
            free(h);
            free(o);
            t0 += n;
        }
        REQUIRE(t0 == T);
        CHECK_EQ(eg_layer_state_seen(st, 1), T);
        CHECK_MSG(!memcmp(whole, piece, c.no * 4), "dilation %u: decoded outputs differ from the whole forward",
                  dils[di]);
        /* a reset sequence starts afresh: its first position equals position 0 */
        eg_layer_state_reset(st, 1, 1);
        CHECK_EQ(eg_layer_state_seen(st, 1), 0);
        eg_layer_dims one = c.dm;
        one.T = 1;
        float *e1 = malloc(B * De * 4), *h1 = malloc(B * CH * 4), *o1 = malloc(B * CH * 4);
        for (size_t b = 0; b < B; b++) {
            memcpy(e1 + b * De, c.e + b * T * De, De * 4);
            memcpy(h1 + b * CH, c.h + b * T * CH, CH * 4);
        }
        REQUIRE(!eg_layer_decode(&one, &w, e1, h1, st, o1, 1, &err));
        CHECK(!memcmp(o1 + CH, whole + T * CH, CH * 4));   /* sequence 1 at its start */
        CHECK(memcmp(o1, whole, CH * 4) != 0);             /* sequence 0 is not at its start */
        /* a call of another shape than the state is refused */
        one.B = B + 1;
        CHECK_EQ(eg_layer_decode(&one, &w, e1, h1, st, o1, 1, &err), EG_EINVAL);
        CHECK(strstr(err.msg, "state") != NULL);
        free(e1);
        free(h1);
        free(o1);
        eg_layer_state_free(st);
        eg_layer_state_free(NULL);
        free(whole);
        free(piece);
        case_free(&c);
    }
}

/* ---- training: a loop, a checkpoint, a reopen ---------------------------------------- */

/* One step on layer li for the batch ids: hash, gather, forward, backward,
 * reduce, Adam. Returns the unique rows touched (caller frees). */

/* In a child forked from this (OpenMP-using) process, libgomp's thread pool
 * is gone and the first parallel region would wait for it forever: the child
 * runs single-threaded (see docs/RUNTIME.md, "fork"). */
static void forked_child_single_thread(void)
{
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
}

static uint64_t *train_step(eg_runtime *rt, uint32_t li, const uint32_t *ids, size_t B, size_t T,
                            layer_case *c, size_t *n_uniq)
{
    const size_t H = eg_spec_n_heads(eg_runtime_spec(rt)), dim = eg_runtime_dim(rt);
    const size_t n = B * T * H;
    uint64_t *rows = malloc(n * 8), *uniq = malloc(n * 8);
    float *e = malloc(n * dim * 4), *usum = malloc(n * dim * 4);
    float *g[8];
    for (int i = 0; i < 8; i++)
        g[i] = malloc(c->n[i] * 4);
    float *de = malloc(n * dim * 4), *dh = malloc(c->nh * 4);
    eg_layer_grads gr = {de, dh, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]};
    eg_layer_weights w = case_weights(c);
    eg_adam hp = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .lr_mult = 5};
    int ok = !eg_rt_hash(rt, li, ids, B, T, NULL, NULL, rows, n, NULL) &&
             !eg_rt_gather(rt, li, rows, n, EG_F32, e, n * dim * 4, NULL) &&
             !eg_layer_backward(&c->dm, &w, e, c->h, c->r, &gr, 0, NULL) &&
             !eg_rt_reduce_rows(rt, rows, de, n, uniq, usum, n_uniq, NULL) &&
             !eg_rt_adam_step(rt, li, uniq, usum, *n_uniq, &hp, NULL);
    for (int i = 0; i < 8; i++)
        free(g[i]);
    free(de);
    free(dh);
    free(rows);
    free(e);
    free(usum);
    if (!ok) {
        free(uniq);
        return NULL;
    }
    return uniq;
}

TEST(rt_training_loop_checkpoint_and_reopen)
{
    eg_spec *sp = spec_n(3, 300);
    REQUIRE(sp);
    const char *path = tpr("train.store");
    const char *sha = "abababababababababababababababababababababababababababababababab";
    REQUIRE(make_store(path, sp, EG_BF16, NULL, 0, sha));
    eg_runtime *rt = NULL, *twin = NULL;
    eg_err err;
    eg_runtime_opts o = {.expect_tokenizer_sha256 = sha, .expect_spec = sp};
    REQUIRE(!eg_runtime_open(path, &o, &rt, &err));
    REQUIRE(!eg_runtime_open(path, &o, &twin, &err));
    const size_t B = 2, T = 6, H = eg_spec_n_heads(sp), dim = eg_runtime_dim(rt);
    layer_case c; /* De = H * dim = 4 * 16 = 64, d = 16, hc = 2 */
    case_init(&c, B, T, 2, 16, (uint32_t)(H * dim), 3);
    uint32_t ids[12];
    uint64_t rs = 8;
    for (int i = 0; i < 12; i++)
        ids[i] = (uint32_t)(t_rand(&rs) % 300);
    /* values before */
    const uint64_t probe_untouched = 5, lr = eg_spec_layer_rows(sp, 0);
    float before_u[16], after_u[16];
    REQUIRE(!eg_rt_gather(rt, 0, &probe_untouched, 1, EG_F32, before_u, sizeof before_u, &err));
    {   /* untrained bf16 rows come straight from the map (eg_store_gather_encoded) */
        uint64_t many[300];
        for (int i = 0; i < 300; i++)
            many[i] = (uint64_t)(i * 7919) % lr;
        uint16_t *hb = malloc(300 * 16 * 2), *want = malloc(16 * 2);
        REQUIRE(!eg_rt_gather(rt, 0, many, 300, EG_BF16, hb, 300 * 16 * 2, &err));
        eg_store *s0 = NULL;
        REQUIRE(!eg_store_open(path, 0, &s0, &err));
        int same = 1;
        for (int i = 0; i < 300; i++) {
            REQUIRE(!eg_store_read_encoded(s0, 0, many[i], 1, want, 32, &err));
            same &= !memcmp(hb + i * 16, want, 32);
        }
        CHECK(same);
        eg_store_close(s0);
        many[123] = lr;
        CHECK_EQ(eg_rt_gather(rt, 0, many, 300, EG_BF16, hb, 300 * 16 * 2, &err), EG_ERANGE);
        CHECK_MSG(strstr(err.msg, "at 123"), "%s", err.msg);
        free(hb);
        free(want);
    }
    size_t nu = 0;
    uint64_t *uniq = train_step(rt, 0, ids, B, T, &c, &nu);
    REQUIRE(uniq && nu > 0);
    size_t nu2 = 0;
    free(train_step(twin, 0, ids, B, T, &c, &nu2));
    int touched_untouched = 0;
    for (size_t i = 0; i < nu; i++)
        touched_untouched |= uniq[i] == probe_untouched;
    REQUIRE(!touched_untouched);
    CHECK_EQ(eg_rt_trained_rows(rt), nu);
    /* touched rows changed, an untouched one did not */
    eg_store *st = NULL;
    REQUIRE(!eg_store_open(path, 0, &st, &err));
    float now[16], orig[16];
    int changed = 1;
    for (size_t i = 0; i < nu; i++) {
        REQUIRE(!eg_rt_gather(rt, 0, &uniq[i], 1, EG_F32, now, sizeof now, &err));
        REQUIRE(!eg_store_read_rows(st, 0, uniq[i], 1, orig, 16, &err));
        changed &= memcmp(now, orig, sizeof now) != 0;
    }
    CHECK(changed);
    REQUIRE(!eg_rt_gather(rt, 0, &probe_untouched, 1, EG_F32, after_u, sizeof after_u, &err));
    CHECK(!memcmp(before_u, after_u, sizeof before_u));
    /* bf16 out of a bf16 store (the copying path): trained and stored rows */
    {
        uint64_t two[2] = {uniq[0], probe_untouched};
        uint16_t hb[32];
        float f2[32];
        REQUIRE(!eg_rt_gather(rt, 0, two, 2, EG_BF16, hb, sizeof hb, &err));
        REQUIRE(!eg_rt_gather(rt, 0, two, 2, EG_F32, f2, sizeof f2, &err));
        for (int k = 0; k < 32; k++)
            CHECK(hb[k] == eg_f32_to_bf16(f2[k]));
        two[1] = eg_spec_layer_rows(sp, 0);
        CHECK_EQ(eg_rt_gather(rt, 0, two, 2, EG_BF16, hb, sizeof hb, &err), EG_ERANGE);
        CHECK(strstr(err.msg, ">= layer 0"));
    }
    /* a reader holding the old generation keeps it through the checkpoint */
    float old_view[16];
    REQUIRE(!eg_store_read_rows(st, 0, uniq[0], 1, old_view, 16, &err));
    REQUIRE(!eg_rt_checkpoint(rt, NULL, &err));
    REQUIRE(!eg_store_read_rows(st, 0, uniq[0], 1, orig, 16, &err));
    CHECK(!memcmp(old_view, orig, sizeof orig));
    CHECK(!eg_store_verify(path, NULL, &err));
    eg_store_close(st);
    /* reopen: identical values and optimizer state; the next step matches the twin's */
    eg_runtime *re = NULL;
    REQUIRE(!eg_runtime_open(path, &o, &re, &err));
    CHECK_EQ(eg_rt_trained_rows(re), nu);
    float a[16], b[16];
    int same = 1;
    for (size_t i = 0; i < nu; i++) {
        REQUIRE(!eg_rt_gather(rt, 0, &uniq[i], 1, EG_F32, a, sizeof a, &err));
        REQUIRE(!eg_rt_gather(re, 0, &uniq[i], 1, EG_F32, b, sizeof b, &err));
        same &= !memcmp(a, b, sizeof a);
    }
    CHECK(same);
    size_t n3 = 0, n4 = 0;
    free(train_step(re, 0, ids, B, T, &c, &n3));
    free(train_step(twin, 0, ids, B, T, &c, &n4));
    same = n3 == n4;
    for (size_t i = 0; i < nu; i++) {
        REQUIRE(!eg_rt_gather(re, 0, &uniq[i], 1, EG_F32, a, sizeof a, &err));
        REQUIRE(!eg_rt_gather(twin, 0, &uniq[i], 1, EG_F32, b, sizeof b, &err));
        same &= !memcmp(a, b, sizeof a);
    }
    CHECK_MSG(same, "a step after checkpoint+reopen differs from a step without");
    /* readers of the store see the trained values (rounded to bf16) */
    eg_store *ns = NULL;
    REQUIRE(!eg_store_open(path, 0, &ns, &err));
    REQUIRE(!eg_store_read_rows(ns, 0, uniq[0], 1, b, 16, &err));
    REQUIRE(!eg_rt_gather(rt, 0, &uniq[0], 1, EG_F32, a, sizeof a, &err));
    for (int k = 0; k < 16; k++)
        CHECK(b[k] == eg_bf16_to_f32(eg_f32_to_bf16(a[k])));
    eg_store_close(ns);
    /* a store of another tokenizer is refused */
    eg_runtime *other = NULL;
    eg_runtime_opts o2 = {.expect_tokenizer_sha256 = "cd"};
    CHECK_EQ(eg_runtime_open(path, &o2, &other, &err), EG_EMISMATCH);
    CHECK(strstr(err.msg, "tokenizer"));
    eg_spec *sp4 = spec_n(4, 300);
    eg_runtime_opts o3 = {.expect_spec = sp4};
    CHECK_EQ(eg_runtime_open(path, &o3, &other, &err), EG_EMISMATCH);
    eg_spec_free(sp4);
    (void)lr;
    /* a checkpoint into a full disk: a clear error, the old store intact */
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        forked_child_single_thread();
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {64 << 10, 64 << 10};
        setrlimit(RLIMIT_FSIZE, &rl);
        size_t nx;
        free(train_step(rt, 0, ids, B, T, &c, &nx));
        eg_err e2;
        eg_status s2 = eg_rt_checkpoint(rt, NULL, &e2);
        _exit(s2 == EG_EIO && (strstr(e2.msg, "space") || strstr(e2.msg, "large")) ? 0 : 1);
    }
    int ws;
    waitpid(pid, &ws, 0);
    CHECK_MSG(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "checkpoint into a full disk: status %d", ws);
    CHECK(!eg_store_verify(path, NULL, &err));
    free(uniq);
    eg_runtime_close(re);
    eg_runtime_close(rt);
    eg_runtime_close(twin);
    case_free(&c);
    eg_spec_free(sp);
}

/* Run a Python test script with the library and the CLI of this build; the
 * script's output is the failure message. */
static void run_python_tests(const char *script, const char *log_name)
{
    const char *py = getenv("ENGRAM_PY_TESTS");
    if (py && !strcmp(py, "0"))
        SKIP("Python tests do not run in the sanitizer build (make test runs them)");
    if (system("/usr/bin/python3 -c 'import torch, numpy' >/dev/null 2>&1") != 0)
        SKIP("python3-torch is not installed (scripts/install-deps.sh installs it)");
    char cmd[1600];
    const char *bin = getenv("ENGRAM_BIN");
    snprintf(cmd, sizeof cmd,
             "ENGRAM_LIB=%s ENGRAM_BIN=%s /usr/bin/python3 %s >%s 2>&1",
             getenv("ENGRAM_LIB") ? getenv("ENGRAM_LIB") : "build/libengram.so",
             bin ? bin : "build/engram", script, tpr(log_name));
    int rc = system(cmd);
    char *log = t_read_file(tpr(log_name), NULL);
    CHECK_MSG(WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "%s", log ? log : "(no output)");
    free(log);
}

TEST(rt_parity_with_pytorch)
{
    /* tests/python/test_layer_torch.py drives libengram through the ctypes
     * binding and compares with a float64 PyTorch implementation */
    run_python_tests("tests/python/test_layer_torch.py", "torch.log");
}

TEST(torch_module_suite)
{
    /* engram.torch: gradcheck, the module against the C forward, the tables'
     * sparse Adam, a model that trains, checkpoint resume bit for bit,
     * decoding = the whole sequence, bad input, full and read-only disks */
    run_python_tests("tests/python/test_engram_torch.py", "torch-module.log");
}

/* A forked child's training loop: `steps` steps of 16 ids (drawn from seed;
 * the same ids and layer every step when `same`, else new ids each step,
 * alternating layers), a checkpoint after each; exits 0, or 3..5 on error. */
static void checkpoint_loop_child(const char *path, int steps, uint64_t seed, int same)
{
    forked_child_single_thread();
    eg_runtime *rt = NULL;
    if (eg_runtime_open(path, NULL, &rt, NULL))
        _exit(3);
    const size_t B = 2, T = 8;
    layer_case c;
    case_init(&c, B, T, 2, 16, (uint32_t)(eg_spec_n_heads(eg_runtime_spec(rt)) * 16), 7);
    uint32_t ids[16];
    for (int step = 0; step < steps; step++) {
        for (int i = 0; i < 16 && (!same || step == 0); i++)
            ids[i] = (uint32_t)(t_rand(&seed) % 300);
        size_t nu;
        uint64_t *u = train_step(rt, same ? 0 : (uint32_t)(step & 1), ids, B, T, &c, &nu);
        if (!u)
            _exit(4);
        free(u);
        if (eg_rt_checkpoint(rt, NULL, NULL))
            _exit(5);
    }
    eg_runtime_close(rt);
    _exit(0);
}

TEST(rt_checkpoint_kill9_trials)
{
    /* a child trains and checkpoints in a loop; killed at random moments
     * (24 trials), the store always opens complete and verifies, and a
     * runtime reopens it with its training state */
    eg_spec *sp = spec_n(3, 300);
    REQUIRE(sp);
    const char *path = tpr("kill-ckpt.store");
    REQUIRE(make_store(path, sp, EG_F32, NULL, 0, NULL));
    uint64_t rs = (uint64_t)getpid();
    int killed = 0, trained = 0;
    for (int trial = 0; trial < 100 && killed < 24; trial++) {
        pid_t pid = fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            checkpoint_loop_child(path, 1000, (uint64_t)trial, 0);
        }
        struct timespec d = {0, (long)(20 + t_rand(&rs) % 400) * 1000000L};
        nanosleep(&d, NULL);
        kill(pid, SIGKILL);
        int ws;
        waitpid(pid, &ws, 0);
        killed += WIFSIGNALED(ws);
        CHECK_MSG(WIFSIGNALED(ws) || (WIFEXITED(ws) && WEXITSTATUS(ws) == 0), "trial %d: child status %d",
                  trial, ws);
        eg_err err;
        eg_store_verify_report r;
        CHECK_MSG(!eg_store_verify(path, &r, &err), "trial %d: %s", trial, err.msg);
        eg_runtime *rt = NULL;
        CHECK_MSG(!eg_runtime_open(path, NULL, &rt, &err), "trial %d: %s", trial, err.msg);
        trained += rt && eg_rt_trained_rows(rt) > 0;
        eg_runtime_close(rt);
        if (t_failed_now())
            break;
    }
    CHECK_MSG(killed >= 24, "only %d checkpoint loops were interrupted", killed);
    /* the loops really checkpointed before they were killed */
    CHECK_MSG(trained * 2 >= killed, "only %d of %d trials left a trained generation", trained,
              killed);
    eg_spec_free(sp);
}

/* ---- readers during checkpoints; read-only and full filesystems ------------------ */

typedef struct {
    eg_store *s;
    uint32_t dim;
    int64_t step;   /* the step every trained row must share; -1 before the first */
    size_t rows, bad_step, bad_value;
} gen_check;

static eg_status gen_row(void *ctx, uint32_t li, uint64_t row, uint32_t step, const float *vals)
{
    gen_check *g = ctx;
    if (g->step < 0)
        g->step = step;
    g->bad_step += (int64_t)step != g->step;
    float stored[64];
    if (g->dim > 64 || eg_store_read_rows(g->s, li, row, 1, stored, g->dim, NULL))
        g->bad_value++;
    else
        g->bad_value += memcmp(stored, vals, g->dim * sizeof(float)) != 0;
    g->rows++;
    return EG_OK;
}

TEST(rt_concurrent_readers_see_whole_generations)
{
    /* a writer trains the same rows every step and checkpoints after each;
     * readers open the store by path meanwhile: every generation they see is
     * whole (every trained row at the same step, rows database = optimizer's
     * exact values, verify passes) and generations never go backwards */
    eg_spec *sp = spec_n(3, 300);
    REQUIRE(sp);
    const char *path = tpr("conc.store");
    REQUIRE(make_store(path, sp, EG_F32, NULL, 0, NULL));
    enum { STEPS = 40 };
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        checkpoint_loop_child(path, STEPS, 99, 1);
    }
    int64_t last = -1;
    int opens = 0, gens = 0, done = 0;
    while (!done) {
        int ws;
        done = waitpid(pid, &ws, WNOHANG) == pid;
        if (done)
            CHECK_MSG(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "writer status %d", ws);
        eg_err err;
        gen_check g = {.step = -1};
        CHECK_MSG(!eg_store_open(path, 0, &g.s, &err), "open %d: %s", opens, err.msg);
        if (!g.s)
            break;
        g.dim = eg_store_get_info(g.s)->dim;
        CHECK_MSG(!eg_store_opt_foreach(g.s, gen_row, &g, &err), "%s", err.msg);
        CHECK_MSG(!g.bad_step && !g.bad_value, "open %d: %zu rows at another step, %zu rows "
                  "differing from the optimizer's values (of %zu)", opens, g.bad_step,
                  g.bad_value, g.rows);
        CHECK_MSG(g.step >= last, "generation went back: step %lld after %lld",
                  (long long)g.step, (long long)last);
        gens += g.step > last;
        last = g.step > last ? g.step : last;
        /* the generation this handle holds verifies, and a runtime opens it */
        eg_store_close(g.s);
        eg_runtime *rt = NULL;
        CHECK_MSG(!eg_runtime_open(path, NULL, &rt, &err), "%s", err.msg);
        eg_runtime_close(rt);
        opens++;
        if (t_failed_now())
            break;
    }
    if (!done) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    CHECK_EQ(last, STEPS); /* the final generation: every row at the last step */
    CHECK_MSG(gens >= 3, "the readers saw only %d generations in %d opens", gens, opens);
    CHECK(!eg_store_verify(path, NULL, NULL));
    eg_spec_free(sp);
}

/* In a private mount namespace (root only; skipped elsewhere): a store on a
 * small tmpfs that fills up, then the same filesystem remounted read-only.
 * Reading works read-only; a build or checkpoint into the full or read-only
 * filesystem fails with one line naming the path, and the previous store,
 * the runtime's state and the directory are as they were. */
#define FS_CHECK(cond, ...)                                                                  \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            FILE *lf_ = fopen(log, "a");                                                     \
            if (lf_) {                                                                       \
                fprintf(lf_, "line %d: ", __LINE__);                                         \
                fprintf(lf_, __VA_ARGS__);                                                   \
                fputc('\n', lf_);                                                            \
                fclose(lf_);                                                                 \
            }                                                                                \
            bad++;                                                                           \
        }                                                                                    \
    } while (0)

static int count_entries(const char *dir)
{
    char cmd[800];
    snprintf(cmd, sizeof cmd, "test $(ls -A '%s' | wc -l) -eq 1", dir);
    return system(cmd) == 0 ? 1 : 0;
}

static int fs_child(const char *dir, const char *src, const char *log)
{
    int bad = 0;
    if (unshare(CLONE_NEWNS) || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
        return 77;
    if (mount("tmpfs", dir, "tmpfs", 0, "size=3m"))
        return 77;
    forked_child_single_thread();
    char path[700];
    snprintf(path, sizeof path, "%s/t.store", dir);
    size_t n = 0;
    char *bytes = t_read_file(src, &n);
    FS_CHECK(bytes && !t_write_file(path, bytes, n), "copying the store onto the tmpfs");
    free(bytes);
    eg_err err;
    eg_runtime *rt = NULL;
    FS_CHECK(!eg_runtime_open(path, NULL, &rt, &err), "open: %s", err.msg);
    if (!rt)
        return 1;
    const size_t B = 2, T = 8;
    layer_case c;
    case_init(&c, B, T, 2, 16, (uint32_t)(eg_spec_n_heads(eg_runtime_spec(rt)) * 16), 7);
    uint32_t ids[16];
    for (int i = 0; i < 16; i++)
        ids[i] = (uint32_t)(i * 37 % 300);
    size_t nu = 0;
    uint64_t *u = train_step(rt, 0, ids, B, T, &c, &nu);
    FS_CHECK(u && nu, "training step");
    float before[16], after[16];
    FS_CHECK(u && !eg_rt_gather(rt, 0, u, 1, EG_F32, before, sizeof before, &err), "gather");
    /* fill the tmpfs: the next generation has no room */
    char filler[700];
    snprintf(filler, sizeof filler, "%s/filler", dir);
    FILE *f = fopen(filler, "w");
    static char chunk[4096];
    while (f && fwrite(chunk, 1, sizeof chunk, f) == sizeof chunk && !fflush(f))
        ;
    if (f)
        fclose(f);
    eg_status s = eg_rt_checkpoint(rt, NULL, &err);
    FS_CHECK(s == EG_EIO && strstr(err.msg, "t.store") && strstr(err.msg, "space") &&
                 !strchr(err.msg, '\n'),
             "checkpoint into a full tmpfs: status %d, '%s'", s, err.msg);
    FS_CHECK(!eg_store_verify(path, NULL, &err), "verify after a full disk: %s", err.msg);
    FS_CHECK(!eg_rt_gather(rt, 0, u, 1, EG_F32, after, sizeof after, &err) &&
                 !memcmp(before, after, sizeof after),
             "the runtime's trained rows changed after a failed checkpoint");
    unlink(filler);
    FS_CHECK(count_entries(dir), "files left in the full tmpfs");
    /* read-only */
    FS_CHECK(!mount(NULL, dir, NULL, MS_REMOUNT | MS_RDONLY, NULL), "remount read-only");
    eg_store *st = NULL;
    FS_CHECK(!eg_store_open(path, 0, &st, &err), "open on a read-only fs: %s", err.msg);
    eg_store_close(st);
    FS_CHECK(!eg_store_verify(path, NULL, &err), "verify on a read-only fs: %s", err.msg);
    eg_runtime *ro = NULL;
    FS_CHECK(!eg_runtime_open(path, NULL, &ro, &err), "runtime on a read-only fs: %s", err.msg);
    eg_runtime_close(ro);
    s = eg_rt_checkpoint(rt, NULL, &err);
    FS_CHECK(s == EG_EIO && strstr(err.msg, "t.store") && strstr(err.msg, "Read-only") &&
                 !strchr(err.msg, '\n'),
             "checkpoint into a read-only fs: status %d, '%s'", s, err.msg);
    FS_CHECK(!eg_rt_gather(rt, 0, u, 1, EG_F32, after, sizeof after, &err) &&
                 !memcmp(before, after, sizeof after),
             "the runtime's trained rows changed after a failed checkpoint");
    /* the CLI: one line naming the path, exit 1 */
    char args[1400];
    snprintf(args, sizeof args, "verify %s", path);
    FS_CHECK(t_cli("%s", args) == 0, "engram verify on a read-only fs: %s", t_cli_stderr());
    const char *cfg = getenv("ENGRAM_FS_CFG");
    FS_CHECK(t_cli("build -c %s -V 300 -o %s -q", cfg, path) == 1 &&
                 strstr(t_cli_stderr(), "t.store") && strstr(t_cli_stderr(), "Read-only"),
             "engram build into a read-only fs: '%s'", t_cli_stderr());
    FS_CHECK(count_entries(dir), "files left in the read-only tmpfs");
    free(u);
    case_free(&c);
    eg_runtime_close(rt);
    umount(dir);
    return bad ? 1 : 0;
}

TEST(rt_read_only_and_full_filesystems)
{
    if (geteuid() != 0)
        SKIP("needs root for a private mount namespace with a tmpfs");
    eg_spec *sp = spec_n(3, 300);
    REQUIRE(sp);
    const char *src = tpr("fs-src.store");
    REQUIRE(make_store(src, sp, EG_F32, NULL, 0, NULL));
    const char *dir = tpr("fsmnt"), *log = tpr("fs.log"), *cfg = tpr("fs.json");
    const char *js = "{\"engram_vocab_size\": [1009, 1500], \"max_ngram_size\": 3,"
                     " \"n_embed_per_ngram\": 32, \"n_head_per_ngram\": 2, \"layer_ids\": [3, 9],"
                     " \"pad_id\": 1, \"seed\": 5, \"kernel_size\": 4, \"hidden_size\": 16,"
                     " \"hc_mult\": 2}";
    REQUIRE(!t_write_file(cfg, js, strlen(js)));
    setenv("ENGRAM_FS_CFG", cfg, 1);
    REQUIRE(!mkdir(dir, 0755) || errno == EEXIST);
    unlink(log);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0)
        _exit(fs_child(dir, src, log));
    int ws;
    waitpid(pid, &ws, 0);
    if (WIFEXITED(ws) && WEXITSTATUS(ws) == 77)
        SKIP("cannot make a private mount namespace with a tmpfs here");
    char *l = t_read_file(log, NULL);
    CHECK_MSG(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "status %d: %s", ws, l ? l : "(no log)");
    free(l);
    eg_spec_free(sp);
}

TEST(rt_set_rows_reach_gather_and_checkpoint)
{
    eg_spec *sp = spec_n(3, 300);
    REQUIRE(sp);
    const char *path = tpr("set.store");
    REQUIRE(make_store(path, sp, EG_BF16, NULL, 0, NULL));
    eg_runtime *rt = NULL;
    eg_err err;
    REQUIRE(!eg_runtime_open(path, NULL, &rt, &err));
    const uint32_t dim = eg_runtime_dim(rt);
    REQUIRE(dim == 16);
    uint64_t rows[3] = {7, 900, 7}; /* a repeat: the later one wins */
    float v[3][16], got[2][16];
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 16; k++)
            v[i][k] = (float)(i * 100 + k) + 0.25f;
    REQUIRE(!eg_rt_set_rows(rt, 1, rows, &v[0][0], 3, &err));
    REQUIRE(!eg_rt_gather(rt, 1, rows, 2, EG_F32, got, sizeof got, &err));
    CHECK(!memcmp(got[0], v[2], sizeof got[0]) && !memcmp(got[1], v[1], sizeof got[1]));
    CHECK_EQ(eg_rt_trained_rows(rt), 2);
    REQUIRE(!eg_rt_checkpoint(rt, NULL, &err));
    eg_runtime *re = NULL;
    REQUIRE(!eg_runtime_open(path, NULL, &re, &err));
    float again[2][16];
    REQUIRE(!eg_rt_gather(re, 1, rows, 2, EG_F32, again, sizeof again, &err));
    CHECK(!memcmp(again, got, sizeof got)); /* exact: the optimizer database keeps binary32 */
    uint64_t bad = eg_spec_layer_rows(sp, 1);
    CHECK_EQ(eg_rt_set_rows(rt, 1, &bad, v[0], 1, &err), EG_ERANGE);
    CHECK_EQ(eg_rt_set_rows(rt, 2, rows, v[0], 1, &err), EG_ERANGE);
    eg_runtime_close(re);
    eg_runtime_close(rt);
    eg_spec_free(sp);
}

TEST(rt_rows_state_moves_training_between_runtimes)
{
    /* runtime A trains; the state of the rows it touched, read with
     * eg_rt_get_rows_state and set into a fresh runtime B of the same store,
     * makes B continue bit for bit: the next steps give both the same rows,
     * m, v and step counts (what a device-trained table relies on) */
    eg_spec *sp = spec_n(3, 300);
    REQUIRE(sp);
    const char *path = tpr("state.store");
    REQUIRE(make_store(path, sp, EG_BF16, NULL, 0, NULL));
    eg_runtime *a = NULL, *b = NULL;
    eg_err err;
    REQUIRE(!eg_runtime_open(path, NULL, &a, &err));
    REQUIRE(!eg_runtime_open(path, NULL, &b, &err));
    const uint32_t dim = eg_runtime_dim(a);
    const uint64_t lr = eg_spec_layer_rows(sp, 1);
    enum { N = 64 };
    uint64_t rows[N], uq[N];
    float g[N * 16], us[N * 16];
    uint64_t rs = 11;
    eg_adam hp = {.lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .lr_mult = 5};
    for (int step = 0; step < 5; step++) {
        for (int i = 0; i < N; i++) {
            rows[i] = t_rand(&rs) % 97; /* repeats within and across steps */
            for (uint32_t k = 0; k < dim; k++)
                g[i * dim + k] = (float)((double)(t_rand(&rs) >> 11) * 0x1p-53 - 0.5);
        }
        size_t nu = 0;
        REQUIRE(!eg_rt_reduce_rows(a, rows, g, N, uq, us, &nu, &err));
        REQUIRE(!eg_rt_adam_step(a, 1, uq, us, nu, &hp, &err));
        if (step == 2) { /* hand A's state of rows 0..96 (trained or not) to B */
            uint64_t all[97];
            for (int i = 0; i < 97; i++)
                all[i] = (uint64_t)i;
            float *val = malloc(97 * dim * 4), *m = malloc(97 * dim * 4), *v = malloc(97 * dim * 4);
            uint32_t st[97];
            REQUIRE(!eg_rt_get_rows_state(a, 1, all, 97, val, m, v, st, &err));
            REQUIRE(!eg_rt_set_rows_state(b, 1, all, 97, val, m, v, st, &err));
            free(val);
            free(m);
            free(v);
        } else if (step > 2) {
            REQUIRE(!eg_rt_reduce_rows(b, rows, g, N, uq, us, &nu, &err));
            REQUIRE(!eg_rt_adam_step(b, 1, uq, us, nu, &hp, &err));
        }
    }
    uint64_t all[97];
    for (int i = 0; i < 97; i++)
        all[i] = (uint64_t)i;
    float *va = malloc(97 * dim * 4 * 3), *vb = malloc(97 * dim * 4 * 3);
    uint32_t sa[97], sb[97];
    REQUIRE(!eg_rt_get_rows_state(a, 1, all, 97, va, va + 97 * dim, va + 2 * 97 * dim, sa, &err));
    REQUIRE(!eg_rt_get_rows_state(b, 1, all, 97, vb, vb + 97 * dim, vb + 2 * 97 * dim, sb, &err));
    CHECK(!memcmp(va, vb, 97 * dim * 4 * 3));
    CHECK(!memcmp(sa, sb, sizeof sa));
    int trained = 0;
    for (int i = 0; i < 97; i++)
        trained += sa[i] > 0;
    CHECK(trained > 50 && trained < 97); /* some rows never trained: state zero, step 0 */
    for (int i = 0; i < 97; i++)
        if (!sa[i])
            for (uint32_t k = 0; k < dim; k++)
                CHECK(va[97 * dim + i * dim + k] == 0 && va[2 * 97 * dim + i * dim + k] == 0);
    /* a row out of range: an error naming it, nothing changed */
    uint64_t bad[2] = {5, lr};
    float one[32] = {0};
    uint32_t s2[2] = {1, 1};
    CHECK_EQ(eg_rt_set_rows_state(b, 1, bad, 2, one, one, one, s2, &err), EG_ERANGE);
    CHECK(strstr(err.msg, "row") != NULL);
    CHECK_EQ(eg_rt_get_rows_state(b, 1, bad, 2, one, one, one, s2, &err), EG_ERANGE);
    uint32_t s5;
    float x[16], mm[16], vv[16];
    REQUIRE(!eg_rt_get_rows_state(b, 1, bad, 1, x, mm, vv, &s5, &err));
    CHECK_EQ(s5, sb[5]);
    free(va);
    free(vb);
    eg_runtime_close(a);
    eg_runtime_close(b);
    eg_spec_free(sp);
}
