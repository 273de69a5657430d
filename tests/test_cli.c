/* test_cli.c - the engram command: help, spec, hash, and bad input. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#include "engram/engram.h"
#include "test.h"

/* No file whose name starts with `prefix` is left in the test directory. */
static int nothing_left(const char *prefix)
{
    DIR *d = opendir(t_tmpdir());
    if (!d)
        return 0;
    struct dirent *e;
    int found = 0;
    while ((e = readdir(d)))
        found |= !strncmp(e->d_name, prefix, strlen(prefix));
    closedir(d);
    return !found;
}

static int one_line(const char *s)
{
    const char *nl = strchr(s, '\n');
    return nl && nl[1] == 0;
}

TEST(cli_help_everywhere)
{
    CHECK_EQ(t_cli("--help"), 0);
    CHECK(strstr(t_cli_stdout(), "spec") && strstr(t_cli_stdout(), "hash"));
    CHECK_EQ(t_cli("spec --help"), 0);
    CHECK(strstr(t_cli_stdout(), "usage: engram spec"));
    CHECK_EQ(t_cli("hash --help"), 0);
    CHECK(strstr(t_cli_stdout(), "usage: engram hash"));
    CHECK_EQ(t_cli("version"), 0);
    CHECK(strstr(t_cli_stdout(), EG_VERSION_STRING));
    CHECK(t_cli("frobnicate") != 0);
    CHECK(strstr(t_cli_stderr(), "unknown command 'frobnicate'"));
    CHECK(t_cli("spec --bogus") != 0);
    /* usage texts are printed as they are: no printf escapes left in them */
    static const char *cmds[] = {"vocab", "prep", "count", "plan", "spec", "hash",
                                 "build", "inspect", "export", "import", "verify"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        CHECK_MSG(t_cli("%s --help", cmds[i]) == 0, "%s --help", cmds[i]);
        CHECK_MSG(!strstr(t_cli_stdout(), "%%"), "'%s --help' prints a doubled %%", cmds[i]);
    }
}

TEST(cli_spec_text_and_json)
{
    REQUIRE(t_cli("spec --config configs/demo.json --compressed-vocab 98627") == 0);
    const char *o = t_cli_stdout();
    CHECK(strstr(o, "76993395940407 4862694818241 36129212583461"));
    CHECK(strstr(o, "646,403"));
    CHECK(strstr(o, "layer 15"));
    REQUIRE(t_cli("spec -c configs/v41.json -V 129280 --json") == 0);
    o = t_cli_stdout();
    CHECK(strstr(o, "\"rows\": 384006168"));
    CHECK(strstr(o, "\"rows\": 384016682"));
    CHECK(strstr(o, "\"head_dim\": 256"));
    /* V' is required unless the config declares it */
    CHECK(t_cli("spec -c configs/demo.json") != 0);
    CHECK(strstr(t_cli_stderr(), "--compressed-vocab"));
    CHECK(one_line(t_cli_stderr()));
}

TEST(cli_hash_golden_demo)
{
    if (!t_shared())
        SKIP("../shared absent");
    const char *g = t_shared_path("golden/demo-deepseek-v3-shakespeare");
    const char *proj = t_shared_path("golden/deepseek-v3.projection.u32");
    const char *out = t_tmp_path("gold1.u32");
    REQUIRE(t_cli("hash -c configs/demo.json -p %s -i %s/input_ids.u32 -T 4096 -l 1 -o %s -q",
                  proj, g, out) == 0);
    size_t a, b;
    char gold[1200];
    snprintf(gold, sizeof gold, "%s/hash_layer1.u32", g);
    void *x = t_read_file(out, &a), *y = t_read_file(gold, &b);
    REQUIRE(x && y);
    CHECK(a == b && memcmp(x, y, a) == 0);
    free(x);
    free(y);
    /* compressed ids with --compressed-vocab, to stdout, layer 15 */
    REQUIRE(t_cli("hash -c configs/demo.json -V 98627 -i %s/compressed_ids.u32 -T 4096 -l 15 "
                  "-o - --json",
                  g) == 0);
    CHECK(strstr(t_cli_stderr(), "\"tokens\": 32768"));
    snprintf(gold, sizeof gold, "%s/hash_layer15.u32", g);
    x = t_read_file(t_cli_stdout_file(), &a);
    y = t_read_file(gold, &b);
    REQUIRE(x && y);
    CHECK(a == b && memcmp(x, y, a) == 0);
    free(x);
    free(y);
}

