/* count_core.h - exact n-gram counting within a memory budget (see eg_count.h),
 * compiled twice: count64.c with KW 1 (keys of one 64-bit word: order << 60
 * | ids, when N x bits <= 60; 16-byte table entries) and count.c with KW 2
 * (two words: order << 124 | ids; 24-byte entries), which also holds the
 * public entry points and the approximate counters. Same output either way. */
#ifndef KW
#error "define KW (1 or 2) before including count_core.h"
#endif
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>
#if defined(__x86_64__) || defined(__SSE2__)
#include <emmintrin.h>
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#include "../base/eg_internal.h"
#include "engram/eg_count.h"
#include "engram/eg_shard.h"

__extension__ typedef unsigned __int128 u128;

/* A counted n-gram: key = order << ORDER_SHIFT | ids packed oldest first.
 * A zero top word marks an empty slot (the order, >= 2, lives in its top
 * bits). With KW 1 the key is `lo` alone and hi reads as 0. */
#if KW == 1 && defined(CNT32)
typedef struct __attribute__((packed)) {
    uint64_t lo;
    uint32_t count; /* the input has fewer than 2^32 tokens */
} entry;
#elif KW == 1
typedef struct {
    uint64_t lo, count;
} entry;
#endif
#if KW == 1
#define ORDER_SHIFT 60
#define E_HI(e) ((uint64_t)0)
#define E_SET_HI(e, v) ((void)(v))
#define E_USED(e) ((e).lo != 0)
#define KHI(a, i) ((uint64_t)0)
#else
typedef struct {
    uint64_t hi, lo, count;
} entry;
#define ORDER_SHIFT 124
#define E_HI(e) ((e).hi)
#define E_SET_HI(e, v) ((e).hi = (v))
#define E_USED(e) ((e).hi != 0)
#define KHI(a, i) ((a)[i])
#endif

static inline u128 key_of(const entry *e) { return (u128)E_HI(*e) << 64 | e->lo; }

/* A key as one comparable number (for the range partitions' splitters). */
#if KW == 1
typedef uint64_t kkey;
#define KEY_AT(hi, lo, i) ((lo)[i])
#else
typedef u128 kkey;
#define KEY_AT(hi, lo, i) ((u128)(hi)[i] << 64 | (lo)[i])
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline uint64_t mix_key(uint64_t hi, uint64_t lo)
{
    uint64_t h = lo * 0x9E3779B97F4A7C15ull ^ (hi + 0x632BE59BD9B4E019ull) * 0xC2B2AE3D27D4EB4Full;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return h;
}


#if KW == 2
uint64_t eg_fof_bucket_min(unsigned b) { return b < 8 ? b + 1 : 1ull << (b - 4); }
#endif

static unsigned fof_bucket(uint64_t c)
{
    if (c <= 8)
        return (unsigned)c - 1;
    unsigned lg = 63u - (unsigned)__builtin_clzll(c); /* c >= 16 -> lg >= 4 */
    unsigned b = lg + 4;
    return b < EG_FOF_BUCKETS ? b : EG_FOF_BUCKETS - 1;
}

/* ---- open-addressing tables (linear probing) ------------------------------------ */

/* A hash's home slot in a table of cap slots (multiply-shift). */
static inline size_t slot_of(uint64_t h, size_t cap)
{
    return (size_t)(((u128)(uint32_t)h * cap) >> 32);
}

/* Add count to key (hi, lo) with hash h; *used counts the slots taken. */
static inline void table_put(entry *slot, size_t cap, size_t *used, uint64_t hi, uint64_t lo,
                             uint64_t h, uint64_t count)
{
    size_t s = slot_of(h, cap);
    for (;;) {
        entry *e = &slot[s];
        if (E_HI(*e) == hi && e->lo == lo) {
            e->count += count;
            return;
        }
        if (!E_USED(*e)) {
            E_SET_HI(*e, hi);
            e->lo = lo;
            e->count = count;
            ++*used;
            return;
        }
        if (++s == cap)
            s = 0;
    }
}

/* The used entries of slot[0, cap), in order, into dst (slot itself
 * compacts in place); their number. */
static size_t used_entries(const entry *slot, size_t cap, entry *dst)
{
    size_t k = 0;
    for (size_t i = 0; i < cap; i++)
        if (E_USED(slot[i]))
            dst[k++] = slot[i];
    return k;
}

/* Rehash n entries into a cleared table of cap slots. */
static void table_refill(entry *slot, size_t cap, const entry *e, size_t n)
{
    size_t used = 0;
    for (size_t i = 0; i < n; i++)
        table_put(slot, cap, &used, E_HI(e[i]), e[i].lo, mix_key(E_HI(e[i]), e[i].lo), e[i].count);
}

/* ---- the counting state ----------------------------------------------------- */

/* A partition's table: `cap` slots at the start of its region (see "Table
 * memory" below), grown in place while the budget allows. */
typedef struct {
    entry *slot;
    size_t cap, used;
    int stuck; /* could not grow: fills to 90%, then the counter spills */
    int huge;  /* its region asks for huge pages (once the table is large) */
} ptable;

#define PT_START 1024

typedef struct counter_ {
    const eg_count_opts *o;
    eg_err *err;
    unsigned bits;   /* per id */
    uint64_t idmask;
    int nt;
    /* key buffers */
    uint64_t *khi, *klo, *shi, *slo; /* keys and their scattered copy */
    uint64_t *sh;                    /* the scattered keys' hashes (exact counting) */
    uint8_t *kp;                     /* each key's partition */
    size_t kn, kcap;
    uint32_t *xb; /* the token block (see flush_block) */
    uint8_t *db;
    size_t xn, B;
    /* partitions: P key ranges (splitters from a sample of the input, see
     * sample_splitters), so that sorted partitions laid end to end are the
     * sorted output */
    size_t P;
    kkey *spl; /* P - 1 splitters: partition p holds keys in [spl[p-1], spl[p]) */
    int have_spl;
    ptable *part;
    size_t budget, inuse; /* table slots: allowed, and mapped now (all tables) */
    entry *arena;        /* partition p's table starts p * region_bytes into it */
    size_t arena_bytes, region, region_bytes; /* region: slots; its bytes: 2 MiB units */
    int huge_pages;      /* tables of 4 MiB and more ask for huge pages */
    entry **scratch;     /* per thread: where a growing table's entries wait */
    size_t *scratch_cap;
    uint64_t *pbytes;     /* P + 1: each partition's bytes in the counts file */
    size_t *hist; /* nt * P */
    size_t *start; /* P + 1 */
    size_t *done;  /* per partition: keys already inserted from this batch */
    /* runs */
    char **runs;
    size_t n_runs, runs_cap;
    uint64_t *run_off; /* per run, P + 1 offsets: partition p is the zstd frame [off[p], off[p+1]) */
    uint64_t spills;
    char tmp_prefix[1024];
    /* partition first (see count_partitioned): the key stream in chunks of
     * CHUNK keys; per thread and partition, a list of chunks */
    kkey *ks;
    size_t ks_bytes, ks_chunks, ks_next; /* reserved; chunks; the next free (atomic) */
    uint32_t *ks_link;                   /* per chunk: the next of its list */
    uint32_t *ks_head, *ks_tail, *ks_fill; /* nt * P */
    unsigned char *ks_line;                /* nt * P lines of 64 bytes (see put_line) */
    kkey *ks_base;    /* per partition: its lowest key; keys are stored less it */
    uint8_t *ks_kb;   /* per partition: bytes per stored key (narrow: half a kkey) */
    uint32_t *ks_est; /* per partition: the sample's keys in it (of ks_est_n) */
    size_t ks_est_n;
    /* a pass scatters the keys of ranges [g_p0, g_p1), keys [g_lo, g_lo +
     * g_span), into at most ks_limit chunks (the window); ks_over: it did not fit */
    size_t ks_limit, g_p0, g_p1;
    kkey g_lo, g_span;
    kkey *tree;            /* the pass's splitters as a search tree (see tree_build) */
    size_t tree_off[8];    /* where each level starts; level 0: the splitters */
    unsigned tree_levels;
    int ks_over;
    uint32_t pass, passes; /* for progress */
    /* where full key buffers go: the tables (exact) or the sketches (approx) */
    eg_status (*sink)(struct counter_ *c);
    int sink_tokens; /* the sink makes its own keys from the block's tokens */
    void *sketch;
} counter;

/* This thread's number in the current OpenMP team (0 without OpenMP). */
static inline int thread_num(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* This thread's share [*a, *b) of n items in the current team (of *team
 * threads); its number. */
static inline int thread_slice(size_t n, size_t *a, size_t *b, int *team)
{
#ifdef _OPENMP
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
#else
    const int t = 0, T = 1;
#endif
    *a = n * (size_t)t / (size_t)T;
    *b = n * (size_t)(t + 1) / (size_t)T;
    *team = T;
    return t;
}

/* The partition of a key: how many splitters are <= it (branch-free binary
 * search; P is a power of two). */
static inline size_t part_of(const counter *c, kkey k)
{
    const kkey *s = c->spl;
    size_t p = 0;
    for (size_t step = c->P / 2; step; step >>= 1)
        p += s[p + step - 1] <= k ? step : 0;
    return p;
}

/* Table memory. Every partition owns a region of one reservation of address
 * space (mapped without committing it, huge pages where the kernel gives
 * them), eight times its share of the budget, and its table grows in place:
 * slots past `cap` have never been touched and read as zero. A first touch of
 * memory costs a fault and the kernel's zeroing (on the VMs we measure on,
 * about 1 s per GB), so the tables touch only their final size, and the
 * entries of a growing table wait in a per-thread scratch buffer that is
 * reused. The budget counts the slots of all tables (`inuse`). */

/* Grow table t to twice its slots, or to what its region and the budget
 * allow if that is still an eighth more; 0, or -1 when it cannot. Tables grow
 * concurrently (one thread per partition): `inuse` is updated atomically. */
