/* layer.c - the Engram layer on the CPU (CONTRACT section 5), forward and
 * backward in binary32, the oracle for other backends. Every reduction has a
 * fixed order (per output element, over tokens or inputs in index order), so
 * results do not depend on the thread count. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "eg_internal.h"
#include "engram/eg_runtime.h"

#define EG_LAYER_MAX_D 16384
#define EG_LAYER_MAX_KERNEL 64

static int nthreads(int n)
{
#ifdef _OPENMP
    return n > 0 ? n : omp_get_max_threads();
#else
    (void)n;
    return 1;
#endif
}

/* This thread's share [c0, c1) of n items in a parallel region (all of them
 * outside one). */
static void own_range(size_t n, size_t *c0, size_t *c1)
{
#ifdef _OPENMP
    const size_t id = (size_t)omp_get_thread_num(), nth = (size_t)omp_get_num_threads();
#else
    const size_t id = 0, nth = 1;
#endif
    *c0 = n * id / nth;
    *c1 = n * (id + 1) / nth;
}

/* The projections' products (layer_gemm.h), at the widest vector width the
 * CPU has: 512 bits (x86-64-v4), 256 (x86-64-v3), else 128 (SSE2 on x86-64,
 * NEON elsewhere). Each width has its own register tile, so that its
 * accumulators stay in registers (64-byte vectors on a 256-bit target spill
 * to the stack on every step: the layer ran 15 times slower there); every
 * width gives the same bits. GCC only: clang contracts a * b + c into FMA
 * when a target has it, which would change them, so clang builds take the
 * 128-bit kernels. */
typedef float v16f __attribute__((vector_size(64), aligned(4)));
typedef float v8f __attribute__((vector_size(32), aligned(4)));
typedef float v4f __attribute__((vector_size(16), aligned(4)));
typedef float v2f __attribute__((vector_size(8), aligned(4)));
typedef double v8d __attribute__((vector_size(64), aligned(8)));
typedef double v4d __attribute__((vector_size(32), aligned(8)));
typedef double v2d __attribute__((vector_size(16), aligned(8)));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(EG_NO_CLONES)
#define GEMM_WIDE 1
#define GEMM_SUFFIX 512
#define GEMM_ATTR __attribute__((target("arch=x86-64-v4"), optimize("vect-cost-model=dynamic")))
#define VF v16f
#define VH v8f
#define VD v8d
#define LANES 16
#define TR 16 /* 32 accumulators: measured faster than 8 (forward -6%) */
#include "layer_gemm.h"
#define GEMM_SUFFIX 256
#define GEMM_ATTR __attribute__((target("arch=x86-64-v3"), optimize("vect-cost-model=dynamic")))
#define VF v8f
#define VH v4f
#define VD v4d
#define LANES 8
#define TR 8
#include "layer_gemm.h"
#endif
#define GEMM_SUFFIX 128
#define GEMM_ATTR
#define VF v4f
#define VH v2f
#define VD v2d
#define LANES 4
#define TR 8
#include "layer_gemm.h"

static int gemm_cap; /* eg_layer_gemm_width_limit; 0: none */

/* 512, 256 or 128: the kernels this CPU runs. */
static int gemm_width(void)
{
#ifdef GEMM_WIDE
    const int w = __builtin_cpu_supports("x86-64-v4")   ? 512
                  : __builtin_cpu_supports("x86-64-v3") ? 256
                                                        : 128;
#else
    const int w = 128;
#endif
    return gemm_cap && gemm_cap < w ? gemm_cap : w;
}

int eg_layer_gemm_width_limit(int bits)
{
    gemm_cap = bits == 512 || bits == 256 || bits == 128 ? bits : 0;
    return gemm_width();
}

/* C[M][N] (=, or += when acc) A[M][K] * B[K][N], row-major; A's element
 * (m, k) is A[m * sam + k * sak]: (K, 1) for A as stored, (1, M) for the
 * transpose of a stored [K][M] (no transposed copy). */
static void gemm_sa(size_t M, size_t N, size_t K, const float *A, size_t sam, size_t sak,
                    const float *B, float *C, int acc, int nt)
{
#ifdef GEMM_WIDE
    const int w = gemm_width();
    if (w == 512)
        gemm_sa_512(M, N, K, A, sam, sak, B, C, acc, nt);
    else if (w == 256)
        gemm_sa_256(M, N, K, A, sam, sak, B, C, acc, nt);
    else
#endif
        gemm_sa_128(M, N, K, A, sam, sak, B, C, acc, nt);
}

/* The same with binary64 accumulation and output (the keys: the gate's
 * signed square root has an unbounded derivative near 0, so its input is
 * computed without binary32 rounding). */
static void gemm_nn_d(size_t M, size_t N, size_t K, const float *A, const float *B, double *C,
                      int nt)
{
#ifdef GEMM_WIDE
    const int w = gemm_width();
    if (w == 512)
        gemm_d_512(M, N, K, A, B, C, nt);
    else if (w == 256)
        gemm_d_256(M, N, K, A, B, C, nt);
    else
#endif
        gemm_d_128(M, N, K, A, B, C, nt);
}

static void gemm_nn(size_t M, size_t N, size_t K, const float *A, const float *B, float *C, int acc,
                    int nt)
{
    gemm_sa(M, N, K, A, K, 1, B, C, acc, nt);
}

/* C[M][N] = A[K][M]^T * B[K][N]. */
static void gemm_tn(size_t M, size_t N, size_t K, const float *A, const float *B, float *C, int nt)
{
    gemm_sa(M, N, K, A, 1, M, B, C, 0, nt);
}

