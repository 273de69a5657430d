/* cmd_hash.c - `engram hash`: raw ids -> head indices (or rows), streamed. */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

static const char hash_usage[] =
    "usage: engram hash --config CFG (--projection P.u32 | --compressed-vocab V')\n"
    "                   --ids IDS.u32 --seq-len T [--layer L] -o OUT.u32 [options]\n"
    "\n"
    "Hash token ids exactly as the reference does. IDS.u32 holds raw token ids\n"
    "(little-endian uint32); with --projection they are mapped to compressed ids first,\n"
    "with --compressed-vocab they are taken as compressed already. The stream is cut\n"
    "into sequences of T tokens (a shorter last one is allowed), each left-padded with\n"
    "the projected pad id. OUT.u32 receives, per token, (N-1)*K uint32 head indices\n"
    "(orders ascending, heads ascending), or with --offsets the rows of the layer's\n"
    "table. OUT is written under a temporary name and renamed when complete.\n"
    "\n"
    "  -c, --config CFG          engram config (reference JSON or a HF config.json)\n"
    "  -p, --projection P.u32    vocabulary projection (uint32 per raw id)\n"
    "  -V, --compressed-vocab V  ids are compressed already; V' is their range\n"
    "  -i, --ids IDS.u32         input ids ('-' = stdin)\n"
    "  -T, --seq-len T           tokens per sequence (>= 1)\n"
    "  -l, --layer L             Engram layer id (required when the config has several)\n"
    "  -o, --output OUT.u32      output file ('-' = stdout)\n"
    "      --offsets             add each head's row offset (rows of the layer table)\n"
    "  -t, --threads N           worker threads (default: all cores)\n"
    "      --reference           use the scalar reference implementation (slow)\n"
    "      --show N              print the first N tokens' indices\n"
    "      --json                print the summary as JSON on stdout\n"
    "  -q, --quiet               no progress line and no summary\n"
    "  -h, --help                this text\n";

typedef struct {
    const char *config, *projection, *ids, *output;
    uint64_t vprime, seq_len, show;
    long layer;
    int offsets, threads, reference, json, quiet;
} hash_args;

static int parse_args(int argc, char **argv, hash_args *a)
{
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"projection", required_argument, 0, 'p'},
                                         {"compressed-vocab", required_argument, 0, 'V'},
                                         {"ids", required_argument, 0, 'i'},
                                         {"seq-len", required_argument, 0, 'T'},
                                         {"layer", required_argument, 0, 'l'},
                                         {"output", required_argument, 0, 'o'},
                                         {"offsets", no_argument, 0, 'O'},
                                         {"threads", required_argument, 0, 't'},
                                         {"reference", no_argument, 0, 'R'},
                                         {"show", required_argument, 0, 'S'},
                                         {"json", no_argument, 0, 'j'},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->layer = -1;
    uint64_t v;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:p:V:i:T:l:o:t:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'c': a->config = optarg; break;
        case 'p': a->projection = optarg; break;
        case 'i': a->ids = optarg; break;
        case 'o': a->output = optarg; break;
        case 'O': a->offsets = 1; break;
        case 'R': a->reference = 1; break;
        case 'j': a->json = 1; break;
        case 'q': a->quiet = 1; break;
        case 'V':
            if (cli_parse_u64(optarg, &a->vprime) || a->vprime == 0)
                return cli_error("--compressed-vocab: '%s' is not a positive integer", optarg);
            break;
        case 'T':
            if (cli_parse_u64(optarg, &a->seq_len) || a->seq_len == 0)
                return cli_error("--seq-len: '%s' must be an integer >= 1", optarg);
            break;
        case 'l':
            if (cli_parse_u64(optarg, &v) || v > UINT32_MAX)
                return cli_error("--layer: '%s' is not a layer id", optarg);
            a->layer = (long)v;
            break;
        case 't':
            if (cli_parse_threads(optarg, &a->threads))
                return 1;
            break;
        case 'S':
            if (cli_parse_u64(optarg, &a->show))
                return cli_error("--show: '%s' is not a count", optarg);
            break;
        case 'h': fputs(hash_usage, stdout); return -1;
        default: fputs(hash_usage, stderr); return 2;
        }
    }
    if (optind < argc)
        return cli_error("unexpected argument '%s' (see engram hash --help)", argv[optind]);
    if (!a->ids)
        return cli_error("--ids IDS.u32 is required ('-' reads stdin)");
    if (!a->seq_len)
        return cli_error("--seq-len T is required (tokens per sequence, >= 1)");
    if (!a->output)
        return cli_error("-o OUT.u32 is required ('-' writes stdout)");
    if (!a->projection && !a->vprime && !a->config)
        return cli_error("--config CFG is required");
    return 0;
}

/* Read up to `want` uint32 values; returns the count, 0 at end of input,
 * (size_t)-1 after printing an error. A trailing partial value is an error. */
