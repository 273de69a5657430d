/* hash_cpu.c - batch hashing on the CPU: the scalar oracle and the fast path. */
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "../base/eg_internal.h"
#include "engram/eg_contract.h"
#include "engram/eg_hash.h"

/* Per-call constants of one layer, structure-of-arrays for the vector loop. */
typedef struct {
    uint32_t N, K, H;
    int64_t pad;
    const int64_t *mult;
    const uint64_t *primes;
    int64_t p[EG_MAX_NGRAM * EG_MAX_HEADS];
    double inv[EG_MAX_NGRAM * EG_MAX_HEADS];
    eg_fastmod_t fm[EG_MAX_NGRAM * EG_MAX_HEADS];
    uint32_t off[EG_MAX_NGRAM * EG_MAX_HEADS];
    int use_dbl; /* eg_fastmod_dbl_ok for every prime */
    int nonneg;  /* every mix is >= 0: no product wraps, pad >= 0 */
    int narrow;  /* nonneg and eg_fastmod_narrow_ok for every prime */
    uint32_t p32[EG_MAX_NGRAM * EG_MAX_HEADS];
} layer_ctx;

/* Left-padded history of position t: hist[k] = x[t-k]. */
static void fill_hist(const uint32_t *x, size_t t, const layer_ctx *L, int64_t *hist)
{
    for (uint32_t k = 0; k < L->N; k++)
        hist[k] = t >= k ? (int64_t)x[t - k] : L->pad;
}

static void hash_seq_ref(const layer_ctx *L, const uint32_t *x, size_t T, uint32_t *out)
{
    int64_t hist[EG_MAX_NGRAM];
    uint64_t idx[EG_MAX_NGRAM * EG_MAX_HEADS];
    for (size_t t = 0; t < T; t++) {
        fill_hist(x, t, L, hist);
        eg_hash_position_ref(hist, L->mult, L->N, L->K, L->primes, idx);
        for (uint32_t c = 0; c < L->H; c++)
            out[t * L->H + c] = (uint32_t)idx[c] + L->off[c];
    }
}

/* K heads of one order: the double-reciprocal floor modulo of `mix` by
 * p[j], branch-free; inlined with a constant K it becomes a few vector
 * instructions. `nonneg` drops the sign handling when mix >= 0 is known. */
static inline __attribute__((always_inline)) void heads_dbl(int64_t mix, const int64_t *p,
                                                            const double *inv,
                                                            const uint32_t *off, uint32_t K,
                                                            int nonneg, uint32_t *out)
{
    const int64_t s = nonneg ? 0 : mix >> 63;
    const int64_t u = mix ^ s; /* 0 <= u < 2^63 */
    const double du = (double)u;
#pragma omp simd
    for (uint32_t j = 0; j < K; j++) {
        int64_t q = (int64_t)(du * inv[j]);
        int64_t r = (int64_t)((uint64_t)u - (uint64_t)q * (uint64_t)p[j]);
        r += p[j] & (r >> 63);
        r -= (r >= p[j]) ? p[j] : 0;
        if (!nonneg)
            r = (r ^ s) + (p[j] & s); /* negative mix: p-1-r == ~r + p */
        out[j] = (uint32_t)r + off[j];
    }
}

/* The same for u >= 0 and primes in [2^16, 2^31): eg_mod_fast_narrow, whose
 * tail runs in 32-bit lanes with one correction. */
static inline __attribute__((always_inline)) void heads_narrow(int64_t mix, const uint32_t *p32,
                                                               const double *inv,
                                                               const uint32_t *off, uint32_t K,
                                                               uint32_t *out)
{
    const double e0 = (double)mix;
    const uint32_t u32 = (uint32_t)mix;
#pragma omp simd
    for (uint32_t j = 0; j < K; j++) {
        uint32_t q = (uint32_t)(int64_t)(e0 * inv[j] - 0.5);
        uint32_t r = u32 - q * p32[j];
        uint32_t r2 = r - p32[j]; /* wraps above r when r < p */
        r = r2 < r ? r2 : r;
        out[j] = r + off[j];
    }
}

/* Positions [t0, T) of one sequence, t0 >= N-1, so that no padding is read.
 * mode: 0 any mix (signed), 1 mix >= 0, 2 mix >= 0 and narrow primes. */
