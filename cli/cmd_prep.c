/* cmd_prep.c - `engram prep`: raw corpora -> token shards. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "engram/eg_prep.h"

static const char prep_usage[] =
    "usage: engram prep --tokenizer TOK -o PREFIX [options] [INPUT ...]\n"
    "\n"
    "Tokenize raw text exactly as the tokenizer does (HF tokenizers for a\n"
    "tokenizer.json, libsentencepiece for a .model) and write token shards. INPUTs\n"
    "are files, folders (every file below, sorted) and globs; '-' or none reads\n"
    "stdin. .gz and .zst inputs are recognized by their content.\n"
    "\n"
    "  -t, --tokenizer TOK     tokenizer.json or SentencePiece .model\n"
    "  -o, --output PREFIX     output prefix (PREFIX.bin/.idx, or PREFIX_000000.bin ...)\n"
    "  -f, --format F          megatron (default: .bin + .idx, uint16 or int32),\n"
    "                          llmc (llm.c .bin with its 256-int header), u32 (raw)\n"
    "  -s, --shard-tokens N    start a new shard after N tokens (k/M/G; default: one)\n"
    "      --doc-per-line      each line is a document (default: each file)\n"
    "      --jsonl             JSONL input, one document per record...\n"
    "      --field NAME        ...with its text in field NAME (default: text)\n"
    "      --bos ID|TOKEN      add this id before every document\n"
    "      --eos ID|TOKEN      add this id after every document\n"
    "  -j, --threads N         tokenizer threads (default: all cores)\n"
    "  -m, --memory SIZE       memory budget (k/M/G bytes, default 1G): text is\n"
    "                          tokenized in batches of SIZE/8\n"
    "      --max-doc SIZE      cut longer documents at line boundaries (default:\n"
    "                          SIZE/16, at most 64M)\n"
    "      --strict            invalid UTF-8, malformed JSONL and missing fields are\n"
    "                          errors (default: replaced or skipped, and counted)\n"
    "      --mpi               prepare across the ranks of an MPI job (mpirun -n P\n"
    "                          engram prep --mpi ...): the input files are divided\n"
    "                          by size into contiguous runs, rank r writes\n"
    "                          PREFIX_r<rrrrr>[_NNNNNN].bin; in name order they hold\n"
    "                          the token stream one process writes\n"
    "      --json              the summary as JSON on stdout\n"
    "  -q, --quiet             no progress line, no summary\n"
    "  -h, --help              this text\n";

/* An id, or a token string of the tokenizer. */
static int resolve_token(const eg_tokenizer *tok, const char *s, int64_t *out)
{
    uint64_t v;
    if (cli_parse_u64(s, &v) == 0) {
        if (v >= eg_tokenizer_vocab_size(tok))
            return cli_error("id %s is outside the tokenizer's %zu ids", s,
                             eg_tokenizer_vocab_size(tok));
        *out = (int64_t)v;
        return 0;
    }
    uint32_t id;
    if (eg_tokenizer_token_id(tok, s, strlen(s), &id))
        return cli_error("'%s' is neither an id nor a token of the tokenizer", s);
    *out = id;
    return 0;
}

typedef struct {
    double t0, last;
    int on;
} progress_ctx;

static void show_progress(const eg_prep_stats *st, void *vctx)
{
    progress_ctx *c = vctx;
    double now = cli_now();
    if (!c->on || now - c->last < 0.5)
        return;
    c->last = now;
    double dt = now - c->t0;
    fprintf(stderr, "\r  %.1f MB, %llu docs, %.2f M tokens, %.2f M tokens/s",
            (double)st->in.bytes / 1e6, (unsigned long long)st->in.docs,
            (double)st->tokens / 1e6, (double)st->tokens / (dt > 0 ? dt : 1e-9) / 1e6);
    if (st->in.bytes_total && st->in.bytes_read) {
        double frac = (double)st->in.bytes_read / (double)st->in.bytes_total;
        if (frac > 0 && frac <= 1)
            fprintf(stderr, ", %.0f%%, ETA %.0f s", 100 * frac, dt / frac - dt);
    }
    fputs("   ", stderr);
}

