// cache.cuh - EG_CUDA_CACHED tables (eg_cuda.h), included by backend.cu after
// table.cuh: rows stay with the runtime in host memory; a device cache of hot
// rows is filled ahead of each batch from a pinned staging buffer, under the
// host-side directory of eg_rowcache.h. Dirty rows go back to the runtime.

struct eg_cuda_cache {
    eg_rowcache *dir;
    uint64_t slots;
    eg_dtype dt;
    size_t crb, max_batch;
    unsigned char *d_cache;
    // two staging buffers: rows to load, then rows served directly
    unsigned char *h_stage[2], *d_stage; // d_stage: 2 * max_batch rows
    uint64_t *h_ls[2], *d_ls[2];         // load slots
    uint64_t *h_slots[2];                // the plan's slots, then copied to the caller
    cudaEvent_t copied[2], gathered[2];
    cudaEvent_t updated;                 // recorded by mark_dirty after the caller's updates
    int gathered_pending[2];
    int next;                            // the staging buffer of the next stage
    int order[2], n_order;               // staged, not yet gathered (oldest first)
    // plan lists and write-back buffers
    uint64_t *lr, *ls, *wr, *ws, *direct_rows;
    unsigned char *h_wb, *d_wb;
    uint64_t *d_wsl;
    float *f32;
};

namespace {

__global__ void scatter_rows_kernel(const unsigned char *src, const uint64_t *slots, size_t n,
                                    size_t rb, unsigned char *cache)
{
    const size_t i = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const unsigned lane = threadIdx.x % 32;
    if (i >= n)
        return;
    const uint32_t *s = (const uint32_t *)(src + i * rb);
    uint32_t *d = (uint32_t *)(cache + slots[i] * rb);
    for (size_t k = lane; k < rb / 4; k += 32)
        d[k] = s[k];
}

__global__ void pack_rows_kernel(const unsigned char *cache, const uint64_t *slots, size_t n,
                                 size_t rb, unsigned char *dst)
{
    const size_t i = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const unsigned lane = threadIdx.x % 32;
    if (i >= n)
        return;
    const uint32_t *s = (const uint32_t *)(cache + slots[i] * rb);
    uint32_t *d = (uint32_t *)(dst + i * rb);
    for (size_t k = lane; k < rb / 4; k += 32)
        d[k] = s[k];
}

// slot < n_cache: the cache; else row (slot - n_cache) of the staging area
__global__ void gather_slots_kernel(const unsigned char *cache, uint64_t n_cache,
                                    const unsigned char *stage, uint64_t n_stage,
                                    const uint64_t *slots, size_t n, size_t rb,
                                    unsigned char *out)
{
    const size_t i = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const unsigned lane = threadIdx.x % 32;
    if (i >= n)
        return;
    const uint64_t s = slots[i];
    uint32_t *d = (uint32_t *)(out + i * rb);
    if (s >= n_cache + n_stage) {
        for (size_t k = lane; k < rb / 4; k += 32)
            d[k] = 0;
        return;
    }
    const uint32_t *src = (const uint32_t *)(s < n_cache ? cache + s * rb
                                                         : stage + (s - n_cache) * rb);
    for (size_t k = lane; k < rb / 4; k += 32)
        d[k] = src[k];
}

void cache_free(eg_cuda_cache *c)
{
    if (!c)
        return;
    eg_rowcache_free(c->dir);
    cudaFree(c->d_cache);
    cudaFree(c->d_stage);
    cudaFree(c->d_wb);
    cudaFree(c->d_wsl);
    for (int k = 0; k < 2; k++) {
        cudaFreeHost(c->h_stage[k]);
        cudaFreeHost(c->h_ls[k]);
        cudaFree(c->d_ls[k]);
        free(c->h_slots[k]);
        if (c->copied[k])
            cudaEventDestroy(c->copied[k]);
        if (c->gathered[k])
            cudaEventDestroy(c->gathered[k]);
    }
    if (c->updated)
        cudaEventDestroy(c->updated);
    cudaFreeHost(c->h_wb);
    free(c->lr);
    free(c->ls);
    free(c->wr);
    free(c->ws);
    free(c->direct_rows);
    free(c->f32);
    free(c);
}

// rows of the cache's dtype -> binary32 (for eg_rt_set_rows)
void to_f32(const eg_cuda_cache *c, const unsigned char *src, size_t n, uint32_t dim, float *out)
{
    if (c->dt == EG_F32) {
        memcpy(out, src, n * dim * 4);
        return;
    }
    const uint16_t *b = (const uint16_t *)src;
    for (size_t i = 0; i < n * dim; i++)
        out[i] = eg_bf16_to_f32(b[i]);
}

// copy the listed slots' rows back into the runtime (waits for the device)
eg_status write_back(eg_cuda_table *t, const uint64_t *rows, const uint64_t *slots, size_t n,
                     cudaStream_t stream, eg_err *err)
{
    eg_cuda_cache *c = t->cc;
    eg_status st = EG_OK;
    const uint32_t dim = eg_runtime_dim(t->rt);
    for (size_t a = 0; a < n && !st; a += c->max_batch) {
        const size_t k = n - a < c->max_batch ? n - a : c->max_batch;
        CU(cudaMemcpyAsync(c->d_wsl, slots + a, k * 8, cudaMemcpyHostToDevice, stream));
        pack_rows_kernel<<<(unsigned)((k + 7) / 8), 256, 0, stream>>>(c->d_cache, c->d_wsl, k,
                                                                      c->crb, c->d_wb);
        CU(cudaGetLastError());
        CU(cudaMemcpyAsync(c->h_wb, c->d_wb, k * c->crb, cudaMemcpyDeviceToHost, stream));
        CU(cudaStreamSynchronize(stream));
        to_f32(c, c->h_wb, k, dim, c->f32);
        st = eg_rt_set_rows(t->rt, t->li, rows + a, c->f32, k, err);
    }
done:
    return st;
}

} // namespace

