/* test_store.c - row encodings against independent references, the Philox
 * initializer, the LMDB store (build, open, rows, sparse, corruption, bad
 * files, map too small, full disk, kill -9 during build) and the CLI's
 * build / verify / export / import / inspect. */
#include <fcntl.h>
#include <jansson.h>
#include <lmdb.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engram/engram.h"
#include "test.h"

/* t_tmp_path's buffer rotates; these tests hold many paths at once */
static const char *tp(const char *name)
{
    static char pool[64][600];
    static unsigned i;
    char *d = pool[i++ % 64];
    snprintf(d, sizeof pool[0], "%s", t_tmp_path(name));
    return d;
}

static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- encodings --------------------------------------------------------------- */

TEST(dtype_philox_known_answers)
{
    /* Random123's kat_vectors for philox4x32_10 */
    static const uint32_t kat[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d,
         0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09,
         0x94fdcceb, 0x5001e420, 0x24126ea1}};
    for (int i = 0; i < 3; i++) {
        uint32_t out[4];
        eg_philox4x32_10(kat[i], kat[i] + 4, out);
        CHECK_MSG(!memcmp(out, kat[i] + 6, 16), "KAT %d: %08x %08x %08x %08x", i, out[0], out[1],
                  out[2], out[3]);
    }
}

TEST(dtype_init_row_matches_the_definition)
{
    /* the vectorized generator against eg_dtype.h's rule, scalar */
    static const uint32_t dims[] = {1, 3, 4, 31, 32, 64, 65, 100, 256, 1000};
    uint64_t rs = 5;
    float got[1000], want[1000];
    for (int c = 0; c < 60; c++) {
        const uint32_t dim = dims[c % 10];
        const uint64_t seed = t_rand(&rs), row = c % 3 ? t_rand(&rs) >> (c % 40) : (uint64_t)c;
        const uint32_t layer = (uint32_t)(t_rand(&rs) % 64);
        const double std = c % 5 ? 0.02 : 1.0;
        eg_init_row(seed, layer, row, dim, std, got);
        const float a = (float)(std * sqrt(3.0));
        const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
        for (uint32_t i = 0; i < dim; i++) {
            const uint32_t ctr[4] = {(uint32_t)row, (uint32_t)(row >> 32), layer, i / 4};
            uint32_t w[4];
            eg_philox4x32_10(ctr, key, w);
            const float u = (float)((int32_t)(w[i % 4] >> 8) - (1 << 23)) * 0x1p-23f;
            want[i] = u * a;
            REQUIRE(u >= -1.0f && u < 1.0f);
        }
        CHECK_MSG(!memcmp(got, want, dim * sizeof *got), "case %d (dim %u) differs", c, dim);
    }
    /* the moments of a uniform with standard deviation 0.02 */
    double s = 0, s2 = 0;
    long n = 0;
    for (uint64_t row = 0; row < 2000; row++) {
        eg_init_row(1, 3, row, 64, 0.02, got);
        for (int i = 0; i < 64; i++, n++) {
            s += (double)got[i];
            s2 += (double)got[i] * (double)got[i];
        }
    }
    CHECK(fabs(s / (double)n) < 0.001);
    CHECK(fabs(sqrt(s2 / (double)n) - 0.02) < 0.0005);
    eg_init_row(1, 3, 0, 8, 0, got);
    for (int i = 0; i < 8; i++)
        CHECK(got[i] == 0.0f);
}

#ifdef __FLT16_MAX__
__extension__ typedef _Float16 f16_t;
TEST(dtype_init_rows_equal_row_by_row)
{
    /* the batch generator (four interleaved chains where AVX-512 exists)
     * against one row at a time, for every way rows split into groups */
    static const uint32_t dims[] = {1, 63, 64, 100, 128, 192, 256, 1000};
    static const uint64_t ns[] = {1, 2, 3, 4, 5, 9};
    static float got[9 * 1000], want[9 * 1000];
    for (size_t d = 0; d < sizeof dims / sizeof *dims; d++)
        for (size_t k = 0; k < sizeof ns / sizeof *ns; k++) {
            const uint64_t row0 = (uint64_t)d * 0x9E3779B97F4A7C15ull >> (k * 7);
            eg_init_rows(77 + d, 5, row0, ns[k], dims[d], 0.5, got);
            for (uint64_t i = 0; i < ns[k]; i++)
                eg_init_row(77 + d, 5, row0 + i, dims[d], 0.5, want + i * dims[d]);
            CHECK_MSG(!memcmp(got, want, ns[k] * dims[d] * sizeof *got), "dim %u, %llu rows",
                      dims[d], (unsigned long long)ns[k]);
        }
    eg_init_rows(1, 2, 3, 4, 64, 0, got);
    for (int i = 0; i < 256; i++)
        CHECK(got[i] == 0.0f);
    /* and the portable path, where this machine would take AVX-512: the
     * generator tests again in a child without it */
    if (!getenv("EG_NO_AVX512")) {
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "EG_NO_AVX512=1 /proc/%ld/exe dtype_init >%s 2>&1",
                 (long)getpid(), tp("noavx.log"));
        int rc = system(cmd);
        char *log = t_read_file(tp("noavx.log"), NULL);
        CHECK_MSG(WIFEXITED(rc) && WEXITSTATUS(rc) == 0 && log && strstr(log, "2 passed, 0 failed"),
                  "EG_NO_AVX512=1: %s", log ? log : "(no output)");
        free(log);
    }
}

TEST(dtype_f16_against_compiler_float16)
{
    /* every binary16 decodes like the compiler's _Float16 and encodes back */
    for (uint32_t h = 0; h < 65536; h++) {
        f16_t x;
        uint16_t hb = (uint16_t)h;
        memcpy(&x, &hb, 2);
        const float ref = (float)x, got = eg_f16_to_f32(hb);
        if (ref != ref) {
            CHECK(got != got);
            continue;
        }
        CHECK_MSG(f2u(ref) == f2u(got), "decode %04x", h);
        CHECK_MSG(eg_f32_to_f16(got) == hb, "round trip %04x", h);
    }
    /* encoding: random bit patterns, midpoints, the overflow edge, subnormals */
    uint64_t rs = 11;
    for (int i = 0; i < 400000; i++) {
        float f;
        if (i % 4 == 0) {
            f = u2f((uint32_t)t_rand(&rs));
        } else if (i % 4 == 1) { /* exactly between two halves */
            uint16_t a = (uint16_t)(t_rand(&rs) & 0x7bff);
            f = (eg_f16_to_f32(a) + eg_f16_to_f32((uint16_t)(a + 1))) / 2;
        } else {
            f = u2f(0x33000000u + (uint32_t)(t_rand(&rs) % 0x14800000u)); /* 2^-25 .. 2^16 */
        }
        if (i & 8)
            f = -f;
        if (f != f)
            continue;
        f16_t r = (f16_t)f;
        uint16_t rb;
        memcpy(&rb, &r, 2);
        CHECK_MSG(eg_f32_to_f16(f) == rb, "encode %a: %04x, compiler %04x", (double)f,
                  eg_f32_to_f16(f), rb);
        if (t_failed_now())
            return;
    }
}
#endif

