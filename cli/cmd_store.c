/* cmd_store.c - `engram build`, `engram verify`, `engram export` and
 * `engram import`: the table store and its safetensors exchange. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* ---- shared ------------------------------------------------------------------ */

typedef struct {
    double t0, last;
    int on;
} byte_progress;

static void on_progress(uint64_t done, uint64_t total, void *vctx)
{
    byte_progress *c = vctx;
    double now = cli_now();
    if (!c->on || (now - c->last < 0.5 && done < total))
        return;
    c->last = now;
    double dt = now - c->t0, frac = total ? (double)done / (double)total : 1;
    fprintf(stderr, "\r  %.0f MiB of %.0f MiB (%.0f%%), %.0f MiB/s   ", (double)done / 1048576.0,
            (double)total / 1048576.0, 100 * frac, (double)done / 1048576.0 / (dt > 0 ? dt : 1e-9));
    if (done >= total)
        fputc('\n', stderr);
}

static void print_build_summary(const char *path, const eg_spec *spec, eg_dtype dt,
                                const eg_store_build_stats *bs, int json)
{
    if (json) {
        json_t *j = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:f, s:f, s:f}", "store", path,
                              "dtype", eg_dtype_name(dt), "blocks", (json_int_t)bs->blocks, "rows",
                              (json_int_t)bs->rows, "bytes", (json_int_t)bs->bytes, "file_bytes",
                              (json_int_t)bs->file_bytes, "seconds", bs->seconds,
                              "mib_per_second",
                              bs->seconds > 0 ? (double)bs->bytes / 1048576.0 / bs->seconds : 0.0,
                              "peak_rss_mib", cli_peak_rss_mib());
        json_dumpf(j, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(j);
        return;
    }
    printf("store %s: %u layer%s, %llu rows of %u %s values in %llu blocks\n", path,
           eg_spec_n_layers(spec), eg_spec_n_layers(spec) == 1 ? "" : "s",
           (unsigned long long)bs->rows, eg_spec_head_dim(spec), eg_dtype_name(dt),
           (unsigned long long)bs->blocks);
    printf("  %.1f MiB of rows, file %.1f MiB, %.2f s (%.0f MiB/s), peak RSS %.0f MiB\n",
           (double)bs->bytes / 1048576.0, (double)bs->file_bytes / 1048576.0, bs->seconds,
           bs->seconds > 0 ? (double)bs->bytes / 1048576.0 / bs->seconds : 0.0,
           cli_peak_rss_mib());
}

static char *build_record(const char *cmd, const char *config, const char *tokenizer,
                          const char *counts, const char *source)
{
    char when[64];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *j = json_pack("{s:s, s:s, s:s}", "engram_version", eg_version(), "command", cmd,
                          "time", when);
    if (config)
        json_object_set_new(j, "config", json_string(config));
    if (tokenizer)
        json_object_set_new(j, "tokenizer", json_string(tokenizer));
    if (counts)
        json_object_set_new(j, "counts", json_string(counts));
    if (source)
        json_object_set_new(j, "source", json_string(source));
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return s;
}

/* ---- build --------------------------------------------------------------------- */

