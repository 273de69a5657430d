/* cmd_spec.c - `engram spec`: multipliers, primes, offsets, rows and bytes. */
#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char spec_usage[] =
    "usage: engram spec --config CFG [--projection P.u32 | --compressed-vocab V'] [--json]\n"
    "\n"
    "Print the table specification the reference derives from a config: per Engram\n"
    "layer the N multipliers, the prime (row count) and row offset of every head, the\n"
    "layer's rows and its bytes in bf16 and f32.\n"
    "\n"
    "  -c, --config CFG          engram config (reference JSON or a HF config.json)\n"
    "  -p, --projection P.u32    vocabulary projection; gives V' and the projected pad\n"
    "  -V, --compressed-vocab V  V' when ids are already compressed (no projection);\n"
    "                            default: the config's compressed_vocab_size\n"
    "      --json                machine-readable output on stdout\n"
    "  -h, --help                this text\n";

static void fmt_bytes(uint64_t b, char *buf, size_t cap)
{
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)b;
    int u = 0;
    while (v >= 1024.0 && u < 5) {
        v /= 1024.0;
        u++;
    }
    snprintf(buf, cap, u ? "%.2f %s" : "%.0f %s", v, unit[u]);
}

static void fmt_thousands(uint64_t v, char *buf, size_t cap)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    size_t o = 0;
    for (int i = 0; i < n && o + 2 < cap; i++) {
        if (i && (n - i) % 3 == 0)
            buf[o++] = ',';
        buf[o++] = tmp[i];
    }
    buf[o] = 0;
}

static json_t *u64_array(const uint64_t *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_integer((json_int_t)v[i]));
    return a;
}

