/*
 * eg_count.h - exact n-gram counting over compressed token streams within a
 * memory budget, the counts file, approximate sketches, and table planning.
 *
 * Counting: n-grams are packed into keys of one or two 64-bit words (order,
 * then the ids oldest first), generated a block at a time and counted by
 * key range, so that sorted ranges laid end to end are the sorted output.
 * Partition first (the key stream in memory, in one or more passes, each
 * range sorted in cache) where the stream fits the budget; else tables that
 * count as they read, spill sorted zstd runs when full and merge them per
 * range at the end (see eg_count_method). Memory stays within the budget.
 *
 * Counts file (version 2, little-endian):
 *   "EGCOUNT1" (8 bytes); u32 version = 2; u32 max_ngram N; u64 V';
 *   i64 pad id; u64 tokens; for n = 2..N: u64 distinct, u64 occurrences;
 *   then the records of order 2, of order 3, ...: n uint32 ids (oldest
 *   first) and a u64 count, sorted by the ids. numpy reads a section with
 *   dtype([("ids", "<u4", n), ("count", "<u8")]). Then what was counted, as
 *   JSON: the configuration (max_ngram, vprime, pad, pad_mode, seq_len,
 *   projection_sha256) and the inputs (path, tokens, docs, fingerprint of
 *   the token stream), sorted by path; then u64 the JSON's length and
 *   "EGCMETA1". Version 1 is the same without the JSON and the last 16 bytes
 *   (read, not written). Counting all shards at once, merging the counts of
 *   disjoint subsets (eg_counts_merge) and counting across MPI ranks give
 *   the same bytes.
 */
#ifndef ENGRAM_EG_COUNT_H
#define ENGRAM_EG_COUNT_H

#include <stddef.h>
#include <stdint.h>

#include "eg_base.h"
#include "eg_spec.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EG_COUNT_MAX_ORDER 8

/* Where sequences start (and are left-padded). */
typedef enum eg_pad_mode {
    EG_PAD_DOCS = 0,  /* at every document start (Megatron), else each shard's start */
    EG_PAD_SEQLEN = 1 /* every seq_len tokens of each shard, as the model sees it */
} eg_pad_mode;

typedef struct eg_count_opts {
    const char *const *shards; /* shard paths (eg_shard_open), borrowed */
    size_t n_shards;
    const uint32_t *proj; /* projection (borrowed); NULL: ids are compressed */
    size_t n_proj;
    uint64_t vprime;     /* every compressed id must be below V' */
    int64_t pad;         /* compressed pad id, 0 <= pad < V' */
    uint32_t max_ngram;  /* N: orders 2..N, N <= EG_COUNT_MAX_ORDER */
    eg_pad_mode pad_mode;
    uint64_t seq_len;    /* EG_PAD_SEQLEN */
    size_t memory;       /* budget for tables and buffers, bytes (>= 1 MiB) */
    const char *tmp_dir; /* spilled runs (default: the output's folder) */
    int n_threads;       /* 0: all cores */
    const char *output;  /* the counts file */
    size_t top_k;        /* keep the top_k most frequent n-grams of each order */
    void (*progress)(uint64_t tokens_done, uint64_t tokens_total, void *ctx);
    void *progress_ctx;
    int wide_keys; /* exact counting keys n-grams in one 64-bit word when N x
                    * bits(V') <= 60 (16-byte table entries), else in two
                    * (24 bytes); non-zero: always two (tests, benchmarks).
                    * The output is the same. */
    int wide_counts; /* one-word keys carry 32-bit counts (12-byte entries)
                      * when the input holds fewer than 2^32 tokens, else
                      * 64-bit ones; non-zero: always 64-bit (tests,
                      * benchmarks). The output is the same. */
    int method; /* eg_count_method: how exact counting goes (output the same) */
    const eg_comm *comm; /* non-NULL: count across its ranks, each calling eg_count_run
                          * with the same options (all the shards, the same output
                          * on a file system they share): each rank reads its share
                          * of the shards (contiguous, by tokens), n-gram keys go to
                          * the rank owning their key range (splitters from a sample
                          * gathered from every rank) in bounded rounds, each rank
                          * counts with tables within `memory` (its own budget) and
                          * writes its range at its offset of the one output, which
                          * is byte-identical to a single process's. A failure on
                          * any rank stops every rank with that rank's message, and
                          * the output is then not created. */
    uint32_t passes; /* partition first: read the input this many times, each pass
                      * scattering the keys of the next key ranges only, so that
                      * the stream in memory is about 1/passes of it. 0: auto
                      * (3 when the stream exceeds 128 MiB, else 1: fresh memory
                      * is the largest cost of the scatter, above all on VMs;
                      * see docs/BENCHMARKS.md). The output is the same. */
} eg_count_opts;

