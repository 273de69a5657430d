/* test_prep.c - corpus readers, shard formats and the prep pipeline. */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "engram/engram.h"
#include "engram/eg_prep.h"
#include "engram/eg_tokenizer.h"
#include "test.h"

static eg_tokenizer *open_tok(const char *rel)
{
    eg_tokenizer *t = NULL;
    eg_err err;
    if (eg_tokenizer_open(t_shared_path(rel), &t, &err)) {
        printf("    %s\n", err.msg);
        return NULL;
    }
    return t;
}

static int file_equals(const char *a, const char *b)
{
    size_t na, nb;
    void *x = t_read_file(a, &na), *y = t_read_file(b, &nb);
    int same = x && y && na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return same;
}

/* Encode a file's whole text in one call with the library. */
static uint32_t *encode_file(const eg_tokenizer *t, const char *path, size_t *n)
{
    size_t len;
    char *text = t_read_file(path, &len);
    if (!text)
        return NULL;
    uint32_t *ids = malloc((len + 2) * sizeof *ids);
    eg_err err;
    if (!ids || eg_tokenizer_encode(t, text, len, 0, ids, len + 2, n, &err)) {
        printf("    encode %s: %s\n", path, ids ? err.msg : "oom");
        free(ids);
        ids = NULL;
    }
    free(text);
    return ids;
}

static int ids_equal_golden(const uint32_t *ids, size_t n, const char *golden)
{
    size_t len;
    uint32_t *g = t_read_file(golden, &len);
    int same = g && len == n * 4 && !memcmp(g, ids, len);
    free(g);
    return same;
}

TEST(encode_golden_tinyshakespeare_hf)
{
    if (!t_shared())
        SKIP("../shared absent");
    static const char *const cases[][2] = {
        {"data/tokenizers/deepseek-v3.tokenizer.json", "golden/tinyshakespeare.deepseek-v3.ids.u32"},
        {"data/tokenizers/mistral-v03.tokenizer.json",
         "golden/tinyshakespeare.mistral-v03-json.ids.u32"}};
    for (int c = 0; c < 2; c++) {
        eg_tokenizer *t = open_tok(cases[c][0]);
        REQUIRE(t);
        CHECK(eg_tokenizer_can_encode(t, NULL) == EG_OK);
        size_t n = 0;
        uint32_t *ids = encode_file(t, t_shared_path("data/corpora/tinyshakespeare.txt"), &n);
        CHECK_MSG(ids && ids_equal_golden(ids, n, t_shared_path(cases[c][1])), "%s differs",
                  cases[c][1]);
        free(ids);
        eg_tokenizer_free(t);
    }
}

TEST(encode_golden_udhr_eight_languages)
{
    if (!t_shared())
        SKIP("../shared absent");
    static const char *const langs[] = {"vie", "tur", "ell_monotonic", "rus",
                                        "cmn_hans", "jpn", "tha", "eng"};
    static const char *const toks[][2] = {{"deepseek-v3.tokenizer.json", "deepseek-v3"},
                                          {"mistral-v03.tokenizer.json", "mistral-v03-json"}};
    for (int k = 0; k < 2; k++) {
        char rel[256];
        snprintf(rel, sizeof rel, "data/tokenizers/%s", toks[k][0]);
        eg_tokenizer *t = open_tok(rel);
        REQUIRE(t);
        for (size_t l = 0; l < sizeof langs / sizeof langs[0]; l++) {
            char txt[256], gold[256];
            snprintf(txt, sizeof txt, "data/corpora/udhr/udhr_%s.txt", langs[l]);
            snprintf(gold, sizeof gold, "golden/udhr/udhr_%s.%s.ids.u32", langs[l], toks[k][1]);
            size_t n = 0;
            uint32_t *ids = encode_file(t, t_shared_path(txt), &n);
            CHECK_MSG(ids && ids_equal_golden(ids, n, t_shared_path(gold)), "%s differs", gold);
            free(ids);
        }
        eg_tokenizer_free(t);
    }
}

