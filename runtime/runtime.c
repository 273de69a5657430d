/* runtime.c - the CPU runtime over a store: hashing with decode history and
 * barriers, gathering with deduplication, per-row gradient reduction, sparse
 * Adam on an in-memory overlay of trained rows, checkpoints (eg_runtime.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "eg_internal.h"
#include "engram/eg_contract.h"
#include "engram/eg_backend.h"
#include "engram/eg_hash.h"
#include "engram/eg_runtime.h"

/* Trained rows of one layer: their binary32 values, Adam's m and v and step
 * counts in slots (in the order rows were first trained), and a dense index
 * from row to slot. The index is 4 bytes per row of the layer, mapped
 * zeroed at the first trained row (pages no row touched stay unbacked for
 * large tables): one load finds a row, where a hash table of
 * trained rows took a probe sequence and grew with rehashes. Slots live in
 * chunks of 2^shift that never move: growing is one more chunk, not a copy
 * of every row trained so far. */
typedef struct {
    uint32_t *slot_of; /* [rows] slot + 1 of each trained row; 0 = not trained */
    uint64_t rows;
    size_t n;       /* trained rows (slots in use) */
    unsigned shift; /* slots per chunk: 2^shift */
    float **chunk;  /* each: 2^shift slots of 3 * dim floats, then 2^shift step counts */
    size_t n_chunks, cap_chunks;
} overlay;

/* Zeroed anonymous memory for the overlay, in huge pages where the kernel
 * gives them (madvise): rows are trained at random places of the index and
 * read at random slots, and 4 KiB pages made nearly every access a TLB miss
 * and every new 4 KiB of slots a page fault. NULL when out of memory. */
static void *big_alloc(size_t bytes)
{
    void *p = mmap(NULL, bytes ? bytes : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED)
        return NULL;
#ifdef MADV_HUGEPAGE
    if (bytes >= ((size_t)2 << 20))
        madvise(p, bytes, MADV_HUGEPAGE); /* advice only: 4 KiB pages otherwise */
#endif
    return p;
}

static void big_free(void *p, size_t bytes)
{
    if (p)
        munmap(p, bytes ? bytes : 1);
}

/* The value, m and v of slot s (3 * dim floats), and its step count. */
static inline float *ov_vals(const overlay *o, size_t s, size_t dim)
{
    return o->chunk[s >> o->shift] + (s & (((size_t)1 << o->shift) - 1)) * 3 * dim;
}

static inline uint32_t *ov_step(const overlay *o, size_t s, size_t dim)
{
    return (uint32_t *)(o->chunk[s >> o->shift] + ((size_t)3 * dim << o->shift)) +
           (s & (((size_t)1 << o->shift) - 1));
}

static size_t ov_chunk_bytes(const overlay *o, size_t dim)
{
    return ((size_t)3 * dim * sizeof(float) + sizeof(uint32_t)) << o->shift;
}

/* The slot of a row (< o->rows), -1 when it was never trained. */
static inline long ov_find(const overlay *o, uint64_t row)
{
    return o->slot_of ? (long)o->slot_of[row] - 1 : -1;
}

/* The slot of `row` (< o->rows), a new one (value `init`, zero moments, step
 * count `step`) if it was not trained; -1 when out of memory. */
static long ov_insert(overlay *o, uint64_t row, const float *init, uint32_t dim, uint32_t step)
{
    long f = ov_find(o, row);
    if (f >= 0)
        return f;
    if (o->n >= UINT32_MAX)
        return -1;
    if (!o->slot_of && !(o->slot_of = big_alloc(o->rows * sizeof *o->slot_of)))
        return -1;
    if (!o->shift) { /* chunks of about 8 MiB */
        const size_t per = (size_t)3 * dim * sizeof(float) + sizeof(uint32_t);
        o->shift = 6;
        while (o->shift < 20 && (per << (o->shift + 1)) <= ((size_t)8 << 20))
            o->shift++;
    }
    if ((o->n >> o->shift) == o->n_chunks) {
        if (o->n_chunks == o->cap_chunks) {
            const size_t nc = o->cap_chunks ? 2 * o->cap_chunks : 16;
            float **c = realloc(o->chunk, nc * sizeof *c);
            if (!c)
                return -1;
            o->chunk = c;
            o->cap_chunks = nc;
        }
        float *c = big_alloc(ov_chunk_bytes(o, dim));
        if (!c)
            return -1;
        o->chunk[o->n_chunks++] = c;
    }
    const size_t s = o->n++;
    o->slot_of[row] = (uint32_t)(s + 1);
    float *v = ov_vals(o, s, dim);
    memcpy(v, init, dim * sizeof *v);
    memset(v + dim, 0, 2 * (size_t)dim * sizeof *v); /* m and v start at zero */
    *ov_step(o, s, dim) = step;
    return (long)s;
}

/* Make row's whole state value, m, v (dim each) and step count (inserting the
 * row if it is new); -1 when out of memory. */
static long ov_set_state(overlay *o, uint64_t row, const float *val, const float *m,
                         const float *v, uint32_t step, uint32_t dim)
{
    const long s = ov_insert(o, row, val, dim, step);
    if (s < 0)
        return -1;
    float *w = ov_vals(o, (size_t)s, dim);
    memcpy(w, val, dim * sizeof *w);
    memcpy(w + dim, m, dim * sizeof *w);
    memcpy(w + 2 * (size_t)dim, v, dim * sizeof *w);
    *ov_step(o, (size_t)s, dim) = step;
    return s;
}