static const char build_usage[] =
    "usage: engram build --config CFG (--tokenizer TOK | --projection P.u32 |\n"
    "                    --compressed-vocab V') -o STORE [options]\n"
    "\n"
    "Writes a table store: one LMDB file with the config, the projection (and the\n"
    "keys of the compressed ids with --tokenizer), multipliers, primes, offsets and\n"
    "every layer's rows, initialized from (seed, layer, row) by a counter-based\n"
    "generator (docs/FORMAT.md). The file is written under a temporary name and\n"
    "renamed when complete: a killed build never leaves a store that opens.\n"
    "\n"
    "  -c, --config CFG          the engram config (JSON, or a HF config.json)\n"
    "  -t, --tokenizer TOK       tokenizer.json or .model: projection, keys, fingerprints\n"
    "  -p, --projection P.u32    or a projection from `engram vocab`\n"
    "  -V, --compressed-vocab V' or ids that are already compressed\n"
    "  -o, --output STORE        the store file to write\n"
    "      --counts COUNTS       n-gram counts (`engram count`), for --sparse\n"
    "      --sparse              store only the blocks holding rows that counted\n"
    "                            n-grams hit; the rest read as the generator's values\n"
    "  -d, --dtype T             f32 (default), bf16, f16 or fp8_e4m3 (ue8m0 scales per 32)\n"
    "      --seed S              initializer seed (default: the config's seed)\n"
    "      --init-std X          initial standard deviation (default 0.02; 0: zeros)\n"
    "      --map-size SIZE       LMDB map size (default: computed)\n"
    "  -j, --threads N           threads generating rows (default: all)\n"
    "      --json                the summary as JSON on stdout\n"
    "  -q, --quiet               no progress line\n"
    "  -h, --help                this text\n";

/* Per layer index, the rows hit by the counted n-grams (for --sparse). */
static int sparse_bitmaps(const eg_spec *spec, const char *counts_path, uint8_t ***out)
{
    eg_err err;
    eg_counts *c = NULL;
    if (eg_counts_open(counts_path, &c, &err))
        return cli_fail(&err);
    const uint32_t L = eg_spec_n_layers(spec);
    uint8_t **hit = calloc(L, sizeof *hit);
    eg_plan_inspect *in = malloc(sizeof *in);
    int rc = !hit || !in ? cli_error("out of memory") : 0;
    for (uint32_t li = 0; li < L && !rc; li++) {
        if (!(hit[li] = calloc(eg_spec_layer_rows(spec, li) / 8 + 1, 1))) {
            rc = cli_error("out of memory");
            break;
        }
        for (uint32_t n = 2; n <= eg_spec_max_ngram(spec) && !rc; n++) {
            if (n > eg_counts_max_ngram(c))
                continue;
            if (eg_plan_inspect_order(c, spec, li, n, 0, hit[li], in, &err))
                rc = cli_error("%s: %s", counts_path, err.msg);
        }
    }
    free(in);
    eg_counts_close(c);
    *out = hit;
    return rc;
}

