// layer.cuh - the Engram layer on CUDA (included by backend.cu): the CPU's
// algorithm (runtime/layer.c) step for step. Projections with cuBLAS (the
// keys in binary64, like the CPU), one thread per (token, branch) for the
// norms and the gate, one per (token, channel) for the conv; every reduction
// over tokens runs in index order inside one thread, so results do not
// depend on scheduling.
namespace {

struct lay {
    size_t BT, T;
    uint32_t hc, d, De, KW, dil;
    float eps_kq, eps_c;
};

__global__ void f2d_kernel(const float *a, double *b, size_t n)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        b[i] = (double)a[i];
}

__global__ void bias_d_kernel(double *K, const float *b, size_t BT, uint32_t d)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < BT * d)
        K[i] += (double)b[i % d];
}

__global__ void bias_f_kernel(float *U, const float *b, size_t BT, uint32_t d)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < BT * d)
        U[i] += b[i % d];
}

__device__ float sigm_f(float x) { return (float)(1.0 / (1.0 + exp(-(double)x))); }

__global__ void gate_kernel(lay L, const double *K, const float *h, const float *U,
                            const float *gk_all, const float *gq_all, const float *gc_all,
                            double *rk_o, double *rq_o, double *s_o, float *g_o, float *rc_o,
                            float *V, float *C)
{
    const size_t ti = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (ti >= L.BT * L.hc)
        return;
    const size_t t = ti / L.hc, i = ti % L.hc, d = L.d;
    const double *k = K + (i * L.BT + t) * d;
    const float *q = h + ti * d, *gk = gk_all + i * d, *gq = gq_all + i * d, *gc = gc_all + i * d;
    double ssk = 0, ssq = 0;
    for (size_t c = 0; c < d; c++) {
        ssk += k[c] * k[c];
        ssq += (double)q[c] * (double)q[c];
    }
    const double rk = 1.0 / sqrt(ssk / (double)d + (double)L.eps_kq);
    const double rq = 1.0 / sqrt(ssq / (double)d + (double)L.eps_kq);
    double dot = 0;
    for (size_t c = 0; c < d; c++)
        dot += k[c] * rk * (double)gk[c] * ((double)q[c] * rq * (double)gq[c]);
    const double s = dot * (1.0 / sqrt((double)d));
    const double a = (s > 0 ? 1.0 : s < 0 ? -1.0 : 0.0) * sqrt(fmax(fabs(s), 1e-6));
    const float g = (float)(1.0 / (1.0 + exp(-a)));
    rk_o[ti] = rk;
    rq_o[ti] = rq;
    s_o[ti] = s;
    g_o[ti] = g;
    float *v = V + ti * d, *cn = C + ti * d;
    const float *u = U + t * d;
    double ss = 0;
    for (size_t c = 0; c < d; c++) {
        v[c] = g * u[c];
        ss += (double)v[c] * (double)v[c];
    }
    const float rc = (float)(1.0 / sqrt(ss / (double)d + (double)L.eps_c));
    rc_o[ti] = rc;
    for (size_t c = 0; c < d; c++)
        cn[c] = v[c] * rc * gc[c];
}

__global__ void conv_kernel(lay L, const float *C, const float *w, float *Y)
{
    const size_t CH = (size_t)L.hc * L.d;
    const size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= L.BT * CH)
        return;
    const size_t t = x / CH, ch = x % CH, pos = t % L.T;
    float acc = 0;
    for (size_t k = 0; k < L.KW; k++) {
        const size_t back = (L.KW - 1 - k) * L.dil;
        if (back <= pos)
            acc += w[ch * L.KW + k] * C[(t - back) * CH + ch];
    }
    Y[x] = acc;
}

__global__ void out_kernel(const float *V, const float *Y, float *out, size_t n)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = V[i] + Y[i] * sigm_f(Y[i]);
}

/* row-major C[M][N] = A[M][K] * B[N][K]^T (beta 0) */
cublasStatus_t mm_nt_d(cublasHandle_t hb, size_t M, size_t N, size_t K, const double *A,
                       const double *B, double *C)
{
    const double one = 1, zero = 0;
    return cublasDgemm(hb, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, B, (int)K, A,
                       (int)K, &zero, C, (int)N);
}