static void ov_free(overlay *o, uint32_t dim)
{
    big_free(o->slot_of, o->rows * sizeof *o->slot_of);
    for (size_t c = 0; c < o->n_chunks; c++)
        big_free(o->chunk[c], ov_chunk_bytes(o, dim));
    free(o->chunk);
}

struct eg_runtime {
    eg_store *store;
    char *path;
    const eg_spec *spec;
    uint32_t L, N, K, H, dim;
    int nt;
    overlay *ov; /* per layer */
    int rows_mode;     /* EG_RT_ROWS_* */
    eg_tier_opts topt; /* the tier's options (reopened with each generation) */
    eg_tier *tier;     /* NULL: rows from the map */
};

static eg_status load_opt(void *ctx, uint32_t li, uint64_t row, uint32_t step, const float *vals)
{
    eg_runtime *rt = ctx;
    const size_t dim = rt->dim;
    return ov_set_state(&rt->ov[li], row, vals, vals + dim, vals + 2 * dim, step, rt->dim) < 0
               ? EG_ENOMEM
               : EG_OK;
}

static eg_status rt_attach(eg_runtime *rt, const char *path, const eg_runtime_opts *o, eg_err *err)
{
    eg_store *s = NULL;
    eg_status st = eg_store_open(path, 0, &s, err);
    if (st)
        return st;
    if (o && (st = eg_store_expect(s, o->expect_tokenizer_sha256, o->expect_spec, err))) {
        eg_store_close(s);
        return st;
    }
    rt->store = s;
    rt->spec = eg_store_spec(s);
    if (o && o->rows == EG_RT_ROWS_TIER && (st = eg_tier_open(s, &o->tier, &rt->tier, err))) {
        rt->store = NULL;
        rt->spec = NULL;
        eg_store_close(s);
        return st;
    }
    return EG_OK;
}