int cmd_build(int argc, char **argv)
{
    enum { O_COUNTS = 256, O_SPARSE, O_SEED, O_STD, O_MAP, O_JSON };
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"tokenizer", required_argument, 0, 't'},
                                         {"projection", required_argument, 0, 'p'},
                                         {"compressed-vocab", required_argument, 0, 'V'},
                                         {"output", required_argument, 0, 'o'},
                                         {"counts", required_argument, 0, O_COUNTS},
                                         {"sparse", no_argument, 0, O_SPARSE},
                                         {"dtype", required_argument, 0, 'd'},
                                         {"seed", required_argument, 0, O_SEED},
                                         {"init-std", required_argument, 0, O_STD},
                                         {"map-size", required_argument, 0, O_MAP},
                                         {"threads", required_argument, 0, 'j'},
                                         {"json", no_argument, 0, O_JSON},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *config = NULL, *tok = NULL, *proj = NULL, *out = NULL, *counts = NULL;
    uint64_t vprime = 0, seed = UINT64_MAX, map = 0, threads = 0;
    double std = 0.02;
    int sparse = 0, json = 0, quiet = 0, c;
    eg_dtype dt = EG_F32;
    eg_err err;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:t:p:V:o:d:j:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config = optarg; break;
        case 't': tok = optarg; break;
        case 'p': proj = optarg; break;
        case 'V':
            if (cli_parse_u64(optarg, &vprime) || !vprime)
                return cli_error("--compressed-vocab: '%s' is not a positive count", optarg);
            break;
        case 'o': out = optarg; break;
        case O_COUNTS: counts = optarg; break;
        case O_SPARSE: sparse = 1; break;
        case 'd':
            if (eg_dtype_parse(optarg, &dt, &err))
                return cli_error("--dtype: %s", err.msg);
            break;
        case O_SEED:
            if (cli_parse_u64(optarg, &seed))
                return cli_error("--seed: '%s' is not a non-negative integer", optarg);
            break;
        case O_STD: {
            char *end;
            std = strtod(optarg, &end);
            if (*end || !(std >= 0 && std < 1e6))
                return cli_error("--init-std: '%s' is not a non-negative number", optarg);
            break;
        }
        case O_MAP:
            if (cli_parse_size(optarg, &map) || !map)
                return cli_error("--map-size: '%s' is not a size (e.g. 64G)", optarg);
            break;
        case 'j':
            if (cli_parse_u64(optarg, &threads) || threads > 1024)
                return cli_error("--threads: '%s' is not a thread count", optarg);
            break;
        case O_JSON: json = 1; break;
        case 'q': quiet = 1; break;
        case 'h': fputs(build_usage, stdout); return 0;
        default: fputs(build_usage, stderr); return 2;
        }
    }
    if (optind < argc)
        return cli_error("unexpected argument '%s'", argv[optind]);
    if (!out)
        return cli_error("-o STORE is required");
    if (sparse && !counts)
        return cli_error("--sparse needs --counts COUNTS");
    cli_model m;
    int rc = cli_model_load_tok(&m, config, tok, proj, vprime);
    uint8_t **hit = NULL;
    char **keys = NULL;
    char *rec = NULL;
    if (rc)
        goto done;
    if (sparse && (rc = sparse_bitmaps(m.spec, counts, &hit)))
        goto done;
    if (m.vp) {
        const uint64_t V = m.vprime;
        keys = calloc(V, sizeof *keys);
        for (uint64_t i = 0; keys && i < V; i++) {
            size_t kl;
            const char *k = eg_projection_key(m.vp, (uint32_t)i, &kl);
            keys[i] = strndup(k ? k : "", k ? kl : 0);
        }
    }
    rec = build_record("build", config, tok, counts, NULL);
    byte_progress bp = {cli_now(), 0, !quiet && !json && isatty(STDERR_FILENO)};
    eg_store_params p = {.spec = m.spec,
                         .projection = m.proj,
                         .n_projection = m.n_proj,
                         .keys = (const char *const *)keys,
                         .tokenizer_sha256 = m.tok_sha[0] ? m.tok_sha : NULL,
                         .projection_sha256 = m.proj_sha[0] ? m.proj_sha : NULL,
                         .dtype = dt,
                         .seed = seed == UINT64_MAX ? m.cfg.seed : seed,
                         .init_std = std,
                         .hit = (const uint8_t *const *)hit,
                         .build_json = rec,
                         .map_size = map,
                         .n_threads = (int)threads,
                         .progress = on_progress,
                         .progress_ctx = &bp};
    eg_store_build_stats bs;
    if (eg_store_build(out, &p, &bs, &err)) {
        rc = cli_fail(&err);
        goto done;
    }
    print_build_summary(out, m.spec, dt, &bs, json);
done:
    for (uint32_t li = 0; hit && li < eg_spec_n_layers(m.spec); li++)
        free(hit[li]);
    free(hit);
    for (uint64_t i = 0; keys && i < m.vprime; i++)
        free(keys[i]);
    free(keys);
    free(rec);
    cli_model_free(&m);
    return rc;
}

/* ---- verify -------------------------------------------------------------------- */

static const char verify_usage[] =
    "usage: engram verify STORE [--json]\n"
    "\n"
    "Checks a store: the format version and build-complete marker, the metadata\n"
    "against the reference schedule recomputed from its config (multipliers,\n"
    "primes, offsets), every block's length and crc32. Exit status 0 when sound,\n"
    "1 with the first problem named when not.\n";