cublasStatus_t mm_nt_f(cublasHandle_t hb, size_t M, size_t N, size_t K, const float *A,
                       const float *B, float *C)
{
    const float one = 1, zero = 0;
    return cublasSgemm(hb, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, B, (int)K, A,
                       (int)K, &zero, C, (int)N);
}

/* row-major C[M][N] (+)= A[M][K] * B[K][N] */
cublasStatus_t mm_nn_f(cublasHandle_t hb, size_t M, size_t N, size_t K, const float *A,
                       const float *B, float *C, float beta)
{
    const float one = 1;
    return cublasSgemm(hb, CUBLAS_OP_N, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, B, (int)N, A,
                       (int)K, &beta, C, (int)N);
}

/* row-major C[M][N] = A[K][M]^T * B[K][N] */
cublasStatus_t mm_tn_f(cublasHandle_t hb, size_t M, size_t N, size_t K, const float *A,
                       const float *B, float *C)
{
    const float one = 1, zero = 0;
    return cublasSgemm(hb, CUBLAS_OP_N, CUBLAS_OP_T, (int)N, (int)M, (int)K, &one, B, (int)N, A,
                       (int)M, &zero, C, (int)N);
}

struct dfwd {
    float *E, *H, *W[8], *U, *V, *C, *Y, *g, *rc;
    double *Ed, *Wkd, *K, *rk, *rq, *s;
};

void dfwd_free(dfwd *f)
{
    cudaFree(f->E);
    cudaFree(f->H);
    for (int i = 0; i < 8; i++)
        cudaFree(f->W[i]);
    cudaFree(f->U);
    cudaFree(f->V);
    cudaFree(f->C);
    cudaFree(f->Y);
    cudaFree(f->g);
    cudaFree(f->rc);
    cudaFree(f->Ed);
    cudaFree(f->Wkd);
    cudaFree(f->K);
    cudaFree(f->rk);
    cudaFree(f->rq);
    cudaFree(f->s);
}

/* The backward's own device arrays for up to BT tokens. */
struct dbwd {
    float *dY, *dV, *dC, *dU, *dK;
    double *dsv;
};

void dbwd_free(dbwd *b)
{
    cudaFree(b->dY);
    cudaFree(b->dV);
    cudaFree(b->dC);
    cudaFree(b->dU);
    cudaFree(b->dK);
    cudaFree(b->dsv);
    memset(b, 0, sizeof *b);
}

cudaError_t dbwd_alloc(dbwd *b, const lay &L)
{
    const size_t BT = L.BT, hc = L.hc, d = L.d, CH = hc * d;
    cudaError_t me = cudaSuccess;
    b->dY = dev<float>(BT * CH, &me);
    b->dV = dev<float>(BT * CH, &me);
    b->dC = dev<float>(BT * CH, &me);
    b->dU = dev<float>(BT * d, &me);
    b->dK = dev<float>(hc * BT * d, &me);
    b->dsv = dev<double>(BT * hc, &me);
    return me;
}

unsigned blocks(size_t n) { return (unsigned)((n + 255) / 256); }

lay lay_of(const eg_layer_dims *dm)
{
    lay L;
    L.BT = dm->B * dm->T;
    L.T = dm->T;
    L.hc = dm->hc;
    L.d = dm->d;
    L.De = dm->De;
    L.KW = dm->kernel;
    L.dil = dm->dilation;
    L.eps_kq = dm->eps_kq > 0 ? dm->eps_kq : 1.1920929e-07f;
    L.eps_c = dm->eps_conv > 0 ? dm->eps_conv : 1e-5f;
    return L;
}

/* The element counts of the 8 weights (and their gradients) in
 * eg_layer_weights' order: w_k b_k w_v b_v norm_k norm_q norm_c conv. */