/* Nearest representable by brute force (ties to the even encoding). */
static uint32_t nearest(double v, const double *table, uint32_t n, uint32_t mask_even)
{
    uint32_t best = 0;
    double bd = (double)INFINITY;
    for (uint32_t c = 0; c < n; c++) {
        if (table[c] != table[c])
            continue;
        double d = fabs(table[c] - v);
        if (d < bd || (d == bd && !(c & mask_even) && (best & mask_even))) {
            bd = d;
            best = c;
        }
    }
    return best;
}

TEST(dtype_bf16_against_brute_force)
{
    uint64_t rs = 3;
    for (int i = 0; i < 200000; i++) {
        float f = i % 2 ? u2f((uint32_t)t_rand(&rs))
                        : u2f(((uint32_t)(t_rand(&rs) % 0x7f00) << 16) | (i % 4 ? 0x8000 : 0x7fff));
        if (f != f || isinf(f))
            continue;
        const uint16_t got = eg_f32_to_bf16(f);
        const uint32_t hi = f2u(f) >> 16; /* the truncation and its neighbour above */
        const double lo_v = (double)eg_bf16_to_f32((uint16_t)hi);
        double hi_v = (double)eg_bf16_to_f32((uint16_t)(hi + 1));
        if (isinf(hi_v)) /* IEEE: the step past the largest finite is 2^128 */
            hi_v = copysign(ldexp(1.0, 128), hi_v);
        double d0 = fabs((double)f - lo_v), d1 = fabs((double)f - hi_v);
        uint16_t want = d0 < d1 ? (uint16_t)hi : d1 < d0 ? (uint16_t)(hi + 1)
                                                        : (uint16_t)((hi & 1) ? hi + 1 : hi);
        CHECK_MSG(got == want, "bf16 %a: %04x, want %04x", (double)f, got, want);
        CHECK(f2u(eg_bf16_to_f32(got)) == (uint32_t)got << 16);
        if (t_failed_now())
            return;
    }
    CHECK(eg_f32_to_bf16(NAN) != 0x7f80 && (eg_f32_to_bf16(NAN) & 0x7f80) == 0x7f80);
    CHECK_EQ(eg_f32_to_bf16(INFINITY), 0x7f80);
}

TEST(dtype_e4m3_against_brute_force)
{
    /* the OCP E4M3FN table, written independently of the decoder */
    double table[256];
    for (uint32_t c = 0; c < 256; c++) {
        const uint32_t e = (c >> 3) & 15, m = c & 7;
        double v = e ? ldexp(1.0 + m / 8.0, (int)e - 7) : ldexp(m / 8.0, -6);
        if (e == 15 && m == 7)
            v = (double)NAN;
        table[c] = c & 0x80 ? -v : v;
        if (v != v)
            CHECK(eg_e4m3_to_f32((uint8_t)c) != eg_e4m3_to_f32((uint8_t)c));
        else
            CHECK_MSG(eg_e4m3_to_f32((uint8_t)c) == (float)table[c], "decode %02x", c);
    }
    CHECK(eg_e4m3_to_f32(0x7e) == 448.0f && eg_e4m3_to_f32(0x38) == 1.0f &&
          eg_e4m3_to_f32(0x01) == 0x1p-9f && eg_e4m3_to_f32(0x08) == 0x1p-6f);
    uint64_t rs = 9;
    for (int i = 0; i < 60000; i++) {
        float f;
        if (i % 3 == 0) { /* midpoints of neighbours */
            uint32_t c = (uint32_t)(t_rand(&rs) % 0x7e);
            f = (float)((table[c] + table[c + 1]) / 2);
        } else {
            f = (float)ldexp((double)(t_rand(&rs) % 1000000) / 1e6 + 1.0, (int)(t_rand(&rs) % 24) - 14);
        }
        if (i & 1)
            f = -f;
        uint32_t want;
        if (fabsf(f) >= 448.0f)
            want = f < 0 ? 0xfe : 0x7e;
        else /* the magnitude, then the sign (a tiny negative is -0) */
            want = nearest(fabs((double)f), table, 128, 1) | (f < 0 ? 0x80 : 0);
        CHECK_MSG(eg_f32_to_e4m3(f) == want, "e4m3 %a: %02x, want %02x", (double)f,
                  eg_f32_to_e4m3(f), want);
        if (t_failed_now())
            return;
    }
    CHECK_EQ(eg_f32_to_e4m3(1e9f), 0x7e);
    CHECK_EQ(eg_f32_to_e4m3(-INFINITY), 0xfe);
    CHECK_EQ(eg_f32_to_e4m3(NAN) & 0x7f, 0x7f);
}

/* The row encoder (vectorized, branch-free) against the scalar rule it
 * replaced: each value ldexpf(v, 127 - scale), then eg_f32_to_e4m3; random
 * bit patterns (NaN, infinities, subnormals, every exponent) and groups whose
 * scale takes every value 0..254. */
TEST(dtype_fp8_vector_encoder_equals_the_scalar_rule)
{
    float v[64];
    unsigned char got[66], want[66];
    uint64_t rs = 99;
    long bad = 0;
    for (int trial = 0; trial < 40000; trial++) {
        for (int i = 0; i < 64; i++) {
            uint32_t u = (uint32_t)t_rand(&rs);
            if (trial & 1) /* values near one magnitude, so that scales vary over the range */
                u = (u & 0x807fffffu) | ((uint32_t)(trial / 2 % 255) << 23);
            memcpy(&v[i], &u, 4);
        }
        eg_row_encode(EG_FP8_E4M3, 64, v, got);
        for (int g = 0; g < 2; g++) {
            float amax = 0;
            for (int i = 0; i < 32; i++)
                amax = fabsf(v[g * 32 + i]) > amax || v[g * 32 + i] != v[g * 32 + i]
                           ? fabsf(v[g * 32 + i]) : amax;
            const uint8_t sc = eg_ue8m0_scale(amax);
            want[64 + g] = sc;
            for (int i = 0; i < 32; i++)
                want[g * 32 + i] = eg_f32_to_e4m3(ldexpf(v[g * 32 + i], 127 - (int)sc));
        }
        bad += memcmp(got, want, 66) != 0;
    }
    CHECK_EQ(bad, 0);
}