int cmd_verify(int argc, char **argv)
{
    int json = 0;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(verify_usage, stdout);
            return 0;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (argv[i][0] == '-' || path) {
            fputs(verify_usage, stderr);
            return 2;
        } else {
            path = argv[i];
        }
    }
    if (!path)
        return cli_error("which store? (engram verify STORE)");
    eg_store_verify_report r;
    eg_err err = {0};
    eg_status st = eg_store_verify(path, &r, &err);
    if (json) {
        json_t *j = json_pack("{s:s, s:b, s:b, s:I, s:I, s:I, s:I, s:s}", "store", path, "ok",
                              st == EG_OK, "metadata_ok", r.meta_ok, "blocks_checked",
                              (json_int_t)r.blocks_checked, "blocks_bad", (json_int_t)r.blocks_bad,
                              "blocks_missing", (json_int_t)r.blocks_missing, "blocks_unexpected",
                              (json_int_t)r.blocks_unexpected, "problem", r.first_problem);
        json_dumpf(j, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(j);
    }
    if (st) {
        if (!json)
            cli_error("%s", err.msg);
        if (!json && (r.blocks_bad || r.blocks_missing || r.blocks_unexpected))
            fprintf(stderr, "  %llu blocks checked, %llu bad, %llu missing, %llu unexpected\n",
                    (unsigned long long)r.blocks_checked, (unsigned long long)r.blocks_bad,
                    (unsigned long long)r.blocks_missing, (unsigned long long)r.blocks_unexpected);
        return 1;
    }
    if (!json)
        printf("%s: ok (metadata matches the reference schedule; %llu blocks, every crc32 good)\n",
               path, (unsigned long long)r.blocks_checked);
    return 0;
}

/* ---- safetensors ----------------------------------------------------------------- */

static const char *st_dtype(eg_dtype t)
{
    switch (t) {
    case EG_F32: return "F32";
    case EG_BF16: return "BF16";
    case EG_F16: return "F16";
    case EG_FP8_E4M3: return "F8_E4M3";
    }
    return "?";
}

static size_t st_elem(eg_dtype t) { return t == EG_F32 ? 4 : t == EG_FP8_E4M3 ? 1 : 2; }

static json_t *u64_array(const uint64_t *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_integer((json_int_t)v[i]));
    return a;
}

static json_t *i64_array(const int64_t *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_integer((json_int_t)v[i]));
    return a;
}

static void meta_set(json_t *meta, const char *key, json_t *value)
{
    char *s = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
    json_object_set_new(meta, key, json_string(s ? s : ""));
    free(s);
    json_decref(value);
}

static const char export_usage[] =
    "usage: engram export STORE -o TABLES.safetensors\n"
    "\n"
    "Writes every layer's table as a [rows, dim] tensor named engram.<layer_id>.weight\n"
    "in the store's dtype (F32, BF16, F16, or F8_E4M3 with an engram.<layer_id>.scale\n"
    "U8 [rows, dim/32] tensor of UE8M0 exponents), rows in table order (row = offset\n"
    "of the head + index). The store's metadata (config, V', pad, multipliers,\n"
    "primes, offsets, initializer, fingerprints) goes in __metadata__ as strings.\n"
    "Rows of a sparse store's absent blocks are generated. PyTorch reads it with\n"
    "safetensors.torch.load_file.\n";