void weight_sizes(size_t hc, size_t d, size_t De, size_t KW, size_t wn[8])
{
    const size_t n[8] = {hc * d * De, hc * d, d * De, d, hc * d, hc * d, hc * d, hc * d * KW};
    memcpy(wn, n, sizeof n);
}

eg_status check_layer(const eg_layer_dims *dm, const eg_layer_weights *w, eg_err *err)
{
    if (!dm || !w || !w->w_k || !w->w_v || !w->norm_k || !w->norm_q || !w->norm_c || !w->conv)
        return eg_fail(err, EG_EINVAL, "layer: a required weight is NULL");
    if (!dm->hc || !dm->d || !dm->De || !dm->kernel || !dm->dilation)
        return eg_fail(err, EG_EINVAL, "layer: hc, d, De, kernel and dilation must be > 0");
    return EG_OK;
}

/* The forward's intermediates for BT tokens (E, H and W are not touched). */
cudaError_t dfwd_alloc_work(dfwd *f, const lay &L)
{
    const size_t BT = L.BT, hc = L.hc, d = L.d, De = L.De;
    cudaError_t me = cudaSuccess;
    f->U = dev<float>(BT * d, &me);
    f->V = dev<float>(BT * hc * d, &me);
    f->C = dev<float>(BT * hc * d, &me);
    f->Y = dev<float>(BT * hc * d, &me);
    f->g = dev<float>(BT * hc, &me);
    f->rc = dev<float>(BT * hc, &me);
    f->Ed = dev<double>(BT * De, &me);
    f->Wkd = dev<double>(d * De, &me);
    f->K = dev<double>(hc * BT * d, &me);
    f->rk = dev<double>(BT * hc, &me);
    f->rq = dev<double>(BT * hc, &me);
    f->s = dev<double>(BT * hc, &me);
    return me;
}

/* Run the forward on the device: f->E, f->H and f->W[] (device memory) in,
 * every intermediate kept in f; on `stream` (cuBLAS set to it by the caller). */
eg_status dforward_run(const lay &L, dfwd *f, cublasHandle_t hb, cudaStream_t stream, eg_err *err)
{
    const size_t BT = L.BT, hc = L.hc, d = L.d, De = L.De;
    eg_status st = EG_OK;
    if (!BT)
        return EG_OK;
    f2d_kernel<<<blocks(BT * De), 256, 0, stream>>>(f->E, f->Ed, BT * De);
    for (size_t i = 0; i < hc; i++) {
        f2d_kernel<<<blocks(d * De), 256, 0, stream>>>(f->W[0] + i * d * De, f->Wkd, d * De);
        CB(mm_nt_d(hb, BT, d, De, f->Ed, f->Wkd, f->K + i * BT * d));
        if (f->W[1])
            bias_d_kernel<<<blocks(BT * d), 256, 0, stream>>>(f->K + i * BT * d, f->W[1] + i * d,
                                                              BT, (uint32_t)d);
    }
    CB(mm_nt_f(hb, BT, d, De, f->E, f->W[2], f->U));
    if (f->W[3])
        bias_f_kernel<<<blocks(BT * d), 256, 0, stream>>>(f->U, f->W[3], BT, (uint32_t)d);
    gate_kernel<<<blocks(BT * hc), 256, 0, stream>>>(L, f->K, f->H, f->U, f->W[4], f->W[5],
                                                     f->W[6], f->rk, f->rq, f->s, f->g, f->rc,
                                                     f->V, f->C);
    conv_kernel<<<blocks(BT * hc * d), 256, 0, stream>>>(L, f->C, f->W[7], f->Y);
    CU(cudaGetLastError());
done:
    return st;
}

} // namespace

/* ---- the forward on device pointers (eg_cuda.h) ---------------------------------- */

struct eg_cuda_layer {
    dfwd f;      // intermediates; E, H, W point to the caller's memory during a call
    dbwd b;      // the backward's arrays (eg_cuda_layer_backward; at its first call)
    size_t max_bt;
    eg_layer_dims dm;
    cublasHandle_t hb;
};

/* The caller's inputs and weights (device memory) into the workspace for one
 * call; all NULL: unbound (dfwd_free must not free them). */
