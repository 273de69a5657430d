// backend.cu - the CUDA backend of the runtime (libengram_cuda.so), reached
// only through the backend table (include/engram/eg_backend.h): hashing with
// the shared contract header, gather, unique (CUB), the Engram layer forward
// and backward (cuBLAS for the projections, kernels for the norms, gate and
// conv, keys in binary64 as on the CPU), and Adam with the CPU's exact
// arithmetic (built with --fmad=false: no contraction into FMA).
//
// These entry points take host memory and stage through the device: they are
// what the parity suite compares with the CPU oracle, case by case.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cub/cub.cuh>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "engram/eg_backend.h"
#include "engram/eg_cuda.h"
#include "engram/eg_contract.h"
#include "eg_adam_rule.h"

extern "C" eg_status eg_fail(eg_err *err, eg_status code, const char *fmt, ...); /* libengram */

namespace {

#define CU(call)                                                                              \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess) {                                                              \
            st = eg_fail(err, EG_EIO, "cuda: %s: %s", #call, cudaGetErrorString(e_));            \
            goto done;                                                                        \
        }                                                                                     \
    } while (0)

#define CB(call)                                                                              \
    do {                                                                                      \
        cublasStatus_t b_ = (call);                                                           \
        if (b_ != CUBLAS_STATUS_SUCCESS) {                                                    \
            st = eg_fail(err, EG_EIO, "cublas: %s: status %d", #call, (int)b_);                  \
            goto done;                                                                        \
        }                                                                                     \
    } while (0)

template <typename T> T *dev(size_t n, cudaError_t *e)
{
    T *p = nullptr;
    cudaError_t r = cudaMalloc((void **)&p, (n ? n : 1) * sizeof(T));
    if (r != cudaSuccess)
        *e = r;
    return p;
}

/* ---- hash ---------------------------------------------------------------------- */

struct hash_args {
    const uint32_t *ids;
    size_t n_seq, T;
    uint32_t N, K, H;
    const int64_t *mult;
    const uint64_t *primes, *offs;
    int64_t pad;
    uint32_t *out;
};

__global__ void hash_kernel(hash_args a)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= a.n_seq * a.T)
        return;
    const size_t t = i % a.T;
    int64_t hist[16], mix[16];
    for (uint32_t k = 0; k < a.N; k++)
        hist[k] = k <= t ? (int64_t)a.ids[i - k] : a.pad;
    eg_mix_position(hist, a.mult, a.N, mix);
    for (uint32_t c = 0; c < a.H; c++) {
        const eg_fastmod_t f = eg_fastmod_make(a.primes[c]);
        const uint64_t idx = eg_mod_fast(mix[c / a.K], &f);
        a.out[i * a.H + c] = (uint32_t)(idx + (a.offs ? a.offs[c] : 0));
    }
}