/* Exact counting's two methods (eg_count_opts.method; eg_count_stats.method
 * says which ran). Partition first: every key of the input is scattered into
 * many key ranges held in memory (tokens x (N-1) keys of 8 or 16 bytes, in
 * eg_count_opts.passes passes over the input), then each range is counted
 * in cache (a counter per key where the range is narrow, else its keys radix
 * sorted, or in a table) and written in order;
 * chosen when that key stream takes at most 60% of the budget.
 * Tables: keys are counted as they come in one table per key range, grown
 * within the budget, spilling sorted runs to disk when full and merging
 * them at the end (any budget). AUTO picks the first where it fits. */
typedef enum {
    EG_COUNT_AUTO = 0,
    EG_COUNT_TABLES = 1,
    EG_COUNT_PARTITION = 2, /* falls back to TABLES where the stream does not fit */
} eg_count_method;

#define EG_FOF_BUCKETS 24 /* frequency of frequencies: counts 1..8, then powers of 2 */

typedef struct eg_ngram_top {
    uint32_t ids[EG_COUNT_MAX_ORDER];
    uint64_t count;
} eg_ngram_top;

typedef struct eg_count_stats {
    uint64_t tokens;
    uint64_t distinct[EG_COUNT_MAX_ORDER + 1], total[EG_COUNT_MAX_ORDER + 1];
    uint64_t singletons[EG_COUNT_MAX_ORDER + 1];
    uint64_t fof[EG_COUNT_MAX_ORDER + 1][EG_FOF_BUCKETS];
    uint64_t spills;
    size_t table_bytes, buffer_bytes;
    uint32_t key_words;   /* exact counting: 64-bit words per key (1 or 2) */
    uint32_t entry_bytes; /* exact counting: bytes per table entry (12, 16 or 24) */
    uint32_t method;      /* exact counting: the eg_count_method that ran */
    uint32_t partitions;  /* exact counting: key ranges */
    uint32_t passes;      /* partition first: passes over the input (eg_count_opts.passes) */
    uint32_t passes_redone; /* of them: redone with fewer ranges (the sample misjudged) */
    double seconds_count; /* reading and counting (and spilling); partition
                           * first: reading and scattering */
    double seconds_merge; /* the final sort, merge and write; partition first:
                           * counting the ranges, sorting and writing */
    /* distributed (eg_count_opts.comm): the ranks, the key bytes sent to other
     * ranks (all ranks), and the most time one rank spent in the exchange
     * (waiting included) and in counting */
    uint32_t ranks;
    uint64_t exchange_bytes;
    double seconds_exchange;
    eg_ngram_top *top[EG_COUNT_MAX_ORDER + 1]; /* top_k each, most frequent first */
    size_t n_top[EG_COUNT_MAX_ORDER + 1];
} eg_count_stats;

/* Lower edge of frequency-of-frequency bucket b: 1..8, then 16, 32, ... */
uint64_t eg_fof_bucket_min(unsigned b);