static int print_json(const cli_model *m)
{
    const eg_spec *s = m->spec;
    const uint32_t N = eg_spec_max_ngram(s), K = eg_spec_heads_per_ngram(s);
    char cfgbuf[4096];
    eg_err err;
    if (eg_config_to_json(&m->cfg, cfgbuf, sizeof cfgbuf, &err))
        return cli_fail(&err);
    json_t *root = json_object();
    json_object_set_new(root, "config", json_loads(cfgbuf, 0, NULL));
    json_object_set_new(root, "config_path", json_string(m->config_path));
    json_object_set_new(root, "compressed_vocab_size", json_integer((json_int_t)m->vprime));
    json_object_set_new(root, "pad_id_compressed", json_integer(m->pad_compressed));
    json_object_set_new(root, "head_dim", json_integer(eg_spec_head_dim(s)));
    json_object_set_new(root, "heads_per_layer", json_integer(eg_spec_n_heads(s)));
    json_t *layers = json_array();
    uint64_t total_rows = 0;
    for (uint32_t li = 0; li < eg_spec_n_layers(s); li++) {
        json_t *L = json_object();
        const int64_t *mult = eg_spec_multipliers(s, li);
        const uint64_t *pr = eg_spec_primes(s, li);
        json_t *ma = json_array(), *pa = json_array();
        for (uint32_t k = 0; k < N; k++)
            json_array_append_new(ma, json_integer(mult[k]));
        for (uint32_t n = 2; n <= N; n++)
            json_array_append_new(pa, u64_array(pr + (n - 2) * K, K));
        json_object_set_new(L, "layer_id", json_integer(m->cfg.layer_ids[li]));
        json_object_set_new(L, "multipliers", ma);
        json_object_set_new(L, "primes", pa);
        json_object_set_new(L, "offsets", u64_array(eg_spec_offsets(s, li), eg_spec_n_heads(s)));
        json_object_set_new(L, "rows", json_integer((json_int_t)eg_spec_layer_rows(s, li)));
        json_object_set_new(L, "bytes_bf16",
                            json_integer((json_int_t)eg_spec_layer_bytes(s, li, 2)));
        json_object_set_new(L, "bytes_f32",
                            json_integer((json_int_t)eg_spec_layer_bytes(s, li, 4)));
        json_array_append_new(layers, L);
        total_rows += eg_spec_layer_rows(s, li);
    }
    json_object_set_new(root, "layers", layers);
    json_object_set_new(root, "total_rows", json_integer((json_int_t)total_rows));
    json_object_set_new(
        root, "total_bytes_bf16",
        json_integer((json_int_t)(total_rows * eg_spec_head_dim(s) * 2)));
    json_object_set_new(
        root, "total_bytes_f32",
        json_integer((json_int_t)(total_rows * eg_spec_head_dim(s) * 4)));
    int rc = json_dumpf(root, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    fputc('\n', stdout);
    json_decref(root);
    return rc ? cli_error("writing JSON to stdout failed") : 0;
}

static void print_text(const cli_model *m)
{
    const eg_spec *s = m->spec;
    const uint32_t N = eg_spec_max_ngram(s), K = eg_spec_heads_per_ngram(s);
    const uint32_t D = eg_spec_head_dim(s);
    char a[64], b[64], c[64];
    printf("config      %s (%s)\n", m->config_path, m->cfg.name[0] ? m->cfg.name : "unnamed");
    printf("orders      2..%u, %u heads each, %u dims a head (%u per order), seed %llu\n", N, K,
           D, m->cfg.n_embed_per_ngram, (unsigned long long)m->cfg.seed);
    printf("vocabulary  V' = %llu compressed ids, pad id %lld -> %lld%s\n",
           (unsigned long long)m->vprime, (long long)m->cfg.pad_id,
           (long long)m->pad_compressed, m->proj ? "" : " (ids taken as compressed)");
    uint64_t total = 0;
    for (uint32_t li = 0; li < eg_spec_n_layers(s); li++) {
        const int64_t *mult = eg_spec_multipliers(s, li);
        const uint64_t *pr = eg_spec_primes(s, li), *off = eg_spec_offsets(s, li);
        printf("\nlayer %u\n  multipliers", m->cfg.layer_ids[li]);
        for (uint32_t k = 0; k < N; k++)
            printf(" %lld", (long long)mult[k]);
        printf("\n  %-6s %-5s %14s %14s\n", "order", "head", "rows (prime)", "row offset");
        for (uint32_t n = 2; n <= N; n++)
            for (uint32_t j = 0; j < K; j++) {
                uint32_t h = (n - 2) * K + j;
                fmt_thousands(pr[h], a, sizeof a);
                fmt_thousands(off[h], b, sizeof b);
                printf("  %u-gram %-5u %14s %14s\n", n, j, a, b);
            }
        uint64_t rows = eg_spec_layer_rows(s, li);
        total += rows;
        fmt_thousands(rows, a, sizeof a);
        fmt_bytes(eg_spec_layer_bytes(s, li, 2), b, sizeof b);
        fmt_bytes(eg_spec_layer_bytes(s, li, 4), c, sizeof c);
        printf("  rows %s x %u dims: %s bf16, %s f32\n", a, D, b, c);
    }
    fmt_thousands(total, a, sizeof a);
    fmt_bytes(total * D * 2, b, sizeof b);
    fmt_bytes(total * D * 4, c, sizeof c);
    printf("\ntotal       %u layers, %s rows: %s bf16, %s f32\n", eg_spec_n_layers(s), a, b, c);
}

int cmd_spec(int argc, char **argv)
{
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"projection", required_argument, 0, 'p'},
                                         {"compressed-vocab", required_argument, 0, 'V'},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *config = NULL, *projection = NULL;
    uint64_t vprime = 0;
    int json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:p:V:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config = optarg; break;
        case 'p': projection = optarg; break;
        case 'V':
            if (cli_parse_u64(optarg, &vprime) || vprime == 0)
                return cli_error("--compressed-vocab: '%s' is not a positive integer", optarg);
            break;
        case 'j': json = 1; break;
        case 'h': fputs(spec_usage, stdout); return 0;
        default: fputs(spec_usage, stderr); return 2;
        }
    }
    if (optind < argc)
        return cli_error("unexpected argument '%s' (see engram spec --help)", argv[optind]);
    cli_model m;
    int rc = cli_model_load(&m, config, projection, vprime);
    if (!rc) {
        if (json)
            rc = print_json(&m);
        else
            print_text(&m);
    }
    cli_model_free(&m);
    return rc;
}