/* For a few rows (decoding): C[M][N] = A[M][K] * W[N][K]^T as dot products,
 * each a sum over k in index order from zero, one rounded multiply and add a
 * step: the elements gemm_nn / gemm_nn_d give on the transposed W, bit for
 * bit, without transposing W. */
#define SMALL_BT 8
static void dots(size_t M, size_t N, size_t K, const float *A, const float *W, float *C)
{
    for (size_t m = 0; m < M; m++)
        for (size_t n = 0; n < N; n++) {
            const float *a = A + m * K, *w = W + n * K;
            float acc = 0.0f;
            for (size_t k = 0; k < K; k++)
                acc += a[k] * w[k];
            C[m * N + n] = acc;
        }
}

static void dots_d(size_t M, size_t N, size_t K, const float *A, const float *W, double *C)
{
    for (size_t m = 0; m < M; m++)
        for (size_t n = 0; n < N; n++) {
            const float *a = A + m * K, *w = W + n * K;
            double acc = 0.0;
            for (size_t k = 0; k < K; k++)
                acc += (double)a[k] * (double)w[k];
            C[m * N + n] = acc;
        }
}

/* The depthwise conv of one token: y[ch] = the sum over taps k, in order, of
 * wT[k][ch] src[k][ch], skipping taps whose src[k] is NULL (before a
 * sequence's start or past its end): per element the plain loop over k. */
EG_VEC static void conv_taps(size_t CH, size_t KW, const float *restrict wT,
                             const float *const *src, float *restrict y)
{
    for (size_t ch = 0; ch < CH; ch++)
        y[ch] = 0;
    for (size_t k = 0; k < KW; k++) {
        const float *restrict x = src[k], *restrict wk = wT + k * CH;
        if (!x)
            continue;
        for (size_t ch = 0; ch < CH; ch++)
            y[ch] += wk[ch] * x[ch];
    }
}

/* dst[c][r] = src[r][c] for src [R][Cn]. */
static void transpose(size_t R, size_t Cn, const float *src, float *dst, int nt)
{
    const long long NC = (long long)Cn;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (R * Cn > 65536)
#endif
    for (long long cc = 0; cc < NC; cc++) {
        const size_t c = (size_t)cc;
        for (size_t r = 0; r < R; r++)
            dst[c * R + r] = src[r * Cn + c];
    }
}

static eg_status check(const eg_layer_dims *dm, const eg_layer_weights *w, eg_err *err)
{
    if (!dm || !w || !w->w_k || !w->w_v || !w->norm_k || !w->norm_q || !w->norm_c || !w->conv)
        return eg_fail(err, EG_EINVAL, "layer: a required weight is NULL");
    if (!dm->hc || !dm->d || !dm->De || !dm->kernel || !dm->dilation)
        return eg_fail(err, EG_EINVAL, "layer: hc, d, De, kernel and dilation must be > 0");
    if (dm->kernel > EG_LAYER_MAX_KERNEL)
        return eg_fail(err, EG_EUNSUPPORTED, "layer: kernel size %u > %d", dm->kernel,
                       EG_LAYER_MAX_KERNEL);
    if (dm->d > EG_LAYER_MAX_D)
        return eg_fail(err, EG_EUNSUPPORTED, "layer: hidden size %u > %d", dm->d, EG_LAYER_MAX_D);
    if (dm->B && dm->T > SIZE_MAX / dm->B / dm->hc / dm->d / 16)
        return eg_fail(err, EG_ERANGE, "layer: B*T*hc*d overflows");
    return EG_OK;
}

/* ---- the calls' workspace ----------------------------------------------------
 * Each calling thread keeps one workspace of its largest call's size, reused
 * by every later call (freed at the thread's exit): a training step's
 * intermediates are megabytes, and fresh pages for them on every call (malloc
 * and free of blocks above the mmap threshold) cost this layer three times its
 * arithmetic. */
typedef struct {
    char *p;
    size_t cap;
} ws_arena;
typedef struct {
    char *p;
    size_t off, cap;
} bump;

#define WS_ALIGN 64

static pthread_key_t ws_key;
static pthread_once_t ws_once = PTHREAD_ONCE_INIT;
static int ws_key_ok;

static void ws_destroy(void *a)
{
    ws_arena *w = a;
    if (w)
        free(w->p);
    free(w);
}

static void ws_init(void) { ws_key_ok = pthread_key_create(&ws_key, ws_destroy) == 0; }

/* A workspace of at least `bytes` for this call (NULL when out of memory). */
static char *ws_acquire(size_t bytes)
{
    pthread_once(&ws_once, ws_init);
    if (!ws_key_ok)
        return NULL;
    ws_arena *w = pthread_getspecific(ws_key);
    if (!w) {
        w = calloc(1, sizeof *w);
        if (!w || pthread_setspecific(ws_key, w)) {
            free(w);
            return NULL;
        }
    }
    if (w->cap < bytes) {
        free(w->p);
        w->cap = 0;
        /* cache-line aligned, as every array take() places in it: threads
         * that own adjacent ranges of an array then never write one line */
        void *p = NULL;
        w->p = posix_memalign(&p, WS_ALIGN, bytes) ? NULL : p;
        if (!w->p)
            return NULL;
        w->cap = bytes;
    }
    return w->p;
}

static size_t ws_round(size_t n) { return (n + WS_ALIGN - 1) / WS_ALIGN * WS_ALIGN; }

static void *take(bump *b, size_t bytes)
{
    bytes = ws_round(bytes);
    if (bytes > b->cap - b->off)
        return NULL;
    void *p = b->p + b->off;
    b->off += bytes;
    return p;
}

