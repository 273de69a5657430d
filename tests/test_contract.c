/* test_contract.c - the hash contract: numpy RNG, primes, multipliers, the
 * hash rule, golden files, and the fast path against the scalar oracle. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "engram/engram.h"
#include "nprng.h"
#include "test.h"

/* ---- numpy's RNG: CONTRACT.md section 2 test vector ---------------------- */

TEST(seedseq_contract_vector)
{
    uint32_t words[2], pool[4];
    size_t n = eg_np_seed_words(10007, words);
    CHECK_EQ(n, 1);
    eg_np_seedseq_pool(words, n, pool);
    CHECK_EQ(pool[0], 0xf1a1018du);
    CHECK_EQ(pool[1], 0xa7c60c02u);
    CHECK_EQ(pool[2], 0xfd15d50au);
    CHECK_EQ(pool[3], 0x03b81232u);
    uint64_t st[4];
    eg_np_seedseq_state(pool, st);
    CHECK_EQ(st[0], 0x77d32a348ad70d07ull);
    CHECK_EQ(st[1], 0x993ed609b84a4fa5ull);
    CHECK_EQ(st[2], 0xd5f972dec8698e49ull);
    CHECK_EQ(st[3], 0x7d79ebaebcf148deull);
    eg_pcg64 g;
    eg_pcg64_seed(&g, st);
    CHECK_EQ(eg_pcg64_next64(&g), 0xd2c3f84026661e33ull);
    CHECK_EQ(eg_pcg64_next64(&g), 0x0d4fb6969eb57435ull);
}

/* Vectors printed by numpy 1.24 (Debian's python3-numpy):
 *   default_rng(s).integers(lo, hi, size=n, dtype=np.int64) */
TEST(np_integers_all_range_paths)
{
    eg_pcg64 g;
    int64_t out[6];
    /* 32-bit Lemire on buffered halves */
    static const int64_t a[6] = {699, 227, 788, 316, 204, 797};
    eg_pcg64_from_seed(&g, 12345);
    eg_np_integers_i64(&g, 0, 1000, 6, out);
    for (int i = 0; i < 6; i++)
        CHECK_EQ(out[i], a[i]);
    /* rng == 0xFFFFFFFF: raw 32-bit draws */
    static const int64_t b[5] = {4058335883, 2684764585, 2938530453, 3853503932, 2483747170};
    eg_pcg64_from_seed(&g, 7);
    eg_np_integers_i64(&g, 0, 1ll << 32, 5, out);
    for (int i = 0; i < 5; i++)
        CHECK_EQ(out[i], b[i]);
    /* a two-word seed and the 64-bit Lemire path */
    static const int64_t c[3] = {3570386594038263348, 2170825216615154016, 3209181654500967920};
    eg_pcg64_from_seed(&g, (1ull << 32) + 5);
    eg_np_integers_i64(&g, 0, 1ll << 62, 3, out);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(out[i], c[i]);
    /* a negative low bound */
    static const int64_t d[3] = {556386610674, 621324819903, 562857550123};
    eg_pcg64_from_seed(&g, 99);
    eg_np_integers_i64(&g, -5, 1ll << 40, 3, out);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(out[i], d[i]);
    /* V' = 7: default_rng(10007).integers(0, (2^63-1)//7//2, 4) */
    static const int64_t e[4] = {542401975815330945, 34256642988473089, 254522560676354552,
                                 523682374530501807};
    eg_pcg64_from_seed(&g, 10007);
    eg_np_integers_i64(&g, 0, (int64_t)(((uint64_t)INT64_MAX / 7) / 2), 4, out);
    for (int i = 0; i < 4; i++)
        CHECK_EQ(out[i], e[i]);
}

TEST(pcg64_seed_state_matches_numpy)
{
    /* default_rng(2**40+3).bit_generator.state */
    eg_pcg64 g;
    eg_pcg64_from_seed(&g, (1ull << 40) + 3);
    /* 94011117801370930250866704679616638292, 275560129307091723105438643693801968191 */
    char buf[64];
    eg_np_u128 v = g.state;
    int i = 63;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + (int)(v % 10));
        v /= 10;
    } while (v);
    CHECK_MSG(!strcmp(buf + i, "94011117801370930250866704679616638292"), "state %s", buf + i);
    v = g.inc;
    i = 63;
    do {
        buf[--i] = (char)('0' + (int)(v % 10));
        v /= 10;
    } while (v);
    CHECK_MSG(!strcmp(buf + i, "275560129307091723105438643693801968191"), "inc %s", buf + i);
}

