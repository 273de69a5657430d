// table.cuh - device-pointer entry points (eg_cuda.h), included by backend.cu:
// a layer's table resident in device memory or in host memory (the store's
// map registered with the driver, or pinned copies where registration is
// refused), found through a per-block address table on the device.
#include "engram/eg_cuda.h"

struct eg_cuda_cache; // cache.cuh
struct eg_cuda_train; // train.cuh

struct eg_cuda_table {
    eg_runtime *rt;
    eg_cuda_cache *cc;            // CACHED: the device cache and its directory
    uint32_t li, N, K, H, R;
    size_t rb;
    uint64_t rows, nblocks;
    eg_cuda_residency where;
    unsigned char *d_flat;        // DEVICE: the rows in HBM
    unsigned char *h_pinned;      // HOST fallback: pinned copies
    const void *h_registered;     // HOST: the registered map
    const unsigned char **d_blk;  // device addresses of each block's first row
    int64_t *d_mult;
    uint64_t *d_primes, *d_offs;
    int64_t pad;
    int *d_bad;
    eg_cuda_train *tr;            // TRAIN: binary32 rows and their Adam state (train.cuh)
};

namespace {
void cache_free(eg_cuda_cache *c); // cache.cuh
void train_free(eg_cuda_train *tr); // train.cuh

__global__ void hash64_kernel(const uint32_t *ids, size_t n_seq, size_t T, uint32_t N, uint32_t K,
                              uint32_t H, const int64_t *mult, const uint64_t *primes,
                              const uint64_t *offs, int64_t pad, uint64_t *out)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_seq * T)
        return;
    const size_t t = i % T;
    int64_t hist[16], mix[16];
    for (uint32_t k = 0; k < N; k++)
        hist[k] = k <= t ? (int64_t)ids[i - k] : pad;
    eg_mix_position(hist, mult, N, mix);
    for (uint32_t c = 0; c < H; c++) {
        const eg_fastmod_t f = eg_fastmod_make(primes[c]);
        out[i * H + c] = offs[c] + eg_mod_fast(mix[c / K], &f);
    }
}

__global__ void gather_blk_kernel(const unsigned char *const *blk, uint32_t R, size_t rb,
                                  uint64_t n_rows, const uint64_t *rows, size_t n,
                                  unsigned char *out, int *bad)
{
    const size_t i = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const unsigned lane = threadIdx.x % 32;
    if (i >= n)
        return;
    const uint64_t r = rows[i];
    unsigned char *dst = out + i * rb;
    if (r >= n_rows) {
        for (size_t k = lane; k < rb; k += 32)
            dst[k] = 0;
        if (!lane)
            atomicExch(bad, 1);
        return;
    }
    const unsigned char *src = blk[r / R] + (r % R) * rb;
    if (rb % 4 == 0 && ((uintptr_t)src % 4) == 0) {
        for (size_t k = lane; k < rb / 4; k += 32)
            ((uint32_t *)dst)[k] = ((const uint32_t *)src)[k];
    } else {
        for (size_t k = lane; k < rb; k += 32)
            dst[k] = src[k];
    }
}

} // namespace

extern "C" __attribute__((visibility("default"))) void eg_cuda_table_close(eg_cuda_table *t)
{
    if (!t)
        return;
    cudaFree(t->d_flat);
    cudaFree((void *)t->d_blk);
    cudaFree(t->d_mult);
    cudaFree(t->d_primes);
    cudaFree(t->d_offs);
    cudaFree(t->d_bad);
    if (t->h_pinned)
        cudaFreeHost(t->h_pinned);
    if (t->h_registered)
        cudaHostUnregister((void *)t->h_registered);
    cache_free(t->cc);
    train_free(t->tr);
    free(t);
}

extern "C" __attribute__((visibility("default"))) eg_cuda_residency
eg_cuda_table_residency(const eg_cuda_table *t)
{
    return t ? t->where : EG_CUDA_DEVICE;
}

/* A table's shape and hashing constants on the device (no rows yet; the
 * block-pointer table allocated, not filled); *out owns it. */