/* The forward intermediates that the backward pass needs. */
typedef struct {
    size_t BT;
    double *K; /* [hc][BT][d] keys (with bias), binary64 */
    float *U;  /* [BT][d] W_V e + b_v */
    float *V;  /* [BT][hc][d] gated values */
    float *C;  /* [BT][hc][d] RMSNorm(v) */
    float *Y;  /* [BT][hc][d] conv output */
    float *S;  /* [BT][hc][d] sigmoid(Y) (silu_out's) */
    float *g, *rc; /* [BT][hc] */
    double *rk, *rq, *s;
} fwd;

static float rms_inv(const float *x, size_t d, float eps)
{
    double ss = 0;
    for (size_t c = 0; c < d; c++)
        ss += (double)x[c] * (double)x[c];
    return (float)(1.0 / sqrt(ss / (double)d + (double)eps));
}

/* Decode state: per sequence the last L = (kernel-1)*dilation conv inputs
 * (RMSNorm(v), oldest first) and how many positions it has seen. */
struct eg_layer_state {
    size_t B;
    uint32_t hc, d, kernel, dilation;
    size_t L, CH;
    uint64_t *seen; /* [B] */
    float *hist;    /* [B][L][CH] */
};

/* The conv input of sequence b, `back` positions before position `pos` of
 * this call, from the state (NULL: before the sequence's start). */
static inline const float *state_row(const eg_layer_state *st, size_t b, size_t pos, size_t back)
{
    if (!st)
        return NULL;
    const size_t before = back - pos; /* 1 .. L */
    if (before > st->L || before > st->seen[b])
        return NULL;
    return st->hist + (b * st->L + (st->L - before)) * st->CH;
}

/* The forward intermediates' places in a workspace, always in this order (a
 * saved forward is read back by the same layout); 0, or -1 when it is too
 * small. */
static int fwd_layout(const eg_layer_dims *dm, fwd *f, bump *ws)
{
    const size_t BT = dm->B * dm->T, hc = dm->hc, d = dm->d;
    memset(f, 0, sizeof *f);
    f->BT = BT;
    const size_t n1 = BT ? BT : 1;
    f->K = take(ws, hc * n1 * d * sizeof *f->K);
    f->U = take(ws, n1 * d * sizeof *f->U);
    f->V = take(ws, n1 * hc * d * sizeof *f->V);
    f->C = take(ws, n1 * hc * d * sizeof *f->C);
    f->Y = take(ws, n1 * hc * d * sizeof *f->Y);
    f->S = take(ws, n1 * hc * d * sizeof *f->S);
    f->rk = take(ws, n1 * hc * sizeof *f->rk);
    f->rq = take(ws, n1 * hc * sizeof *f->rq);
    f->s = take(ws, n1 * hc * sizeof *f->s);
    f->g = take(ws, n1 * hc * sizeof *f->g);
    f->rc = take(ws, n1 * hc * sizeof *f->rc);
    return f->K && f->U && f->V && f->C && f->Y && f->S && f->rk && f->rq && f->s && f->g &&
                   f->rc
               ? 0
               : -1;
}

/* The bytes fwd_layout takes (what a saved forward holds). */
static size_t fwd_bytes(const eg_layer_dims *dm)
{
    const size_t BT = dm->B * dm->T, n1 = BT ? BT : 1, hc = dm->hc, d = dm->d;
    return ws_round(hc * n1 * d * 8) + ws_round(n1 * d * 4) + 4 * ws_round(n1 * hc * d * 4) +
           3 * ws_round(n1 * hc * 8) + 2 * ws_round(n1 * hc * 4);
}

/* What a call's workspace holds: the forward's intermediates (unless they
 * are in a caller's saved buffer), the forward's transposed-weight scratch,
 * and the backward's own arrays. */
enum { WS_FWD = 1, WS_SCRATCH = 2, WS_BWD = 4 };

static size_t ws_bytes(const eg_layer_dims *dm, unsigned parts)
{
    const size_t BT = dm->B * dm->T, n1 = BT ? BT : 1, hc = dm->hc, d = dm->d;
    const size_t CH = hc * d;
    size_t n = 0;
    if (parts & WS_FWD)
        n += fwd_bytes(dm);
    if (parts & WS_SCRATCH) /* a transposed projection, the transposed conv */
        n += ws_round((size_t)dm->De * d * 4) + ws_round(CH * dm->kernel * 4);
    if (parts & WS_BWD) /* dY dC dV, dU, dK, dsv, the per-channel sums, the conv */
        n += 3 * ws_round(n1 * CH * 4) + ws_round(n1 * d * 4) + ws_round(hc * n1 * d * 4) +
             ws_round(n1 * hc * 8) + ws_round(CH * (dm->kernel + 3) * 8) +
             ws_round(CH * dm->kernel * 4);
    return n;
}

static eg_status ws_begin(const eg_layer_dims *dm, unsigned parts, bump *b, eg_err *err)
{
    b->cap = ws_bytes(dm, parts);
    b->off = 0;
    b->p = ws_acquire(b->cap);
    if (!b->p)
        return eg_fail(err, EG_ENOMEM, "layer: out of memory for B*T = %zu tokens", dm->B * dm->T);
    return EG_OK;
}

/* The forward into f's places (fwd_layout over `saved`, or over ws when saved
 * is NULL); ws also gives the transposed-weight scratch. */