/* ---- primes ----------------------------------------------------------------- */

static int trial_prime(uint64_t n)
{
    if (n < 2)
        return 0;
    for (uint64_t d = 2; d * d <= n; d++)
        if (n % d == 0)
            return 0;
    return 1;
}

TEST(is_prime_small_and_hard_cases)
{
    for (uint64_t n = 0; n < 200000; n++)
        if (eg_is_prime_u64(n) != trial_prime(n)) {
            CHECK_MSG(0, "is_prime(%llu) wrong", (unsigned long long)n);
            break;
        }
    /* Strong pseudoprimes and Carmichael numbers are composite. */
    static const uint64_t composite[] = {561,        2047,          1373653,     25326001,
                                         3215031751, 2152302898747, 3474749660383,
                                         341550071728321, 3825123056546413051ull,
                                         2305843009213693953ull /* 2^61+1 */,
                                         18446744073709551615ull};
    for (size_t i = 0; i < sizeof composite / sizeof composite[0]; i++)
        CHECK_MSG(!eg_is_prime_u64(composite[i]), "%llu is composite",
                  (unsigned long long)composite[i]);
    static const uint64_t prime[] = {2305843009213693951ull /* 2^61-1 */,
                                     9223372036854775783ull /* 2^63-25 */,
                                     18446744073709551557ull /* 2^64-59 */, 4294967291u,
                                     646403, 16000057};
    for (size_t i = 0; i < sizeof prime / sizeof prime[0]; i++)
        CHECK_MSG(eg_is_prime_u64(prime[i]), "%llu is prime", (unsigned long long)prime[i]);
}

/* ---- multipliers, primes, sizes -------------------------------------------- */

/* The reference demo's layer 1 and 15 values (case.json of the golden demo). */
static const int64_t demo_mult[2][3] = {{76993395940407, 4862694818241, 36129212583461},
                                        {29055444938695, 56284491166079, 54183298291715}};
static const uint64_t demo_primes_l1[16] = {646403, 646411, 646421, 646423, 646433, 646453,
                                            646519, 646523, 646537, 646543, 646549, 646571,
                                            646573, 646577, 646609, 646619};

TEST(demo_spec_multipliers_primes_offsets)
{
    eg_config cfg;
    eg_config_demo(&cfg);
    eg_spec *s = NULL;
    eg_err err;
    REQUIRE(eg_spec_create(&cfg, 98627, 2, &s, &err) == EG_OK);
    for (int l = 0; l < 2; l++)
        for (int k = 0; k < 3; k++)
            CHECK_EQ(eg_spec_multipliers(s, (uint32_t)l)[k], demo_mult[l][k]);
    uint64_t sum = 0;
    for (int h = 0; h < 16; h++) {
        CHECK_EQ(eg_spec_primes(s, 0)[h], demo_primes_l1[h]);
        CHECK_EQ(eg_spec_offsets(s, 0)[h], sum);
        sum += demo_primes_l1[h];
    }
    CHECK_EQ(eg_spec_layer_rows(s, 0), sum);
    /* layer 15 continues the schedule above layer 1's last prime */
    CHECK_EQ(eg_spec_primes(s, 1)[0], 646631);
    CHECK_EQ(eg_spec_primes(s, 1)[15], 646879);
    CHECK_EQ(eg_spec_head_dim(s), 64);
    CHECK_EQ(eg_spec_layer_bytes(s, 0, 2), sum * 64 * 2);
    CHECK_EQ(eg_spec_layer_index(s, 15), 1);
    CHECK(eg_spec_layer_index(s, 3) == -1);
    CHECK(eg_spec_primes(s, 2) == NULL);
    eg_spec_free(s);
    eg_spec_free(NULL);
}

