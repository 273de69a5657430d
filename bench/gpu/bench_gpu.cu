// bench_gpu.cu - `make bench-gpu` (needs a GPU): the device's copy bandwidth
// and host-to-device bandwidth first, then hash throughput as a fraction of
// memory bandwidth, gather GB/s from HBM for 64-, 128- and 256-byte rows, and
// hash + gather with the table resident in HBM vs host-resident (read over
// the bus), same batches in the same run.
// usage: bench_gpu STORE   (a dense store, e.g. build/bench/demo-bf16.store)
#include <cuda_runtime.h>
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
    printf("(the layer forward and the GPU row cache are not part of this step yet)\n");
    eg_cuda_table_close(dev_t);
    eg_cuda_table_close(host_t);
    eg_runtime_close(rt);
    return 0;
}