static eg_status forward(const eg_layer_dims *dm, const eg_layer_weights *w, const float *e,
                         const float *h, const eg_layer_state *st, fwd *f, bump *ws, int nt,
                         eg_err *err)
{
    const size_t BT = dm->B * dm->T, hc = dm->hc, d = dm->d, De = dm->De;
    const float eps_kq = dm->eps_kq > 0 ? dm->eps_kq : 1.1920929e-07f;
    const float eps_c = dm->eps_conv > 0 ? dm->eps_conv : 1e-5f;
    float *wt = take(ws, De * d * sizeof *wt);
    float *convT = take(ws, hc * d * dm->kernel * sizeof *convT);
    if (!f->K || !wt || !convT)
        return eg_fail(err, EG_EINVAL, "layer: workspace too small for B*T = %zu tokens", BT);
    /* the projections: K_i = E W_K[i]^T + b_k[i], U = E W_V^T + b_v */
    const int few = BT <= SMALL_BT; /* decoding: dot products, no transposed copies */
    for (size_t i = 0; i < hc; i++) {
        if (few) {
            dots_d(BT, d, De, e, w->w_k + i * d * De, f->K + i * BT * d);
        } else {
            transpose(d, De, w->w_k + i * d * De, wt, nt);
            gemm_nn_d(BT, d, De, e, wt, f->K + i * BT * d, nt);
        }
        if (w->b_k)
            for (size_t t = 0; t < BT; t++)
                for (size_t c = 0; c < d; c++)
                    f->K[(i * BT + t) * d + c] += (double)w->b_k[i * d + c];
    }
    if (few) {
        dots(BT, d, De, e, w->w_v, f->U);
    } else {
        transpose(d, De, w->w_v, wt, nt);
        gemm_nn(BT, d, De, e, wt, f->U, 0, nt);
    }
    if (w->b_v)
        for (size_t t = 0; t < BT; t++)
            for (size_t c = 0; c < d; c++)
                f->U[t * d + c] += w->b_v[c];
    const double isd = 1.0 / sqrt((double)d);
    const long long NT = (long long)BT;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (BT > 16)
#endif
    for (long long tt = 0; tt < NT; tt++) {
        const size_t t = (size_t)tt;
        for (size_t i = 0; i < hc; i++) {
            const double *k = f->K + (i * BT + t) * d;
            const float *q = h + (t * hc + i) * d;
            double ssk = 0, ssq = 0;
            for (size_t c = 0; c < d; c++) {
                ssk += k[c] * k[c];
                ssq += (double)q[c] * (double)q[c];
            }
            const double rk = 1.0 / sqrt(ssk / (double)d + (double)eps_kq);
            const double rqd = 1.0 / sqrt(ssq / (double)d + (double)eps_kq);
            const float *gk = w->norm_k + i * d, *gq = w->norm_q + i * d;
            double dot = 0;
            for (size_t c = 0; c < d; c++)
                dot += k[c] * rk * (double)gk[c] * ((double)q[c] * rqd * (double)gq[c]);
            const double s = dot * isd;
            const double a = (s > 0 ? 1.0 : s < 0 ? -1.0 : 0.0) * sqrt(fmax(fabs(s), 1e-6));
            const float g = (float)(1.0 / (1.0 + exp(-a)));
            f->rk[t * hc + i] = rk;
            f->rq[t * hc + i] = rqd;
            f->s[t * hc + i] = s;
            f->g[t * hc + i] = g;
            float *v = f->V + (t * hc + i) * d, *cn = f->C + (t * hc + i) * d;
            const float *u = f->U + t * d, *gc = w->norm_c + i * d;
            for (size_t c = 0; c < d; c++)
                v[c] = g * u[c];
            const float rc = rms_inv(v, d, eps_c);
            f->rc[t * hc + i] = rc;
            for (size_t c = 0; c < d; c++)
                cn[c] = v[c] * rc * gc[c];
        }
    }
    /* the causal depthwise conv per sequence: y[t] = sum_k w[k] x[t - (K-1-k) dil] */
    const size_t T = dm->T, KW = dm->kernel, dil = dm->dilation, CH = hc * d;
    transpose(CH, KW, w->conv, convT, 1);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (BT > 16)
#endif
    for (long long tt = 0; tt < NT; tt++) {
        const size_t t = (size_t)tt, pos = t % (T ? T : 1), b = t / (T ? T : 1);
        const float *src[EG_LAYER_MAX_KERNEL];
        for (size_t k = 0; k < KW; k++) {
            const size_t back = (KW - 1 - k) * dil;
            src[k] = back <= pos ? f->C + (t - back) * CH : state_row(st, b, pos, back);
        }
        conv_taps(CH, KW, convT, src, f->Y + t * CH);
    }
    return EG_OK;
}

/* The forward with its intermediates in this thread's workspace, which has
 * room for `more` (WS_BWD) after them. */
static eg_status forward_ws(const eg_layer_dims *dm, const eg_layer_weights *w, const float *e,
                            const float *h, const eg_layer_state *st, unsigned more, fwd *f,
                            bump *ws, int nt, eg_err *err)
{
    eg_status rc = ws_begin(dm, WS_FWD | WS_SCRATCH | more, ws, err);
    if (rc)
        return rc;
    fwd_layout(dm, f, ws);
    return forward(dm, w, e, h, st, f, ws, nt, err);
}

/* A saved buffer's checks (eg_layer_forward_save, eg_layer_backward_saved). */
static eg_status check_saved(const eg_layer_dims *dm, const void *saved, size_t cap,
                             const char *who, eg_err *err)
{
    if (!saved || ((uintptr_t)saved % 8) || cap < fwd_bytes(dm))
        return eg_fail(err, EG_ECAPACITY,
                       "%s: the saved buffer needs %zu bytes, 8-aligned (eg_layer_saved_bytes), "
                       "has %zu",
                       who, fwd_bytes(dm), saved ? cap : 0);
    return EG_OK;
}

static inline float sigm(float x) { return (float)(1.0 / (1.0 + exp(-(double)x))); }

/* s = sigmoid(y) (kept for the backward) and, unless out is NULL, out = v +
 * SiLU(y) = v + y s, element by element, in parallel for a batch. */