static int pt_grow(counter *c, ptable *t)
{
    size_t cur = __atomic_load_n(&c->inuse, __ATOMIC_RELAXED), ncap;
    do {
        /* at most a quarter of what is left, so that near the budget every
         * table still grows a little rather than one taking it all */
        const size_t avail = c->budget > cur ? (c->budget - cur) / 4 : 0;
        ncap = t->cap * 2 < c->region ? t->cap * 2 : c->region;
        ncap = ncap - t->cap < avail ? ncap : t->cap + avail;
        if (ncap < t->cap + t->cap / 8)
            return -1;
    } while (!__atomic_compare_exchange_n(&c->inuse, &cur, cur + (ncap - t->cap), 0,
                                          __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    const int th = thread_num();
    if (c->scratch_cap[th] < t->used) {
        entry *b = realloc(c->scratch[th], t->used * sizeof *b);
        if (!b) {
            __atomic_fetch_sub(&c->inuse, ncap - t->cap, __ATOMIC_RELAXED);
            return -1;
        }
        c->scratch[th] = b;
        c->scratch_cap[th] = t->used;
    }
#ifdef MADV_HUGEPAGE
    if (c->huge_pages && !t->huge && ncap * sizeof(entry) >= ((size_t)4 << 20)) {
        madvise(t->slot, c->region_bytes, MADV_HUGEPAGE);
        t->huge = 1;
    }
#endif
#ifdef MADV_POPULATE_WRITE
    {
        /* fault the new slots in for writing now: a first read would map the
         * shared zero page, and the write after it copy and shoot down TLBs */
        const uintptr_t pg = 4096, from = ((uintptr_t)(t->slot + t->cap) + pg - 1) & ~(pg - 1),
                        to = ((uintptr_t)(t->slot + ncap)) & ~(pg - 1);
        if (to > from)
            (void)madvise((void *)from, to - from, MADV_POPULATE_WRITE); /* a hint: may fail */
    }
#endif
    entry *keep = c->scratch[th];
    const size_t k = used_entries(t->slot, t->cap, keep);
    memset(t->slot, 0, t->cap * sizeof *t->slot);
    t->cap = ncap;
    table_refill(t->slot, ncap, keep, k);
    return 0;
}

static int cmp_kkey(const void *a, const void *b)
{
    const kkey x = *(const kkey *)a, y = *(const kkey *)b;
    return x < y ? -1 : x > y;
}

/* Splitters from m sampled keys (sorted here): P - 1 of their distinct
 * values at even quantiles, so that partitions hold about as many distinct
 * n-grams each. Where the sample misleads, some partitions fill more than
 * others; tables grow from one shared budget, so that costs balance, never
 * correctness or memory. 0 when there are no keys to choose from. */
static int splitters_from(counter *c, kkey *k, size_t m)
{
    qsort(k, m, sizeof *k, cmp_kkey);
    size_t d = 0;
    for (size_t i = 0; i < m; i++)
        d += !i || k[i] != k[i - 1];
    if (!d)
        return 0;
    /* the ((j + 1) d / P)-th distinct key, walking the sorted sample */
    for (size_t i = 0, seen = 0, j = 0; i < m && j + 1 < c->P; i++) {
        if (i && k[i] == k[i - 1])
            continue;
        while (j + 1 < c->P && (size_t)((u128)(j + 1) * d / c->P) == seen)
            c->spl[j++] = k[i];
        seen++;
    }
    c->have_spl = 1;
    if (c->ks_est) { /* each range's share of the sample's keys (repeats too) */
        memset(c->ks_est, 0, c->P * sizeof *c->ks_est);
        for (size_t i = 0, p = 0; i < m; i++) {
            while (p + 1 < c->P && c->spl[p] <= k[i])
                p++;
            c->ks_est[p]++;
        }
        c->ks_est_n = m;
    }
    return 1;
}

/* The tokens of every input shard; UINT64_MAX when one cannot be opened (the
 * count then reports it). */
static uint64_t input_tokens(const eg_count_opts *o)
{
    uint64_t total = 0;
    for (size_t i = 0; i < o->n_shards; i++) {
        eg_shard *s = NULL;
        eg_err e;
        if (eg_shard_open(o->shards[i], &s, &e))
            return UINT64_MAX;
        total += eg_shard_n_tokens(s);
        eg_shard_close(s);
    }
    return total;
}

/* The splitters from the whole input: the n-grams of 256 windows of 1024
 * tokens spread evenly over it (a corpus's first block may be unlike the
 * rest). Ids the projection rejects are skipped here: the counting pass
 * reports them. Without keys (or on a read error, reported by the pass) the
 * first batch is used instead (choose_splitters). */
static void sample_splitters(counter *c)
{
    const eg_count_opts *o = c->o;
    const uint32_t N = o->max_ngram, H = N - 1;
    enum { W = 256, L = 1024 };
    /* at most a sixteenth of the budget (its slack: tables are small yet) */
    const size_t mem = o->memory ? o->memory : ((size_t)1 << 30);
    const size_t most = mem / 16 / sizeof(kkey) > 4096 ? mem / 16 / sizeof(kkey) : 4096;
    const uint64_t total = input_tokens(o);
    if (total == UINT64_MAX)
        return;
    const size_t cap = (size_t)W * L * H < most ? (size_t)W * L * H : most;
    const size_t wl = cap / W / H > H + 1 ? cap / W / H : H + 1; /* tokens per window */
    kkey *k = malloc(cap * sizeof *k);
    uint32_t *x = malloc(L * sizeof *x);
    size_t m = 0;
    uint64_t base = 0; /* the first token of shard i */
    for (size_t i = 0, w = 0; k && x && i < o->n_shards && w < W; i++) {
        eg_shard *s = NULL;
        eg_err e;
        if (eg_shard_open(o->shards[i], &s, &e))
            break;
        const uint64_t n = eg_shard_n_tokens(s);
        for (uint64_t g; w < W && (g = (uint64_t)((u128)w * total / W)) < base + n; w++) {
            const uint64_t at = g - base;
            const size_t len = (size_t)(n - at < wl ? n - at : wl);
            if (eg_shard_read(s, at, len, x, &e))
                break;
            for (size_t j = 0; j < len; j++) {
                uint32_t id = x[j];
                id = o->proj ? (id < o->n_proj ? o->proj[id] : UINT32_MAX) : id;
                x[j] = id < o->vprime ? id : UINT32_MAX;
            }
            for (size_t j = H; j < len; j++) {
                u128 v = x[j];
                int bad = x[j] == UINT32_MAX;
                for (uint32_t q = 1; q <= H; q++) {
                    bad |= x[j - q] == UINT32_MAX;
                    v |= (u128)x[j - q] << (c->bits * q);
                    if (!bad && m < cap)
                        k[m++] = (kkey)((u128)(q + 1) << ORDER_SHIFT | v);
                }
            }
        }
        base += n;
        eg_shard_close(s);
    }
    if (k && m)
        splitters_from(c, k, m);
    free(k);
    free(x);
}

/* Splitters from a sample of the first batch's keys, when sample_splitters
 * found none. */
static eg_status choose_splitters(counter *c)
{
    const size_t n = c->kn, m = n < ((size_t)1 << 20) ? n : (size_t)1 << 20;
    kkey *k = malloc(m * sizeof *k + 1);
    if (!k)
        return eg_fail(c->err, EG_ENOMEM, "out of memory");
    for (size_t i = 0; i < m; i++) {
        /* a random sample: keys are N-1 per position, so a stride aliases */
        const size_t j = m == n ? i : (size_t)(((u128)mix_key(0, i) * n) >> 64);
        k[i] = KEY_AT(c->khi, c->klo, j);
    }
    splitters_from(c, k, m);
    free(k);
    return EG_OK;
}

/* Insert partition p's keys [from, to) of the scattered batch; stops early
 * (returns the position) when the table is 90% full. */
static size_t insert_part(counter *c, size_t p, size_t from, size_t to)
{
    ptable *t = &c->part[p];
    enum { AHEAD = 20 }; /* prefetch the slots of keys this far ahead: the
                          * inserts are bound by memory latency, not work */
    for (size_t i = from; i < to; i++) {
        if (t->used * 10 >= t->cap * 7 && !t->stuck && pt_grow(c, t))
            t->stuck = 1; /* fills to 90%, then spills */
        if (i + AHEAD < to) {
            const uint64_t ha = c->sh[i + AHEAD];
            __builtin_prefetch(&t->slot[slot_of(ha, t->cap)], 1);
        }
        const size_t limit = t->cap - t->cap / 10;
        const uint64_t hi = KHI(c->shi, i), lo = c->slo[i];
        const uint64_t h = c->sh[i];
        size_t s = slot_of(h, t->cap);
        for (;;) {
            entry *e = &t->slot[s];
            if (E_HI(*e) == hi && e->lo == lo) {
                e->count++;
                break;
            }
            if (!E_USED(*e)) {
                if (t->used >= limit)
                    return i;
                E_SET_HI(*e, hi);
                e->lo = lo;
                e->count = 1;
                t->used++;
                break;
            }
            if (++s == t->cap)
                s = 0;
        }
    }
    return to;
}

static inline int entry_lt(const entry *a, const entry *b)
{
    return key_of(a) < key_of(b);
}

/* Introsort-free quicksort with an inlined comparison (median of three,
 * insertion sort for short ranges); recursion on the smaller side. */
static void sort_entries(entry *a, size_t n)
{
    while (n > 24) {
        entry *m = a + n / 2, *z = a + n - 1;
        if (entry_lt(m, a)) {
            entry t = *m; *m = *a; *a = t;
        }
        if (entry_lt(z, m)) {
            entry t = *z; *z = *m; *m = t;
            if (entry_lt(m, a)) {
                t = *m; *m = *a; *a = t;
            }
        }
        const entry piv = *m;
        size_t i = 0, j = n - 1;
        for (;;) {
            while (entry_lt(&a[i], &piv))
                i++;
            while (entry_lt(&piv, &a[j]))
                j--;
            if (i >= j)
                break;
            entry t = a[i];
            a[i] = a[j];
            a[j] = t;
            i++;
            j--;
        }
        /* [0, j] <= piv <= [j+1, n) */
        size_t left = j + 1;
        if (left < n - left) {
            sort_entries(a, left);
            a += left;
            n -= left;
        } else {
            sort_entries(a + left, n - left);
            n = left;
        }
    }
    for (size_t i = 1; i < n; i++) {
        entry v = a[i];
        size_t k = i;
        while (k && entry_lt(&v, &a[k - 1])) {
            a[k] = a[k - 1];
            k--;
        }
        a[k] = v;
    }
}

#if KW == 1
/* LSD radix sort of one-word keys, 11 bits a pass, skipping the digits in
 * which every key agrees; tmp holds n entries. */
static void radix_sort_entries(entry *a, entry *tmp, size_t n)
{
    enum { RB = 11, R = 1 << RB, D = (64 + RB - 1) / RB };
    if (n < 64) {
        sort_entries(a, n);
        return;
    }
    size_t (*cnt)[R] = calloc(D, sizeof *cnt);
    if (!cnt) {
        sort_entries(a, n);
        return;
    }
    uint64_t any = 0, all = ~0ull;
    for (size_t i = 0; i < n; i++) {
        const uint64_t k = a[i].lo;
        any |= k;
        all &= k;
        for (unsigned d = 0; d < D; d++)
            cnt[d][(k >> (RB * d)) & (R - 1)]++;
    }
    entry *src = a, *dst = tmp;
    for (unsigned d = 0; d < D; d++) {
        if ((((any ^ all) >> (RB * d)) & (R - 1)) == 0)
            continue; /* every key has the same digit here */
        size_t off = 0;
        for (unsigned v = 0; v < R; v++) {
            const size_t c = cnt[d][v];
            cnt[d][v] = off;
            off += c;
        }
        for (size_t i = 0; i < n; i++)
            dst[cnt[d][(src[i].lo >> (RB * d)) & (R - 1)]++] = src[i];
        entry *x = src;
        src = dst;
        dst = x;
    }
    if (src != a)
        memcpy(a, src, n * sizeof *a);
    free(cnt);
}
#endif

/* Compact each partition's entries to its front (counting the bytes its
 * records take in the counts file), in parallel. */
static void compact_partitions(counter *c)
{
    const long long P = (long long)c->P;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(c->nt)
#endif
    for (long long p = 0; p < P; p++) {
        ptable *t = &c->part[p];
        t->used = used_entries(t->slot, t->cap, t->slot);
        uint64_t bytes = 0;
        for (size_t i = 0; i < t->used; i++)
            bytes += 4 * (uint64_t)(key_of(&t->slot[i]) >> ORDER_SHIFT) + 8;
        c->pbytes[p] = bytes;
    }
}

/* The radix sort's buffer (KW 1): entries of the fullest partition. */
static entry *sort_buffer(const counter *c)
{
#if KW == 1
    size_t most = 0;
    for (size_t p = 0; p < c->P; p++)
        most = c->part[p].used > most ? c->part[p].used : most;
    return malloc(most * sizeof(entry) + 1);
#else
    (void)c;
    return NULL;
#endif
}

/* Sort a compacted partition (tmp: sort_buffer's, or NULL). */
static void sort_partition(ptable *t, entry *tmp)
{
#if KW == 1
    if (tmp) {
        radix_sort_entries(t->slot, tmp, t->used);
        return;
    }
#else
    (void)tmp;
#endif
    sort_entries(t->slot, t->used);
}

/* Compact and sort every partition: end to end, they are sorted. */
static void sort_partitions(counter *c)
{
    compact_partitions(c);
    const long long P = (long long)c->P;
#ifdef _OPENMP
#pragma omp parallel num_threads(c->nt)
#endif
    {
        entry *tmp = sort_buffer(c);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (long long p = 0; p < P; p++)
            sort_partition(&c->part[p], tmp);
        free(tmp);
    }
}

/* ---- sorted sources and the k-way merge ------------------------------------- */

typedef struct {
    /* in memory (a sorted table) */
    const entry *arr;
    size_t n, i;
    /* or a run file */
    FILE *f;
    ZSTD_DStream *zd;
    unsigned char *in;
    size_t in_len, in_pos;
    entry *buf;
    size_t buf_n, buf_i;
    uint64_t left; /* bytes of the run's frame not read yet */
    int eof;
    entry cur;
} source;

#define RUN_BUF 1024 /* entries decoded at a time, per run */
#define RUN_IN 16384 /* compressed bytes read at a time, per run */

static int source_next(source *s)
{
    if (!s->f) {
        if (s->i >= s->n)
            return 0;
        s->cur = s->arr[s->i++];
        return 1;
    }
    while (s->buf_i >= s->buf_n) {
        if (s->eof)
            return 0;
        ZSTD_outBuffer ob = {s->buf, RUN_BUF * sizeof(entry), 0};
        while (ob.pos < ob.size && !s->eof) {
            if (s->in_pos == s->in_len) {
                const size_t want = RUN_IN;
                s->in_len = fread(s->in, 1, s->left < want ? (size_t)s->left : want, s->f);
                s->left -= s->in_len;
                s->in_pos = 0;
                if (s->in_len == 0) {
                    s->eof = 1;
                    break;
                }
            }
            ZSTD_inBuffer ib = {s->in, s->in_len, s->in_pos};
            size_t r = ZSTD_decompressStream(s->zd, &ob, &ib);
            s->in_pos = ib.pos;
            if (ZSTD_isError(r)) {
                s->eof = 1;
                return -1;
            }
        }
        if (ob.pos % sizeof(entry))
            return -1;
        s->buf_n = ob.pos / sizeof(entry);
        s->buf_i = 0;
    }
    s->cur = s->buf[s->buf_i++];
    return 1;
}

static void source_close(source *s)
{
    if (s->f)
        fclose(s->f);
    if (s->zd)
        ZSTD_freeDStream(s->zd);
    free(s->in);
    free(s->buf);
}

/* A loser tree over the sources: tree[0] is the current winner, tree[1..k)
 * the loser of each match; key[] caches each leaf's current key, UINT64_MAX
 * in both words once the source is done (real keys have an order <= 8 in the
 * top bits). One comparison per level when the winner advances. */
typedef struct {
    source *src;
    size_t k; /* leaves: a power of two >= the number of sources */
    uint32_t *tree;
    uint64_t (*key)[2];
    void *heap; /* the one allocation (tree and keys) */
} merger;

static inline int leaf_less(const merger *m, uint32_t a, uint32_t b)
{
    const uint64_t *x = m->key[a], *y = m->key[b];
    return x[0] != y[0] ? x[0] < y[0] : x[1] != y[1] ? x[1] < y[1] : a < b;
}

static void leaf_set(merger *m, uint32_t i, int live)
{
    m->key[i][0] = live ? E_HI(m->src[i].cur) : UINT64_MAX;
    m->key[i][1] = live ? m->src[i].cur.lo : UINT64_MAX;
}

static uint32_t lt_build(merger *m, size_t node)
{
    if (node >= m->k)
        return (uint32_t)(node - m->k);
    uint32_t a = lt_build(m, 2 * node), b = lt_build(m, 2 * node + 1);
    if (leaf_less(m, b, a)) {
        m->tree[node] = a;
        return b;
    }
    m->tree[node] = b;
    return a;
}

/* Start the merge: every source positioned on its first entry. */
static int merger_init(merger *m, source *src, size_t n)
{
    m->src = src;
    m->k = 1;
    while (m->k < n)
        m->k *= 2;
    m->heap = malloc(m->k * (sizeof *m->tree + sizeof *m->key));
    if (!m->heap)
        return -1;
    m->key = m->heap;
    m->tree = (uint32_t *)(m->key + m->k);
    for (size_t i = 0; i < m->k; i++) {
        int r = i < n ? source_next(&src[i]) : 0;
        if (r < 0)
            return -1;
        leaf_set(m, (uint32_t)i, r);
    }
    m->tree[0] = lt_build(m, 1);
    return 0;
}

/* The next n-gram with its summed count; 0 at the end, -1 on a bad run. */
static int merger_next(merger *m, entry *out)
{
    uint32_t w = m->tree[0];
    if (m->key[w][0] == UINT64_MAX && m->key[w][1] == UINT64_MAX)
        return 0;
    *out = m->src[w].cur;
    out->count = 0;
    while (m->key[w][0] == E_HI(*out) && m->key[w][1] == out->lo) {
        source *s = &m->src[w];
        out->count += s->cur.count;
        int r = source_next(s);
        if (r < 0)
            return -1;
        leaf_set(m, w, r);
        for (size_t t = (w + m->k) / 2; t; t /= 2)
            if (leaf_less(m, m->tree[t], w)) {
                uint32_t l = m->tree[t];
                m->tree[t] = w;
                w = l;
            }
        m->tree[0] = w;
    }
    return 1;
}

/* ---- spilling ------------------------------------------------------------------ */

static eg_status spill(counter *c)
{
    sort_partitions(c);
    char path[1100];
    snprintf(path, sizeof path, "%s.run%zu.zst", c->tmp_prefix, c->n_runs);
    FILE *f = fopen(path, "wb");
    if (!f)
        return eg_fail(c->err, EG_EIO, "%s: cannot create a spill run: %s", path,
                       strerror(errno));
    if (c->n_runs == c->runs_cap) {
        c->runs_cap = c->runs_cap ? 2 * c->runs_cap : 8;
        char **r = realloc(c->runs, c->runs_cap * sizeof *r);
        if (!r) {
            fclose(f);
            unlink(path);
            return eg_fail(c->err, EG_ENOMEM, "out of memory");
        }
        c->runs = r;
    }
    c->runs[c->n_runs++] = strdup(path);
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    size_t outcap = ZSTD_CStreamOutSize();
    unsigned char *out = malloc(outcap);
    eg_status st = EG_OK;
    if (!cc || !out || !c->runs[c->n_runs - 1]) {
        st = eg_fail(c->err, EG_ENOMEM, "out of memory");
        goto done;
    }
    ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, 1);
    /* a 128 KiB window: the final merge holds a decompressor per run and thread */
    ZSTD_CCtx_setParameter(cc, ZSTD_c_windowLog, 17);
    /* the partitions in order are one sorted run, each its own zstd frame
     * (so that the final merge can take the partitions apart) */
    uint64_t *off = realloc(c->run_off, c->n_runs * (c->P + 1) * sizeof *off);
    if (!off) {
        st = eg_fail(c->err, EG_ENOMEM, "out of memory");
        goto done;
    }
    c->run_off = off;
    off += (c->n_runs - 1) * (c->P + 1);
    uint64_t at = 0;
    for (size_t p = 0; p < c->P; p++) {
        off[p] = at;
        ZSTD_inBuffer ib = {c->part[p].slot, c->part[p].used * sizeof(entry), 0};
        for (size_t left = 1; left;) {
            ZSTD_outBuffer ob = {out, outcap, 0};
            left = ZSTD_compressStream2(cc, &ob, &ib, ZSTD_e_end);
            if (ZSTD_isError(left) || fwrite(out, 1, ob.pos, f) != ob.pos) {
                st = eg_fail(c->err, EG_EIO, "%s: writing a spill run failed", path);
                goto done;
            }
            at += ob.pos;
        }
    }
    off[c->P] = at;
    for (size_t p = 0; p < c->P; p++) {
        memset(c->part[p].slot, 0, c->part[p].cap * sizeof(entry));
        c->part[p].used = 0; /* keeps its grown size: it will fill again */
        c->part[p].stuck = 0;
    }
    c->spills++;
done:
    if (fclose(f) && !st)
        st = eg_fail(c->err, EG_EIO, "%s: writing a spill run failed", path);
    ZSTD_freeCCtx(cc);
    free(out);
    return st;
}

/* ---- counting a batch of keys --------------------------------------------------- */

static eg_status flush_keys(counter *c)
{
    const size_t n = c->kn, P = c->P;
    const int nt = c->nt;
    if (!n)
        return EG_OK;
    if (!c->have_spl) {
        eg_status st = choose_splitters(c);
        if (st)
            return st;
    }
    memset(c->hist, 0, (size_t)nt * P * sizeof *c->hist);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        size_t a, b;
        int T;
        const int t = thread_slice(n, &a, &b, &T);
        size_t *h = c->hist + (size_t)t * P;
        for (size_t i = a; i < b; i++) {
            const size_t p = part_of(c, KEY_AT(c->khi, c->klo, i));
            c->kp[i] = (uint8_t)p;
            h[p]++;
        }
#ifdef _OPENMP
#pragma omp barrier
#pragma omp single
#endif
        {
            size_t off = 0;
            for (size_t p = 0; p < P; p++) {
                c->start[p] = off;
                for (int tt = 0; tt < T; tt++) {
                    size_t v = c->hist[(size_t)tt * P + p];
                    c->hist[(size_t)tt * P + p] = off;
                    off += v;
                }
            }
            c->start[P] = off;
        }
        for (size_t i = a; i < b; i++) {
            size_t dst = h[c->kp[i]]++;
            c->sh[dst] = mix_key(KHI(c->khi, i), c->klo[i]);
#if KW == 2
            c->shi[dst] = c->khi[i];
#endif
            c->slo[dst] = c->klo[i];
        }
    }
    for (size_t p = 0; p < P; p++)
        c->done[p] = c->start[p];
    for (;;) {
        int full = 0;
        const long long PP = (long long)P;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 4) num_threads(nt) reduction(| : full)
#endif
        for (long long p = 0; p < PP; p++) {
            c->done[p] = insert_part(c, (size_t)p, c->done[p], c->start[p + 1]);
            full |= c->done[p] < c->start[p + 1];
        }
        if (!full)
            break;
        eg_status st = spill(c);
        if (st)
            return st;
    }
    c->kn = 0;
    return EG_OK;
}

