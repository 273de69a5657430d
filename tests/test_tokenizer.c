/* test_tokenizer.c - the key normalizer, tokenizer loading and decoding, and
 * the projection against the golden files. */
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include <zlib.h>

#include "engram/engram.h"
#include "engram/eg_tokenizer.h"
#include "test.h"

/* Expected values printed by HF tokenizers 0.23.2 (the npm package) running
 * the reference's normalizer Sequence (NFKC, NFD, StripAccents, Lowercase,
 * Replace [ \t\r\n]+, Replace ^ $ -> U+E000, Strip, Replace U+E000 -> " "). */
static const char *const norm_cases[][2] = {
    {"\xEF\xBC\xA1\xEF\xBC\xA2\xEF\xBC\xA3\xEF\xBC\x91\xEF\xBC\x92\xEF\xBC\x93", "abc123"},
    {"\xEF\xAC\x81", "fi"},                                   /* ligature fi */
    {"\xEF\xAC\x80", "ff"},                                   /* ligature ff */
    {"\xC4\xB0stanbul", "istanbul"},                          /* Turkish dotted I */
    {"I", "i"},
    {"\xC4\xB1", "\xC4\xB1"},                                 /* dotless i stays */
    {"\xCE\xA3", "\xCF\x83"},                                 /* Sigma -> sigma */
    {"\xCE\xA3\xCE\x91\xCE\xA3", "\xCF\x83\xCE\xB1\xCF\x83"}, /* no final-sigma rule */
    {"\xCF\x82", "\xCF\x82"},                                 /* final sigma stays */
    {"caf\xC3\xA9", "cafe"},
    {"cafe\xCC\x81", "cafe"},                                 /* combining acute */
    {"\xC7\x84", "dz"},                                       /* DZ with caron */
    {"\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E", "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E"}, /* CJK */
    {"\xC2\xA0" "a\xC2\xA0", "a"},                            /* NBSP -> space, stripped */
    {"\xE3\x80\x80x\xE3\x80\x80", "x"},                       /* ideographic space */
    {" ", " "},
    {"  ", " "},
    {"\t", " "},
    {"\n\n", " "},
    {" a  b ", "a b"},
    {"\xEE\x80\x80", " "},                                    /* U+E000 is the sentinel */
    {"a\xEE\x80\x80", "a "},
    {"\xEA\x9F\xB2", "\xEA\x9F\xB2"},                         /* U+A7F2: after Unicode 9.0 */
    {"\xE1\xBA\x9E", "\xC3\x9F"},                             /* capital sharp s */
    {"\xC3\x9F", "\xC3\x9F"},                                 /* no case folding to ss */
    {"\xE2\x84\xAB", "a"},                                    /* Angstrom sign */
    {"\xE2\x84\xA6", "\xCF\x89"},                             /* Ohm sign */
    {"x\xCD\x85", "x"},                                       /* ypogegrammeni is a mark */
    {"\xC7\x85", "dz"},
    {"\xEF\xBE\x8A\xEF\xBE\x9F", "\xE3\x83\x8F"},             /* half-width katakana + mark */
    {"\xE2\x91\xA0", "1"},                                    /* circled one */
    {"\xE3\x8E\x8F", "kg"},
    {"\xE2\x80\x8B", "\xE2\x80\x8B"},                         /* zero width space stays */
    {"\xE1\x9A\x80" "a", "a"},                                /* ogham space mark */
    {"\xE0\xB8\xB4", ""},                                     /* a lone Thai vowel mark */
    {"\xE0\xB8\x81\xE0\xB8\xB4", "\xE0\xB8\x81"},
    {" \xC2\xA0 ", " "},
    {"\xE2\x80\xA8", ""},                                     /* line separator: stripped */
    {"a\xCC\x81\xCC\x82", "a"},
    {"\xE1\xBE\x88", "\xCE\xB1"},                             /* Greek with prosgegrammeni */
    {"\xC2\xAD", "\xC2\xAD"},                                 /* soft hyphen stays */
    {"\xE2\x85\xA0", "i"},                                    /* Roman numeral one */
};