static void bind(eg_cuda_layer *l, const float *d_e, const float *d_h, const eg_layer_weights *w)
{
    l->f.E = (float *)d_e;
    l->f.H = (float *)d_h;
    const float *dw[8] = {w ? w->w_k : nullptr, w ? w->b_k : nullptr, w ? w->w_v : nullptr,
                          w ? w->b_v : nullptr, w ? w->norm_k : nullptr, w ? w->norm_q : nullptr,
                          w ? w->norm_c : nullptr, w ? w->conv : nullptr};
    for (int i = 0; i < 8; i++)
        l->f.W[i] = (float *)dw[i];
}

extern "C" __attribute__((visibility("default"))) void eg_cuda_layer_free(eg_cuda_layer *l)
{
    if (!l)
        return;
    bind(l, nullptr, nullptr, nullptr);
    dfwd_free(&l->f);
    dbwd_free(&l->b);
    if (l->hb)
        cublasDestroy(l->hb);
    free(l);
}

extern "C" __attribute__((visibility("default"))) eg_status
eg_cuda_layer_create(const eg_layer_dims *dm, eg_cuda_layer **out, eg_err *err)
{
    if (!dm || !out)
        return eg_fail(err, EG_EINVAL, "eg_cuda_layer_create: NULL argument");
    *out = nullptr;
    if (!dm->hc || !dm->d || !dm->De || !dm->kernel || !dm->dilation)
        return eg_fail(err, EG_EINVAL, "layer: hc, d, De, kernel and dilation must be > 0");
    eg_cuda_layer *l = (eg_cuda_layer *)calloc(1, sizeof *l);
    if (!l)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    eg_status st = EG_OK;
    l->dm = *dm;
    l->max_bt = dm->B * dm->T;
    CB(cublasCreate(&l->hb));
    CU(dfwd_alloc_work(&l->f, lay_of(dm)));
done:
    if (st) {
        eg_cuda_layer_free(l);
        return st;
    }
    *out = l;
    return EG_OK;
}

extern "C" __attribute__((visibility("default"))) eg_status
eg_cuda_layer_forward(eg_cuda_layer *l, const eg_layer_dims *dm, const eg_layer_weights *w,
                      const float *d_e, const float *d_h, float *d_out, void *stream_, eg_err *err)
{
    if (!l || !d_e || !d_h || !d_out)
        return eg_fail(err, EG_EINVAL, "eg_cuda_layer_forward: NULL argument");
    eg_status st = check_layer(dm, w, err);
    if (st)
        return st;
    if (dm->B * dm->T > l->max_bt || dm->hc != l->dm.hc || dm->d != l->dm.d ||
        dm->De != l->dm.De)
        return eg_fail(err, EG_EINVAL, "eg_cuda_layer_forward: dimensions beyond the workspace's");
    cudaStream_t stream = (cudaStream_t)stream_;
    const lay L = lay_of(dm);
    const size_t n = L.BT * L.hc * L.d;
    bind(l, d_e, d_h, w);
    CB(cublasSetStream(l->hb, stream));
    if ((st = dforward_run(L, &l->f, l->hb, stream, err)))
        goto done;
    if (n) {
        out_kernel<<<blocks(n), 256, 0, stream>>>(l->f.V, l->f.Y, d_out, n);
        CU(cudaGetLastError());
    }
done:
    bind(l, nullptr, nullptr, nullptr);
    return st;
}

namespace {

/* ---- backward ------------------------------------------------------------------ */

__global__ void dy_kernel(const float *Y, const float *dout, float *dY, float *dV, size_t n)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    const float s = sigm_f(Y[i]);
    dY[i] = dout[i] * s * (1.0f + Y[i] * (1.0f - s));
    dV[i] = dout[i];
}