/* ---- reading the input ---------------------------------------------------------- */

/* The token block: projected ids with the N-1 previous tokens of the stream
 * in front (xb), and per position how far back its own sequence reaches, at
 * most N-1 (db); several sequences share a block. flush_block generates the
 * keys of every position in parallel, N-1 per position in fixed slots, and
 * hands them to the sink (partition first's sink makes them itself). */

/* The keys of position i (orders 2..H+1; di: how far back its sequence
 * reaches) that fall in [glo, glo + gspan), at out; returns how many. */
static inline __attribute__((always_inline)) size_t
position_keys(const uint32_t *x, uint32_t di, size_t i, uint32_t H, unsigned bits, uint32_t pad,
              kkey glo, kkey gspan, kkey *out)
{
    kkey v = x[i];
    size_t m = 0;
    for (uint32_t k = 1; k <= H; k++) {
        /* order k+1: ids x[i-k..i], oldest first = most significant */
        const uint32_t id = k <= di ? x[(long long)i - (long long)k] : pad;
        v |= (kkey)id << (bits * k);
        const kkey key = (kkey)(k + 1) << ORDER_SHIFT | v;
        out[m] = key;
        m += (kkey)(key - glo) < gspan;
    }
    return m;
}

/* The block's keys into klo (and khi): N-1 per position. */
static void block_keys(counter *c)
{
    const uint32_t N = c->o->max_ngram, H = N - 1;
    const unsigned b = c->bits;
    const uint32_t pad = (uint32_t)c->o->pad;
    const long long n = (long long)c->xn;
    const uint32_t *x = c->xb + H;
    const uint8_t *d = c->db;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(c->nt) if (n > 65536)
#endif
    for (long long i = 0; i < n; i++) {
        kkey key[EG_COUNT_MAX_ORDER];
        const size_t o = (size_t)i * H;
        position_keys(x, d[i], (size_t)i, H, b, pad, 0, ~(kkey)0, key); /* every key */
        for (uint32_t k = 0; k < H; k++) {
#if KW == 2
            c->khi[o + k] = (uint64_t)(key[k] >> 64);
#endif
            c->klo[o + k] = (uint64_t)key[k];
        }
    }
    c->kn = (size_t)n * H;
}

static eg_status flush_block(counter *c)
{
    if (!c->sink_tokens)
        block_keys(c);
    eg_status st = c->sink(c);
    /* the last H tokens of the stream become the next block's history */
    const uint32_t H = c->o->max_ngram - 1;
    memmove(c->xb, c->xb + c->xn, H * sizeof *c->xb);
    c->xn = 0;
    return st;
}

/* Project n ids in place and check them (ids outside the projection, or
 * compressed ids >= V'): the checks as one maximum each, which vectorizes;
 * the first offender named only when there is one. */
EG_VEC static uint32_t max_id(const uint32_t *x, size_t n)
{
    uint32_t most = 0;
    for (size_t i = 0; i < n; i++)
        most = x[i] > most ? x[i] : most;
    return most;
}

static eg_status project_ids(const eg_count_opts *o, uint32_t *x, size_t n, const char *path,
                             uint64_t pos, eg_err *err)
{
    uint32_t most = max_id(x, n);
    if (o->proj) {
        if (most >= o->n_proj)
            for (size_t i = 0; i < n; i++)
                if (x[i] >= o->n_proj)
                    return eg_fail(err, EG_ERANGE,
                                   "%s: token %llu is id %u, outside the projection's %zu ids",
                                   path, (unsigned long long)(pos + i), x[i], o->n_proj);
        for (size_t i = 0; i < n; i++)
            x[i] = o->proj[x[i]];
        most = max_id(x, n);
    }
    if (most >= o->vprime)
        for (size_t i = 0; i < n; i++)
            if (x[i] >= o->vprime)
                return eg_fail(err, EG_ERANGE, "%s: token %llu: compressed id %u >= V' = %llu",
                               path, (unsigned long long)(pos + i), x[i],
                               (unsigned long long)o->vprime);
    return EG_OK;
}

/* Read and project tokens [pos, pos + n) of a shard into x: the threads
 * side by side, each a slice (the copy from the page cache and the checks
 * were a fifth of the scatter's time when one thread did them while the
 * other waited); the first failing slice reports. */
static eg_status read_tokens(counter *c, const eg_shard *s, const char *path, uint64_t pos,
                             size_t n, uint32_t *x)
{
    enum { MIN_SLICE = 1 << 16, MOST = 16 /* readers */ };
    const int nt = n < 2 * (size_t)MIN_SLICE ? 1 : c->nt < MOST ? c->nt : MOST;
    if (nt == 1) {
        eg_status st = eg_shard_read(s, pos, n, x, c->err);
        return st ? st : project_ids(c->o, x, n, path, pos, c->err);
    }
    eg_status sts[MOST] = {0};
    eg_err errs[MOST];
#ifdef _OPENMP
#pragma omp parallel for schedule(static, 1) num_threads(nt)
#endif
    for (int t = 0; t < nt; t++) {
        const size_t i = n * (size_t)t / (size_t)nt, j = n * (size_t)(t + 1) / (size_t)nt;
        sts[t] = eg_shard_read(s, pos + i, j - i, x + i, &errs[t]);
        if (!sts[t])
            sts[t] = project_ids(c->o, x + i, j - i, path, pos + i, &errs[t]);
    }
    for (int t = 0; t < nt; t++)
        if (sts[t]) {
            if (c->err)
                *c->err = errs[t];
            return sts[t];
        }
    return EG_OK;
}

/* Count tokens [a, b) of a shard. Sequences (each padded at its start) begin
 * every `seq` tokens from a on, or, where starts is not NULL, at the ns
 * ascending positions starts[] (starts[0] == a: documents). A block's worth
 * is read at a time, across sequences: reading a sequence of 4096 at a time
 * cost a third of the scatter's time here, most of it per call. */
static eg_status count_segment(counter *c, const eg_shard *s, const char *path, uint64_t a,
                               uint64_t b, uint64_t seq, const uint64_t *starts, size_t ns,
                               uint64_t *done_tokens, uint64_t total)
{
    const eg_count_opts *o = c->o;
    const uint32_t H = o->max_ngram - 1;
    size_t k = 0; /* starts[k]: the start of the sequence at pos */
    for (uint64_t pos = a; pos < b;) {
        size_t n = (size_t)(b - pos < c->B - c->xn ? b - pos : c->B - c->xn);
        uint32_t *x = c->xb + H + c->xn;
        eg_status st = read_tokens(c, s, path, pos, n, x);
        if (st)
            return st;
        /* how far back each position's sequence reaches: H past its first H
         * (a later sequence's first positions overwrite an earlier's) */
        uint8_t *d = c->db + c->xn;
        memset(d, (int)H, n);
        if (starts) {
            while (k + 1 < ns && starts[k + 1] <= pos)
                k++;
            for (size_t q = k; q < ns && starts[q] < pos + n; q++)
                for (uint64_t j = starts[q] < pos ? pos - starts[q] : 0;
                     j < H && starts[q] + j < pos + n; j++)
                    d[starts[q] + j - pos] = (uint8_t)j;
        } else {
            for (uint64_t r = (pos - a) % seq, i = 0; i < n; i += seq - r, r = 0)
                for (uint64_t j = r; j < H && i + (j - r) < n; j++)
                    d[i + (j - r)] = (uint8_t)j;
        }
        c->xn += n;
        pos += n;
        if (c->xn == c->B && (st = flush_block(c)))
            return st;
        *done_tokens += n;
        if (o->progress) /* partition first: every pass reads the input */
            o->progress(c->pass * total + *done_tokens, (c->passes ? c->passes : 1) * total,
                        o->progress_ctx);
    }
    return EG_OK;
}

static void counter_free(counter *c)
{
    for (size_t i = 0; i < c->n_runs; i++) {
        unlink(c->runs[i]);
        free(c->runs[i]);
    }
    free(c->runs);
    free(c->run_off);
    free(c->xb);
    free(c->db);
    free(c->khi);
    free(c->kp);
    free(c->sh);
    free(c->klo);
    free(c->shi);
    free(c->slo);
    if (c->arena)
        munmap(c->arena, c->arena_bytes);
    for (int t = 0; c->scratch && t < c->nt; t++)
        free(c->scratch[t]);
    free(c->scratch);
    free(c->scratch_cap);
    free(c->part);
    free(c->spl);
    free(c->pbytes);
    free(c->hist);
    free(c->start);
    free(c->done);
    if (c->ks)
        eg_big_free(c->ks, c->ks_bytes);
    free(c->ks_link);
    free(c->ks_head);
    free(c->ks_tail);
    free(c->ks_fill);
    free(c->ks_line);
    free(c->ks_base);
    free(c->ks_kb);
    free(c->ks_est);
    free(c->tree);
}

/* ---- the counts file -------------------------------------------------------------- */

static size_t header_bytes(uint32_t N) { return 8 + 4 + 4 + 8 + 8 + 8 + (size_t)(N - 1) * 16; }

static int top_worse(const eg_ngram_top *a, const eg_ngram_top *b)
{
    /* "worse" = lower count, or equal count and larger ids (kept last) */
    if (a->count != b->count)
        return a->count < b->count;
    return memcmp(a->ids, b->ids, sizeof a->ids) > 0;
}

static void top_offer(eg_count_stats *st, uint32_t n, size_t k, const eg_ngram_top *t)
{
    if (!k || !st->top[n])
        return;
    eg_ngram_top *h = st->top[n]; /* a min-heap of the k best, worst at the root */
    size_t m = st->n_top[n];
    if (m < k) {
        size_t i = m;
        h[i] = *t;
        while (i && top_worse(&h[i], &h[(i - 1) / 2])) {
            eg_ngram_top tmp = h[i];
            h[i] = h[(i - 1) / 2];
            h[(i - 1) / 2] = tmp;
            i = (i - 1) / 2;
        }
        st->n_top[n] = m + 1;
        return;
    }
    if (!top_worse(&h[0], t))
        return;
    h[0] = *t;
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, s = i;
        if (l < m && top_worse(&h[l], &h[s]))
            s = l;
        if (l + 1 < m && top_worse(&h[l + 1], &h[s]))
            s = l + 1;
        if (s == i)
            break;
        eg_ngram_top tmp = h[i];
        h[i] = h[s];
        h[s] = tmp;
        i = s;
    }
}

/* Whether a count could enter order n's top k (a cheap test before
 * top_offer: below the worst kept of a full heap it cannot). */