static void silu_out(size_t n, const float *V, const float *Y, float *S, float *out, int nt)
{
    const long long NN = (long long)n;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (n > 16384)
#endif
    for (long long i = 0; i < NN; i++) {
        S[i] = sigm(Y[i]);
        if (out)
            out[i] = V[i] + Y[i] * S[i];
    }
}

eg_status eg_layer_forward(const eg_layer_dims *dm, const eg_layer_weights *w, const float *e,
                           const float *h, float *out, int n_threads, eg_err *err)
{
    eg_status st = check(dm, w, err);
    if (st)
        return st;
    const size_t BT = dm->B * dm->T, N = BT * dm->hc * dm->d;
    if (BT && (!e || !h || !out))
        return eg_fail(err, EG_EINVAL, "eg_layer_forward: NULL input or output");
    fwd f;
    bump ws;
    if ((st = forward_ws(dm, w, e, h, NULL, 0, &f, &ws, nthreads(n_threads), err)))
        return st;
    silu_out(N, f.V, f.Y, f.S, out, nthreads(n_threads));
    return EG_OK;
}

/* RMSNorm backward for y = x r w, r = (mean x^2 + eps)^-1/2: dx (written). */
static void rms_back(const float *x, float r, const float *wgt, const float *dy, size_t d,
                     float *dx)
{
    double dot = 0;
    for (size_t c = 0; c < d; c++)
        dot += (double)(wgt[c] * dy[c]) * (double)x[c];
    const double k = (double)r * (double)r * (double)r * dot / (double)d;
    for (size_t c = 0; c < d; c++)
        dx[c] = (float)((double)r * (double)(wgt[c] * dy[c]) - (double)x[c] * k);
}

/* The same for binary64 x and r (keys), and binary32 x with binary64 r. */
static void rms_back_d(const double *x, double r, const float *wgt, const float *dy, size_t d,
                       float *dx)
{
    double dot = 0;
    for (size_t c = 0; c < d; c++)
        dot += (double)wgt[c] * (double)dy[c] * x[c];
    const double k = r * r * r * dot / (double)d;
    for (size_t c = 0; c < d; c++)
        dx[c] = (float)(r * (double)wgt[c] * (double)dy[c] - x[c] * k);
}

static void rms_back_q(const float *x, double r, const float *wgt, const float *dy, size_t d,
                       float *dx)
{
    double dot = 0;
    for (size_t c = 0; c < d; c++)
        dot += (double)wgt[c] * (double)dy[c] * (double)x[c];
    const double k = r * r * r * dot / (double)d;
    for (size_t c = 0; c < d; c++)
        dx[c] = (float)(r * (double)wgt[c] * (double)dy[c] - (double)x[c] * k);
}

static eg_status backward_args(const eg_layer_dims *dm, const eg_layer_weights *w,
                               const float *e, const float *h, const float *dout,
                               const eg_layer_grads *g, eg_err *err)
{
    eg_status st = check(dm, w, err);
    if (st)
        return st;
    if (!g || !g->de || !g->dh || !g->dw_k || !g->dw_v || !g->dnorm_k || !g->dnorm_q ||
        !g->dnorm_c || !g->dconv || (w->b_k && !g->db_k) || (w->b_v && !g->db_v))
        return eg_fail(err, EG_EINVAL, "eg_layer_backward: a required gradient is NULL");
    const size_t BT = dm->B * dm->T;
    if (BT > 0 && (!e || !h || !dout))
        return eg_fail(err, EG_EINVAL, "eg_layer_backward: NULL input");
    return EG_OK;
}

/* Per-channel sums over tokens for the channels [c0, c1) a thread owns,
 * walking the tokens' rows: each a[ch] adds one term per token, so every sum
 * still runs in token order (the loops vectorize across channels, never
 * within a sum). */

/* The conv's weights: a[k][ch] = sum over t of dY[t][ch] C[t - back_k][ch]. */
EG_VEC static void conv_weight_sums(size_t c0, size_t c1, size_t BT, size_t T, size_t KW,
                                    size_t dil, size_t CH, double *restrict a,
                                    const float *restrict dY, const float *restrict C)
{
    for (size_t k = 0; k < KW; k++)
        memset(a + k * CH + c0, 0, (c1 - c0) * sizeof *a);
    for (size_t t = 0; t < BT; t++) {
        const size_t pos = t % T;
        const float *dy = dY + t * CH;
        for (size_t k = 0; k < KW; k++) {
            const size_t back = (KW - 1 - k) * dil;
            if (back > pos)
                continue;
            const float *cin = C + (t - back) * CH;
            double *ak = a + k * CH;
            for (size_t ch = c0; ch < c1; ch++)
                ak[ch] += (double)dy[ch] * (double)cin[ch];
        }
    }
}

/* The conv input's norm weight: a[ch] = sum over t of dC V rc[t][branch]. */
EG_VEC static void norm_c_sums(size_t c0, size_t c1, size_t BT, size_t hc, size_t d,
                               double *restrict a, const float *restrict dC,
                               const float *restrict V, const float *restrict rc)
{
    const size_t CH = hc * d;
    for (size_t ch = c0; ch < c1; ch++)
        a[ch] = 0;
    for (size_t t = 0; t < BT; t++)
        for (size_t i = c0 / d; i * d < c1; i++) { /* the branches in [c0, c1) */
            const size_t lo = i * d > c0 ? i * d : c0, hi = (i + 1) * d < c1 ? (i + 1) * d : c1;
            const double r = (double)rc[t * hc + i];
            const float *x = dC + t * CH, *y = V + t * CH;
            for (size_t ch = lo; ch < hi; ch++)
                a[ch] += (double)x[ch] * (double)y[ch] * r;
        }
}