/* A stream whose length is not a multiple of T: the last sequence is short
 * and hashed on its own (left-padded), exactly like a separate sequence. */
TEST(cli_hash_short_last_sequence_and_offsets)
{
    uint32_t ids[10];
    for (int i = 0; i < 10; i++)
        ids[i] = (uint32_t)(i * 37 % 1000);
    REQUIRE(t_write_file(t_tmp_path("short.u32"), ids, sizeof ids) == 0);
    REQUIRE(t_cli("hash -c configs/demo.json -V 1000 -i %s -T 4 -l 15 --offsets -o %s --json",
                  t_tmp_path("short.u32"), t_tmp_path("short.out")) == 0);
    CHECK(strstr(t_cli_stdout(), "\"sequences\": 3"));
    CHECK(strstr(t_cli_stdout(), "\"last_sequence_tokens\": 2"));
    size_t n;
    uint32_t *got = t_read_file(t_tmp_path("short.out"), &n);
    REQUIRE(got && n == 10 * 16 * 4);
    eg_config cfg;
    eg_config_demo(&cfg);
    eg_spec *s = NULL;
    REQUIRE(eg_spec_create(&cfg, 1000, 2, &s, NULL) == EG_OK);
    uint32_t want[10 * 16];
    REQUIRE(eg_hash_batch(s, 1, ids, 2, 4, EG_HASH_OFFSETS, 1, want, 8 * 16, NULL) == EG_OK);
    REQUIRE(eg_hash_batch(s, 1, ids + 8, 1, 2, EG_HASH_OFFSETS, 1, want + 8 * 16, 2 * 16, NULL) ==
            EG_OK);
    CHECK(memcmp(got, want, sizeof want) == 0);
    eg_spec_free(s);
    free(got);
    /* T = 1: every token sees only padding behind it */
    REQUIRE(t_cli("hash -c configs/demo.json -V 1000 -i %s -T 1 -l 1 -o %s -q",
                  t_tmp_path("short.u32"), t_tmp_path("t1.out")) == 0);
}

/* Each bad input: non-zero exit, one clear line naming the problem, and no
 * output file (complete-looking or temporary) left behind. */
