/* cmd_vocab.c - `engram vocab`: the vocabulary projection of a tokenizer. */
#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "engram/eg_tokenizer.h"

static const char vocab_usage[] =
    "usage: engram vocab TOKENIZER -o P.u32 [--keys K.jsonl] [--top N] [--json]\n"
    "\n"
    "Build the vocabulary projection P: V -> V' of a tokenizer exactly as the\n"
    "reference does: each id's decoded text, normalized (NFKC, NFD, marks removed,\n"
    "lowercase, whitespace runs folded, stripped), is its key; ids with equal keys\n"
    "share a compressed id, numbered in first-seen order. TOKENIZER is a HuggingFace\n"
    "tokenizer.json or a SentencePiece .model (recognized from its contents).\n"
    "\n"
    "  -o, --output P.u32   the projection: one little-endian uint32 per raw id\n"
    "  -k, --keys K.jsonl   also write the keys, one JSON string a line, by new id\n"
    "  -n, --top N          show the N largest merge groups (default 10)\n"
    "      --json           the summary as JSON on stdout\n"
    "  -h, --help           this text\n";

/* A key as a JSON string (valid UTF-8 assumed; replaced when not). */
static char *json_quote(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    if (!j)
        j = json_string("\xEF\xBF\xBD");
    char *out = json_dumps(j, JSON_ENCODE_ANY);
    json_decref(j);
    /* Python's json.dumps writes \u escapes in lowercase hex: match it, so
     * key files compare byte for byte with the reference's. */
    for (char *q = out; q && (q = strstr(q, "\\u")) != NULL; q += 2)
        for (int i = 2; i < 6 && q[i]; i++)
            if (q[i] >= 'A' && q[i] <= 'F')
                q[i] = (char)(q[i] - 'A' + 'a');
    return out;
}

typedef struct {
    uint32_t cid, count;
} group;

static int by_count(const void *a, const void *b)
{
    const group *x = a, *y = b;
    if (x->count != y->count)
        return x->count < y->count ? 1 : -1;
    return x->cid < y->cid ? -1 : x->cid > y->cid;
}