int cmd_prep(int argc, char **argv)
{
    enum { O_LINE = 256, O_JSONL, O_FIELD, O_BOS, O_EOS, O_STRICT, O_JSON, O_MAXDOC, O_MPI };
    static const struct option opts[] = {{"tokenizer", required_argument, 0, 't'},
                                         {"output", required_argument, 0, 'o'},
                                         {"format", required_argument, 0, 'f'},
                                         {"shard-tokens", required_argument, 0, 's'},
                                         {"doc-per-line", no_argument, 0, O_LINE},
                                         {"jsonl", no_argument, 0, O_JSONL},
                                         {"field", required_argument, 0, O_FIELD},
                                         {"bos", required_argument, 0, O_BOS},
                                         {"eos", required_argument, 0, O_EOS},
                                         {"threads", required_argument, 0, 'j'},
                                         {"memory", required_argument, 0, 'm'},
                                         {"max-doc", required_argument, 0, O_MAXDOC},
                                         {"strict", no_argument, 0, O_STRICT},
                                         {"json", no_argument, 0, O_JSON},
                                         {"mpi", no_argument, 0, O_MPI},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *tok_path = NULL, *output = NULL, *bos_s = NULL, *eos_s = NULL;
    eg_prep_opts po;
    memset(&po, 0, sizeof po);
    po.format = EG_SHARD_MEGATRON;
    po.bos = po.eos = -1;
    po.reader.field = "text";
    uint64_t memory = 1ull << 30, v;
    int json = 0, quiet = 0, c, jsonl = 0, mpi = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "t:o:f:s:j:m:qh", opts, NULL)) != -1) {
        switch (c) {
        case 't': tok_path = optarg; break;
        case 'o': output = optarg; break;
        case 'f':
            if (!strcmp(optarg, "megatron"))
                po.format = EG_SHARD_MEGATRON;
            else if (!strcmp(optarg, "llmc"))
                po.format = EG_SHARD_LLMC;
            else if (!strcmp(optarg, "u32"))
                po.format = EG_SHARD_U32;
            else
                return cli_error("--format: '%s' is not megatron, llmc or u32", optarg);
            break;
        case 's':
            if (cli_parse_u64(optarg, &po.shard_tokens))
                return cli_error("--shard-tokens: '%s' is not a count", optarg);
            break;
        case O_LINE: po.reader.mode = EG_DOC_PER_LINE; break;
        case O_JSONL: jsonl = 1; break;
        case O_FIELD: po.reader.field = optarg; break;
        case O_BOS: bos_s = optarg; break;
        case O_EOS: eos_s = optarg; break;
        case 'j':
            if (cli_parse_threads(optarg, &po.n_threads))
                return 1;
            break;
        case 'm':
            if (cli_parse_size(optarg, &memory) || memory < (1u << 20))
                return cli_error("--memory: '%s' is not a size of at least 1M", optarg);
            break;
        case O_MAXDOC:
            if (cli_parse_size(optarg, &v) || v < 1024)
                return cli_error("--max-doc: '%s' is not a size of at least 1k", optarg);
            po.reader.max_doc_bytes = (size_t)v;
            break;
        case O_STRICT: po.reader.strict = 1; break;
        case O_JSON: json = 1; break;
        case O_MPI: mpi = 1; break;
        case 'q': quiet = 1; break;
        case 'h': fputs(prep_usage, stdout); return 0;
        default: fputs(prep_usage, stderr); return 2;
        }
    }
    if (jsonl) {
        if (po.reader.mode == EG_DOC_PER_LINE)
            return cli_error("--jsonl and --doc-per-line exclude each other");
        po.reader.mode = EG_DOC_JSONL;
    }
    if (!tok_path)
        return cli_error("--tokenizer TOK is required");
    if (!output)
        return cli_error("-o PREFIX is required");
    static const char *const stdin_only[] = {"-"};
    po.inputs = optind < argc ? (const char *const *)(argv + optind) : stdin_only;
    po.n_inputs = optind < argc ? (size_t)(argc - optind) : 1;
    po.batch_bytes = (size_t)(memory / 8);
    if (!po.reader.max_doc_bytes) /* one document's encoding needs ~12x its text */
        po.reader.max_doc_bytes = (size_t)(memory / 16 < (64u << 20) ? memory / 16 : (64u << 20));
    po.output = output;
    eg_err err;
    eg_tokenizer *tok = NULL;
    if (eg_tokenizer_open(tok_path, &tok, &err))
        return cli_fail(&err);
    int rc = 0;
    if ((bos_s && resolve_token(tok, bos_s, &po.bos)) ||
        (eos_s && resolve_token(tok, eos_s, &po.eos))) {
        eg_tokenizer_free(tok);
        return 1;
    }
    po.tok = tok;
    eg_comm cm;
    if (mpi) {
        if (cli_mpi_begin(&cm)) {
            eg_tokenizer_free(tok);
            return 1;
        }
        po.comm = &cm;
        quiet |= cm.rank != 0; /* rank 0 reports for all */
        json &= cm.rank == 0;
    }
    progress_ctx pc = {cli_now(), cli_now(), !quiet && isatty(STDERR_FILENO)};
    po.progress = show_progress;
    po.progress_ctx = &pc;
    eg_prep_stats st;
    double t0 = cli_now();
    if (eg_prep_run(&po, &st, &err))
        rc = !mpi || cm.rank == 0 ? cli_fail(&err) : 1; /* every rank has the message */
    double secs = cli_now() - t0;
    if (pc.on && secs > 0.5)
        fputs("\r\033[K", stderr);
    const char *fmt = po.format == EG_SHARD_MEGATRON ? "megatron"
                      : po.format == EG_SHARD_LLMC   ? "llmc"
                                                     : "u32";
    if (!rc && json) {
        printf("{\"tokenizer\": \"%s\", \"output\": \"%s\", \"format\": \"%s\", \"shards\": %zu, "
               "\"files\": %llu, \"docs\": %llu, \"chunks\": %llu, \"tokens\": %llu, "
               "\"bytes\": %llu, \"bytes_read\": %llu, \"empty_docs\": %llu, "
               "\"invalid_utf8\": %llu, \"bad_records\": %llu, \"missing_field\": %llu, "
               "\"seconds\": %.6f, \"tokens_per_second\": %.1f, \"mb_per_second\": %.3f, "
               "\"threads\": %d, \"ranks\": %d, \"peak_rss_mib\": %.1f}\n",
               tok_path, output, fmt, st.shards, (unsigned long long)st.in.files,
               (unsigned long long)st.in.docs, (unsigned long long)st.in.chunks,
               (unsigned long long)st.tokens, (unsigned long long)st.in.bytes,
               (unsigned long long)st.in.bytes_read, (unsigned long long)st.in.empty,
               (unsigned long long)st.in.bad_utf8, (unsigned long long)st.in.bad_records,
               (unsigned long long)st.in.missing_field, secs,
               (double)st.tokens / (secs > 0 ? secs : 1e-9),
               (double)st.in.bytes / 1e6 / (secs > 0 ? secs : 1e-9), po.n_threads,
               mpi ? cm.size : 1, cli_peak_rss_mib());
    } else if (!rc && !quiet) {
        cli_note("prepared %llu documents (%llu files, %.1f MB of text) -> %llu tokens in %zu "
                 "%s shard%s at %s\n",
                 (unsigned long long)st.in.docs, (unsigned long long)st.in.files,
                 (double)st.in.bytes / 1e6, (unsigned long long)st.tokens, st.shards, fmt,
                 st.shards == 1 ? "" : "s", output);
        if (mpi)
            cli_note("%d ranks, each writing %s_r<rank>...; peak memory below is rank 0's\n",
                     cm.size, output);
        if (st.in.empty || st.in.bad_utf8 || st.in.bad_records || st.in.missing_field ||
            st.in.chunks)
            cli_note("skipped %llu empty documents, %llu malformed records, %llu without the "
                     "field; replaced %llu invalid UTF-8 sequences; cut %llu long documents "
                     "into extra chunks\n",
                     (unsigned long long)st.in.empty, (unsigned long long)st.in.bad_records,
                     (unsigned long long)st.in.missing_field, (unsigned long long)st.in.bad_utf8,
                     (unsigned long long)st.in.chunks);
        cli_note("time %.2f s, %.2f M tokens/s, %.1f MB/s, peak memory %.1f MiB\n", secs,
                 (double)st.tokens / (secs > 0 ? secs : 1e-9) / 1e6,
                 (double)st.in.bytes / 1e6 / (secs > 0 ? secs : 1e-9), cli_peak_rss_mib());
    }
    if (mpi)
        cli_mpi_end();
    eg_tokenizer_free(tok);
    return rc;
}