TEST(prep_cli_golden_whole_file_chunked_and_spm_lines)
{
    if (!t_shared())
        SKIP("../shared absent");
    const char *ts = t_shared_path("data/corpora/tinyshakespeare.txt");
    /* whole file as one document, then cut into 4 KiB chunks at line
     * boundaries: both equal HF's encoding of the whole file */
    REQUIRE(t_cli("prep -q -t %s -o %s -f u32 %s",
                  t_shared_path("data/tokenizers/deepseek-v3.tokenizer.json"),
                  t_tmp_path("ds"), ts) == 0);
    CHECK(file_equals(t_tmp_path("ds.u32"),
                      t_shared_path("golden/tinyshakespeare.deepseek-v3.ids.u32")));
    REQUIRE(t_cli("prep -q -t %s -o %s -f u32 --max-doc 4k -j 2 %s",
                  t_shared_path("data/tokenizers/mistral-v03.tokenizer.json"),
                  t_tmp_path("mj"), ts) == 0);
    CHECK(file_equals(t_tmp_path("mj.u32"),
                      t_shared_path("golden/tinyshakespeare.mistral-v03-json.ids.u32")));
    /* libsentencepiece per line */
    REQUIRE(t_cli("prep -q -t %s -o %s -f u32 --doc-per-line %s",
                  t_shared_path("data/tokenizers/mistral-v03.model"), t_tmp_path("spm"),
                  ts) == 0);
    CHECK(file_equals(t_tmp_path("spm.u32"),
                      t_shared_path("golden/tinyshakespeare.mistral-v03-spm-lines.ids.u32")));
}

/* ---- formats ------------------------------------------------------------------ */

TEST(megatron_index_layout_exact)
{
    eg_shard_writer *w = NULL;
    eg_err err;
    const char *prefix = t_tmp_path("mega");
    REQUIRE(eg_shard_writer_open(prefix, EG_SHARD_MEGATRON, 1000, 0, &w, &err) == EG_OK);
    const uint32_t a[3] = {1, 2, 3}, b[2] = {4, 500};
    REQUIRE(eg_shard_writer_add_doc(w, a, 3, &err) == EG_OK);
    REQUIRE(eg_shard_writer_add_doc(w, b, 1, &err) == EG_OK);
    REQUIRE(eg_shard_writer_append(w, b + 1, 1, &err) == EG_OK);
    REQUIRE(eg_shard_writer_finish(w, &err) == EG_OK);
    CHECK_EQ(eg_shard_writer_n_shards(w), 1);
    eg_shard_writer_free(w);
    /* the exact bytes Megatron-LM's _IndexWriter produces */
    static const unsigned char want_idx[] = {
        'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, /* header, version */
        8,                                                               /* uint16 */
        2, 0, 0, 0, 0, 0, 0, 0,                                          /* sequences */
        3, 0, 0, 0, 0, 0, 0, 0,                                          /* documents + 1 */
        3, 0, 0, 0, 2, 0, 0, 0,                                          /* sizes */
        0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0,                  /* pointers */
        0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0};
    static const unsigned char want_bin[] = {1, 0, 2, 0, 3, 0, 4, 0, 0xF4, 0x01};
    size_t n;
    unsigned char *idx = t_read_file(t_tmp_path("mega.idx"), &n);
    CHECK(idx && n == sizeof want_idx && !memcmp(idx, want_idx, n));
    free(idx);
    unsigned char *bin = t_read_file(t_tmp_path("mega.bin"), &n);
    CHECK(bin && n == sizeof want_bin && !memcmp(bin, want_bin, n));
    free(bin);
    /* and it reads back */
    eg_shard *s = NULL;
    REQUIRE(eg_shard_open(prefix, &s, &err) == EG_OK);
    CHECK(eg_shard_get_format(s) == EG_SHARD_MEGATRON);
    CHECK_EQ(eg_shard_n_tokens(s), 5);
    CHECK_EQ(eg_shard_n_docs(s), 2);
    uint64_t first, cnt;
    REQUIRE(eg_shard_doc(s, 1, &first, &cnt) == EG_OK);
    CHECK(first == 3 && cnt == 2);
    uint32_t got[5];
    REQUIRE(eg_shard_read(s, 0, 5, got, &err) == EG_OK);
    CHECK(got[0] == 1 && got[3] == 4 && got[4] == 500);
    CHECK(eg_shard_read(s, 4, 2, got, &err) == EG_ERANGE);
    eg_shard_close(s);
}