TEST(dtype_fp8_rows_ue8m0_groups)
{
    /* DeepSeek's recipe: 2^ceil(log2(max(amax, 1e-4) / 448)) */
    CHECK_EQ(eg_ue8m0_scale(448.0f), 127);
    CHECK_EQ(eg_ue8m0_scale(449.0f), 128);
    CHECK_EQ(eg_ue8m0_scale(224.0f), 126);
    CHECK_EQ(eg_ue8m0_scale(0.0f), 127 - 22); /* 1e-4/448 = 2.2e-7 -> 2^-22 */
    CHECK_EQ(eg_dtype_row_bytes(EG_FP8_E4M3, 64), 66);
    CHECK_EQ(eg_dtype_row_bytes(EG_FP8_E4M3, 48), 0);
    float v[128], back[128];
    unsigned char enc[132];
    uint64_t rs = 21;
    for (int trial = 0; trial < 200; trial++) {
        for (int i = 0; i < 128; i++)
            v[i] = (float)ldexp((double)(int64_t)(t_rand(&rs) % 2000001 - 1000000) / 1e6,
                                (i / 32) * 5 - 8 + trial % 7);
        eg_row_encode(EG_FP8_E4M3, 128, v, enc);
        eg_row_decode(EG_FP8_E4M3, 128, enc, back);
        for (int g = 0; g < 4; g++) {
            float amax = 0;
            for (int i = 0; i < 32; i++)
                amax = fmaxf(amax, fabsf(v[g * 32 + i]));
            const uint8_t sc = eg_ue8m0_scale(amax);
            CHECK_EQ(enc[128 + g], sc);
            const double scale = ldexp(1.0, sc - 127);
            for (int i = 0; i < 32; i++) {
                const float x = v[g * 32 + i];
                /* exactly the nearest e4m3 value of x / scale, times scale */
                CHECK(eg_f32_to_e4m3((float)((double)x / scale)) == enc[g * 32 + i]);
                CHECK(fabs((double)back[g * 32 + i] - (double)x) <= fmax(fabs((double)x) / 16, ldexp(scale, -10)));
            }
        }
        if (t_failed_now())
            return;
    }
}

/* ---- the store ---------------------------------------------------------------- */

static const char small_cfg[] =
    "{\"name\": \"store-test\", \"engram_vocab_size\": [2000, 3000], \"max_ngram_size\": 3,"
    " \"n_embed_per_ngram\": 64, \"n_head_per_ngram\": 2, \"layer_ids\": [1, 4], \"pad_id\": 0,"
    " \"seed\": 7, \"kernel_size\": 4, \"hidden_size\": 64, \"hc_mult\": 1}";

static eg_spec *small_spec(void)
{
    eg_config cfg;
    eg_spec *sp = NULL;
    eg_err err;
    if (eg_config_parse(small_cfg, strlen(small_cfg), "test", &cfg, &err) ||
        eg_spec_create(&cfg, 500, 0, &sp, &err))
        return NULL;
    return sp;
}

static const char *cfg_file(void)
{
    const char *p = tp("store-test.json");
    if (!t_file_exists(p))
        t_write_file(p, small_cfg, strlen(small_cfg));
    return p;
}

/* Every row of every layer equals the initializer's row through the dtype. */
static int rows_match_generator(eg_store *s)
{
    const eg_spec *sp = eg_store_spec(s);
    const eg_store_info *in = eg_store_get_info(s);
    float got[64], want[64];
    unsigned char enc[300];
    for (uint32_t li = 0; li < eg_spec_n_layers(sp); li++)
        for (uint64_t r = 0; r < eg_spec_layer_rows(sp, li); r += (r % 7) + 1) {
            eg_err err;
            if (eg_store_read_rows(s, li, r, 1, got, 64, &err))
                return 0;
            eg_init_row(in->seed, eg_spec_config(sp)->layer_ids[li], r, in->dim, in->init_std, want);
            eg_row_encode(in->dtype, in->dim, want, enc);
            eg_row_decode(in->dtype, in->dim, enc, want);
            if (memcmp(got, want, in->dim * sizeof *got))
                return 0;
            const void *p;
            if (eg_store_row_ptr(s, li, r, &p, &err) || (p && memcmp(p, enc, in->row_bytes)))
                return 0;
        }
    return 1;
}

TEST(store_build_open_every_dtype)
{
    eg_spec *sp = small_spec();
    REQUIRE(sp);
    uint32_t proj[600];
    for (int i = 0; i < 600; i++)
        proj[i] = (uint32_t)(i % 500);
    const char *keys[500];
    char kb[500][16];
    for (int i = 0; i < 500; i++) {
        snprintf(kb[i], sizeof kb[i], "k%d", i);
        keys[i] = kb[i];
    }
    const char *sha = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    for (int dt = 0; dt < EG_N_DTYPES; dt++) {
        const char *path = tp("dt.store");
        eg_store_params p = {.spec = sp, .projection = proj, .n_projection = 600,
                             .keys = keys, .tokenizer_sha256 = sha, .dtype = (eg_dtype)dt,
                             .seed = 42, .init_std = 0.5};
        eg_store_build_stats bs;
        eg_err err;
        CHECK_MSG(!eg_store_build(path, &p, &bs, &err), "build %d: %s", dt, err.msg);
        CHECK(!t_file_exists(tp("dt.store.tmp")));
        eg_store *s = NULL;
        REQUIRE(!eg_store_open(path, 0, &s, &err));
        const eg_store_info *in = eg_store_get_info(s);
        CHECK_EQ(in->dtype, dt);
        CHECK_EQ(in->dim, 32);
        CHECK_EQ(in->rows_total, eg_spec_layer_rows(sp, 0) + eg_spec_layer_rows(sp, 1));
        CHECK_EQ(in->blocks, bs.blocks);
        CHECK(!strcmp(in->tokenizer_sha256, sha));
        /* the reference spec: multipliers, primes and offsets as recorded */
        CHECK(!eg_store_expect(s, sha, sp, &err));
        CHECK_EQ(eg_store_expect(s, "ff", NULL, &err), EG_EMISMATCH);
        for (uint32_t li = 0; li < 2; li++) {
            CHECK(!memcmp(eg_spec_multipliers(eg_store_spec(s), li), eg_spec_multipliers(sp, li), 24));
            CHECK(!memcmp(eg_spec_primes(eg_store_spec(s), li), eg_spec_primes(sp, li), 4 * 8));
        }
        size_t n;
        const uint32_t *pj = eg_store_projection(s, &n);
        CHECK(n == 600 && pj && !memcmp(pj, proj, sizeof proj));
        CHECK(eg_store_key(s, 123) && !strcmp(eg_store_key(s, 123), "k123"));
        CHECK(!eg_store_key(s, 500));
        CHECK_MSG(rows_match_generator(s), "dtype %d: rows differ from the generator", dt);
        /* bad requests */
        float buf[64];
        CHECK_EQ(eg_store_read_rows(s, 2, 0, 1, buf, 64, &err), EG_ERANGE);
        CHECK_EQ(eg_store_read_rows(s, 0, eg_spec_layer_rows(sp, 0), 1, buf, 64, &err), EG_ERANGE);
        CHECK_EQ(eg_store_read_rows(s, 0, 0, 3, buf, 64, &err), EG_ECAPACITY);
        eg_store_close(s);
        eg_store_verify_report r;
        CHECK(!eg_store_verify(path, &r, &err));
        CHECK(r.meta_ok && r.blocks_checked == bs.blocks && !r.blocks_bad);
    }
    eg_spec_free(sp);
}