eg_status eg_runtime_open(const char *store, const eg_runtime_opts *opts, eg_runtime **out,
                          eg_err *err)
{
    if (!store || !out)
        return eg_fail(err, EG_EINVAL, "eg_runtime_open: NULL argument");
    *out = NULL;
    eg_runtime *rt = calloc(1, sizeof *rt);
    if (!rt || !(rt->path = strdup(store))) {
        free(rt);
        return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    if (opts && opts->rows != EG_RT_ROWS_MAP && opts->rows != EG_RT_ROWS_TIER) {
        free(rt->path);
        free(rt);
        return eg_fail(err, EG_EINVAL, "eg_runtime_open: rows %d is neither EG_RT_ROWS_MAP nor "
                                       "EG_RT_ROWS_TIER",
                       opts->rows);
    }
    if (opts) {
        rt->rows_mode = opts->rows;
        rt->topt = opts->tier;
    }
    eg_status st = rt_attach(rt, store, opts, err);
    if (st) {
        eg_runtime_close(rt);
        return st;
    }
    rt->L = eg_spec_n_layers(rt->spec);
    rt->N = eg_spec_max_ngram(rt->spec);
    rt->K = eg_spec_heads_per_ngram(rt->spec);
    rt->H = eg_spec_n_heads(rt->spec);
    rt->dim = eg_store_get_info(rt->store)->dim;
    rt->nt = opts ? opts->n_threads : 0;
    rt->ov = calloc(rt->L, sizeof *rt->ov);
    if (!rt->ov) {
        eg_runtime_close(rt);
        return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    for (uint32_t li = 0; li < rt->L; li++)
        rt->ov[li].rows = eg_spec_layer_rows(rt->spec, li);
    st = eg_store_opt_foreach(rt->store, load_opt, rt, err);
    if (st) {
        if (st == EG_ENOMEM)
            eg_fail(err, st, "out of memory loading the training state");
        eg_runtime_close(rt);
        return st;
    }
    *out = rt;
    return EG_OK;
}

void eg_runtime_close(eg_runtime *rt)
{
    if (!rt)
        return;
    for (uint32_t li = 0; rt->ov && li < rt->L; li++)
        ov_free(&rt->ov[li], rt->dim);
    free(rt->ov);
    eg_tier_close(rt->tier);
    eg_store_close(rt->store);
    free(rt->path);
    free(rt);
}

const eg_spec *eg_runtime_spec(const eg_runtime *rt) { return rt ? rt->spec : NULL; }
const eg_store *eg_runtime_store(const eg_runtime *rt) { return rt ? rt->store : NULL; }
uint32_t eg_runtime_dim(const eg_runtime *rt) { return rt ? rt->dim : 0; }
int eg_runtime_rows(const eg_runtime *rt) { return rt && rt->tier ? EG_RT_ROWS_TIER : EG_RT_ROWS_MAP; }

size_t eg_rt_trained_rows(const eg_runtime *rt)
{
    size_t n = 0;
    for (uint32_t li = 0; rt && li < rt->L; li++)
        n += rt->ov[li].n;
    return n;
}

static int threads(const eg_runtime *rt)
{
#ifdef _OPENMP
    return rt->nt > 0 ? rt->nt : omp_get_max_threads();
#else
    (void)rt;
    return 1;
#endif
}

/* ---- hashing ---------------------------------------------------------------- */

void eg_rt_history_reset(const eg_runtime *rt, eg_rt_history *h, size_t n)
{
    const uint32_t pad = rt ? (uint32_t)eg_spec_pad(rt->spec) : 0;
    for (size_t b = 0; b < n; b++)
        for (int k = 0; k < 16; k++)
            h[b].ids[k] = pad;
}

eg_status eg_rt_hash(eg_runtime *rt, uint32_t li, const uint32_t *ids, size_t B, size_t T,
                     const uint8_t *barrier, eg_rt_history *hist, uint64_t *rows, size_t cap,
                     eg_err *err)
{
    if (!rt || (!ids && B && T) || (!rows && B && T))
        return eg_fail(err, EG_EINVAL, "eg_rt_hash: NULL argument");
    if (li >= rt->L)
        return eg_fail(err, EG_ERANGE, "eg_rt_hash: layer index %u >= %u", li, rt->L);
    const size_t H = rt->H, N = rt->N;
    if (T && B > SIZE_MAX / T / H)
        return eg_fail(err, EG_ERANGE, "eg_rt_hash: B*T*H overflows");
    if (cap < B * T * H)
        return eg_fail(err, EG_ECAPACITY, "eg_rt_hash: %zu rows need room for %zu, have %zu",
                       B * T, B * T * H, cap);
    size_t np;
    const uint32_t *proj = eg_store_projection(rt->store, &np);
    const uint64_t V = eg_spec_compressed_vocab(rt->spec);
    const int64_t pad = eg_spec_pad(rt->spec);
    /* compressed ids, checked */
    uint32_t *x = malloc((B && T ? B * T : 1) * sizeof *x);
    if (!x)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    for (size_t i = 0; i < B * T; i++) {
        uint32_t id = ids[i];
        if (proj) {
            if (id >= np) {
                free(x);
                return eg_fail(err, EG_ERANGE,
                               "eg_rt_hash: sequence %zu position %zu: id %u is outside the "
                               "projection's %zu ids",
                               i / (T ? T : 1), i % (T ? T : 1), id, np);
            }
            id = proj[id];
        } else if (id >= V) {
            free(x);
            return eg_fail(err, EG_ERANGE,
                           "eg_rt_hash: sequence %zu position %zu: id %u >= V' = %llu",
                           i / (T ? T : 1), i % (T ? T : 1), id, (unsigned long long)V);
        }
        x[i] = id;
    }
    eg_status st = EG_OK;
    const int64_t *mult = eg_spec_multipliers(rt->spec, li);
    const uint64_t *primes = eg_spec_primes(rt->spec, li), *offs = eg_spec_offsets(rt->spec, li);
    eg_fastmod_t fm[EG_MAX_HEADS * (EG_MAX_NGRAM - 1)];
    for (size_t c = 0; c < H; c++)
        fm[c] = eg_fastmod_make(primes[c]);
    const long long BB = (long long)B;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads(rt)) if (B * T > 4096)
#endif
    for (long long b = 0; b < BB; b++) {
        /* window: the last N ids, newest first; reach = how many of them are real */
        int64_t win[EG_MAX_NGRAM];
        uint32_t prev[16];
        for (size_t k = 0; k + 1 < N; k++)
            prev[k] = hist ? hist[b].ids[k] : (uint32_t)pad; /* oldest first */
        for (size_t t = 0; t < T; t++) {
            const size_t i = (size_t)b * T + t;
            if (barrier && barrier[i])
                for (size_t k = 0; k + 1 < N; k++)
                    prev[k] = (uint32_t)pad;
            win[0] = x[i];
            for (size_t k = 1; k < N; k++)
                win[k] = prev[N - 1 - k];
            int64_t mix[EG_MAX_NGRAM];
            eg_mix_position(win, mult, (uint32_t)N, mix);
            for (size_t n = 2; n <= N; n++)
                for (size_t j = 0; j < rt->K; j++) {
                    const size_t c = (n - 2) * rt->K + j;
                    rows[i * H + c] = offs[c] + eg_mod_fast(mix[n - 2], &fm[c]);
                }
            for (size_t k = 0; k + 2 < N; k++)
                prev[k] = prev[k + 1];
            if (N > 1)
                prev[N - 2] = x[i];
        }
        if (hist)
            for (size_t k = 0; k + 1 < N; k++)
                hist[b].ids[k] = prev[k];
    }
    free(x);
    return st;
}

/* ---- gathering ------------------------------------------------------------------ */

typedef eg_rowpos rowpos;

/* Sort rp[n] by row, ties in their current order (LSD radix, 11-bit digits
 * over the bits the largest row spans): what qsort with eg_cmp_rowpos gives for
 * entries in position order, at a fraction of its cost. 0, or -1 when out of
 * memory (rp unchanged). */
#define RP_BITS 11
static int sort_rowpos(rowpos *rp, size_t n)
{
    if (n < 64) {
        qsort(rp, n, sizeof *rp, eg_cmp_rowpos);
        return 0;
    }
    uint64_t mx = 0;
    for (size_t i = 0; i < n; i++)
        mx |= rp[i].row;
    int passes = 0;
    while (passes * RP_BITS < 64 && (mx >> (passes * RP_BITS)))
        passes++;
    if (!passes)
        return 0;
    rowpos *tmp = malloc(n * sizeof *tmp);
    if (!tmp)
        return -1;
    rowpos *src = rp, *dst = tmp;
    for (int p = 0; p < passes; p++) {
        size_t cnt[1u << RP_BITS] = {0};
        const int sh = p * RP_BITS;
        const uint64_t mask = (1u << RP_BITS) - 1;
        for (size_t i = 0; i < n; i++)
            cnt[(src[i].row >> sh) & mask]++;
        size_t sum = 0;
        for (size_t b = 0; b <= mask; b++) {
            const size_t c = cnt[b];
            cnt[b] = sum;
            sum += c;
        }
        for (size_t i = 0; i < n; i++)
            dst[cnt[(src[i].row >> sh) & mask]++] = src[i];
        rowpos *t = src;
        src = dst;
        dst = t;
    }
    if (src != rp)
        memcpy(rp, src, n * sizeof *rp);
    free(tmp);
    return 0;
}

/* The current binary32 value of a row: trained, else stored (or generated). */
static eg_status row_value(eg_runtime *rt, uint32_t li, uint64_t row, float *out, eg_err *err)
{
    long s = ov_find(&rt->ov[li], row);
    if (s >= 0) {
        memcpy(out, ov_vals(&rt->ov[li], (size_t)s, rt->dim), rt->dim * sizeof *out);
        return EG_OK;
    }
    return eg_store_read_rows(rt->store, li, row, 1, out, rt->dim, err);
}

/* Rows of layer li in the stored encoding, from the tier or the map. */
static eg_status read_encoded_rows(eg_runtime *rt, uint32_t li, const uint64_t *rows, size_t n,
                                   void *dst, size_t cap, eg_err *err)
{
    if (rt->tier)
        return eg_tier_gather(rt->tier, li, rows, n, dst, cap, err);
    return eg_store_gather_encoded(rt->store, li, rows, n, dst, cap, threads(rt), err);
}

/* eg_rt_gather with the row tier: the untrained positions' stored rows in one
 * tier gather (sorted, deduplicated reads), then each position copied or
 * decoded exactly as the map's paths do it. */
static eg_status gather_tier(eg_runtime *rt, uint32_t li, const uint64_t *rows, size_t n,
                             eg_dtype out_dtype, void *out, eg_err *err)
{
    const size_t dim = rt->dim, es = out_dtype == EG_F32 ? 4 : 2;
    const eg_store_info *in = eg_store_get_info(rt->store);
    const size_t rb = in->row_bytes;
    const uint64_t lr = eg_spec_layer_rows(rt->spec, li);
    const overlay *o = &rt->ov[li];
    uint64_t *mr = malloc((n ? n : 1) * sizeof *mr);
    size_t *mp = malloc((n ? n : 1) * sizeof *mp), m = 0;
    if (!mr || !mp) {
        free(mr);
        free(mp);
        return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        if (rows[i] >= lr) {
            free(mr);
            free(mp);
            return eg_fail(err, EG_ERANGE, "eg_rt_gather: row %llu at %zu >= layer %u's %llu rows",
                           (unsigned long long)rows[i], i, li, (unsigned long long)lr);
        }
        const long s = o->n ? ov_find(o, rows[i]) : -1;
        if (s >= 0) {
            eg_row_encode(out_dtype, (uint32_t)dim, ov_vals(o, (size_t)s, dim),
                          (unsigned char *)out + i * dim * es);
            continue;
        }
        mr[m] = rows[i];
        mp[m++] = i;
    }
    unsigned char *enc = malloc((m ? m : 1) * rb);
    eg_status st = enc ? eg_tier_gather(rt->tier, li, mr, m, enc, m * rb, err)
                       : eg_fail(err, EG_ENOMEM, "out of memory");
    int oom = 0;
    if (!st) {
        const long long M = (long long)m;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads(rt)) if (m > 1024) reduction(| : oom)
#endif
        {
            float *v = in->dtype != out_dtype && out_dtype != EG_F32 ? malloc(dim * sizeof *v) : NULL;
            if (in->dtype != out_dtype && out_dtype != EG_F32 && !v)
                oom = 1;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (long long k = 0; k < M; k++) {
                unsigned char *orow = (unsigned char *)out + mp[k] * dim * es;
                const unsigned char *e = enc + (size_t)k * rb;
                if (in->dtype == out_dtype)
                    memcpy(orow, e, dim * es);
                else if (out_dtype == EG_F32)
                    eg_row_decode(in->dtype, (uint32_t)dim, e, (float *)(void *)orow);
                else if (v) {
                    eg_row_decode(in->dtype, (uint32_t)dim, e, v);
                    eg_row_encode(EG_BF16, (uint32_t)dim, v, orow);
                }
            }
            free(v);
        }
    }
    free(enc);
    free(mr);
    free(mp);
    if (!st && oom)
        st = eg_fail(err, EG_ENOMEM, "out of memory");
    return st;
}

