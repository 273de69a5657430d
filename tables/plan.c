/* plan.c - the counts file reader and table planning: expected collision
 * rates under uniform hashing, and rates measured with the real hash. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "../base/eg_internal.h"
#include "engram/eg_contract.h"
#include "engram/eg_count.h"

struct eg_counts {
    const unsigned char *map;
    size_t len;
    uint32_t N;
    uint64_t vprime, tokens;
    int64_t pad;
    uint64_t distinct[EG_COUNT_MAX_ORDER + 1], total[EG_COUNT_MAX_ORDER + 1];
    size_t section[EG_COUNT_MAX_ORDER + 1]; /* byte offset of order n's records */
    uint32_t version;
    const char *meta; /* version 2: the metadata JSON in the map */
    size_t meta_len;
};

eg_status eg_counts_open(const char *path, eg_counts **out, eg_err *err)
{
    if (!path || !out)
        return eg_fail(err, EG_EINVAL, "eg_counts_open: NULL argument");
    *out = NULL;
    eg_counts *c = calloc(1, sizeof *c);
    if (!c)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    void *m = NULL;
    eg_status st0 = eg_map_file(path, &m, &c->len, err);
    if (st0) {
        free(c);
        return st0;
    }
    c->map = m;
    eg_status st = EG_OK;
    const unsigned char *p = c->map;
    if (!p || c->len < 40 || memcmp(p, "EGCOUNT1", 8))
        st = eg_fail(err, EG_EFORMAT, "%s: not a counts file (no EGCOUNT1 header)", path);
    else if ((c->version = eg_get_le32(p + 8)) != 1 && c->version != 2)
        st = eg_fail(err, EG_EUNSUPPORTED,
                     "%s: counts file version %u (this build reads 1 and 2)", path, c->version);
    else if ((c->N = eg_get_le32(p + 12)) < 2 || c->N > EG_COUNT_MAX_ORDER)
        st = eg_fail(err, EG_EFORMAT, "%s: max n-gram order %u is out of range", path, c->N);
    else if (c->len < 40 + 16 * (size_t)(c->N - 1))
        st = eg_fail(err, EG_EFORMAT, "%s: truncated header", path);
    if (!st) {
        c->vprime = eg_get_le64(p + 16);
        c->pad = (int64_t)eg_get_le64(p + 24);
        c->tokens = eg_get_le64(p + 32);
        size_t off = 40 + 16 * (size_t)(c->N - 1);
        for (uint32_t n = 2; n <= c->N && !st; n++) {
            c->distinct[n] = eg_get_le64(p + 40 + 16 * (n - 2));
            c->total[n] = eg_get_le64(p + 48 + 16 * (n - 2));
            c->section[n] = off;
            const uint64_t rec = 4ull * n + 8;
            if (c->distinct[n] > (c->len - off) / rec)
                st = eg_fail(err, EG_EFORMAT, "%s: order %u claims %llu records beyond the file "
                                              "(truncated?)",
                             path, n, (unsigned long long)c->distinct[n]);
            else
                off += (size_t)(c->distinct[n] * rec);
        }
        if (!st && c->version == 2) { /* the metadata, its length, "EGCMETA1" */
            const size_t left = c->len - off;
            const uint64_t ml = left >= 16 ? eg_get_le64(p + c->len - 16) : 0;
            if (left < 16 || memcmp(p + c->len - 8, "EGCMETA1", 8) || ml != left - 16)
                st = eg_fail(err, EG_EFORMAT,
                             "%s: no metadata trailer after the records (truncated?)", path);
            c->meta = (const char *)p + off;
            c->meta_len = (size_t)ml;
            off = c->len;
        }
        if (!st && off != c->len)
            st = eg_fail(err, EG_EFORMAT, "%s: %zu bytes, the header describes %zu", path, c->len,
                         off);
    }
    if (st) {
        eg_counts_close(c);
        return st;
    }
    *out = c;
    return EG_OK;
}

void eg_counts_close(eg_counts *c)
{
    if (!c)
        return;
    if (c->map)
        munmap((void *)(uintptr_t)c->map, c->len);
    free(c);
}

uint32_t eg_counts_max_ngram(const eg_counts *c) { return c->N; }
uint32_t eg_counts_version(const eg_counts *c) { return c->version; }
const char *eg_counts_meta(const eg_counts *c, size_t *len)
{
    if (len)
        *len = c->meta_len;
    return c->meta;
}
uint64_t eg_counts_vprime(const eg_counts *c) { return c->vprime; }
int64_t eg_counts_pad(const eg_counts *c) { return c->pad; }
uint64_t eg_counts_tokens(const eg_counts *c) { return c->tokens; }
uint64_t eg_counts_distinct(const eg_counts *c, uint32_t n)
{
    return n >= 2 && n <= c->N ? c->distinct[n] : 0;
}
uint64_t eg_counts_total(const eg_counts *c, uint32_t n)
{
    return n >= 2 && n <= c->N ? c->total[n] : 0;
}