int cmd_export(int argc, char **argv)
{
    const char *in = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(export_usage, stdout);
            return 0;
        } else if ((!strcmp(argv[i], "-o") || !strcmp(argv[i], "--output")) && i + 1 < argc) {
            out = argv[++i];
        } else if (argv[i][0] == '-' || in) {
            fputs(export_usage, stderr);
            return 2;
        } else {
            in = argv[i];
        }
    }
    if (!in || !out)
        return cli_error("usage: engram export STORE -o TABLES.safetensors");
    eg_err err;
    eg_store *s = NULL;
    if (eg_store_open(in, 0, &s, &err))
        return cli_fail(&err);
    const eg_spec *sp = eg_store_spec(s);
    const eg_store_info *info = eg_store_get_info(s);
    const uint32_t L = eg_spec_n_layers(sp), dim = info->dim, H = eg_spec_n_heads(sp);
    const size_t es = st_elem(info->dtype), rb = info->row_bytes;
    const int fp8 = info->dtype == EG_FP8_E4M3;
    json_t *hdr = json_object(), *meta = json_object();
    uint64_t off = 0;
    for (uint32_t li = 0; li < L; li++) {
        const uint64_t rows = eg_spec_layer_rows(sp, li);
        char name[64];
        snprintf(name, sizeof name, "engram.%u.weight", eg_spec_config(sp)->layer_ids[li]);
        json_object_set_new(hdr, name,
                            json_pack("{s:s, s:[I,I], s:[I,I]}", "dtype", st_dtype(info->dtype),
                                      "shape", (json_int_t)rows, (json_int_t)dim, "data_offsets",
                                      (json_int_t)off, (json_int_t)(off + rows * dim * es)));
        off += rows * dim * es;
        if (fp8) {
            snprintf(name, sizeof name, "engram.%u.scale", eg_spec_config(sp)->layer_ids[li]);
            json_object_set_new(hdr, name,
                                json_pack("{s:s, s:[I,I], s:[I,I]}", "dtype", "U8", "shape",
                                          (json_int_t)rows, (json_int_t)(dim / EG_FP8_GROUP),
                                          "data_offsets", (json_int_t)off,
                                          (json_int_t)(off + rows * (dim / EG_FP8_GROUP))));
            off += rows * (dim / EG_FP8_GROUP);
        }
    }
    json_object_set_new(meta, "format", json_string("engram"));
    json_object_set_new(meta, "engram_store_format", json_sprintf("%u", info->format_version));
    json_object_set_new(meta, "config", json_string(eg_store_config_json(s)));
    json_object_set_new(meta, "dtype", json_string(eg_dtype_name(info->dtype)));
    json_object_set_new(meta, "compressed_vocab_size",
                        json_sprintf("%llu", (unsigned long long)eg_spec_compressed_vocab(sp)));
    json_object_set_new(meta, "pad_compressed", json_sprintf("%lld", (long long)eg_spec_pad(sp)));
    json_object_set_new(meta, "init", json_sprintf("philox4x32-10 uniform seed=%llu std=%.17g",
                                                   (unsigned long long)info->seed, info->init_std));
    json_object_set_new(meta, "init_seed", json_sprintf("%llu", (unsigned long long)info->seed));
    json_object_set_new(meta, "init_std", json_sprintf("%.17g", info->init_std));
    if (info->tokenizer_sha256[0])
        json_object_set_new(meta, "tokenizer_sha256", json_string(info->tokenizer_sha256));
    if (info->projection_sha256[0])
        json_object_set_new(meta, "projection_sha256", json_string(info->projection_sha256));
    json_t *mu = json_array(), *pr = json_array(), *of = json_array();
    for (uint32_t li = 0; li < L; li++) {
        json_array_append_new(mu, i64_array(eg_spec_multipliers(sp, li), eg_spec_max_ngram(sp)));
        json_array_append_new(pr, u64_array(eg_spec_primes(sp, li), H));
        json_array_append_new(of, u64_array(eg_spec_offsets(sp, li), H));
    }
    meta_set(meta, "multipliers", mu);
    meta_set(meta, "primes", pr);
    meta_set(meta, "offsets", of);
    json_object_set_new(hdr, "__metadata__", meta);
    char *htxt = json_dumps(hdr, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(hdr);
    size_t hl = strlen(htxt), pad = (8 - hl % 8) % 8;
    unsigned char lenb[8];
    put_le64(lenb, hl + pad);
    cli_out o;
    int rc = cli_out_open(&o, out);
    if (rc) {
        free(htxt);
        eg_store_close(s);
        return rc;
    }
    rc = cli_out_write(&o, lenb, 8) || cli_out_write(&o, htxt, hl) ||
         cli_out_write(&o, "        ", pad);
    free(htxt);
    const uint64_t CH = 4096;
    unsigned char *enc = malloc(CH * rb), *wbuf = malloc(CH * dim * es + 1);
    if (!enc || !wbuf)
        rc = cli_error("out of memory");
    for (uint32_t li = 0; li < L && !rc; li++) {
        const uint64_t rows = eg_spec_layer_rows(sp, li);
        for (int pass = 0; pass < 1 + fp8 && !rc; pass++)
            for (uint64_t r0 = 0; r0 < rows && !rc; r0 += CH) {
                const uint64_t n = rows - r0 < CH ? rows - r0 : CH;
                if (eg_store_read_encoded(s, li, r0, n, enc, CH * rb, &err)) {
                    rc = cli_fail(&err);
                    break;
                }
                size_t w = 0;
                if (!fp8) {
                    rc = cli_out_write(&o, enc, n * rb);
                    continue;
                }
                const size_t part = pass == 0 ? dim : dim / EG_FP8_GROUP;
                for (uint64_t i = 0; i < n; i++, w += part)
                    memcpy(wbuf + w, enc + i * rb + (pass == 0 ? 0 : dim), part);
                rc = cli_out_write(&o, wbuf, w);
            }
    }
    free(enc);
    free(wbuf);
    eg_store_close(s);
    if (rc || cli_out_commit(&o)) {
        cli_out_abort(&o);
        return rc ? rc : 1;
    }
    return 0;
}