TEST(cli_hash_bad_input)
{
    char dir[512], a[8][600];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    enum { PROJ, IDS, ODD, EMPTY, GAP, NOFIELD, DECLARES, OUT };
    static const char *names[8] = {"p.u32",  "bad_ids.u32",  "odd.u32",       "empty.u32",
                                   "gap.u32", "nofield.json", "declares.json", "outbad.u32"};
    for (int i = 0; i < 8; i++)
        snprintf(a[i], sizeof a[i], "%s/%s", dir, names[i]);
    uint32_t p[6] = {0, 1, 2, 2, 1, 3};
    uint32_t ids[5] = {0, 1, 5, 6, 2}; /* 6 is outside the projection */
    uint32_t gap[3] = {0, 2, 2};
    const char *nofield = "{\"engram_vocab_size\":[10,10],\"max_ngram_size\":3,"
                          "\"n_head_per_ngram\":2,\"layer_ids\":[1],\"pad_id\":2}";
    const char *declares = "{\"engram_vocab_size\":[100,100],\"max_ngram_size\":3,"
                           "\"n_embed_per_ngram\":8,\"n_head_per_ngram\":2,\"layer_ids\":[1],"
                           "\"pad_id\":2,\"compressed_vocab_size\":5}";
    REQUIRE(t_write_file(a[PROJ], p, sizeof p) == 0);
    REQUIRE(t_write_file(a[IDS], ids, sizeof ids) == 0);
    REQUIRE(t_write_file(a[ODD], "0123456789", 10) == 0);
    REQUIRE(t_write_file(a[EMPTY], "", 0) == 0);
    REQUIRE(t_write_file(a[GAP], gap, sizeof gap) == 0);
    REQUIRE(t_write_file(a[NOFIELD], nofield, strlen(nofield)) == 0);
    REQUIRE(t_write_file(a[DECLARES], declares, strlen(declares)) == 0);
    char c[16][2048];
    const char *expect[16];
    int n = 0;
#define CASE(want, ...)                                                                          \
    do {                                                                                         \
        snprintf(c[n], sizeof c[n], __VA_ARGS__);                                                \
        expect[n++] = want;                                                                      \
    } while (0)
    CASE("id 6 at token 3 (byte 12)", "-c configs/demo.json -p %s -i %s -T 4 -l 1 -o %s",
         a[PROJ], a[IDS], a[OUT]);
    CASE("id 5 at token 2", "-c configs/demo.json -V 4 -i %s -T 4 -l 1 -o %s", a[IDS], a[OUT]);
    CASE("not a whole number", "-c configs/demo.json -V 1000 -i %s -T 4 -l 1 -o %s", a[ODD],
         a[OUT]);
    CASE("empty", "-c configs/demo.json -V 1000 -i %s -T 4 -l 1 -o %s", a[EMPTY], a[OUT]);
    CASE("--seq-len", "-c configs/demo.json -V 1000 -i %s -T 0 -l 1 -o %s", a[IDS], a[OUT]);
    CASE("no Engram layer 7", "-c configs/demo.json -V 1000 -i %s -T 4 -l 7 -o %s", a[IDS],
         a[OUT]);
    CASE("--layer L is required", "-c configs/demo.json -V 1000 -i %s -T 4 -o %s", a[IDS],
         a[OUT]);
    CASE("missing required field 'n_embed_per_ngram'", "-c %s -V 1000 -i %s -T 4 -l 1 -o %s",
         a[NOFIELD], a[IDS], a[OUT]);
    CASE("declares compressed_vocab_size 5", "-c %s -V 6 -i %s -T 4 -l 1 -o %s", a[DECLARES],
         a[IDS], a[OUT]);
    CASE("never used", "-c configs/demo.json -p %s -i %s -T 4 -l 1 -o %s", a[GAP], a[IDS],
         a[OUT]);
    CASE("not a whole number", "-c configs/demo.json -p %s -i %s -T 4 -l 1 -o %s", a[ODD],
         a[IDS], a[OUT]);
    CASE("/nonexistent.json", "-c /nonexistent.json -V 10 -i %s -T 4 -l 1 -o %s", a[IDS],
         a[OUT]);
    CASE("/nonexistent.u32", "-c configs/demo.json -V 1000 -i /nonexistent.u32 -T 4 -l 1 -o %s",
         a[OUT]);
    CASE("/nonexistent/dir", "-c configs/demo.json -V 1000 -i %s -T 4 -l 1 -o /nonexistent/dir/o",
         a[IDS]);
#undef CASE
    for (int i = 0; i < n; i++) {
        int rc = t_cli("hash %s", c[i]);
        CHECK_MSG(rc != 0 && rc < 128, "case %d: exit %d", i, rc);
        CHECK_MSG(strstr(t_cli_stderr(), expect[i]) != NULL, "case %d: stderr '%s' lacks '%s'",
                  i, t_cli_stderr(), expect[i]);
        CHECK_MSG(one_line(t_cli_stderr()), "case %d: stderr is not one line: '%s'", i,
                  t_cli_stderr());
        CHECK_MSG(strstr(t_cli_stderr(), "error:") != NULL, "case %d: no 'error:'", i);
        CHECK_MSG(nothing_left("outbad"), "case %d: output left behind", i);
    }
}

TEST(cli_hash_reference_flag_and_threads_agree)
{
    uint32_t ids[3000];
    uint64_t rs = 11;
    for (int i = 0; i < 3000; i++)
        ids[i] = (uint32_t)(t_rand(&rs) % 98627);
    REQUIRE(t_write_file(t_tmp_path("r.u32"), ids, sizeof ids) == 0);
    REQUIRE(t_cli("hash -c configs/demo.json -V 98627 -i %s -T 100 -l 1 -o %s -q --reference",
                  t_tmp_path("r.u32"), t_tmp_path("r1.out")) == 0);
    REQUIRE(t_cli("hash -c configs/demo.json -V 98627 -i %s -T 100 -l 1 -o %s -q -t 2",
                  t_tmp_path("r.u32"), t_tmp_path("r2.out")) == 0);
    size_t a, b;
    void *x = t_read_file(t_tmp_path("r1.out"), &a), *y = t_read_file(t_tmp_path("r2.out"), &b);
    REQUIRE(x && y);
    CHECK(a == b && a == 3000 * 16 * 4 && memcmp(x, y, a) == 0);
    free(x);
    free(y);
}