eg_status eg_rt_prefetch(eg_runtime *rt, const uint32_t *ids, size_t B, size_t T,
                         const uint8_t *barrier, const eg_rt_history *hist, eg_err *err)
{
    if (!rt || (!ids && B && T))
        return eg_fail(err, EG_EINVAL, "eg_rt_prefetch: NULL argument");
    eg_tier_stats ts;
    eg_tier_get_stats(rt->tier, &ts);
    if (!rt->tier || !ts.cache_slots || !B || !T)
        return EG_OK;
    const size_t H = rt->H;
    if (B > SIZE_MAX / T / H / rt->L)
        return eg_fail(err, EG_ERANGE, "eg_rt_prefetch: B*T*H overflows");
    const size_t nt = B * T * H;
    uint64_t *rows = malloc(nt * sizeof *rows), *keys = malloc(nt * rt->L * sizeof *keys);
    eg_rt_history *hc = hist ? malloc(B * sizeof *hc) : NULL;
    eg_status st = EG_OK;
    if (!rows || !keys || (hist && !hc)) {
        st = eg_fail(err, EG_ENOMEM, "out of memory");
        goto out;
    }
    size_t k = 0;
    for (uint32_t li = 0; li < rt->L && !st; li++) {
        if (hc)
            memcpy(hc, hist, B * sizeof *hc);
        if ((st = eg_rt_hash(rt, li, ids, B, T, barrier, hc, rows, nt, err)))
            break;
        const overlay *o = &rt->ov[li];
        for (size_t i = 0; i < nt; i++)
            if (!o->n || ov_find(o, rows[i]) < 0) /* trained rows are in memory */
                keys[k++] = EG_TIER_KEY(li, rows[i]);
    }
    if (!st)
        st = eg_tier_prefetch(rt->tier, keys, k, err);
out:
    free(rows);
    free(keys);
    free(hc);
    return st;
}

