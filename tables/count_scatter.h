/* count_scatter.h - partition first, the scatter: every key of a pass sent to
 * its key range's chunks in memory (a search tree of splitters, 64-byte lines
 * per thread and range); a stage of count_impl.h. */

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