/* The key and query norm weights: ak[ch], aq[ch] over tokens of
 * ds/sqrt(d) nq k rk and ds/sqrt(d) nk q rq. */
EG_VEC static void norm_kq_sums(size_t c0, size_t c1, size_t BT, size_t hc, size_t d,
                                double *restrict ak, double *restrict aq,
                                const double *restrict K, const float *restrict h,
                                const float *restrict gk, const float *restrict gq,
                                const double *restrict dsv, const double *restrict rkv,
                                const double *restrict rqv, double isd)
{
    for (size_t ch = c0; ch < c1; ch++)
        ak[ch] = aq[ch] = 0;
    for (size_t t = 0; t < BT; t++)
        for (size_t i = c0 / d; i * d < c1; i++) {
            const size_t lo = i * d > c0 ? i * d : c0, hi = (i + 1) * d < c1 ? (i + 1) * d : c1;
            const size_t ti = t * hc + i;
            const double dsi = dsv[ti] * isd, rk = rkv[ti], rq = rqv[ti];
            const double *k = K + (i * BT + t) * d - i * d;
            const float *q = h + ti * d - i * d;
            for (size_t ch = lo; ch < hi; ch++) {
                const double kk = k[ch], qq = (double)q[ch];
                const double nk = kk * rk * (double)gk[ch];
                const double nq = qq * rq * (double)gq[ch];
                ak[ch] += dsi * nq * kk * rk;
                aq[ch] += dsi * nk * qq * rq;
            }
        }
}

/* The biases: a[cc] over tokens, channels cc of the keys' branches, then the
 * values' (cc in [hc d, (hc+1) d)). */
EG_VEC static void bias_sums(size_t c0, size_t c1, size_t BT, size_t hc, size_t d,
                             double *restrict a, const float *restrict dK,
                             const float *restrict dU)
{
    for (size_t cc = c0; cc < c1; cc++)
        a[cc] = 0;
    for (size_t t = 0; t < BT; t++)
        for (size_t i = c0 / d; i * d < c1; i++) {
            const size_t lo = i * d > c0 ? i * d : c0, hi = (i + 1) * d < c1 ? (i + 1) * d : c1;
            const float *src = (i == hc ? dU + t * d : dK + (i * BT + t) * d) - i * d;
            for (size_t cc = lo; cc < hi; cc++)
                a[cc] += (double)src[cc];
        }
}

/* The backward from the forward's intermediates f; ws has room for the
 * backward's own. */
