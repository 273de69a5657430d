/* spec.c - multipliers, the prime schedule and row offsets (CONTRACT 2-3). */
#include <stdlib.h>
#include <string.h>

#include "engram/eg_spec.h"
#include "eg_internal.h"
#include "nprng.h"

struct eg_spec {
    eg_config cfg;
    uint64_t vprime;
    int64_t pad;
    uint32_t N, K, H;
    int64_t *mult;     /* [n_layers][N] */
    uint64_t *primes;  /* [n_layers][H] */
    uint64_t *offsets; /* [n_layers][H] */
    uint64_t *rows;    /* [n_layers] */
};

/* ---- primality -------------------------------------------------------- */

static uint64_t mulmod(uint64_t a, uint64_t b, uint64_t m)
{
    return (uint64_t)((eg_np_u128)a * b % m);
}

static uint64_t powmod(uint64_t a, uint64_t e, uint64_t m)
{
    uint64_t r = 1;
    a %= m;
    while (e) {
        if (e & 1)
            r = mulmod(r, a, m);
        a = mulmod(a, a, m);
        e >>= 1;
    }
    return r;
}

int eg_is_prime_u64(uint64_t n)
{
    static const uint64_t bases[] = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37};
    if (n < 2)
        return 0;
    for (size_t i = 0; i < sizeof bases / sizeof bases[0]; i++) {
        if (n == bases[i])
            return 1;
        if (n % bases[i] == 0)
            return 0;
    }
    uint64_t d = n - 1;
    unsigned s = 0;
    while ((d & 1) == 0) {
        d >>= 1;
        s++;
    }
    /* These twelve bases decide primality for every n < 3.3e24. */
    for (size_t i = 0; i < sizeof bases / sizeof bases[0]; i++) {
        uint64_t x = powmod(bases[i], d, n);
        if (x == 1 || x == n - 1)
            continue;
        int composite = 1;
        for (unsigned r = 1; r < s; r++) {
            x = mulmod(x, x, n);
            if (x == n - 1) {
                composite = 0;
                break;
            }
        }
        if (composite)
            return 0;
    }
    return 1;
}

/* ---- multipliers -------------------------------------------------------- */

eg_status eg_multipliers(uint64_t seed, uint32_t layer_id, uint64_t compressed_vocab,
                         uint32_t max_ngram, int64_t *out, eg_err *err)
{
    if (!out || compressed_vocab == 0 || max_ngram == 0)
        return eg_fail(err, EG_EINVAL, "multipliers: need V' >= 1 and max_ngram >= 1");
    uint64_t base;
    if (!eg_mul_ok(10007u, layer_id, &base) || !eg_add_ok(base, seed, &base))
        return eg_fail(err, EG_ERANGE, "multipliers: seed + 10007*layer overflows 64 bits");
    const uint64_t max_long = (uint64_t)INT64_MAX;
    uint64_t half = (max_long / compressed_vocab) / 2;
    if (half < 1)
        half = 1;
    eg_pcg64 g;
    eg_pcg64_from_seed(&g, base);
    eg_np_integers_i64(&g, 0, (int64_t)half, max_ngram, out);
    for (uint32_t k = 0; k < max_ngram; k++)
        out[k] = out[k] * 2 + 1;
    return EG_OK;
}

/* ---- the spec ------------------------------------------------------------ */

/* A small open-addressing set of primes already taken. */
typedef struct {
    uint64_t *slot;
    size_t cap;
} prime_set;

static int set_has(const prime_set *s, uint64_t p)
{
    for (size_t i = (p * 0x9E3779B97F4A7C15ull) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (s->slot[i] == p)
            return 1;
        if (s->slot[i] == 0)
            return 0;
    }
}

static void set_add(prime_set *s, uint64_t p)
{
    size_t i = (p * 0x9E3779B97F4A7C15ull) & (s->cap - 1);
    while (s->slot[i] != 0 && s->slot[i] != p)
        i = (i + 1) & (s->cap - 1);
    s->slot[i] = p;
}

void eg_spec_free(eg_spec *spec)
{
    if (!spec)
        return;
    free(spec->mult);
    free(spec->primes);
    free(spec->offsets);
    free(spec->rows);
    free(spec);
}