eg_status cu_hash(const eg_spec *spec, uint32_t li, const uint32_t *ids, size_t n_seq,
                  size_t seq_len, uint32_t flags, uint32_t *out, size_t out_cap, eg_err *err)
{
    if (!spec || li >= eg_spec_n_layers(spec))
        return eg_fail(err, EG_EINVAL, "hash: no spec or layer index %u out of range", li);
    const uint32_t N = eg_spec_max_ngram(spec), K = eg_spec_heads_per_ngram(spec),
                   H = eg_spec_n_heads(spec);
    const size_t n = n_seq * seq_len;
    if (out_cap < n * H)
        return eg_fail(err, EG_ECAPACITY, "hash: out holds %zu, needs %zu", out_cap, n * H);
    const uint64_t V = eg_spec_compressed_vocab(spec);
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= V)
            return eg_fail(err, EG_ERANGE, "hash: id %u at %zu >= V' = %llu", ids[i], i,
                        (unsigned long long)V);
    const uint64_t *primes = eg_spec_primes(spec, li), *offs = eg_spec_offsets(spec, li);
    uint64_t lim = 0;
    for (uint32_t c = 0; c < H; c++) {
        uint64_t v = primes[c] + ((flags & 1u) ? offs[c] : 0);
        lim = v > lim ? v : lim;
    }
    if (lim > 0xffffffffull)
        return eg_fail(err, EG_EUNSUPPORTED, "hash: results do not fit uint32");
    eg_status st = EG_OK;
    cudaError_t me = cudaSuccess;
    uint32_t *d_ids = dev<uint32_t>(n, &me), *d_out = dev<uint32_t>(n * H, &me);
    int64_t *d_mult = dev<int64_t>(N, &me);
    uint64_t *d_pr = dev<uint64_t>(H, &me), *d_of = dev<uint64_t>(H, &me);
    CU(me);
    CU(cudaMemcpy(d_ids, ids, n * 4, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(d_mult, eg_spec_multipliers(spec, li), N * 8, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(d_pr, primes, H * 8, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(d_of, offs, H * 8, cudaMemcpyHostToDevice));
    if (n) {
        hash_args a = {d_ids, n_seq, seq_len, N, K, H, d_mult, d_pr,
                       (flags & 1u) ? d_of : nullptr, eg_spec_pad(spec), d_out};
        hash_kernel<<<(unsigned)((n + 255) / 256), 256>>>(a);
        CU(cudaGetLastError());
        CU(cudaMemcpy(out, d_out, n * H * 4, cudaMemcpyDeviceToHost));
    }
done:
    cudaFree(d_ids);
    cudaFree(d_out);
    cudaFree(d_mult);
    cudaFree(d_pr);
    cudaFree(d_of);
    return st;
}

/* ---- gather (a device-resident table) ----------------------------------------------- */

__global__ void gather_kernel(const unsigned char *table, uint64_t n_rows, size_t rb,
                              const uint64_t *rows, size_t n, unsigned char *out, int *bad)
{
    const size_t i = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const unsigned lane = threadIdx.x % 32;
    if (i >= n)
        return;
    const uint64_t r = rows[i];
    if (r >= n_rows) {
        if (!lane)
            atomicExch(bad, 1);
        return;
    }
    const unsigned char *src = table + r * rb;
    unsigned char *dst = out + i * rb;
    if (rb % 4 == 0) {
        for (size_t k = lane; k < rb / 4; k += 32)
            ((uint32_t *)dst)[k] = ((const uint32_t *)src)[k];
    } else {
        for (size_t k = lane; k < rb; k += 32)
            dst[k] = src[k];
    }
}

eg_status cu_gather(const void *table, uint64_t n_rows, size_t rb, const uint64_t *rows, size_t n,
                    void *out, eg_err *err)
{
    eg_status st = EG_OK;
    cudaError_t me = cudaSuccess;
    unsigned char *d_t = dev<unsigned char>(n_rows * rb, &me), *d_o = dev<unsigned char>(n * rb, &me);
    uint64_t *d_r = dev<uint64_t>(n, &me);
    int *d_bad = dev<int>(1, &me), bad = 0;
    CU(me);
    CU(cudaMemcpy(d_t, table, n_rows * rb, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(d_r, rows, n * 8, cudaMemcpyHostToDevice));
    CU(cudaMemset(d_bad, 0, sizeof(int)));
    if (n) {
        gather_kernel<<<(unsigned)((n + 7) / 8), 256>>>(d_t, n_rows, rb, d_r, n, d_o, d_bad);
        CU(cudaGetLastError());
        CU(cudaMemcpy(&bad, d_bad, sizeof bad, cudaMemcpyDeviceToHost));
        if (bad) {
            for (size_t i = 0; i < n; i++)
                if (rows[i] >= n_rows) {
                    st = eg_fail(err, EG_ERANGE, "gather: row %llu at %zu >= %llu rows",
                              (unsigned long long)rows[i], i, (unsigned long long)n_rows);
                    break;
                }
            goto done;
        }
        CU(cudaMemcpy(out, d_o, n * rb, cudaMemcpyDeviceToHost));
    }
done:
    cudaFree(d_t);
    cudaFree(d_o);
    cudaFree(d_r);
    cudaFree(d_bad);
    return st;
}

/* ---- unique (CUB radix sort + select) ----------------------------------------------- */

eg_status cu_unique(const uint64_t *rows, size_t n, uint64_t *uniq, size_t *n_uniq, eg_err *err)
{
    eg_status st = EG_OK;
    cudaError_t me = cudaSuccess;
    uint64_t *d_in = dev<uint64_t>(n, &me), *d_sorted = dev<uint64_t>(n, &me),
             *d_u = dev<uint64_t>(n, &me);
    int *d_nu = dev<int>(1, &me);
    void *tmp = nullptr;
    size_t tb1 = 0, tb2 = 0;
    int nu = 0;
    CU(me);
    if (!n) {
        *n_uniq = 0;
        goto done;
    }
    if (n > 0x7fffffff) {
        st = eg_fail(err, EG_EUNSUPPORTED, "unique: more than 2^31 rows");
        goto done;
    }
    CU(cudaMemcpy(d_in, rows, n * 8, cudaMemcpyHostToDevice));
    CU(cub::DeviceRadixSort::SortKeys(nullptr, tb1, d_in, d_sorted, (int)n));
    CU(cub::DeviceSelect::Unique(nullptr, tb2, d_sorted, d_u, d_nu, (int)n));
    CU(cudaMalloc(&tmp, tb1 > tb2 ? tb1 : tb2));
    CU(cub::DeviceRadixSort::SortKeys(tmp, tb1, d_in, d_sorted, (int)n));
    CU(cub::DeviceSelect::Unique(tmp, tb2, d_sorted, d_u, d_nu, (int)n));
    CU(cudaMemcpy(&nu, d_nu, sizeof nu, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(uniq, d_u, (size_t)nu * 8, cudaMemcpyDeviceToHost));
    *n_uniq = (size_t)nu;
done:
    cudaFree(d_in);
    cudaFree(d_sorted);
    cudaFree(d_u);
    cudaFree(d_nu);
    cudaFree(tmp);
    return st;
}

/* ---- Adam: the CPU's arithmetic, operation for operation --------------------------- */

__global__ void adam_kernel(float *vals, float *m, float *v, const uint32_t *steps,
                            const float *g, size_t n, uint32_t dim, eg_adam hp)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * dim)
        return;
    const uint32_t step = steps[i / dim];
    const double b1 = hp.beta1, b2 = hp.beta2;
    const double lr = (double)hp.lr * (hp.lr_mult > 0 ? (double)hp.lr_mult : 1.0);
    const double c1 = 1.0 - eg_powi(b1, step), c2 = 1.0 - eg_powi(b2, step);
    eg_adam_value(&vals[i], &m[i], &v[i], g[i], b1, b2, c1, c2, lr, hp.eps);
}

eg_status cu_adam(float *vals, float *m, float *v, uint32_t *steps, const float *grads, size_t n,
                  uint32_t dim, const eg_adam *hp, eg_err *err)
{
    eg_status st = EG_OK;
    cudaError_t me = cudaSuccess;
    const size_t nv = n * dim;
    float *d_v = dev<float>(nv, &me), *d_m = dev<float>(nv, &me), *d_s = dev<float>(nv, &me),
          *d_g = dev<float>(nv, &me);
    uint32_t *d_st = dev<uint32_t>(n, &me);
    CU(me);
    for (size_t i = 0; i < n; i++)
        steps[i]++;
    CU(cudaMemcpy(d_v, vals, nv * 4, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(d_m, m, nv * 4, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(d_s, v, nv * 4, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(d_g, grads, nv * 4, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(d_st, steps, n * 4, cudaMemcpyHostToDevice));
    if (nv) {
        adam_kernel<<<(unsigned)((nv + 255) / 256), 256>>>(d_v, d_m, d_s, d_st, d_g, n, dim, *hp);
        CU(cudaGetLastError());
    }
    CU(cudaMemcpy(vals, d_v, nv * 4, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(m, d_m, nv * 4, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(v, d_s, nv * 4, cudaMemcpyDeviceToHost));
done:
    cudaFree(d_v);
    cudaFree(d_m);
    cudaFree(d_s);
    cudaFree(d_g);
    cudaFree(d_st);
    return st;
}

} // namespace

#include "layer.cuh"
#include "table.cuh"
#include "train.cuh"
#include "cache.cuh"

namespace {
const eg_backend cuda_backend = {"cuda",     cu_hash,     cu_gather, cu_unique,    cu_forward,
                                 cu_backward, cu_adam,     cu_lookup, cu_train_rows};
}

extern "C" __attribute__((visibility("default"))) const eg_backend *eg_cuda_backend(char *why,
                                                                                     size_t cap)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        if (why && cap)
            snprintf(why, cap, "no CUDA device: %s",
                     e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return nullptr;
    }
    return &cuda_backend;
}