static eg_status backward(const eg_layer_dims *dm, const eg_layer_weights *w, const float *e,
                          const float *h, const float *dout, const eg_layer_grads *g,
                          const fwd *fp, bump *ws_, int nt, eg_err *err)
{
    const fwd f = *fp;
    bump ws = *ws_;
    const size_t BT = dm->B * dm->T, hc = dm->hc, d = dm->d, De = dm->De, T = dm->T;
    const size_t KW = dm->kernel, dil = dm->dilation, CH = hc * d;
    const size_t n1 = BT ? BT : 1;
    float *dY = take(&ws, n1 * CH * sizeof *dY), *dC = take(&ws, n1 * CH * sizeof *dC);
    float *dV = take(&ws, n1 * CH * sizeof *dV), *dU = take(&ws, n1 * d * sizeof *dU);
    float *dK = take(&ws, hc * n1 * d * sizeof *dK);
    double *dsv = take(&ws, n1 * hc * sizeof *dsv);
    float *convT = take(&ws, CH * KW * sizeof *convT);
    /* per-channel sums over tokens (below) */
    double *acc = take(&ws, CH * (KW + 3) * sizeof *acc);
    if (!dY || !dC || !dV || !dU || !dK || !dsv || !acc || !convT)
        return eg_fail(err, EG_EINVAL, "layer: workspace too small for B*T = %zu tokens", BT);
    const long long NT = (long long)BT;
    /* out = v + silu(y) */
    const long long NE = (long long)(BT * CH);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (NE > 16384)
#endif
    for (long long i = 0; i < NE; i++) {
        const float s = f.S[i];
        dY[i] = dout[i] * s * (1.0f + f.Y[i] * (1.0f - s));
        dV[i] = dout[i];
    }
    /* Sums over tokens per channel (the conv's weights, the norm weights, the
     * biases) walk the tokens' rows, each thread owning a range of channels
     * with an accumulator per channel: every sum still adds its terms in token
     * order, as a loop per channel over tokens would, but reads whole rows. */
    /* the conv: weights (per channel over tokens) ... */
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (BT > 16)
#endif
    {
        size_t c0, c1;
        own_range(CH, &c0, &c1);
        conv_weight_sums(c0, c1, BT, T, KW, dil, CH, acc, dY, f.C); /* acc[k][ch] */
        for (size_t ch = c0; ch < c1; ch++)
            for (size_t k = 0; k < KW; k++)
                g->dconv[ch * KW + k] = (float)acc[k * CH + ch];
    }
    /* ... and input, per element */
    transpose(CH, KW, w->conv, convT, 1);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (BT > 16)
#endif
    for (long long tt = 0; tt < NT; tt++) {
        const size_t t = (size_t)tt, pos = t % T;
        const float *src[EG_LAYER_MAX_KERNEL];
        for (size_t k = 0; k < KW; k++) {
            const size_t back = (KW - 1 - k) * dil;
            src[k] = pos + back < T ? dY + (t + back) * CH : NULL;
        }
        conv_taps(CH, KW, convT, src, dC + t * CH);
    }
    /* RMSNorm of the conv input: its weight (per channel over tokens) */
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (BT > 16)
#endif
    {
        size_t c0, c1;
        own_range(CH, &c0, &c1);
        double *a = acc + CH * KW;
        norm_c_sums(c0, c1, BT, hc, d, a, dC, f.V, f.rc);
        for (size_t ch = c0; ch < c1; ch++)
            g->dnorm_c[ch] = (float)a[ch];
    }
    const double isd = 1.0 / sqrt((double)d);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (BT > 16)
#endif
    for (long long tt = 0; tt < NT; tt++) {
        const size_t t = (size_t)tt;
        float tmp[EG_LAYER_MAX_D];
        float *du = dU + t * d;
        memset(du, 0, d * sizeof *du);
        for (size_t i = 0; i < hc; i++) {
            const size_t ti = t * hc + i;
            float *dv = dV + ti * d;
            const float *v = f.V + ti * d, *u = f.U + t * d;
            /* RMSNorm(v) back into dv */
            rms_back(v, f.rc[ti], w->norm_c + i * d, dC + ti * d, d, tmp);
            for (size_t c = 0; c < d; c++)
                dv[c] += tmp[c];
            /* v = g u */
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
            /* s = <nk, nq> / sqrt(d): dnk = ds nq / sqrt(d), dnq = ds nk / sqrt(d) */
            const double *k = f.K + (i * BT + t) * d;
            const float *q = h + ti * d;
            const float *gk = w->norm_k + i * d, *gq = w->norm_q + i * d;
            const double rk = f.rk[ti], rq = f.rq[ti];
            float *dkk = dK + (i * BT + t) * d, *dq = g->dh + ti * d;
            float *dnk = dkk, *dnq = dq; /* computed in place, then normed back */
            for (size_t c = 0; c < d; c++) {
                dnk[c] = (float)(ds * isd * ((double)q[c] * rq * (double)gq[c]));
                dnq[c] = (float)(ds * isd * (k[c] * rk * (double)gk[c]));
            }
            rms_back_d(k, rk, gk, dnk, d, tmp);
            memcpy(dkk, tmp, d * sizeof *tmp);
            rms_back_q(q, rq, gq, dnq, d, tmp);
            memcpy(dq, tmp, d * sizeof *tmp);
        }
    }
    /* norm weights of keys and queries: per channel over tokens (dnk and dnq
     * were normed back in place; ds per token and branch is kept) */
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (BT > 16)
#endif
    {
        size_t c0, c1;
        own_range(CH, &c0, &c1);
        double *ak = acc + CH * (KW + 1), *aq = acc + CH * (KW + 2);
        norm_kq_sums(c0, c1, BT, hc, d, ak, aq, f.K, h, w->norm_k, w->norm_q, dsv, f.rk, f.rq,
                     isd);
        for (size_t ch = c0; ch < c1; ch++) {
            g->dnorm_k[ch] = (float)ak[ch];
            g->dnorm_q[ch] = (float)aq[ch];
        }
    }
    /* the projections */
    gemm_nn(BT, De, d, dU, w->w_v, g->de, 0, nt);
    for (size_t i = 0; i < hc; i++)
        gemm_nn(BT, De, d, dK + i * BT * d, w->w_k + i * d * De, g->de, 1, nt);
    gemm_tn(d, De, BT, dU, e, g->dw_v, nt);
    for (size_t i = 0; i < hc; i++)
        gemm_tn(d, De, BT, dK + i * BT * d, e, g->dw_k + i * d * De, nt);
    /* the biases: per channel over tokens (each sum in token order) */
    if (g->db_k || g->db_v) {
        const size_t NB = (hc + 1) * d; /* channels: the keys' branches, then the values' */
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (BT > 256)
#endif
        {
            size_t c0, c1;
            own_range(NB, &c0, &c1);
            double *a = acc; /* NB <= CH * (KW + 3) */
            bias_sums(c0, c1, BT, hc, d, a, dK, dU);
            for (size_t cc = c0; cc < c1; cc++) {
                const size_t i = cc / d, c = cc % d;
                if (i == hc && g->db_v)
                    g->db_v[c] = (float)a[cc];
                else if (i < hc && g->db_k)
                    g->db_k[i * d + c] = (float)a[cc];
            }
        }
    }
    return EG_OK;
}

eg_status eg_layer_backward(const eg_layer_dims *dm, const eg_layer_weights *w, const float *e,
                            const float *h, const float *dout, const eg_layer_grads *g,
                            int n_threads, eg_err *err)
{
    eg_status st = backward_args(dm, w, e, h, dout, g, err);
    if (st)
        return st;
    const int nt = nthreads(n_threads);
    fwd f;
    bump ws;
    if ((st = forward_ws(dm, w, e, h, NULL, WS_BWD, &f, &ws, nt, err)))
        return st;
    silu_out(dm->B * dm->T * dm->hc * dm->d, f.V, f.Y, f.S, NULL, nt);
    return backward(dm, w, e, h, dout, g, &f, &ws, nt, err);
}

/* ---- training without recomputing the forward ---------------------------------- */

size_t eg_layer_saved_bytes(const eg_layer_dims *dm) { return dm ? fwd_bytes(dm) : 0; }

eg_status eg_layer_forward_save(const eg_layer_dims *dm, const eg_layer_weights *w,
                                const float *e, const float *h, float *out, void *saved,
                                size_t cap, int n_threads, eg_err *err)
{
    eg_status st = check(dm, w, err);
    if (st)
        return st;
    const size_t BT = dm->B * dm->T;
    if (BT && (!e || !h || !out))
        return eg_fail(err, EG_EINVAL, "eg_layer_forward_save: NULL input or output");
    if ((st = check_saved(dm, saved, cap, "eg_layer_forward_save", err)))
        return st;
    fwd f;
    bump sv = {saved, 0, cap}, ws;
    fwd_layout(dm, &f, &sv);
    const int nt = nthreads(n_threads);
    if ((st = ws_begin(dm, WS_SCRATCH, &ws, err)) ||
        (st = forward(dm, w, e, h, NULL, &f, &ws, nt, err)))
        return st;
    silu_out(BT * dm->hc * dm->d, f.V, f.Y, f.S, out, nt);
    return EG_OK;
}