void eg_rt_tier_stats(const eg_runtime *rt, eg_tier_stats *st)
{
    eg_tier_get_stats(rt ? rt->tier : NULL, st);
}

#define GATHER_BLOCK 32

eg_status eg_rt_gather(eg_runtime *rt, uint32_t li, const uint64_t *rows, size_t n,
                       eg_dtype out_dtype, void *out, size_t cap, eg_err *err)
{
    if (!rt || (n && (!rows || !out)))
        return eg_fail(err, EG_EINVAL, "eg_rt_gather: NULL argument");
    if (li >= rt->L)
        return eg_fail(err, EG_ERANGE, "eg_rt_gather: layer index %u >= %u", li, rt->L);
    if (out_dtype != EG_F32 && out_dtype != EG_BF16)
        return eg_fail(err, EG_EINVAL, "eg_rt_gather: output dtype must be f32 or bf16");
    const size_t dim = rt->dim, es = out_dtype == EG_F32 ? 4 : 2;
    if (n > cap / (dim * es))
        return eg_fail(err, EG_ECAPACITY, "eg_rt_gather: %zu rows need %zu bytes, have %zu", n,
                       n * dim * es, cap);
    const uint64_t lr = eg_spec_layer_rows(rt->spec, li);
    const eg_store_info *in = eg_store_get_info(rt->store);
    if (rt->tier)
        return gather_tier(rt, li, rows, n, out_dtype, out, err);
    if (in->dtype == out_dtype && !rt->ov[li].n) {
        return eg_store_gather_encoded(rt->store, li, rows, n, out, cap, rt->nt, err);
    }
    if (in->dtype == out_dtype) {
        /* the stored encoding is the output's: rows are copied from the map
         * as they are (nothing to decode, so nothing to deduplicate), in
         * blocks whose index entries, then rows, are fetched ahead (each row
         * is a random read of a large table) */
        int bad = 0;
        eg_err first = {0};
        size_t first_at = 0;
        const overlay *o = &rt->ov[li];
        const long long NB = (long long)((n + GATHER_BLOCK - 1) / GATHER_BLOCK);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads(rt)) if (n > 4096) reduction(| : bad)
#endif
        for (long long bb = 0; bb < NB; bb++) {
            const size_t i0 = (size_t)bb * GATHER_BLOCK;
            const size_t m = n - i0 < GATHER_BLOCK ? n - i0 : GATHER_BLOCK;
            const void *src[GATHER_BLOCK];
            int trained[GATHER_BLOCK];
            for (size_t j = 0; j < m && o->slot_of; j++)
                if (rows[i0 + j] < lr)
                    __builtin_prefetch(&o->slot_of[rows[i0 + j]]);
            for (size_t j = 0; j < m; j++) {
                const uint64_t r = rows[i0 + j];
                long s = r < lr ? ov_find(o, r) : -1;
                eg_err e2;
                src[j] = NULL;
                trained[j] = s >= 0;
                if (s >= 0)
                    src[j] = ov_vals(o, (size_t)s, dim);
                else if (r < lr && eg_store_row_ptr(rt->store, li, r, &src[j], &e2))
                    src[j] = NULL; /* the error again below, on the slow path */
                if (src[j])
                    __builtin_prefetch(src[j]);
            }
            for (size_t j = 0; j < m; j++) {
                const size_t i = i0 + j;
                unsigned char *out_row = (unsigned char *)out + i * dim * es;
                if (trained[j]) {
                    eg_row_encode(out_dtype, (uint32_t)dim, src[j], out_row);
                    continue;
                }
                if (src[j]) {
                    memcpy(out_row, src[j], dim * es);
                    continue;
                }
                const void *p = NULL;
                eg_err e2;
                if (rows[i] >= lr || eg_store_row_ptr(rt->store, li, rows[i], &p, &e2) ||
                    (!p && eg_store_read_encoded(rt->store, li, rows[i], 1, out_row, dim * es, &e2))) {
                    if (rows[i] >= lr)
                        eg_fail(&e2, EG_ERANGE, "eg_rt_gather: row %llu at %zu >= layer %u's %llu rows",
                                (unsigned long long)rows[i], i, li, (unsigned long long)lr);
                    bad = 1;
#ifdef _OPENMP
#pragma omp critical
#endif
                    if (!first.code || i < first_at) {
                        first = e2;
                        first_at = i;
                    }
                    continue;
                }
                if (p)
                    memcpy(out_row, p, dim * es);
            }
        }
        if (bad)
            return eg_fail(err, first.code ? first.code : EG_EFORMAT, "%s", first.msg);
        return EG_OK;
    }
    rowpos *rp = malloc((n ? n : 1) * sizeof *rp);
    if (!rp)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (rows[i] >= lr) {
            free(rp);
            return eg_fail(err, EG_ERANGE, "eg_rt_gather: row %llu at %zu >= layer %u's %llu rows",
                           (unsigned long long)rows[i], i, li, (unsigned long long)lr);
        }
        rp[i].row = rows[i];
        rp[i].pos = i;
    }
    if (sort_rowpos(rp, n)) {
        free(rp);
        return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    /* runs of equal rows: decode the first, copy to the rest */
    size_t *start = malloc((n + 1) * sizeof *start), nu = 0;
    if (!start) {
        free(rp);
        return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++)
        if (!i || rp[i].row != rp[i - 1].row)
            start[nu++] = i;
    start[nu] = n;
    int failed = 0;
    eg_err first = {0};
    const long long NU = (long long)nu;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads(rt)) if (nu > 256) reduction(| : failed)