extern "C" __attribute__((visibility("default"))) eg_status
eg_cuda_table_open_cached(eg_runtime *rt, uint32_t li, uint64_t cache_rows, uint32_t ways,
                          eg_dtype dtype, size_t max_batch, eg_cuda_table **out, eg_err *err)
{
    if (!rt || !out)
        return eg_fail(err, EG_EINVAL, "eg_cuda_table_open_cached: NULL argument");
    *out = nullptr;
    if (dtype != EG_F32 && dtype != EG_BF16)
        return eg_fail(err, EG_EINVAL, "eg_cuda_table_open_cached: the cache holds f32 or bf16 rows");
    if (!max_batch)
        return eg_fail(err, EG_EINVAL, "eg_cuda_table_open_cached: max_batch is 0");
    const eg_spec *sp = eg_runtime_spec(rt);
    if (li >= eg_spec_n_layers(sp))
        return eg_fail(err, EG_ERANGE, "eg_cuda_table_open_cached: layer index %u out of range", li);
    eg_cuda_table *t = nullptr;
    eg_status st = table_new(rt, li, &t, err); /* shape and hashing constants */
    if (st)
        return st;
    eg_cuda_cache *c = (eg_cuda_cache *)calloc(1, sizeof *c);
    if (!c) {
        eg_cuda_table_close(t);
        return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    t->cc = c;
    t->where = EG_CUDA_CACHED;
    const uint32_t dim = eg_runtime_dim(rt);
    c->dt = dtype;
    c->crb = (size_t)dim * (dtype == EG_F32 ? 4 : 2);
    t->rb = c->crb;
    c->max_batch = max_batch;
    st = eg_rowcache_create(cache_rows, ways, &c->dir, err);
    cudaError_t me = cudaSuccess;
    if (st)
        goto done;
    if (c->crb % 4) {
        st = eg_fail(err, EG_EUNSUPPORTED, "eg_cuda_table_open_cached: rows of %zu bytes (a "
                                           "multiple of 4 is needed)", c->crb);
        goto done;
    }
    c->slots = eg_rowcache_slots(c->dir);
    c->d_cache = dev<unsigned char>(c->slots * c->crb, &me);
    c->d_stage = dev<unsigned char>(2 * max_batch * c->crb, &me);
    c->d_wb = dev<unsigned char>(max_batch * c->crb, &me);
    c->d_wsl = dev<uint64_t>(max_batch, &me);
    for (int k = 0; k < 2; k++)
        c->d_ls[k] = dev<uint64_t>(max_batch, &me);
    CU(me);
    for (int k = 0; k < 2; k++) {
        CU(cudaHostAlloc((void **)&c->h_stage[k], max_batch * c->crb, cudaHostAllocDefault));
        CU(cudaHostAlloc((void **)&c->h_ls[k], max_batch * 8, cudaHostAllocDefault));
        CU(cudaEventCreateWithFlags(&c->copied[k], cudaEventDisableTiming));
        CU(cudaEventCreateWithFlags(&c->gathered[k], cudaEventDisableTiming));
        c->h_slots[k] = (uint64_t *)malloc(max_batch * 8);
    }
    CU(cudaHostAlloc((void **)&c->h_wb, max_batch * c->crb, cudaHostAllocDefault));
    CU(cudaEventCreateWithFlags(&c->updated, cudaEventDisableTiming));
    c->lr = (uint64_t *)malloc(max_batch * 8);
    c->ls = (uint64_t *)malloc(max_batch * 8);
    c->wr = (uint64_t *)malloc(max_batch * 8);
    c->ws = (uint64_t *)malloc(max_batch * 8);
    c->direct_rows = (uint64_t *)malloc(max_batch * 8);
    c->f32 = (float *)malloc(max_batch * dim * 4);
    if (!c->h_slots[0] || !c->h_slots[1] || !c->lr || !c->ls || !c->wr || !c->ws ||
        !c->direct_rows || !c->f32) {
        st = eg_fail(err, EG_ENOMEM, "out of memory");
        goto done;
    }
done:
    if (st) {
        eg_cuda_table_close(t);
        return st;
    }
    *out = t;
    return EG_OK;
}

extern "C" __attribute__((visibility("default"))) eg_status
eg_cuda_cache_stage(eg_cuda_table *t, const uint64_t *rows, size_t n, uint64_t *d_slots,
                    void *stream_, eg_rowcache_plan_stats *stats, eg_err *err)
{
    if (!t || !t->cc || (n && (!rows || !d_slots)))
        return eg_fail(err, EG_EINVAL, "eg_cuda_cache_stage: NULL argument or not a cached table");
    eg_cuda_cache *c = t->cc;
    cudaStream_t stream = (cudaStream_t)stream_;
    eg_status st = EG_OK;
    if (n > c->max_batch)
        return eg_fail(err, EG_ECAPACITY, "eg_cuda_cache_stage: %zu rows > max_batch %zu", n,
                       c->max_batch);
    for (size_t i = 0; i < n; i++)
        if (rows[i] >= t->rows)
            return eg_fail(err, EG_ERANGE, "eg_cuda_cache_stage: row %llu at %zu >= the layer's %llu",
                           (unsigned long long)rows[i], i, (unsigned long long)t->rows);
    const int k = c->next;
    if (c->n_order == 2) // both buffers staged and not gathered: the caller's order is off
        return eg_fail(err, EG_EINVAL, "eg_cuda_cache_stage: two batches are staged and not "
                                       "gathered yet");
    eg_rowcache_plan_stats ps;
    size_t nd = 0, nl;
    unsigned char *dst;
    // buffer k: its last batch's copies and gather must be done before reuse
    CU(cudaEventSynchronize(c->copied[k]));
    if (c->gathered_pending[k])
        CU(cudaEventSynchronize(c->gathered[k]));
    c->gathered_pending[k] = 0;
    // evictions write back and overwrite slots of older batches: after the
    // caller's last updates of cached rows (recorded by mark_dirty)
    CU(cudaStreamWaitEvent(stream, c->updated, 0));
    if ((st = eg_rowcache_plan(c->dir, rows, n, c->h_slots[k], c->lr, c->ls, c->max_batch, c->wr,
                               c->ws, c->max_batch, &ps, err)))
        return st;
    if (ps.writebacks && (st = write_back(t, c->wr, c->ws, ps.writebacks, stream, err)))
        return st;
    // the rows to load, then the direct rows, into the pinned buffer
    nl = ps.loads;
    for (size_t i = 0; i < n; i++)
        if (c->h_slots[k][i] == EG_ROWCACHE_DIRECT) {
            c->direct_rows[nd] = rows[i];
            c->h_slots[k][i] = c->slots + (uint64_t)k * c->max_batch + nl + nd;
            nd++;
        }
    dst = c->h_stage[k];
    if (nl && (st = eg_rt_gather(t->rt, t->li, c->lr, nl, c->dt, dst, nl * c->crb, err)))
        return st;
    if (nd && (st = eg_rt_gather(t->rt, t->li, c->direct_rows, nd, c->dt, dst + nl * c->crb,
                                 nd * c->crb, err)))
        return st;
    memcpy(c->h_ls[k], c->ls, nl * 8);
    {
        unsigned char *d_area = c->d_stage + (size_t)k * c->max_batch * c->crb;
        if (nl + nd)
            CU(cudaMemcpyAsync(d_area, dst, (nl + nd) * c->crb, cudaMemcpyHostToDevice, stream));
        if (nl) {
            CU(cudaMemcpyAsync(c->d_ls[k], c->h_ls[k], nl * 8, cudaMemcpyHostToDevice, stream));
            scatter_rows_kernel<<<(unsigned)((nl + 7) / 8), 256, 0, stream>>>(
                d_area, c->d_ls[k], nl, c->crb, c->d_cache);
            CU(cudaGetLastError());
        }
        if (n)
            CU(cudaMemcpyAsync(d_slots, c->h_slots[k], n * 8, cudaMemcpyHostToDevice, stream));
        CU(cudaEventRecord(c->copied[k], stream));
    }
    c->order[c->n_order++] = k;
    c->next = k ^ 1;
    if (stats)
        *stats = ps;
done:
    return st;
}

extern "C" __attribute__((visibility("default"))) eg_status
eg_cuda_gather_slots(eg_cuda_table *t, const uint64_t *d_slots, size_t n, void *d_out,
                     void *stream_, eg_err *err)
{
    if (!t || !t->cc)
        return eg_fail(err, EG_EINVAL, "eg_cuda_gather_slots: NULL or not a cached table");
    eg_cuda_cache *c = t->cc;
    cudaStream_t stream = (cudaStream_t)stream_;
    eg_status st = EG_OK;
    if (!c->n_order)
        return eg_fail(err, EG_EINVAL, "eg_cuda_gather_slots: no batch is staged");
    const int k = c->order[0];
    c->order[0] = c->order[1];
    c->n_order--;
    // asynchronous: the slots come from eg_cuda_cache_stage (a slot out of
    // range would still only write zeros)
    CU(cudaStreamWaitEvent(stream, c->copied[k], 0));
    if (n) {
        gather_slots_kernel<<<(unsigned)((n + 7) / 8), 256, 0, stream>>>(
            c->d_cache, c->slots, c->d_stage, 2 * c->max_batch, d_slots, n, c->crb,
            (unsigned char *)d_out);
        CU(cudaGetLastError());
    }
    CU(cudaEventRecord(c->gathered[k], stream));
    c->gathered_pending[k] = 1;
done:
    return st;
}

extern "C" __attribute__((visibility("default"))) void *eg_cuda_cache_rows(eg_cuda_table *t)
{
    return t && t->cc ? t->cc->d_cache : nullptr;
}

extern "C" __attribute__((visibility("default"))) eg_status
eg_cuda_cache_mark_dirty(eg_cuda_table *t, const uint64_t *slots, size_t n, void *stream,
                         eg_err *err)
{
    if (!t || !t->cc)
        return eg_fail(err, EG_EINVAL, "eg_cuda_cache_mark_dirty: NULL or not a cached table");
    // staged direct rows (slot >= the cache's) are not cached: skip them
    eg_status st = EG_OK;
    CU(cudaEventRecord(t->cc->updated, (cudaStream_t)stream));
    for (size_t a = 0; a < n && !st; a += t->cc->max_batch) {
        const size_t k = n - a < t->cc->max_batch ? n - a : t->cc->max_batch;
        size_t m = 0;
        for (size_t i = 0; i < k; i++)
            if (slots[a + i] < t->cc->slots)
                t->cc->ws[m++] = slots[a + i];
        st = eg_rowcache_mark_dirty(t->cc->dir, t->cc->ws, m, err);
    }
done:
    return st;
}

extern "C" __attribute__((visibility("default"))) eg_status
eg_cuda_cache_writeback(eg_cuda_table *t, eg_err *err)
{
    if (!t || !t->cc)
        return eg_fail(err, EG_EINVAL, "eg_cuda_cache_writeback: NULL or not a cached table");
    eg_cuda_cache *c = t->cc;
    eg_status st = EG_OK;
    CU(cudaDeviceSynchronize());
    for (;;) {
        const size_t k = eg_rowcache_take_dirty(c->dir, c->wr, c->ws, c->max_batch);
        if (k && (st = write_back(t, c->wr, c->ws, k, nullptr, err)))
            break;
        if (k < c->max_batch)
            break;
    }
done:
    return st;
}