const unsigned char *eg_counts_record(const eg_counts *c, uint32_t n, uint64_t i)
{
    if (n < 2 || n > c->N || i > c->distinct[n])
        return NULL;
    return c->map + c->section[n] + i * (4ull * n + 8);
}

eg_status eg_counts_get(const eg_counts *c, uint32_t n, uint64_t i, uint32_t *ids,
                        uint64_t *count)
{
    if (n < 2 || n > c->N || i >= c->distinct[n])
        return EG_ERANGE;
    const unsigned char *r = c->map + c->section[n] + i * (4ull * n + 8);
    for (uint32_t k = 0; k < n; k++)
        ids[k] = eg_get_le32(r + 4 * k);
    *count = eg_get_le64(r + 4 * n);
    return EG_OK;
}

/* ---- planning ------------------------------------------------------------------ */

double eg_plan_collision_rate(uint64_t m, uint64_t p)
{
    if (m <= 1 || p == 0)
        return 0;
    if (p == 1)
        return 1;
    return -expm1((double)(m - 1) * log1p(-1.0 / (double)p));
}

uint64_t eg_plan_size_for(uint64_t m, double target)
{
    if (m <= 1 || target >= 1)
        return 1;
    if (target <= 0)
        target = 1e-12;
    double guess = (double)(m - 1) / -log1p(-target);
    uint64_t p = guess < 2 ? 2 : (uint64_t)guess;
    while (p > 2 && eg_plan_collision_rate(m, p - 1) <= target)
        p--;
    while (eg_plan_collision_rate(m, p) > target)
        p++;
    return p;
}

uint64_t eg_load_bucket_min(unsigned b) { return b < 8 ? b : 8ull << (b - 8); }

static unsigned load_bucket(uint64_t load)
{
    if (load < 8)
        return (unsigned)load;
    unsigned lg = 63u - (unsigned)__builtin_clzll(load); /* >= 3 */
    return lg - 3 + 8 < EG_LOAD_BUCKETS ? lg - 3 + 8 : EG_LOAD_BUCKETS - 1;
}

/* worse = fewer n-grams, then less mass */
static int bucket_less(const eg_plan_bucket *a, const eg_plan_bucket *b)
{
    return a->load != b->load ? a->load < b->load : a->mass < b->mass;
}

static void worst_offer(eg_plan_inspect *out, size_t k, const eg_plan_bucket *b)
{
    if (!k)
        return;
    size_t n = out->n_worst;
    if (n == k && !bucket_less(&out->worst[n - 1], b))
        return;
    size_t i = n < k ? n++ : n - 1;
    while (i > 0 && bucket_less(&out->worst[i - 1], b)) {
        out->worst[i] = out->worst[i - 1];
        i--;
    }
    out->worst[i] = *b;
    out->n_worst = (uint32_t)n;
}

