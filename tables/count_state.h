/* count_state.h - the counting state: the counter, its partitions (key ranges
 * with a table each, in one arena) and their growth, and its release; a stage
 * of count_impl.h. */

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
    char *meta; /* the counts file's metadata JSON (counts_meta.h) */
    struct dist_ *dist; /* a distributed count's exchange (count_dist.h) */
    size_t meta_len;
} counter;

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
    free(c->meta);
}
