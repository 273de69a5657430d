/* cmd_inspect.c - `engram inspect`: a store's spec and, with counts, per head
 * occupancy, bucket loads, collision rates, the worst buckets, and plots
 * drawn by gnuplot. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"

static const char inspect_usage[] =
    "usage: engram inspect STORE [--counts COUNTS] [--worst K] [--plot DIR] [--json]\n"
    "\n"
    "Prints the store's spec (layers, orders, heads, primes, dtype, initializer,\n"
    "fingerprints). With the n-gram counts of a corpus (`engram count`), per layer,\n"
    "order and head: the rows the counted n-grams hit (occupancy), the bucket load\n"
    "distribution, the fraction of distinct n-grams and of token mass that share a\n"
    "bucket in that head and in all K heads of their order, and the worst buckets with\n"
    "their n-grams decoded through the store's keys; and for the row tier's hot-row\n"
    "cache, the bytes holding the hottest rows that serve 50..100% of the corpus's\n"
    "lookups (the value for cache_bytes). --plot DIR draws occupancy.png,\n"
    "load.png and zipf.png (and .svg) with gnuplot.\n"
    "\n"
    "      --counts COUNTS   n-gram counts over the same projection (V' must match)\n"
    "      --worst K         worst buckets to list per order (default 5, at most 32)\n"
    "      --plot DIR        write plots (needs gnuplot: apt-get install gnuplot-nox)\n"
    "      --json            the report as JSON on stdout\n"
    "  -h, --help            this text\n";

static void gram_text(const eg_store *s, const uint32_t *ids, uint32_t n, char *out, size_t cap)
{
    size_t w = 0;
    out[0] = 0;
    for (uint32_t k = 0; k < n && w + 1 < cap; k++) {
        const char *key = eg_store_key(s, ids[k]);
        int r = key ? snprintf(out + w, cap - w, "%s%s", k ? "|" : "", key)
                    : snprintf(out + w, cap - w, "%s#%u", k ? "|" : "", ids[k]);
        if (r < 0)
            break;
        w += (size_t)r;
    }
    for (char *p = out; *p; p++) /* one line per bucket */
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
}

static int cmp_desc(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

static int run_gnuplot(const char *script)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        execlp("gnuplot", "gnuplot", script, (char *)NULL);
        _exit(127);
    }
    int ws;
    if (waitpid(pid, &ws, 0) < 0)
        return -1;
    return WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
}

