/* cmd_count.c - `engram count`: n-gram counts over compressed token shards. */
#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "engram/eg_count.h"
#include "engram/eg_tokenizer.h"

static const char count_usage[] =
    "usage: engram count SHARD ... (--tokenizer TOK | --projection P.u32 | --compressed-vocab V')\n"
    "                    -o COUNTS [options]\n"
    "\n"
    "Count every n-gram of orders 2..N over compressed ids, the way the model sees\n"
    "them (left padding with the projected pad id at each sequence start), exactly,\n"
    "within a memory budget (sorted runs spill to disk, compressed with zstd, and are\n"
    "merged). SHARDs are engram prep outputs: Megatron prefixes or .bin/.idx, llm.c\n"
    ".bin, raw .u32. COUNTS is documented in include/engram/eg_count.h.\n"
    "\n"
    "  -t, --tokenizer TOK        projection from the tokenizer (and decoded top n-grams)\n"
    "  -p, --projection P.u32     projection from a file\n"
    "  -V, --compressed-vocab V   the shards hold compressed ids below V' already\n"
    "  -c, --config CFG           N (max_ngram_size) and pad_id from an engram config\n"
    "  -n, --max-ngram N          orders 2..N (default: the config's, else 3)\n"
    "      --pad ID               raw pad id (default: the config's, else 2)\n"
    "  -T, --seq-len T            sequences of T tokens, as training cuts them\n"
    "      --docs                 sequences start at document starts (the default)\n"
    "  -m, --memory SIZE          budget (k/M/G bytes, default 1G)\n"
    "      --tmp DIR              folder for spilled runs (default: the output's)\n"
    "  -j, --threads N            threads (default: all cores)\n"
    "  -o, --output COUNTS        the counts file\n"
    "  -k, --top K                show the K most frequent n-grams per order (default 10)\n"
    "      --approx               one pass, fixed memory: HyperLogLog distinct estimates\n"
    "                             and heavy hitters; writes no counts file\n"
    "      --method M             auto (default), partition or tables: partition scatters\n"
    "                             the keys into ranges in memory first and counts each in\n"
    "                             cache (where the keys take <= 60% of the budget); tables\n"
    "                             counts as it reads, spilling sorted runs (any budget)\n"
    "      --passes N             partition first: read the input N times, each pass\n"
    "                             holding about 1/N of the key stream in memory\n"
    "                             (default: 3 when the stream exceeds 128 MiB, else 1)\n"
    "      --wide-keys            two-word keys even where one word holds every n-gram\n"
    "      --wide-counts          64-bit counts in the tables even below 2^32 tokens\n"
    "                             (the same output, slower; for tests and benchmarks)\n"
    "      --mpi                  count across the ranks of an MPI job (mpirun -n P\n"
    "                             engram count --mpi ...): each rank reads its share\n"
    "                             of the shards and counts its key range within\n"
    "                             --memory (per rank); one COUNTS, byte-identical\n"
    "                             to a single process's (docs/SCALING.md)\n"
    "      --json                 the summary as JSON on stdout\n"
    "  -q, --quiet                no progress line, no summary\n"
    "  -h, --help                 this text\n";

/* The key text of each compressed id (with a tokenizer), else "#id". The pad
 * id is a real id of the vocabulary too, so it is printed like any other. */
static void print_gram(FILE *f, const eg_vocab_projection *vp, const uint32_t *ids, uint32_t n)
{
    for (uint32_t k = 0; k < n; k++) {
        size_t len = 0;
        const char *key = vp ? eg_projection_key(vp, ids[k], &len) : NULL;
        if (k)
            fputc(' ', f);
        if (key) {
            json_t *j = json_stringn(key, len);
            char *q = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
            fputs(q ? q : "?", f);
            free(q);
            json_decref(j);
        } else {
            fprintf(f, "#%u", ids[k]);
        }
    }
}

