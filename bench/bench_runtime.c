/* bench_runtime.c - the runtime on the CPU, against peers in the same run:
 *  1. gather of 64-value bf16 rows from a store (the demo config, 2.5 GB)
 *     vs the same gather from a flat in-memory array holding the same rows;
 *  2. hash + gather + layer forward, tokens/s, for the demo config
 *     (hidden 1024, hc_mult 4) on 1 and 2 threads.
 * usage: bench_runtime STORE [lookups] [tokens]   (STORE: built if missing) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "engram/engram.h"
#include "engram/eg_runtime.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rnd(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_runtime STORE [lookups] [tokens]\n");
        return 2;
    }
    const char *path = argv[1];
    const size_t n = argc > 2 ? (size_t)atol(argv[2]) : 4u << 20;
    const size_t tokens = argc > 3 ? (size_t)atol(argv[3]) : 2048;
    eg_err err;
    eg_config cfg;
    if (eg_config_load("configs/demo.json", &cfg, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    FILE *probe = fopen(path, "rb");
    if (!probe) {
        eg_spec *sp = NULL;
        if (eg_spec_create(&cfg, 98627, 2, &sp, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        eg_store_params p = {.spec = sp, .dtype = EG_BF16, .seed = 0, .init_std = 0.02};
        fprintf(stderr, "building %s (the demo config, bf16)...\n", path);
        if (eg_store_build(path, &p, NULL, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        eg_spec_free(sp);
    } else {
        fclose(probe);
    }
    eg_runtime *rt = NULL;
    if (eg_runtime_open(path, NULL, &rt, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const eg_spec *sp = eg_runtime_spec(rt);
    const uint32_t dim = eg_runtime_dim(rt), H = eg_spec_n_heads(sp);
    const uint64_t rows_l0 = eg_spec_layer_rows(sp, 0);
    /* the flat peer: the same rows of layer 0, bf16, in one array */
    uint16_t *flat = malloc(rows_l0 * dim * 2);
    uint64_t *rows = malloc(n * 8);
    uint16_t *out = malloc(n * dim * 2), *out2 = malloc(n * dim * 2);
    if (!flat || !rows || !out || !out2) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    const eg_store *st = eg_runtime_store(rt);
    for (uint64_t r = 0; r < rows_l0; r += 4096) {
        uint64_t k = rows_l0 - r < 4096 ? rows_l0 - r : 4096;
        if (eg_store_read_encoded((eg_store *)(uintptr_t)st, 0, r, k, flat + r * dim, k * dim * 2, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
    }
    uint64_t s = 1;
    for (size_t i = 0; i < n; i++)
        rows[i] = rnd(&s) % rows_l0;
    printf("gather of %zu random 64-value bf16 rows (layer 0: %llu rows, %.0f MiB), best of 5\n", n,
           (unsigned long long)rows_l0, (double)rows_l0 * dim * 2 / 1048576.0);
    printf("  %-8s %14s %14s %8s\n", "threads", "store rows/s", "flat rows/s", "ratio");
    for (int nt = 1; nt <= 2; nt++) {
#ifdef _OPENMP
        omp_set_num_threads(nt);
#endif
        double bs = 1e9, bf = 1e9;
        for (int rep = 0; rep < 5; rep++) {
            double t0 = now();
            if (eg_rt_gather(rt, 0, rows, n, EG_BF16, out, n * dim * 2, &err)) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
            }
            double t1 = now();
            const long long NN = (long long)n;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
            for (long long i = 0; i < NN; i++)
                memcpy(out2 + (size_t)i * dim, flat + rows[i] * dim, dim * 2);
            double t2 = now();
            bs = t1 - t0 < bs ? t1 - t0 : bs;
            bf = t2 - t1 < bf ? t2 - t1 : bf;
        }
        if (memcmp(out, out2, n * dim * 2)) {
            fprintf(stderr, "the store's gather differs from the flat array's\n");
            return 1;
        }
        printf("  %-8d %12.1f M %12.1f M %8.2f\n", nt, n / bs / 1e6, n / bf / 1e6, bf / bs);
    }
    free(flat);
    free(out);
    free(out2);
    /* hash + gather + forward */
    const uint32_t hc = cfg.hc_mult, d = cfg.hidden_size, De = H * dim;
    const size_t T = tokens < 512 ? tokens : 512, B = (tokens + T - 1) / T, BT = B * T;
    float *w[8];
    const size_t sz[8] = {(size_t)hc * d * De, (size_t)hc * d, (size_t)d * De, d, (size_t)hc * d,
                          (size_t)hc * d, (size_t)hc * d, (size_t)hc * d * 4};
    for (int i = 0; i < 8; i++) {
        w[i] = malloc(sz[i] * 4);
        for (size_t k = 0; k < sz[i]; k++)
            w[i][k] = i >= 4 && i <= 6 ? 1.0f : (float)((double)(rnd(&s) >> 40) * 0x1p-24 - 0.5) * 0.05f;
    }
    eg_layer_weights lw = {w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]};
    eg_layer_dims dm = {.B = B, .T = T, .hc = hc, .d = d, .De = De, .kernel = cfg.kernel_size,
                        .dilation = cfg.max_ngram_size};
    uint32_t *ids = malloc(BT * 4);
    uint64_t *hr = malloc(BT * H * 8);
    float *e = malloc(BT * De * 4), *h = malloc(BT * hc * d * 4), *o = malloc(BT * hc * d * 4);
    for (size_t i = 0; i < BT; i++)
        ids[i] = (uint32_t)(rnd(&s) % 98627);
    for (size_t i = 0; i < BT * hc * d; i++)
        h[i] = (float)((double)(rnd(&s) >> 40) * 0x1p-24 - 0.5);
    printf("hash + gather + forward, the demo config (hidden %u, hc_mult %u, %u gathered values "
           "per token), %zu tokens\n",
           d, hc, De, BT);
    printf("  %-8s %10s %10s %10s %12s\n", "threads", "hash s", "gather s", "forward s", "tokens/s");
    for (int nt = 1; nt <= 2; nt++) {
#ifdef _OPENMP
        omp_set_num_threads(nt);
#endif
        double th = 0, tg = 0, tf = 0;
        double t0 = now();
        int bad = eg_rt_hash(rt, 0, ids, B, T, NULL, NULL, hr, BT * H, &err);
        double t1 = now();
        bad |= eg_rt_gather(rt, 0, hr, BT * H, EG_F32, e, BT * De * 4, &err);
        double t2 = now();
        bad |= eg_layer_forward(&dm, &lw, e, h, o, nt, &err);
        double t3 = now();
        if (bad) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        th = t1 - t0;
        tg = t2 - t1;
        tf = t3 - t2;
        printf("  %-8d %10.4f %10.4f %10.3f %12.0f\n", nt, th, tg, tf, BT / (th + tg + tf));
    }
    for (int i = 0; i < 8; i++)
        free(w[i]);
    free(ids);
    free(hr);
    free(e);
    free(h);
    free(o);
    free(rows);
    eg_runtime_close(rt);
    return 0;
}