TEST(golden_case_json_multipliers_and_primes)
{
    if (!t_shared())
        SKIP("../shared absent");
    json_error_t je;
    json_t *root = json_load_file(t_shared_path("golden/demo-deepseek-v3-shakespeare/case.json"),
                                  0, &je);
    REQUIRE(root != NULL);
    json_t *c = json_object_get(root, "config");
    eg_config cfg;
    eg_config_demo(&cfg);
    uint64_t vprime = (uint64_t)json_integer_value(json_object_get(c, "compressed_vocab_size"));
    CHECK_EQ(vprime, 98627);
    eg_spec *s = NULL;
    REQUIRE(eg_spec_create(&cfg, vprime, json_integer_value(json_object_get(c, "pad_id_compressed")),
                           &s, NULL) == EG_OK);
    json_t *layers = json_object_get(root, "layers");
    const char *key;
    json_t *L;
    int n = 0;
    json_object_foreach(layers, key, L)
    {
        int li = eg_spec_layer_index(s, (uint32_t)atoi(key));
        REQUIRE(li >= 0);
        json_t *m = json_object_get(L, "multipliers"), *p = json_object_get(L, "primes");
        for (size_t k = 0; k < json_array_size(m); k++)
            CHECK_EQ(eg_spec_multipliers(s, (uint32_t)li)[k],
                     json_integer_value(json_array_get(m, k)));
        for (size_t o = 0; o < json_array_size(p); o++)
            for (size_t j = 0; j < 8; j++)
                CHECK_EQ(eg_spec_primes(s, (uint32_t)li)[o * 8 + j],
                         json_integer_value(json_array_get(json_array_get(p, o), j)));
        n++;
    }
    CHECK_EQ(n, 2);
    eg_spec_free(s);
    json_decref(root);
}

TEST(v41_published_table_sizes)
{
    eg_config cfg;
    eg_err err;
    REQUIRE(eg_config_load("configs/v41.json", &cfg, &err) == EG_OK);
    eg_spec *s = NULL;
    REQUIRE(eg_spec_create(&cfg, 129280, 2, &s, &err) == EG_OK);
    CHECK_EQ(eg_spec_layer_rows(s, 0), 384006168ull);
    CHECK_EQ(eg_spec_layer_rows(s, 1), 384016682ull);
    CHECK_EQ(eg_spec_n_heads(s), 24);
    CHECK_EQ(eg_spec_head_dim(s), 256);
    eg_spec_free(s);
}

TEST(engram27b_config_shape)
{
    eg_config cfg;
    REQUIRE(eg_config_load("configs/engram-27b.json", &cfg, NULL) == EG_OK);
    eg_spec *s = NULL;
    REQUIRE(eg_spec_create(&cfg, 98627, 2, &s, NULL) == EG_OK);
    CHECK_EQ(eg_spec_head_dim(s), 80);
    CHECK_EQ(cfg.layer_ids[0], 2);
    CHECK_EQ(cfg.layer_ids[1], 15);
    CHECK(eg_spec_primes(s, 0)[0] > 2262400 - 1);
    CHECK(eg_is_prime_u64(eg_spec_primes(s, 0)[0]));
    eg_spec_free(s);
}

/* ---- the hash rule ------------------------------------------------------------ */

static eg_config small_config(uint32_t N, uint32_t K, uint32_t n_layers)
{
    eg_config cfg;
    eg_config_demo(&cfg);
    cfg.max_ngram_size = N;
    cfg.n_head_per_ngram = K;
    cfg.n_embed_per_ngram = K * 4;
    cfg.n_layers = n_layers;
    for (uint32_t i = 0; i < n_layers; i++)
        cfg.layer_ids[i] = i;
    for (uint32_t n = 2; n <= N; n++)
        cfg.engram_vocab_size[n - 2] = 100;
    return cfg;
}

/* CONTRACT.md section 4's hand-checkable example, through the oracle, the
 * fast path and the batch API. */