static inline int top_may_take(const eg_count_stats *st, uint32_t n, size_t k, uint64_t count)
{
    return st->top[n] && (st->n_top[n] < k || count >= st->top[n][0].count);
}

static int cmp_top(const void *a, const void *b)
{
    const eg_ngram_top *x = a, *y = b;
    return top_worse(x, y) ? 1 : top_worse(y, x) ? -1 : 0;
}

#if KW == 2
void eg_count_stats_free(eg_count_stats *st)
{
    if (!st)
        return;
    for (int n = 0; n <= EG_COUNT_MAX_ORDER; n++) {
        free(st->top[n]);
        st->top[n] = NULL;
        st->n_top[n] = 0;
    }
}
#endif

#define MAX_RECORD (4 * EG_COUNT_MAX_ORDER + 8) /* bytes of the longest record */
#define OUT_STAGE ((size_t)4 << 20)             /* per writer: see eg_seqout */

/* Encode one merged n-gram as a counts-file record at `out` (returns its
 * size) and account for it in the statistics. */
static size_t emit_record(const counter *c, const entry *e, eg_count_stats *st,
                          unsigned char *out)
{
    const u128 key = key_of(e);
    const uint32_t n = (uint32_t)(key >> ORDER_SHIFT);
    const uint64_t count = e->count;
    uint32_t ids[EG_COUNT_MAX_ORDER];
#if KW == 1
    uint64_t v = e->lo; /* one-word arithmetic: ids fill the low 60 bits */
#else
    u128 v = key;
#endif
    for (uint32_t k = n; k-- > 0;) {
        ids[k] = (uint32_t)(v & c->idmask);
        v >>= c->bits;
    }
    for (uint32_t k = 0; k < n; k++)
        eg_put_le32(out + 4 * k, ids[k]);
    eg_put_le64(out + 4 * n, count);
    st->distinct[n]++;
    st->total[n] += count;
    st->singletons[n] += count == 1;
    st->fof[n][fof_bucket(count)]++;
    if (c->o->top_k && top_may_take(st, n, c->o->top_k, count)) {
        eg_ngram_top t;
        memset(&t, 0, sizeof t);
        memcpy(t.ids, ids, n * sizeof *ids);
        t.count = count;
        top_offer(st, n, c->o->top_k, &t);
    }
    return 4 * (size_t)n + 8;
}

/* Records of m runs of sorted keys (base + rk[j], ending one before key
 * index re[j]; *prev: where the first starts), at out; returns their bytes.
 * Runs of one order (nearly always) take a loop with the order fixed and
 * the statistics kept locally. */
#define RUNS_W 1024 /* runs gathered at a time */
static size_t emit_runs(const counter *c, eg_count_stats *st, unsigned char *out, kkey base,
                        const uint64_t *rk, const uint64_t *re, size_t m, size_t *prev)
{
    if (!m)
        return 0;
    size_t bytes = 0, at = *prev;
    const size_t first = at;
    *prev = (size_t)re[m - 1];
    const uint32_t n = (uint32_t)((base + rk[0]) >> ORDER_SHIFT);
    if ((uint32_t)((base + rk[m - 1]) >> ORDER_SHIFT) != n) {
        for (size_t j = 0; j < m; j++) {
            const kkey key = base + rk[j];
            entry e;
            e.lo = (uint64_t)key;
            E_SET_HI(e, (uint64_t)(key >> 32 >> 32));
            e.count = (uint64_t)(re[j] - at); /* narrows to the entry's count type: it fits */
            at = (size_t)re[j];
            bytes += emit_record(c, &e, st, out + bytes);
        }
        return bytes;
    }
    const unsigned bits = c->bits;
    const uint64_t mask = c->idmask;
    const size_t rec = 4 * (size_t)n + 8, top_k = c->o->top_k;
    uint64_t singles = 0, fof[EG_FOF_BUCKETS] = {0};
    for (size_t j = 0; j < m; j++) {
        const uint64_t count = re[j] - at;
        at = (size_t)re[j];
#if KW == 1
        uint64_t v = (uint64_t)(base + rk[j]);
#else
        u128 v = base + rk[j];
#endif
        unsigned char *p = out + bytes;
        for (uint32_t k = n; k-- > 0;) {
            eg_put_le32(p + 4 * k, (uint32_t)(v & mask));
            v >>= bits;
        }
        eg_put_le64(p + 4 * n, count);
        bytes += rec;
        singles += count == 1;
        fof[fof_bucket(count)]++;
        if (top_k && top_may_take(st, n, top_k, count)) {
            eg_ngram_top t;
            memset(&t, 0, sizeof t);
            for (uint32_t k = 0; k < n; k++)
                t.ids[k] = eg_get_le32(p + 4 * k);
            t.count = count;
            top_offer(st, n, top_k, &t);
        }
    }
    st->distinct[n] += m;
    st->total[n] += re[m - 1] - first;
    st->singletons[n] += singles;
    for (unsigned b = 0; b < EG_FOF_BUCKETS; b++)
        st->fof[n][b] += fof[b];
    return bytes;
}

/* A range's runs gathered for emit_runs, RUNS_W at a time, into records at
 * out (bytes so far in `bytes`). runs_add offers the run of relative key k
 * ending before key index `end`, kept when `keep` (no branch per key). */
typedef struct {
    uint64_t rk[RUNS_W], re[RUNS_W];
    size_t m, prev, bytes;
} runs;

static inline void runs_add(const counter *c, eg_count_stats *st, unsigned char *out, kkey base,
                            runs *r, uint64_t k, uint64_t end, int keep)
{
    r->rk[r->m] = k;
    r->re[r->m] = end;
    r->m += keep != 0;
    if (r->m == RUNS_W) {
        r->bytes += emit_runs(c, st, out + r->bytes, base, r->rk, r->re, r->m, &r->prev);
        r->m = 0;
    }
}

static inline size_t runs_end(const counter *c, eg_count_stats *st, unsigned char *out, kkey base,
                              runs *r)
{
    return r->bytes + emit_runs(c, st, out + r->bytes, base, r->rk, r->re, r->m, &r->prev);
}

static eg_status write_header(counter *c, int fd, const eg_count_stats *st, const char *path)
{
    const uint32_t N = c->o->max_ngram;
    unsigned char hdr[8 + 4 + 4 + 8 + 8 + 8 + 16 * EG_COUNT_MAX_ORDER];
    memset(hdr, 0, sizeof hdr);
    memcpy(hdr, "EGCOUNT1", 8);
    eg_put_le32(hdr + 8, 1);
    eg_put_le32(hdr + 12, N);
    eg_put_le64(hdr + 16, c->o->vprime);
    eg_put_le64(hdr + 24, (uint64_t)c->o->pad);
    eg_put_le64(hdr + 32, st->tokens);
    for (uint32_t n = 2; n <= N; n++) {
        eg_put_le64(hdr + 40 + 16 * (n - 2), st->distinct[n]);
        eg_put_le64(hdr + 48 + 16 * (n - 2), st->total[n]);
    }
    size_t len = header_bytes(N);
    if (pwrite(fd, hdr, len, 0) != (ssize_t)len)
        return eg_fail(c->err, EG_EIO, "%s: write failed: %s", path, strerror(errno));
    return EG_OK;
}

/* A counts file being written: its temporary name, the threads' statistics
 * (with their top-k heaps), the file, and for the writers that write in
 * order, their sequential writer. */
typedef struct {
    char tmp[1100];
    eg_count_stats *ts;
    eg_outfile w;
    eg_seqout q;
} counts_out;

/* The start of writing a counts file (out zeroed by the caller); `ordered`:
 * the records follow the header through out->q (only in `ordered`). Whatever
 * happens, finish_counts ends it. */
static eg_status begin_counts(counter *c, counts_out *out, int ordered)
{
    const eg_count_opts *o = c->o;
    out->w.fd = out->w.dfd = -1;
    snprintf(out->tmp, sizeof out->tmp, "%s.tmp.%ld", o->output, (long)getpid());
    if (!(out->ts = calloc((size_t)c->nt, sizeof *out->ts)))
        return eg_fail(c->err, EG_ENOMEM, "out of memory");
    for (int t = 0; t < c->nt && o->top_k; t++)
        for (uint32_t n = 2; n <= o->max_ngram; n++)
            if (!(out->ts[t].top[n] = calloc(o->top_k, sizeof *out->ts[t].top[n])))
                return eg_fail(c->err, EG_ENOMEM, "out of memory");
    if (eg_outfile_open(&out->w, out->tmp))
        return eg_fail(c->err, EG_EIO, "%s: cannot create: %s", out->tmp, strerror(errno));
    if (ordered) {
        if (eg_seqout_init_async(&out->q, &out->w, OUT_STAGE))
            return eg_fail(c->err, EG_ENOMEM, "out of memory");
        eg_seqout_seek(&out->q, header_bytes(o->max_ngram));
    }
    return EG_OK;
}

/* The end of writing a counts file (the records flushed): the threads'
 * statistics summed, the header, fsync, and the rename into place (or the
 * file removed on error). */
static eg_status finish_counts(counter *c, eg_count_stats *st, counts_out *out, eg_status ret)
{
    const eg_count_opts *o = c->o;
    const uint32_t N = o->max_ngram;
    const int T = c->nt;
    eg_count_stats *ts = out->ts;
    eg_outfile *w = &out->w;
    const char *tmp = out->tmp;
    eg_seqout_free(&out->q);
    if (ret)
        goto done;
    for (int t = 0; t < T; t++)
        for (uint32_t n = 2; n <= N; n++) {
            st->distinct[n] += ts[t].distinct[n];
            st->total[n] += ts[t].total[n];
            st->singletons[n] += ts[t].singletons[n];
            for (unsigned b = 0; b < EG_FOF_BUCKETS; b++)
                st->fof[n][b] += ts[t].fof[n][b];
        }
    for (uint32_t n = 2; n <= N && o->top_k; n++) {
        if (!(st->top[n] = calloc(o->top_k, sizeof *st->top[n]))) {
            ret = eg_fail(c->err, EG_ENOMEM, "out of memory");
            goto done;
        }
        for (int t = 0; t < T; t++)
            for (size_t i = 0; i < ts[t].n_top[n]; i++)
                top_offer(st, n, o->top_k, &ts[t].top[n][i]);
        qsort(st->top[n], st->n_top[n], sizeof *st->top[n], cmp_top);
    }
    if ((ret = write_header(c, w->fd, st, tmp)))
        goto done;
    if (fsync(w->fd))
        ret = eg_fail(c->err, EG_EIO, "%s: write failed: %s", tmp, strerror(errno));
done:;
    const int opened = w->fd >= 0;
    if (opened && eg_outfile_close(w) && !ret)
        ret = eg_fail(c->err, EG_EIO, "%s: close failed", tmp);
    if (!ret && rename(tmp, o->output))
        ret = eg_fail(c->err, EG_EIO, "%s: cannot rename into place: %s", o->output,
                      strerror(errno));
    if (ret && opened)
        unlink(tmp);
    for (int t = 0; ts && t < T; t++)
        eg_count_stats_free(&ts[t]);
    free(ts);
    return ret;
}

/* Without spills the sorted partitions laid end to end are the output, and
 * each partition's place in the file is known once they are compacted: the
 * threads sort and write whole partitions, each at its offset, with pwrite. */
static eg_status write_counts_ranges(counter *c, eg_count_stats *st)
{
    const eg_count_opts *o = c->o;
    const uint32_t N = o->max_ngram;
    const int T = c->nt;
    const size_t P = c->P;
    compact_partitions(c);
    uint64_t at = header_bytes(N);
    for (size_t p = 0; p <= P; p++) { /* pbytes[p] becomes partition p's offset */
        const uint64_t b = p < P ? c->pbytes[p] : 0;
        c->pbytes[p] = at;
        at += b;
    }
    counts_out out = {0};
    eg_status ret = begin_counts(c, &out, 0);
    if (ret)
        goto done;
    /* the whole length first: the writes then land inside the file */
    if (ftruncate(out.w.fd, (off_t)at)) {
        ret = eg_fail(c->err, EG_EIO, "%s: cannot size: %s", out.tmp, strerror(errno));
        goto done;
    }
    int failed = 0;
    const long long PP = (long long)P;
#ifdef _OPENMP
#pragma omp parallel num_threads(T) reduction(| : failed)
#endif
    {
        const int t = thread_num();
        entry *stmp = sort_buffer(c);
        eg_seqout q;
        failed |= eg_seqout_init(&q, &out.w, OUT_STAGE) != 0;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (long long p = 0; p < PP; p++) {
            if (failed)
                continue;
            ptable *pt = &c->part[p];
            sort_partition(pt, stmp);
            eg_seqout_seek(&q, c->pbytes[p]);
            for (size_t i = 0; i < pt->used && !failed; i++) {
                unsigned char *r = eg_seqout_room(&q, MAX_RECORD);
                if (!r)
                    failed = 1;
                else
                    q.n += emit_record(c, &pt->slot[i], &out.ts[t], r);
            }
            failed |= eg_seqout_flush(&q) != 0;
        }
        eg_seqout_free(&q);
        free(stmp);
    }
    if (failed)
        ret = eg_fail(c->err, EG_EIO, "%s: write failed", out.tmp);
done:
    return finish_counts(c, st, &out, ret);
}

/* With spills, partition p of the output merges table p with frame p of
 * every run. The threads merge whole partitions into a buffer of their own
 * (a slice of the key buffer, idle by now: no memory beyond the budget) and
 * write them in order (OpenMP `ordered`); a partition whose records outgrow
 * the buffer finishes its merge in its turn, writing as it goes. */
typedef struct {
    merger m;
    source *src;
    unsigned char *buf;
    size_t wn, cap;
} part_merge;

/* Merge more of the partition into the buffer; 1 when done, 0 when the
 * buffer is full, -1 on a bad run. */
static int merge_some(counter *c, part_merge *pm, eg_count_stats *ts)
{
    entry e;
    int r;
    while (pm->wn + MAX_RECORD <= pm->cap) {
        if ((r = merger_next(&pm->m, &e)) <= 0)
            return r < 0 ? -1 : 1;
        pm->wn += emit_record(c, &e, ts, pm->buf + pm->wn);
    }
    return 0;
}

