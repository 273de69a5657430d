// bench_gpu.cu - `make bench-gpu` (needs a GPU): the device's copy bandwidth
// and host-to-device bandwidth first, then hash throughput as a fraction of
// memory bandwidth, gather GB/s from HBM for 64-, 128- and 256-byte rows, and
// hash + gather with the table resident in HBM vs host-resident (read over
// the bus), same batches in the same run; then the layer step (hash, gather,
// the Engram layer's forward on device pointers) with the table resident vs
// offloaded to host memory behind a device row cache smaller than the table,
// staged one batch ahead (eg_cuda_cache_stage) while the GPU computes.
// usage: bench_gpu STORE   (a dense store, e.g. build/bench/demo-bf16.store)
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engram/engram.h"
#include "engram/eg_cuda.h"
#include "engram/eg_runtime.h"

#define CK(x)                                                                                   \
    do {                                                                                        \
        cudaError_t e_ = (x);                                                                   \
        if (e_ != cudaSuccess) {                                                                \
            fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));                            \
            return 1;                                                                           \
        }                                                                                       \
    } while (0)

static float time_ms(cudaEvent_t a, cudaEvent_t b)
{
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    return ms;
}

__global__ void gather_flat(const unsigned char *table, size_t rb, const uint64_t *rows, size_t n,
                            unsigned char *out)
{
    const size_t i = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const unsigned lane = threadIdx.x % 32;
    if (i >= n)
        return;
    const uint32_t *s = (const uint32_t *)(table + rows[i] * rb);
    uint32_t *d = (uint32_t *)(out + i * rb);
    for (size_t k = lane; k < rb / 4; k += 32)
        d[k] = s[k];
}

__global__ void fill_kernel(float *x, size_t n, float scale, uint32_t seed)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    uint32_t h = (uint32_t)i * 2654435761u ^ seed * 40503u;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    x[i] = scale * ((float)(h & 0xFFFFFF) / 8388608.0f - 1.0f);
}