TEST(hand_check_example)
{
    static const uint32_t expect[4][4] = {
        {84, 84, 98, 96}, {11, 11, 39, 37}, {3, 3, 48, 48}, {3, 3, 71, 71}};
    const int64_t mult[3] = {11, 13, 17};
    const uint64_t primes[4] = {101, 103, 107, 109};
    const uint32_t ids[4] = {3, 4, 5, 6};
    for (int t = 0; t < 4; t++) {
        int64_t hist[3];
        for (int k = 0; k < 3; k++)
            hist[k] = t - k >= 0 ? ids[t - k] : 9;
        uint64_t out[4];
        eg_hash_position_ref(hist, mult, 3, 2, primes, out);
        for (int c = 0; c < 4; c++)
            CHECK_EQ(out[c], expect[t][c]);
    }
    eg_config cfg = small_config(3, 2, 1);
    eg_spec *s = NULL;
    eg_err err;
    REQUIRE(eg_spec_create_explicit(&cfg, 10, 9, mult, primes, &s, &err) == EG_OK);
    for (int ref = 0; ref < 2; ref++) {
        uint32_t out[16];
        REQUIRE(eg_hash_batch(s, 0, ids, 1, 4, ref ? EG_HASH_REFERENCE : 0, 1, out, 16, &err) ==
                EG_OK);
        for (int t = 0; t < 4; t++)
            for (int c = 0; c < 4; c++)
                CHECK_EQ(out[t * 4 + c], expect[t][c]);
        REQUIRE(eg_hash_batch(s, 0, ids, 1, 4, EG_HASH_OFFSETS | (ref ? EG_HASH_REFERENCE : 0),
                              1, out, 16, &err) == EG_OK);
        const uint32_t off[4] = {0, 101, 204, 311};
        for (int t = 0; t < 4; t++)
            for (int c = 0; c < 4; c++)
                CHECK_EQ(out[t * 4 + c], expect[t][c] + off[c]);
    }
    eg_spec_free(s);
}

TEST(floor_mod_paths_agree_with_oracle)
{
    static const uint64_t ps[] = {2,          3,          101,        4093,      4096 + 3,
                                  646403,     16000057,   1u << 31,   4294967291u,
                                  4294967295u, 1099511627791ull, 4611686018427388039ull};
    uint64_t rs = 42;
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
        const uint64_t p = ps[i];
        eg_fastmod_t f = eg_fastmod_make(p);
        int64_t probes[64];
        size_t n = 0;
        probes[n++] = 0;
        probes[n++] = 1;
        probes[n++] = -1;
        probes[n++] = INT64_MAX;
        probes[n++] = INT64_MIN;
        probes[n++] = INT64_MIN + 1;
        probes[n++] = (int64_t)(p - 1);
        probes[n++] = (int64_t)p;
        probes[n++] = (int64_t)p + 1;
        probes[n++] = -(int64_t)p;
        probes[n++] = -(int64_t)p - 1;
        int64_t top = (int64_t)(((uint64_t)INT64_MAX / p) * p);
        probes[n++] = top;
        probes[n++] = top - 1;
        probes[n++] = -top;
        probes[n++] = -top + 1;
        while (n < 64)
            probes[n++] = (int64_t)t_rand(&rs) >> (t_rand(&rs) % 40);
        for (size_t k = 0; k < n; k++) {
            uint64_t want = eg_mod_ref(probes[k], p);
            CHECK_MSG(eg_mod_barrett(probes[k], &f) == want, "barrett %lld mod %llu",
                      (long long)probes[k], (unsigned long long)p);
            CHECK_MSG(eg_mod_fast(probes[k], &f) == want, "fast %lld mod %llu",
                      (long long)probes[k], (unsigned long long)p);
            if (eg_fastmod_dbl_ok(p))
                CHECK_MSG(eg_mod_fast_dbl(probes[k], &f) == want, "dbl %lld mod %llu",
                          (long long)probes[k], (unsigned long long)p);
        }
    }
    /* Dense sweep of the double path near its lower bound with large
     * dividends, where its error budget is tightest. */
    for (uint64_t p = EG_FASTMOD_MIN; p < EG_FASTMOD_MIN + 64; p++) {
        eg_fastmod_t f = eg_fastmod_make(p);
        for (int k = 0; k < 2000; k++) {
            int64_t a = (int64_t)(t_rand(&rs) >> 1);
            if (eg_mod_fast_dbl(a, &f) != eg_mod_ref(a, p)) {
                CHECK_MSG(0, "dbl %lld mod %llu", (long long)a, (unsigned long long)p);
                return;
            }
        }
    }
}

/* The narrow path (u >= 0, 2^16 <= p < 2^31): worst cases are large u and
 * small p, and p just under 2^31 where r < 2p approaches 2^32. */