static eg_status write_counts(counter *c, eg_count_stats *st)
{
    if (c->n_runs == 0)
        return write_counts_ranges(c, st);
    sort_partitions(c);
    counts_out out = {0};
    eg_status ret = begin_counts(c, &out, 1);
    if (ret)
        return finish_counts(c, st, &out, ret);
    const size_t R = c->n_runs, P = c->P;
    const long long PP = (long long)P;
    int failed = 0, bad_run = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(c->nt) reduction(| : failed, bad_run)
#endif
    {
        const int t = thread_num();
        part_merge pm = {0};
        pm.src = calloc(1 + R, sizeof *pm.src);
        pm.cap = c->kcap * sizeof *c->klo / (size_t)c->nt;
        pm.buf = (unsigned char *)c->klo + (size_t)t * pm.cap;
        failed |= !pm.src || pm.cap < MAX_RECORD;
        for (size_t r = 0; !failed && r < R; r++) {
            source *s = &pm.src[1 + r];
            s->f = fopen(c->runs[r], "rb");
            s->zd = ZSTD_createDStream();
            s->in = malloc(RUN_IN);
            s->buf = malloc(RUN_BUF * sizeof(entry));
            failed |= !s->f || !s->zd || !s->in || !s->buf;
        }
#ifdef _OPENMP
#pragma omp for ordered schedule(dynamic, 1)
#endif
        for (long long p = 0; p < PP; p++) {
            int done = 1;
            if (!failed) {
                pm.src[0] = (source){.arr = c->part[p].slot, .n = c->part[p].used};
                for (size_t r = 0; r < R; r++) {
                    source *s = &pm.src[1 + r];
                    const uint64_t *off = c->run_off + r * (P + 1);
                    s->left = off[p + 1] - off[p];
                    s->in_len = s->in_pos = s->buf_n = s->buf_i = 0;
                    s->eof = 0;
                    ZSTD_initDStream(s->zd);
                    failed |= fseeko(s->f, (off_t)off[p], SEEK_SET) != 0;
                }
                pm.wn = 0;
                if (!failed && merger_init(&pm.m, pm.src, 1 + R))
                    bad_run = 1;
                done = failed || bad_run ? 1 : merge_some(c, &pm, &out.ts[t]);
                bad_run |= done < 0;
            }
#ifdef _OPENMP
#pragma omp ordered
#endif
            for (;;) {
                if (failed || bad_run)
                    break;
                if (pm.wn && eg_seqout_write(&out.q, pm.buf, pm.wn)) {
                    failed = 1;
                    break;
                }
                pm.wn = 0;
                if (done)
                    break;
                done = merge_some(c, &pm, &out.ts[t]);
                bad_run |= done < 0;
            }
            free(pm.m.heap);
            pm.m.heap = NULL;
        }
        for (size_t r = 0; pm.src && r < R; r++)
            source_close(&pm.src[1 + r]);
        free(pm.src);
    }
    if (bad_run)
        ret = eg_fail(c->err, EG_EFORMAT, "a spill run is corrupt");
    else if (failed)
        ret = eg_fail(c->err, EG_EIO, "%s: write failed", out.tmp);
    else if (eg_seqout_flush(&out.q))
        ret = eg_fail(c->err, EG_EIO, "%s: write failed: %s", out.tmp, strerror(errno));
    return finish_counts(c, st, &out, ret);
}

/* ---- the driver ---------------------------------------------------------------------- */

static eg_status check_opts(const eg_count_opts *o, eg_err *err)
{
    if (!o || !o->shards || !o->n_shards)
        return eg_fail(err, EG_EINVAL, "count: no input shards");
    if (o->max_ngram < 2 || o->max_ngram > EG_COUNT_MAX_ORDER)
        return eg_fail(err, EG_EINVAL, "count: orders 2..N with N in 2..%d (got %u)",
                       EG_COUNT_MAX_ORDER, o->max_ngram);
    if (o->vprime == 0 || o->vprime > (1ull << 32))
        return eg_fail(err, EG_EINVAL, "count: V' must be in 1..2^32");
    if (o->pad < 0 || (uint64_t)o->pad >= o->vprime)
        return eg_fail(err, EG_ERANGE, "count: the compressed pad id %lld is outside V' = %llu",
                       (long long)o->pad, (unsigned long long)o->vprime);
    if (o->pad_mode == EG_PAD_SEQLEN && !o->seq_len)
        return eg_fail(err, EG_EINVAL, "count: --seq-len needs T >= 1");
    return EG_OK;
}

static unsigned id_bits(uint64_t vprime)
{
    unsigned b = 1;
    while (b < 32 && (1ull << b) < vprime)
        b++;
    return b;
}

/* Run the input through `each_segment` (shared by exact and approximate). */
typedef eg_status (*segment_fn)(void *ctx, const eg_shard *s, const char *path, uint64_t a,
                                uint64_t b, uint64_t seq, const uint64_t *starts, size_t ns,
                                uint64_t *done, uint64_t total);
#define DOC_BATCH 65536 /* documents handed over at a time (when contiguous) */

static eg_status for_each_segment(const eg_count_opts *o, segment_fn fn, void *ctx,
                                  uint64_t *tokens, eg_err *err)
{
    /* totals first, for progress and early format errors */
    uint64_t total = 0, done = 0;
    for (size_t i = 0; i < o->n_shards; i++) {
        eg_shard *s = NULL;
        eg_status st = eg_shard_open(o->shards[i], &s, err);
        if (st)
            return st;
        total += eg_shard_n_tokens(s);
        eg_shard_close(s);
    }
    uint64_t *starts = NULL;
    if (o->pad_mode == EG_PAD_DOCS && !(starts = malloc(DOC_BATCH * sizeof *starts)))
        return eg_fail(err, EG_ENOMEM, "out of memory");
    for (size_t i = 0; i < o->n_shards; i++) {
        eg_shard *s = NULL;
        eg_status st = eg_shard_open(o->shards[i], &s, err);
        if (st) {
            free(starts);
            return st;
        }
        const uint64_t n = eg_shard_n_tokens(s);
        if (o->pad_mode == EG_PAD_DOCS) {
            /* runs of contiguous documents as one segment each */
            uint64_t a = 0, b = 0;
            size_t ns = 0;
            for (uint64_t d = 0; d < eg_shard_n_docs(s) && !st; d++) {
                uint64_t first, len;
                if ((st = eg_shard_doc(s, d, &first, &len)) != EG_OK || !len)
                    continue;
                if (ns && (first != b || ns == DOC_BATCH)) {
                    st = fn(ctx, s, o->shards[i], a, b, 0, starts, ns, &done, total);
                    ns = 0;
                }
                if (!ns)
                    a = first;
                starts[ns++] = first;
                b = first + len;
            }
            if (!st && ns)
                st = fn(ctx, s, o->shards[i], a, b, 0, starts, ns, &done, total);
        } else if (n) { /* the shard as one segment of sequences */
            st = fn(ctx, s, o->shards[i], 0, n, o->seq_len, NULL, 0, &done, total);
        }
        eg_shard_close(s);
        if (st) {
            free(starts);
            return st;
        }
    }
    free(starts);
    *tokens = done;
    return EG_OK;
}

static eg_status exact_segment(void *vctx, const eg_shard *s, const char *path, uint64_t a,
                               uint64_t b, uint64_t seq, const uint64_t *starts, size_t ns,
                               uint64_t *done, uint64_t total)
{
    return count_segment(vctx, s, path, a, b, seq, starts, ns, done, total);
}

/* The token block of a counter: kcap keys are N-1 per position. */
static int alloc_block(counter *c)
{
    const uint32_t H = c->o->max_ngram - 1;
    c->B = c->kcap / H;
    c->xb = calloc(c->B + H, sizeof *c->xb);
    c->db = malloc(c->B);
    return c->xb && c->db ? 0 : -1;
}


/* ---- partition first ------------------------------------------------------------------
 *
 * When the whole key stream fits the budget, a random probe into gigabytes of
 * tables per key (a cache miss, and on VMs a nested TLB miss) is the largest
 * cost of counting. So the keys are first scattered into P key ranges, held
 * in memory in chunks (each thread appends to its own chunk of each range:
 * sequential writes), and then each range is counted on its own in a table
 * sized to it, which stays in the core's cache, sorted there and written.
 * The ranges are the splitters' (sample_splitters), so the ranges in order
 * are the output in order. */

#define CHUNK 1024 /* keys per chunk, at their widest */
#define CHUNK_BYTES (CHUNK * sizeof(kkey))
#define NO_CHUNK UINT32_MAX
/* A narrow key: what a key less its range's lowest takes where the range is
 * narrow enough (one-word keys in 4 bytes, two-word keys in 8). */
#if KW == 1
typedef uint32_t nkey;
#else
typedef uint64_t nkey;
#endif

/* Each range's lowest key and stored key size: ranges less than 2^32 (or
 * 2^64) keys wide store keys less their lowest in half the bytes, which
 * halves the fresh memory those keys take (on Zipfian text most keys fall in
 * the narrow ranges of frequent prefixes). */
static kkey range_end(const counter *c, size_t p)
{
    return p + 1 < c->P ? c->spl[p] : (kkey)(c->o->max_ngram + 1) << ORDER_SHIFT;
}

static void range_bases(counter *c)
{
    const kkey lowest = (kkey)2 << ORDER_SHIFT;
    for (size_t p = 0; p < c->P; p++) {
        const kkey lo = p ? c->spl[p - 1] : lowest, hi = range_end(c, p);
        c->ks_base[p] = lo;
        c->ks_kb[p] = (uint8_t)(hi - lo <= (kkey)(nkey)-1 ? sizeof(nkey) : sizeof(kkey));
    }
}

/* Keys reach their chunk a 64-byte line at a time, from a line per thread
 * and partition that stays in cache (software write combining), with stores
 * that bypass the cache: the chunks' lines are then never read before they
 * are written. */
static inline void put_line(void *dst, const void *src)
{
#if defined(__x86_64__) || defined(__SSE2__)
    for (size_t i = 0; i < 64 / 16; i++)
        _mm_stream_si128((__m128i *)(void *)dst + i, _mm_load_si128((const __m128i *)(const void *)src + i));
#else
    memcpy(dst, src, 64);
#endif
}

/* Chunks are taken in order from one counter; they are faulted in a window
 * ahead of it (32 MiB: the thread that takes a window's first chunk faults
 * in the next window). Measured here: huge pages faulted in one at a time by
 * the streaming stores ran at 0.4 GB/s, the same pages populated at 3-7. */
#define POP_CHUNKS (((size_t)32 << 20) / CHUNK_BYTES)
static void populate_chunks(counter *c, size_t first)
{
    if (first >= c->ks_limit)
        return;
    const size_t m = c->ks_limit - first < POP_CHUNKS ? c->ks_limit - first : POP_CHUNKS;
    eg_big_populate((unsigned char *)c->ks + first * CHUNK_BYTES, m * CHUNK_BYTES);
}

/* Which of the pass's ranges a key falls in: the splitters between them as
 * a static search tree of 16-way nodes (an S-tree): level 0 is the
 * splitters, padded with the largest key to whole nodes; each level above
 * holds the last key of every node below, up to a single node. A lookup is
 * one node per level, counting the keys <= it (two AVX-512 compares, no
 * chain of dependent branches). tree_build: for ranges [p0, p1); -1 when
 * out of memory. */
#define TREE_W 16
static int tree_build(counter *c, size_t p0, size_t p1)
{
    const size_t ns = p1 - p0 - 1; /* splitters between them */
    size_t len[8], total = 0;
    unsigned L = 0;
    /* level 0 ends with the largest key at least once: so does every node
     * above a last node, and a count never points past a level's last node */
    for (size_t n = ns + 1;; n = len[L - 1] / TREE_W) {
        len[L] = (n + TREE_W - 1) / TREE_W * TREE_W;
        c->tree_off[L] = total;
        total += len[L++];
        if (len[L - 1] == TREE_W)
            break;
    }
    kkey *t = realloc(c->tree, total * sizeof *t);
    if (!t)
        return -1;
    c->tree = t;
    c->tree_levels = L;
    const kkey most = ~(kkey)0;
    for (size_t i = 0; i < len[0]; i++)
        t[i] = i < ns ? c->spl[p0 + i] : most;
    for (unsigned l = 1; l < L; l++)
        for (size_t i = 0; i < len[l]; i++) {
            const size_t j = i * TREE_W + TREE_W - 1;
            t[c->tree_off[l] + i] = j < len[l - 1] ? t[c->tree_off[l - 1] + j] : most;
        }
    return 0;
}

/* The pass's range (0 .. np-1) of each of m keys, at out. */
#if KW == 1 && defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/* a node: two 8-lane compares, their masks counted */
__attribute__((target("avx512f,popcnt"))) static void
tree_find_avx512(const kkey *t, const size_t *off, unsigned levels, const kkey *keys, size_t m,
                 uint32_t *out)
{
    /* level by level over all m keys: each step is independent of the
     * others at its level (no chain of dependent loads per key to wait on) */
    for (size_t i = 0; i < m; i++)
        out[i] = 0;
    for (unsigned l = levels; l-- > 0;) {
        const kkey *tl = t + off[l];
        for (size_t i = 0; i < m; i++) {
            const __m512i k = _mm512_set1_epi64((long long)keys[i]);
            const kkey *b = tl + (size_t)out[i] * TREE_W;
            const unsigned lo = _mm512_cmple_epu64_mask(_mm512_loadu_si512((const void *)b), k),
                           hi = _mm512_cmple_epu64_mask(_mm512_loadu_si512((const void *)(b + 8)), k);
            out[i] = out[i] * TREE_W + (uint32_t)__builtin_popcount(lo | hi << 8);
        }
    }
}
#define TREE_AVX512 1
#endif

static void tree_find(const kkey *t, const size_t *off, unsigned levels, const kkey *keys,
                      size_t m, uint32_t *out)
{
#ifdef TREE_AVX512
    if (__builtin_cpu_supports("avx512f")) {
        tree_find_avx512(t, off, levels, keys, m, out);
        return;
    }
#endif
    /* elsewhere: a branch-free binary search over level 0 (the splitters,
     * padded), G keys side by side (each search is a chain of loads) */
    const size_t n0 = levels > 1 ? off[1] : TREE_W;
    enum { G = 8 };
    for (size_t i = 0; i < m; i += G) {
        size_t at[G];
        kkey k[G];
        for (size_t j = 0; j < G; j++) { /* a short last group repeats a key */
            k[j] = keys[i + j < m ? i + j : i];
            at[j] = 0;
        }
        /* the answer, the keys <= k, stays in [at, at + len) */
        for (size_t len = n0 + 1; len > 1;) {
            const size_t half = len / 2;
            for (size_t j = 0; j < G; j++)
                at[j] += t[at[j] + half - 1] <= k[j] ? half : 0;
            len -= half;
        }
        for (size_t j = 0; j < G && i + j < m; j++)
            out[i + j] = (uint32_t)at[j];
    }
}

/* What one thread of the scatter holds: its chunk lists and lines, and the
 * pass's first range. */
typedef struct {
    uint32_t *head, *tail, *fill;
    unsigned char *line;
    size_t p0;
} scatter_thread;