__global__ void dconv_kernel(lay L, const float *dY, const float *C, const float *w, float *dconv,
                             float *dC)
{
    const size_t CH = (size_t)L.hc * L.d;
    const size_t ch = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= CH)
        return;
    for (size_t k = 0; k < L.KW; k++) {
        const size_t back = (L.KW - 1 - k) * L.dil;
        double acc = 0;
        for (size_t t = 0; t < L.BT; t++)
            if (back <= t % L.T)
                acc += (double)dY[t * CH + ch] * (double)C[(t - back) * CH + ch];
        dconv[ch * L.KW + k] = (float)acc;
    }
    for (size_t t = 0; t < L.BT; t++) {
        const size_t pos = t % L.T;
        float acc = 0;
        for (size_t k = 0; k < L.KW; k++) {
            const size_t back = (L.KW - 1 - k) * L.dil;
            if (pos + back < L.T)
                acc += dY[(t + back) * CH + ch] * w[ch * L.KW + k];
        }
        dC[t * CH + ch] = acc;
    }
}

__global__ void dnormc_kernel(lay L, const float *dC, const float *V, const float *rc, float *dn)
{
    const size_t CH = (size_t)L.hc * L.d;
    const size_t ch = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= CH)
        return;
    const size_t i = ch / L.d;
    double acc = 0;
    for (size_t t = 0; t < L.BT; t++)
        acc += (double)dC[t * CH + ch] * (double)V[t * CH + ch] * (double)rc[t * L.hc + i];
    dn[ch] = (float)acc;
}

/* per token: every branch in order (du sums over branches in that order) */
__global__ void token_back_kernel(lay L, const dfwd f, const float *dC, float *dV, float *dU,
                                  float *dK, float *dh, double *dsv)
{
    const size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= L.BT)
        return;
    const size_t d = L.d, hc = L.hc;
    const double isd = 1.0 / sqrt((double)d);
    float *du = dU + t * d;
    for (size_t c = 0; c < d; c++)
        du[c] = 0;
    for (size_t i = 0; i < hc; i++) {
        const size_t ti = t * hc + i;
        float *dv = dV + ti * d;
        const float *v = f.V + ti * d, *u = f.U + t * d, *gc = f.W[6] + i * d, *dc = dC + ti * d;
        /* RMSNorm(v) back into dv */
        const double r = f.rc[ti];
        double dot = 0;
        for (size_t c = 0; c < d; c++)
            dot += (double)(gc[c] * dc[c]) * (double)v[c];
        const double kk = r * r * r * dot / (double)d;
        for (size_t c = 0; c < d; c++)
            dv[c] += (float)(r * (double)(gc[c] * dc[c]) - (double)v[c] * kk);
        const float gi = f.g[ti];
        double dg = 0;
        for (size_t c = 0; c < d; c++) {
            dg += (double)dv[c] * (double)u[c];
            du[c] += gi * dv[c];
        }
        const double da = dg * (double)gi * (1.0 - (double)gi);
        const double s = f.s[ti];
        const double ds = fabs(s) >= 1e-6 ? da * 0.5 / sqrt(fabs(s)) : 0.0;
        dsv[ti] = ds;
        const double *k = f.K + (i * L.BT + t) * d;
        const float *q = f.H + ti * d, *gk = f.W[4] + i * d, *gq = f.W[5] + i * d;
        const double rk = f.rk[ti], rq = f.rq[ti];
        float *dkk = dK + (i * L.BT + t) * d, *dq = dh + ti * d;
        for (size_t c = 0; c < d; c++) {
            dkk[c] = (float)(ds * isd * ((double)q[c] * rq * (double)gq[c]));
            dq[c] = (float)(ds * isd * (k[c] * rk * (double)gk[c]));
        }
        double dk_dot = 0, dq_dot = 0;
        for (size_t c = 0; c < d; c++) {
            dk_dot += (double)gk[c] * (double)dkk[c] * k[c];
            dq_dot += (double)gq[c] * (double)dq[c] * (double)q[c];
        }
        const double kk1 = rk * rk * rk * dk_dot / (double)d, kq1 = rq * rq * rq * dq_dot / (double)d;
        for (size_t c = 0; c < d; c++) {
            dkk[c] = (float)(rk * (double)gk[c] * (double)dkk[c] - k[c] * kk1);
            dq[c] = (float)(rq * (double)gq[c] * (double)dq[c] - (double)q[c] * kq1);
        }
    }
}