TEST(narrow_mod_agrees_with_oracle)
{
    uint64_t rs = 7;
    static const uint32_t ps[] = {65537, 65539, 646403, 16000057, 2147483629u, 2147483647u};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
        CHECK(eg_fastmod_narrow_ok(ps[i]));
        const double inv = 1.0 / (double)ps[i];
        for (int k = 0; k < 200000; k++) {
            int64_t u;
            switch (k % 4) {
            case 0: u = (int64_t)(t_rand(&rs) >> 1); break;
            case 1: u = INT64_MAX - (int64_t)(t_rand(&rs) % 100000); break;
            case 2: u = (int64_t)(t_rand(&rs) % (4ull * ps[i])); break;
            default: u = (int64_t)(((t_rand(&rs) >> 1) / ps[i]) * ps[i]) - (int64_t)(k & 1);
            }
            if (u < 0)
                u = 0;
            if (eg_mod_fast_narrow(u, inv, ps[i]) != eg_mod_ref(u, ps[i])) {
                CHECK_MSG(0, "narrow %lld mod %u", (long long)u, ps[i]);
                break;
            }
        }
    }
    CHECK(!eg_fastmod_narrow_ok(65521));
    CHECK(!eg_fastmod_narrow_ok(2147483648u));
}

/* ---- golden files ------------------------------------------------------------- */

static uint32_t *read_u32(const char *path, size_t *n)
{
    size_t len;
    uint32_t *p = t_read_file(path, &len);
    if (p)
        *n = len / 4;
    return p;
}

TEST(golden_demo_hashes_bit_exact)
{
    if (!t_shared())
        SKIP("../shared absent");
    size_t n_ids, n_cid, n_proj, n_h;
    uint32_t *ids = read_u32(t_shared_path("golden/demo-deepseek-v3-shakespeare/input_ids.u32"),
                             &n_ids);
    uint32_t *cid = read_u32(
        t_shared_path("golden/demo-deepseek-v3-shakespeare/compressed_ids.u32"), &n_cid);
    uint32_t *proj = read_u32(t_shared_path("golden/deepseek-v3.projection.u32"), &n_proj);
    REQUIRE(ids && cid && proj);
    CHECK_EQ(n_ids, 32768);
    CHECK_EQ(n_cid, 32768);
    uint64_t vprime = 0;
    REQUIRE(eg_projection_vprime(proj, n_proj, "deepseek-v3.projection.u32", &vprime, NULL) ==
            EG_OK);
    CHECK_EQ(vprime, 98627);
    uint32_t *mine = malloc(n_ids * 4);
    REQUIRE(eg_project_ids(proj, n_proj, ids, n_ids, mine, NULL) == EG_OK);
    CHECK(memcmp(mine, cid, n_ids * 4) == 0);
    eg_config cfg;
    eg_config_demo(&cfg);
    eg_spec *s = NULL;
    REQUIRE(eg_spec_create(&cfg, vprime, proj[cfg.pad_id], &s, NULL) == EG_OK);
    uint32_t *out = malloc(n_ids * 16 * 4);
    const uint32_t layers[2] = {1, 15};
    for (int l = 0; l < 2; l++) {
        char rel[128];
        snprintf(rel, sizeof rel, "golden/demo-deepseek-v3-shakespeare/hash_layer%u.u32",
                 layers[l]);
        uint32_t *gold = read_u32(t_shared_path(rel), &n_h);
        REQUIRE(gold != NULL);
        CHECK_EQ(n_h, n_ids * 16);
        const uint32_t flags[2] = {0, EG_HASH_REFERENCE};
        const int threads[3] = {1, 2, 0};
        for (int f = 0; f < 2; f++)
            for (int th = 0; th < 3; th++) {
                memset(out, 0xff, n_ids * 16 * 4);
                REQUIRE(eg_hash_batch(s, (uint32_t)l, cid, 8, 4096, flags[f], threads[th], out,
                                      n_ids * 16, NULL) == EG_OK);
                CHECK_MSG(memcmp(out, gold, n_ids * 16 * 4) == 0,
                          "layer %u flags %u threads %d differs from the golden file",
                          layers[l], flags[f], threads[th]);
            }
        free(gold);
    }
    eg_spec_free(s);
    free(out);
    free(mine);
    free(ids);
    free(cid);
    free(proj);
}

