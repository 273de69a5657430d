/* store_impl.h - what the table store's stages share (store/: open.c, build.c,
 * read.c, tier.c, verify.c): the open handle, the rows' key layout, LMDB's
 * errors. Not a public header. */
#ifndef ENGRAM_STORE_IMPL_H
#define ENGRAM_STORE_IMPL_H
#include <lmdb.h>
#include <stdint.h>

#include "eg_internal.h"
#include "engram/eg_store.h"
#include "engram/eg_tier.h"

#define STORE_MAGIC "engram-store"
#define BLOCK_SHIFT 40
#define PAGE_HDR 16 /* LMDB's page header on 64-bit hosts (PAGEHDRSZ) */
#define STORE_LENIENT (1u << 31) /* verify: record block problems instead of failing */

struct eg_store {
    MDB_env *env;
    MDB_txn *txn;
    char *path;
    unsigned flags;
    eg_spec *spec;
    eg_store_info info;
    char *config_json, *build_json;
    const uint32_t *proj;
    uint32_t *proj_own; /* a copy when the map's value is not 4-aligned */
    size_t n_proj;
    const char **keys;
    uint32_t n_layers;
    uint64_t *base;               /* per layer: index of its first block; [n_layers] = total */
    const unsigned char **blk;    /* per block: its bytes in the map, or NULL */
    uint8_t *crc_state;           /* 0 unchecked, 1 good, 2 bad */
    eg_store_verify_report *report; /* lenient opens */
};

/* An LMDB return code as an eg_status with one line naming path and step. */
eg_status eg_store_lmdb_fail(eg_err *err, int rc, const char *path, const char *what);
/* The start of the file mapping (offset 0) that holds p; NULL where unknown. */
const unsigned char *eg_store_map_start_of(const void *p);
/* The start of the map that holds the stored blocks (a block's file offset
 * is its address minus this), from the first stored block; NULL when none is
 * stored (*any = 0) or the mapping cannot be told (*any = 1). */
const unsigned char *eg_store_rows_map(const eg_store *s, int *any);
/* The file LMDB opened (the path may name a newer generation by now) opened
 * again with `flags` (O_RDONLY | O_CLOEXEC added; without flags, a duplicate of
 * LMDB's descriptor where /proc is missing): -1 with errno set. */
int eg_store_reopen(const eg_store *s, int flags);
/* Open with a verify report (lenient: block problems recorded, not fatal). */
eg_status eg_store_open_report(const char *path, unsigned flags, eg_store_verify_report *report,
                               eg_store **out, eg_err *err);
/* Record a verify problem (the first one's text is kept). */
void eg_store_problem(eg_store *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Block index of (li, row), after range checks. */
eg_status eg_store_block_of(eg_store *s, uint32_t li, uint64_t row, uint64_t *idx, eg_err *err);
/* Check block idx's crc once (EG_EFORMAT naming the layer, block and rows). */
eg_status eg_store_check_crc(eg_store *s, uint32_t li, uint64_t idx, eg_err *err);

#endif