TEST(store_sparse_reads_the_generator)
{
    eg_spec *sp = small_spec();
    REQUIRE(sp);
    const uint32_t L = eg_spec_n_layers(sp);
    uint8_t *hit[2];
    for (uint32_t li = 0; li < L; li++) {
        hit[li] = calloc(eg_spec_layer_rows(sp, li) / 8 + 1, 1);
        REQUIRE(hit[li]);
    }
    hit[0][5] = 0x10;   /* row 44 */
    hit[1][1000] = 0x1; /* row 8000 */
    eg_store_params p = {.spec = sp, .dtype = EG_FP8_E4M3, .seed = 3, .init_std = 0.1,
                         .hit = (const uint8_t *const *)hit};
    eg_store_build_stats bs;
    eg_err err;
    const char *path = tp("sparse.store");
    REQUIRE(!eg_store_build(path, &p, &bs, &err));
    CHECK_EQ(bs.blocks, 2);
    eg_store *s = NULL;
    REQUIRE(!eg_store_open(path, 0, &s, &err));
    CHECK(eg_store_get_info(s)->sparse);
    const void *ptr;
    CHECK(!eg_store_row_ptr(s, 0, 44, &ptr, &err) && ptr);
    CHECK(!eg_store_row_ptr(s, 1, eg_spec_layer_rows(sp, 1) - 1, &ptr, &err) && !ptr);
    CHECK(rows_match_generator(s));
    eg_store_close(s);
    CHECK(!eg_store_verify(path, NULL, &err));
    /* the sparse store exports exactly what the dense one does */
    p.hit = NULL;
    REQUIRE(!eg_store_build(tp("dense.store"), &p, &bs, &err));
    CHECK_EQ(t_cli("export %s -o %s", path, tp("sparse.safetensors")), 0);
    CHECK_EQ(t_cli("export %s -o %s", tp("dense.store"), tp("dense.safetensors")), 0);
    size_t la, lb;
    void *a = t_read_file(tp("sparse.safetensors"), &la);
    void *b = t_read_file(tp("dense.safetensors"), &lb);
    CHECK(a && b && la == lb && !memcmp(a, b, la));
    free(a);
    free(b);
    for (uint32_t li = 0; li < L; li++)
        free(hit[li]);
    eg_spec_free(sp);
}

/* The file offset of a row's bytes (found by content; rows are random). */
static long find_bytes(const char *path, const void *needle, size_t n)
{
    size_t len;
    unsigned char *d = t_read_file(path, &len);
    long at = -1;
    for (size_t i = 0; d && i + n <= len; i++)
        if (!memcmp(d + i, needle, n)) {
            at = (long)i;
            break;
        }
    free(d);
    return at;
}

static int flip_byte(const char *path, long at)
{
    int fd = open(path, O_RDWR);
    unsigned char c = 0;
    int ok = fd >= 0 && pread(fd, &c, 1, at) == 1;
    c ^= 0x40;
    ok = ok && pwrite(fd, &c, 1, at) == 1;
    if (fd >= 0)
        close(fd);
    return ok;
}

TEST(store_flipped_byte_is_reported)
{
    eg_spec *sp = small_spec();
    REQUIRE(sp);
    eg_store_params p = {.spec = sp, .dtype = EG_BF16, .seed = 1, .init_std = 0.02};
    eg_err err;
    const char *path = tp("flip.store");
    REQUIRE(!eg_store_build(path, &p, NULL, &err));
    eg_store *s = NULL;
    REQUIRE(!eg_store_open(path, 0, &s, &err));
    const void *row;
    unsigned char copy[64];
    REQUIRE(!eg_store_row_ptr(s, 1, 4321, &row, &err) && row);
    memcpy(copy, row, 64);
    eg_store_close(s);
    long at = find_bytes(path, copy, 64);
    REQUIRE(at > 0);
    REQUIRE(flip_byte(path, at + 17));
    eg_store_verify_report r;
    CHECK_EQ(eg_store_verify(path, &r, &err), EG_EFORMAT);
    CHECK_EQ(r.blocks_bad, 1);
    CHECK_MSG(strstr(err.msg, "crc32 mismatch") && strstr(err.msg, "layer 1"), "%s", err.msg);
    CHECK_EQ(t_cli("verify %s", path), 1);
    CHECK(strstr(t_cli_stderr(), "corrupt"));
    /* a read of that block fails, a read elsewhere does not */
    REQUIRE(!eg_store_open(path, 0, &s, &err));
    float buf[32];
    CHECK_EQ(eg_store_read_rows(s, 1, 4321, 1, buf, 32, &err), EG_EFORMAT);
    CHECK(strstr(err.msg, "corrupt"));
    CHECK_EQ(eg_store_read_rows(s, 0, 7, 1, buf, 32, &err), EG_OK);
    eg_store_close(s);
    eg_spec_free(sp);
}

/* Rewrite one metadata value in place (a store from the future, a store
 * whose build did not finish). */
static int poke_meta(const char *path, const char *key, const void *val, size_t n)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    if (mdb_env_create(&env))
        return 0;
    mdb_env_set_maxdbs(env, 4);
    int ok = !mdb_env_open(env, path, MDB_NOSUBDIR | MDB_NOLOCK, 0644) &&
             !mdb_txn_begin(env, NULL, 0, &txn);
    if (ok) {
        MDB_val k = {strlen(key), (void *)(uintptr_t)key}, v = {n, (void *)(uintptr_t)val};
        ok = !mdb_dbi_open(txn, "meta", 0, &dbi) &&
             (val ? !mdb_put(txn, dbi, &k, &v, 0) : !mdb_del(txn, dbi, &k, NULL));
        ok = ok && !mdb_txn_commit(txn);
    }
    mdb_env_close(env);
    return ok;
}