#define SCATTER_BATCH (512 + EG_COUNT_MAX_ORDER)
/* Append m <= SCATTER_BATCH keys (all of the pass's ranges) to their ranges' current chunks,
 * taking a new chunk (from one shared counter) when one is full; -1 when the
 * window's chunks run out. */
static int scatter_some(counter *c, scatter_thread *s, const kkey *keys, size_t m)
{
    unsigned char *const ks = (unsigned char *)c->ks;
    const kkey *const base = c->ks_base;
    const uint8_t *const kb = c->ks_kb;
    uint32_t *const head = s->head, *const tail = s->tail, *const fill = s->fill;
    uint32_t pg[SCATTER_BATCH];
    tree_find(c->tree, c->tree_off, c->tree_levels, keys, m, pg);
    for (size_t g = 0; g < m; g++) {
        const size_t p = s->p0 + pg[g];
        const kkey d = keys[g] - base[p];
        uint32_t f = fill[p]; /* bytes */
        if (f == CHUNK_BYTES) {
            const size_t nc = __atomic_fetch_add(&c->ks_next, 1, __ATOMIC_RELAXED);
            if (nc >= c->ks_limit)
                return -1;
            if (nc % POP_CHUNKS == 0)
                populate_chunks(c, nc + POP_CHUNKS);
            c->ks_link[nc] = NO_CHUNK;
            if (tail[p] == NO_CHUNK)
                head[p] = (uint32_t)nc;
            else
                c->ks_link[tail[p]] = (uint32_t)nc;
            tail[p] = (uint32_t)nc;
            f = 0;
        }
        unsigned char *l = s->line + p * 64;
        if (kb[p] == sizeof(nkey)) {
            const nkey v = (nkey)d;
            memcpy(l + f % 64, &v, sizeof v);
            f += sizeof v;
        } else {
            memcpy(l + f % 64, &d, sizeof d);
            f += sizeof d;
        }
        fill[p] = f;
        if (f % 64 == 0)
            put_line(ks + (size_t)tail[p] * CHUNK_BYTES + f - 64, l);
    }
    return 0;
}

/* The sink of partition first: each thread makes the keys of its share of
 * the block's positions, keeps those of this pass's ranges (c->g_*) and
 * scatters them. When the window's chunks run out, c->ks_over is set and the
 * pass stops (the caller redoes it with fewer ranges). */
static eg_status scatter_block(counter *c)
{
    const size_t n = c->xn, P = c->P;
    if (!n)
        return EG_OK;
    if (!c->have_spl) { /* no sample: splitters from this first block's keys */
        block_keys(c);
        eg_status st = choose_splitters(c);
        c->kn = 0;
        if (st)
            return st;
        range_bases(c);
        c->g_span = range_end(c, P - 1) - c->g_lo;
        if (tree_build(c, 0, P))
            return eg_fail(c->err, EG_ENOMEM, "out of memory");
    }
    const uint32_t H = c->o->max_ngram - 1;
    const unsigned bits = c->bits;
    const uint32_t pad = (uint32_t)c->o->pad;
    const uint32_t *const x = c->xb + H;
    const uint8_t *const d = c->db;
    const kkey glo = c->g_lo, gspan = c->g_span;
    int full = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(c->nt) reduction(| : full)
#endif
    {
        const int t = thread_num();
        scatter_thread s = {c->ks_head + (size_t)t * P, c->ks_tail + (size_t)t * P,
                            c->ks_fill + (size_t)t * P, c->ks_line + (size_t)t * P * 64,
                            c->g_p0};
        enum { BATCH = SCATTER_BATCH - EG_COUNT_MAX_ORDER };
        const size_t S = 16 * (size_t)c->nt;
#ifdef _OPENMP
#define SLICES_FOR _Pragma("omp for schedule(dynamic, 1) nowait")
#else
#define SLICES_FOR
#endif
        kkey kbuf[SCATTER_BATCH];
        size_t m = 0;
        /* the common orders as constants: the loop over k unrolls, branch
         * free. Slices are handed out as threads free up: how many keys a
         * slice keeps varies (the pass's ranges), a static split would leave
         * one thread waiting. */
#define GEN_LOOP(HH)                                                                       \
    SLICES_FOR                                                                             \
    for (long long q = 0; q < (long long)S; q++)                                           \
        for (size_t i = n * (size_t)q / S, b = n * (size_t)(q + 1) / S; i < b && !full; i++) { \
        m += position_keys(x, d[i], i, HH, bits, pad, glo, gspan, kbuf + m);               \
        if (m >= BATCH) {                                                                  \
            full = scatter_some(c, &s, kbuf, m) != 0;                                      \
            m = 0;                                                                         \
        }                                                                                  \
    }
        switch (H) {
        case 1:
            GEN_LOOP(1)
            break;
        case 2:
            GEN_LOOP(2)
            break;
        case 3:
            GEN_LOOP(3)
            break;
        default:
            GEN_LOOP(H)
        }
#undef GEN_LOOP
#undef SLICES_FOR
        if (!full && m)
            full = scatter_some(c, &s, kbuf, m) != 0;
#if defined(__x86_64__) || defined(__SSE2__)
        _mm_sfence(); /* the streamed lines before anyone reads them */
#endif
    }
    if (full) {
        c->ks_over = 1;
        return eg_fail(c->err, EG_ENOMEM, "count: the key stream outgrew its window");
    }
    return EG_OK;
}

/* The keys still in the threads' lines go to their chunks (at the end). */
static void drain_lines(counter *c)
{
    for (size_t i = 0; i < (size_t)c->nt * c->P; i++) {
        const uint32_t f = c->ks_fill[i]; /* bytes */
        if (c->ks_tail[i] != NO_CHUNK && f % 64)
            memcpy((unsigned char *)c->ks + (size_t)c->ks_tail[i] * CHUNK_BYTES + f / 64 * 64,
                   c->ks_line + i * 64, f % 64);
    }
}

/* A thread's table for one partition at a time (memory reused: it stays in
 * cache), and its buffers. */
typedef struct {
    entry *slot;
    size_t cap, used, mem; /* slots in use as the table; allocated */
    entry *tmp;            /* radix sort / rehash: tmp_cap entries */
    size_t tmp_cap;
    unsigned char *ka, *kt; /* a range's stored keys and the radix sort's other half */
    size_t ka_cap, kt_cap;  /* bytes */
    unsigned char *out; /* the partition's records */
    size_t out_cap;
    uint32_t *cnt; /* direct counting: a counter per key of a narrow range */
    size_t cnt_cap;
    size_t hint; /* the last range's distinct n-grams: the next table's size */
    size_t bytes, allowed; /* what these take; the most they may */
} ltable;

/* Make room: buffers grown with realloc within the thread's allowance. */
static int lt_reserve(ltable *t, void **p, size_t *cap, size_t want, size_t unit)
{
    if (*cap >= want)
        return 0;
    const size_t grow = (want - *cap) * unit;
    if (t->bytes + grow > t->allowed)
        return -1;
    void *q = realloc(*p, want * unit);
    if (!q)
        return -1;
    *p = q;
    *cap = want;
    t->bytes += grow;
    return 0;
}

/* Start the table at cap slots (cleared). */
static int lt_start(ltable *t, size_t cap)
{
    if (lt_reserve(t, (void **)&t->slot, &t->mem, cap, sizeof(entry)))
        return -1;
    memset(t->slot, 0, cap * sizeof(entry));
    t->cap = cap;
    t->used = 0;
    return 0;
}

/* Double the table, its entries rehashed through tmp. */
static int lt_grow(ltable *t)
{
    if (lt_reserve(t, (void **)&t->tmp, &t->tmp_cap, t->used, sizeof(entry)))
        return -1;
    const size_t k = used_entries(t->slot, t->cap, t->tmp);
    if (lt_start(t, 2 * t->cap))
        return -1;
    table_refill(t->slot, t->cap, t->tmp, k);
    t->used = k;
    return 0;
}

/* The bytes chunk k of list i (thread x partition) holds: all of them but
 * in the list's last. */
static inline size_t chunk_used(const counter *c, size_t i, uint32_t k)
{
    return k == c->ks_tail[i] ? c->ks_fill[i] : CHUNK_BYTES;
}

/* Every chunk of range p (every thread's, in order): its bytes at `v`, `u` of them. */
#define FOR_RANGE_CHUNKS(c, p, v, u, BODY)                                                 \
    for (int th_ = 0; th_ < (c)->nt; th_++)                                                \
        for (uint32_t ch_ = (c)->ks_head[(size_t)th_ * (c)->P + (p)]; ch_ != NO_CHUNK;     \
             ch_ = (c)->ks_link[ch_]) {                                                    \
            const unsigned char *v = (const unsigned char *)(c)->ks + (size_t)ch_ * CHUNK_BYTES; \
            const size_t u = chunk_used((c), (size_t)th_ * (c)->P + (p), ch_);             \
            BODY                                                                           \
        }

/* The keys partition p holds (every thread's chunks). */
static size_t range_keys(const counter *c, size_t p)
{
    size_t bytes = 0;
    FOR_RANGE_CHUNKS(c, p, v, u, {
        (void)v;
        bytes += u;
    })
    return bytes / c->ks_kb[p];
}

/* Count partition p's keys (every thread's chunks) into t; -1 when its table
 * would outgrow the thread's allowance. */
static int lt_count(counter *c, ltable *t, size_t p, size_t hint, size_t keys)
{
    const size_t kb = c->ks_kb[p];
    const kkey base = c->ks_base[p];
    /* distinct n-grams are at most the keys; the last partition's count is
     * the better guess (the splitters balance distinct n-grams) */
    const size_t want = hint < keys ? hint : keys;
    size_t cap = 1024;
    while (cap < want + want / 2 + want / 10)
        cap *= 2;
    if (lt_start(t, cap))
        return -1;
    enum { AHEAD = 8 };
    kkey kk[CHUNK_BYTES / sizeof(nkey)];
    uint64_t h[CHUNK_BYTES / sizeof(nkey)];
    FOR_RANGE_CHUNKS(c, p, ck, u, {
        const size_t m = u / kb;
        if (kb == sizeof(nkey))
            for (size_t i = 0; i < m; i++) {
                nkey v;
                memcpy(&v, ck + i * sizeof v, sizeof v);
                kk[i] = base + v;
            }
        else
            for (size_t i = 0; i < m; i++) {
                kkey v;
                memcpy(&v, ck + i * sizeof v, sizeof v);
                kk[i] = base + v;
            }
        for (size_t i = 0; i < m; i++)
            h[i] = mix_key((uint64_t)(kk[i] >> 32 >> 32), (uint64_t)kk[i]);
        for (size_t i = 0; i < m; i++) {
            if (t->used * 10 >= t->cap * 7 && lt_grow(t))
                return -1;
            if (i + AHEAD < m)
                __builtin_prefetch(&t->slot[slot_of(h[i + AHEAD], t->cap)], 1);
            table_put(t->slot, t->cap, &t->used, (uint64_t)(kk[i] >> 32 >> 32), (uint64_t)kk[i],
                      h[i], 1);
        }
    })
    /* compact to the front, then sort */
    const size_t w = t->used = used_entries(t->slot, t->cap, t->slot);
#if KW == 1
    if (lt_reserve(t, (void **)&t->tmp, &t->tmp_cap, w, sizeof(entry)))
        return -1;
    radix_sort_entries(t->slot, t->tmp, w);
#else
    sort_entries(t->slot, w);
#endif
    return 0;
}

/* Give back what lt_reserve took for *p. */
static void lt_release(ltable *t, void **p, size_t *cap, size_t unit)
{
    free(*p);
    *p = NULL;
    t->bytes -= *cap * unit;
    *cap = 0;
}

/* Sorting a key range: its stored keys (4 or 8 bytes: a key less the range's
 * lowest) go through an LSD radix sort over the bits the range spans, in as
 * few passes of at most 11 bits as cover them (a pass is skipped where every
 * key has the same digit), and their runs become the records. One function
 * per stored width; hist holds RADIX_HIST counters. Returns the
 * records' bytes at t->out, or SIZE_MAX when they outgrow the allowance. */
#define RADIX_BITS 11
#define RADIX_DIGITS ((64 + RADIX_BITS - 1) / RADIX_BITS)
#define RADIX_HIST (RADIX_DIGITS * ((size_t)1 << RADIX_BITS)) /* counters per thread */
#define SORT_RANGE(NAME, T)                                                                 \
    static size_t sort_range_##NAME(const counter *c, ltable *t, size_t n, unsigned bits,   \
                                    kkey base, size_t *hist, eg_count_stats *ts, size_t *hint) \
    {                                                                                      \
        T *src = (T *)(void *)t->ka, *dst = (T *)(void *)t->kt;                            \
        if (bits && n > 1) {                                                               \
            const unsigned D = (bits + RADIX_BITS - 1) / RADIX_BITS, w = (bits + D - 1) / D; \
            const size_t R = (size_t)1 << w;                                               \
            const T mask = (T)(R - 1);                                                     \
            memset(hist, 0, D * R * sizeof *hist);                                         \
            T any = 0, all = (T)~(T)0;                                                     \
            for (size_t i = 0; i < n; i++) {                                               \
                const T k = src[i];                                                        \
                any |= k;                                                                  \
                all &= k;                                                                  \
                for (unsigned d = 0; d < D; d++)                                           \
                    hist[d * R + ((k >> (w * d)) & mask)]++;                               \
            }                                                                              \
            for (unsigned d = 0; d < D; d++) {                                             \
                if ((((any ^ all) >> (w * d)) & mask) == 0)                                \
                    continue;                                                              \
                size_t *h = hist + d * R, off = 0;                                         \
                for (size_t v = 0; v < R; v++) {                                           \
                    const size_t m = h[v];                                                 \
                    h[v] = off;                                                            \
                    off += m;                                                              \
                }                                                                          \
                for (size_t i = 0; i < n; i++) {                                           \
                    const T k = src[i];                                                    \
                    dst[h[(k >> (w * d)) & mask]++] = k;                                   \
                }                                                                          \
                T *x = src;                                                                \
                src = dst;                                                                 \
                dst = x;                                                                   \
            }                                                                              \
        }                                                                                  \
        const T *a = src;                                                                  \
        size_t distinct = n > 0;                                                           \
        for (size_t i = 1; i < n; i++)                                                     \
            distinct += a[i] != a[i - 1];                                                  \
        if (lt_reserve(t, (void **)&t->out, &t->out_cap, distinct * MAX_RECORD + 1, 1))    \
            return SIZE_MAX;                                                               \
        runs r;                                                                            \
        r.m = r.prev = r.bytes = 0;                                                        \
        for (size_t i = 0; i < n; i++) /* a run ends where the next key differs */         \
            runs_add(c, ts, t->out, base, &r, a[i], i + 1, i + 1 == n || a[i] != a[i + 1]); \
        *hint = distinct > 1024 ? distinct : 1024;                                         \
        return runs_end(c, ts, t->out, base, &r);                                          \
    }