/* ---- import -------------------------------------------------------------------------- */

typedef struct {
    const unsigned char *w[EG_MAX_LAYERS], *sc[EG_MAX_LAYERS];
    uint32_t dim;
    size_t rb;
    eg_dtype dt;
} import_src;

static eg_status import_rows(void *vctx, uint32_t li, uint64_t row0, uint64_t n, void *dst,
                             eg_err *err)
{
    (void)err;
    const import_src *x = vctx;
    unsigned char *d = dst;
    if (x->dt != EG_FP8_E4M3) {
        memcpy(d, x->w[li] + row0 * x->rb, n * x->rb);
        return EG_OK;
    }
    const uint32_t g = x->dim / EG_FP8_GROUP;
    for (uint64_t i = 0; i < n; i++) {
        memcpy(d + i * x->rb, x->w[li] + (row0 + i) * x->dim, x->dim);
        memcpy(d + i * x->rb + x->dim, x->sc[li] + (row0 + i) * g, g);
    }
    return EG_OK;
}

/* The 2-D tensor `name`: its dtype and shape. */
static int st_tensor(const eg_safetensors *st, const char *file, const char *name,
                     const eg_st_tensor **out)
{
    const eg_st_tensor *t = eg_safetensors_find(st, name);
    if (!t)
        return cli_error("%s: no tensor '%s'", file, name);
    if (t->ndim != 2)
        return cli_error("%s: tensor '%s' has %u dimensions, not 2", file, name, t->ndim);
    *out = t;
    return 0;
}

static const char import_usage[] =
    "usage: engram import TABLES.safetensors -o STORE [--config CFG\n"
    "                     (--tokenizer TOK | --projection P.u32 | --compressed-vocab V')]\n"
    "\n"
    "Builds a store from tables made elsewhere (or by `engram export`): one\n"
    "[rows, dim] tensor engram.<layer_id>.weight per layer (F32, BF16, F16, or F8_E4M3\n"
    "with engram.<layer_id>.scale U8 [rows, dim/32]). Every shape must match the spec\n"
    "of the config, and multipliers/primes recorded in the file's metadata must equal\n"
    "the spec's. Without --config, the config, V' and pad come from the metadata.\n"
    "\n"
    "  -c, --config CFG / -t, --tokenizer TOK / -p, --projection P / -V, --compressed-vocab V'\n"
    "  -o, --output STORE    the store to write\n"
    "      --json            the summary as JSON\n";