#endif
    {
        float *v = malloc(dim * sizeof *v);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (long long u = 0; u < NU; u++) {
            eg_err e2;
            if (!v || failed) {
                failed = 1;
                continue;
            }
            if (row_value(rt, li, rp[start[u]].row, v, &e2)) {
                failed = 1;
#ifdef _OPENMP
#pragma omp critical
#endif
                if (!first.code)
                    first = e2;
                continue;
            }
            for (size_t i = start[u]; i < start[u + 1]; i++) {
                unsigned char *o = (unsigned char *)out + rp[i].pos * dim * es;
                if (out_dtype == EG_F32)
                    memcpy(o, v, dim * 4);
                else
                    eg_row_encode(EG_BF16, (uint32_t)dim, v, o);
            }
        }
        free(v);
    }
    free(start);
    free(rp);
    if (failed) {
        if (first.code)
            return eg_fail(err, first.code, "%s", first.msg);
        return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    return EG_OK;
}

/* ---- training ------------------------------------------------------------------- */

eg_status eg_rt_reduce_rows(const eg_runtime *rt, const uint64_t *rows, const float *grads,
                            size_t n, uint64_t *uniq, float *usum, size_t *n_uniq, eg_err *err)
{
    if (!rt || !n_uniq || (n && (!rows || !grads || !uniq || !usum)))
        return eg_fail(err, EG_EINVAL, "eg_rt_reduce_rows: NULL argument");
    const size_t dim = rt->dim;
    rowpos *rp = malloc((n ? n : 1) * sizeof *rp);
    if (!rp)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        rp[i].row = rows[i];
        rp[i].pos = i;
    }
    if (sort_rowpos(rp, n)) { /* ties by position: a fixed summation order */
        free(rp);
        return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    size_t u = 0;
    for (size_t i = 0; i < n; i++) {
        if (!i || rp[i].row != rp[i - 1].row) {
            uniq[u] = rp[i].row;
            memcpy(usum + u * dim, grads + rp[i].pos * dim, dim * sizeof *usum);
            u++;
            continue;
        }
        float *d = usum + (u - 1) * dim;
        const float *g = grads + rp[i].pos * dim;
        for (size_t k = 0; k < dim; k++)
            d[k] += g[k];
    }
    *n_uniq = u;
    free(rp);
    return EG_OK;
}

eg_status eg_rt_adam_step(eg_runtime *rt, uint32_t li, const uint64_t *uniq, const float *grads,
                          size_t n, const eg_adam *hp, eg_err *err)
{
    if (!rt || !hp || (n && (!uniq || !grads)))
        return eg_fail(err, EG_EINVAL, "eg_rt_adam_step: NULL argument");
    if (li >= rt->L)
        return eg_fail(err, EG_ERANGE, "eg_rt_adam_step: layer index %u >= %u", li, rt->L);
    const size_t dim = rt->dim;
    const uint64_t lr_rows = eg_spec_layer_rows(rt->spec, li);
    overlay *o = &rt->ov[li];
    long *slot = malloc((n ? n : 1) * sizeof *slot);
    size_t *miss = malloc((n ? n : 1) * sizeof *miss), nm = 0;
    if (!slot || !miss) {
        free(slot);
        free(miss);
        return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        if (uniq[i] >= lr_rows || (i && uniq[i] <= uniq[i - 1])) {
            free(slot);
            free(miss);
            return eg_fail(err, EG_EINVAL,
                           "eg_rt_adam_step: rows must be unique, ascending and < %llu (at %zu)",
                           (unsigned long long)lr_rows, i);
        }
        if (o->slot_of && i + 16 < n && uniq[i + 16] < lr_rows)
            __builtin_prefetch(&o->slot_of[uniq[i + 16]]);
        slot[i] = ov_find(o, uniq[i]);
        if (slot[i] < 0)
            miss[nm++] = i;
    }
    /* rows trained for the first time: their stored values, read side by side,
     * then given slots (serial: a slot is an index entry and a copy) */
    const eg_store_info *in = eg_store_get_info(rt->store);
    float *v0 = malloc((nm ? nm : 1) * dim * sizeof *v0);
    uint64_t *mrows = malloc((nm ? nm : 1) * sizeof *mrows);
    unsigned char *enc = in->dtype == EG_F32 ? (unsigned char *)v0
                                             : malloc((nm ? nm : 1) * in->row_bytes);
    if (!v0 || !mrows || !enc) {
        if (enc != (unsigned char *)v0)
            free(enc);
        free(v0);
        free(mrows);
        free(slot);
        free(miss);
        return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    for (size_t j = 0; j < nm; j++)
        mrows[j] = uniq[miss[j]];
    eg_err first = {0};
    int bad = read_encoded_rows(rt, li, mrows, nm, enc, nm * in->row_bytes, &first) != EG_OK;
    if (!bad && enc != (unsigned char *)v0) {
        const long long NM = (long long)nm;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads(rt)) if (nm > 1024)
#endif
        for (long long j = 0; j < NM; j++)
            eg_row_decode(in->dtype, (uint32_t)dim, enc + (size_t)j * in->row_bytes,
                          v0 + (size_t)j * dim);
    }
    if (enc != (unsigned char *)v0)
        free(enc);
    free(mrows);
    for (size_t j = 0; j < nm && !bad; j++) {
        const size_t i = miss[j];
        slot[i] = ov_insert(o, uniq[i], v0 + j * dim, (uint32_t)dim, 0);
        if (slot[i] < 0) {
            free(v0);
            free(slot);
            free(miss);
            return eg_fail(err, EG_ENOMEM, "out of memory");
        }
    }
    free(v0);
    free(miss);
    if (bad) {
        free(slot);
        return eg_fail(err, first.code ? first.code : EG_EIO, "%s", first.msg);
    }
    const long long NN = (long long)n;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads(rt)) if (n > 64)