/* Validate the inputs and allocate an empty spec. */
static eg_status spec_alloc(const eg_config *cfg, uint64_t compressed_vocab,
                            int64_t pad_compressed, eg_spec **out, eg_err *err)
{
    if (!cfg || !out)
        return eg_fail(err, EG_EINVAL, "eg_spec_create: NULL argument");
    *out = NULL;
    eg_status st = eg_config_validate(cfg, cfg->name[0] ? cfg->name : NULL, err);
    if (st)
        return st;
    if (compressed_vocab == 0)
        return eg_fail(err, EG_EINVAL, "compressed vocabulary size V' must be >= 1");
    if (cfg->compressed_vocab_size && cfg->compressed_vocab_size != compressed_vocab)
        return eg_fail(err, EG_EMISMATCH,
                       "the config declares compressed_vocab_size %llu but the projection "
                       "has V' = %llu: these tables were built for another tokenizer",
                       (unsigned long long)cfg->compressed_vocab_size,
                       (unsigned long long)compressed_vocab);
    if (pad_compressed >= 0 && (uint64_t)pad_compressed >= compressed_vocab)
        return eg_fail(err, EG_ERANGE, "projected pad id %lld is outside V' = %llu",
                       (long long)pad_compressed, (unsigned long long)compressed_vocab);
    eg_spec *s = calloc(1, sizeof *s);
    if (!s)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    s->cfg = *cfg;
    s->vprime = compressed_vocab;
    s->pad = pad_compressed;
    s->N = cfg->max_ngram_size;
    s->K = cfg->n_head_per_ngram;
    s->H = (s->N - 1) * s->K;
    const size_t L = cfg->n_layers;
    s->mult = calloc(L * s->N, sizeof *s->mult);
    s->primes = calloc(L * s->H, sizeof *s->primes);
    s->offsets = calloc(L * s->H, sizeof *s->offsets);
    s->rows = calloc(L, sizeof *s->rows);
    if (!s->mult || !s->primes || !s->offsets || !s->rows) {
        eg_spec_free(s);
        return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    *out = s;
    return EG_OK;
}

/* Row offsets and per-layer rows from the primes. */
static eg_status spec_rows(eg_spec *s, eg_err *err)
{
    for (size_t li = 0; li < s->cfg.n_layers; li++) {
        const uint64_t *pr = s->primes + li * s->H;
        uint64_t *off = s->offsets + li * s->H, rows = 0;
        for (uint32_t h = 0; h < s->H; h++) {
            off[h] = rows;
            if (!eg_add_ok(rows, pr[h], &rows))
                return eg_fail(err, EG_ERANGE, "layer %u: row count overflows 64 bits",
                               s->cfg.layer_ids[li]);
        }
        s->rows[li] = rows;
        if (s->cfg.declared_rows[li] && s->cfg.declared_rows[li] != rows)
            return eg_fail(err, EG_EMISMATCH,
                           "layer %u: the config publishes %llu rows but the prime schedule "
                           "gives %llu",
                           s->cfg.layer_ids[li], (unsigned long long)s->cfg.declared_rows[li],
                           (unsigned long long)rows);
    }
    return EG_OK;
}

/* The reference's prime schedule: one `seen` set across layers, orders and
 * heads; each head takes the smallest unseen prime above the previous one. */
static eg_status spec_primes(eg_spec *s, eg_err *err)
{
    const size_t L = s->cfg.n_layers;
    prime_set seen = {0};
    seen.cap = 64;
    while (seen.cap < 2 * L * s->H)
        seen.cap *= 2;
    seen.slot = calloc(seen.cap, sizeof *seen.slot);
    if (!seen.slot)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    for (size_t li = 0; li < L; li++) {
        uint64_t *pr = s->primes + li * s->H;
        for (uint32_t n = 2; n <= s->N; n++) {
            uint64_t start = s->cfg.engram_vocab_size[n - 2] - 1;
            for (uint32_t j = 0; j < s->K; j++) {
                uint64_t c = start + 1;
                while (!eg_is_prime_u64(c) || set_has(&seen, c))
                    c++; /* sizes are <= 2^62: a prime is always found */
                set_add(&seen, c);
                pr[(n - 2) * s->K + j] = c;
                start = c;
            }
        }
    }
    free(seen.slot);
    return EG_OK;
}

eg_status eg_spec_create(const eg_config *cfg, uint64_t compressed_vocab,
                         int64_t pad_compressed, eg_spec **out, eg_err *err)
{
    if (out)
        *out = NULL;
    eg_spec *s;
    eg_status st = spec_alloc(cfg, compressed_vocab, pad_compressed, &s, err);
    if (st)
        return st;
    for (size_t li = 0; li < cfg->n_layers && !st; li++)
        st = eg_multipliers(cfg->seed, cfg->layer_ids[li], compressed_vocab, s->N,
                            s->mult + li * s->N, err);
    if (!st)
        st = spec_primes(s, err);
    if (!st)
        st = spec_rows(s, err);
    if (st) {
        eg_spec_free(s);
        return st;
    }
    *out = s;
    return EG_OK;
}

eg_status eg_spec_create_explicit(const eg_config *cfg, uint64_t compressed_vocab,
                                  int64_t pad_compressed, const int64_t *mult,
                                  const uint64_t *primes, eg_spec **out, eg_err *err)
{
    if (out)
        *out = NULL;
    if (!mult || !primes)
        return eg_fail(err, EG_EINVAL, "eg_spec_create_explicit: NULL argument");
    eg_spec *s;
    eg_status st = spec_alloc(cfg, compressed_vocab, pad_compressed, &s, err);
    if (st)
        return st;
    const size_t nm = (size_t)cfg->n_layers * s->N, np = (size_t)cfg->n_layers * s->H;
    for (size_t i = 0; i < nm && !st; i++)
        if (mult[i] <= 0 || !(mult[i] & 1))
            st = eg_fail(err, EG_ERANGE, "multiplier %zu (%lld) must be odd and positive", i,
                         (long long)mult[i]);
    for (size_t i = 0; i < np && !st; i++)
        if (primes[i] < 2 || primes[i] > (uint64_t)INT64_MAX)
            st = eg_fail(err, EG_ERANGE, "head size %zu (%llu) must be in 2..2^63-1", i,
                         (unsigned long long)primes[i]);
    if (!st) {
        memcpy(s->mult, mult, nm * sizeof *mult);
        memcpy(s->primes, primes, np * sizeof *primes);
        st = spec_rows(s, err);
    }
    if (st) {
        eg_spec_free(s);
        return st;
    }
    *out = s;
    return EG_OK;
}

const eg_config *eg_spec_config(const eg_spec *s) { return &s->cfg; }
uint64_t eg_spec_compressed_vocab(const eg_spec *s) { return s->vprime; }
int64_t eg_spec_pad(const eg_spec *s) { return s->pad; }
uint32_t eg_spec_n_layers(const eg_spec *s) { return s->cfg.n_layers; }
uint32_t eg_spec_max_ngram(const eg_spec *s) { return s->N; }
uint32_t eg_spec_heads_per_ngram(const eg_spec *s) { return s->K; }
uint32_t eg_spec_n_heads(const eg_spec *s) { return s->H; }
uint32_t eg_spec_head_dim(const eg_spec *s) { return s->cfg.n_embed_per_ngram / s->K; }

int eg_spec_layer_index(const eg_spec *s, uint32_t layer_id)
{
    for (uint32_t i = 0; i < s->cfg.n_layers; i++)
        if (s->cfg.layer_ids[i] == layer_id)
            return (int)i;
    return -1;
}

const int64_t *eg_spec_multipliers(const eg_spec *s, uint32_t li)
{
    return li < s->cfg.n_layers ? s->mult + (size_t)li * s->N : NULL;
}

const uint64_t *eg_spec_primes(const eg_spec *s, uint32_t li)
{
    return li < s->cfg.n_layers ? s->primes + (size_t)li * s->H : NULL;
}

const uint64_t *eg_spec_offsets(const eg_spec *s, uint32_t li)
{
    return li < s->cfg.n_layers ? s->offsets + (size_t)li * s->H : NULL;
}

uint64_t eg_spec_layer_rows(const eg_spec *s, uint32_t li)
{
    return li < s->cfg.n_layers ? s->rows[li] : 0;
}

uint64_t eg_spec_layer_bytes(const eg_spec *s, uint32_t li, uint32_t bytes_per_value)
{
    return eg_spec_layer_rows(s, li) * eg_spec_head_dim(s) * bytes_per_value;
}