TEST(llmc_and_u32_round_trip_and_sharding)
{
    eg_err err;
    uint32_t ids[300];
    for (int i = 0; i < 300; i++)
        ids[i] = (uint32_t)(i * 977 % 129000);
    static const eg_shard_format fmts[] = {EG_SHARD_LLMC, EG_SHARD_U32, EG_SHARD_MEGATRON};
    for (int f = 0; f < 3; f++) {
        char prefix[64];
        snprintf(prefix, sizeof prefix, "rt%d", f);
        eg_shard_writer *w = NULL;
        /* a vocabulary over uint16 forces 4-byte tokens; 100-token shards */
        REQUIRE(eg_shard_writer_open(t_tmp_path(prefix), fmts[f], 129280, 100, &w, &err) ==
                EG_OK);
        for (int d = 0; d < 6; d++)
            REQUIRE(eg_shard_writer_add_doc(w, ids + 50 * d, 50, &err) == EG_OK);
        REQUIRE(eg_shard_writer_finish(w, &err) == EG_OK);
        CHECK_EQ(eg_shard_writer_n_shards(w), 3);
        size_t k = 0;
        for (size_t sh = 0; sh < eg_shard_writer_n_shards(w); sh++) {
            eg_shard *s = NULL;
            REQUIRE(eg_shard_open(eg_shard_writer_path(w, sh), &s, &err) == EG_OK);
            CHECK(eg_shard_get_format(s) == fmts[f]);
            uint32_t got[100];
            REQUIRE(eg_shard_n_tokens(s) == 100);
            REQUIRE(eg_shard_read(s, 0, 100, got, &err) == EG_OK);
            CHECK(memcmp(got, ids + k, sizeof got) == 0);
            k += 100;
            eg_shard_close(s);
        }
        eg_shard_writer_free(w);
    }
    /* an llm.c header: magic 20240801, version 7, token count */
    size_t n;
    unsigned char *h = t_read_file(t_tmp_path("rt0_000000.bin"), &n);
    REQUIRE(h && n == 1024 + 400);
    CHECK(h[0] == 0xA1 && h[1] == 0xD9 && h[2] == 0x34 && h[3] == 0x01); /* 20240801 */
    CHECK(h[4] == 7 && h[8] == 100);
    free(h);
}

TEST(shard_reader_rejects_corrupt_files)
{
    eg_err err;
    eg_shard *s = NULL;
    /* truncated llm.c shard */
    unsigned char buf[1024 + 6] = {0};
    buf[0] = 0x88; buf[1] = 0xD8; buf[2] = 0x34; buf[3] = 0x01; /* 20240520 */
    buf[4] = 1;
    buf[8] = 5; /* says 5 tokens, holds 3 */
    REQUIRE(t_write_file(t_tmp_path("trunc.bin"), buf, sizeof buf) == 0);
    CHECK(eg_shard_open(t_tmp_path("trunc.bin"), &s, &err) == EG_EFORMAT);
    CHECK(strstr(err.msg, "trunc.bin") && strstr(err.msg, "5 tokens"));
    CHECK(s == NULL);
    /* a Megatron index whose .bin is short */
    eg_shard_writer *w = NULL;
    const uint32_t a[4] = {1, 2, 3, 4};
    REQUIRE(eg_shard_writer_open(t_tmp_path("short"), EG_SHARD_MEGATRON, 100, 0, &w, &err) == 0);
    REQUIRE(eg_shard_writer_add_doc(w, a, 4, &err) == EG_OK);
    REQUIRE(eg_shard_writer_finish(w, &err) == EG_OK);
    eg_shard_writer_free(w);
    REQUIRE(t_write_file(t_tmp_path("short.bin"), a, 6) == 0);
    CHECK(eg_shard_open(t_tmp_path("short"), &s, &err) == EG_EFORMAT);
    CHECK(strstr(err.msg, "truncated shard"));
    /* unknown */
    REQUIRE(t_write_file(t_tmp_path("what.dat"), "hello", 5) == 0);
    CHECK(eg_shard_open(t_tmp_path("what.dat"), &s, &err) == EG_EFORMAT);
    REQUIRE(t_write_file(t_tmp_path("odd.u32"), "hello", 5) == 0);
    CHECK(eg_shard_open(t_tmp_path("odd.u32"), &s, &err) == EG_EFORMAT);
}