/* ---- fast path == oracle on random configs ----------------------------------- */

#define GUARD 64
#define GUARD_BYTE 0xA5

TEST(fast_hash_equals_oracle_random)
{
    uint64_t rs = 20261123;
    for (int trial = 0; trial < 60; trial++) {
        uint32_t N = 2 + (uint32_t)(t_rand(&rs) % 5);
        uint32_t K = 1 + (uint32_t)(t_rand(&rs) % 12);
        eg_config cfg = small_config(N, K, 1 + (uint32_t)(t_rand(&rs) % 3));
        for (uint32_t n = 2; n <= N; n++) {
            /* small sizes exercise the Barrett path, large the double path */
            uint64_t r = t_rand(&rs);
            cfg.engram_vocab_size[n - 2] =
                (r % 3 == 0) ? 2 + r % 5000 : (r % 3 == 1) ? 4000 + r % 100000 : 1 + r % 3000000000u;
            if (cfg.engram_vocab_size[n - 2] < 2)
                cfg.engram_vocab_size[n - 2] = 2;
        }
        cfg.seed = t_rand(&rs) % 1000;
        const uint64_t vchoices[] = {1, 2, 7, 98627, 128815, 1u << 20, 4294967295u, 4294967296ull};
        uint64_t V = vchoices[t_rand(&rs) % 8];
        int64_t pad = (int64_t)(t_rand(&rs) % V);
        eg_spec *s = NULL;
        eg_err err;
        if (eg_spec_create(&cfg, V, pad, &s, &err) != EG_OK) {
            CHECK_MSG(0, "spec: %s", err.msg);
            continue;
        }
        size_t T = (trial % 5 == 0) ? 1 : 1 + t_rand(&rs) % 300;
        size_t B = 1 + t_rand(&rs) % 5;
        uint32_t H = eg_spec_n_heads(s);
        uint32_t *ids = malloc(B * T * 4);
        for (size_t i = 0; i < B * T; i++) {
            uint64_t r = t_rand(&rs);
            ids[i] = (uint32_t)((r & 3) == 0 ? V - 1 : (r & 3) == 1 ? 0 : (r >> 8) % V);
        }
        size_t cap = B * T * H;
        unsigned char *a = malloc(cap * 4 + 2 * GUARD), *b = malloc(cap * 4 + 2 * GUARD);
        for (uint32_t li = 0; li < eg_spec_n_layers(s); li++)
            for (int off = 0; off < 2; off++) {
                memset(a, GUARD_BYTE, cap * 4 + 2 * GUARD);
                memset(b, GUARD_BYTE, cap * 4 + 2 * GUARD);
                uint32_t fl = off ? EG_HASH_OFFSETS : 0;
                eg_status s1 = eg_hash_batch(s, li, ids, B, T, fl | EG_HASH_REFERENCE, 1,
                                             (uint32_t *)(void *)(a + GUARD), cap, &err);
                eg_status s2 = eg_hash_batch(s, li, ids, B, T, fl, (int)(trial % 3),
                                             (uint32_t *)(void *)(b + GUARD), cap, &err);
                CHECK_EQ(s1, s2);
                if (s1 == EG_EUNSUPPORTED)
                    continue; /* a layer of >= 2^32 rows with offsets */
                REQUIRE(s1 == EG_OK);
                CHECK_MSG(memcmp(a, b, cap * 4 + 2 * GUARD) == 0,
                          "trial %d: N=%u K=%u V=%llu T=%zu layer %u offsets %d differ", trial,
                          N, K, (unsigned long long)V, T, li, off);
                for (size_t g = 0; g < GUARD; g++) {
                    CHECK(b[g] == GUARD_BYTE);
                    CHECK(b[GUARD + cap * 4 + g] == GUARD_BYTE);
                }
            }
        free(a);
        free(b);
        free(ids);
        eg_spec_free(s);
    }
}