int cmd_import(int argc, char **argv)
{
    enum { O_JSON = 256 };
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"tokenizer", required_argument, 0, 't'},
                                         {"projection", required_argument, 0, 'p'},
                                         {"compressed-vocab", required_argument, 0, 'V'},
                                         {"output", required_argument, 0, 'o'},
                                         {"json", no_argument, 0, O_JSON},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *config = NULL, *tok = NULL, *proj = NULL, *out = NULL;
    uint64_t vprime = 0;
    int json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:t:p:V:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config = optarg; break;
        case 't': tok = optarg; break;
        case 'p': proj = optarg; break;
        case 'V':
            if (cli_parse_u64(optarg, &vprime) || !vprime)
                return cli_error("--compressed-vocab: '%s' is not a positive count", optarg);
            break;
        case 'o': out = optarg; break;
        case O_JSON: json = 1; break;
        case 'h': fputs(import_usage, stdout); return 0;
        default: fputs(import_usage, stderr); return 2;
        }
    }
    if (optind + 1 != argc || !out)
        return cli_error("usage: engram import TABLES.safetensors -o STORE [--config CFG ...]");
    const char *file = argv[optind];
    eg_err err;
    eg_safetensors *sf = NULL;
    cli_model m;
    memset(&m, 0, sizeof m);
    eg_spec *own_spec = NULL;
    char *rec = NULL;
    int rc = 0;
    if (eg_safetensors_open(file, &sf, &err))
        return cli_fail(&err);
    const char *mcfg = eg_safetensors_meta(sf, "config");
    const eg_spec *spec;
    if (config) {
        if ((rc = cli_model_load_tok(&m, config, tok, proj, vprime)))
            goto done;
        spec = m.spec;
    } else {
        if (tok || proj || vprime) {
            rc = cli_error("--tokenizer/--projection/--compressed-vocab need --config");
            goto done;
        }
        const char *vs = eg_safetensors_meta(sf, "compressed_vocab_size");
        const char *ps = eg_safetensors_meta(sf, "pad_compressed");
        eg_config cfg;
        if (!mcfg || !vs || !ps) {
            rc = cli_error("%s: no engram config in the metadata: give --config CFG and the "
                           "projection",
                           file);
            goto done;
        }
        if (eg_config_parse(mcfg, strlen(mcfg), file, &cfg, &err) ||
            eg_spec_create(&cfg, strtoull(vs, NULL, 10), strtoll(ps, NULL, 10), &own_spec, &err)) {
            rc = cli_fail(&err);
            goto done;
        }
        spec = own_spec;
    }
    /* metadata arrays, when present, must be the spec's */
    const char *keys3[3] = {"multipliers", "primes", "offsets"};
    for (int k = 0; k < 3; k++) {
        const char *txt = eg_safetensors_meta(sf, keys3[k]);
        if (!txt)
            continue;
        json_t *want = json_array();
        for (uint32_t li = 0; li < eg_spec_n_layers(spec); li++)
            json_array_append_new(want, k == 0 ? i64_array(eg_spec_multipliers(spec, li),
                                                           eg_spec_max_ngram(spec))
                                        : u64_array(k == 1 ? eg_spec_primes(spec, li)
                                                           : eg_spec_offsets(spec, li),
                                                    eg_spec_n_heads(spec)));
        json_t *got = json_loads(txt, 0, NULL);
        int same = got && json_equal(got, want);
        json_decref(got);
        json_decref(want);
        if (!same) {
            rc = cli_error("%s: the %s in its metadata differ from the config's spec", file,
                           keys3[k]);
            goto done;
        }
    }
    import_src src = {.dim = eg_spec_head_dim(spec)};
    const char *dts0 = NULL;
    for (uint32_t li = 0; li < eg_spec_n_layers(spec); li++) {
        char name[64];
        const uint32_t lid = eg_spec_config(spec)->layer_ids[li];
        snprintf(name, sizeof name, "engram.%u.weight", lid);
        const eg_st_tensor *tw;
        if ((rc = st_tensor(sf, file, name, &tw)))
            goto done;
        const char *dts = tw->dtype;
        const uint64_t *shape = tw->shape;
        eg_dtype dt;
        if (!strcmp(dts, "F32")) dt = EG_F32;
        else if (!strcmp(dts, "BF16")) dt = EG_BF16;
        else if (!strcmp(dts, "F16")) dt = EG_F16;
        else if (!strcmp(dts, "F8_E4M3")) dt = EG_FP8_E4M3;
        else {
            rc = cli_error("%s: tensor '%s' has dtype %s (F32, BF16, F16 or F8_E4M3)", file, name, dts);
            goto done;
        }
        if (dts0 && strcmp(dts0, dts)) {
            rc = cli_error("%s: tensor '%s' is %s, an earlier layer is %s", file, name, dts, dts0);
            goto done;
        }
        dts0 = dts;
        src.dt = dt;
        src.rb = eg_dtype_row_bytes(dt, src.dim);
        const uint64_t rows = eg_spec_layer_rows(spec, li);
        if (shape[0] != rows || shape[1] != src.dim || !src.rb) {
            rc = cli_error("%s: tensor '%s' is [%llu, %llu]; the spec needs [%llu, %u]", file, name,
                           (unsigned long long)shape[0], (unsigned long long)shape[1],
                           (unsigned long long)rows, src.dim);
            goto done;
        }
        src.w[li] = tw->data;
        if (dt == EG_FP8_E4M3) {
            snprintf(name, sizeof name, "engram.%u.scale", lid);
            const eg_st_tensor *ts;
            if ((rc = st_tensor(sf, file, name, &ts)))
                goto done;
            if (strcmp(ts->dtype, "U8") || ts->shape[0] != rows ||
                ts->shape[1] != src.dim / EG_FP8_GROUP) {
                rc = cli_error("%s: tensor '%s' must be U8 [%llu, %u]", file, name,
                               (unsigned long long)rows, src.dim / EG_FP8_GROUP);
                goto done;
            }
            src.sc[li] = ts->data;
        }
    }
    rec = build_record("import", config, tok, NULL, file);
    const char *ss = eg_safetensors_meta(sf, "init_seed");
    const char *sd = eg_safetensors_meta(sf, "init_std");
    eg_store_params p = {.spec = spec,
                         .projection = m.proj,
                         .n_projection = m.n_proj,
                         .tokenizer_sha256 = m.tok_sha[0] ? m.tok_sha : NULL,
                         .projection_sha256 = m.proj_sha[0] ? m.proj_sha : NULL,
                         .dtype = src.dt,
                         .seed = ss ? strtoull(ss, NULL, 10) : 0,
                         .init_std = sd ? strtod(sd, NULL) : 0,
                         .rows = import_rows,
                         .rows_ctx = &src,
                         .build_json = rec};
    if (!config) {
        const char *t = eg_safetensors_meta(sf, "tokenizer_sha256");
        const char *q = eg_safetensors_meta(sf, "projection_sha256");
        p.tokenizer_sha256 = t && strlen(t) == 64 ? t : NULL;
        p.projection_sha256 = q && strlen(q) == 64 ? q : NULL;
    }
    eg_store_build_stats bs;
    if (eg_store_build(out, &p, &bs, &err)) {
        rc = cli_fail(&err);
        goto done;
    }
    print_build_summary(out, spec, src.dt, &bs, json);
done:
    free(rec);
    eg_spec_free(own_spec);
    cli_model_free(&m);
    eg_safetensors_close(sf);
    return rc;
}