TEST(store_bad_files)
{
    eg_err err;
    eg_store *s = NULL;
    const char *junk = tp("junk.store");
    t_write_file(junk, "this is not an LMDB file at all, just text ......", 48);
    CHECK_EQ(eg_store_open(junk, 0, &s, &err), EG_EFORMAT);
    CHECK(strstr(err.msg, "junk.store") && strstr(err.msg, "not an engram store"));
    CHECK_EQ(eg_store_open(tp("missing.store"), 0, &s, &err), EG_EIO);
    CHECK_EQ(eg_store_open(t_tmpdir(), 0, &s, &err), EG_EFORMAT);
    eg_spec *sp = small_spec();
    REQUIRE(sp);
    eg_store_params p = {.spec = sp, .dtype = EG_F16, .init_std = 0.02};
    const char *path = tp("meta.store");
    REQUIRE(!eg_store_build(path, &p, NULL, &err));
    const unsigned char v2[4] = {2, 0, 0, 0};
    REQUIRE(poke_meta(path, "format_version", v2, 4));
    CHECK_EQ(eg_store_open(path, 0, &s, &err), EG_EUNSUPPORTED);
    CHECK_MSG(strstr(err.msg, "format version 2") && strstr(err.msg, "upgrade"), "%s", err.msg);
    CHECK_EQ(t_cli("verify %s", path), 1);
    CHECK(strstr(t_cli_stderr(), "format version 2"));
    const unsigned char v1[4] = {1, 0, 0, 0};
    REQUIRE(poke_meta(path, "format_version", v1, 4));
    CHECK(!eg_store_verify(path, NULL, &err));
    REQUIRE(poke_meta(path, "complete", NULL, 0));
    CHECK_EQ(eg_store_open(path, 0, &s, &err), EG_EFORMAT);
    CHECK(strstr(err.msg, "incomplete"));
    /* primes that are not the config's schedule: open works, verify refuses */
    REQUIRE(!eg_store_build(path, &p, NULL, &err));
    unsigned char primes[2 * 4 * 8];
    for (int i = 0; i < 8; i++)
        for (int b = 0; b < 8; b++)
            primes[8 * i + b] = (unsigned char)(eg_spec_primes(sp, (uint32_t)i / 4)[i % 4] >> (8 * b));
    primes[0] ^= 2; /* another odd number: rows still add up differently -> open refuses */
    REQUIRE(poke_meta(path, "primes", primes, sizeof primes));
    CHECK_EQ(eg_store_open(path, 0, &s, &err), EG_EFORMAT);
    /* truncated (an interrupted copy): refused before any page is mapped
     * (reading past the end of a map is SIGBUS), at every cut */
    REQUIRE(!eg_store_build(path, &p, NULL, &err));
    size_t n = 0;
    unsigned char *whole = t_read_file(path, &n);
    REQUIRE(whole && n > 3 * 4096);
    const char *cut = tp("cut.store");
    const size_t cuts[] = {n - 1, n - 4096, n / 2, 2 * 4096 + 100, 4096, 100};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        REQUIRE(!t_write_file(cut, whole, cuts[i]));
        eg_status st = eg_store_open(cut, 0, &s, &err);
        CHECK_MSG(st == EG_EFORMAT && strstr(err.msg, "cut.store"), "cut at %zu: %d %s", cuts[i],
                  st, err.msg);
        CHECK_EQ(eg_store_verify(cut, NULL, &err), EG_EFORMAT);
    }
    REQUIRE(!t_write_file(cut, whole, n - 1));
    CHECK_EQ(t_cli("verify %s", cut), 1);
    CHECK_MSG(strstr(t_cli_stderr(), "truncated store"), "%s", t_cli_stderr());
    free(whole);
    eg_spec_free(sp);
}

/* A build removes the temporary files of killed builds of the same store
 * (unlocked and older than a minute), and nothing else. */
TEST(store_build_sweeps_stale_temporary_files)
{
    eg_spec *sp = small_spec();
    REQUIRE(sp);
    const char *path = tp("sweep.store");
    char dead[700], live[700], fresh[700], other[700];
    snprintf(dead, sizeof dead, "%s.tmp.4000001", path);
    snprintf(live, sizeof live, "%s.tmp.4000002", path);
    snprintf(fresh, sizeof fresh, "%s.tmp.4000003", path);
    snprintf(other, sizeof other, "%s.tmp.notes", path);
    const char *all[4] = {dead, live, fresh, other};
    struct timeval old[2];
    gettimeofday(&old[0], NULL);
    old[0].tv_sec -= 7200;
    old[1] = old[0];
    for (int i = 0; i < 4; i++) {
        REQUIRE(!t_write_file(all[i], "x", 1));
        if (i != 2)
            REQUIRE(!utimes(all[i], old));
    }
    int held = open(live, O_RDONLY); /* a build still running */
    REQUIRE(held >= 0 && !flock(held, LOCK_EX));
    eg_store_params p = {.spec = sp, .dtype = EG_F32, .seed = 1, .init_std = 0.02};
    eg_err err;
    REQUIRE(!eg_store_build(path, &p, NULL, &err));
    CHECK(!t_file_exists(dead));
    CHECK(t_file_exists(live));
    CHECK(t_file_exists(fresh));
    CHECK(t_file_exists(other));
    close(held);
    for (int i = 1; i < 4; i++)
        unlink(all[i]);
    eg_spec_free(sp);
}

TEST(store_map_too_small_keeps_the_previous_store)
{
    eg_spec *sp = small_spec();
    REQUIRE(sp);
    eg_store_params p = {.spec = sp, .dtype = EG_F32, .seed = 1, .init_std = 0.02};
    eg_err err;
    const char *path = tp("keep.store");
    REQUIRE(!eg_store_build(path, &p, NULL, &err));
    p.seed = 2;
    p.map_size = 256 << 10;
    CHECK_EQ(eg_store_build(path, &p, NULL, &err), EG_ECAPACITY);
    CHECK_MSG(strstr(err.msg, "map is too small"), "%s", err.msg);
    eg_store *s = NULL;
    REQUIRE(!eg_store_open(path, 0, &s, &err));
    CHECK_EQ(eg_store_get_info(s)->seed, 1);
    eg_store_close(s);
    CHECK(!eg_store_verify(path, NULL, &err));
    /* nothing left behind */
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    CHECK(!t_file_exists(tmp));
    /* the CLI says the same in one line */
    CHECK_EQ(t_cli("build -c %s -V 500 -o %s --map-size 300k", cfg_file(), path), 1);
    CHECK(strstr(t_cli_stderr(), "--map-size"));
    eg_spec_free(sp);
}

/* Run the CLI under a shell with a file-size limit (a full disk: EFBIG). */
static int cli_with_fsize(long kib, const char *args)
{
    const char *bin = getenv("ENGRAM_BIN");
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "sh -c 'trap \"\" XFSZ; ulimit -f %ld; exec %s %s' >%s 2>%s </dev/null", kib,
             bin && *bin ? bin : "build/engram", args, tp("fs.out"), tp("fs.err"));
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
}

TEST(cli_store_full_disk_keeps_the_previous_store)
{
    const char *path = tp("full.store");
    REQUIRE(t_cli("build -c %s -V 500 -o %s --seed 5 -q", cfg_file(), path) == 0);
    char args[1024];
    snprintf(args, sizeof args, "build -c %s -V 500 -o %s --seed 6 -q", cfg_file(), path);
    CHECK_EQ(cli_with_fsize(200, args), 1);
    char *e = t_read_file(tp("fs.err"), NULL);
    CHECK_MSG(e && strstr(e, "full.store") && (strstr(e, "space") || strstr(e, "too large")),
              "%s", e ? e : "(no stderr)");
    CHECK(e && !strchr(e, '\n')[1]); /* one line */
    free(e);
    eg_store *s = NULL;
    eg_err err;
    REQUIRE(!eg_store_open(path, 0, &s, &err));
    CHECK_EQ(eg_store_get_info(s)->seed, 5);
    eg_store_close(s);
    CHECK_EQ(t_cli("verify %s", path), 0);
}