#if KW == 1
SORT_RANGE(u32, uint32_t)
#endif
SORT_RANGE(u64, uint64_t)

/* Direct counting, for ranges at most 2^DIRECT_BITS keys wide with at least
 * one stored key per DIRECT_SPARSE of their width: a counter per key (in L2)
 * taken straight from the chunks, then a scan of the counters; no sort. */
#define DIRECT_BITS 17
#define DIRECT_SPARSE 16
static size_t count_direct(counter *c, ltable *t, size_t p, size_t span, size_t *hint,
                           eg_count_stats *ts)
{
    uint32_t *cnt = t->cnt;
    memset(cnt, 0, span * sizeof *cnt);
    FOR_RANGE_CHUNKS(c, p, v, u, {
        const uint32_t *k = (const uint32_t *)(const void *)v;
        for (size_t i = 0; i < u / sizeof *k; i++)
            cnt[k[i]]++;
    })
    size_t distinct = 0;
    for (size_t v = 0; v < span; v++)
        distinct += cnt[v] != 0;
    if (lt_reserve(t, (void **)&t->out, &t->out_cap, distinct * MAX_RECORD + 1, 1))
        return SIZE_MAX;
    runs r;
    r.m = r.prev = r.bytes = 0;
    uint64_t upto = 0;
    for (size_t v = 0; v < span; v++) { /* the nonzero counters as runs */
        upto += cnt[v];
        runs_add(c, ts, t->out, c->ks_base[p], &r, v, upto, cnt[v] != 0);
    }
    *hint = distinct > 1024 ? distinct : 1024;
    return runs_end(c, ts, t->out, c->ks_base[p], &r);
}

/* Count partition p into records at t->out, in key order: by sorting its
 * keys where they are stored in 4 or 8 bytes and the sort fits the thread's
 * allowance (no table to probe: measured about twice as fast on Zipfian
 * text), else in a table. Returns the records' bytes, or SIZE_MAX when
 * neither fits. */
static size_t count_range(counter *c, ltable *t, size_t p, size_t *hint, size_t *hist,
                          eg_count_stats *ts)
{
    const size_t keys = range_keys(c, p), kb = c->ks_kb[p];
    const kkey base = c->ks_base[p];
    if (!keys) /* an empty range (equal splitters) */
        return 0;
    if (kb == 4) {
        const size_t span = (size_t)(range_end(c, p) - base); /* < 2^32: stored in 4 bytes */
        if (span <= ((size_t)1 << DIRECT_BITS) && keys >= span / DIRECT_SPARSE &&
            keys <= UINT32_MAX && !lt_reserve(t, (void **)&t->cnt, &t->cnt_cap, span, sizeof(uint32_t)))
            return count_direct(c, t, p, span, hint, ts);
    }
    if (kb <= 8) {
        if (!lt_reserve(t, (void **)&t->ka, &t->ka_cap, keys * kb, 1) &&
            !lt_reserve(t, (void **)&t->kt, &t->kt_cap, keys * kb, 1)) {
            /* copied out first: sorting from the chunks themselves (the
             * histogram and the first scatter reading them) measured no faster */
            size_t m = 0; /* bytes */
            FOR_RANGE_CHUNKS(c, p, v, u, {
                memcpy(t->ka + m, v, u);
                m += u;
            })
            const kkey span = range_end(c, p) - base - 1; /* fits the stored width */
            unsigned bits = 0;
            while (bits < 8 * kb && (span >> bits))
                bits++;
#if KW == 1
            if (kb == 4)
                return sort_range_u32(c, t, m / kb, bits, base, hist, ts, hint);
#endif
            return sort_range_u64(c, t, m / kb, bits, base, hist, ts, hint);
        }
        /* the table may fit where the sort does not: it holds distinct keys */
        lt_release(t, (void **)&t->ka, &t->ka_cap, 1);
        lt_release(t, (void **)&t->kt, &t->kt_cap, 1);
    }
    size_t bytes = 0;
    if (lt_count(c, t, p, *hint, keys) ||
        lt_reserve(t, (void **)&t->out, &t->out_cap, t->used * MAX_RECORD + 1, 1))
        return SIZE_MAX;
    *hint = t->used > 1024 ? t->used : 1024;
    for (size_t i = 0; i < t->used; i++)
        bytes += emit_record(c, &t->slot[i], ts, t->out + bytes);
    return bytes;
}

/* Count ranges [p0, p1) and append their records in order: threads count
 * and encode ranges side by side (each with its ltable and radix counters,
 * kept from pass to pass); the records go out in order (OpenMP `ordered`).
 * *big: a range outgrew a thread's share of the budget; *failed: a write. */
static void write_ranges(counter *c, counts_out *out, ltable *lts, size_t *hist, size_t p0,
                         size_t p1, int *failed_, int *big_)
{
    const long long a = (long long)p0, b = (long long)p1;
    int failed = 0, big = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(c->nt) reduction(| : failed, big)
#endif
    {
        const int t = thread_num();
        ltable *lt = &lts[t];
        size_t *h = hist + (size_t)t * RADIX_HIST;
#ifdef _OPENMP
#pragma omp for ordered schedule(dynamic, 1)
#endif
        for (long long p = a; p < b; p++) {
            size_t bytes = 0;
            if (!failed && !big) {
                bytes = count_range(c, lt, (size_t)p, &lt->hint, h, &out->ts[t]);
                if (bytes == SIZE_MAX) {
                    big = 1;
                    bytes = 0;
                }
            }
#ifdef _OPENMP
#pragma omp ordered
#endif
            if (!failed && !big && bytes && eg_seqout_write(&out->q, lt->out, bytes))
                failed = 1;
        }
    }
    *failed_ |= failed;
    *big_ |= big;
}

/* The chunks a range's stored keys take, estimated from the sample (with a
 * part-filled chunk per thread); and all ranges'. */
static double range_chunks(const counter *c, size_t p, uint64_t keys)
{
    const double k = (double)c->ks_est[p] / (double)c->ks_est_n * (double)keys;
    return k * c->ks_kb[p] / CHUNK_BYTES + c->nt;
}

static double plan_chunks(const counter *c, uint64_t keys)
{
    double all = 0;
    for (size_t p = 0; p < c->P; p++)
        all += range_chunks(c, p, keys);
    return all;
}

/* The ranges from p0 on whose stored keys, estimated from the sample, take
 * about `window` chunks (one range at least); all of them without a
 * sample. */
static size_t plan_pass(const counter *c, size_t p0, size_t window, uint64_t keys)
{
    if (!c->have_spl || !c->ks_est_n)
        return c->P;
    double used = 0;
    size_t p = p0;
    for (; p < c->P; p++) {
        const double chunks = range_chunks(c, p, keys);
        if (p > p0 && used + chunks / 2 > (double)window) /* the nearer edge */
            break;
        used += chunks;
    }
    return p;
}

/* What exact and approximate counting share before they start. */
static eg_status counter_begin(counter *c, const eg_count_opts *o, eg_count_stats *st,
                               eg_status (*sink)(counter *), eg_err *err)
{
    if (!st)
        return eg_fail(err, EG_EINVAL, "count: NULL statistics");
    memset(st, 0, sizeof *st);
    memset(c, 0, sizeof *c);
    eg_status ret = check_opts(o, err);
    if (ret)
        return ret;
    c->o = o;
    c->err = err;
    c->sink = sink;
    c->bits = id_bits(o->vprime);
    c->idmask = (1ull << c->bits) - 1;
    if (o->max_ngram * c->bits > 124)
        return eg_fail(err, EG_EUNSUPPORTED,
                       "count: %u-grams of %u-bit ids do not fit a 124-bit key", o->max_ngram,
                       c->bits);
    return EG_OK;
}

/* What both exact methods do first: the shared checks, the output path and
 * the threads. */
static eg_status exact_begin(counter *c, const eg_count_opts *o, eg_count_stats *st,
                             eg_status (*sink)(counter *), eg_err *err)
{
    eg_status ret = counter_begin(c, o, st, sink, err);
    if (ret)
        return ret;
    if (!o->output)
        return eg_fail(err, EG_EINVAL, "count: no output path");
#ifdef _OPENMP
    c->nt = o->n_threads > 0 ? o->n_threads : omp_get_max_threads();
#else
    c->nt = 1;
#endif
    return EG_OK;
}

/* Partition first (see above), where the key stream fits 60% of the budget;
 * *declined (nothing done, st cleared) where it does not, or where a key
 * range outgrew a thread's share of the rest: then the tables count. */
static eg_status count_partitioned(const eg_count_opts *o, eg_count_stats *st, eg_err *err,
                                   int *declined)
{
    counter c;
    *declined = 0;
    eg_status ret = exact_begin(&c, o, st, scatter_block, err);
    c.sink_tokens = 1;
    if (ret)
        return ret;
    const size_t mem = o->memory ? o->memory : ((size_t)1 << 30);
    const uint64_t tokens = input_tokens(o), H = o->max_ngram - 1;
    *declined = 1; /* until the stream is known to fit */
    if (tokens == UINT64_MAX || mem < ((size_t)1 << 20) || tokens > (uint64_t)SIZE_MAX / 64)
        return EG_OK; /* the tables report what is wrong */
    const size_t keys = (size_t)(tokens * H);
    c.kcap = mem / 32 / sizeof(kkey);
    c.kcap = c.kcap < ((size_t)8 << 20) ? c.kcap : (size_t)8 << 20;
    if (c.kcap < 4 * (size_t)o->max_ngram)
        return EG_OK;
    /* about 64 Ki keys each, so that a range's table stays in cache, but at
     * most 2048 ranges: beyond that the scatter's lines and lookups spill
     * out of cache themselves (measured: 2048 beat 1024, 4096 and 16384) */
    c.P = 256;
    while (c.P < 2048 && keys / c.P > 65536)
        c.P *= 2;
    const size_t chunks = (keys + CHUNK - 1) / CHUNK + (size_t)c.nt * c.P;
    if (chunks >= NO_CHUNK)
        return EG_OK;
    const size_t fixed = chunks * (CHUNK_BYTES + sizeof(uint32_t)) +
                         c.kcap * (sizeof(kkey) + 5) + (size_t)c.nt * c.P * (12 + 64) +
                         c.P * (sizeof(kkey) + 1);
    if (fixed > mem / 10 * 6)
        return EG_OK;
    c.ks_chunks = chunks;
    c.ks_bytes = chunks * CHUNK_BYTES;
    c.ks = eg_big_alloc(c.ks_bytes);
    c.ks_link = malloc(chunks * sizeof *c.ks_link);
    c.ks_head = malloc((size_t)c.nt * c.P * sizeof *c.ks_head);
    c.ks_tail = malloc((size_t)c.nt * c.P * sizeof *c.ks_tail);
    c.ks_fill = malloc((size_t)c.nt * c.P * sizeof *c.ks_fill);
    c.ks_line = aligned_alloc(64, (size_t)c.nt * c.P * 64);
    c.ks_base = malloc(c.P * sizeof *c.ks_base);
    c.ks_kb = calloc(c.P, 1);
    c.klo = malloc(c.kcap * sizeof *c.klo);
#if KW == 2
    c.khi = malloc(c.kcap * sizeof *c.khi);
#endif
    c.spl = calloc(c.P, sizeof *c.spl);
    c.ks_est = calloc(c.P, sizeof *c.ks_est);
    ltable *lts = calloc((size_t)c.nt, sizeof *lts);
    size_t *hist = malloc((size_t)c.nt * RADIX_HIST * sizeof *hist);
    if (!c.ks || !c.ks_link || !c.ks_head || !c.ks_tail || !c.ks_fill || !c.ks_line ||
        !c.ks_base || !c.ks_kb || !c.klo || (KW == 2 && !c.khi) || !c.spl || !c.ks_est || !lts ||
        !hist || alloc_block(&c)) {
        free(lts);
        free(hist);
        counter_free(&c);
        return EG_OK;
    }
    *declined = 0;
    for (int t = 0; t < c.nt; t++) {
        lts[t].allowed = (mem - fixed) / (size_t)c.nt;
        lts[t].hint = keys / c.P; /* the first range: its share of the keys */
    }
    st->buffer_bytes = c.ks_bytes + c.kcap * sizeof(kkey);
    const double t0 = now_s();
    sample_splitters(&c);
    if (c.have_spl)
        range_bases(&c);
    /* passes are planned to about 1/passes of the stream (estimated from the
     * sample) each; the window they may fill is 8/7 of that (the estimate's
     * slack); a pass whose ranges outgrow it is redone with fewer */
    size_t window = chunks, target = chunks / 8 * 7;
    c.passes = 1;
    if (c.have_spl && c.ks_est_n) {
        const double stream = plan_chunks(&c, keys);
        const uint32_t want = o->passes ? o->passes
                                        : stream * CHUNK_BYTES > (double)(128u << 20) ? 3 : 1;
        if (want > 1 && (size_t)(stream / want * 8 / 7) + 1 < chunks) {
            window = (size_t)(stream / want * 8 / 7) + 1;
            target = window / 8 * 7;
        }
        size_t n = 0;
        for (size_t p0 = 0; p0 < c.P; n++)
            p0 = plan_pass(&c, p0, target, keys);
        c.passes = (uint32_t)n;
    }
    counts_out out = {0};
    ret = begin_counts(&c, &out, 1);
    double t_scatter = 0;
    int failed = 0, big = 0;
    for (size_t p0 = 0; !ret && p0 < c.P; c.pass++) {
        size_t p1 = plan_pass(&c, p0, target, keys);
        c.ks_limit = window;
        const double ta = now_s();
        for (;;) { /* the pass; again with fewer ranges when they outgrow the window */
            const kkey lowest = (kkey)2 << ORDER_SHIFT;
            c.g_p0 = p0;
            c.g_p1 = p1;
            c.g_lo = p0 ? c.spl[p0 - 1] : lowest;
            c.g_span = range_end(&c, p1 - 1) - c.g_lo;
            if (tree_build(&c, p0, p1)) {
                ret = eg_fail(c.err, EG_ENOMEM, "out of memory");
                break;
            }
            c.ks_next = 0;
            for (size_t i = 0; i < (size_t)c.nt * c.P; i++) {
                c.ks_head[i] = c.ks_tail[i] = NO_CHUNK;
                c.ks_fill[i] = CHUNK_BYTES;
            }
            populate_chunks(&c, 0);
            ret = for_each_segment(o, exact_segment, &c, &st->tokens, err);
            if (!ret)
                ret = flush_block(&c);
            if (!ret || !c.ks_over || c.ks_limit == chunks)
                break;
            c.ks_over = 0; /* fewer ranges; one range gets the whole reservation */
            c.xn = 0;
            if (p1 - p0 > 1)
                p1 = p0 + (p1 - p0) / 2;
            else
                c.ks_limit = chunks;
            c.passes++;
            c.pass++;
            st->passes_redone++;
        }
        if (!ret)
            drain_lines(&c);
        t_scatter += now_s() - ta;
        if (!ret) {
            write_ranges(&c, &out, lts, hist, p0, p1, &failed, &big);
            if (big)
                ret = eg_fail(c.err, EG_ENOMEM, "count: a key range outgrew its share of the budget");
            else if (failed)
                ret = eg_fail(c.err, EG_EIO, "%s: write failed: %s", out.tmp, strerror(errno));
        }
        p0 = p1;
    }
    if (!ret && eg_seqout_flush(&out.q))
        ret = eg_fail(c.err, EG_EIO, "%s: write failed: %s", out.tmp, strerror(errno));
    ret = finish_counts(&c, st, &out, ret);
    st->seconds_count = t_scatter;
    st->seconds_merge = now_s() - t0 - t_scatter;
    st->key_words = KW;
    st->entry_bytes = (uint32_t)sizeof(entry);
    st->method = EG_COUNT_PARTITION;
    st->partitions = (uint32_t)c.P;
    st->passes = c.passes;
    if (ret)
        eg_count_stats_free(st);
    for (int t = 0; t < c.nt; t++) {
        free(lts[t].slot);
        free(lts[t].tmp);
        free(lts[t].ka);
        free(lts[t].kt);
        free(lts[t].out);
        free(lts[t].cnt);
    }
    free(lts);
    free(hist);
    counter_free(&c);
    if (big) {
        *declined = 1;
        return EG_OK;
    }
    return ret;
}