TEST(normalizer_matches_hf_on_edge_cases)
{
    char out[256];
    for (size_t i = 0; i < sizeof norm_cases / sizeof norm_cases[0]; i++) {
        size_t n = 0;
        eg_err err;
        eg_status st = eg_normalize_key(norm_cases[i][0], strlen(norm_cases[i][0]), out,
                                        sizeof out, &n, &err);
        CHECK_MSG(st == EG_OK, "case %zu: %s", i, err.msg);
        CHECK_MSG(n == strlen(norm_cases[i][1]) && !memcmp(out, norm_cases[i][1], n),
                  "case %zu: got '%.*s' want '%s'", i, (int)n, out, norm_cases[i][1]);
    }
}

/* The ASCII fast path agrees with the ICU path: a leading combining mark
 * forces the ICU path and is removed by it, leaving the same text. */
TEST(normalizer_ascii_fast_path_equals_icu_path)
{
    static const char alphabet[] = " \t\r\n\v\fAbZz09.-\x1f\x7f";
    uint64_t rs = 3;
    char s[40], m[48], a[64], b[64];
    for (int trial = 0; trial < 20000; trial++) {
        size_t n = (size_t)(t_rand(&rs) % 12);
        for (size_t i = 0; i < n; i++)
            s[i] = alphabet[t_rand(&rs) % (sizeof alphabet - 1)];
        memcpy(m, "\xCC\x81", 2);
        memcpy(m + 2, s, n);
        size_t na = 0, nb = 0;
        REQUIRE(eg_normalize_key(s, n, a, sizeof a, &na, NULL) == EG_OK);
        REQUIRE(eg_normalize_key(m, n + 2, b, sizeof b, &nb, NULL) == EG_OK);
        if (na != nb || memcmp(a, b, na)) {
            CHECK_MSG(0, "ascii '%.*s': fast '%.*s' icu '%.*s'", (int)n, s, (int)na, a, (int)nb,
                      b);
            return;
        }
    }
}

TEST(normalizer_rejects_invalid_utf8_and_reports_capacity)
{
    char out[8];
    size_t n;
    eg_err err;
    CHECK(eg_normalize_key("\xC3", 1, out, sizeof out, &n, &err) == EG_EFORMAT);
    CHECK(eg_normalize_key("\xED\xA0\x80", 3, out, sizeof out, &n, &err) == EG_EFORMAT);
    CHECK(eg_normalize_key("ABCDEFGHIJKL", 12, out, sizeof out, &n, &err) == EG_ECAPACITY);
    CHECK_EQ(n, 12);
    CHECK(eg_normalize_key("", 0, out, sizeof out, &n, &err) == EG_OK);
    CHECK_EQ(n, 0);
}

/* ---- goldens -------------------------------------------------------------- */

static int same_file_bytes(const uint32_t *map, size_t n, const char *golden)
{
    size_t len;
    unsigned char *g = t_read_file(golden, &len);
    if (!g || len != n * 4) {
        free(g);
        return 0;
    }
    int same = 1;
    for (size_t i = 0; i < n && same; i++)
        same = (uint32_t)(g[4 * i] | g[4 * i + 1] << 8 | g[4 * i + 2] << 16 |
                          (uint32_t)g[4 * i + 3] << 24) == map[i];
    free(g);
    return same;
}

/* The keys in a golden .keys.jsonl.gz, compared with ours after decoding the
 * JSON strings (so escapes do not matter here). */
