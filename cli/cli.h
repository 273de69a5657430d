/* cli.h - shared helpers of the engram command (not part of the library). */
#ifndef ENGRAM_CLI_H
#define ENGRAM_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "engram/engram.h"

#if defined(__GNUC__)
#define CLI_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define CLI_PRINTF(a, b)
#endif

/* The subcommand's name, for messages ("engram hash: error: ..."). */
extern const char *cli_cmd;

/* Print "engram CMD: error: MSG" to stderr; returns 1 (the exit status). */
int cli_error(const char *fmt, ...) CLI_PRINTF(1, 2);
/* Same with an eg_err's message. */
int cli_fail(const eg_err *err);
void cli_note(const char *fmt, ...) CLI_PRINTF(1, 2);

double cli_now(void);
double cli_peak_rss_mib(void);

/* A progress line on stderr, at most twice a second, where `on` (a
 * terminal): done of total `unit`s, rate, ETA. For the library's
 * progress(done, total, ctx) callbacks; clear it with cli_progress_end. */
typedef struct {
    double t0, last;
    int on;
    const char *unit; /* "tokens", "records" */
} cli_progress;
void cli_progress_begin(cli_progress *p, int on, const char *unit);
void cli_progress_cb(uint64_t done, uint64_t total, void *p);
void cli_progress_end(const cli_progress *p);

/* Parse a non-negative integer with an optional k/M/G suffix (powers of 1000
 * for counts). Returns 0 on success. */
int cli_parse_u64(const char *s, uint64_t *out);

/* Read a whole file of little-endian uint32 values. `what` names it in
 * errors ("projection"). Returns 0 or prints an error and returns 1. */
int cli_read_u32_file(const char *path, const char *what, uint32_t **out, size_t *n);

/* An output written to a temporary name and renamed into place when
 * complete; "-" is standard output (refused when it is a terminal). */
typedef struct cli_out {
    FILE *f;
    char *final_path;
    char *tmp_path;
    int is_stdout;
} cli_out;

int cli_out_open(cli_out *o, const char *path);
int cli_out_write(cli_out *o, const void *buf, size_t n);
int cli_out_commit(cli_out *o); /* flush, fsync, rename; 0 on success */
void cli_out_abort(cli_out *o); /* close and remove the temporary file */

/* Config + V' + projection as the subcommands take them. */
typedef struct cli_model {
    eg_config cfg;
    const char *config_path;
    uint32_t *proj; /* NULL: ids are already compressed (identity) */
    size_t n_proj;
    uint64_t vprime;
    int64_t pad_compressed;
    eg_spec *spec;
    eg_tokenizer *tok;       /* with --tokenizer: the tokenizer and its projection */
    eg_vocab_projection *vp;
    char tok_sha[65], proj_sha[65]; /* "" without a tokenizer */
} cli_model;

/* Load --config, then --projection or --compressed-vocab (V'; 0 = take the
 * config's declared compressed_vocab_size), and build the spec. */
int cli_model_load(cli_model *m, const char *config, const char *projection, uint64_t vprime);
void cli_model_free(cli_model *m);
/* The same with --tokenizer TOK as a third way to the projection (which also
 * gives the keys and the fingerprints). */
int cli_model_load_tok(cli_model *m, const char *config, const char *tokenizer,
                       const char *projection, uint64_t vprime);

int cmd_spec(int argc, char **argv);
int cmd_hash(int argc, char **argv);
int cmd_vocab(int argc, char **argv);
int cmd_prep(int argc, char **argv);
int cmd_count(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_build(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_import(int argc, char **argv);
int cmd_verify(int argc, char **argv);

/* The summary of a count or a merge: text on stdout (per order: distinct,
 * singletons, frequency of frequencies, top n-grams) and a time line on
 * stderr, or the same as JSON (json). */
typedef struct cli_count_report_opts {
    const char *output; /* the counts file (NULL: none written) */
    int approx;
    uint64_t vprime;
    int64_t pad;
    uint32_t max_ngram;
    const eg_vocab_projection *vp; /* decodes the top n-grams; NULL: ids */
    double secs;
    uint64_t mem;
    int json, quiet;
    const char *verb; /* "counted" (NULL) or "merged" */
    size_t n_inputs;  /* merged: the files */
    int ranks;        /* MPI ranks that counted (0: no MPI) */
} cli_count_report_opts;
void cli_count_report(const eg_count_stats *st, const cli_count_report_opts *r);
int cmd_merge(int argc, char **argv);

/* --mpi (cli/mpi.c): MPI started and cm its collectives over every rank of
 * the job; 1 with the error printed where engram was built without MPI or
 * MPI cannot start. cli_mpi_end finalizes it. */
int cli_mpi_begin(eg_comm *cm);
void cli_mpi_end(void);

/* --threads N: 0 (all cores) .. 4096; 1 with the error printed. */
int cli_parse_threads(const char *s, int *out);

/* A byte size with an optional k/M/G suffix (powers of 1024). */
int cli_parse_size(const char *s, uint64_t *out);

#endif