eg_status eg_count_run_k64(const eg_count_opts *o, eg_count_stats *st, eg_err *err);
eg_status eg_count_run_k32(const eg_count_opts *o, eg_count_stats *st, eg_err *err);
#if KW == 1 && defined(CNT32)
eg_status eg_count_run_k32(const eg_count_opts *o, eg_count_stats *st, eg_err *err)
#elif KW == 1
eg_status eg_count_run_k64(const eg_count_opts *o, eg_count_stats *st, eg_err *err)
#else
eg_status eg_count_run(const eg_count_opts *o, eg_count_stats *st, eg_err *err)
#endif
{
#if KW == 2
    /* one-word keys when every n-gram fits 60 bits (and the caller allows it) */
    if (o && o->max_ngram >= 2 && o->max_ngram <= EG_COUNT_MAX_ORDER && o->vprime &&
        o->vprime <= (1ull << 32) && o->max_ngram * id_bits(o->vprime) <= 60 && !o->wide_keys)
        return !o->wide_counts && input_tokens(o) < UINT32_MAX ? eg_count_run_k32(o, st, err)
                                                               : eg_count_run_k64(o, st, err);
#endif
    if (o && o->method != EG_COUNT_TABLES) {
        int declined;
        eg_status r = count_partitioned(o, st, err, &declined);
        if (!declined)
            return r;
    }
    counter c;
    eg_status ret = exact_begin(&c, o, st, flush_keys, err);
    if (ret)
        return ret;
    /* the budget: a quarter for two key buffers, the rest for the tables */
    const size_t mem = o->memory ? o->memory : ((size_t)1 << 30);
    if (mem < ((size_t)1 << 20))
        return eg_fail(err, EG_ENOMEM,
                       "count: a budget of %zu bytes is too small to make progress (at least "
                       "1 MiB)",
                       mem);
    enum { KEY_BYTES = 16 * KW + 16 }; /* per key: the key and its hash, and their scattered copy */
    c.kcap = mem / 4 / KEY_BYTES;
    if (c.kcap > ((size_t)8 << 20))
        c.kcap = (size_t)8 << 20;
    if (c.kcap < 4 * (size_t)o->max_ngram)
        return eg_fail(err, EG_ENOMEM, "count: a budget of %zu bytes cannot hold a block", mem);
    const size_t table_bytes = mem - c.kcap * KEY_BYTES - mem / 16;
    c.P = 256;
    while (c.P > (size_t)(2 * c.nt) && table_bytes / sizeof(entry) / c.P < 4096)
        c.P /= 2;
    size_t per = table_bytes / sizeof(entry) / c.P;
    if (per < 64)
        return eg_fail(err, EG_ENOMEM,
                       "count: a budget of %zu bytes is too small to make progress (at least "
                       "1 MiB)",
                       mem);
    c.klo = malloc(c.kcap * 8);
    c.slo = malloc(c.kcap * 8);
    c.kp = malloc(c.kcap);
    c.sh = malloc(c.kcap * 8);
#if KW == 2
    c.khi = malloc(c.kcap * 8);
    c.shi = malloc(c.kcap * 8);
#endif
    c.budget = per * c.P;
    c.part = calloc(c.P, sizeof *c.part);
    c.spl = calloc(c.P, sizeof *c.spl);
    c.pbytes = calloc(c.P + 1, sizeof *c.pbytes);
    c.hist = malloc((size_t)c.nt * c.P * sizeof *c.hist);
    c.start = malloc((c.P + 1) * sizeof *c.start);
    c.done = malloc(c.P * sizeof *c.done);
    int ok = (KW == 1 || (c.khi && c.shi)) && c.klo && c.slo && c.kp && c.sh && c.part &&
             c.spl && c.pbytes && c.hist && c.start && c.done && !alloc_block(&c);
    /* each partition's region: 8 shares of the budget (partitions are key
     * ranges chosen from a sample, so some fill more than others), in 2 MiB
     * units; one share each where the address space is refused */
    const size_t hb = (size_t)2 << 20, huge = hb / sizeof(entry);
    for (size_t shares = c.P > 8 ? 8 : 1; ok && !c.arena; shares = 1) {
        /* whole 2 MiB units, so that every table starts on a huge page
         * (entries of 12 bytes do not divide 2 MiB) */
        c.region_bytes = (per * shares * sizeof(entry) + hb - 1) / hb * hb;
        c.region = c.region_bytes / sizeof(entry);
        c.arena_bytes = c.region_bytes * c.P;
        void *a = mmap(NULL, c.arena_bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (a != MAP_FAILED)
            c.arena = a;
        else if (shares == 1)
            ok = 0;
    }
#ifdef MADV_HUGEPAGE
    /* huge pages (2 MiB: a fault each, not 512) where rounding every table up
     * to them costs at most a sixteenth of the budget, which then pays it */
    if (ok && c.P * huge <= c.budget / 16) {
        c.huge_pages = 1; /* asked for per table in pt_grow, once it is large */
        c.budget -= c.P * huge;
    }
#endif
    c.scratch = calloc((size_t)c.nt, sizeof *c.scratch);
    c.scratch_cap = calloc((size_t)c.nt, sizeof *c.scratch_cap);
    ok = ok && c.scratch && c.scratch_cap;
    for (size_t p = 0; ok && p < c.P; p++) {
        c.part[p].cap = per < PT_START ? per : PT_START;
        c.part[p].slot = (entry *)(void *)((unsigned char *)c.arena + p * c.region_bytes);
        c.inuse += c.part[p].cap;
    }
    if (!ok) {
        counter_free(&c);
        return eg_fail(err, EG_ENOMEM, "count: out of memory for a budget of %zu bytes", mem);
    }
    st->table_bytes = c.budget * sizeof(entry);
    st->buffer_bytes = c.kcap * KEY_BYTES;
    st->key_words = KW;
    st->entry_bytes = (uint32_t)sizeof(entry);
    st->method = EG_COUNT_TABLES;
    st->partitions = (uint32_t)c.P;
    const char *slash = strrchr(o->output, '/');
    if (o->tmp_dir)
        snprintf(c.tmp_prefix, sizeof c.tmp_prefix, "%s/egcount.%ld", o->tmp_dir, (long)getpid());
    else if (slash)
        snprintf(c.tmp_prefix, sizeof c.tmp_prefix, "%.*s/.egcount.%ld",
                 (int)(slash - o->output), o->output, (long)getpid());
    else
        snprintf(c.tmp_prefix, sizeof c.tmp_prefix, ".egcount.%ld", (long)getpid());
    double t0 = now_s();
    sample_splitters(&c);
    ret = for_each_segment(o, exact_segment, &c, &st->tokens, err);
    if (!ret)
        ret = flush_block(&c);
    double t1 = now_s();
    if (!ret)
        ret = write_counts(&c, st);
    st->seconds_count = t1 - t0;
    st->seconds_merge = now_s() - t1;
    st->spills = c.spills;
    if (ret)
        eg_count_stats_free(st);
    counter_free(&c);
    return ret;
}

#if KW == 2
/* ---- approximate counting: HyperLogLog + Misra-Gries ------------------------------- */

#define HLL_P 14
#define HLL_M (1u << HLL_P)

typedef struct {
    uint8_t reg[EG_COUNT_MAX_ORDER + 1][HLL_M];
    /* Misra-Gries: k counters per order, open addressing on 2k slots */
    size_t k;
    entry *mg[EG_COUNT_MAX_ORDER + 1];
    size_t mg_n[EG_COUNT_MAX_ORDER + 1];
    uint64_t total[EG_COUNT_MAX_ORDER + 1];
} sketch;

static void mg_rebuild(sketch *sk, uint32_t n, int decrement)
{
    entry *t = sk->mg[n];
    const size_t cap = 2 * sk->k;
    entry *keep = malloc(sk->mg_n[n] * sizeof *keep + 1);
    size_t m = 0;
    for (size_t i = 0; i < cap; i++)
        if (t[i].hi && (!decrement || t[i].count > 1)) {
            if (keep) {
                keep[m] = t[i];
                keep[m].count -= (uint64_t)decrement;
                m++;
            }
        }
    memset(t, 0, cap * sizeof *t);
    for (size_t i = 0; i < m; i++) {
        size_t s = (size_t)(mix_key(keep[i].hi, keep[i].lo) % cap);
        while (t[s].hi)
            s = (s + 1) % cap;
        t[s] = keep[i];
    }
    sk->mg_n[n] = m;
    free(keep);
}

static void mg_add(sketch *sk, uint32_t n, uint64_t hi, uint64_t lo, uint64_t h)
{
    entry *t = sk->mg[n];
    const size_t cap = 2 * sk->k;
    size_t s = (size_t)(h % cap);
    while (t[s].hi) {
        if (t[s].hi == hi && t[s].lo == lo) {
            t[s].count++;
            return;
        }
        s = (s + 1) % cap;
    }
    if (sk->mg_n[n] < sk->k) {
        t[s].hi = hi;
        t[s].lo = lo;
        t[s].count = 1;
        sk->mg_n[n]++;
        return;
    }
    mg_rebuild(sk, n, 1); /* the new item's own decrement cancels its count */
}

static eg_status sketch_sink(counter *c)
{
    sketch *sk = c->sketch;
    for (size_t i = 0; i < c->kn; i++) {
        const uint64_t hi = c->khi[i], lo = c->klo[i], h = mix_key(hi, lo);
        const uint32_t n = (uint32_t)(hi >> 60);
        const uint32_t idx = (uint32_t)(h >> (64 - HLL_P));
        const uint64_t w = h << HLL_P | (1ull << (HLL_P - 1));
        const uint8_t rank = (uint8_t)(__builtin_clzll(w) + 1);
        if (rank > sk->reg[n][idx])
            sk->reg[n][idx] = rank;
        sk->total[n]++;
        if (sk->k)
            mg_add(sk, n, hi, lo, h);
    }
    c->kn = 0;
    return EG_OK;
}

static double hll_estimate(const uint8_t *reg)
{
    double sum = 0;
    unsigned zeros = 0;
    for (unsigned i = 0; i < HLL_M; i++) {
        sum += 1.0 / (double)(1ull << reg[i]);
        zeros += reg[i] == 0;
    }
    const double m = HLL_M, alpha = 0.7213 / (1 + 1.079 / m);
    double e = alpha * m * m / sum;
    if (e <= 2.5 * m && zeros)
        e = m * log((double)m / zeros);
    return e;
}

eg_status eg_count_approx(const eg_count_opts *o, eg_count_stats *st, eg_err *err)
{
    counter c;
    eg_status ret = counter_begin(&c, o, st, sketch_sink, err);
    if (ret)
        return ret;
    c.kcap = 1 << 16;
    c.khi = malloc(c.kcap * 8);
    c.klo = malloc(c.kcap * 8);
    sketch *sk = calloc(1, sizeof *sk);
    if (sk)
        sk->k = o->top_k ? (o->top_k * 64 > 1024 ? o->top_k * 64 : 1024) : 0;
    int ok = c.khi && c.klo && sk && !alloc_block(&c);
    for (uint32_t n = 2; ok && n <= o->max_ngram && sk->k; n++)
        ok = (sk->mg[n] = calloc(2 * sk->k, sizeof(entry))) != NULL;
    if (!ok) {
        ret = eg_fail(err, EG_ENOMEM, "out of memory");
        goto done;
    }
    c.sketch = sk;
    if ((ret = for_each_segment(o, exact_segment, &c, &st->tokens, err)) ||
        (ret = flush_block(&c)))
        goto done;
    for (uint32_t n = 2; n <= o->max_ngram; n++) {
        st->distinct[n] = (uint64_t)llround(hll_estimate(sk->reg[n]));
        st->total[n] = sk->total[n];
        if (!o->top_k)
            continue;
        if (!(st->top[n] = calloc(o->top_k, sizeof *st->top[n]))) {
            ret = eg_fail(err, EG_ENOMEM, "out of memory");
            goto done;
        }
        for (size_t i = 0; i < 2 * sk->k; i++) {
            const entry *e = &sk->mg[n][i];
            if (!e->hi)
                continue;
            eg_ngram_top t;
            memset(&t, 0, sizeof t);
            u128 v = key_of(e);
            for (uint32_t k = n; k-- > 0;) {
                t.ids[k] = (uint32_t)(v & c.idmask);
                v >>= c.bits;
            }
            t.count = e->count;
            top_offer(st, n, o->top_k, &t);
        }
        qsort(st->top[n], st->n_top[n], sizeof *st->top[n], cmp_top);
    }
done:
    if (ret)
        eg_count_stats_free(st);
    for (uint32_t n = 0; sk && n <= EG_COUNT_MAX_ORDER; n++)
        free(sk->mg[n]);
    free(sk);
    counter_free(&c);
    return ret;
}
#endif /* KW == 2 */
