/* test_merge.c - mergeable counts: the counts file's metadata (version 2),
 * engram merge byte-identical to counting all the shards at once, and its
 * refusals (different configurations, overlapping inputs, version 1). */
#include <stdlib.h>
#include <string.h>

#include "engram/engram.h"
#include "engram/eg_count.h"
#include "engram/eg_prep.h"
#include "eg_internal.h"
#include "test.h"

/* Shard s of a Zipf-like stream: Megatron documents of 1..300 tokens (so
 * that padding at document starts matters), ids below 300. */
static void write_docs_shard(const char *prefix, unsigned seed, size_t tokens)
{
    REQUIRE(t_write_docs_shard(prefix, seed, tokens, 300, 300, 1000, UINT32_MAX) == 0);
}

/* Disjoint subsets of five shards counted apart (partition first, tables
 * with spills, one and two threads, orders 2..4), merged in any order and
 * any grouping, give the file counting all five at once gives, byte for
 * byte; so does merging merges. */
TEST(merge_of_disjoint_subsets_equals_counting_all_at_once)
{
    char sh[5][512];
    for (int s = 0; s < 5; s++) {
        char name[32];
        snprintf(name, sizeof name, "mg%d", s);
        snprintf(sh[s], sizeof sh[s], "%s", t_tmp_path(name));
        write_docs_shard(sh[s], (unsigned)s, 60000 + 17000 * (size_t)s);
    }
    static const char *const modes[2] = {"--docs", "-T 512"};
    for (int m = 0; m < 2; m++) {
        TMP(all, "mg_all.counts");
        TMP(ca, "mg_a.counts");
        TMP(cb, "mg_b.counts");
        TMP(cc, "mg_c.counts");
        TMP(cab, "mg_ab.counts");
        TMP(out, "mg_out.counts");
        REQUIRE(t_cli("count %s %s %s %s %s -V 300 --pad 0 -n 4 %s -o %s -q", sh[0], sh[1],
                      sh[2], sh[3], sh[4], modes[m], all) == 0);
        /* {0, 3} partition first, {1} tables spilling, {2, 4} one thread */
        REQUIRE(t_cli("count %s %s -V 300 --pad 0 -n 4 %s -o %s -q --method partition", sh[0],
                      sh[3], modes[m], ca) == 0);
        REQUIRE(t_cli("count %s -V 300 --pad 0 -n 4 %s -o %s -q --method tables -m 1M -j 2",
                      sh[1], modes[m], cb) == 0);
        REQUIRE(t_cli("count %s %s -V 300 --pad 0 -n 4 %s -o %s -q -j 1", sh[4], sh[2], modes[m],
                      cc) == 0);
        REQUIRE(t_cli("merge %s %s %s -o %s -q -m 1M -j 2", ca,
                      cb, cc, out) == 0);
        CHECK_MSG(t_same_file(out, all), "%s: merge(a, b, c) differs from counting all", modes[m]);
        REQUIRE(t_cli("merge %s %s %s -o %s -q -j 1", cc,
                      ca, cb, out) == 0);
        CHECK_MSG(t_same_file(out, all), "%s: merge(c, a, b) differs", modes[m]);
        REQUIRE(t_cli("merge %s %s -o %s -q", ca, cb,
                      cab) == 0);
        REQUIRE(t_cli("merge %s %s -o %s -q", cab,
                      cc, out) == 0);
        CHECK_MSG(t_same_file(out, all), "%s: merge(merge(a, b), c) differs", modes[m]);
        REQUIRE(t_cli("merge %s -o %s -q", all, out) == 0);
        CHECK_MSG(t_same_file(out, all), "%s: merging one file changes it", modes[m]);
        /* the summary: the same statistics as the count's */
        REQUIRE(t_cli("merge %s %s %s -o %s --json -k 3", ca,
                      cb, cc, out) == 0);
        char *mj = strdup(t_cli_stdout());
        REQUIRE(t_cli("count %s %s %s %s %s -V 300 --pad 0 -n 4 %s -o %s --json -k 3", sh[0],
                      sh[1], sh[2], sh[3], sh[4], modes[m], all) == 0);
        const char *cj = t_cli_stdout();
        const char *a = strstr(mj, "\"orders\""), *b = strstr(cj, "\"orders\"");
        const char *ae = a ? strstr(a, "\"spills\"") : NULL, *be = b ? strstr(b, "\"spills\"") : NULL;
        CHECK_MSG(a && b && ae && be && ae - a == be - b && !memcmp(a, b, (size_t)(ae - a)),
                  "%s: the merge's statistics differ from the count's", modes[m]);
        free(mj);
    }
}

/* The metadata names every input with its size and a fingerprint of its
 * token stream that does not depend on its name; the same shard under
 * another name is refused as an overlap, and so are different configurations,
 * each with one message naming both files; no output is left. */