static inline __attribute__((always_inline)) void steady(const layer_ctx *L, const uint32_t *x,
                                                         size_t t0, size_t T, uint32_t *out,
                                                         uint32_t N, uint32_t K, int mode)
{
    const uint32_t H = (N - 1) * K;
    for (size_t t = t0; t < T; t++) {
        uint64_t acc = (uint64_t)x[t] * (uint64_t)L->mult[0];
        uint32_t *o = out + t * H;
        for (uint32_t n = 2; n <= N; n++) {
            acc ^= (uint64_t)x[t - n + 1] * (uint64_t)L->mult[n - 1];
            const uint32_t c = (n - 2) * K;
            if (mode == 2)
                heads_narrow((int64_t)acc, L->p32 + c, L->inv + c, L->off + c, K, o + c);
            else
                heads_dbl((int64_t)acc, L->p + c, L->inv + c, L->off + c, K, mode, o + c);
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(EG_NO_CLONES)
#define EG_CLONES                                                                          \
    __attribute__((target_clones("arch=x86-64-v4", "avx2", "default"), optimize("fp-contract=fast")))
#else
#define EG_CLONES
#endif

/* Specialized steady-state loops: the common shapes get constant N and K. */
EG_CLONES static void steady_n3k8(const layer_ctx *L, const uint32_t *x, size_t t0, size_t T,
                                  uint32_t *out)
{
    steady(L, x, t0, T, out, 3, 8, 2);
}

EG_CLONES static void steady_n4k8(const layer_ctx *L, const uint32_t *x, size_t t0, size_t T,
                                  uint32_t *out)
{
    steady(L, x, t0, T, out, 4, 8, 2);
}

EG_CLONES static void steady_any(const layer_ctx *L, const uint32_t *x, size_t t0, size_t T,
                                 uint32_t *out)
{
    if (L->narrow)
        steady(L, x, t0, T, out, L->N, L->K, 2);
    else if (L->nonneg)
        steady(L, x, t0, T, out, L->N, L->K, 1);
    else
        steady(L, x, t0, T, out, L->N, L->K, 0);
}

static void hash_seq_fast(const layer_ctx *L, const uint32_t *x, size_t T, uint32_t *out)
{
    const uint32_t H = L->H;
    /* The first N-1 positions read padding: the per-head fast modulo. */
    size_t head = L->N - 1 < T ? L->N - 1 : T;
    int64_t hist[EG_MAX_NGRAM], mix[EG_MAX_NGRAM];
    for (size_t t = 0; t < head; t++) {
        fill_hist(x, t, L, hist);
        eg_mix_position(hist, L->mult, L->N, mix);
        for (uint32_t c = 0; c < H; c++)
            out[t * H + c] = (uint32_t)eg_mod_fast(mix[c / L->K], &L->fm[c]) + L->off[c];
    }
    if (head == T)
        return;
    if (!L->use_dbl) {
        for (size_t t = head; t < T; t++) {
            fill_hist(x, t, L, hist);
            eg_mix_position(hist, L->mult, L->N, mix);
            for (uint32_t c = 0; c < H; c++)
                out[t * H + c] = (uint32_t)eg_mod_barrett(mix[c / L->K], &L->fm[c]) + L->off[c];
        }
    } else if (L->narrow && L->N == 3 && L->K == 8) {
        steady_n3k8(L, x, head, T, out);
    } else if (L->narrow && L->N == 4 && L->K == 8) {
        steady_n4k8(L, x, head, T, out);
    } else {
        steady_any(L, x, head, T, out);
    }
}

eg_status eg_hash_batch(const eg_spec *spec, uint32_t li, const uint32_t *ids, size_t n_seq,
                        size_t seq_len, uint32_t flags, int n_threads, uint32_t *out,
                        size_t out_cap, eg_err *err)
{
    if (!spec || (!ids && n_seq) || (!out && n_seq))
        return eg_fail(err, EG_EINVAL, "eg_hash_batch: NULL argument");
    if (li >= eg_spec_n_layers(spec))
        return eg_fail(err, EG_EINVAL, "eg_hash_batch: layer position %u of %u", li,
                       eg_spec_n_layers(spec));
    if (seq_len == 0)
        return eg_fail(err, EG_EINVAL, "sequence length must be >= 1");
    if (flags & ~(uint32_t)(EG_HASH_OFFSETS | EG_HASH_REFERENCE))
        return eg_fail(err, EG_EINVAL, "eg_hash_batch: unknown flags 0x%x", flags);
    layer_ctx *L = malloc(sizeof *L);
    if (!L)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    L->N = eg_spec_max_ngram(spec);
    L->K = eg_spec_heads_per_ngram(spec);
    L->H = eg_spec_n_heads(spec);
    L->pad = eg_spec_pad(spec);
    L->mult = eg_spec_multipliers(spec, li);
    L->primes = eg_spec_primes(spec, li);
    const uint64_t *offs = eg_spec_offsets(spec, li);
    const uint64_t limit = (flags & EG_HASH_OFFSETS) ? eg_spec_layer_rows(spec, li)
                                                     : L->primes[L->H - 1];
    uint64_t maxp = 0;
    for (uint32_t c = 0; c < L->H; c++)
        maxp = L->primes[c] > maxp ? L->primes[c] : maxp;
    if (limit > UINT32_MAX || maxp > UINT32_MAX) {
        free(L);
        return eg_fail(err, EG_EUNSUPPORTED,
                       "layer %u: %s up to %llu do not fit uint32 outputs",
                       eg_spec_config(spec)->layer_ids[li],
                       (flags & EG_HASH_OFFSETS) ? "rows" : "head indices",
                       (unsigned long long)(limit > maxp ? limit : maxp));
    }
    L->use_dbl = 1;
    for (uint32_t c = 0; c < L->H; c++) {
        L->fm[c] = eg_fastmod_make(L->primes[c]);
        L->p[c] = (int64_t)L->primes[c];
        L->inv[c] = L->fm[c].inv;
        L->off[c] = (flags & EG_HASH_OFFSETS) ? (uint32_t)offs[c] : 0;
        L->use_dbl &= eg_fastmod_dbl_ok(L->primes[c]);
    }

    /* Ids are < V' and >= 0; with pad >= 0 and no product wrapping past
     * 2^63 (always so for the reference's multipliers), every mix is >= 0. */
    {
        uint64_t maxid = eg_spec_compressed_vocab(spec) - 1;
        if (L->pad > 0 && (uint64_t)L->pad > maxid)
            maxid = (uint64_t)L->pad;
        L->nonneg = L->pad >= 0;
        for (uint32_t k = 0; k < L->N; k++)
            if (maxid && (uint64_t)L->mult[k] > (uint64_t)INT64_MAX / maxid)
                L->nonneg = 0;
    }
    L->narrow = L->nonneg && L->use_dbl;
    for (uint32_t c = 0; c < L->H; c++) {
        L->narrow &= eg_fastmod_narrow_ok(L->primes[c]);
        L->p32[c] = (uint32_t)L->primes[c];
    }
    size_t total, need;
    if (!eg_mul_ok(n_seq, seq_len, &total) || !eg_mul_ok(total, L->H, &need)) {
        free(L);
        return eg_fail(err, EG_ERANGE, "eg_hash_batch: batch size overflows");
    }
    if (out_cap < need) {
        free(L);
        return eg_fail(err, EG_ECAPACITY, "eg_hash_batch: output holds %zu values, needs %zu",
                       out_cap, need);
    }
    const uint64_t V = eg_spec_compressed_vocab(spec);
    for (size_t i = 0; i < total; i++)
        if (ids[i] >= V) {
            free(L);
            return eg_fail(err, EG_ERANGE,
                           "compressed id %u at position %zu (sequence %zu, token %zu) is >= "
                           "V' = %llu",
                           ids[i], i, i / seq_len, i % seq_len, (unsigned long long)V);
        }

    const int ref = (flags & EG_HASH_REFERENCE) != 0;
    const long long ns = (long long)n_seq;
#ifdef _OPENMP
    int nt = n_threads > 0 ? n_threads : omp_get_max_threads();
    if ((long long)nt > ns)
        nt = ns > 0 ? (int)ns : 1;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
#else
    (void)n_threads;
#endif
    for (long long s = 0; s < ns; s++) {
        const uint32_t *x = ids + (size_t)s * seq_len;
        uint32_t *o = out + (size_t)s * seq_len * L->H;
        if (ref)
            hash_seq_ref(L, x, seq_len, o);
        else
            hash_seq_fast(L, x, seq_len, o);
    }
    free(L);
    return EG_OK;
}