eg_status eg_layer_backward_saved(const eg_layer_dims *dm, const eg_layer_weights *w,
                                  const float *e, const float *h, const float *dout,
                                  const void *saved, size_t cap, const eg_layer_grads *g,
                                  int n_threads, eg_err *err)
{
    eg_status st = backward_args(dm, w, e, h, dout, g, err);
    if (st)
        return st;
    if ((st = check_saved(dm, saved, cap, "eg_layer_backward_saved", err)))
        return st;
    fwd f;
    bump sv = {(char *)(uintptr_t)saved, 0, cap}, ws;
    fwd_layout(dm, &f, &sv);
    if ((st = ws_begin(dm, WS_BWD, &ws, err)))
        return st;
    return backward(dm, w, e, h, dout, g, &f, &ws, nthreads(n_threads), err);
}

/* ---- decoding: the forward of the next positions, with the conv's history ---- */

eg_status eg_layer_state_create(size_t B, uint32_t hc, uint32_t d, uint32_t kernel,
                                uint32_t dilation, eg_layer_state **out, eg_err *err)
{
    if (!out)
        return eg_fail(err, EG_EINVAL, "eg_layer_state_create: NULL output");
    *out = NULL;
    if (!B || !hc || !d || !kernel || !dilation)
        return eg_fail(err, EG_EINVAL, "eg_layer_state_create: B, hc, d, kernel and dilation must be > 0");
    if (kernel > EG_LAYER_MAX_KERNEL || d > EG_LAYER_MAX_D)
        return eg_fail(err, EG_EUNSUPPORTED, "eg_layer_state_create: kernel %u or d %u too large",
                       kernel, d);
    const size_t L = (size_t)(kernel - 1) * dilation, CH = (size_t)hc * d;
    if (L && B > SIZE_MAX / L / CH / sizeof(float))
        return eg_fail(err, EG_ERANGE, "eg_layer_state_create: B*L*hc*d overflows");
    eg_layer_state *s = calloc(1, sizeof *s);
    if (!s)
        return eg_fail(err, EG_ENOMEM, "eg_layer_state_create: out of memory");
    s->B = B;
    s->hc = hc;
    s->d = d;
    s->kernel = kernel;
    s->dilation = dilation;
    s->L = L;
    s->CH = CH;
    s->seen = calloc(B, sizeof *s->seen);
    s->hist = calloc(B * (L ? L : 1) * CH, sizeof *s->hist);
    if (!s->seen || !s->hist) {
        eg_layer_state_free(s);
        return eg_fail(err, EG_ENOMEM, "eg_layer_state_create: out of memory for %zu sequences", B);
    }
    *out = s;
    return EG_OK;
}

void eg_layer_state_free(eg_layer_state *s)
{
    if (!s)
        return;
    free(s->seen);
    free(s->hist);
    free(s);
}

void eg_layer_state_reset(eg_layer_state *s, size_t b0, size_t n)
{
    if (!s || b0 >= s->B)
        return;
    if (n > s->B - b0)
        n = s->B - b0;
    for (size_t b = b0; b < b0 + n; b++)
        s->seen[b] = 0;
}

uint64_t eg_layer_state_seen(const eg_layer_state *s, size_t b)
{
    return s && b < s->B ? s->seen[b] : 0;
}

eg_status eg_layer_decode(const eg_layer_dims *dm, const eg_layer_weights *w, const float *e,
                          const float *h, eg_layer_state *s, float *out, int n_threads,
                          eg_err *err)
{
    eg_status st = check(dm, w, err);
    if (st)
        return st;
    if (!s)
        return eg_fail(err, EG_EINVAL, "eg_layer_decode: NULL state");
    if (dm->B != s->B || dm->hc != s->hc || dm->d != s->d || dm->kernel != s->kernel ||
        dm->dilation != s->dilation)
        return eg_fail(err, EG_EINVAL,
                       "eg_layer_decode: the state is for B=%zu hc=%u d=%u kernel=%u dilation=%u, "
                       "the call for B=%zu hc=%u d=%u kernel=%u dilation=%u",
                       s->B, s->hc, s->d, s->kernel, s->dilation, dm->B, dm->hc, dm->d,
                       dm->kernel, dm->dilation);
    const size_t T = dm->T, BT = dm->B * T, CH = s->CH, L = s->L;
    if (!T)
        return EG_OK;
    if (!e || !h || !out)
        return eg_fail(err, EG_EINVAL, "eg_layer_decode: NULL input or output");
    fwd f;
    bump ws;
    if ((st = forward_ws(dm, w, e, h, s, 0, &f, &ws, nthreads(n_threads), err)))
        return st;
    silu_out(BT * CH, f.V, f.Y, f.S, out, nthreads(n_threads));
    /* the history: the last L conv inputs of (old history, this call's) */
    for (size_t b = 0; b < dm->B && L; b++) {
        float *hb = s->hist + b * L * CH;
        if (T < L)
            memmove(hb, hb + T * CH, (L - T) * CH * sizeof *hb);
        const size_t keep = T < L ? T : L;
        memcpy(hb + (L - keep) * CH, f.C + (b * T + (T - keep)) * CH, keep * CH * sizeof *hb);
    }
    for (size_t b = 0; b < dm->B; b++)
        s->seen[b] += T;
    return EG_OK;
}