__global__ void bf16_to_f32(const __nv_bfloat16 *a, float *b, size_t n)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        b[i] = __bfloat162float(a[i]);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_gpu STORE\n");
        return 2;
    }
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || !ndev) {
        fprintf(stderr, "bench_gpu: no CUDA device\n");
        return 1;
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %.1f GiB\n", prop.name, (double)prop.totalGlobalMem / (1 << 30));
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    /* 1. bandwidths */
    const size_t big = (size_t)1 << 30;
    void *a, *b, *h;
    CK(cudaMalloc(&a, big));
    CK(cudaMalloc(&b, big));
    CK(cudaHostAlloc(&h, big, cudaHostAllocDefault));
    memset(h, 1, big);
    CK(cudaMemcpy(b, a, big, cudaMemcpyDeviceToDevice));
    cudaEventRecord(e0);
    for (int i = 0; i < 10; i++)
        cudaMemcpy(b, a, big, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    const double d2d = 2.0 * 10 * big / (time_ms(e0, e1) * 1e-3) / 1e9; /* read + write */
    cudaEventRecord(e0);
    for (int i = 0; i < 5; i++)
        cudaMemcpy(a, h, big, cudaMemcpyHostToDevice);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    const double h2d = 5.0 * big / (time_ms(e0, e1) * 1e-3) / 1e9;
    printf("device copy %.0f GB/s (read + write), host to device %.1f GB/s (pinned)\n", d2d, h2d);
    cudaFreeHost(h);
    /* 2. hash and gather through a store's table */
    eg_err err;
    eg_runtime *rt = NULL;
    if (eg_runtime_open(argv[1], NULL, &rt, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const eg_spec *sp = eg_runtime_spec(rt);
    const uint32_t H = eg_spec_n_heads(sp);
    const uint64_t V = eg_spec_compressed_vocab(sp);
    const size_t T = 4096, S = 64, n = S * T, nr = n * H;
    uint32_t *ids = (uint32_t *)malloc(n * 4);
    uint64_t s = 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (uint32_t)((s >> 33) % V);
    }
    uint32_t *d_ids;
    uint64_t *d_rows;
    unsigned char *d_out;
    CK(cudaMalloc(&d_ids, n * 4));
    CK(cudaMalloc(&d_rows, nr * 8));
    CK(cudaMalloc(&d_out, nr * 256));
    CK(cudaMemcpy(d_ids, ids, n * 4, cudaMemcpyHostToDevice));
    eg_cuda_table *dev_t = NULL, *host_t = NULL;
    if (eg_cuda_table_open(rt, 0, EG_CUDA_DEVICE, 0, &dev_t, &err) ||
        eg_cuda_table_open(rt, 0, EG_CUDA_HOST, 0, &host_t, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    eg_cuda_hash(dev_t, d_ids, S, T, d_rows, NULL, &err);
    cudaDeviceSynchronize();
    cudaEventRecord(e0);
    for (int i = 0; i < 20; i++)
        eg_cuda_hash(dev_t, d_ids, S, T, d_rows, NULL, &err);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    const double hs = time_ms(e0, e1) * 1e-3 / 20;
    const double hbytes = (double)n * 4 + (double)nr * 8;
    printf("hash: %.0f M tokens/s, %.0f GB/s of ids and rows = %.0f%% of the copy bandwidth\n",
           n / hs / 1e6, hbytes / hs / 1e9, 100 * hbytes / hs / 1e9 / d2d);
    /* gather from HBM for 64/128/256-byte rows (a flat table of random bytes) */
    const size_t trows = (size_t)1 << 22;
    for (size_t rb = 64; rb <= 256; rb *= 2) {
        unsigned char *tab;
        CK(cudaMalloc(&tab, trows * rb));
        uint64_t *hr = (uint64_t *)malloc(nr * 8);
        for (size_t i = 0; i < nr; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            hr[i] = (s >> 20) % trows;
        }
        CK(cudaMemcpy(d_rows, hr, nr * 8, cudaMemcpyHostToDevice));
        gather_flat<<<(unsigned)((nr + 7) / 8), 256>>>(tab, rb, d_rows, nr, d_out);
        cudaEventRecord(e0);
        for (int i = 0; i < 10; i++)
            gather_flat<<<(unsigned)((nr + 7) / 8), 256>>>(tab, rb, d_rows, nr, d_out);
        cudaEventRecord(e1);
        cudaEventSynchronize(e1);
        const double gs = time_ms(e0, e1) * 1e-3 / 10;
        printf("gather %3zu-byte rows from HBM: %.0f GB/s (%.0f M rows/s)\n", rb,
               2.0 * nr * rb / gs / 1e9, nr / gs / 1e6);
        free(hr);
        cudaFree(tab);
    }
    /* 3. hash + gather: resident vs host-resident, the same batches */
    eg_cuda_hash(dev_t, d_ids, S, T, d_rows, NULL, &err);
    double tt[2];
    for (int w = 0; w < 2; w++) {
        eg_cuda_table *t = w ? host_t : dev_t;
        eg_cuda_gather(t, d_rows, nr, d_out, NULL, &err);
        cudaEventRecord(e0);
        for (int i = 0; i < 5; i++) {
            eg_cuda_hash(t, d_ids, S, T, d_rows, NULL, &err);
            if (eg_cuda_gather(t, d_rows, nr, d_out, NULL, &err)) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
            }
        }
        cudaEventRecord(e1);
        cudaEventSynchronize(e1);
        tt[w] = time_ms(e0, e1) * 1e-3 / 5;
    }
    printf("hash + gather of %zu tokens: resident %.3f ms, host-resident %.3f ms (%.2fx)\n", n,
           tt[0] * 1e3, tt[1] * 1e3, tt[1] / tt[0]);
    /* 4. the layer step, resident vs offloaded behind the cache: Zipfian ids
     * (text is skewed), NB batches of SB sequences of T tokens; the step is
     * hash, gather, bf16 -> f32, and the Engram layer's forward
     * (eg_cuda_layer_forward: projections, keys in binary64, gate, conv) */
    {
        const size_t SB = 2, nb_tok = SB * T, nb_rows = nb_tok * H, NB = 12;
        const uint32_t dim = eg_runtime_dim(rt), De = H * dim;
        const eg_config *cfg = eg_spec_config(sp);
        eg_layer_dims dm = {SB, T, cfg->hc_mult, cfg->hidden_size, De, cfg->kernel_size,
                            eg_spec_max_ngram(sp), 0, 0};
        const size_t CH = (size_t)dm.hc * dm.d;
        const uint64_t lrows = eg_spec_layer_rows(sp, 0);
        uint32_t *zids = (uint32_t *)malloc(NB * nb_tok * 4);
        uint64_t *h_rows = (uint64_t *)malloc(nb_rows * 8);
        double *cdf = (double *)malloc(V * sizeof *cdf), acc = 0;
        for (uint64_t v = 0; v < V; v++)
            cdf[v] = (acc += 1.0 / pow((double)v + 1, 1.1));
        for (size_t i = 0; i < NB * nb_tok; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            const double u = (double)(s >> 11) / 9007199254740992.0 * acc;
            uint64_t lo = 0, hi = V - 1;
            while (lo < hi) {
                const uint64_t mid = (lo + hi) / 2;
                if (cdf[mid] < u)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            zids[i] = (uint32_t)lo;
        }
        free(cdf);
        /* compressed ids on both paths: the device hash, and eg_hash_batch on
         * the host for the cache's directory */
        uint32_t *h_r32 = (uint32_t *)malloc(nb_rows * 4);
        auto host_rows = [&](size_t bi) -> eg_status {
            eg_status hs2 = eg_hash_batch(sp, 0, zids + bi * nb_tok, SB, T, EG_HASH_OFFSETS, 0,
                                          h_r32, nb_rows, &err);
            for (size_t i = 0; !hs2 && i < nb_rows; i++)
                h_rows[i] = h_r32[i];
            return hs2;
        };
        uint32_t *d_zids;
        uint64_t *d_slots, *d_r2;
        __nv_bfloat16 *d_e;
        float *d_ef, *d_h, *d_y, *d_w[8];
        const size_t wn[8] = {CH * De, CH, (size_t)dm.d * De, dm.d, CH, CH, CH, CH * dm.kernel};
        CK(cudaMalloc(&d_zids, NB * nb_tok * 4));
        CK(cudaMalloc(&d_slots, 2 * nb_rows * 8));
        CK(cudaMalloc(&d_r2, nb_rows * 8));
        CK(cudaMalloc(&d_e, nb_rows * dim * 2));
        CK(cudaMalloc(&d_ef, nb_rows * dim * 4));
        CK(cudaMalloc(&d_h, nb_tok * CH * 4));
        CK(cudaMalloc(&d_y, nb_tok * CH * 4));
        for (int i = 0; i < 8; i++) {
            CK(cudaMalloc(&d_w[i], wn[i] * 4));
            fill_kernel<<<(unsigned)((wn[i] + 255) / 256), 256>>>(d_w[i], wn[i], 0.02f, 11u + i);
        }
        fill_kernel<<<(unsigned)((nb_tok * CH + 255) / 256), 256>>>(d_h, nb_tok * CH, 1.0f, 99u);
        CK(cudaMemcpy(d_zids, zids, NB * nb_tok * 4, cudaMemcpyHostToDevice));
        eg_layer_weights lw = {d_w[0], d_w[1], d_w[2], d_w[3], d_w[4], d_w[5], d_w[6], d_w[7]};
        eg_cuda_layer *lay = NULL;
        if (eg_cuda_layer_create(&dm, &lay, &err)) {
            fprintf(stderr, "layer: %s\n", err.msg);
            return 1;
        }
        cudaStream_t side;
        CK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
        auto project = [&](void) { /* the layer's forward on the gathered rows */
            bf16_to_f32<<<(unsigned)((nb_rows * dim + 255) / 256), 256>>>(d_e, d_ef, nb_rows * dim);
            if (eg_cuda_layer_forward(lay, &dm, &lw, d_ef, d_h, d_y, NULL, &err))
                fprintf(stderr, "layer forward: %s\n", err.msg);
        };
        const uint64_t cache_rows = lrows / 8;
        eg_cuda_table *ct = NULL;
        if (eg_runtime_dim(rt) * 2 % 4 ||
            eg_cuda_table_open_cached(rt, 0, cache_rows, 8, EG_BF16, nb_rows, &ct, &err)) {
            fprintf(stderr, "cached table: %s\n", err.msg);
            return 1;
        }
        double step[2] = {0, 0};
        size_t hits = 0, loads = 0, direct = 0;
        for (int rep = 0; rep < 2; rep++) /* the first pass warms up (and fills the cache) */
            for (int w = 0; w < 2; w++) {
                cudaDeviceSynchronize();
                cudaEventRecord(e0);
                if (w == 0) {
                    for (size_t bi = 0; bi < NB; bi++) {
                        eg_cuda_hash(dev_t, d_zids + bi * nb_tok, SB, T, d_r2, NULL, &err);
                        eg_cuda_gather(dev_t, d_r2, nb_rows, d_e, NULL, &err);
                        project();
                    }
                } else {
                    eg_rowcache_plan_stats ps;
                    eg_status es = EG_OK;
                    /* rows of batch 0 on the host, staged */
                    es = host_rows(0);
                    if (!es)
                        es = eg_cuda_cache_stage(ct, h_rows, nb_rows, d_slots, side, &ps, &err);
                    for (size_t bi = 0; bi < NB && !es; bi++) {
                        uint64_t *cur = d_slots + (bi & 1) * nb_rows;
                        es = eg_cuda_gather_slots(ct, cur, nb_rows, d_e, NULL, &err);
                        project(); /* queued: the GPU computes batch bi ... */
                        if (!es && bi + 1 < NB) { /* ... while the host stages bi + 1 */
                            es = host_rows(bi + 1);
                            if (!es)
                                es = eg_cuda_cache_stage(ct, h_rows, nb_rows,
                                                         d_slots + ((bi + 1) & 1) * nb_rows, side,
                                                         &ps, &err);
                            if (rep == 1) {
                                hits += ps.hits;
                                loads += ps.loads;
                                direct += ps.direct;
                            }
                        }
                    }
                    if (es) {
                        fprintf(stderr, "offloaded step: %s\n", err.msg);
                        return 1;
                    }
                }
                cudaEventRecord(e1);
                cudaEventSynchronize(e1);
                step[w] = time_ms(e0, e1) * 1e-3 / NB;
            }
        printf("layer step (hash, gather, forward) of %zu tokens, table of %llu rows: "
               "resident %.3f ms, offloaded behind a cache of %llu rows %.3f ms (%+.1f%%; bar: "
               "+3%%)\n", nb_tok, (unsigned long long)lrows, step[0] * 1e3,
               (unsigned long long)cache_rows, step[1] * 1e3, 100 * (step[1] / step[0] - 1));
        printf("  cache: %.1f%% of positions hit, %.1f%% loaded, %.2f%% direct\n",
               100.0 * hits / ((NB - 1) * nb_rows), 100.0 * loads / ((NB - 1) * nb_rows),
               100.0 * direct / ((NB - 1) * nb_rows));
        eg_cuda_table_close(ct);
        eg_cuda_layer_free(lay);
        cudaStreamDestroy(side);
        cudaFree(d_zids);
        cudaFree(d_slots);
        cudaFree(d_r2);
        for (int i = 0; i < 8; i++)
            cudaFree(d_w[i]);
        cudaFree(d_e);
        cudaFree(d_ef);
        cudaFree(d_h);
        cudaFree(d_y);
        free(zids);
        free(h_rows);
        free(h_r32);
    }
    eg_cuda_table_close(dev_t);
    eg_cuda_table_close(host_t);
    eg_runtime_close(rt);
    return 0;
}
