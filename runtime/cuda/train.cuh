// train.cuh - EG_CUDA_TRAIN tables (eg_cuda.h), included by backend.cu after
// table.cuh: a layer's rows in binary32 with their Adam state (m, v, step
// counts) in device memory, trained there by eg_cuda_adam_rows with the CPU
// runtime's arithmetic (the gradients of equal rows summed in position order,
// eg_adam_rule.h's update, --fmad=false), and handed back to the runtime
// (eg_rt_set_rows_state) by eg_cuda_table_sync.

struct eg_cuda_train {
    float *val, *m, *v; // [rows][dim]
    uint32_t *step;     // [rows]
    uint8_t *touched;   // [rows]: trained since the last sync
    uint32_t dim;
};

namespace {

void train_free(eg_cuda_train *tr)
{
    if (!tr)
        return;
    cudaFree(tr->val);
    cudaFree(tr->m);
    cudaFree(tr->v);
    cudaFree(tr->step);
    cudaFree(tr->touched);
    free(tr);
}

__global__ void iota_kernel(uint32_t *p, size_t n)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        p[i] = (uint32_t)i;
}

__global__ void range_kernel(const uint64_t *rows, size_t n, uint64_t limit, int *bad)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && rows[i] >= limit)
        *bad = 1;
}

/* sum[u][k] = the gradients of run u's positions, in position order (the
 * first copied, the rest added: eg_rt_reduce_rows' order) */
__global__ void reduce_runs_kernel(const int *n_runs, const uint32_t *off, const uint32_t *cnt,
                                   const uint32_t *pos, const float *g, uint32_t dim, float *sum)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t u = i / dim, k = i % dim;
    if (u >= (size_t)*n_runs)
        return;
    const uint32_t o = off[u];
    float acc = g[(size_t)pos[o] * dim + k];
    for (uint32_t j = 1; j < cnt[u]; j++)
        acc += g[(size_t)pos[o + j] * dim + k];
    sum[u * dim + k] = acc;
}

/* one Adam step of each run's row at its next step count (the count itself
 * is advanced by step_runs_kernel afterwards) */
__global__ void adam_runs_kernel(const int *n_runs, const uint64_t *uniq, const float *sum,
                                 eg_cuda_train tr, eg_adam hp)
{
    const uint32_t dim = tr.dim;
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t u = i / dim, k = i % dim;
    if (u >= (size_t)*n_runs)
        return;
    const uint64_t r = uniq[u];
    const uint32_t step = tr.step[r] + 1;
    const double b1 = hp.beta1, b2 = hp.beta2;
    const double lr = (double)hp.lr * (hp.lr_mult > 0 ? (double)hp.lr_mult : 1.0);
    const double c1 = 1.0 - eg_powi(b1, step), c2 = 1.0 - eg_powi(b2, step);
    const size_t e = r * dim + k;
    eg_adam_value(&tr.val[e], &tr.m[e], &tr.v[e], sum[u * dim + k], b1, b2, c1, c2, lr, hp.eps);
}

__global__ void step_runs_kernel(const int *n_runs, const uint64_t *uniq, eg_cuda_train tr)
{
    const size_t u = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (u >= (size_t)*n_runs)
        return;
    tr.step[uniq[u]]++;
    tr.touched[uniq[u]] = 1;
}

/* packed[i] = the state of row list[i] */
__global__ void pack_state_kernel(const uint64_t *list, size_t n, eg_cuda_train tr, float *val,
                                  float *m, float *v, uint32_t *step)
{
    const uint32_t dim = tr.dim;
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * dim)
        return;
    const size_t j = i / dim, k = i % dim, e = list[j] * dim + k;
    val[i] = tr.val[e];
    m[i] = tr.m[e];
    v[i] = tr.v[e];
    if (!k)
        step[j] = tr.step[list[j]];
}

} // namespace