/* ---- readers -------------------------------------------------------------------- */

static size_t read_all(const char *const *paths, size_t n, const eg_reader_opts *o, char *out,
                       size_t cap, eg_reader_stats *st, eg_err *err, eg_status *status)
{
    eg_reader *r = NULL;
    *status = eg_reader_open(paths, n, o, &r, err);
    if (*status)
        return 0;
    size_t used = 0;
    const char *t;
    size_t len;
    uint32_t fl;
    while ((*status = eg_reader_next(r, &t, &len, &fl, err)) == EG_OK && t) {
        if (used + len + 1 < cap) {
            memcpy(out + used, t, len);
            used += len;
            out[used++] = (fl & EG_DOC_CONTINUES) ? '+' : '|';
        }
    }
    eg_reader_get_stats(r, st);
    eg_reader_close(r);
    out[used] = 0;
    return used;
}

TEST(reader_modes_compression_and_bad_input)
{
    const char *plain = t_tmp_path("r.txt");
    const char *text = "alpha\nbeta\n\ngamma \xC3\n";
    REQUIRE(t_write_file(plain, text, strlen(text)) == 0);
    /* gzip (two members) and zstd copies */
    char gzp[512], zsp[512];
    snprintf(gzp, sizeof gzp, "%s", t_tmp_path("r.txt.gz"));
    snprintf(zsp, sizeof zsp, "%s", t_tmp_path("r.txt.zst"));
    gzFile g = gzopen(gzp, "wb");
    REQUIRE(g);
    gzwrite(g, text, 8);
    gzclose(g);
    g = gzopen(gzp, "ab");
    gzwrite(g, text + 8, (unsigned)strlen(text) - 8);
    gzclose(g);
    size_t zc = ZSTD_compressBound(strlen(text));
    char *z = malloc(zc);
    zc = ZSTD_compress(z, zc, text, strlen(text), 3);
    REQUIRE(!ZSTD_isError(zc) && t_write_file(zsp, z, zc) == 0);
    char out[256];
    eg_reader_stats st;
    eg_err err;
    eg_status s;
    eg_reader_opts o = {0};
    o.mode = EG_DOC_PER_LINE;
    const char *paths[3] = {plain, gzp, zsp};
    for (int i = 0; i < 3; i++) {
        read_all(paths + i, 1, &o, out, sizeof out, &st, &err, &s);
        CHECK_MSG(s == EG_OK, "%s: %s", paths[i], err.msg);
        CHECK_MSG(!strcmp(out, "alpha|beta|gamma \xEF\xBF\xBD|"), "%s: '%s'", paths[i], out);
        CHECK_EQ(st.docs, 3);
        CHECK_EQ(st.empty, 1);
        CHECK_EQ(st.bad_utf8, 1);
    }
    /* per file, with chunks */
    o.mode = EG_DOC_PER_FILE;
    read_all(paths, 3, &o, out, sizeof out, &st, &err, &s);
    CHECK(s == EG_OK && st.docs == 3 && st.files == 3);
    /* strict: the invalid byte's offset */
    o.strict = 1;
    read_all(paths, 1, &o, out, sizeof out, &st, &err, &s);
    CHECK(s == EG_EFORMAT && strstr(err.msg, "byte offset 18") && strstr(err.msg, "r.txt"));
    o.strict = 0;
    /* truncated gzip and zstd */
    size_t n;
    char *gzbytes = t_read_file(gzp, &n);
    REQUIRE(gzbytes && t_write_file(t_tmp_path("cut.gz"), gzbytes, n - 6) == 0);
    const char *cutgz = t_tmp_path("cut.gz");
    read_all(&cutgz, 1, &o, out, sizeof out, &st, &err, &s);
    CHECK(s == EG_EFORMAT && strstr(err.msg, "cut.gz") && strstr(err.msg, "truncated gzip"));
    REQUIRE(t_write_file(t_tmp_path("cut.zst"), z, zc - 3) == 0);
    const char *cutzs = t_tmp_path("cut.zst");
    read_all(&cutzs, 1, &o, out, sizeof out, &st, &err, &s);
    CHECK(s == EG_EFORMAT && strstr(err.msg, "cut.zst") && strstr(err.msg, "truncated zstd"));
    free(gzbytes);
    free(z);
    /* a folder and a glob */
    const char *dir[1] = {t_tmpdir()};
    o.mode = EG_DOC_PER_LINE;
    char glob[512];
    snprintf(glob, sizeof glob, "%s/r.txt*", t_tmpdir());
    const char *gl[1] = {glob};
    read_all(gl, 1, &o, out, sizeof out, &st, &err, &s);
    CHECK(s == EG_OK && st.files == 3);
    (void)dir;
    const char *missing[1] = {"/nonexistent/corpus.txt"};
    read_all(missing, 1, &o, out, sizeof out, &st, &err, &s);
    CHECK(s == EG_EIO && strstr(err.msg, "/nonexistent/corpus.txt"));
}