#endif
    for (long long i = 0; i < NN; i++) {
        if (i + 8 < NN) { /* a row's value, m and v: 12 * dim bytes */
            const char *pa = (const char *)ov_vals(o, (size_t)slot[i + 8], dim);
            for (size_t b = 0; b < 12 * dim; b += 64)
                __builtin_prefetch(pa + b, 1);
        }
        float *w = ov_vals(o, (size_t)slot[i], dim);
        const uint32_t t = ++*ov_step(o, (size_t)slot[i], dim);
        eg_adam_row(w, w + dim, w + 2 * dim, t, grads + (size_t)i * dim, (uint32_t)dim, hp);
    }
    free(slot);
    return EG_OK;
}

static eg_status rows_in_range(const eg_runtime *rt, uint32_t li, const uint64_t *rows, size_t n,
                               const char *who, eg_err *err)
{
    if (li >= rt->L)
        return eg_fail(err, EG_ERANGE, "%s: layer index %u >= %u", who, li, rt->L);
    const uint64_t lr = eg_spec_layer_rows(rt->spec, li);
    for (size_t i = 0; i < n; i++)
        if (rows[i] >= lr)
            return eg_fail(err, EG_ERANGE, "%s: row %llu at %zu >= layer %u's %llu rows", who,
                           (unsigned long long)rows[i], i, li, (unsigned long long)lr);
    return EG_OK;
}

eg_status eg_rt_set_rows(eg_runtime *rt, uint32_t li, const uint64_t *rows, const float *vals,
                         size_t n, eg_err *err)
{
    if (!rt || (n && (!rows || !vals)))
        return eg_fail(err, EG_EINVAL, "eg_rt_set_rows: NULL argument");
    eg_status st = rows_in_range(rt, li, rows, n, "eg_rt_set_rows", err);
    if (st)
        return st;
    const size_t dim = rt->dim;
    overlay *o = &rt->ov[li];
    for (size_t i = 0; i < n; i++) {
        const long sl = ov_insert(o, rows[i], vals + i * dim, (uint32_t)dim, 0); /* or found */
        if (sl < 0)
            return eg_fail(err, EG_ENOMEM, "out of memory");
        memcpy(ov_vals(o, (size_t)sl, dim), vals + i * dim, dim * sizeof(float));
    }
    return EG_OK;
}

eg_status eg_rt_get_rows_state(eg_runtime *rt, uint32_t li, const uint64_t *rows, size_t n,
                               float *val, float *m, float *v, uint32_t *steps, eg_err *err)
{
    if (!rt || (n && (!rows || !val || !m || !v || !steps)))
        return eg_fail(err, EG_EINVAL, "eg_rt_get_rows_state: NULL argument");
    eg_status st = rows_in_range(rt, li, rows, n, "eg_rt_get_rows_state", err);
    if (st || (st = eg_rt_gather(rt, li, rows, n, EG_F32, val, n * rt->dim * sizeof *val, err)))
        return st;
    const overlay *o = &rt->ov[li];
    const size_t dim = rt->dim;
    for (size_t i = 0; i < n; i++) {
        const long s = ov_find(o, rows[i]);
        if (s >= 0) {
            const float *w = ov_vals(o, (size_t)s, dim);
            memcpy(m + i * dim, w + dim, dim * sizeof *m);
            memcpy(v + i * dim, w + 2 * dim, dim * sizeof *v);
            steps[i] = *ov_step(o, (size_t)s, dim);
        } else {
            memset(m + i * dim, 0, dim * sizeof *m);
            memset(v + i * dim, 0, dim * sizeof *v);
            steps[i] = 0;
        }
    }
    return EG_OK;
}

eg_status eg_rt_set_rows_state(eg_runtime *rt, uint32_t li, const uint64_t *rows, size_t n,
                               const float *val, const float *m, const float *v,
                               const uint32_t *steps, eg_err *err)
{
    if (!rt || (n && (!rows || !val || !m || !v || !steps)))
        return eg_fail(err, EG_EINVAL, "eg_rt_set_rows_state: NULL argument");
    eg_status st = rows_in_range(rt, li, rows, n, "eg_rt_set_rows_state", err);
    if (st)
        return st;
    overlay *o = &rt->ov[li];
    const size_t dim = rt->dim;
    for (size_t i = 0; i < n; i++)
        if (ov_set_state(o, rows[i], val + i * dim, m + i * dim, v + i * dim, steps[i],
                         (uint32_t)dim) < 0)
            return eg_fail(err, EG_ENOMEM, "out of memory");
    return EG_OK;
}

/* ---- checkpoints ----------------------------------------------------------------- */