extern "C" __attribute__((visibility("default"))) eg_status
eg_cuda_table_open_train(eg_runtime *rt, uint32_t li, eg_cuda_table **out, eg_err *err)
{
    if (!rt || !out)
        return eg_fail(err, EG_EINVAL, "eg_cuda_table_open_train: NULL argument");
    *out = nullptr;
    if (li >= eg_spec_n_layers(eg_runtime_spec(rt)))
        return eg_fail(err, EG_ERANGE, "eg_cuda_table_open_train: layer index %u out of range", li);
    eg_cuda_table *t = nullptr;
    eg_status st = table_new(rt, li, &t, err);
    if (st)
        return st;
    const uint32_t dim = eg_runtime_dim(rt);
    const uint64_t chunk = 1 << 16;
    cudaError_t me = cudaSuccess;
    const unsigned char **hb = nullptr;
    uint64_t *ids = nullptr;
    float *hv = nullptr, *hm = nullptr, *hs = nullptr;
    uint32_t *hst = nullptr;
    t->where = EG_CUDA_TRAIN;
    t->rb = (size_t)dim * 4;
    t->tr = (eg_cuda_train *)calloc(1, sizeof *t->tr);
    if (!t->tr) {
        st = eg_fail(err, EG_ENOMEM, "out of memory");
        goto done;
    }
    t->tr->dim = dim;
    t->tr->val = dev<float>(t->rows * dim, &me);
    t->tr->m = dev<float>(t->rows * dim, &me);
    t->tr->v = dev<float>(t->rows * dim, &me);
    t->tr->step = dev<uint32_t>(t->rows, &me);
    t->tr->touched = dev<uint8_t>(t->rows, &me);
    CU(me);
    CU(cudaMemset(t->tr->touched, 0, t->rows ? t->rows : 1));
    /* every row's state from the runtime (stored rows, and rows trained there) */
    ids = (uint64_t *)malloc(chunk * 8);
    hv = (float *)malloc(chunk * dim * 4);
    hm = (float *)malloc(chunk * dim * 4);
    hs = (float *)malloc(chunk * dim * 4);
    hst = (uint32_t *)malloc(chunk * 4);
    hb = (const unsigned char **)calloc(t->nblocks ? t->nblocks : 1, sizeof *hb);
    if (!ids || !hv || !hm || !hs || !hst || !hb) {
        st = eg_fail(err, EG_ENOMEM, "out of memory");
        goto done;
    }
    for (uint64_t r = 0; r < t->rows; r += chunk) {
        const uint64_t n = t->rows - r < chunk ? t->rows - r : chunk;
        for (uint64_t j = 0; j < n; j++)
            ids[j] = r + j;
        if ((st = eg_rt_get_rows_state(rt, li, ids, n, hv, hm, hs, hst, err)))
            goto done;
        CU(cudaMemcpy(t->tr->val + r * dim, hv, n * dim * 4, cudaMemcpyHostToDevice));
        CU(cudaMemcpy(t->tr->m + r * dim, hm, n * dim * 4, cudaMemcpyHostToDevice));
        CU(cudaMemcpy(t->tr->v + r * dim, hs, n * dim * 4, cudaMemcpyHostToDevice));
        CU(cudaMemcpy(t->tr->step + r, hst, n * 4, cudaMemcpyHostToDevice));
    }
    /* eg_cuda_gather reads the binary32 rows through the block table */
    for (uint64_t b = 0; b < t->nblocks; b++)
        hb[b] = (const unsigned char *)t->tr->val + b * t->R * t->rb;
    CU(cudaMemcpy((void *)t->d_blk, hb, t->nblocks * sizeof *hb, cudaMemcpyHostToDevice));
done:
    free(ids);
    free(hv);
    free(hm);
    free(hs);
    free(hst);
    free(hb);
    if (st) {
        eg_cuda_table_close(t);
        return st;
    }
    *out = t;
    return EG_OK;
}