static eg_status table_new(eg_runtime *rt, uint32_t li, eg_cuda_table **out, eg_err *err)
{
    eg_store *s = (eg_store *)eg_runtime_store(rt);
    const eg_spec *sp = eg_runtime_spec(rt);
    eg_cuda_table *t = (eg_cuda_table *)calloc(1, sizeof *t);
    if (!t)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    const eg_store_info *in = eg_store_get_info(s);
    t->rt = rt;
    t->li = li;
    t->N = eg_spec_max_ngram(sp);
    t->K = eg_spec_heads_per_ngram(sp);
    t->H = eg_spec_n_heads(sp);
    t->R = in->rows_per_block;
    t->rb = in->row_bytes;
    t->rows = eg_spec_layer_rows(sp, li);
    t->nblocks = (t->rows + t->R - 1) / t->R;
    t->pad = eg_spec_pad(sp);
    eg_status st = EG_OK;
    cudaError_t me = cudaSuccess;
    t->d_mult = dev<int64_t>(t->N, &me);
    t->d_primes = dev<uint64_t>(t->H, &me);
    t->d_offs = dev<uint64_t>(t->H, &me);
    t->d_bad = dev<int>(1, &me);
    t->d_blk = (const unsigned char **)dev<void *>(t->nblocks, &me);
    CU(me);
    CU(cudaMemcpy(t->d_mult, eg_spec_multipliers(sp, li), t->N * 8, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(t->d_primes, eg_spec_primes(sp, li), t->H * 8, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(t->d_offs, eg_spec_offsets(sp, li), t->H * 8, cudaMemcpyHostToDevice));
done:
    if (st) {
        eg_cuda_table_close(t);
        return st;
    }
    *out = t;
    return EG_OK;
}

extern "C" __attribute__((visibility("default"))) eg_status
eg_cuda_table_open(eg_runtime *rt, uint32_t li, eg_cuda_residency where, size_t reserve,
                   eg_cuda_table **out, eg_err *err)
{
    if (!rt || !out)
        return eg_fail(err, EG_EINVAL, "eg_cuda_table_open: NULL argument");
    *out = nullptr;
    eg_store *s = (eg_store *)eg_runtime_store(rt);
    const eg_spec *sp = eg_runtime_spec(rt);
    if (li >= eg_spec_n_layers(sp))
        return eg_fail(err, EG_ERANGE, "eg_cuda_table_open: layer index %u out of range", li);
    eg_cuda_table *t = nullptr;
    eg_status st = table_new(rt, li, &t, err);
    if (st)
        return st;
    cudaError_t me = cudaSuccess;
    const unsigned char **hb = (const unsigned char **)calloc(t->nblocks ? t->nblocks : 1, sizeof *hb);
    unsigned char *stage = nullptr;
    const size_t bytes = (size_t)t->rows * t->rb;
    if (!hb) {
        st = eg_fail(err, EG_ENOMEM, "out of memory");
        goto done;
    }
    if (where == EG_CUDA_AUTO) {
        size_t fr = 0, tot = 0;
        CU(cudaMemGetInfo(&fr, &tot));
        where = bytes + reserve <= fr ? EG_CUDA_DEVICE : EG_CUDA_HOST;
    }
    t->where = where;
    if (where == EG_CUDA_HOST && eg_runtime_rows(rt) == EG_RT_ROWS_TIER) {
        /* host residency maps the whole store for the device; a runtime on
         * the row tier holds only its hot rows: the cached residency stages
         * each batch's rows through the tier (and eg_rt_prefetch) instead */
        st = eg_fail(err, EG_EUNSUPPORTED, "layer %u: the runtime reads rows from disk through the "
                                           "row tier; host residency maps the whole store: use "
                                           "EG_CUDA_CACHED (its loads read through the tier)",
                     li);
        goto done;
    }
    if (where == EG_CUDA_HOST) {
        /* every block must be in the map (a dense store), crc checked once */
        for (uint64_t b = 0; b < t->nblocks; b++) {
            const void *p = nullptr;
            if ((st = eg_store_row_ptr(s, li, b * t->R, &p, err)))
                goto done;
            if (!p) {
                st = eg_fail(err, EG_EUNSUPPORTED, "host residency needs a dense store (block %llu "
                                                "of layer %u is not stored)",
                          (unsigned long long)b, li);
                goto done;
            }
            hb[b] = (const unsigned char *)p;
        }
        const void *base;
        size_t len;
        eg_store_map(s, &base, &len);
        void *dbase = nullptr;
        if (cudaHostRegister((void *)base, len,
                             cudaHostRegisterMapped | cudaHostRegisterReadOnly) == cudaSuccess &&
            cudaHostGetDevicePointer(&dbase, (void *)base, 0) == cudaSuccess) {
            t->h_registered = base;
            for (uint64_t b = 0; b < t->nblocks; b++)
                hb[b] = (const unsigned char *)dbase + (hb[b] - (const unsigned char *)base);
        } else { /* the driver refuses the file mapping: pinned copies */
            cudaGetLastError();
            CU(cudaHostAlloc((void **)&t->h_pinned, bytes ? bytes : 1, cudaHostAllocMapped));
            if ((st = eg_store_read_encoded(s, li, 0, t->rows, t->h_pinned, bytes, err)))
                goto done;
            void *dp = nullptr;
            CU(cudaHostGetDevicePointer(&dp, t->h_pinned, 0));
            for (uint64_t b = 0; b < t->nblocks; b++)
                hb[b] = (const unsigned char *)dp + b * t->R * t->rb;
        }
    } else {
        t->d_flat = dev<unsigned char>(bytes, &me);
        CU(me);
        const uint64_t chunk = 1 << 16;
        stage = (unsigned char *)malloc(chunk * t->rb);
        if (!stage) {
            st = eg_fail(err, EG_ENOMEM, "out of memory");
            goto done;
        }
        for (uint64_t r = 0; r < t->rows; r += chunk) {
            const uint64_t n = t->rows - r < chunk ? t->rows - r : chunk;
            if ((st = eg_store_read_encoded(s, li, r, n, stage, chunk * t->rb, err)))
                goto done;
            CU(cudaMemcpy(t->d_flat + r * t->rb, stage, n * t->rb, cudaMemcpyHostToDevice));
        }
        for (uint64_t b = 0; b < t->nblocks; b++)
            hb[b] = t->d_flat + b * t->R * t->rb;
    }
    CU(cudaMemcpy((void *)t->d_blk, hb, t->nblocks * sizeof *hb, cudaMemcpyHostToDevice));
done:
    free(hb);
    free(stage);
    if (st) {
        eg_cuda_table_close(t);
        return st;
    }
    *out = t;
    return EG_OK;
}

extern "C" __attribute__((visibility("default"))) eg_status
eg_cuda_hash(eg_cuda_table *t, const uint32_t *d_ids, size_t n_seq, size_t seq_len,
             uint64_t *d_rows, void *stream, eg_err *err)
{
    if (!t)
        return eg_fail(err, EG_EINVAL, "eg_cuda_hash: NULL table");
    const size_t n = n_seq * seq_len;
    eg_status st = EG_OK;
    if (n) {
        hash64_kernel<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)stream>>>(
            d_ids, n_seq, seq_len, t->N, t->K, t->H, t->d_mult, t->d_primes, t->d_offs, t->pad,
            d_rows);
        CU(cudaGetLastError());
    }
done:
    return st;
}

extern "C" __attribute__((visibility("default"))) eg_status
eg_cuda_gather(eg_cuda_table *t, const uint64_t *d_rows, size_t n, void *d_out, void *stream,
               eg_err *err)
{
    if (!t)
        return eg_fail(err, EG_EINVAL, "eg_cuda_gather: NULL table");
    if (t->cc)
        return eg_fail(err, EG_EINVAL, "eg_cuda_gather: a cached table (eg_cuda_cache_stage, "
                                       "eg_cuda_gather_slots)");
    eg_status st = EG_OK;
    int bad = 0;
    if (!n)
        return EG_OK;
    CU(cudaMemsetAsync(t->d_bad, 0, sizeof(int), (cudaStream_t)stream));
    gather_blk_kernel<<<(unsigned)((n + 7) / 8), 256, 0, (cudaStream_t)stream>>>(
        t->d_blk, t->R, t->rb, t->rows, d_rows, n, (unsigned char *)d_out, t->d_bad);
    CU(cudaGetLastError());
    CU(cudaMemcpyAsync(&bad, t->d_bad, sizeof bad, cudaMemcpyDeviceToHost, (cudaStream_t)stream));
    CU(cudaStreamSynchronize((cudaStream_t)stream));
    if (bad)
        st = eg_fail(err, EG_ERANGE, "eg_cuda_gather: a row is >= the layer's %llu rows",
                  (unsigned long long)t->rows);
done:
    return st;
}

namespace {
/* the backend table's lookup: project on the host (the store's projection),
 * hash and gather on the device with the table placed as asked */
eg_status cu_lookup(eg_runtime *rt, uint32_t li, int residency, const uint32_t *ids, size_t n_seq,
                    size_t seq_len, uint64_t *rows, void *out, eg_err *err)
{
    eg_cuda_table *t = nullptr;
    const eg_store_info *in = eg_store_get_info(eg_runtime_store(rt));
    const size_t chunk = 256; // CACHED: batches this small make a cache of 1/16 evict
    eg_status st;
    if (residency == EG_CUDA_CACHED) {
        if (in->dtype != EG_F32 && in->dtype != EG_BF16)
            return eg_fail(err, EG_EUNSUPPORTED, "lookup: a cached table holds f32 or bf16 rows");
        const uint64_t lr = eg_spec_layer_rows(eg_runtime_spec(rt), li);
        st = eg_cuda_table_open_cached(rt, li, lr / 16 > 64 ? lr / 16 : 64, 8, in->dtype, chunk,
                                       &t, err);
    } else {
        st = eg_cuda_table_open(rt, li, (eg_cuda_residency)residency, 0, &t, err);
    }
    if (st)
        return st;
    const size_t n = n_seq * seq_len, nr = n * t->H;
    size_t np = 0;
    const uint32_t *proj = eg_store_projection(eg_runtime_store(rt), &np);
    const uint64_t V = eg_spec_compressed_vocab(eg_runtime_spec(rt));
    cudaError_t me = cudaSuccess;
    uint32_t *x = (uint32_t *)malloc((n ? n : 1) * 4);
    uint32_t *d_ids = dev<uint32_t>(n, &me);
    uint64_t *d_rows = dev<uint64_t>(nr, &me);
    unsigned char *d_out = dev<unsigned char>(nr * t->rb, &me);
    if (!x) {
        st = eg_fail(err, EG_ENOMEM, "out of memory");
        goto done;
    }
    CU(me);
    for (size_t i = 0; i < n; i++) {
        uint32_t id = ids[i];
        if (proj ? id >= np : id >= V) {
            st = eg_fail(err, EG_ERANGE, "lookup: id %u at %zu is out of range", id, i);
            goto done;
        }
        x[i] = proj ? proj[id] : id;
    }
    CU(cudaMemcpy(d_ids, x, n * 4, cudaMemcpyHostToDevice));
    if ((st = eg_cuda_hash(t, d_ids, n_seq, seq_len, d_rows, nullptr, err)))
        goto done;
    if (t->cc) { // rows to the host, staged and gathered in batches
        CU(cudaMemcpy(rows, d_rows, nr * 8, cudaMemcpyDeviceToHost));
        uint64_t *h_sl = (uint64_t *)malloc(chunk * 8);
        if (!h_sl) {
            st = eg_fail(err, EG_ENOMEM, "out of memory");
            goto done;
        }
        // stage batch b+1 before gathering batch b, as a training loop does
        size_t a = 0, staged = 0;
        for (; staged < nr && staged < chunk && !st; staged += chunk)
            st = eg_cuda_cache_stage(t, rows, nr < chunk ? nr : chunk, d_rows, nullptr, nullptr, err);
        while (!st && a < nr) {
            const size_t k = nr - a < chunk ? nr - a : chunk;
            uint64_t *slots_a = d_rows + a; // the slots replace the rows, batch by batch
            if (staged < nr) {
                const size_t k2 = nr - staged < chunk ? nr - staged : chunk;
                st = eg_cuda_cache_stage(t, rows + staged, k2, d_rows + staged, nullptr, nullptr,
                                         err);
                staged += k2;
            }
            if (!st)
                st = eg_cuda_gather_slots(t, slots_a, k, d_out + a * t->rb, nullptr, err);
            if (!st && a + k >= nr) { // the last batch: mark it dirty and write it back
                cudaMemcpy(h_sl, slots_a, k * 8, cudaMemcpyDeviceToHost);
                st = eg_cuda_cache_mark_dirty(t, h_sl, k, nullptr, err);
                if (!st)
                    st = eg_cuda_cache_writeback(t, err);
            }
            a += k;
        }
        free(h_sl);
        if (st)
            goto done;
    } else {
        if ((st = eg_cuda_gather(t, d_rows, nr, d_out, nullptr, err)))
            goto done;
        CU(cudaMemcpy(rows, d_rows, nr * 8, cudaMemcpyDeviceToHost));
    }
    CU(cudaMemcpy(out, d_out, nr * t->rb, cudaMemcpyDeviceToHost));
done:
    free(x);
    cudaFree(d_ids);
    cudaFree(d_rows);
    cudaFree(d_out);
    eg_cuda_table_close(t);
    return st;
}
} // namespace