/* Hashing a batch equals hashing each sequence alone: sequences are independent. */
TEST(sequences_are_independent)
{
    eg_config cfg;
    eg_config_demo(&cfg);
    eg_spec *s = NULL;
    REQUIRE(eg_spec_create(&cfg, 1000, 2, &s, NULL) == EG_OK);
    uint32_t ids[3 * 50], all[3 * 50 * 16], one[50 * 16];
    uint64_t rs = 5;
    for (int i = 0; i < 150; i++)
        ids[i] = (uint32_t)(t_rand(&rs) % 1000);
    REQUIRE(eg_hash_batch(s, 1, ids, 3, 50, 0, 2, all, sizeof all / 4, NULL) == EG_OK);
    for (int q = 0; q < 3; q++) {
        REQUIRE(eg_hash_batch(s, 1, ids + q * 50, 1, 50, 0, 1, one, sizeof one / 4, NULL) ==
                EG_OK);
        CHECK(memcmp(one, all + q * 50 * 16, sizeof one) == 0);
    }
    /* position 0 only sees padding behind it: equal to hashing [pad.., x0] */
    uint32_t padded[3] = {2, 2, ids[0]}, p3[3 * 16];
    REQUIRE(eg_hash_batch(s, 1, padded, 1, 3, 0, 1, p3, 48, NULL) == EG_OK);
    CHECK(memcmp(p3 + 2 * 16, all, 16 * 4) == 0);
    eg_spec_free(s);
}

TEST(hash_batch_rejects_bad_arguments)
{
    eg_config cfg;
    eg_config_demo(&cfg);
    eg_spec *s = NULL;
    REQUIRE(eg_spec_create(&cfg, 100, 2, &s, NULL) == EG_OK);
    uint32_t ids[4] = {1, 2, 100, 3}, out[64];
    eg_err err = {0};
    CHECK_EQ(eg_hash_batch(s, 0, ids, 1, 4, 0, 1, out, 64, &err), (uint64_t)(int64_t)EG_ERANGE);
    CHECK(strstr(err.msg, "position 2") != NULL);
    ids[2] = 99;
    CHECK_EQ(eg_hash_batch(s, 0, ids, 1, 4, 0, 1, out, 63, &err),
             (uint64_t)(int64_t)EG_ECAPACITY);
    CHECK_EQ(eg_hash_batch(s, 0, ids, 1, 0, 0, 1, out, 64, &err), (uint64_t)(int64_t)EG_EINVAL);
    CHECK_EQ(eg_hash_batch(s, 2, ids, 1, 4, 0, 1, out, 64, &err), (uint64_t)(int64_t)EG_EINVAL);
    CHECK_EQ(eg_hash_batch(s, 0, ids, 1, 4, 1u << 7, 1, out, 64, &err),
             (uint64_t)(int64_t)EG_EINVAL);
    CHECK_EQ(eg_hash_batch(s, 0, ids, 1, 4, 0, 1, out, 64, NULL), 0);
    eg_spec_free(s);
    /* head sizes of 2^32 and more cannot be written as uint32 */
    eg_config big = small_config(2, 1, 1);
    big.engram_vocab_size[0] = 1ull << 33;
    REQUIRE(eg_spec_create(&big, 10, 0, &s, NULL) == EG_OK);
    CHECK_EQ(eg_hash_batch(s, 0, ids, 1, 2, 0, 1, out, 64, &err),
             (uint64_t)(int64_t)EG_EUNSUPPORTED);
    eg_spec_free(s);
}

TEST(projection_checks)
{
    const uint32_t good[5] = {0, 1, 0, 2, 1}, gap[4] = {0, 2, 2, 0}, big[2] = {0, 5};
    uint64_t v = 0;
    eg_err err;
    CHECK(eg_projection_vprime(good, 5, "p", &v, &err) == EG_OK);
    CHECK_EQ(v, 3);
    CHECK(eg_projection_vprime(gap, 4, "p", &v, &err) == EG_EFORMAT);
    CHECK(strstr(err.msg, "compressed id 1 is never used") != NULL);
    CHECK(eg_projection_vprime(big, 2, "p", &v, &err) == EG_EFORMAT);
    CHECK(eg_projection_vprime(good, 0, "p", &v, &err) == EG_EFORMAT);
    uint32_t ids[3] = {4, 3, 5}, out[3];
    CHECK(eg_project_ids(good, 5, ids, 2, out, &err) == EG_OK);
    CHECK_EQ(out[0], 1);
    CHECK_EQ(out[1], 2);
    CHECK(eg_project_ids(good, 5, ids, 3, out, &err) == EG_ERANGE);
    CHECK(strstr(err.msg, "position 2") != NULL);
}
