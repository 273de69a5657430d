/* cache_plan.c - sizing a hot-row cache from n-gram counts: how many rows, and
 * bytes, hold a given share of a corpus's lookups (eg_plan_cache_coverage). */
#include <stdlib.h>
#include <string.h>

#include "../base/eg_internal.h"
#include "engram/eg_contract.h"
#include "engram/eg_count.h"

#define SMALL 65536 /* row masses below this are counted in an array */

typedef struct {
    uint64_t small[SMALL];
    uint64_t *big;
    size_t n_big, cap_big;
} mass_hist;

static int add_mass(mass_hist *h, uint64_t m)
{
    if (m < SMALL) {
        h->small[m]++;
        return 0;
    }
    if (h->n_big == h->cap_big) {
        size_t nc = h->cap_big ? 2 * h->cap_big : 1024;
        uint64_t *nb = realloc(h->big, nc * sizeof *nb);
        if (!nb)
            return -1;
        h->big = nb;
        h->cap_big = nc;
    }
    h->big[h->n_big++] = m;
    return 0;
}

static int cmp_desc(const void *a, const void *b)
{
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x > y ? -1 : x < y;
}

eg_status eg_plan_cache_coverage(const eg_counts *c, const eg_spec *spec, size_t row_bytes,
                                 size_t slot_overhead, eg_cache_coverage *out, eg_err *err)
{
    if (!c || !spec || !out)
        return eg_fail(err, EG_EINVAL, "eg_plan_cache_coverage: NULL argument");
    if (out->n_shares > EG_COVERAGE_MAX)
        return eg_fail(err, EG_EINVAL, "cache coverage: %zu shares (at most %d)", out->n_shares,
                       EG_COVERAGE_MAX);
    if (eg_spec_compressed_vocab(spec) != eg_counts_vprime(c))
        return eg_fail(err, EG_EMISMATCH, "the counts are over V' = %llu, the spec's V' is %llu",
                       (unsigned long long)eg_counts_vprime(c),
                       (unsigned long long)eg_spec_compressed_vocab(spec));
    out->lookups = out->rows_hit = 0;
    const uint32_t L = eg_spec_n_layers(spec), N = eg_spec_max_ngram(spec),
                   K = eg_spec_heads_per_ngram(spec), CN = eg_counts_max_ngram(c);
    mass_hist *h = calloc(1, sizeof *h);
    if (!h)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    eg_status st = EG_OK;
    int64_t *mix = NULL;
    uint64_t *cnt = NULL, *bmass = NULL;
    size_t bcap = 0;
    for (uint32_t li = 0; li < L && !st; li++)
        for (uint32_t n = 2; n <= N && n <= CN && !st; n++) {
            const uint64_t m = eg_counts_distinct(c, n);
            if (!m)
                continue;
            free(mix);
            free(cnt);
            mix = malloc(m * sizeof *mix);
            cnt = malloc(m * sizeof *cnt);
            if (!mix || !cnt) {
                st = eg_fail(err, EG_ENOMEM, "out of memory sizing the row cache");
                break;
            }
            const int64_t *mult = eg_spec_multipliers(spec, li);
            for (uint64_t i = 0; i < m; i++) {
                uint32_t ids[EG_COUNT_MAX_ORDER];
                int64_t hist[EG_MAX_NGRAM], mx[EG_MAX_NGRAM];
                eg_counts_get(c, n, i, ids, &cnt[i]);
                for (uint32_t k = 0; k < n; k++)
                    hist[k] = ids[n - 1 - k];
                eg_mix_position(hist, mult, n, mx);
                mix[i] = mx[n - 2];
            }
            const uint64_t *primes = eg_spec_primes(spec, li) + (size_t)(n - 2) * K;
            for (uint32_t j = 0; j < K && !st; j++) {
                if (primes[j] > bcap) {
                    free(bmass);
                    bcap = primes[j];
                    if (!(bmass = malloc(bcap * sizeof *bmass))) {
                        st = eg_fail(err, EG_ENOMEM, "out of memory sizing the row cache");
                        break;
                    }
                }
                memset(bmass, 0, primes[j] * sizeof *bmass);
                const eg_fastmod_t f = eg_fastmod_make(primes[j]);
                for (uint64_t i = 0; i < m; i++)
                    bmass[eg_mod_fast(mix[i], &f)] += cnt[i];
                for (uint64_t b = 0; b < primes[j]; b++)
                    if (bmass[b]) {
                        out->lookups += bmass[b];
                        out->rows_hit++;
                        if (add_mass(h, bmass[b])) {
                            st = eg_fail(err, EG_ENOMEM, "out of memory sizing the row cache");
                            break;
                        }
                    }
            }
        }
    free(mix);
    free(cnt);
    free(bmass);
    if (!st) {
        /* the most looked-up rows first: big masses sorted, then the array down */
        if (h->n_big)
            qsort(h->big, h->n_big, sizeof *h->big, cmp_desc);
        for (size_t s = 0; s < out->n_shares; s++) {
            const double want = out->share[s] * (double)out->lookups;
            uint64_t rows = 0, acc = 0;
            size_t k = 0;
            for (; k < h->n_big && (double)acc < want; k++) {
                acc += h->big[k];
                rows++;
            }
            for (uint64_t v = SMALL - 1; v > 0 && (double)acc < want; v--) {
                if (!h->small[v])
                    continue;
                const double need = (want - (double)acc) / (double)v;
                uint64_t take = (uint64_t)need + ((double)(uint64_t)need < need);
                if (take > h->small[v])
                    take = h->small[v];
                acc += take * v;
                rows += take;
            }
            out->rows[s] = rows;
            out->bytes[s] = rows * row_bytes;
            out->cache_bytes[s] = rows * (row_bytes + slot_overhead);
        }
    }
    free(h->big);
    free(h);
    return st;
}