static size_t read_ids(FILE *f, const char *name, uint32_t *buf, size_t want, uint64_t done)
{
    size_t got = fread(buf, 1, want * 4, f);
    if (ferror(f)) {
        cli_error("%s: read error: %s", name, strerror(errno));
        return (size_t)-1;
    }
    if (got % 4) {
        cli_error("%s: ends with %zu stray bytes after %llu ids: not a uint32 id file", name,
                  got % 4, (unsigned long long)(done + got / 4));
        return (size_t)-1;
    }
    return got / 4;
}

static void show_rows(FILE *to, const uint32_t *ids, const uint32_t *out, size_t n, uint32_t N,
                      uint32_t K, uint64_t first)
{
    for (size_t t = 0; t < n; t++) {
        fprintf(to, "  token %-6llu id %-7u", (unsigned long long)(first + t), ids[t]);
        for (uint32_t g = 2; g <= N; g++) {
            fprintf(to, " | %u-gram", g);
            for (uint32_t j = 0; j < K; j++)
                fprintf(to, " %u", out[t * (N - 1) * K + (g - 2) * K + j]);
        }
        fputc('\n', to);
    }
}

int cmd_hash(int argc, char **argv)
{
    hash_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc)
        return rc < 0 ? 0 : rc;
    cli_model m;
    if ((rc = cli_model_load(&m, a.config, a.projection, a.vprime))) {
        cli_model_free(&m);
        return rc;
    }
    const eg_spec *spec = m.spec;
    const uint32_t n_layers = eg_spec_n_layers(spec);
    int li = 0;
    if (a.layer >= 0) {
        li = eg_spec_layer_index(spec, (uint32_t)a.layer);
        if (li < 0) {
            cli_model_free(&m);
            return cli_error("%s has no Engram layer %ld", a.config, a.layer);
        }
    } else if (n_layers > 1) {
        char list[256] = "";
        size_t o = 0;
        for (uint32_t i = 0; i < n_layers && o + 16 < sizeof list; i++)
            o += (size_t)snprintf(list + o, sizeof list - o, "%s%u", i ? ", " : "",
                                  m.cfg.layer_ids[i]);
        cli_model_free(&m);
        return cli_error("--layer L is required: %s has Engram layers %s", a.config, list);
    }
    const uint32_t H = eg_spec_n_heads(spec);
    const int stdin_in = !strcmp(a.ids, "-");
    FILE *in = stdin_in ? stdin : fopen(a.ids, "rb");
    if (!in) {
        cli_model_free(&m);
        return cli_error("%s: cannot open ids: %s", a.ids, strerror(errno));
    }
    uint64_t in_bytes = 0;
    struct stat st;
    if (!stdin_in && fstat(fileno(in), &st) == 0 && S_ISREG(st.st_mode)) {
        in_bytes = (uint64_t)st.st_size;
        if (in_bytes % 4) {
            fclose(in);
            cli_model_free(&m);
            return cli_error("%s: %llu bytes is not a whole number of uint32 ids", a.ids,
                             (unsigned long long)in_bytes);
        }
        if (in_bytes == 0) {
            fclose(in);
            cli_model_free(&m);
            return cli_error("%s: no ids (empty file)", a.ids);
        }
    }
    /* Chunks of whole sequences, about 1M tokens (at least one sequence). */
    uint64_t seqs_per_chunk = (1u << 20) / a.seq_len;
    if (seqs_per_chunk == 0)
        seqs_per_chunk = 1;
    const size_t chunk = (size_t)(seqs_per_chunk * a.seq_len);
    uint32_t *ids = malloc(chunk * sizeof *ids);
    uint32_t *cid = malloc(chunk * sizeof *cid);
    uint32_t *out = malloc(chunk * (size_t)H * sizeof *out);
    cli_out o = {0};
    if (!ids || !cid || !out) {
        rc = cli_error("out of memory for a chunk of %zu tokens", chunk);
        goto done;
    }
    if ((rc = cli_out_open(&o, a.output)))
        goto done;
    FILE *info = o.is_stdout ? stderr : stdout;
    const int progress = !a.quiet && isatty(STDERR_FILENO);
    uint64_t tokens = 0, shown = 0, last_seq = 0;
    double t0 = cli_now(), hash_s = 0, last_progress = t0;
    eg_err err;
    const uint32_t flags =
        (a.offsets ? EG_HASH_OFFSETS : 0u) | (a.reference ? EG_HASH_REFERENCE : 0u);
    for (;;) {
        size_t n = read_ids(in, a.ids, ids, chunk, tokens);
        if (n == (size_t)-1) {
            rc = 1;
            break;
        }
        if (n == 0)
            break;
        const uint32_t *x = ids;
        if (m.proj) {
            if (eg_project_ids(m.proj, m.n_proj, ids, n, cid, &err)) {
                /* Find the offending id for a message with its absolute position. */
                for (size_t i = 0; i < n; i++)
                    if (ids[i] >= m.n_proj) {
                        rc = cli_error("%s: id %u at token %llu (byte %llu) is outside the "
                                       "projection's %zu raw ids",
                                       a.ids, ids[i], (unsigned long long)(tokens + i),
                                       (unsigned long long)(tokens + i) * 4, m.n_proj);
                        break;
                    }
                break;
            }
            x = cid;
        } else {
            for (size_t i = 0; i < n && !rc; i++)
                if (ids[i] >= m.vprime)
                    rc = cli_error("%s: id %u at token %llu (byte %llu) is >= V' = %llu", a.ids,
                                   ids[i], (unsigned long long)(tokens + i),
                                   (unsigned long long)(tokens + i) * 4,
                                   (unsigned long long)m.vprime);
            if (rc)
                break;
        }
        const size_t full = n / a.seq_len, rest = n % a.seq_len;
        double h0 = cli_now();
        if (full && eg_hash_batch(spec, (uint32_t)li, x, full, a.seq_len, flags, a.threads, out,
                                  chunk * H, &err)) {
            rc = cli_fail(&err);
            break;
        }
        if (rest && eg_hash_batch(spec, (uint32_t)li, x + full * a.seq_len, 1, rest, flags,
                                  a.threads, out + full * a.seq_len * H, rest * H, &err)) {
            rc = cli_fail(&err);
            break;
        }
        hash_s += cli_now() - h0;
        if (rest)
            last_seq = rest;
        if (shown < a.show) {
            size_t k = (size_t)(a.show - shown < n ? a.show - shown : n);
            if (shown == 0)
                fprintf(info, "first %zu tokens, layer %u (compressed id | %s per head):\n", k,
                        m.cfg.layer_ids[li], a.offsets ? "row" : "index");
            show_rows(info, x, out, k, eg_spec_max_ngram(spec), eg_spec_heads_per_ngram(spec),
                      shown);
            shown += k;
        }
        if ((rc = cli_out_write(&o, out, n * (size_t)H * sizeof *out)))
            break;
        tokens += n;
        if (rest && !feof(in)) {
            /* A short read before the end: only the last sequence may be short. */
            int ch = fgetc(in);
            if (ch != EOF) {
                rc = cli_error("%s: short read in the middle of the input", a.ids);
                break;
            }
        }
        double now = cli_now();
        if (progress && now - last_progress > 0.5) {
            last_progress = now;
            fprintf(stderr, "\r  hashed %.1f M tokens", (double)tokens / 1e6);
            if (in_bytes)
                fprintf(stderr, " (%.0f%%)", 400.0 * (double)tokens / (double)in_bytes);
            fprintf(stderr, ", %.1f M tokens/s   ", (double)tokens / (now - t0) / 1e6);
        }
    }
    if (progress && cli_now() - t0 > 0.5)
        fputs("\r\033[K", stderr);
    if (!rc && tokens == 0)
        rc = cli_error("%s: no ids (empty input)", a.ids);
    if (!rc)
        rc = cli_out_commit(&o);
    else
        cli_out_abort(&o);
    if (!rc) {
        fflush(info);
        double secs = cli_now() - t0;
        uint64_t seqs = tokens / a.seq_len + (last_seq ? 1 : 0);
        if (a.json) {
            fprintf(info,
                    "{\"layer_id\": %u, \"tokens\": %llu, \"sequences\": %llu, \"seq_len\": "
                    "%llu, \"last_sequence_tokens\": %llu, \"heads\": %u, \"values\": %llu, "
                    "\"offsets\": %s, \"output\": \"%s\", \"seconds\": %.6f, "
                    "\"hash_seconds\": %.6f, \"tokens_per_second\": %.1f, "
                    "\"hash_tokens_per_second\": %.1f, \"threads\": %d, "
                    "\"peak_rss_mib\": %.1f}\n",
                    m.cfg.layer_ids[li], (unsigned long long)tokens, (unsigned long long)seqs,
                    (unsigned long long)a.seq_len,
                    (unsigned long long)(last_seq ? last_seq : a.seq_len), H,
                    (unsigned long long)(tokens * H), a.offsets ? "true" : "false",
                    o.is_stdout ? "-" : a.output, secs, hash_s,
                    (double)tokens / (secs > 0 ? secs : 1e-9),
                    (double)tokens / (hash_s > 0 ? hash_s : 1e-9), a.threads,
                    cli_peak_rss_mib());
        } else if (!a.quiet) {
            cli_note("hashed %llu tokens (%llu sequences of %llu%s) for layer %u: %u heads, "
                     "%llu %s -> %s\n",
                     (unsigned long long)tokens, (unsigned long long)seqs,
                     (unsigned long long)a.seq_len, last_seq ? ", the last one shorter" : "",
                     m.cfg.layer_ids[li], H, (unsigned long long)(tokens * H),
                     a.offsets ? "rows" : "head indices", o.is_stdout ? "stdout" : a.output);
            cli_note("time %.3f s (hashing %.3f s), %.2f M tokens/s, peak memory %.1f MiB\n",
                     secs, hash_s, (double)tokens / (secs > 0 ? secs : 1e-9) / 1e6,
                     cli_peak_rss_mib());
        }
    }
done:
    if (!stdin_in && in)
        fclose(in);
    free(ids);
    free(cid);
    free(out);
    cli_model_free(&m);
    return rc;
}