void cli_count_report(const eg_count_stats *st_, const cli_count_report_opts *r)
{
    const eg_count_stats st = *st_;
    if (r->json) {
        json_t *root = json_object(), *orders = json_array();
        json_object_set_new(root, "output", r->output ? json_string(r->output) : json_null());
        json_object_set_new(root, "approx", json_boolean(r->approx));
        if (r->verb)
            json_object_set_new(root, "merged_files", json_integer((json_int_t)r->n_inputs));
        if (r->ranks) {
            json_object_set_new(root, "ranks", json_integer(r->ranks));
            json_object_set_new(root, "exchange_bytes", json_integer((json_int_t)st.exchange_bytes));
            json_object_set_new(root, "exchange_bytes_per_token",
                                json_real(st.tokens ? (double)st.exchange_bytes / st.tokens : 0.0));
            json_object_set_new(root, "seconds_exchange", json_real(st.seconds_exchange));
        }
        json_object_set_new(root, "tokens", json_integer((json_int_t)st.tokens));
        json_object_set_new(root, "compressed_vocab_size", json_integer((json_int_t)r->vprime));
        json_object_set_new(root, "pad_id_compressed", json_integer(r->pad));
        for (uint32_t n = 2; n <= r->max_ngram; n++) {
            json_t *j = json_object(), *fof = json_array(), *top = json_array();
            json_object_set_new(j, "n", json_integer(n));
            json_object_set_new(j, "distinct", json_integer((json_int_t)st.distinct[n]));
            json_object_set_new(j, "occurrences", json_integer((json_int_t)st.total[n]));
            if (!r->approx) {
                json_object_set_new(j, "singletons", json_integer((json_int_t)st.singletons[n]));
                for (unsigned b = 0; b < EG_FOF_BUCKETS; b++)
                    if (st.fof[n][b]) {
                        json_t *e = json_object();
                        json_object_set_new(e, "count_at_least",
                                            json_integer((json_int_t)eg_fof_bucket_min(b)));
                        json_object_set_new(e, "ngrams", json_integer((json_int_t)st.fof[n][b]));
                        json_array_append_new(fof, e);
                    }
            }
            json_object_set_new(j, "frequency_of_frequency", fof);
            for (size_t i = 0; i < st.n_top[n]; i++) {
                json_t *e = json_object(), *ids = json_array();
                for (uint32_t k = 0; k < n; k++)
                    json_array_append_new(ids, json_integer(st.top[n][i].ids[k]));
                json_object_set_new(e, "ids", ids);
                json_object_set_new(e, "count", json_integer((json_int_t)st.top[n][i].count));
                if (r->vp) {
                    char *txt = NULL;
                    size_t tl = 0;
                    FILE *mf = open_memstream(&txt, &tl);
                    if (mf) {
                        print_gram(mf, r->vp, st.top[n][i].ids, n);
                        fclose(mf);
                        json_object_set_new(e, "text", json_stringn(txt, tl));
                    }
                    free(txt);
                }
                json_array_append_new(top, e);
            }
            json_object_set_new(j, "top", top);
            json_array_append_new(orders, j);
        }
        json_object_set_new(root, "orders", orders);
        json_object_set_new(root, "spills", json_integer((json_int_t)st.spills));
        json_object_set_new(root, "seconds", json_real(r->secs));
        json_object_set_new(root, "seconds_count", json_real(st.seconds_count));
        json_object_set_new(root, "seconds_merge", json_real(st.seconds_merge));
        json_object_set_new(root, "count_tokens_per_second",
                            json_real(st.seconds_count > 0 ? st.tokens / st.seconds_count : 0));
        json_object_set_new(root, "tokens_per_second", json_real(st.tokens / (r->secs > 0 ? r->secs : 1e-9)));
        json_object_set_new(root, "memory_budget", json_integer((json_int_t)r->mem));
        if (!r->approx) {
            json_object_set_new(root, "key_words", json_integer((json_int_t)st.key_words));
            json_object_set_new(root, "entry_bytes", json_integer((json_int_t)st.entry_bytes));
            json_object_set_new(root, "method",
                                json_string(st.method == EG_COUNT_PARTITION ? "partition" : "tables"));
            json_object_set_new(root, "partitions", json_integer((json_int_t)st.partitions));
            json_object_set_new(root, "passes", json_integer((json_int_t)st.passes));
            json_object_set_new(root, "passes_redone", json_integer((json_int_t)st.passes_redone));
        }
        json_object_set_new(root, "peak_rss_mib", json_real(cli_peak_rss_mib()));
        json_dumpf(root, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        fputc('\n', stdout);
        json_decref(root);
    } else if (!r->quiet) {
        printf("%s %llu tokens, orders 2..%u, V' = %llu%s\n", r->verb ? r->verb : "counted",
               (unsigned long long)st.tokens, r->max_ngram, (unsigned long long)r->vprime,
               r->approx ? " (approximate: HyperLogLog, heavy hitters)" : "");
        for (uint32_t n = 2; n <= r->max_ngram; n++) {
            printf("  %u-grams: %llu %sdistinct of %llu", n, (unsigned long long)st.distinct[n],
                   r->approx ? "~" : "", (unsigned long long)st.total[n]);
            if (!r->approx)
                printf(", %llu singletons (%.1f%%)", (unsigned long long)st.singletons[n],
                       st.distinct[n] ? 100.0 * st.singletons[n] / st.distinct[n] : 0.0);
            printf("\n");
            if (!r->approx) {
                printf("    count>=  ");
                for (unsigned b = 0; b < EG_FOF_BUCKETS; b++)
                    if (st.fof[n][b])
                        printf(" %llu:%llu", (unsigned long long)eg_fof_bucket_min(b),
                               (unsigned long long)st.fof[n][b]);
                printf("\n");
            }
            for (size_t i = 0; i < st.n_top[n]; i++) {
                printf("    %10llu  ", (unsigned long long)st.top[n][i].count);
                print_gram(stdout, r->vp, st.top[n][i].ids, n);
                printf("\n");
            }
        }
        if (r->ranks)
            cli_note("%d ranks: %.1f MiB of keys exchanged (%.1f bytes per token), at most "
                     "%.2f s of a rank's time in the exchange\n",
                     r->ranks, st.exchange_bytes / 1048576.0,
                     st.tokens ? (double)st.exchange_bytes / st.tokens : 0.0, st.seconds_exchange);
        if (r->verb)
            cli_note("time %.2f s, %zu files, %.2f M tokens/s of the inputs, buffers %.0f MiB, "
                     "peak memory %.1f MiB -> %s\n",
                     r->secs, r->n_inputs, st.tokens / 1e6 / (r->secs > 0 ? r->secs : 1e-9),
                     r->mem / 1048576.0, cli_peak_rss_mib(), r->output);
        else
            cli_note("time %.2f s (%s %.2f s, %.2f M tokens/s; %s %.2f s), %.2f M "
                     "tokens/s overall, %llu spills, budget %.0f MiB, peak memory %.1f MiB%s%s\n",
                     r->secs, r->approx || st.method != EG_COUNT_PARTITION ? "counting" : "scattering",
                     st.seconds_count, st.seconds_count > 0 ? st.tokens / 1e6 / st.seconds_count : 0.0,
                     r->approx || st.method != EG_COUNT_PARTITION ? "merge and write"
                                                               : "counting ranges and writing",
                     st.seconds_merge, st.tokens / 1e6 / (r->secs > 0 ? r->secs : 1e-9),
                     (unsigned long long)st.spills,
                     r->mem / 1048576.0, cli_peak_rss_mib(), r->output && !r->approx ? " -> " : "",
                     r->output && !r->approx ? r->output : "");
    }
}

int cmd_count(int argc, char **argv)
{
    enum {
        O_PAD = 256,
        O_DOCS,
        O_TMP,
        O_APPROX,
        O_JSON,
        O_WIDE,
        O_WIDE_COUNTS,
        O_METHOD,
        O_PASSES,
        O_MPI
    };
    static const struct option opts[] = {{"tokenizer", required_argument, 0, 't'},
                                         {"projection", required_argument, 0, 'p'},
                                         {"compressed-vocab", required_argument, 0, 'V'},
                                         {"config", required_argument, 0, 'c'},
                                         {"max-ngram", required_argument, 0, 'n'},
                                         {"pad", required_argument, 0, O_PAD},
                                         {"seq-len", required_argument, 0, 'T'},
                                         {"docs", no_argument, 0, O_DOCS},
                                         {"memory", required_argument, 0, 'm'},
                                         {"tmp", required_argument, 0, O_TMP},
                                         {"threads", required_argument, 0, 'j'},
                                         {"output", required_argument, 0, 'o'},
                                         {"top", required_argument, 0, 'k'},
                                         {"approx", no_argument, 0, O_APPROX},
                                         {"wide-keys", no_argument, 0, O_WIDE},
                                         {"wide-counts", no_argument, 0, O_WIDE_COUNTS},
                                         {"method", required_argument, 0, O_METHOD},
                                         {"passes", required_argument, 0, O_PASSES},
                                         {"json", no_argument, 0, O_JSON},
                                         {"mpi", no_argument, 0, O_MPI},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *tok_path = NULL, *proj_path = NULL, *cfg_path = NULL;
    uint64_t vprime = 0, N = 0, pad_raw = UINT64_MAX, mem = 1ull << 30, v;
    eg_count_opts o;
    memset(&o, 0, sizeof o);
    o.top_k = 10;
    int approx = 0, json = 0, quiet = 0, mpi = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "t:p:V:c:n:T:m:j:o:k:qh", opts, NULL)) != -1) {
        switch (c) {
        case 't': tok_path = optarg; break;
        case 'p': proj_path = optarg; break;
        case 'c': cfg_path = optarg; break;
        case 'o': o.output = optarg; break;
        case O_TMP: o.tmp_dir = optarg; break;
        case O_DOCS: o.pad_mode = EG_PAD_DOCS; break;
        case O_APPROX: approx = 1; break;
        case O_WIDE: o.wide_keys = 1; break;
        case O_WIDE_COUNTS: o.wide_counts = 1; break;
        case O_METHOD:
            if (!strcmp(optarg, "auto"))
                o.method = EG_COUNT_AUTO;
            else if (!strcmp(optarg, "partition"))
                o.method = EG_COUNT_PARTITION;
            else if (!strcmp(optarg, "tables"))
                o.method = EG_COUNT_TABLES;
            else {
                return cli_error("--method: '%s' is not auto, partition or tables", optarg);
            }
            break;
        case O_PASSES: {
            uint64_t n_pass;
            if (cli_parse_u64(optarg, &n_pass) || n_pass < 1 || n_pass > 4096)
                return cli_error("--passes: '%s' is not a whole number from 1 to 4096", optarg);
            o.passes = (uint32_t)n_pass;
            break;
        }
        case O_JSON: json = 1; break;
        case O_MPI: mpi = 1; break;
        case 'q': quiet = 1; break;
        case 'V':
            if (cli_parse_u64(optarg, &vprime) || !vprime)
                return cli_error("--compressed-vocab: '%s' is not a positive count", optarg);
            break;
        case 'n':
            if (cli_parse_u64(optarg, &N) || N < 2 || N > EG_COUNT_MAX_ORDER)
                return cli_error("--max-ngram: must be 2..%d", EG_COUNT_MAX_ORDER);
            break;
        case O_PAD:
            if (cli_parse_u64(optarg, &pad_raw) || pad_raw > UINT32_MAX)
                return cli_error("--pad: '%s' is not an id", optarg);
            break;
        case 'T':
            if (cli_parse_u64(optarg, &o.seq_len) || !o.seq_len)
                return cli_error("--seq-len: must be >= 1");
            o.pad_mode = EG_PAD_SEQLEN;
            break;
        case 'm':
            if (cli_parse_size(optarg, &mem))
                return cli_error("--memory: '%s' is not a size", optarg);
            break;
        case 'j':
            if (cli_parse_threads(optarg, &o.n_threads))
                return 1;
            break;
        case 'k':
            if (cli_parse_u64(optarg, &v) || v > 100000)
                return cli_error("--top: '%s' is not a count", optarg);
            o.top_k = (size_t)v;
            break;
        case 'h': fputs(count_usage, stdout); return 0;
        default: fputs(count_usage, stderr); return 2;
        }
    }
    if (optind >= argc)
        return cli_error("give at least one SHARD (see engram count --help)");
    if (!approx && !o.output)
        return cli_error("-o COUNTS is required (or --approx)");
    if (!!tok_path + !!proj_path + !!vprime != 1)
        return cli_error("give exactly one of --tokenizer, --projection, --compressed-vocab");
    o.shards = (const char *const *)(argv + optind);
    o.n_shards = (size_t)(argc - optind);
    o.memory = (size_t)mem;
    eg_config cfg;
    eg_err err;
    if (cfg_path && eg_config_load(cfg_path, &cfg, &err))
        return cli_fail(&err);
    o.max_ngram = N ? (uint32_t)N : cfg_path ? cfg.max_ngram_size : 3;
    if (o.max_ngram > EG_COUNT_MAX_ORDER)
        return cli_error("max n-gram order %u: counting supports 2..%d", o.max_ngram,
                         EG_COUNT_MAX_ORDER);
    if (pad_raw == UINT64_MAX)
        pad_raw = cfg_path ? (uint64_t)cfg.pad_id : 2;
    eg_tokenizer *tok = NULL;
    eg_vocab_projection *vp = NULL;
    uint32_t *proj = NULL;
    int rc = 0;
    if (tok_path) {
        if (eg_tokenizer_open(tok_path, &tok, &err) || eg_projection_build(tok, &vp, &err)) {
            rc = cli_fail(&err);
            goto done;
        }
        size_t n;
        o.proj = eg_projection_map(vp, &n);
        o.n_proj = n;
        o.vprime = eg_projection_compressed_size(vp);
    } else if (proj_path) {
        size_t n;
        if (cli_read_u32_file(proj_path, "projection", &proj, &n)) {
            rc = 1;
            goto done;
        }
        if (eg_projection_vprime(proj, n, proj_path, &o.vprime, &err)) {
            rc = cli_fail(&err);
            goto done;
        }
        o.proj = proj;
        o.n_proj = n;
    } else {
        o.vprime = vprime;
    }
    if (o.proj) {
        if (pad_raw >= o.n_proj) {
            rc = cli_error("pad id %llu is outside the projection's %zu ids",
                           (unsigned long long)pad_raw, o.n_proj);
            goto done;
        }
        o.pad = o.proj[pad_raw];
    } else {
        o.pad = (int64_t)pad_raw;
    }
    eg_comm cm;
    if (mpi) {
        if (approx) {
            rc = cli_error("--mpi counts exactly; --approx is one process");
            goto done;
        }
        if ((rc = cli_mpi_begin(&cm)))
            goto done;
        o.comm = &cm;
        quiet |= cm.rank != 0; /* rank 0 reports for all */
        json &= cm.rank == 0;
    }
    cli_progress pc;
    cli_progress_begin(&pc, !quiet && isatty(STDERR_FILENO), "tokens");
    o.progress = cli_progress_cb;
    o.progress_ctx = &pc;
    eg_count_stats st;
    double t0 = cli_now();
    if ((approx ? eg_count_approx(&o, &st, &err) : eg_count_run(&o, &st, &err))) {
        cli_progress_end(&pc);
        rc = !mpi || cm.rank == 0 ? cli_fail(&err) : 1; /* every rank has the message */
        goto done;
    }
    double secs = cli_now() - t0;
    cli_progress_end(&pc);
    cli_count_report_opts r = {.output = approx ? NULL : o.output, .approx = approx,
                               .vprime = o.vprime, .pad = o.pad, .max_ngram = o.max_ngram,
                               .vp = vp, .secs = secs, .mem = mem, .json = json, .quiet = quiet,
                               .ranks = mpi ? cm.size : 0};
    cli_count_report(&st, &r);
    eg_count_stats_free(&st);
done:
    if (mpi && o.comm)
        cli_mpi_end();
    free(proj);
    eg_projection_free(vp);
    eg_tokenizer_free(tok);
    return rc;
}