eg_status eg_plan_inspect_order(const eg_counts *c, const eg_spec *spec, uint32_t li, uint32_t n,
                                size_t worst_k, uint8_t *hit, eg_plan_inspect *out, eg_err *err)
{
    memset(out, 0, sizeof *out);
    const uint32_t N = eg_spec_max_ngram(spec), K = eg_spec_heads_per_ngram(spec);
    if (!c || li >= eg_spec_n_layers(spec))
        return eg_fail(err, EG_EINVAL, "inspect: no counts or layer index %u out of range", li);
    if (n < 2 || n > N || n > c->N)
        return eg_fail(err, EG_EINVAL, "order %u is not in both the spec and the counts", n);
    if (K > 64)
        return eg_fail(err, EG_EUNSUPPORTED, "more than 64 heads per order");
    if (worst_k > EG_WORST_MAX)
        worst_k = EG_WORST_MAX;
    if (eg_spec_compressed_vocab(spec) != c->vprime)
        return eg_fail(err, EG_EMISMATCH, "the counts are over V' = %llu, the spec's V' is %llu",
                       (unsigned long long)c->vprime,
                       (unsigned long long)eg_spec_compressed_vocab(spec));
    const uint64_t m = c->distinct[n];
    const int64_t *mult = eg_spec_multipliers(spec, li);
    const uint64_t *primes = eg_spec_primes(spec, li) + (size_t)(n - 2) * K;
    const uint64_t *offs = eg_spec_offsets(spec, li) + (size_t)(n - 2) * K;
    for (uint32_t j = 0; j < K; j++)
        out->rows[j] = primes[j];
    if (!m)
        return EG_OK;
    int64_t *mix = malloc(m * sizeof *mix);
    uint64_t *cnt = malloc(m * sizeof *cnt);
    uint8_t *all = malloc(m);
    uint64_t maxp = 0;
    for (uint32_t j = 0; j < K; j++)
        maxp = primes[j] > maxp ? primes[j] : maxp;
    uint32_t *occ = maxp < (1ull << 34) ? calloc((size_t)maxp, sizeof *occ) : NULL;
    uint64_t *bmass = maxp < (1ull << 34) ? calloc((size_t)maxp, sizeof *bmass) : NULL;
    eg_status st = EG_OK;
    if (!mix || !cnt || !all || !occ || !bmass) {
        st = eg_fail(err, EG_ENOMEM, "out of memory measuring order %u", n);
        goto done;
    }
    uint64_t mass = 0;
    for (uint64_t i = 0; i < m; i++) {
        uint32_t ids[EG_COUNT_MAX_ORDER];
        int64_t hist[EG_MAX_NGRAM], mx[EG_MAX_NGRAM];
        eg_counts_get(c, n, i, ids, &cnt[i]);
        for (uint32_t k = 0; k < n; k++)
            hist[k] = ids[n - 1 - k]; /* hist[k] = x[t-k] */
        eg_mix_position(hist, mult, n, mx);
        mix[i] = mx[n - 2];
        mass += cnt[i];
    }
    out->distinct = m;
    out->mass = mass;
    memset(all, 1, m);
    for (uint32_t j = 0; j < K; j++) {
        const eg_fastmod_t f = eg_fastmod_make(primes[j]);
        memset(occ, 0, (size_t)primes[j] * sizeof *occ);
        memset(bmass, 0, (size_t)primes[j] * sizeof *bmass);
        for (uint64_t i = 0; i < m; i++) {
            uint64_t b = eg_mod_fast(mix[i], &f);
            if (occ[b] < UINT32_MAX)
                occ[b]++;
            bmass[b] += cnt[i];
        }
        uint64_t shared = 0, shared_mass = 0;
        for (uint64_t i = 0; i < m; i++) {
            int s = occ[eg_mod_fast(mix[i], &f)] > 1;
            shared += (uint64_t)s;
            shared_mass += s ? cnt[i] : 0;
            all[i] &= (uint8_t)s;
        }
        out->m.head_distinct[j] = (double)shared / (double)m;
        out->m.head_mass[j] = mass ? (double)shared_mass / (double)mass : 0;
        for (uint64_t b = 0; b < primes[j]; b++) {
            const uint64_t load = occ[b];
            out->load_hist[j][load_bucket(load)]++;
            if (!load)
                continue;
            out->rows_hit[j]++;
            out->max_load[j] = load > out->max_load[j] ? load : out->max_load[j];
            if (hit) {
                const uint64_t r = offs[j] + b;
                hit[r >> 3] |= (uint8_t)(1u << (r & 7));
            }
            if (load > 1) {
                const eg_plan_bucket wb = {.head = j, .bucket = b, .load = load, .mass = bmass[b]};
                worst_offer(out, worst_k, &wb);
            }
        }
    }
    uint64_t a = 0, am = 0;
    for (uint64_t i = 0; i < m; i++)
        if (all[i]) {
            a++;
            am += cnt[i];
        }
    out->m.all_distinct = (double)a / (double)m;
    out->m.all_mass = mass ? (double)am / (double)mass : 0;
    /* the worst buckets' most frequent n-grams */
    for (uint64_t i = 0; i < m && out->n_worst; i++)
        for (uint32_t w = 0; w < out->n_worst; w++) {
            eg_plan_bucket *wb = &out->worst[w];
            if ((uint64_t)eg_mod_ref(mix[i], primes[wb->head]) != wb->bucket)
                continue;
            uint32_t k = wb->n_ngram < 3 ? wb->n_ngram++ : 3;
            while (k > 0 && cnt[wb->ngram[k - 1]] < cnt[i]) {
                if (k < 3)
                    wb->ngram[k] = wb->ngram[k - 1];
                k--;
            }
            if (k < 3)
                wb->ngram[k] = i;
        }
done:
    free(mix);
    free(cnt);
    free(all);
    free(occ);
    free(bmass);
    return st;
}

eg_status eg_plan_measure_order(const eg_counts *c, const eg_spec *spec, uint32_t li, uint32_t n,
                                eg_plan_measure *out, eg_err *err)
{
    eg_plan_inspect *in = malloc(sizeof *in);
    if (!in)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    eg_status st = eg_plan_inspect_order(c, spec, li, n, 0, NULL, in, err);
    *out = in->m;
    free(in);
    return st;
}