static size_t compare_keys(const eg_vocab_projection *p, const char *gz)
{
    gzFile f = gzopen(gz, "rb");
    if (!f)
        return (size_t)-1;
    char line[4096];
    size_t k = 0, bad = 0;
    while (gzgets(f, line, sizeof line)) {
        json_error_t je;
        json_t *s = json_loads(line, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        size_t kl;
        const char *key = eg_projection_key(p, (uint32_t)k, &kl);
        if (!s || !key || json_string_length(s) != kl || memcmp(json_string_value(s), key, kl)) {
            if (bad++ < 3)
                printf("    key %zu differs: golden %s", k, line);
        }
        json_decref(s);
        k++;
    }
    gzclose(f);
    return k == eg_projection_compressed_size(p) ? bad : bad + 1;
}

static void golden_projection(const char *tokenizer, const char *golden, const char *keys,
                              size_t V, uint64_t Vp)
{
    eg_tokenizer *tok = NULL;
    eg_err err;
    if (eg_tokenizer_open(t_shared_path(tokenizer), &tok, &err) != EG_OK) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    CHECK_EQ(eg_tokenizer_vocab_size(tok), V);
    eg_vocab_projection *p = NULL;
    REQUIRE(eg_projection_build(tok, &p, &err) == EG_OK);
    CHECK_EQ(eg_projection_compressed_size(p), Vp);
    size_t n;
    const uint32_t *map = eg_projection_map(p, &n);
    CHECK_EQ(n, V);
    CHECK_MSG(same_file_bytes(map, n, t_shared_path(golden)), "%s differs from %s", tokenizer,
              golden);
    CHECK_EQ(compare_keys(p, t_shared_path(keys)), 0);
    uint64_t vp2;
    CHECK(eg_projection_vprime(map, n, "map", &vp2, NULL) == EG_OK && vp2 == Vp);
    eg_projection_free(p);
    eg_tokenizer_free(tok);
}

TEST(golden_projection_deepseek_v3)
{
    if (!t_shared())
        SKIP("../shared absent");
    golden_projection("data/tokenizers/deepseek-v3.tokenizer.json",
                      "golden/deepseek-v3.projection.u32", "golden/deepseek-v3.keys.jsonl.gz",
                      128815, 98627);
}

TEST(golden_projection_mistral_json)
{
    if (!t_shared())
        SKIP("../shared absent");
    golden_projection("data/tokenizers/mistral-v03.tokenizer.json",
                      "golden/mistral-v03.projection.u32", "golden/mistral-v03.keys.jsonl.gz",
                      32768, 21832);
}

TEST(golden_projection_mistral_sentencepiece_model)
{
    if (!t_shared())
        SKIP("../shared absent");
    golden_projection("data/tokenizers/mistral-v03.model", "golden/mistral-v03.projection.u32",
                      "golden/mistral-v03.keys.jsonl.gz", 32768, 21832);
}

static int decode_is(const eg_tokenizer *tok, uint32_t id, const char *want)
{
    char buf[256];
    size_t n;
    return eg_tokenizer_decode_id(tok, id, buf, sizeof buf, &n) == EG_OK && n == strlen(want) &&
           !memcmp(buf, want, n);
}

static int find_piece(const eg_tokenizer *tok, const char *s, uint32_t *id)
{
    for (uint32_t i = 0; i < eg_tokenizer_vocab_size(tok); i++) {
        const char *p;
        size_t n;
        eg_tokenizer_piece(tok, i, &p, &n);
        if (n == strlen(s) && !memcmp(p, s, n)) {
            *id = i;
            return 1;
        }
    }
    return 0;
}

/* The .model and the tokenizer.json of Mistral decode every id identically,
 * and single-id decodes follow HF's decoders. */
TEST(decode_sentencepiece_equals_tokenizer_json)
{
    if (!t_shared())
        SKIP("../shared absent");
    eg_tokenizer *a = NULL, *b = NULL;
    REQUIRE(eg_tokenizer_open(t_shared_path("data/tokenizers/mistral-v03.model"), &a, NULL) ==
            EG_OK);
    REQUIRE(eg_tokenizer_open(t_shared_path("data/tokenizers/mistral-v03.tokenizer.json"), &b,
                              NULL) == EG_OK);
    CHECK(eg_tokenizer_get_kind(a) == EG_TOKENIZER_SPM);
    CHECK(eg_tokenizer_get_kind(b) == EG_TOKENIZER_HF_JSON);
    char x[512], y[512];
    size_t nx, ny, diff = 0;
    for (uint32_t id = 0; id < eg_tokenizer_vocab_size(a); id++) {
        if (eg_tokenizer_decode_id(a, id, x, sizeof x, &nx) ||
            eg_tokenizer_decode_id(b, id, y, sizeof y, &ny) || nx != ny || memcmp(x, y, nx))
            diff++;
    }
    CHECK_EQ(diff, 0);
    uint32_t id;
    REQUIRE(find_piece(a, "\xE2\x96\x81the", &id));
    CHECK(decode_is(a, id, "the")); /* one leading space stripped */
    REQUIRE(find_piece(a, "<0x41>", &id));
    CHECK(decode_is(a, id, "A"));
    CHECK(eg_tokenizer_flags(a, id) & EG_PIECE_BYTE);
    REQUIRE(find_piece(a, "<0xE2>", &id));
    CHECK(decode_is(a, id, "\xEF\xBF\xBD")); /* a lone invalid byte */
    CHECK(decode_is(a, 1, "<s>"));           /* control pieces decode to their text */
    CHECK(eg_tokenizer_flags(a, 1) & EG_PIECE_CONTROL);
    CHECK(eg_tokenizer_flags(a, 0) & EG_PIECE_UNKNOWN);
    CHECK(eg_tokenizer_flags(b, 1) & EG_PIECE_SPECIAL);
    char small[2];
    CHECK(eg_tokenizer_decode_id(a, 1, small, sizeof small, &nx) == EG_ECAPACITY && nx == 3);
    CHECK(eg_tokenizer_decode_id(a, 40000, small, sizeof small, &nx) == EG_ERANGE);
    eg_tokenizer_free(a);
    eg_tokenizer_free(b);
}

TEST(decode_bytelevel_deepseek)
{
    if (!t_shared())
        SKIP("../shared absent");
    eg_tokenizer *t = NULL;
    REQUIRE(eg_tokenizer_open(t_shared_path("data/tokenizers/deepseek-v3.tokenizer.json"), &t,
                              NULL) == EG_OK);
    uint32_t id;
    REQUIRE(find_piece(t, "\xC4\xA0the", &id)); /* "Ġthe" */
    CHECK(decode_is(t, id, " the"));
    REQUIRE(find_piece(t, "\xC4\x8A", &id)); /* "Ċ" */
    CHECK(decode_is(t, id, "\n"));
    /* an added token with characters outside the byte map passes as is */
    CHECK(decode_is(t, 0, "<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"));
    CHECK(eg_tokenizer_flags(t, 0) & EG_PIECE_SPECIAL);
    /* a piece that is half of a UTF-8 sequence decodes lossily */
    REQUIRE(find_piece(t, "\xC3\xA6", &id)); /* "æ" is byte 0xE6 alone */
    CHECK(decode_is(t, id, "\xEF\xBF\xBD"));
    uint8_t sha[32];
    char hex[65];
    eg_tokenizer_sha256(t, sha);
    eg_sha256_hex(sha, hex);
    CHECK_EQ(strlen(hex), 64);
    eg_tokenizer_free(t);
}

/* ---- bad tokenizers --------------------------------------------------------- */

TEST(tokenizer_bad_inputs)
{
    static const struct {
        const char *name, *text, *expect;
        eg_status code;
    } cases[] = {
        {"trunc.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0", "not a valid tokenizer.json", EG_EFORMAT},
        {"notok.json", "{\"hello\": 1}", "no 'model' object", EG_EFORMAT},
        {"wp.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}", "model type 'WordPiece' is not supported", EG_EUNSUPPORTED},
        {"dec.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"decoder\": {\"type\": \"CTC\"}}", "decoder type 'CTC' is not supported", EG_EUNSUPPORTED},
        {"badid.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -4}, \"merges\": []}}", "not a valid id", EG_EFORMAT},
        {"sparse.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 4000000000}, \"merges\": []}}", "far beyond the 2 vocabulary entries", EG_EFORMAT},
        {"sparseadd.json", "{\"added_tokens\": [{\"id\": 3999999999, \"content\": \"<x>\"}], \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}", "far beyond", EG_EFORMAT},
        {"surrogate.json", "{\"model\": {\"type\": \"BPE\", \"merges\": [], \"vocab\": {\"\\ud800\": 0}}}", "not a valid tokenizer.json", EG_EFORMAT},
        {"junk.model", "\x01\x02garbage that is no protobuf\xff\xff\xff", "neither a tokenizer.json nor a SentencePiece model", EG_EFORMAT},
        {"empty.model", "", "empty file", EG_EFORMAT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = t_tmp_path(cases[i].name);
        REQUIRE(t_write_file(path, cases[i].text, strlen(cases[i].text)) == 0);
        eg_tokenizer *t = (eg_tokenizer *)(uintptr_t)&cases; /* must be reset to NULL */
        eg_err err = {0};
        eg_status st = eg_tokenizer_open(path, &t, &err);
        CHECK_MSG(st == cases[i].code, "case %zu: status %d (%s)", i, st, err.msg);
        CHECK_MSG(t == NULL, "case %zu: handle not NULL on failure", i);
        CHECK_MSG(strstr(err.msg, cases[i].expect) != NULL, "case %zu: '%s' lacks '%s'", i,
                  err.msg, cases[i].expect);
        CHECK_MSG(strstr(err.msg, cases[i].name) != NULL, "case %zu: '%s' names no file", i,
                  err.msg);
    }
    eg_tokenizer *t = NULL;
    eg_err err;
    CHECK(eg_tokenizer_open("/nonexistent/tok.json", &t, &err) == EG_EIO);
    eg_tokenizer_free(NULL);
    eg_projection_free(NULL);
}

/* A tiny tokenizer.json of our own: ByteLevel pieces whose bytes are not
 * UTF-8 get their raw token as key; equal normalized texts merge. */
TEST(projection_small_tokenizer_rules)
{
    const char *js =
        "{\"added_tokens\":[{\"id\":5,\"content\":\"<S>\",\"special\":true}],"
        "\"decoder\":{\"type\":\"ByteLevel\"},"
        "\"model\":{\"type\":\"BPE\",\"merges\":[],\"vocab\":{"
        "\"A\":0,\"a\":1,\"\xC4\xA0" "a\":2,\"\xC3\xA6\":3,\"\xC4\xA0\":4}}}";
    const char *path = t_tmp_path("small.json");
    REQUIRE(t_write_file(path, js, strlen(js)) == 0);
    eg_tokenizer *t = NULL;
    eg_err err;
    REQUIRE(eg_tokenizer_open(path, &t, &err) == EG_OK);
    eg_vocab_projection *p = NULL;
    REQUIRE(eg_projection_build(t, &p, &err) == EG_OK);
    size_t n, kl;
    const uint32_t *map = eg_projection_map(p, &n);
    REQUIRE(n == 6);
    CHECK_EQ(map[0], 0); /* "A" -> "a" */
    CHECK_EQ(map[1], 0); /* "a" */
    CHECK_EQ(map[2], 0); /* " a" -> "a" */
    CHECK_EQ(map[3], 1); /* byte 0xE6 alone: lossy, raw token "æ" */
    CHECK_EQ(map[4], 2); /* " " stays one space */
    CHECK_EQ(map[5], 3); /* "<S>" -> "<s>" */
    CHECK_EQ(eg_projection_compressed_size(p), 4);
    const char *k = eg_projection_key(p, 1, &kl);
    CHECK(kl == 2 && !memcmp(k, "\xC3\xA6", 2));
    k = eg_projection_key(p, 2, &kl);
    CHECK(kl == 1 && k[0] == ' ');
    CHECK_EQ(eg_projection_group_size(p, 0), 3);
    CHECK(eg_projection_key(p, 9, &kl) == NULL);
    eg_projection_free(p);
    eg_tokenizer_free(t);
}

TEST(cli_vocab_golden_and_bad_input)
{
    if (t_shared()) {
        const char *out = t_tmp_path("mv.u32");
        REQUIRE(t_cli("vocab %s -o %s --keys %s --json",
                      t_shared_path("data/tokenizers/mistral-v03.model"), out,
                      t_tmp_path("mv.keys")) == 0);
        CHECK(strstr(t_cli_stdout(), "\"compressed_vocab_size\": 21832"));
        size_t a, b;
        void *x = t_read_file(out, &a);
        void *y = t_read_file(t_shared_path("golden/mistral-v03.projection.u32"), &b);
        CHECK(x && y && a == b && !memcmp(x, y, a));
        free(x);
        free(y);
        /* the projection feeds engram hash */
        uint32_t ids[4] = {1, 2, 3, 32767};
        REQUIRE(t_write_file(t_tmp_path("v.ids"), ids, sizeof ids) == 0);
        CHECK(t_cli("hash -c configs/demo.json -p %s -i %s -T 4 -l 1 -o %s -q", out,
                    t_tmp_path("v.ids"), t_tmp_path("v.out")) == 0);
    }
    REQUIRE(t_write_file(t_tmp_path("bad.json"), "{\"model\": 3", 11) == 0);
    int rc = t_cli("vocab %s -o %s", t_tmp_path("bad.json"), t_tmp_path("vbad.u32"));
    CHECK(rc != 0 && rc < 128);
    CHECK(strstr(t_cli_stderr(), "bad.json"));
    CHECK(!t_file_exists(t_tmp_path("vbad.u32")));
    CHECK(t_cli("vocab --help") == 0);
    CHECK(t_cli("vocab") != 0);
}
