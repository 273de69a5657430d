/* eg_internal.h - helpers shared by the library's modules (not installed). */
#ifndef ENGRAM_EG_INTERNAL_H
#define ENGRAM_EG_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "engram/eg_base.h"

#if defined(__GNUC__)
#define EG_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define EG_PRINTF(a, b)
#endif

/* Fill `err` (if non-NULL) with `code` and a formatted message; return code. */
eg_status eg_fail(eg_err *err, eg_status code, const char *fmt, ...) EG_PRINTF(3, 4);

/* A growable byte buffer (base/buf.c). eg_buf_put keeps a NUL after the
 * data. Functions return 0, or -1 when memory runs out. */
typedef struct {
    char *p;
    size_t len, cap;
} eg_buf;

int eg_buf_reserve(eg_buf *b, size_t extra);
int eg_buf_put(eg_buf *b, const void *data, size_t n);
void eg_buf_free(eg_buf *b);

/* Little-endian integers in byte buffers (file formats): one unaligned move
 * on little-endian hosts (the byte loops did not fold into one), bytes
 * elsewhere. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define EG_LE_HOST 1
#else
#define EG_LE_HOST 0
#endif

static inline void eg_put_le32(unsigned char *p, uint32_t v)
{
    if (EG_LE_HOST) {
        __builtin_memcpy(p, &v, 4);
        return;
    }
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline void eg_put_le64(unsigned char *p, uint64_t v)
{
    if (EG_LE_HOST) {
        __builtin_memcpy(p, &v, 8);
        return;
    }
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline uint32_t eg_get_le32(const unsigned char *p)
{
    if (EG_LE_HOST) {
        uint32_t v;
        __builtin_memcpy(&v, p, 4);
        return v;
    }
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t eg_get_le64(const unsigned char *p)
{
    return (uint64_t)eg_get_le32(p) | (uint64_t)eg_get_le32(p + 4) << 32;
}

/* Map a regular file read-only: *map (NULL for an empty file) and *len;
 * release with munmap(*map, *len). Errors name the path. */
eg_status eg_map_file(const char *path, void **map, size_t *len, eg_err *err);

/* Large zeroed anonymous memory (tables, key buffers): pages are touched
 * lazily; regions of 64 MiB and more ask for transparent huge pages. NULL
 * when the mapping fails. Free with eg_big_free(p, the same bytes). */
void *eg_big_alloc(size_t bytes);
void eg_big_free(void *p, size_t bytes);
/* Fault the whole pages of [p, p + bytes) in for writing now (a hint, where
 * the kernel has MADV_POPULATE_WRITE): much cheaper here than faulting them
 * one at a time on first touch, above all for huge pages. */
void eg_big_populate(void *p, size_t bytes);

/* Writing a large file without filling the page cache (base/outfile.c):
 * whole aligned blocks go to the disk with O_DIRECT from the caller's
 * aligned buffer, the unaligned edges (and everything, where the file system
 * refuses O_DIRECT) through the plain descriptor. Bytes on disk are the same
 * either way; fsync the plain descriptor at the end. */
#define EG_OUT_ALIGN 4096
typedef struct {
    int fd;  /* plain descriptor: edges, headers, fsync, close */
    int dfd; /* O_DIRECT descriptor of the same file, or -1 */
} eg_outfile;

/* Create (truncate) path with mode 0644; both descriptors are closed by
 * eg_outfile_close. -1 with errno when the file cannot be created. */
int eg_outfile_open(eg_outfile *w, const char *path);
/* Open an existing file to write parts of it (not truncated): processes that
 * write disjoint ranges of one file. */
int eg_outfile_reopen(eg_outfile *w, const char *path);
/* Close both descriptors: 0, or -1 when closing the plain one failed. */
int eg_outfile_close(eg_outfile *w);
/* Write the file's bytes [s, e), held by buf from file offset bw on
 * (bw <= s; bw a multiple of EG_OUT_ALIGN and buf aligned to it). Ranges
 * written by different threads must not share an aligned block unless both
 * are edges there: a block written whole goes direct. 0, or -1 with errno. */
int eg_outfile_put(eg_outfile *w, const unsigned char *buf, uint64_t bw, uint64_t s, uint64_t e);

/* A sequential writer over eg_outfile: records are composed in an aligned
 * staging buffer (eg_seqout_room) and written from file offset `at` on. */
typedef struct {
    eg_outfile *w;
    unsigned char *stage;
    size_t cap, n;   /* stage bytes; those in use (from file offset bw) */
    uint64_t bw, s;  /* stage[0]'s file offset (aligned); first byte not written yet */
    struct eg_seqwriter *aw; /* eg_seqout_init_async's writer thread, or NULL */
} eg_seqout;

/* cap: the staging bytes (a multiple of EG_OUT_ALIGN). 0, or -1 (memory). */
int eg_seqout_init(eg_seqout *q, eg_outfile *w, size_t cap);
/* The same with a writer thread and a second stage: full stages are written
 * while the caller fills the other (synchronous where the thread cannot be
 * started). Only eg_seqout_write and eg_seqout_flush may be used with it. */
int eg_seqout_init_async(eg_seqout *q, eg_outfile *w, size_t cap);
/* Start writing at file offset `at` (what was staged before must be flushed). */
void eg_seqout_seek(eg_seqout *q, uint64_t at);
/* Room for `need` (<= cap - EG_OUT_ALIGN) bytes at the end of the staged
 * bytes, writing out whole blocks first if needed; NULL on a write error
 * (errno). Add what was written there to q->n. */
unsigned char *eg_seqout_room(eg_seqout *q, size_t need);
/* Append len bytes (copied); 0, or -1 on a write error. */
int eg_seqout_write(eg_seqout *q, const void *data, size_t len);
/* Write out everything staged; 0, or -1 on a write error. */
int eg_seqout_flush(eg_seqout *q);
void eg_seqout_free(eg_seqout *q);

/* The layer's projections (runtime/layer.c) run at the widest vector width
 * the CPU has; eg_layer_gemm_width_limit(w) caps it at w bits (512, 256 or
 * 128; 0: no cap) for the whole process, so tests can compare the widths.
 * Returns the width now used. Not for concurrent use with layer calls. */
int eg_layer_gemm_width_limit(int bits);

/* For loops written to vectorize: GCC clones the function for AVX-512 and
 * AVX2 beside the baseline and lets the vectorizer use its dynamic cost
 * model. No fast-math: results are the exact roundings the code spells. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(EG_NO_CLONES)
#define EG_VEC                                                                             \
    __attribute__((target_clones("arch=x86-64-v4", "avx2", "default"),                   \
                   optimize("vect-cost-model=dynamic")))
#else
#define EG_VEC
#endif

/* a * b into *out, returning 0 on overflow. */
static inline int eg_mul_ok(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}

static inline int eg_add_ok(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

/* A row and the position that asked for it, ordered by row, then position
 * (gathers sort them to read each distinct row once). */
typedef struct {
    uint64_t row;
    size_t pos;
} eg_rowpos;

static inline int eg_cmp_rowpos(const void *a, const void *b)
{
    const eg_rowpos *x = a, *y = b;
    return x->row != y->row ? (x->row < y->row ? -1 : 1) : (x->pos < y->pos ? -1 : x->pos > y->pos);
}

#endif