extern "C" __attribute__((visibility("default"))) eg_status
eg_cuda_adam_rows(eg_cuda_table *t, const uint64_t *d_rows, const float *d_grads, size_t n,
                  const eg_adam *hp, void *stream_, eg_err *err)
{
    if (!t || !hp || (n && (!d_rows || !d_grads)))
        return eg_fail(err, EG_EINVAL, "eg_cuda_adam_rows: NULL argument");
    if (!t->tr)
        return eg_fail(err, EG_EINVAL, "eg_cuda_adam_rows: not a training table "
                                       "(eg_cuda_table_open_train)");
    if (!n)
        return EG_OK;
    if (n > 0x7fffffff)
        return eg_fail(err, EG_EUNSUPPORTED, "eg_cuda_adam_rows: more than 2^31 positions");
    cudaStream_t stream = (cudaStream_t)stream_;
    const uint32_t dim = t->tr->dim;
    eg_status st = EG_OK;
    cudaError_t me = cudaSuccess;
    int bad = 0;
    uint32_t *pos = dev<uint32_t>(n, &me), *pos_s = dev<uint32_t>(n, &me);
    uint32_t *cnt = dev<uint32_t>(n, &me), *off = dev<uint32_t>(n, &me);
    uint64_t *rows_s = dev<uint64_t>(n, &me), *uniq = dev<uint64_t>(n, &me);
    int *n_runs = dev<int>(1, &me);
    float *sum = dev<float>(n * dim, &me);
    void *tmp = nullptr;
    size_t tb = 0, tb1 = 0, tb2 = 0, tb3 = 0;
    CU(me);
    /* rows out of range: an error, nothing trained */
    CU(cudaMemsetAsync(t->d_bad, 0, sizeof(int), stream));
    range_kernel<<<blocks(n), 256, 0, stream>>>(d_rows, n, t->rows, t->d_bad);
    CU(cudaGetLastError());
    CU(cudaMemcpyAsync(&bad, t->d_bad, sizeof bad, cudaMemcpyDeviceToHost, stream));
    CU(cudaStreamSynchronize(stream));
    if (bad) {
        st = eg_fail(err, EG_ERANGE, "eg_cuda_adam_rows: a row is >= the layer's %llu rows",
                     (unsigned long long)t->rows);
        goto done;
    }
    /* positions sorted by row, stably (equal rows keep position order) */
    iota_kernel<<<blocks(n), 256, 0, stream>>>(pos, n);
    CU(cub::DeviceRadixSort::SortPairs(nullptr, tb1, d_rows, rows_s, pos, pos_s, (int)n, 0, 64,
                                       stream));
    CU(cub::DeviceRunLengthEncode::Encode(nullptr, tb2, rows_s, uniq, cnt, n_runs, (int)n, stream));
    CU(cub::DeviceScan::ExclusiveSum(nullptr, tb3, cnt, off, (int)n, stream));
    tb = tb1 > tb2 ? tb1 : tb2;
    tb = tb > tb3 ? tb : tb3;
    CU(cudaMalloc(&tmp, tb ? tb : 1));
    CU(cub::DeviceRadixSort::SortPairs(tmp, tb1, d_rows, rows_s, pos, pos_s, (int)n, 0, 64,
                                       stream));
    CU(cudaMemsetAsync(cnt, 0, n * 4, stream)); /* runs past n_runs count 0 */
    CU(cub::DeviceRunLengthEncode::Encode(tmp, tb2, rows_s, uniq, cnt, n_runs, (int)n, stream));
    CU(cub::DeviceScan::ExclusiveSum(tmp, tb3, cnt, off, (int)n, stream));
    reduce_runs_kernel<<<blocks(n * dim), 256, 0, stream>>>(n_runs, off, cnt, pos_s, d_grads, dim,
                                                            sum);
    adam_runs_kernel<<<blocks(n * dim), 256, 0, stream>>>(n_runs, uniq, sum, *t->tr, *hp);
    step_runs_kernel<<<blocks(n), 256, 0, stream>>>(n_runs, uniq, *t->tr);
    CU(cudaGetLastError());
    CU(cudaStreamSynchronize(stream)); /* before the temporaries go */
done:
    cudaFree(pos);
    cudaFree(pos_s);
    cudaFree(cnt);
    cudaFree(off);
    cudaFree(rows_s);
    cudaFree(uniq);
    cudaFree(n_runs);
    cudaFree(sum);
    cudaFree(tmp);
    return st;
}