TEST(cli_store_kill9_during_build)
{
    /* 20+ builds killed at random moments: the store always opens as the
     * previous complete one or the new complete one, and verifies */
    const char *cfg = tp("kill.json");
    const char *big =
        "{\"engram_vocab_size\": [60000, 90000], \"max_ngram_size\": 3, \"n_embed_per_ngram\": 128,"
        " \"n_head_per_ngram\": 2, \"layer_ids\": [1, 2], \"pad_id\": 0, \"seed\": 1,"
        " \"kernel_size\": 4, \"hidden_size\": 64, \"hc_mult\": 1}";
    REQUIRE(!t_write_file(cfg, big, strlen(big)));
    const char *path = tp("kill.store");
    const char *bin = getenv("ENGRAM_BIN");
    if (!bin || !*bin)
        bin = "build/engram";
    REQUIRE(t_cli("build -c %s -V 1000 -o %s --seed 100 -q", cfg, path) == 0);
    /* how long one build takes here */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    REQUIRE(t_cli("build -c %s -V 1000 -o %s --seed 101 -q", cfg, path) == 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    const double full = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    uint64_t rs = (uint64_t)time(NULL);
    int killed = 0, finished = 0;
    /* until 24 builds were really interrupted (a build that finished first
     * is checked the same way but does not count) */
    for (int trial = 0; trial < 100 && killed < 24; trial++) {
        char seed[32];
        snprintf(seed, sizeof seed, "%d", 200 + trial);
        pid_t pid = fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            int devnull = open("/dev/null", O_WRONLY);
            dup2(devnull, 1);
            dup2(devnull, 2);
            execl(bin, bin, "build", "-c", cfg, "-V", "1000", "-o", path, "--seed", seed, "-q",
                  (char *)NULL);
            _exit(127);
        }
        const double delay = full * 0.9 * (double)(t_rand(&rs) % 1000) / 1000.0;
        struct timespec d = {(time_t)delay, (long)((delay - (double)(time_t)delay) * 1e9)};
        nanosleep(&d, NULL);
        kill(pid, SIGKILL);
        int ws;
        waitpid(pid, &ws, 0);
        if (WIFSIGNALED(ws))
            killed++;
        else
            finished++;
        eg_store *s = NULL;
        eg_err err;
        CHECK_MSG(!eg_store_open(path, 0, &s, &err), "trial %d: %s", trial, err.msg);
        eg_store_close(s);
        eg_store_verify_report r;
        CHECK_MSG(!eg_store_verify(path, &r, &err), "trial %d: %s", trial, err.msg);
        if (t_failed_now())
            return;
    }
    CHECK_MSG(killed >= 24, "only %d of the builds were interrupted (%d finished)", killed, finished);
}

TEST(cli_store_export_import_round_trip)
{
    const char *cfg = cfg_file();
    for (int d = 0; d < 2; d++) {
        const char *dt = d ? "fp8_e4m3" : "bf16";
        const char *a = tp("rt.store"), *x = tp("rt.safetensors"),
                   *b = tp("rt2.store"), *y = tp("rt2.safetensors");
        CHECK_EQ(t_cli("build -c %s -V 500 -o %s -d %s --seed 9 --init-std 0.3 --json", cfg, a, dt), 0);
        CHECK_MSG(t_cli_stdout() && *t_cli_stdout(), "%s", t_cli_stderr());
        if (t_failed_now())
            return;
        json_t *j = json_loads(t_cli_stdout(), 0, NULL);
        CHECK(j && json_integer_value(json_object_get(j, "blocks")) > 0);
        json_decref(j);
        REQUIRE(t_cli("export %s -o %s", a, x) == 0);
        /* the safetensors header as PyTorch reads it */
        size_t len;
        unsigned char *f = t_read_file(x, &len);
        REQUIRE(f && len > 8);
        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--)
            hl = hl << 8 | f[i];
        REQUIRE(hl % 8 == 0 && 8 + hl <= len);
        json_t *h = json_loadb((char *)f + 8, hl, 0, NULL);
        REQUIRE(h);
        json_t *w = json_object_get(h, "engram.4.weight");
        CHECK(w && !strcmp(json_string_value(json_object_get(w, "dtype")), d ? "F8_E4M3" : "BF16"));
        CHECK(json_integer_value(json_array_get(json_object_get(w, "shape"), 1)) == 32);
        CHECK(!d || json_object_get(h, "engram.4.scale"));
        CHECK(json_object_get(json_object_get(h, "__metadata__"), "primes"));
        json_decref(h);
        free(f);
        /* import without a config (from the metadata), export again: same bytes */
        REQUIRE(t_cli("import %s -o %s", x, b) == 0);
        REQUIRE(t_cli("export %s -o %s", b, y) == 0);
        size_t l1, l2;
        void *p1 = t_read_file(x, &l1), *p2 = t_read_file(y, &l2);
        CHECK(p1 && p2 && l1 == l2 && !memcmp(p1, p2, l1));
        free(p1);
        free(p2);
        CHECK_EQ(t_cli("verify %s", b), 0);
        /* with the config given explicitly too */
        CHECK_EQ(t_cli("import %s -c %s -V 500 -o %s", x, cfg, b), 0);
    }
    /* tables that do not match the spec are refused, nothing written */
    const char *other = tp("other.json");
    char *o = strdup(small_cfg);
    char *seed = strstr(o, "\"seed\": 7");
    REQUIRE(seed);
    seed[8] = '8';
    t_write_file(other, o, strlen(o));
    free(o);
    const char *bad = tp("bad.store");
    CHECK_EQ(t_cli("import %s -c %s -V 500 -o %s", tp("rt.safetensors"), other, bad), 1);
    CHECK(strstr(t_cli_stderr(), "multipliers") && !t_file_exists(bad));
    CHECK_EQ(t_cli("import %s -c %s -V 501 -o %s", tp("rt.safetensors"), cfg, bad), 1);
    CHECK(!t_file_exists(bad));
    t_write_file(tp("trunc.safetensors"), "\x10\0\0\0\0\0\0\0{\"a\":", 13);
    CHECK_EQ(t_cli("import %s -o %s", tp("trunc.safetensors"), bad), 1);
    CHECK(strstr(t_cli_stderr(), "trunc.safetensors") && !t_file_exists(bad));
}

static int cmp_u64_desc(const void *a, const void *b)
{
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x > y ? -1 : x < y;
}

