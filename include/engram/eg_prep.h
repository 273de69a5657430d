/*
 * eg_prep.h - corpus preparation: streaming readers of raw corpora (text,
 * gzip, zstd, JSONL), token shard writers and readers (Megatron-LM indexed
 * datasets, llm.c .bin, raw uint32), and the parallel tokenization pipeline.
 *
 * The shard formats and their readers and writers are in eg_shard.h.
 */
#ifndef ENGRAM_EG_PREP_H
#define ENGRAM_EG_PREP_H

#include <stddef.h>
#include <stdint.h>

#include "eg_base.h"
#include "eg_shard.h"
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
    size_t read_bytes;    /* bytes per read(2) and per refill of decompressed text; 0 = 1 MiB
                           * (values under 16 count as 16). Memory held: about 3x this
                           * plus the longest document. */
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
/* The i-th file the inputs expanded to, in reading order ("-" for standard
 * input), borrowed until eg_reader_close; NULL past the last. */
const char *eg_reader_file(const eg_reader *r, size_t i);
void eg_reader_close(eg_reader *r);

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
    const eg_comm *comm; /* non-NULL: prepare across its ranks, each calling eg_prep_run
                          * with the same options (files on a file system they share;
                          * not standard input). The input files, expanded and sorted
                          * as one process would read them, are divided by size into
                          * contiguous runs, one per rank; rank r writes its run as
                          * output_r<rrrrr> (with shard_tokens, output_r<rrrrr>_000000
                          * ...; a rank with no document writes nothing), so that its
                          * shards in name order hold the token stream (and documents)
                          * a single process writes, whatever the number of ranks.
                          * Shards are written under temporary names and renamed only
                          * once every rank has succeeded; a failure on any rank stops
                          * every rank with that rank's message and leaves no shard.
                          * progress reports this rank's share; the stats returned are
                          * the whole job's, on every rank. */
} eg_prep_opts;

/* Read, tokenize in parallel and write shards, in input order whatever the
 * thread count (identical bytes for any n_threads). On failure nothing this
 * run wrote is left behind. */
eg_status eg_prep_run(const eg_prep_opts *opts, eg_prep_stats *stats, eg_err *err);

#ifdef __cplusplus
}
#endif
#endif
