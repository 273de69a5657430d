/* count_common.h - what every counting stage shares and that does not depend
 * on the key width: the key hash, thread slices, the frequency-of-frequency
 * buckets, the counts file's header size, the top-k heaps, the options'
 * checks and the walk over the input's segments (count_common.c). Internal
 * to tables/: prefixed egc_. */
#ifndef ENGRAM_COUNT_COMMON_H
#define ENGRAM_COUNT_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "../base/eg_internal.h"
#include "engram/eg_count.h"
#include "engram/eg_shard.h"

__extension__ typedef unsigned __int128 u128;

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The hash of a key (hi, lo) for the tables and the sketches. */
static inline uint64_t mix_key(uint64_t hi, uint64_t lo)
{
    uint64_t h = lo * 0x9E3779B97F4A7C15ull ^ (hi + 0x632BE59BD9B4E019ull) * 0xC2B2AE3D27D4EB4Full;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return h;
}

static inline unsigned fof_bucket(uint64_t c)
{
    if (c <= 8)
        return (unsigned)c - 1;
    unsigned lg = 63u - (unsigned)__builtin_clzll(c); /* c >= 16 -> lg >= 4 */
    unsigned b = lg + 4;
    return b < EG_FOF_BUCKETS ? b : EG_FOF_BUCKETS - 1;
}

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

/* The counts file's header: magic, version, N, V', pad, tokens, and per
 * order distinct and occurrences (see eg_count.h). */
static inline size_t header_bytes(uint32_t N)
{
    return 8 + 4 + 4 + 8 + 8 + 8 + (size_t)(N - 1) * 16;
}

#define MAX_RECORD (4 * EG_COUNT_MAX_ORDER + 8) /* bytes of the longest record */

/* Whether a count could enter order n's top k (a cheap test before
 * egc_top_offer: below the worst kept of a full heap it cannot). */
static inline int top_may_take(const eg_count_stats *st, uint32_t n, size_t k, uint64_t count)
{
    return st->top[n] && (st->n_top[n] < k || count >= st->top[n][0].count);
}

/* Offer an n-gram to order n's heap of the k most frequent in st. */
void egc_top_offer(eg_count_stats *st, uint32_t n, size_t k, const eg_ngram_top *t);
/* qsort order of a top list: most frequent first, then ids ascending. */
int egc_cmp_top(const void *a, const void *b);

/* Add the threads' statistics ts[0..T) into st: sums, and the top lists
 * merged into st's (allocated here, top_k each, sorted). */
eg_status egc_stats_sum(eg_count_stats *st, eg_count_stats *ts, int T, uint32_t N, size_t top_k,
                        eg_err *err);
/* The counts file's header (version 2) at offset 0 of fd. */
eg_status egc_write_header(int fd, uint32_t N, uint64_t vprime, int64_t pad,
                           const eg_count_stats *st, const char *path, eg_err *err);

/* The options' shared checks (inputs, N, V', pad, seq_len). */
eg_status egc_check_opts(const eg_count_opts *o, eg_err *err);
/* Bits per id: the least b with 2^b >= V' (at least 1). */
unsigned egc_id_bits(uint64_t vprime);
/* The tokens of every input shard; UINT64_MAX when one cannot be opened (the
 * count then reports it). */
uint64_t egc_input_tokens(const eg_count_opts *o);
/* Project n ids in place and check them (ids outside the projection, or
 * compressed ids >= V'), naming the shard and token of the first offender. */
eg_status egc_project_ids(const eg_count_opts *o, uint32_t *x, size_t n, const char *path,
                          uint64_t pos, eg_err *err);

/* Run the input through `fn` one segment at a time: runs of contiguous
 * documents ([a, b) with their starts) or a whole shard cut every seq
 * tokens; *tokens: the tokens seen. Shared by exact and approximate. */
typedef eg_status (*segment_fn)(void *ctx, const eg_shard *s, const char *path, uint64_t a,
                                uint64_t b, uint64_t seq, const uint64_t *starts, size_t ns,
                                uint64_t *done, uint64_t total);
#define DOC_BATCH 65536 /* documents handed over at a time (when contiguous) */
eg_status egc_for_each_segment(const eg_count_opts *o, segment_fn fn, void *ctx,
                               uint64_t *tokens, eg_err *err);

#endif