static eg_status ckpt_rows(void *ctx, uint32_t li, uint64_t row0, uint64_t n, void *dst,
                           eg_err *err)
{
    eg_runtime *rt = ctx;
    const eg_store_info *in = eg_store_get_info(rt->store);
    eg_status st = eg_store_read_encoded(rt->store, li, row0, n, dst, n * in->row_bytes, err);
    if (st)
        return st;
    const overlay *o = &rt->ov[li];
    if (!o->n)
        return EG_OK;
    for (uint64_t r = row0; r < row0 + n; r++) {
        long s = ov_find(o, r);
        if (s >= 0)
            eg_row_encode(in->dtype, in->dim, ov_vals(o, (size_t)s, rt->dim),
                          (unsigned char *)dst + (r - row0) * in->row_bytes);
    }
    return EG_OK;
}

eg_status eg_rt_checkpoint(eg_runtime *rt, const char *path, eg_err *err)
{
    if (!rt)
        return eg_fail(err, EG_EINVAL, "eg_rt_checkpoint: NULL runtime");
    const char *dst = path ? path : rt->path;
    const eg_store_info *in = eg_store_get_info(rt->store);
    const size_t dim = rt->dim, n_opt = eg_rt_trained_rows(rt);
    const uint64_t V = eg_spec_compressed_vocab(rt->spec);
    uint64_t *keys = malloc((n_opt ? n_opt : 1) * sizeof *keys);
    uint32_t *steps = malloc((n_opt ? n_opt : 1) * sizeof *steps);
    float *vals = malloc((n_opt ? n_opt : 1) * 3 * dim * sizeof *vals);
    const char **vkeys = eg_store_key(rt->store, 0) ? malloc(V * sizeof *vkeys) : NULL;
    uint8_t **hit = in->sparse ? calloc(rt->L, sizeof *hit) : NULL;
    eg_status st = EG_OK;
    if (!keys || !steps || !vals || (eg_store_key(rt->store, 0) && !vkeys) ||
        (in->sparse && !hit)) {
        st = eg_fail(err, EG_ENOMEM, "out of memory");
        goto done;
    }
    /* the trained rows in key order (layer, then row): the index in row order */
    size_t k = 0;
    for (uint32_t li = 0; li < rt->L; li++) {
        const overlay *o = &rt->ov[li];
        for (uint64_t r = 0; o->n && r < o->rows; r++)
            if (o->slot_of[r]) {
                const size_t sl = o->slot_of[r] - 1;
                keys[k] = (uint64_t)li << 40 | r;
                steps[k] = *ov_step(o, sl, dim);
                memcpy(vals + k * 3 * dim, ov_vals(o, sl, dim), 3 * dim * sizeof *vals);
                k++;
            }
    }
    for (uint64_t c = 0; vkeys && c < V; c++)
        vkeys[c] = eg_store_key(rt->store, (uint32_t)c);
    /* a sparse store stays sparse: its stored blocks plus the trained rows */
    for (uint32_t li = 0; hit && li < rt->L; li++) {
        const uint64_t rows = eg_spec_layer_rows(rt->spec, li);
        if (!(hit[li] = calloc(rows / 8 + 1, 1))) {
            st = eg_fail(err, EG_ENOMEM, "out of memory");
            goto done;
        }
        for (uint64_t r = 0; r < rows; r += in->rows_per_block) {
            const void *p;
            if ((st = eg_store_row_ptr(rt->store, li, r, &p, err)))
                goto done;
            if (p)
                hit[li][r >> 3] |= (uint8_t)(1u << (r & 7));
        }
        for (uint64_t r = 0; rt->ov[li].n && r < rows; r++)
            if (rt->ov[li].slot_of[r])
                hit[li][r >> 3] |= (uint8_t)(1u << (r & 7));
    }
    size_t np;
    const uint32_t *proj = eg_store_projection(rt->store, &np);
    eg_store_params p = {.spec = rt->spec,
                         .config_json = eg_store_config_json(rt->store),
                         .projection = proj,
                         .n_projection = np,
                         .keys = vkeys,
                         .tokenizer_sha256 = in->tokenizer_sha256[0] ? in->tokenizer_sha256 : NULL,
                         .projection_sha256 = in->projection_sha256[0] ? in->projection_sha256 : NULL,
                         .dtype = in->dtype,
                         .seed = in->seed,
                         .init_std = in->init_std,
                         .hit = (const uint8_t *const *)hit,
                         .rows = ckpt_rows,
                         .rows_ctx = rt,
                         .build_json = eg_store_build_json(rt->store),
                         .n_threads = rt->nt,
                         .n_opt = k,
                         .opt_keys = keys,
                         .opt_steps = steps,
                         .opt_vals = vals};
    if ((st = eg_store_build(dst, &p, NULL, err)))
        goto done;
    /* switch to the new generation */
    eg_store *ns = NULL;
    if ((st = eg_store_open(dst, 0, &ns, err)))
        goto done;
    eg_tier *nt = NULL;
    if (rt->rows_mode == EG_RT_ROWS_TIER && (st = eg_tier_open(ns, &rt->topt, &nt, err))) {
        eg_store_close(ns);
        goto done;
    }
    eg_tier_close(rt->tier);
    rt->tier = nt;
    eg_store_close(rt->store);
    rt->store = ns;
    rt->spec = eg_store_spec(ns);
    if (path) {
        char *np2 = strdup(path);
        if (np2) {
            free(rt->path);
            rt->path = np2;
        }
    }
done:
    for (uint32_t li = 0; hit && li < rt->L; li++)
        free(hit[li]);
    free(hit);
    free(keys);
    free(steps);
    free(vals);
    free(vkeys);
    return st;
}