__global__ void dnormkq_kernel(lay L, const dfwd f, const double *dsv, float *dnk, float *dnq)
{
    const size_t CH = (size_t)L.hc * L.d;
    const size_t ch = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= CH)
        return;
    const size_t i = ch / L.d, c = ch % L.d;
    const double isd = 1.0 / sqrt((double)L.d);
    double ak = 0, aq = 0;
    for (size_t t = 0; t < L.BT; t++) {
        const size_t ti = t * L.hc + i;
        const double ds = dsv[ti];
        const double kk = f.K[(i * L.BT + t) * L.d + c], qq = (double)f.H[ti * L.d + c];
        const double nk = kk * f.rk[ti] * (double)f.W[4][ch];
        const double nq = qq * f.rq[ti] * (double)f.W[5][ch];
        ak += ds * isd * nq * kk * f.rk[ti];
        aq += ds * isd * nk * qq * f.rq[ti];
    }
    dnk[ch] = (float)ak;
    dnq[ch] = (float)aq;
}

__global__ void colsum_kernel(const float *X, size_t rows, size_t cols, float *out)
{
    const size_t c = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols)
        return;
    double a = 0;
    for (size_t r = 0; r < rows; r++)
        a += (double)X[r * cols + c];
    out[c] = (float)a;
}

/* The backward on the device from the forward's intermediates f (f->E and
 * f->W[] are the inputs and weights): dout -> dE, dH and the weights'
 * gradients gw[] (the layout of eg_layer_grads' dw_k .. dconv; gw[1] / gw[3]
 * NULL without biases), every pointer in device memory, queued on `stream`
 * (cuBLAS set to it by the caller). */
eg_status dbackward_run(const lay &L, const dfwd *fp, dbwd *b, const float *dout, float *dE,
                        float *dH, float *const gw[8], cublasHandle_t hb, cudaStream_t stream,
                        eg_err *err)
{
    const dfwd &f = *fp;
    const size_t BT = L.BT, hc = L.hc, d = L.d, De = L.De, CH = hc * d;
    size_t wn[8];
    weight_sizes(hc, d, De, L.KW, wn);
    eg_status st = EG_OK;
    if (!BT) {
        for (int i = 0; i < 8; i++)
            if (gw[i])
                CU(cudaMemsetAsync(gw[i], 0, wn[i] * 4, stream));
        return EG_OK;
    }
    dy_kernel<<<blocks(BT * CH), 256, 0, stream>>>(f.Y, dout, b->dY, b->dV, BT * CH);
    dconv_kernel<<<blocks(CH), 256, 0, stream>>>(L, b->dY, f.C, f.W[7], gw[7], b->dC);
    dnormc_kernel<<<blocks(CH), 256, 0, stream>>>(L, b->dC, f.V, f.rc, gw[6]);
    token_back_kernel<<<blocks(BT), 128, 0, stream>>>(L, f, b->dC, b->dV, b->dU, b->dK, dH, b->dsv);
    dnormkq_kernel<<<blocks(CH), 256, 0, stream>>>(L, f, b->dsv, gw[4], gw[5]);
    CU(cudaGetLastError());
    CB(mm_nn_f(hb, BT, De, d, b->dU, f.W[2], dE, 0.0f));
    for (size_t i = 0; i < hc; i++)
        CB(mm_nn_f(hb, BT, De, d, b->dK + i * BT * d, f.W[0] + i * d * De, dE, 1.0f));
    CB(mm_tn_f(hb, d, De, BT, b->dU, f.E, gw[2]));
    for (size_t i = 0; i < hc; i++)
        CB(mm_tn_f(hb, d, De, BT, b->dK + i * BT * d, f.E, gw[0] + i * d * De));
    if (gw[3])
        colsum_kernel<<<blocks(d), 256, 0, stream>>>(b->dU, BT, d, gw[3]);
    for (size_t i = 0; i < hc && gw[1]; i++)
        colsum_kernel<<<blocks(d), 256, 0, stream>>>(b->dK + i * BT * d, BT, d, gw[1] + i * d);
    CU(cudaGetLastError());
done:
    return st;
}