TEST(cli_inspect_occupancy_against_direct_hashing)
{
    /* a corpus of raw compressed ids, its counts, a store, and the inspection
     * checked against hashing each counted n-gram here */
    const char *cfg = cfg_file();
    uint32_t ids[20000];
    uint64_t rs = 77;
    for (int i = 0; i < 20000; i++)
        ids[i] = (uint32_t)(t_rand(&rs) % 50 + (i % 3 ? 0 : t_rand(&rs) % 450));
    const char *u32 = tp("ins.u32");
    REQUIRE(!t_write_file(u32, ids, sizeof ids));
    const char *counts = tp("ins.counts"), *store = tp("ins.store");
    REQUIRE(t_cli("count %s -V 500 -c %s --pad 0 -T 1000 -o %s -q", u32, cfg, counts) == 0);
    REQUIRE(t_cli("build -c %s -V 500 -o %s -q", cfg, store) == 0);
    REQUIRE(t_cli("inspect %s --counts %s --json --worst 4", store, counts) == 0);
    json_t *j = json_loads(t_cli_stdout(), 0, NULL);
    REQUIRE(j);
    eg_spec *sp = small_spec();
    eg_counts *c = NULL;
    eg_err err;
    REQUIRE(sp && !eg_counts_open(counts, &c, &err));
    uint64_t *masses = NULL, nm = 0, total = 0; /* every hit row's lookups, for the row cache */
    for (uint32_t li = 0; li < 2; li++)
        for (uint32_t n = 2; n <= 3; n++) {
            json_t *o = json_array_get(json_object_get(json_array_get(json_object_get(j, "layers"), li),
                                                       "orders"), n - 2);
            REQUIRE(o);
            for (uint32_t h = 0; h < 2; h++) {
                const uint64_t p = eg_spec_primes(sp, li)[(n - 2) * 2 + h];
                uint32_t *load = calloc(p, sizeof *load);
                uint64_t *bm = calloc(p, sizeof *bm);
                uint64_t hitn = 0, maxl = 0;
                for (uint64_t i = 0; i < eg_counts_distinct(c, n); i++) {
                    uint32_t g[8];
                    uint64_t cnt;
                    eg_counts_get(c, n, i, g, &cnt);
                    int64_t hist[8], mix[8];
                    for (uint32_t k = 0; k < n; k++)
                        hist[k] = g[n - 1 - k];
                    eg_mix_position(hist, eg_spec_multipliers(sp, li), n, mix);
                    uint64_t b = eg_mod_ref(mix[n - 2], p);
                    hitn += load[b]++ == 0;
                    maxl = load[b] > maxl ? load[b] : maxl;
                    bm[b] += cnt;
                }
                masses = realloc(masses, (nm + hitn) * sizeof *masses);
                for (uint64_t b = 0; b < p; b++)
                    if (bm[b]) {
                        masses[nm++] = bm[b];
                        total += bm[b];
                    }
                free(bm);
                free(load);
                json_t *hj = json_array_get(json_object_get(o, "heads"), h);
                CHECK_EQ(json_integer_value(json_object_get(hj, "rows_hit")), hitn);
                CHECK_EQ(json_integer_value(json_object_get(hj, "max_load")), maxl);
                CHECK_EQ(json_integer_value(json_object_get(hj, "rows")), p);
            }
            json_t *wb = json_array_get(json_object_get(o, "worst_buckets"), 0);
            CHECK(!wb || json_integer_value(json_object_get(wb, "load")) >= 2);
        }
    /* the row cache's sizes: the fewest hottest rows serving each share */
    qsort(masses, nm, sizeof *masses, cmp_u64_desc);
    json_t *rc = json_object_get(j, "row_cache");
    REQUIRE(rc);
    CHECK_EQ(json_integer_value(json_object_get(rc, "lookups")), total);
    CHECK_EQ(json_integer_value(json_object_get(rc, "rows_hit")), nm);
    json_t *shares = json_object_get(rc, "shares");
    CHECK(json_array_size(shares) >= 4);
    for (size_t k = 0; k < json_array_size(shares); k++) {
        json_t *e = json_array_get(shares, k);
        const double share = json_real_value(json_object_get(e, "share"));
        uint64_t rows = 0, acc = 0;
        while (rows < nm && (double)acc < share * (double)total)
            acc += masses[rows++];
        CHECK_EQ(json_integer_value(json_object_get(e, "rows")), rows);
        CHECK_EQ(json_integer_value(json_object_get(e, "bytes")), rows * 128);
        CHECK_EQ(json_integer_value(json_object_get(e, "cache_bytes")), rows * (128 + 26));
    }
    free(masses);
    json_decref(j);
    eg_counts_close(c);
    eg_spec_free(sp);
    /* the text report and the plots */
    CHECK_EQ(t_cli("inspect %s --counts %s", store, counts), 0);
    CHECK(strstr(t_cli_stdout(), "occupancy") && strstr(t_cli_stdout(), "worst buckets") &&
          strstr(t_cli_stdout(), "row cache"));
    if (system("command -v gnuplot >/dev/null 2>&1") == 0) {
        CHECK_EQ(t_cli("inspect %s --counts %s --plot %s", store, counts, tp("plots")), 0);
        CHECK(t_file_exists(tp("plots/occupancy.png")) &&
              t_file_exists(tp("plots/load.svg")) &&
              t_file_exists(tp("plots/zipf.png")));
    }
    /* counts over another V' are refused */
    CHECK_EQ(t_cli("count %s -V 600 -c %s -o %s -q", u32, cfg, tp("v600.counts")), 0);
    CHECK_MSG(!*t_cli_stderr(), "%s", t_cli_stderr());
    CHECK_EQ(t_cli("inspect %s --counts %s", store, tp("v600.counts")), 1);
    CHECK(strstr(t_cli_stderr(), "V'"));
}

TEST(cli_store_build_sparse_and_tokenizer)
{
    const char *tok = t_shared_path("data/tokenizers/mistral-v03.model");
    if (!t_shared() || !t_file_exists(tok))
        SKIP("../shared is absent");
    const char *txt = t_shared_path("data/corpora/tinyshakespeare.txt");
    const char *cfg = tp("mistral.json");
    const char *c =
        "{\"engram_vocab_size\": [20000, 30000], \"max_ngram_size\": 3, \"n_embed_per_ngram\": 64,"
        " \"n_head_per_ngram\": 2, \"layer_ids\": [2], \"pad_id\": 2, \"seed\": 0,"
        " \"kernel_size\": 4, \"hidden_size\": 64, \"hc_mult\": 1}";
    REQUIRE(!t_write_file(cfg, c, strlen(c)));
    REQUIRE(t_cli("prep -t %s --doc-per-line -o %s %s -q", tok, tp("shk"), txt) == 0);
    REQUIRE(t_cli("count %s -t %s -c %s -o %s -q", tp("shk"), tok, cfg,
                  tp("shk.counts")) == 0);
    const char *store = tp("shk.store");
    REQUIRE(t_cli("build -c %s -t %s --counts %s --sparse -d bf16 -o %s --json", cfg, tok,
                  tp("shk.counts"), store) == 0);
    eg_store *s = NULL;
    eg_err err;
    REQUIRE(!eg_store_open(store, 0, &s, &err));
    const eg_store_info *in = eg_store_get_info(s);
    CHECK(in->sparse && strlen(in->tokenizer_sha256) == 64);
    size_t n;
    CHECK(eg_store_projection(s, &n) && n == 32768);
    CHECK(eg_store_key(s, 0) != NULL);
    CHECK(rows_match_generator(s));
    eg_store_close(s);
    CHECK_EQ(t_cli("verify %s", store), 0);
    CHECK_EQ(t_cli("inspect %s --counts %s", store, tp("shk.counts")), 0);
    CHECK(strstr(t_cli_stdout(), "tokenizer  sha256"));
}