/* Count every n-gram of orders 2..N and write the counts file (under a
 * temporary name, renamed when complete). Errors: EG_ERANGE naming the shard
 * and token of an id outside the projection or V'; EG_EFORMAT for a bad
 * shard; EG_ENOMEM when the budget cannot hold even one block. The top lists
 * in `st` are allocated; release them with eg_count_stats_free. */
eg_status eg_count_run(const eg_count_opts *o, eg_count_stats *st, eg_err *err);
void eg_count_stats_free(eg_count_stats *st);

/* Approximate counting in one pass and fixed memory: a HyperLogLog (2^14
 * registers) of distinct n-grams and a Misra-Gries heavy-hitter sketch of
 * max(1024, 64 * top_k) counters per order. distinct[] are estimates (about 0.8%
 * standard error); total[] and tokens are exact; top[] counts are lower
 * bounds. Nothing is written. */
eg_status eg_count_approx(const eg_count_opts *o, eg_count_stats *st, eg_err *err);

/* ---- reading a counts file ------------------------------------------------- */

typedef struct eg_counts eg_counts;

eg_status eg_counts_open(const char *path, eg_counts **out, eg_err *err);
void eg_counts_close(eg_counts *c);
uint32_t eg_counts_max_ngram(const eg_counts *c);
uint64_t eg_counts_vprime(const eg_counts *c);
int64_t eg_counts_pad(const eg_counts *c);
uint64_t eg_counts_tokens(const eg_counts *c);
uint64_t eg_counts_distinct(const eg_counts *c, uint32_t n);
uint64_t eg_counts_total(const eg_counts *c, uint32_t n);
/* The file's format version (1 or 2). */
uint32_t eg_counts_version(const eg_counts *c);
/* Version 2: the metadata JSON (borrowed from the open file, *len bytes, not
 * NUL-terminated); NULL for version 1. */
const char *eg_counts_meta(const eg_counts *c, size_t *len);
/* Record i of order n: its ids (n values, copied into ids[]) and count. */
eg_status eg_counts_get(const eg_counts *c, uint32_t n, uint64_t i, uint32_t *ids,
                        uint64_t *count);

/* Where record i of order n starts in the mapped file (4n + 8 bytes;
 * i == distinct gives the section's end); borrowed, valid until
 * eg_counts_close. NULL when n or i is out of range. */
const unsigned char *eg_counts_record(const eg_counts *c, uint32_t n, uint64_t i);

/* ---- merging counts files ------------------------------------------------------ */

typedef struct eg_merge_opts {
    const char *const *inputs; /* counts files (version 2), borrowed */
    size_t n_inputs;
    const char *output;  /* the merged counts file (temporary name, renamed when complete) */
    size_t memory;       /* the threads' merge buffers, bytes (0: 256 MiB); the inputs are mapped */
    int n_threads;       /* 0: all cores */
    size_t top_k;        /* as eg_count_opts.top_k */
    int allow_overlap;   /* merge inputs that counted the same shard (it then counts twice) */
    void (*progress)(uint64_t records_done, uint64_t records_total, void *ctx);
    void *progress_ctx;
} eg_merge_opts;

/* Sum counts files into one: the n-grams of all of them with their counts
 * added, and the inputs of all of them in its metadata. The result is
 * byte-identical to counting every input shard at once. Errors: EG_EINVAL
 * naming two files counted with a different configuration (order, V', pad,
 * padding, projection) or that counted the same shard (unless
 * allow_overlap); EG_EUNSUPPORTED for version 1 files (they do not record
 * their inputs); EG_EFORMAT for a bad file. The top lists in `st` are
 * allocated (eg_count_stats_free). */
eg_status eg_counts_merge(const eg_merge_opts *o, eg_count_stats *st, eg_err *err);

/* ---- planning ---------------------------------------------------------------- */

