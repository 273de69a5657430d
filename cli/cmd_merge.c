/* cmd_merge.c - `engram merge`: counts files of disjoint shard subsets summed
 * into one, byte-identical to counting all the shards at once. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "engram/eg_count.h"

static const char merge_usage[] =
    "usage: engram merge COUNTS... -o OUT [options]\n"
    "\n"
    "Sum counts files (engram count outputs of disjoint subsets of the shards,\n"
    "e.g. one per batch job) into one, byte-identical to counting all the shards\n"
    "at once: k-way and streaming, the inputs read once, the threads merging key\n"
    "ranges side by side. Every input must have been counted with the same\n"
    "order, V', pad id, padding and projection (one clear error names the two\n"
    "files that differ), and no shard may be counted by two inputs.\n"
    "\n"
    "  -o, --output OUT     the merged counts file (written under a temporary\n"
    "                       name, renamed when complete)\n"
    "  -m, --memory SIZE    the threads' merge buffers (k/M/G bytes, default 256M);\n"
    "                       the inputs are mapped, not loaded\n"
    "  -j, --threads N      threads (default: all cores)\n"
    "  -k, --top K          show the K most frequent n-grams per order (default 10)\n"
    "      --allow-overlap  merge inputs that counted the same shard (its n-grams\n"
    "                       then count twice)\n"
    "      --json           the summary as JSON on stdout\n"
    "  -q, --quiet          no progress line, no summary\n"
    "  -h, --help           this text\n";

int cmd_merge(int argc, char **argv)
{
    enum { O_JSON = 256, O_OVERLAP };
    static const struct option opts[] = {{"output", required_argument, 0, 'o'},
                                         {"memory", required_argument, 0, 'm'},
                                         {"threads", required_argument, 0, 'j'},
                                         {"top", required_argument, 0, 'k'},
                                         {"allow-overlap", no_argument, 0, O_OVERLAP},
                                         {"json", no_argument, 0, O_JSON},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    eg_merge_opts o;
    memset(&o, 0, sizeof o);
    o.top_k = 10;
    uint64_t mem = (uint64_t)256 << 20, v;
    int json = 0, quiet = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:m:j:k:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'o': o.output = optarg; break;
        case 'm':
            if (cli_parse_size(optarg, &mem) || mem < ((uint64_t)1 << 20))
                return cli_error("--memory: '%s' is not a size of 1M or more", optarg);
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
        case O_OVERLAP: o.allow_overlap = 1; break;
        case O_JSON: json = 1; break;
        case 'q': quiet = 1; break;
        case 'h': fputs(merge_usage, stdout); return 0;
        default: fputs(merge_usage, stderr); return 2;
        }
    }
    if (optind >= argc)
        return cli_error("give at least one COUNTS file (see engram merge --help)");
    if (!o.output)
        return cli_error("-o OUT is required");
    o.inputs = (const char *const *)(argv + optind);
    o.n_inputs = (size_t)(argc - optind);
    o.memory = (size_t)mem;
    cli_progress pc;
    cli_progress_begin(&pc, !quiet && !json && isatty(STDERR_FILENO), "records");
    o.progress = cli_progress_cb;
    o.progress_ctx = &pc;
    eg_count_stats st;
    eg_err err;
    const double t0 = cli_now();
    const eg_status r = eg_counts_merge(&o, &st, &err);
    cli_progress_end(&pc);
    if (r)
        return cli_fail(&err);
    eg_counts *out = NULL;
    if (eg_counts_open(o.output, &out, &err))
        return cli_fail(&err);
    cli_count_report_opts rep = {.output = o.output, .vprime = eg_counts_vprime(out),
                                 .pad = eg_counts_pad(out), .max_ngram = eg_counts_max_ngram(out),
                                 .secs = cli_now() - t0, .mem = mem, .json = json, .quiet = quiet,
                                 .verb = "merged", .n_inputs = o.n_inputs};
    eg_counts_close(out);
    cli_count_report(&st, &rep);
    eg_count_stats_free(&st);
    return 0;
}