TEST(cli_store_demo_config_matches_the_reference)
{
    /* the reference demo config, sparse (the counted rows of the shared
     * golden ids only): it opens, records the golden multipliers and primes,
     * and its rows are the generator's */
    const char *tokj = t_shared_path("data/tokenizers/deepseek-v3.tokenizer.json");
    const char *ids = t_shared_path("golden/demo-deepseek-v3-shakespeare/compressed_ids.u32");
    const char *casej = t_shared_path("golden/demo-deepseek-v3-shakespeare/case.json");
    if (!t_shared() || !t_file_exists(tokj) || !t_file_exists(ids) || !t_file_exists(casej))
        SKIP("../shared is absent");
    char tok[600], idp[600], casep[600];
    snprintf(tok, sizeof tok, "%s", tokj);
    snprintf(idp, sizeof idp, "%s", ids);
    snprintf(casep, sizeof casep, "%s", casej);
    const char *counts = tp("demo.counts"), *store = tp("demo.store"), *head = tp("demo.u32");
    size_t len;
    void *all = t_read_file(idp, &len);
    REQUIRE(all && len > 4000);
    REQUIRE(!t_write_file(head, all, 4000)); /* the first 1,000 ids */
    free(all);
    REQUIRE(t_cli("count %s -V 98627 -c configs/demo.json -T 4096 -o %s -q", head, counts) == 0);
    REQUIRE(t_cli("build -c configs/demo.json -t %s --counts %s --sparse -d bf16 -o %s -q", tok,
                  counts, store) == 0);
    json_t *cj = json_load_file(casep, 0, NULL);
    REQUIRE(cj);
    eg_store *s = NULL;
    eg_err err;
    REQUIRE(!eg_store_open(store, 0, &s, &err));
    const eg_spec *sp = eg_store_spec(s);
    CHECK_EQ(eg_spec_compressed_vocab(sp), 98627);
    for (uint32_t li = 0; li < 2; li++) {
        char lid[8];
        snprintf(lid, sizeof lid, "%u", eg_spec_config(sp)->layer_ids[li]);
        json_t *L = json_object_get(json_object_get(cj, "layers"), lid);
        REQUIRE(L);
        for (uint32_t k = 0; k < 3; k++)
            CHECK_EQ(eg_spec_multipliers(sp, li)[k],
                     json_integer_value(json_array_get(json_object_get(L, "multipliers"), k)));
        for (uint32_t n = 0; n < 2; n++)
            for (uint32_t j = 0; j < 8; j++)
                CHECK_EQ(eg_spec_primes(sp, li)[n * 8 + j],
                         json_integer_value(json_array_get(
                             json_array_get(json_object_get(L, "primes"), n), j)));
    }
    /* rows: random ones (stored blocks and generated ones alike) */
    uint64_t rs = 12;
    float got[64], want[64];
    unsigned char enc[128];
    int same = 1, stored = 0;
    for (int i = 0; i < 2000; i++) {
        const uint32_t li = (uint32_t)(i & 1);
        const uint64_t r = t_rand(&rs) % eg_spec_layer_rows(sp, li);
        const void *p;
        REQUIRE(!eg_store_row_ptr(s, li, r, &p, &err));
        stored += p != NULL;
        REQUIRE(!eg_store_read_rows(s, li, r, 1, got, 64, &err));
        eg_init_row(0, eg_spec_config(sp)->layer_ids[li], r, 64, 0.02, want);
        eg_row_encode(EG_BF16, 64, want, enc);
        eg_row_decode(EG_BF16, 64, enc, want);
        same &= !memcmp(got, want, sizeof got);
    }
    CHECK(same);
    CHECK(stored > 0 && stored < 2000);
    CHECK(eg_store_get_info(s)->sparse && strlen(eg_store_get_info(s)->tokenizer_sha256) == 64);
    eg_store_close(s);
    json_decref(cj);
    CHECK_EQ(t_cli("verify %s", store), 0);
}

/* The build writes blocks with pwrite, not through LMDB's map (where each
 * page would be faulted in and zeroed before being filled): a 117 MiB store
 * is built in a few MiB of memory. Peak RSS tells the paths apart, since
 * pages written through the map count in it. */
TEST(store_build_writes_blocks_beside_the_map)
{
    const char *store = tp("pw.store");
    REQUIRE(t_cli("build -c configs/sample.json -V 3000 -d f32 -o %s --json", store) == 0);
    json_t *j = json_loads(t_cli_stdout(), 0, NULL);
    REQUIRE(j);
    const double file_mib = (double)json_integer_value(json_object_get(j, "file_bytes")) / 1048576.0;
    const double rss = json_real_value(json_object_get(j, "peak_rss_mib"));
    CHECK(file_mib > 100);
    CHECK_MSG(rss > 0 && rss < file_mib / 2, "peak RSS %.1f MiB for a %.1f MiB store", rss,
              file_mib);
    json_decref(j);
    CHECK_EQ(t_cli("verify %s", store), 0);
}

/* eg_store_map: the mapping that holds every row pointer (the CUDA backend
 * registers it with the driver for host-resident tables). */
TEST(store_map_holds_every_row)
{
    const char *store = tp("map.store");
    REQUIRE(t_cli("build -c configs/sample.json -V 3000 -d bf16 -o %s -q", store) == 0);
    eg_store *s = NULL;
    eg_err err;
    REQUIRE(!eg_store_open(store, 0, &s, &err));
    const void *base;
    size_t len;
    eg_store_map(s, &base, &len);
    REQUIRE(base != NULL && len >= eg_store_get_info(s)->file_bytes / 2);
    uint64_t rs = 5;
    int inside = 1;
    for (int i = 0; i < 1000; i++) {
        const uint32_t li = (uint32_t)(i & 1);
        const uint64_t r = t_rand(&rs) % eg_spec_layer_rows(eg_store_spec(s), li);
        const void *p;
        REQUIRE(!eg_store_row_ptr(s, li, r, &p, &err) && p);
        inside &= (const char *)p >= (const char *)base &&
                  (const char *)p + eg_store_get_info(s)->row_bytes <= (const char *)base + len;
    }
    CHECK(inside);
    eg_store_close(s);
}