eg_status check_grads(const eg_layer_weights *w, const eg_layer_grads *g, eg_err *err)
{
    if (!g || !g->de || !g->dh || !g->dw_k || !g->dw_v || !g->dnorm_k || !g->dnorm_q ||
        !g->dnorm_c || !g->dconv || (w->b_k && !g->db_k) || (w->b_v && !g->db_v))
        return eg_fail(err, EG_EINVAL, "layer backward: a required gradient is NULL");
    return EG_OK;
}

} // namespace

/* ---- the backward on device pointers (eg_cuda.h) --------------------------------- */

extern "C" __attribute__((visibility("default"))) eg_status
eg_cuda_layer_backward(eg_cuda_layer *l, const eg_layer_dims *dm, const eg_layer_weights *w,
                       const float *d_e, const float *d_h, const float *d_dout,
                       const eg_layer_grads *g, void *stream_, eg_err *err)
{
    if (!l || !d_e || !d_h || !d_dout)
        return eg_fail(err, EG_EINVAL, "eg_cuda_layer_backward: NULL argument");
    eg_status st = check_layer(dm, w, err);
    if (st || (st = check_grads(w, g, err)))
        return st;
    if (dm->B * dm->T > l->max_bt || dm->hc != l->dm.hc || dm->d != l->dm.d ||
        dm->De != l->dm.De || dm->kernel != l->dm.kernel)
        return eg_fail(err, EG_EINVAL, "eg_cuda_layer_backward: dimensions beyond the workspace's");
    cudaStream_t stream = (cudaStream_t)stream_;
    const lay L = lay_of(dm);
    float *gw[8] = {g->dw_k, w->b_k ? g->db_k : nullptr, g->dw_v, w->b_v ? g->db_v : nullptr,
                    g->dnorm_k, g->dnorm_q, g->dnorm_c, g->dconv};
    bind(l, d_e, d_h, w);
    if (!l->b.dY) { /* the backward's arrays, at the first backward */
        cudaError_t me = dbwd_alloc(&l->b, lay_of(&l->dm));
        if (me != cudaSuccess) {
            dbwd_free(&l->b);
            st = eg_fail(err, EG_ENOMEM, "cuda: the backward's workspace: %s", cudaGetErrorString(me));
            goto done;
        }
    }
    CB(cublasSetStream(l->hb, stream));
    if ((st = dforward_run(L, &l->f, l->hb, stream, err)) ||
        (st = dbackward_run(L, &l->f, &l->b, d_dout, g->de, g->dh, gw, l->hb, stream, err)))
        goto done;
done:
    bind(l, nullptr, nullptr, nullptr);
    return st;
}

/* ---- the backend table's layer: host memory in and out, through the
 * device-pointer entry points above (what the parity suite checks) ---------- */

