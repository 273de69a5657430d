/*
 * eg_shard.h - token shards: writers and checked readers (base code: used by
 * prep, which writes them, and by tables and the runtime, which read them).
 *
 * Shard formats (all little-endian):
 *  - Megatron-LM MMIDIDX: PREFIX.bin holds the tokens (uint16 when the
 *    vocabulary is below 65,500, else int32); PREFIX.idx holds
 *    "MMIDIDX\0\0", version u64 = 1, dtype u8 (8 = uint16, 4 = int32),
 *    sequence count u64, document count u64, sizes int32[seq], pointers
 *    int64[seq] (byte offsets in .bin), document indices int64[doc] (0, 1, .., n).
 *    One sequence per document.
 *  - llm.c: a header of 256 int32 (magic 20240520 / version 1 / uint16 tokens,
 *    or magic 20240801 / version 7 / uint32 tokens when the vocabulary does not
 *    fit uint16; header[2] = token count), then the tokens. No document index.
 *  - raw: uint32 per token, nothing else.
 */
#ifndef ENGRAM_EG_SHARD_H
#define ENGRAM_EG_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "eg_base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- shard writers ---------------------------------------------------------- */

typedef enum eg_shard_format {
    EG_SHARD_MEGATRON = 1,
    EG_SHARD_LLMC = 2,
    EG_SHARD_U32 = 3
} eg_shard_format;

typedef struct eg_shard_writer eg_shard_writer;

/* Write shards named PREFIX_000000.bin (+ .idx), PREFIX_000001.bin, ... of at
 * least `shard_tokens` tokens each (a document is never split), or one
 * PREFIX.bin (+ .idx) when shard_tokens is 0. Every file is written under a
 * temporary name and renamed when its shard is complete; eg_shard_writer_abort
 * removes everything this writer produced. `vocab_size` picks the token type. */
eg_status eg_shard_writer_open(const char *prefix, eg_shard_format fmt, uint64_t vocab_size,
                               uint64_t shard_tokens, eg_shard_writer **out, eg_err *err);
/* Start a new document with these tokens. */
eg_status eg_shard_writer_add_doc(eg_shard_writer *w, const uint32_t *ids, size_t n, eg_err *err);
/* Append tokens to the current document. */
eg_status eg_shard_writer_append(eg_shard_writer *w, const uint32_t *ids, size_t n, eg_err *err);
/* Complete the last shard. The writer is then done; free it. */
eg_status eg_shard_writer_finish(eg_shard_writer *w, eg_err *err);
/* Remove every file this writer created (complete shards too). */
void eg_shard_writer_abort(eg_shard_writer *w);
size_t eg_shard_writer_n_shards(const eg_shard_writer *w);
/* Path of shard i's token file (borrowed). */
const char *eg_shard_writer_path(const eg_shard_writer *w, size_t i);
void eg_shard_writer_free(eg_shard_writer *w);

/* ---- shard readers ----------------------------------------------------------- */

typedef struct eg_shard eg_shard;

/* Open a shard: a Megatron PREFIX (or PREFIX.bin / PREFIX.idx), an llm.c .bin
 * (by its magic) or a raw .u32 file. Every count and offset in a header is
 * checked against the file sizes: EG_EFORMAT names the file and the field. */
eg_status eg_shard_open(const char *path, eg_shard **out, eg_err *err);
eg_shard_format eg_shard_get_format(const eg_shard *s);
uint64_t eg_shard_n_tokens(const eg_shard *s);
/* Documents (Megatron); 1 for the formats without an index. */
uint64_t eg_shard_n_docs(const eg_shard *s);
/* First token and length of document `doc`. */
eg_status eg_shard_doc(const eg_shard *s, uint64_t doc, uint64_t *first, uint64_t *n);
/* Tokens [first, first + n) as uint32. */
eg_status eg_shard_read(const eg_shard *s, uint64_t first, size_t n, uint32_t *out, eg_err *err);
void eg_shard_close(eg_shard *s);

#ifdef __cplusplus
}
#endif
#endif