/* The read size is a memory knob only: documents, flags and error offsets are
 * the same for any size, in every mode and compression. */
TEST(reader_read_size_does_not_change_documents)
{
    char text[6000];
    size_t tl = 0;
    for (int i = 0; tl < sizeof text - 200; i++)
        tl += (size_t)snprintf(text + tl, sizeof text - tl, "{\"text\": \"line %d %.*s\"}\n%s", i,
                               i % 97, "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz"
                               "0123456789abcdefghijklmnopqrstuvwxyz0123456789",
                               i % 13 ? "" : "\n");
    const char *plain = t_tmp_path("rs.txt");
    REQUIRE(t_write_file(plain, text, tl) == 0);
    char gzp[512], zsp[512];
    snprintf(gzp, sizeof gzp, "%s", t_tmp_path("rs.txt.gz"));
    snprintf(zsp, sizeof zsp, "%s", t_tmp_path("rs.txt.zst"));
    gzFile g = gzopen(gzp, "wb");
    REQUIRE(g);
    gzwrite(g, text, (unsigned)tl);
    gzclose(g);
    size_t zc = ZSTD_compressBound(tl);
    char *z = malloc(zc);
    REQUIRE(z);
    zc = ZSTD_compress(z, zc, text, tl, 3);
    REQUIRE(!ZSTD_isError(zc) && t_write_file(zsp, z, zc) == 0);
    free(z);
    const char *paths[3] = {plain, gzp, zsp};
    static char want[16384], got[16384];
    for (int mode = 0; mode < 3; mode++)
        for (int i = 0; i < 3; i++) {
            eg_reader_opts o = {0};
            o.mode = (eg_doc_mode)mode;
            o.field = "text";
            o.max_doc_bytes = 700;
            eg_reader_stats st;
            eg_err err;
            eg_status s0, s1;
            size_t n0 = read_all(paths + i, 1, &o, want, sizeof want, &st, &err, &s0);
            CHECK_MSG(s0 == EG_OK, "%s: %s", paths[i], err.msg);
            const size_t sizes[] = {1, 16, 17, 100, 4096};
            for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
                o.read_bytes = sizes[k];
                size_t n1 = read_all(paths + i, 1, &o, got, sizeof got, &st, &err, &s1);
                CHECK_MSG(s1 == s0 && n1 == n0 && !memcmp(want, got, n0),
                          "mode %d, %s, read size %zu: documents differ", mode, paths[i], sizes[k]);
            }
        }
}

TEST(reader_jsonl_records)
{
    const char *p = t_tmp_path("d.jsonl");
    const char *text = "{\"text\": \"one\", \"id\": 1}\n"
                       "not json\n"
                       "{\"body\": \"no text field\"}\n"
                       "\n"
                       "{\"text\": \"two \\u00e9\"}\n";
    REQUIRE(t_write_file(p, text, strlen(text)) == 0);
    eg_reader_opts o = {0};
    o.mode = EG_DOC_JSONL;
    o.field = "text";
    char out[256];
    eg_reader_stats st;
    eg_err err;
    eg_status s;
    read_all(&p, 1, &o, out, sizeof out, &st, &err, &s);
    CHECK(s == EG_OK);
    CHECK_MSG(!strcmp(out, "one|two \xC3\xA9|"), "'%s'", out);
    CHECK(st.bad_records == 1 && st.missing_field == 1 && st.docs == 2);
    o.strict = 1;
    read_all(&p, 1, &o, out, sizeof out, &st, &err, &s);
    CHECK(s == EG_EFORMAT && strstr(err.msg, "d.jsonl:2:") && strstr(err.msg, "malformed"));
}