TEST(merge_refuses_other_configurations_and_overlaps)
{
    TMP(a, "mr_a");
    TMP(b, "mr_b");
    TMP(copy, "mr_copy");
    TMP(ccopy, "mr_copy.counts");
    TMP(out, "mr_out.counts");
    TMP(v1, "mr_v1.counts");
    write_docs_shard(a, 11, 20000);
    write_docs_shard(b, 12, 20000);
    char cp_bin[600], cp_idx[600], src[600];
    snprintf(cp_bin, sizeof cp_bin, "%s", t_tmp_path("mr_copy.bin"));
    snprintf(cp_idx, sizeof cp_idx, "%s", t_tmp_path("mr_copy.idx"));
    size_t n;
    snprintf(src, sizeof src, "%s.bin", a);
    char *bytes = t_read_file(src, &n);
    REQUIRE(bytes && t_write_file(cp_bin, bytes, n) == 0);
    free(bytes);
    snprintf(src, sizeof src, "%s.idx", a);
    bytes = t_read_file(src, &n);
    REQUIRE(bytes && t_write_file(cp_idx, bytes, n) == 0);
    free(bytes);
    TMP(ca, "mr_a.counts");
    TMP(cb, "mr_b.counts");
    REQUIRE(t_cli("count %s -V 300 --pad 0 -n 3 -o %s -q", a, ca) == 0);
    REQUIRE(t_cli("count %s -V 300 --pad 0 -n 3 -o %s -q", copy,
                  ccopy) == 0);
    eg_counts *c = NULL;
    eg_err err;
    REQUIRE(eg_counts_open(ca, &c, &err) == EG_OK);
    CHECK_EQ(eg_counts_version(c), 2);
    size_t ml = 0;
    const char *meta = eg_counts_meta(c, &ml);
    REQUIRE(meta);
    char *mj = strndup(meta, ml);
    CHECK_MSG(strstr(mj, "\"tokens\":20000") && strstr(mj, "\"fingerprint\":\"") &&
                  strstr(mj, "\"pad_mode\":\"docs\"") && strstr(mj, a),
              "metadata: %s", mj);
    eg_counts_close(c);
    REQUIRE(eg_counts_open(ccopy, &c, &err) == EG_OK);
    const char *m2 = eg_counts_meta(c, &ml);
    const char *f1 = strstr(mj, "\"fingerprint\":\""), *f2 = m2 ? strstr(m2, "\"fingerprint\":\"") : NULL;
    CHECK_MSG(f1 && f2 && !memcmp(f1, f2, 15 + 64), "the copy's fingerprint differs");
    eg_counts_close(c);
    free(mj);
    static const char *const other[] = {"-V 300 --pad 0 -n 4", "-V 301 --pad 0 -n 3",
                                        "-V 300 --pad 1 -n 3", "-V 300 --pad 0 -n 3 -T 64"};
    static const char *const expect[] = {"different max n-gram order (3 vs 4)",
                                         "different V' (300 vs 301)", "different pad id (0 vs 1)",
                                         "different padding (docs 0 vs seq_len 64)"};
    for (int i = 0; i < 4; i++) {
        REQUIRE(t_cli("count %s %s -o %s -q", b, other[i], cb) == 0);
        const int rc = t_cli("merge %s %s -o %s -q", ca, cb, out);
        CHECK_MSG(rc == 1 && strstr(t_cli_stderr(), expect[i]) && strstr(t_cli_stderr(), ca) &&
                      strstr(t_cli_stderr(), cb),
                  "case %d: exit %d, '%s'", i, rc, t_cli_stderr());
        CHECK_MSG(!t_file_exists(out), "case %d: output left", i);
    }
    /* the same shard twice, under its own name and a copy's */
    int rc = t_cli("merge %s %s -o %s -q", ca, ca, out);
    CHECK_MSG(rc == 1 && strstr(t_cli_stderr(), "both counted the same shard"), "twice: '%s'",
              t_cli_stderr());
    rc = t_cli("merge %s %s -o %s -q", ca, ccopy, out);
    CHECK_MSG(rc == 1 && strstr(t_cli_stderr(), "both counted the same shard") &&
                  strstr(t_cli_stderr(), "mr_copy"),
              "copy: '%s'", t_cli_stderr());
    CHECK(!t_file_exists(out));
    /* allowed, the overlap counts twice: as counting the shard twice does */
    REQUIRE(t_cli("merge %s %s -o %s -q --allow-overlap", ca, ca, out) == 0);
    REQUIRE(t_cli("count %s %s -V 300 --pad 0 -n 3 -o %s -q", a, a, t_tmp_path("mr_aa.counts")) == 0);
    CHECK(t_same_file(out, t_tmp_path("mr_aa.counts")));
    /* version 1 (the same file without its metadata) is read, not merged */
    bytes = t_read_file(ca, &n);
    REQUIRE(bytes && n > 16);
    const uint64_t jl = eg_get_le64((unsigned char *)bytes + n - 16);
    REQUIRE(jl + 16 < n);
    eg_put_le32((unsigned char *)bytes + 8, 1);
    REQUIRE(t_write_file(v1, bytes, n - 16 - jl) == 0);
    free(bytes);
    REQUIRE(eg_counts_open(v1, &c, &err) == EG_OK);
    CHECK(eg_counts_version(c) == 1 && eg_counts_meta(c, NULL) == NULL);
    CHECK_EQ(eg_counts_tokens(c), 20000);
    eg_counts_close(c);
    rc = t_cli("merge %s %s -o %s -q", v1, cb, out);
    CHECK_MSG(rc == 1 && strstr(t_cli_stderr(), "version 1"), "v1: '%s'", t_cli_stderr());
    /* a cut trailer is refused by the reader */
    bytes = t_read_file(ca, &n);
    REQUIRE(bytes && t_write_file(t_tmp_path("mr_cut.counts"), bytes, n - 1) == 0);
    free(bytes);
    CHECK(eg_counts_open(t_tmp_path("mr_cut.counts"), &c, &err) == EG_EFORMAT);
}
