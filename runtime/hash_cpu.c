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
    int use_dbl; /* every prime >= EG_FASTMOD_MIN */
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

/* K heads of one order: the double-reciprocal floor modulo, branch-free so the
 * compiler vectorizes it across heads. */
static inline void heads_dbl(int64_t mix, const int64_t *p, const double *inv,
                             const uint32_t *off, uint32_t K, uint32_t *out)
{
    const int64_t s = mix >> 63;
    const int64_t u = mix ^ s;
    const double du = (double)u;
#pragma omp simd
    for (uint32_t j = 0; j < K; j++) {
        int64_t q = (int64_t)(du * inv[j]);
        int64_t r = (int64_t)((uint64_t)u - (uint64_t)q * (uint64_t)p[j]);
        r += p[j] & (r >> 63);
        r -= (r >= p[j]) ? p[j] : 0;
        r = (r ^ s) + (p[j] & s); /* negative mix: p-1-r == ~r + p */
        out[j] = (uint32_t)r + off[j];
    }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(EG_NO_CLONES)
#define EG_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define EG_CLONES
#endif

EG_CLONES
static void hash_seq_fast(const layer_ctx *L, const uint32_t *x, size_t T, uint32_t *out)
{
    const uint32_t N = L->N, K = L->K, H = L->H;
    int64_t hist[EG_MAX_NGRAM];
    for (uint32_t k = 0; k < N; k++)
        hist[k] = L->pad;
    for (size_t t = 0; t < T; t++) {
        for (uint32_t k = N - 1; k > 0; k--)
            hist[k] = hist[k - 1];
        hist[0] = (int64_t)x[t];
        uint64_t acc = (uint64_t)hist[0] * (uint64_t)L->mult[0];
        uint32_t *o = out + t * H;
        for (uint32_t n = 2; n <= N; n++) {
            acc ^= (uint64_t)hist[n - 1] * (uint64_t)L->mult[n - 1];
            const uint32_t c = (n - 2) * K;
            if (L->use_dbl) {
                heads_dbl((int64_t)acc, L->p + c, L->inv + c, L->off + c, K, o + c);
            } else {
                for (uint32_t j = 0; j < K; j++)
                    o[c + j] = (uint32_t)eg_mod_barrett((int64_t)acc, &L->fm[c + j]) +
                               L->off[c + j];
            }
        }
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
        L->use_dbl &= L->primes[c] >= EG_FASTMOD_MIN;
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
