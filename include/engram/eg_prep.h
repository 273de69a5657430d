/*
 * eg_prep.h - corpus preparation: streaming readers of raw corpora (text,
 * gzip, zstd, JSONL), token shard writers and readers (Megatron-LM indexed
 * datasets, llm.c .bin, raw uint32), and the parallel tokenization pipeline.
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
#ifndef ENGRAM_EG_PREP_H
#define ENGRAM_EG_PREP_H

#include <stddef.h>
#include <stdint.h>

#include "eg_base.h"
#include "eg_tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- readers --------------------------------------------------------------- */

typedef enum eg_doc_mode {
    EG_DOC_PER_FILE = 0, /* a whole file is one document */
    EG_DOC_PER_LINE = 1, /* each line (without its newline) is one document */
    EG_DOC_JSONL = 2     /* each line is a JSON object; `field` holds the text */
} eg_doc_mode;

typedef struct eg_reader_opts {
    eg_doc_mode mode;
    const char *field;    /* EG_DOC_JSONL: the text field (borrowed) */
    int strict;           /* invalid UTF-8, malformed records, missing fields are errors */
    size_t max_doc_bytes; /* longer documents are cut at line boundaries; 0 = 64 MiB */
} eg_reader_opts;

/* Statistics so far (eg_reader_stats). */
typedef struct eg_reader_stats {
    uint64_t files;         /* files opened */
    uint64_t bytes_read;    /* bytes read from files (compressed) */
    uint64_t bytes_total;   /* sum of the inputs' sizes, when known (0: stdin) */
    uint64_t bytes;         /* text bytes produced */
    uint64_t docs;          /* documents produced */
    uint64_t chunks;        /* continuation chunks of long documents */
    uint64_t empty;         /* empty documents skipped */
    uint64_t bad_utf8;      /* ill-formed UTF-8 sequences replaced by U+FFFD */
    uint64_t bad_records;   /* malformed JSONL lines skipped */
    uint64_t missing_field; /* JSONL records without the text field, skipped */
} eg_reader_stats;

typedef struct eg_reader eg_reader;

/* Open a reader over `paths` (borrowed during the call): files, folders
 * (every regular file below, sorted), globs, and "-" for standard input.
 * Compression is recognized from the content (gzip, zstd). Fails with
 * EG_EIO naming a path that does not exist or matches nothing. */
eg_status eg_reader_open(const char *const *paths, size_t n_paths, const eg_reader_opts *opts,
                         eg_reader **out, eg_err *err);

/* Doc flags of eg_reader_next. */
enum { EG_DOC_CONTINUES = 1u << 0 /* this chunk continues the previous document */ };

/* The next document: *text (valid UTF-8, borrowed until the next call) and
 * *len; *text is NULL at the end of the input. Errors (a truncated .gz or .zst,
 * and with `strict` invalid UTF-8 or a bad record) name the file and the byte
 * offset (or line) in the decompressed stream. */
eg_status eg_reader_next(eg_reader *r, const char **text, size_t *len, uint32_t *doc_flags,
                         eg_err *err);
void eg_reader_get_stats(const eg_reader *r, eg_reader_stats *st);
void eg_reader_close(eg_reader *r);

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

/* ---- the pipeline --------------------------------------------------------- */

typedef struct eg_prep_stats {
    eg_reader_stats in;
    uint64_t tokens;
    size_t shards;
} eg_prep_stats;

typedef struct eg_prep_opts {
    const char *const *inputs;
    size_t n_inputs;
    eg_reader_opts reader;
    const eg_tokenizer *tok; /* borrowed */
    const char *output;      /* prefix */
    eg_shard_format format;
    uint64_t shard_tokens; /* 0: one shard */
    int64_t bos, eos;      /* ids added around each document; -1: none */
    int n_threads;         /* 0: all cores */
    size_t batch_bytes;    /* text bytes encoded at a time (memory bound); 0 = 64 MiB */
    /* Called after each batch (may be NULL). */
    void (*progress)(const eg_prep_stats *st, void *ctx);
    void *progress_ctx;
} eg_prep_opts;

/* Read, tokenize in parallel and write shards, in input order whatever the
 * thread count (identical bytes for any n_threads). On failure nothing this
 * run wrote is left behind. */
eg_status eg_prep_run(const eg_prep_opts *opts, eg_prep_stats *stats, eg_err *err);

#ifdef __cplusplus
}
#endif
#endif