extern "C" __attribute__((visibility("default"))) eg_status eg_cuda_table_sync(eg_cuda_table *t,
                                                                               eg_err *err)
{
    if (!t)
        return eg_fail(err, EG_EINVAL, "eg_cuda_table_sync: NULL table");
    if (!t->tr)
        return EG_OK; /* nothing is trained on the device */
    const uint32_t dim = t->tr->dim;
    const uint64_t chunk = 1 << 16;
    eg_status st = EG_OK;
    cudaError_t me = cudaSuccess;
    uint8_t *touched = (uint8_t *)malloc(t->rows ? t->rows : 1);
    uint64_t *list = (uint64_t *)malloc(chunk * 8), *d_list = dev<uint64_t>(chunk, &me);
    float *hv = (float *)malloc(chunk * dim * 4), *hm = (float *)malloc(chunk * dim * 4),
          *hs = (float *)malloc(chunk * dim * 4);
    uint32_t *hst = (uint32_t *)malloc(chunk * 4), *d_st = dev<uint32_t>(chunk, &me);
    float *d_v = dev<float>(chunk * dim, &me), *d_m = dev<float>(chunk * dim, &me),
          *d_s = dev<float>(chunk * dim, &me);
    CU(me);
    if (!touched || !list || !hv || !hm || !hs || !hst) {
        st = eg_fail(err, EG_ENOMEM, "out of memory");
        goto done;
    }
    CU(cudaDeviceSynchronize());
    CU(cudaMemcpy(touched, t->tr->touched, t->rows, cudaMemcpyDeviceToHost));
    for (uint64_t r = 0; r < t->rows;) {
        size_t n = 0;
        for (; r < t->rows && n < chunk; r++)
            if (touched[r])
                list[n++] = r;
        if (!n)
            continue;
        CU(cudaMemcpy(d_list, list, n * 8, cudaMemcpyHostToDevice));
        pack_state_kernel<<<blocks(n * dim), 256>>>(d_list, n, *t->tr, d_v, d_m, d_s, d_st);
        CU(cudaGetLastError());
        CU(cudaMemcpy(hv, d_v, n * dim * 4, cudaMemcpyDeviceToHost));
        CU(cudaMemcpy(hm, d_m, n * dim * 4, cudaMemcpyDeviceToHost));
        CU(cudaMemcpy(hs, d_s, n * dim * 4, cudaMemcpyDeviceToHost));
        CU(cudaMemcpy(hst, d_st, n * 4, cudaMemcpyDeviceToHost));
        if ((st = eg_rt_set_rows_state(t->rt, t->li, list, n, hv, hm, hs, hst, err)))
            goto done;
    }
    CU(cudaMemset(t->tr->touched, 0, t->rows ? t->rows : 1));
done:
    free(touched);
    free(list);
    free(hv);
    free(hm);
    free(hs);
    free(hst);
    cudaFree(d_list);
    cudaFree(d_st);
    cudaFree(d_v);
    cudaFree(d_m);
    cudaFree(d_s);
    return st;
}

namespace {
/* the backend table's train_rows: a device table trained step by step, then
 * synced into the runtime (what the parity suite compares with the CPU) */
eg_status cu_train_rows(eg_runtime *rt, uint32_t li, const uint64_t *rows, const float *grads,
                        size_t n, size_t n_steps, const eg_adam *hp, eg_err *err)
{
    const size_t dim = eg_runtime_dim(rt);
    eg_cuda_table *t = nullptr;
    eg_status st = eg_cuda_table_open_train(rt, li, &t, err);
    if (st)
        return st;
    cudaError_t me = cudaSuccess;
    uint64_t *d_rows = dev<uint64_t>(n, &me);
    float *d_g = dev<float>(n * dim, &me);
    CU(me);
    for (size_t s = 0; s < n_steps; s++) {
        CU(cudaMemcpy(d_rows, rows + s * n, n * 8, cudaMemcpyHostToDevice));
        CU(cudaMemcpy(d_g, grads + s * n * dim, n * dim * 4, cudaMemcpyHostToDevice));
        if ((st = eg_cuda_adam_rows(t, d_rows, d_g, n, hp, nullptr, err)))
            goto done;
    }
    st = eg_cuda_table_sync(t, err);
done:
    cudaFree(d_rows);
    cudaFree(d_g);
    eg_cuda_table_close(t);
    return st;
}
} // namespace