/* Expected fraction of m distinct n-grams sharing their bucket with another
 * when hashed uniformly into p buckets: 1 - (1 - 1/p)^(m-1). */
double eg_plan_collision_rate(uint64_t m, uint64_t p);

/* Smallest p with eg_plan_collision_rate(m, p) <= target (0 < target < 1). */
uint64_t eg_plan_size_for(uint64_t m, double target);

/* Measured, with a spec's real multipliers and primes (layer li), for the
 * n-grams of order n in `c`: per head the fraction of distinct n-grams, and of
 * their occurrences, whose bucket holds another n-gram too; and the same for
 * "every one of the K heads". */
typedef struct eg_plan_measure {
    double head_distinct[64], head_mass[64];
    double all_distinct, all_mass;
} eg_plan_measure;

eg_status eg_plan_measure_order(const eg_counts *c, const eg_spec *spec, uint32_t li, uint32_t n,
                                eg_plan_measure *out, eg_err *err);

/* The inspection of one order's heads: eg_plan_measure plus, per head, the
 * rows hit (occupancy) and the bucket load distribution (buckets holding 0, 1,
 * ..., 7 n-grams, then 8-15, 16-31, 32-63, 64 and more), and the worst
 * buckets of the order (most n-grams, then most token mass) with up to three
 * of their n-grams (the most frequent; record indices into the counts). */
#define EG_LOAD_BUCKETS 12
#define EG_WORST_MAX 32
typedef struct eg_plan_bucket {
    uint32_t head; /* j within the order */
    uint64_t bucket, load, mass;
    uint64_t ngram[3];
    uint32_t n_ngram;
} eg_plan_bucket;

typedef struct eg_plan_inspect {
    eg_plan_measure m;
    uint64_t distinct, mass;
    uint64_t rows[64], rows_hit[64], max_load[64];
    uint64_t load_hist[64][EG_LOAD_BUCKETS];
    eg_plan_bucket worst[EG_WORST_MAX];
    uint32_t n_worst;
} eg_plan_inspect;

/* Lower bound of load bucket b (0..7, 8, 16, 32, 64). */
uint64_t eg_load_bucket_min(unsigned b);

/* Inspect order n of layer li (worst_k <= EG_WORST_MAX worst buckets). When
 * `hit` is non-NULL it is a bitmap over the layer's rows (bit r of byte r/8)
 * in which the rows hit by this order's heads are set (offsets applied). */
eg_status eg_plan_inspect_order(const eg_counts *c, const eg_spec *spec, uint32_t li, uint32_t n,
                                size_t worst_k, uint8_t *hit, eg_plan_inspect *out, eg_err *err);

/* Sizing a hot-row cache (the row tier's, eg_tier.h): every row's lookups in
 * the counted corpus (the occurrences of the n-grams hashing to it, over all
 * layers, orders and heads of the spec), and for each share[s] of all
 * lookups the fewest rows that serve it: the most looked-up rows first,
 * which is what a cache holding exactly the hottest rows would serve (an LRU
 * cache of that size serves somewhat less). bytes[s] = rows * row_bytes;
 * cache_bytes[s] adds slot_overhead bytes a row (26 for eg_tier: the value for
 * eg_tier_opts.cache_bytes). The caller sets n_shares and share[]. */
#define EG_COVERAGE_MAX 16
typedef struct eg_cache_coverage {
    size_t n_shares;
    double share[EG_COVERAGE_MAX];
    uint64_t rows[EG_COVERAGE_MAX], bytes[EG_COVERAGE_MAX], cache_bytes[EG_COVERAGE_MAX];
    uint64_t lookups, rows_hit; /* all of them; rows with at least one */
} eg_cache_coverage;

eg_status eg_plan_cache_coverage(const eg_counts *c, const eg_spec *spec, size_t row_bytes,
                                 size_t slot_overhead, eg_cache_coverage *out, eg_err *err);

#ifdef __cplusplus
}
#endif
#endif