int cmd_vocab(int argc, char **argv)
{
    static const struct option opts[] = {{"output", required_argument, 0, 'o'},
                                         {"keys", required_argument, 0, 'k'},
                                         {"top", required_argument, 0, 'n'},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *output = NULL, *keys = NULL;
    uint64_t top = 10;
    int json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:k:n:h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': output = optarg; break;
        case 'k': keys = optarg; break;
        case 'n':
            if (cli_parse_u64(optarg, &top) || top > 100000)
                return cli_error("--top: '%s' is not a count", optarg);
            break;
        case 'j': json = 1; break;
        case 'h': fputs(vocab_usage, stdout); return 0;
        default: fputs(vocab_usage, stderr); return 2;
        }
    }
    if (optind != argc - 1)
        return cli_error("give one TOKENIZER file (see engram vocab --help)");
    if (!output)
        return cli_error("-o P.u32 is required");
    const char *path = argv[optind];
    eg_err err;
    double t0 = cli_now();
    eg_tokenizer *tok = NULL;
    if (eg_tokenizer_open(path, &tok, &err))
        return cli_fail(&err);
    double t1 = cli_now();
    eg_vocab_projection *p = NULL;
    if (eg_projection_build(tok, &p, &err)) {
        eg_tokenizer_free(tok);
        return cli_error("%s: %s", path, err.msg);
    }
    double t2 = cli_now();
    size_t n;
    const uint32_t *map = eg_projection_map(p, &n);
    const uint64_t vp = eg_projection_compressed_size(p);
    int rc = 0;
    cli_out o = {0}, ko = {0};
    if ((rc = cli_out_open(&o, output)))
        goto done;
    for (size_t i = 0; i < n && !rc; i++) {
        unsigned char le[4] = {(unsigned char)map[i], (unsigned char)(map[i] >> 8),
                               (unsigned char)(map[i] >> 16), (unsigned char)(map[i] >> 24)};
        rc = cli_out_write(&o, le, 4);
    }
    if (keys && !rc && !(rc = cli_out_open(&ko, keys))) {
        for (uint32_t k = 0; k < vp && !rc; k++) {
            size_t kl;
            const char *key = eg_projection_key(p, k, &kl);
            char *q = json_quote(key, kl);
            rc = q ? cli_out_write(&ko, q, strlen(q)) : cli_error("out of memory");
            if (!rc)
                rc = cli_out_write(&ko, "\n", 1);
            free(q);
        }
        if (!rc)
            rc = cli_out_commit(&ko);
        else
            cli_out_abort(&ko);
    }
    if (!rc)
        rc = cli_out_commit(&o);
    else
        cli_out_abort(&o);
    if (rc)
        goto done;

    /* The largest merge groups, with examples. */
    group *g = malloc(vp * sizeof *g);
    if (!g) {
        rc = cli_error("out of memory");
        goto done;
    }
    for (uint32_t k = 0; k < vp; k++)
        g[k] = (group){k, eg_projection_group_size(p, k)};
    qsort(g, vp, sizeof *g, by_count);
    size_t shown = top < vp ? (size_t)top : (size_t)vp;
    uint8_t fsha[32], psha[32];
    char fhex[65], phex[65];
    eg_tokenizer_sha256(tok, fsha);
    eg_projection_sha256(p, psha);
    eg_sha256_hex(fsha, fhex);
    eg_sha256_hex(psha, phex);
    const double red = 100.0 * (1.0 - (double)vp / (double)n);
    json_t *root = json ? json_object() : NULL, *groups = json ? json_array() : NULL;
    if (!json) {
        printf("tokenizer   %s\n            %s\n", path, eg_tokenizer_describe(tok));
        printf("vocabulary  V = %zu -> V' = %llu (%.3f%% fewer)\n", n, (unsigned long long)vp,
               red);
        printf("sha256      tokenizer %s\n            projection %s\n", fhex, phex);
        printf("time        load %.3f s, projection %.3f s\n", t1 - t0, t2 - t1);
        if (shown)
            printf("largest merge groups:\n  %8s  %-24s %s\n", "ids", "key", "examples (raw tokens)");
    }
    for (size_t i = 0; i < shown; i++) {
        size_t kl;
        const char *key = eg_projection_key(p, g[i].cid, &kl);
        char *qk = json_quote(key, kl);
        json_t *ex = json ? json_array() : NULL;
        if (!json)
            printf("  %8u  %-24s", g[i].count, qk ? qk : "?");
        int shown_ex = 0;
        for (size_t id = 0; id < n && shown_ex < 6; id++) {
            if (map[id] != g[i].cid)
                continue;
            const char *pt;
            size_t pl;
            eg_tokenizer_piece(tok, (uint32_t)id, &pt, &pl);
            if (json) {
                json_t *js = json_stringn(pt, pl);
                json_array_append_new(ex, js ? js : json_string("\xEF\xBF\xBD"));
            } else {
                char *qp = json_quote(pt, pl);
                printf(" %s", qp ? qp : "?");
                free(qp);
            }
            shown_ex++;
        }
        if (json) {
            json_t *gj = json_object();
            json_object_set_new(gj, "key", json_stringn(key, kl));
            json_object_set_new(gj, "ids", json_integer(g[i].count));
            json_object_set_new(gj, "examples", ex);
            json_array_append_new(groups, gj);
        } else {
            printf("%s\n", g[i].count > 6 ? " ..." : "");
        }
        free(qk);
    }
    free(g);
    if (json) {
        json_object_set_new(root, "tokenizer", json_string(path));
        json_object_set_new(root, "kind", json_string(eg_tokenizer_get_kind(tok) ==
                                                              EG_TOKENIZER_SPM
                                                          ? "sentencepiece"
                                                          : "tokenizer.json"));
        json_object_set_new(root, "vocab_size", json_integer((json_int_t)n));
        json_object_set_new(root, "compressed_vocab_size", json_integer((json_int_t)vp));
        json_object_set_new(root, "reduction", json_real(red / 100.0));
        json_object_set_new(root, "tokenizer_sha256", json_string(fhex));
        json_object_set_new(root, "projection_sha256", json_string(phex));
        json_object_set_new(root, "output", json_string(output));
        json_object_set_new(root, "seconds_load", json_real(t1 - t0));
        json_object_set_new(root, "seconds_projection", json_real(t2 - t1));
        json_object_set_new(root, "largest_groups", groups);
        json_dumpf(root, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        fputc('\n', stdout);
        json_decref(root);
    }
done:
    eg_projection_free(p);
    eg_tokenizer_free(tok);
    return rc;
}
