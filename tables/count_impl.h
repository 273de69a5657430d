/* count_impl.h - exact n-gram counting within a memory budget (see eg_count.h
 * and docs/ARCHITECTURE.md, "How a key travels"), compiled once per key width:
 * count64.c (KW 1: one-word keys, 16-byte entries), count32.c (KW 1 with
 * CNT32: 32-bit counts, 12-byte entries) and count.c (KW 2: two-word keys,
 * 24-byte entries, and the public entry point). Same output either way.
 *
 * The stages, in the order a key meets them:
 *   count_read.h       token blocks from the shards, the keys of each position
 *   count_splitters.h  the key ranges, from a sample of the whole input
 *   partition first (the key stream fits the budget):
 *     count_scatter.h  keys scattered to their range's chunks in memory
 *     count_ranges.h   each range counted in cache, written in order
 *   tables (any budget):
 *     count_insert.h   a batch scattered by range, inserted into tables
 *     count_table.h    the open-addressing tables
 *     count_sort.h     tables sorted (radix for one-word keys)
 *     count_runs.h     full tables spilled as sorted zstd runs; the k-way merge
 *   count_write.h      the counts file: records, statistics, header, writers
 *   count_driver.h     the budget, the method, eg_count_run
 *   count_dist.h       across processes: shares, sample, key exchange, one output
 * count_width.h is the only width-dependent part (entry, kkey, nkey); what
 * does not depend on the width is compiled once in count_common.c. */
#ifndef KW
#error "define KW (1 or 2) before including count_impl.h"
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

#include "count_common.h"
#include "counts_meta.h"

#include "count_width.h"

#include "count_table.h"

#include "count_state.h"

#include "count_splitters.h"

#include "count_sort.h"

#include "count_runs.h"

#include "count_insert.h"

#include "count_read.h"

#include "count_write.h"

#include "count_scatter.h"

#include "count_ranges.h"

#include "count_driver.h"

#include "count_dist.h"