/* ---- the pipeline --------------------------------------------------------------- */

TEST(prep_deterministic_across_threads_with_bos_eos)
{
    if (!t_shared())
        SKIP("../shared absent");
    const char *tok = t_shared_path("data/tokenizers/deepseek-v3.tokenizer.json");
    const char *udhr = t_shared_path("data/corpora/udhr");
    REQUIRE(t_cli("prep -q -t %s -o %s --doc-per-line -j 1 -m 1M --bos 0 --eos 1 %s", tok,
                  t_tmp_path("det1"), udhr) == 0);
    REQUIRE(t_cli("prep -q -t %s -o %s --doc-per-line -j 2 -m 1M --bos '<｜begin▁of▁sentence｜>' "
                  "--eos 1 %s",
                  tok, t_tmp_path("det2"), udhr) == 0);
    CHECK(file_equals(t_tmp_path("det1.bin"), t_tmp_path("det2.bin")));
    CHECK(file_equals(t_tmp_path("det1.idx"), t_tmp_path("det2.idx")));
    eg_shard *s = NULL;
    eg_err err;
    REQUIRE(eg_shard_open(t_tmp_path("det1"), &s, &err) == EG_OK);
    CHECK(eg_shard_n_docs(s) > 100);
    uint64_t first, n;
    REQUIRE(eg_shard_doc(s, 7, &first, &n) == EG_OK);
    uint32_t *ids = malloc(n * sizeof *ids);
    REQUIRE(eg_shard_read(s, first, n, ids, &err) == EG_OK);
    CHECK(ids[0] == 0 && ids[n - 1] == 1); /* bos ... eos */
    free(ids);
    eg_shard_close(s);
}

TEST(prep_bad_input_leaves_nothing)
{
    if (!t_shared())
        SKIP("../shared absent");
    const char *tok = t_shared_path("data/tokenizers/deepseek-v3.tokenizer.json");
    REQUIRE(t_write_file(t_tmp_path("good.txt"), "hello world\n", 12) == 0);
    REQUIRE(t_write_file(t_tmp_path("bad.txt"), "bad \xFF byte\n", 11) == 0);
    /* good file first, then a bad one under --strict: the shard of the good
     * one must not survive */
    int rc = t_cli("prep -t %s -o %s --doc-per-line --strict -s 1 %s %s", tok,
                   t_tmp_path("fail"), t_tmp_path("good.txt"), t_tmp_path("bad.txt"));
    CHECK(rc != 0 && rc < 128);
    CHECK(strstr(t_cli_stderr(), "bad.txt: invalid UTF-8 at byte offset 4"));
    CHECK(!t_file_exists(t_tmp_path("fail_000000.bin")));
    CHECK(!t_file_exists(t_tmp_path("fail_000000.idx")));
    /* without --strict it is replaced and counted */
    REQUIRE(t_cli("prep -t %s -o %s --doc-per-line --json %s", tok, t_tmp_path("ok"),
                  t_tmp_path("bad.txt")) == 0);
    CHECK(strstr(t_cli_stdout(), "\"invalid_utf8\": 1"));
    /* no document at all */
    REQUIRE(t_write_file(t_tmp_path("empty.txt"), "\n\n", 2) == 0);
    CHECK(t_cli("prep -q -t %s -o %s --doc-per-line %s", tok, t_tmp_path("none"),
                t_tmp_path("empty.txt")) != 0);
    CHECK(strstr(t_cli_stderr(), "no document"));
    CHECK(!t_file_exists(t_tmp_path("none.bin")));
    CHECK(t_cli("prep -q -t %s -o %s --bos '<nope>' %s", tok, t_tmp_path("x"),
                t_tmp_path("good.txt")) != 0);
    CHECK(t_cli("prep --help") == 0);
}