namespace {

struct uploaded {
    float *E, *H, *O, *W[8], *G[8], *dE, *dH;
    size_t wn[8]; /* the weights' sizes (weight_sizes) */
};

void uploaded_free(uploaded *u)
{
    cudaFree(u->E);
    cudaFree(u->H);
    cudaFree(u->O);
    cudaFree(u->dE);
    cudaFree(u->dH);
    for (int i = 0; i < 8; i++) {
        cudaFree(u->W[i]);
        cudaFree(u->G[i]);
    }
}

/* e, h, the weights and (when `second` is not NULL) a [B][T][hc][d] second
 * input copied to the device; room for the output, and for the gradients
 * when `grads`. */
eg_status upload(const eg_layer_dims *dm, const eg_layer_weights *w, const float *e,
                 const float *h, const float *second, int grads, uploaded *u, eg_err *err)
{
    memset(u, 0, sizeof *u);
    const size_t BT = dm->B * dm->T, hc = dm->hc, d = dm->d, De = dm->De, CH = hc * d;
    const float *hw[8] = {w->w_k, w->b_k, w->w_v, w->b_v, w->norm_k, w->norm_q, w->norm_c, w->conv};
    size_t *wn = u->wn;
    weight_sizes(hc, d, De, dm->kernel, wn);
    eg_status st = EG_OK;
    cudaError_t me = cudaSuccess;
    u->E = dev<float>(BT * De, &me);
    u->H = dev<float>(BT * CH, &me);
    u->O = dev<float>(BT * CH, &me);
    for (int i = 0; i < 8; i++) {
        u->W[i] = hw[i] ? dev<float>(wn[i], &me) : nullptr;
        u->G[i] = hw[i] && grads ? dev<float>(wn[i], &me) : nullptr;
    }
    if (grads) {
        u->dE = dev<float>(BT * De, &me);
        u->dH = dev<float>(BT * CH, &me);
    }
    CU(me);
    CU(cudaMemcpy(u->E, e, BT * De * 4, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(u->H, h, BT * CH * 4, cudaMemcpyHostToDevice));
    if (second)
        CU(cudaMemcpy(u->O, second, BT * CH * 4, cudaMemcpyHostToDevice));
    for (int i = 0; i < 8; i++)
        if (hw[i])
            CU(cudaMemcpy(u->W[i], hw[i], wn[i] * 4, cudaMemcpyHostToDevice));
done:
    return st;
}

eg_layer_weights dev_weights(const uploaded *u)
{
    eg_layer_weights dw = {u->W[0], u->W[1], u->W[2], u->W[3], u->W[4], u->W[5], u->W[6], u->W[7]};
    return dw;
}

eg_status cu_forward(const eg_layer_dims *dm, const eg_layer_weights *w, const float *e,
                     const float *h, float *out, eg_err *err)
{
    eg_status st = check_layer(dm, w, err);
    if (st)
        return st;
    uploaded u;
    eg_cuda_layer *l = nullptr;
    const size_t n = dm->B * dm->T * dm->hc * dm->d;
    if ((st = upload(dm, w, e, h, nullptr, 0, &u, err)) ||
        (st = eg_cuda_layer_create(dm, &l, err)))
        goto done;
    {
        const eg_layer_weights dw = dev_weights(&u);
        if ((st = eg_cuda_layer_forward(l, dm, &dw, u.E, u.H, u.O, nullptr, err)))
            goto done;
    }
    CU(cudaMemcpy(out, u.O, n * 4, cudaMemcpyDeviceToHost));
done:
    eg_cuda_layer_free(l);
    uploaded_free(&u);
    return st;
}

eg_status cu_backward(const eg_layer_dims *dm, const eg_layer_weights *w, const float *e,
                      const float *h, const float *dout, const eg_layer_grads *g, eg_err *err)
{
    eg_status st = check_layer(dm, w, err);
    if (st || (st = check_grads(w, g, err)))
        return st;
    const size_t BT = dm->B * dm->T, De = dm->De, CH = (size_t)dm->hc * dm->d;
    float *hg[8] = {g->dw_k, g->db_k, g->dw_v, g->db_v, g->dnorm_k, g->dnorm_q, g->dnorm_c, g->dconv};
    uploaded u;
    eg_cuda_layer *l = nullptr;
    if ((st = upload(dm, w, e, h, dout, 1, &u, err)) ||
        (st = eg_cuda_layer_create(dm, &l, err)))
        goto done;
    {
        const eg_layer_weights dw = dev_weights(&u);
        const eg_layer_grads dg = {u.dE, u.dH, u.G[0], u.G[1], u.G[2], u.G[3], u.G[4], u.G[5], u.G[6], u.G[7]};
        if ((st = eg_cuda_layer_backward(l, dm, &dw, u.E, u.H, u.O, &dg, nullptr, err)))
            goto done;
    }
    CU(cudaMemcpy(g->de, u.dE, BT * De * 4, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(g->dh, u.dH, BT * CH * 4, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 8; i++)
        if (hg[i] && u.G[i])
            CU(cudaMemcpy(hg[i], u.G[i], u.wn[i] * 4, cudaMemcpyDeviceToHost));
done:
    eg_cuda_layer_free(l);
    uploaded_free(&u);
    return st;
}

} // namespace