/* The data files and the gnuplot script, then gnuplot itself. */
static int write_plots(const char *dir, const eg_store *s, const eg_counts *c,
                       eg_plan_inspect *const *ins, uint32_t L, uint32_t N)
{
    if (mkdir(dir, 0755) && errno != EEXIST)
        return cli_error("%s: cannot create: %s", dir, strerror(errno));
    const eg_spec *sp = eg_store_spec(s);
    const uint32_t K = eg_spec_heads_per_ngram(sp);
    char path[4200];
    snprintf(path, sizeof path, "%s/occupancy.tsv", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return cli_error("%s: cannot create: %s", path, strerror(errno));
    fprintf(f, "# label\toccupancy_percent\tshared_distinct_percent\n");
    for (uint32_t li = 0; li < L; li++)
        for (uint32_t n = 2; n <= N; n++)
            for (uint32_t j = 0; j < K; j++) {
                const eg_plan_inspect *in = &ins[li][n - 2];
                fprintf(f, "L%u/%u-gram/h%u\t%.6f\t%.6f\n", eg_spec_config(sp)->layer_ids[li], n, j,
                        in->rows[j] ? 100.0 * (double)in->rows_hit[j] / (double)in->rows[j] : 0.0,
                        100.0 * in->m.head_distinct[j]);
            }
    fclose(f);
    snprintf(path, sizeof path, "%s/load.tsv", dir);
    if (!(f = fopen(path, "w")))
        return cli_error("%s: cannot create: %s", path, strerror(errno));
    fprintf(f, "# load_min");
    for (uint32_t n = 2; n <= N; n++)
        fprintf(f, "\tbuckets_%u_gram", n);
    fputc('\n', f);
    for (unsigned b = 0; b < EG_LOAD_BUCKETS; b++) {
        fprintf(f, "%llu", (unsigned long long)eg_load_bucket_min(b));
        for (uint32_t n = 2; n <= N; n++) {
            uint64_t t = 0; /* over every layer and head of the order */
            for (uint32_t li = 0; li < L; li++)
                for (uint32_t j = 0; j < K; j++)
                    t += ins[li][n - 2].load_hist[j][b];
            fprintf(f, "\t%llu", (unsigned long long)t);
        }
        fputc('\n', f);
    }
    fclose(f);
    snprintf(path, sizeof path, "%s/zipf.tsv", dir);
    if (!(f = fopen(path, "w")))
        return cli_error("%s: cannot create: %s", path, strerror(errno));
    for (uint32_t n = 2; n <= N && n <= eg_counts_max_ngram(c); n++) {
        const uint64_t m = eg_counts_distinct(c, n);
        uint64_t *v = malloc((m ? m : 1) * sizeof *v);
        if (!v) {
            fclose(f);
            return cli_error("out of memory");
        }
        uint32_t ids[EG_COUNT_MAX_ORDER];
        for (uint64_t i = 0; i < m; i++)
            eg_counts_get(c, n, i, ids, &v[i]);
        qsort(v, m, sizeof *v, cmp_desc);
        fprintf(f, "# %u-grams: rank\tcount\n", n);
        uint64_t last = 0;
        for (double r = 1; r <= (double)m; r *= 1.02) {
            uint64_t k = (uint64_t)r;
            if (k == last)
                continue;
            last = k;
            fprintf(f, "%llu\t%llu\n", (unsigned long long)k, (unsigned long long)v[k - 1]);
        }
        if (m && last != m)
            fprintf(f, "%llu\t%llu\n", (unsigned long long)m, (unsigned long long)v[m - 1]);
        fprintf(f, "\n\n");
        free(v);
    }
    fclose(f);
    snprintf(path, sizeof path, "%s/plots.gp", dir);
    if (!(f = fopen(path, "w")))
        return cli_error("%s: cannot create: %s", path, strerror(errno));
    fprintf(f, "# drawn by `engram inspect --plot`; rerun with: cd %s && gnuplot plots.gp\n"
               "cd '%s'\nset datafile separator tab\nset grid\nset key top right\n",
            dir, dir);
    for (int svg = 0; svg < 2; svg++) {
        const char *term = svg ? "svg size 1100,520 dynamic" : "pngcairo size 1100,520";
        const char *ext = svg ? "svg" : "png";
        fprintf(f,
                "set terminal %s\nset output 'occupancy.%s'\n"
                "set title 'Rows hit by the counted n-grams, per head'\n"
                "set ylabel 'percent'\nset style data histograms\nset style fill solid 0.8\n"
                "set xtics rotate by -60 font ',8'\nset yrange [0:*]\nunset logscale\n"
                "plot 'occupancy.tsv' using 2:xtic(1) title 'occupancy (rows hit / rows)', "
                "'' using 3 title 'n-grams sharing their bucket'\n"
                "set output\nset style data linespoints\nset xtics norotate font ''\n",
                term, ext);
        fprintf(f,
                "set terminal %s\nset output 'load.%s'\n"
                "set title 'Bucket loads (n-grams per bucket), all heads of each order'\n"
                "set xlabel 'n-grams in the bucket (at least)'\nset ylabel 'buckets'\n"
                "set logscale y\nset logscale x 2\nset xrange [0.5:*]\nset yrange [0.5:*]\n"
                "set xtics (\"0\" 0.5, \"1\" 1, \"2\" 2, \"4\" 4, \"8\" 8, \"16\" 16, "
                "\"32\" 32, \"64\" 64)\n"
                "plot for [i=2:%u] 'load.tsv' using ($1 == 0 ? 0.5 : $1):i with linespoints "
                "title sprintf('%%d-grams', i)\nset output\nunset xlabel\nset xrange [*:*]\n"
                "set xtics auto\n",
                term, ext, N);
        fprintf(f,
                "set terminal %s\nset output 'zipf.%s'\n"
                "set title 'Rank and frequency of the counted n-grams'\n"
                "set xlabel 'rank'\nset ylabel 'count'\nset logscale xy\nset yrange [*:*]\n"
                "plot for [i=0:%u] 'zipf.tsv' index i using 1:2 with lines lw 2 "
                "title sprintf('%%d-grams', i + 2)\nset output\nunset logscale\nunset xlabel\n",
                term, ext, N - 2);
    }
    fclose(f);
    int r = run_gnuplot(path);
    if (r == 127)
        return cli_error("--plot needs gnuplot (apt-get install gnuplot-nox); the data and "
                         "script are in %s",
                         dir);
    if (r)
        return cli_error("gnuplot failed on %s (exit %d)", path, r);
    return 0;
}

int cmd_inspect(int argc, char **argv)
{
    enum { O_COUNTS = 256, O_WORST, O_PLOT, O_JSON };
    static const struct option opts[] = {{"counts", required_argument, 0, O_COUNTS},
                                         {"worst", required_argument, 0, O_WORST},
                                         {"plot", required_argument, 0, O_PLOT},
                                         {"json", no_argument, 0, O_JSON},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *counts = NULL, *plot = NULL;
    uint64_t worst = 5;
    int json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_COUNTS: counts = optarg; break;
        case O_WORST:
            if (cli_parse_u64(optarg, &worst) || worst > EG_WORST_MAX)
                return cli_error("--worst: '%s' is not a count in 0..%d", optarg, EG_WORST_MAX);
            break;
        case O_PLOT: plot = optarg; break;
        case O_JSON: json = 1; break;
        case 'h': fputs(inspect_usage, stdout); return 0;
        default: fputs(inspect_usage, stderr); return 2;
        }
    }
    if (optind + 1 != argc)
        return cli_error("which store? (engram inspect STORE [--counts COUNTS])");
    if (plot && !counts)
        return cli_error("--plot needs --counts COUNTS");
    const char *path = argv[optind];
    eg_err err;
    eg_store *s = NULL;
    if (eg_store_open(path, 0, &s, &err))
        return cli_fail(&err);
    const eg_spec *sp = eg_store_spec(s);
    const eg_store_info *info = eg_store_get_info(s);
    const eg_config *cfg = eg_spec_config(sp);
    const uint32_t L = eg_spec_n_layers(sp), N = eg_spec_max_ngram(sp),
                   K = eg_spec_heads_per_ngram(sp);
    eg_counts *cn = NULL;
    eg_plan_inspect **ins = NULL;
    int rc = 0;
    if (counts) {
        if (eg_counts_open(counts, &cn, &err)) {
            rc = cli_fail(&err);
            goto done;
        }
        ins = calloc(L, sizeof *ins);
        for (uint32_t li = 0; ins && li < L && !rc; li++) {
            if (!(ins[li] = calloc(N - 1, sizeof **ins))) {
                rc = cli_error("out of memory");
                break;
            }
            for (uint32_t n = 2; n <= N && n <= eg_counts_max_ngram(cn) && !rc; n++)
                if (eg_plan_inspect_order(cn, sp, li, n, (size_t)worst, NULL, &ins[li][n - 2], &err))
                    rc = cli_error("%s: %s", counts, err.msg);
        }
        if (!ins)
            rc = cli_error("out of memory");
        if (rc)
            goto done;
    }
    json_t *root = json_object();
    json_object_set_new(root, "store", json_string(path));
    json_object_set_new(root, "format_version", json_integer(info->format_version));
    json_object_set_new(root, "file_bytes", json_integer((json_int_t)info->file_bytes));
    json_object_set_new(root, "config", json_loads(eg_store_config_json(s), 0, NULL));
    json_object_set_new(root, "build", json_loads(eg_store_build_json(s), 0, NULL));
    json_object_set_new(root, "compressed_vocab_size",
                        json_integer((json_int_t)eg_spec_compressed_vocab(sp)));
    json_object_set_new(root, "pad_compressed", json_integer((json_int_t)eg_spec_pad(sp)));
    json_object_set_new(root, "dtype", json_string(eg_dtype_name(info->dtype)));
    json_object_set_new(root, "dim", json_integer(info->dim));
    json_object_set_new(root, "rows_per_block", json_integer(info->rows_per_block));
    json_object_set_new(root, "blocks", json_integer((json_int_t)info->blocks));
    json_object_set_new(root, "sparse", json_boolean(info->sparse));
    json_object_set_new(root, "init_seed", json_integer((json_int_t)info->seed));
    json_object_set_new(root, "init_std", json_real(info->init_std));
    json_object_set_new(root, "tokenizer_sha256", json_string(info->tokenizer_sha256));
    json_object_set_new(root, "projection_sha256", json_string(info->projection_sha256));
    json_t *layers = json_array();
    if (!json) {
        printf("store      %s (%.1f MiB, format %u, complete)\n", path,
               (double)info->file_bytes / 1048576.0, info->format_version);
        printf("config     %s: %u layer%s, orders 2..%u, %u heads per order, %u values per row\n",
               cfg->name[0] ? cfg->name : "(unnamed)", L, L == 1 ? "" : "s", N, K, info->dim);
        printf("vocabulary V' = %llu, pad (compressed) %lld\n",
               (unsigned long long)eg_spec_compressed_vocab(sp), (long long)eg_spec_pad(sp));
        printf("rows       %s, %llu blocks of %u rows%s; init philox4x32-10 uniform, seed %llu, "
               "std %g\n",
               eg_dtype_name(info->dtype), (unsigned long long)info->blocks, info->rows_per_block,
               info->sparse ? " (sparse: the rest generated)" : "",
               (unsigned long long)info->seed, info->init_std);
        if (info->tokenizer_sha256[0])
            printf("tokenizer  sha256 %s\nprojection sha256 %s\n", info->tokenizer_sha256,
                   info->projection_sha256);
    }
    for (uint32_t li = 0; li < L; li++) {
        const uint64_t *pr = eg_spec_primes(sp, li);
        json_t *jl = json_pack("{s:i, s:I, s:o, s:o}", "layer_id", cfg->layer_ids[li], "rows",
                               (json_int_t)eg_spec_layer_rows(sp, li), "multipliers", json_array(),
                               "primes", json_array());
        for (uint32_t k = 0; k < N; k++)
            json_array_append_new(json_object_get(jl, "multipliers"),
                                  json_integer((json_int_t)eg_spec_multipliers(sp, li)[k]));
        for (uint32_t h = 0; h < (N - 1) * K; h++)
            json_array_append_new(json_object_get(jl, "primes"), json_integer((json_int_t)pr[h]));
        if (!json) {
            printf("layer %-4u %llu rows (%.1f MiB); multipliers", cfg->layer_ids[li],
                   (unsigned long long)eg_spec_layer_rows(sp, li),
                   (double)eg_spec_layer_rows(sp, li) * (double)info->row_bytes / 1048576.0);
            for (uint32_t k = 0; k < N; k++)
                printf(" %lld", (long long)eg_spec_multipliers(sp, li)[k]);
            printf("\n");
            for (uint32_t n = 2; n <= N; n++) {
                printf("           %u-gram primes", n);
                for (uint32_t j = 0; j < K; j++)
                    printf(" %llu", (unsigned long long)pr[(n - 2) * K + j]);
                printf("\n");
            }
        }
        json_t *orders = json_array();
        for (uint32_t n = 2; ins && n <= N && n <= eg_counts_max_ngram(cn); n++) {
            const eg_plan_inspect *in = &ins[li][n - 2];
            json_t *jo = json_pack("{s:i, s:I, s:I, s:f, s:f, s:o, s:o}", "order", n, "distinct",
                                   (json_int_t)in->distinct, "occurrences", (json_int_t)in->mass,
                                   "all_heads_shared_distinct", in->m.all_distinct,
                                   "all_heads_shared_mass", in->m.all_mass, "heads", json_array(),
                                   "worst_buckets", json_array());
            if (!json)
                printf("\n  layer %u, %u-grams: %llu distinct, %llu occurrences\n"
                       "    head        rows     hit  occupancy  max load  shared: distinct    "
                       "mass\n",
                       cfg->layer_ids[li], n, (unsigned long long)in->distinct,
                       (unsigned long long)in->mass);
            for (uint32_t j = 0; j < K; j++) {
                json_t *lh = json_array();
                for (unsigned b = 0; b < EG_LOAD_BUCKETS; b++)
                    json_array_append_new(lh, json_integer((json_int_t)in->load_hist[j][b]));
                json_array_append_new(
                    json_object_get(jo, "heads"),
                    json_pack("{s:i, s:I, s:I, s:I, s:f, s:f, s:o}", "head", j, "rows",
                              (json_int_t)in->rows[j], "rows_hit", (json_int_t)in->rows_hit[j],
                              "max_load", (json_int_t)in->max_load[j], "shared_distinct",
                              in->m.head_distinct[j], "shared_mass", in->m.head_mass[j],
                              "load_histogram", lh));
                if (!json)
                    printf("    %4u %11llu %7llu %9.3f%% %9llu %16.3f%% %6.3f%%\n", j,
                           (unsigned long long)in->rows[j], (unsigned long long)in->rows_hit[j],
                           in->rows[j] ? 100.0 * (double)in->rows_hit[j] / (double)in->rows[j] : 0,
                           (unsigned long long)in->max_load[j], 100 * in->m.head_distinct[j],
                           100 * in->m.head_mass[j]);
            }
            if (!json) {
                printf("    all %u heads: %.4f%% of distinct n-grams, %.4f%% of token mass share "
                       "a bucket in every head\n",
                       K, 100 * in->m.all_distinct, 100 * in->m.all_mass);
                printf("    load histogram (buckets of all heads holding 0,1,...,7,8+,16+,32+,64+ "
                       "n-grams):");
                for (unsigned b = 0; b < EG_LOAD_BUCKETS; b++) {
                    uint64_t t = 0;
                    for (uint32_t j = 0; j < K; j++)
                        t += in->load_hist[j][b];
                    printf(" %llu", (unsigned long long)t);
                }
                printf("\n");
                if (in->n_worst)
                    printf("    worst buckets:\n");
            }
            for (uint32_t w = 0; w < in->n_worst; w++) {
                const eg_plan_bucket *wb = &in->worst[w];
                json_t *grams = json_array();
                if (!json)
                    printf("      head %u bucket %llu (row %llu): %llu n-grams, %llu occurrences:",
                           wb->head, (unsigned long long)wb->bucket,
                           (unsigned long long)(eg_spec_offsets(sp, li)[(n - 2) * K + wb->head] +
                                                wb->bucket),
                           (unsigned long long)wb->load, (unsigned long long)wb->mass);
                for (uint32_t g = 0; g < wb->n_ngram; g++) {
                    uint32_t ids[EG_COUNT_MAX_ORDER];
                    uint64_t cnt;
                    char txt[512];
                    eg_counts_get(cn, n, wb->ngram[g], ids, &cnt);
                    gram_text(s, ids, n, txt, sizeof txt);
                    json_array_append_new(grams, json_pack("{s:s, s:I}", "text", txt, "count",
                                                           (json_int_t)cnt));
                    if (!json)
                        printf(" \"%s\" (%llu)", txt, (unsigned long long)cnt);
                }
                if (!json)
                    printf("\n");
                json_array_append_new(json_object_get(jo, "worst_buckets"),
                                      json_pack("{s:i, s:I, s:I, s:I, s:o}", "head", wb->head,
                                                "bucket", (json_int_t)wb->bucket, "load",
                                                (json_int_t)wb->load, "occurrences",
                                                (json_int_t)wb->mass, "ngrams", grams));
            }
            json_array_append_new(orders, jo);
        }
        json_object_set_new(jl, "orders", orders);
        json_array_append_new(layers, jl);
    }
    json_object_set_new(root, "layers", layers);
    if (cn) { /* the row tier's hot-row cache: bytes that serve a share of the lookups */
        eg_cache_coverage cc = {.n_shares = 6, .share = {0.5, 0.8, 0.9, 0.95, 0.99, 1.0}};
        if (eg_plan_cache_coverage(cn, sp, info->row_bytes, 26, &cc, &err)) {
            rc = cli_error("%s: %s", counts, err.msg);
            json_decref(root);
            goto done;
        }
        json_t *jc = json_pack("{s:I, s:I, s:o}", "lookups", (json_int_t)cc.lookups, "rows_hit",
                               (json_int_t)cc.rows_hit, "shares", json_array());
        if (!json)
            printf("\nrow cache (engram.Runtime(cache_bytes=...), eg_tier_opts.cache_bytes): the "
                   "hottest rows serving a share of the counted corpus's %llu lookups (%llu rows "
                   "hit)\n    share        rows    row bytes  cache_bytes\n",
                   (unsigned long long)cc.lookups, (unsigned long long)cc.rows_hit);
        for (size_t k = 0; k < cc.n_shares; k++) {
            json_array_append_new(json_object_get(jc, "shares"),
                                  json_pack("{s:f, s:I, s:I, s:I}", "share", cc.share[k], "rows",
                                            (json_int_t)cc.rows[k], "bytes",
                                            (json_int_t)cc.bytes[k], "cache_bytes",
                                            (json_int_t)cc.cache_bytes[k]));
            if (!json)
                printf("    %4.0f%% %12llu %9.1f MiB %8.1f MiB\n", 100 * cc.share[k],
                       (unsigned long long)cc.rows[k], (double)cc.bytes[k] / 1048576.0,
                       (double)cc.cache_bytes[k] / 1048576.0);
        }
        json_object_set_new(root, "row_cache", jc);
    }
    if (json) {
        json_dumpf(root, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
    }
    json_decref(root);
    if (plot) {
        if ((rc = write_plots(plot, s, cn, ins, L, N)))
            goto done;
        if (!json)
            printf("\nplots: %s/occupancy.png, %s/load.png, %s/zipf.png (and .svg)\n", plot, plot,
                   plot);
    }
done:
    for (uint32_t li = 0; ins && li < L; li++)
        free(ins[li]);
    free(ins);
    eg_counts_close(cn);
    eg_store_close(s);
    return rc;
}
