/* bench_hash.c - in-process hash throughput of eg_hash_batch (warm buffers,
 * best of several runs), for scripts/bench_hash.py. Prints one JSON line.
 * usage: bench-hash CONFIG V' IDS.u32 SEQ_LEN THREADS [REPEATS] [OUT.u32] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engram/engram.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: bench-hash CONFIG V' IDS.u32 SEQ_LEN THREADS [REPEATS] [OUT]\n");
        return 2;
    }
    eg_config cfg;
    eg_err err;
    if (eg_config_load(argv[1], &cfg, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    uint64_t V = strtoull(argv[2], NULL, 10);
    size_t T = strtoull(argv[4], NULL, 10);
    int threads = atoi(argv[5]);
    int reps = argc > 6 ? atoi(argv[6]) : 5;
    FILE *f = fopen(argv[3], "rb");
    if (!f) {
        perror(argv[3]);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    size_t n = (size_t)ftell(f) / 4;
    fseek(f, 0, SEEK_SET);
    uint32_t *ids = malloc(n * 4);
    if (!ids || fread(ids, 4, n, f) != n) {
        fprintf(stderr, "read failed\n");
        return 1;
    }
    fclose(f);
    size_t B = n / T;
    eg_spec *s;
    if (eg_spec_create(&cfg, V, cfg.pad_id, &s, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    uint32_t L = eg_spec_n_layers(s), H = eg_spec_n_heads(s);
    size_t per = B * T * H;
    uint32_t *out = malloc(per * L * 4);
    memset(out, 0, per * L * 4);
    /* Warm up for a quarter second (page faults, thread pool, clocks), then
     * keep the best of `reps` timed runs. */
    for (double w0 = now(); now() - w0 < 0.25;)
        for (uint32_t li = 0; li < L; li++)
            if (eg_hash_batch(s, li, ids, B, T, 0, threads, out + li * per, per, &err)) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
            }
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        for (uint32_t li = 0; li < L; li++)
            if (eg_hash_batch(s, li, ids, B, T, 0, threads, out + li * per, per, &err)) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
            }
        double dt = now() - t0;
        if (dt < best)
            best = dt;
    }
    if (argc > 7) {
        FILE *o = fopen(argv[7], "wb");
        if (!o || fwrite(out, 4, per * L, o) != per * L || fclose(o)) {
            fprintf(stderr, "cannot write %s\n", argv[7]);
            return 1;
        }
    }
    printf("{\"tokens\": %zu, \"layers\": %u, \"heads\": %u, \"threads\": %d, \"seconds\": %.6f, "
           "\"tokens_per_second\": %.1f}\n",
           B * T, L, H, threads, best, (double)(B * T) / best);
    eg_spec_free(s);
    free(ids);
    free(out);
    return 0;
}
