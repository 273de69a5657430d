/* test_count.c - n-gram counting (against an independent sort-based count),
 * spills, the counts file, approximate counts and planning. */
#include <fcntl.h>
#include <jansson.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engram/engram.h"
#include "engram/eg_count.h"
#include "engram/eg_prep.h"
#include "eg_internal.h"
#include "test.h"

/* The independent count: every padded n-gram of every sequence of T tokens,
 * as rows of n ids, sorted with qsort and run-length counted. */
typedef struct {
    uint32_t n;
    uint32_t ids[8];
} gram;

/* Lexicographic compare of n ids (memcmp is not numeric order on LE). */
static int cmp_ids(const uint32_t *a, const uint32_t *b, uint32_t n)
{
    for (uint32_t k = 0; k < n; k++)
        if (a[k] != b[k])
            return a[k] < b[k] ? -1 : 1;
    return 0;
}

static int cmp_gram_num(const void *a, const void *b)
{
    const gram *x = a, *y = b;
    return cmp_ids(x->ids, y->ids, x->n);
}

/* Check a counts file against the independent count of x[0..len), whose
 * sequences start every T tokens, or where starts is not NULL at the ns
 * ascending positions starts[] (documents; starts[0] == 0). */
static void check_counts_at(const char *path, const uint32_t *x, size_t len, uint64_t T,
                            const uint64_t *starts, size_t ns, uint32_t N, uint32_t pad)
{
    eg_counts *c = NULL;
    eg_err err;
    if (eg_counts_open(path, &c, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    CHECK_EQ(eg_counts_tokens(c), len);
    CHECK_EQ(eg_counts_pad(c), pad);
    gram *g = malloc(len * sizeof *g);
    for (uint32_t n = 2; n <= N && g; n++) {
        for (size_t t = 0, q = 0; t < len; t++) {
            while (starts && q + 1 < ns && starts[q + 1] <= t)
                q++;
            size_t s0 = starts ? starts[q] : t - t % T; /* sequence start */
            g[t].n = n;
            memset(g[t].ids, 0, sizeof g[t].ids);
            for (uint32_t k = 0; k < n; k++) {
                size_t back = n - 1 - k; /* ids oldest first */
                g[t].ids[k] = t >= s0 + back ? x[t - back] : pad;
            }
        }
        qsort(g, len, sizeof *g, cmp_gram_num);
        uint64_t distinct = 0, bad = 0;
        for (size_t i = 0; i < len;) {
            size_t j = i;
            while (j < len && !cmp_gram_num(&g[i], &g[j]))
                j++;
            uint32_t ids[8];
            uint64_t cnt;
            if (eg_counts_get(c, n, distinct, ids, &cnt) != EG_OK || cmp_ids(ids, g[i].ids, n) ||
                cnt != j - i)
                bad++;
            distinct++;
            i = j;
        }
        CHECK_MSG(bad == 0, "order %u: %llu records differ", n, (unsigned long long)bad);
        CHECK_EQ(eg_counts_distinct(c, n), distinct);
        CHECK_EQ(eg_counts_total(c, n), len);
    }
    free(g);
    eg_counts_close(c);
}

static void check_counts(const char *path, const uint32_t *x, size_t len, uint64_t T,
                         uint32_t N, uint32_t pad)
{
    check_counts_at(path, x, len, T, NULL, 0, N, pad);
}

TEST(count_exact_vs_sort_on_shared_corpus_with_spills)
{
    if (!t_shared())
        SKIP("../shared absent");
    const char *ids_path = t_shared_path("golden/tinyshakespeare.deepseek-v3.ids.u32");
    const char *proj_path = t_shared_path("golden/deepseek-v3.projection.u32");
    size_t n, np;
    uint32_t *raw = t_read_file(ids_path, &n), *proj = t_read_file(proj_path, &np);
    REQUIRE(raw && proj);
    n /= 4;
    np /= 4;
    uint32_t *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = proj[raw[i]];
    /* ample budget, and 2 MiB which forces several spills; 1 and 2 threads;
     * table entries of one-word keys (V' = 128k: 3 x 17 bits fit) with 32-bit
     * counts (12 bytes), of two-word keys (24) and of one-word keys with
     * 64-bit counts (16) */
    /* both methods: tables in memory and with spills, and partition first
     * (2 MiB cannot hold the key stream: tables) */
    const char *mem[3] = {"256M", "2M", "256M"},
               *names[9] = {"c_mem.counts",     "c_spill.counts",   "c_part.counts",
                            "c_mem_w.counts",   "c_spill_w.counts", "c_part_w.counts",
                            "c_mem_c.counts",   "c_spill_c.counts", "c_part_c.counts"};
    static const char *const method[3] = {"tables", "tables", "partition"};
    static const char *const flag[3] = {"", " --wide-keys", " --wide-counts"};
    static const char *const entry[3] = {"\"entry_bytes\": 12", "\"entry_bytes\": 24",
                                         "\"entry_bytes\": 16"};
    for (int k = 0; k < 9; k++) {
        const char *out = t_tmp_path(names[k]);
        const int m = k % 3, w = k / 3;
        REQUIRE(t_cli("count %s -p %s -n 3 --pad 2 -T 4096 -m %s -j %d -o %s --json --method %s%s",
                      ids_path, proj_path, mem[m], 2 - (k & 1), out, method[m], flag[w]) == 0);
        const int no_spill = strstr(t_cli_stdout(), "\"spills\": 0,") != NULL;
        CHECK_MSG(no_spill == (m != 1), "case %d, budget %s: spills expected %s", k, mem[m],
                  m == 1 ? "yes" : "no");
        char want[64];
        snprintf(want, sizeof want, "\"method\": \"%s\"", method[m]);
        CHECK_MSG(strstr(t_cli_stdout(), want), "case %d: %s", k, want);
        CHECK_MSG(strstr(t_cli_stdout(), w == 1 ? "\"key_words\": 2" : "\"key_words\": 1"),
                  "case %d: key words", k);
        CHECK_MSG(strstr(t_cli_stdout(), entry[w]), "case %d: %s", k, entry[w]);
        check_counts(out, x, n, 4096, 3, proj[2]);
    }
    size_t a, b;
    void *p = t_read_file(t_tmp_path(names[0]), &a);
    for (int k = 1; k < 9; k++) {
        void *q = t_read_file(t_tmp_path(names[k]), &b);
        CHECK_MSG(p && q && a == b && !memcmp(p, q, a), "%s differs from %s", names[k], names[0]);
        free(q);
    }
    free(p);
    free(x);
    free(raw);
    free(proj);
}

/* Partitions are key ranges whose splitters come from a sample of the
 * input: inputs that change halfway, or whose sample is almost all one
 * n-gram, still count exactly (tables in memory and with spills, partition
 * first; 1 and 2 threads). */
TEST(count_range_partitions_on_skewed_inputs)
{
    enum { LEN = 200000 };
    uint32_t *x = malloc(LEN * sizeof *x);
    REQUIRE(x);
    for (int shape = 0; shape < 2; shape++) {
        uint64_t r = 88172645463325252ull;
        for (size_t i = 0; i < LEN; i++) {
            r ^= r << 13, r ^= r >> 7, r ^= r << 17;
            const int plain = shape == 0 ? i < LEN / 2 : i < LEN - 3000;
            /* skewed ids (the square of a uniform) over 5000 in the noisy part */
            const uint64_t u = r % 5000;
            x[i] = plain ? (shape == 0 ? 1 + i % 3 : 7) : (uint32_t)(u * u / 5000);
        }
        const char *in = t_tmp_path("skew.u32");
        REQUIRE(t_write_file(in, x, LEN * sizeof *x) == 0);
        for (int k = 0; k < 6; k++) { /* k >= 4: partition first, 1 and 2 threads */
            const char *out = t_tmp_path("skew.counts");
            REQUIRE(t_cli("count %s -V 5000 -n 3 --pad 0 -T 1000 -m %s -j %d -o %s --json "
                          "--method %s",
                          in, k < 4 && k & 1 ? "2M" : "256M", 1 + ((k >> 1) & 1) + (k == 5), out,
                          k < 4 ? "tables" : "partition") == 0);
            if (shape == 0 && k < 4) /* the other has too few distinct n-grams to spill */
                CHECK_MSG((strstr(t_cli_stdout(), "\"spills\": 0,") == NULL) == (k & 1),
                          "case %d: spills", k);
            CHECK_MSG(strstr(t_cli_stdout(), k < 4 ? "\"method\": \"tables\""
                                                   : "\"method\": \"partition\""),
                      "case %d: method", k);
            check_counts(out, x, LEN, 1000, 3, 0);
        }
    }
    /* a sample that sees one n-gram while the rest is nearly all distinct:
     * one key range holds everything, outgrows a thread's share of a 16 MiB
     * budget, and the count starts over with tables */
    uint64_t r = 7;
    for (size_t i = 0; i < LEN; i++) /* the windows sampled: 256 tokens every LEN/256 */
        x[i] = i % (LEN / 256) < 400 ? 7 : (uint32_t)(t_rand(&r) % 5000);
    const char *in = t_tmp_path("fool.u32"), *out = t_tmp_path("fool.counts");
    REQUIRE(t_write_file(in, x, LEN * sizeof *x) == 0);
    REQUIRE(t_cli("count %s -V 5000 -n 3 --pad 0 -T 1000 -m 16M -j 2 -o %s --json --method partition",
                  in, out) == 0);
    CHECK_MSG(strstr(t_cli_stdout(), "\"method\": \"tables\""), "the fallback: %s",
              t_cli_stdout());
    check_counts(out, x, LEN, 1000, 3, 0);
    /* one thread has the whole share: the same input counts partition first */
    REQUIRE(t_cli("count %s -V 5000 -n 3 --pad 0 -T 1000 -m 16M -j 1 -o %s --json --method partition",
                  in, out) == 0);
    CHECK_MSG(strstr(t_cli_stdout(), "\"method\": \"partition\""), "one thread: %s",
              t_cli_stdout());
    check_counts(out, x, LEN, 1000, 3, 0);
    /* several passes over the input: the sample puts nearly every key in the
     * ranges of one n-gram, so passes planned over the other ranges outgrow
     * their window and are redone with fewer ranges */
    REQUIRE(t_cli("count %s -V 5000 -n 3 --pad 0 -T 1000 -m 16M -j 1 -o %s --json --method partition "
                  "--passes 8", in, out) == 0);
    CHECK_MSG(strstr(t_cli_stdout(), "\"method\": \"partition\""), "passes: %s", t_cli_stdout());
    const char *pr = strstr(t_cli_stdout(), "\"passes_redone\": ");
    CHECK_MSG(pr && atoi(pr + 17) > 0, "a redone pass: %s", t_cli_stdout());
    check_counts(out, x, LEN, 1000, 3, 0);
    free(x);
}

/* A key range that is one n-gram repeated: its sort (keys and their other
 * half) outgrows a thread's share of the budget, the range is counted in a
 * table instead (which holds distinct keys only), exactly. (With 48 MiB and
 * 2 threads the (7, 7) range takes that path; checked when written.) */
TEST(count_partition_repeated_range_falls_back_to_a_table)
{
    enum { LEN = 1000000 };
    uint32_t *x = malloc(LEN * sizeof *x);
    REQUIRE(x);
    uint64_t r = 3;
    for (size_t i = 0; i < LEN; i++)
        x[i] = i % 50 ? 7 : (uint32_t)(t_rand(&r) % 5000);
    const char *in = t_tmp_path("same.u32"), *out = t_tmp_path("same.counts");
    REQUIRE(t_write_file(in, x, LEN * sizeof *x) == 0);
    REQUIRE(t_cli("count %s -V 5000 -n 3 --pad 0 -T 1000 -m 48M -j 2 -o %s --json --method partition",
                  in, out) == 0);
    CHECK_MSG(strstr(t_cli_stdout(), "\"method\": \"partition\""), "%s", t_cli_stdout());
    check_counts(out, x, LEN, 1000, 3, 0);
    free(x);
}

/* Partition first in several passes (each scattering the keys of the next
 * key ranges only) writes the counts file of one pass, byte for byte, on
 * the shared corpus, one- and two-word keys, 1 and 2 threads. */
TEST(count_partition_passes_write_the_same_file)
{
    if (!t_shared())
        SKIP("../shared absent");
    const char *ids_path = t_shared_path("golden/tinyshakespeare.deepseek-v3.ids.u32");
    const char *proj_path = t_shared_path("golden/deepseek-v3.projection.u32");
    static const char *const flag[2] = {"", " --wide-keys"};
    for (int w = 0; w < 2; w++) {
        void *one = NULL;
        size_t n1 = 0;
        for (int passes = 1; passes <= 7; passes += 3) {
            const char *out = t_tmp_path("passes.counts");
            REQUIRE(t_cli("count %s -p %s -n 3 --pad 2 -T 4096 -m 256M -j %d -o %s --json "
                          "--method partition --passes %d%s",
                          ids_path, proj_path, 1 + (passes > 1), out, passes, flag[w]) == 0);
            const char *pp = strstr(t_cli_stdout(), "\"passes\": ");
            CHECK_MSG(pp && atoi(pp + 10) >= passes, "%d passes asked: %s", passes, t_cli_stdout());
            size_t n;
            void *q = t_read_file(out, &n);
            REQUIRE(q);
            if (!one) {
                one = q;
                n1 = n;
            } else {
                CHECK_MSG(n == n1 && !memcmp(q, one, n), "%d passes%s: the file differs", passes,
                          flag[w]);
                free(q);
            }
        }
        free(one);
    }
}

/* The counts file's writer (base/outfile.c): partitions at random offsets
 * (some inside one block, some on block boundaries), written by two threads
 * in a shuffled order through small stages, and one stream appended in
 * pieces (written in place, or by a writer thread), hold exactly the bytes a
 * plain write would. */
TEST(outfile_ranges_and_stream_hold_the_bytes)
{
    enum { L = 3 << 20, CUTS = 300 };
    unsigned char *want = malloc(L);
    uint64_t *cut = malloc((CUTS + 2) * sizeof *cut);
    int *order = malloc(CUTS * sizeof *order);
    REQUIRE(want && cut && order);
    uint64_t rs = 11;
    for (size_t i = 0; i < L; i++)
        want[i] = (unsigned char)t_rand(&rs);
    const uint64_t head = 40;
    cut[0] = head;
    for (int i = 1; i <= CUTS; i++) { /* mostly short gaps, some aligned, some long */
        const uint64_t r = t_rand(&rs) % 8;
        uint64_t step = r < 3 ? t_rand(&rs) % 300 : r < 6 ? t_rand(&rs) % 20000 : 0;
        uint64_t at = cut[i - 1] + step;
        if (r == 6)
            at = (cut[i - 1] / 4096 + 1 + t_rand(&rs) % 3) * 4096;
        cut[i] = at < L ? at : L;
    }
    cut[CUTS + 1] = L;
    for (int i = 0; i < CUTS; i++)
        order[i] = i;
    for (int i = CUTS - 1; i > 0; i--) {
        const int j = (int)(t_rand(&rs) % (uint64_t)(i + 1)), x = order[i];
        order[i] = order[j];
        order[j] = x;
    }
    for (int mode = 0; mode < 3; mode++) { /* ranges; a stream; a stream with a writer thread */
        const char *path = t_tmp_path(mode == 0 ? "ranges.out" : mode == 1 ? "stream.out" : "async.out");
        eg_outfile w;
        REQUIRE(eg_outfile_open(&w, path) == 0);
        CHECK(pwrite(w.fd, want, head, 0) == (ssize_t)head);
        int failed = 0;
        if (mode == 0) {
            CHECK(ftruncate(w.fd, L) == 0);
#pragma omp parallel num_threads(2) reduction(| : failed)
            {
                eg_seqout q;
                failed |= eg_seqout_init(&q, &w, 4 * 4096) != 0;
                uint64_t ts = 100 + (uint64_t)omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
                for (int k = 0; k <= CUTS; k++) {
                    const int p = k < CUTS ? order[k] : CUTS; /* the last range too */
                    if (failed)
                        continue;
                    eg_seqout_seek(&q, cut[p]);
                    for (uint64_t at = cut[p]; at < cut[p + 1] && !failed;) {
                        size_t n = 1 + (size_t)(t_rand(&ts) % 60);
                        n = n < cut[p + 1] - at ? n : (size_t)(cut[p + 1] - at);
                        unsigned char *o = eg_seqout_room(&q, 64);
                        if (!o) {
                            failed = 1;
                            break;
                        }
                        memcpy(o, want + at, n);
                        q.n += n;
                        at += n;
                    }
                    failed |= eg_seqout_flush(&q) != 0;
                }
                eg_seqout_free(&q);
            }
        } else {
            eg_seqout q;
            REQUIRE((mode == 1 ? eg_seqout_init(&q, &w, 8 * 4096)
                               : eg_seqout_init_async(&q, &w, 8 * 4096)) == 0);
            CHECK(mode == 1 || q.aw != NULL);
            eg_seqout_seek(&q, head);
            for (uint64_t at = head; at < L && !failed;) {
                size_t n = (size_t)(t_rand(&rs) % 50000);
                n = n < L - at ? n : (size_t)(L - at);
                failed |= eg_seqout_write(&q, want + at, n) != 0;
                at += n;
            }
            failed |= eg_seqout_flush(&q) != 0;
            eg_seqout_free(&q);
        }
        CHECK(!failed);
        CHECK(fsync(w.fd) == 0);
        CHECK(eg_outfile_close(&w) == 0);
        size_t len = 0;
        unsigned char *got = t_read_file(path, &len);
        REQUIRE(got);
        CHECK_EQ(len, L);
        CHECK_MSG(len == L && memcmp(got, want, L) == 0, "mode %d: the file differs", mode);
        free(got);
    }
    free(want);
    free(cut);
    free(order);
}

/* Documents pad at their starts; a 4-gram count on a small synthetic shard. */
TEST(count_docs_and_order4_small)
{
    eg_shard_writer *w = NULL;
    eg_err err;
    REQUIRE(eg_shard_writer_open(t_tmp_path("cdocs"), EG_SHARD_MEGATRON, 1000, 0, &w, &err) == 0);
    const uint32_t d1[5] = {5, 6, 5, 6, 5}, d2[3] = {6, 5, 6};
    REQUIRE(eg_shard_writer_add_doc(w, d1, 5, &err) == EG_OK);
    REQUIRE(eg_shard_writer_add_doc(w, d2, 3, &err) == EG_OK);
    REQUIRE(eg_shard_writer_finish(w, &err) == EG_OK);
    eg_shard_writer_free(w);
    REQUIRE(t_cli("count %s -V 10 -n 4 --pad 0 --docs -o %s -q", t_tmp_path("cdocs"),
                  t_tmp_path("cdocs.counts")) == 0);
    eg_counts *c = NULL;
    REQUIRE(eg_counts_open(t_tmp_path("cdocs.counts"), &c, &err) == EG_OK);
    /* 2-grams: (0,5) (5,6)x2 (6,5)x2 | (0,6) (6,5) (5,6) -> (0,5) (0,6) (5,6)x3 (6,5)x3 */
    CHECK_EQ(eg_counts_distinct(c, 2), 4);
    uint32_t ids[4];
    uint64_t cnt;
    REQUIRE(eg_counts_get(c, 2, 2, ids, &cnt) == EG_OK);
    CHECK(ids[0] == 5 && ids[1] == 6 && cnt == 3);
    CHECK_EQ(eg_counts_total(c, 4), 8);
    REQUIRE(eg_counts_get(c, 4, 0, ids, &cnt) == EG_OK);
    CHECK(ids[0] == 0 && ids[1] == 0 && ids[2] == 0 && ids[3] == 5 && cnt == 1);
    eg_counts_close(c);
}

/* Documents of every length (1 token up, many shorter than the N-1 tokens
 * of history) read many at a time, across block boundaries: 4-grams equal
 * the independent count, with tables in memory and with spills and
 * partition first in one pass and in several (16-bit Megatron tokens). */
TEST(count_docs_many_short_documents)
{
    enum { LEN = 150000 };
    uint32_t *x = malloc(LEN * sizeof *x);
    uint64_t *starts = malloc(LEN * sizeof *starts);
    REQUIRE(x && starts);
    uint64_t r = 11;
    for (size_t i = 0; i < LEN; i++) {
        const uint64_t u = t_rand(&r) % 3000;
        x[i] = (uint32_t)(u * u / 3000); /* skewed */
    }
    eg_shard_writer *w = NULL;
    eg_err err;
    const char *in = t_tmp_path("mdocs");
    REQUIRE(eg_shard_writer_open(in, EG_SHARD_MEGATRON, 3000, 0, &w, &err) == EG_OK);
    size_t ns = 0;
    for (size_t at = 0; at < LEN;) {
        const uint64_t k = t_rand(&r) % 8;
        size_t len = k < 4 ? 1 + k : 1 + t_rand(&r) % 2500; /* half of them 1..4 tokens */
        len = len < LEN - at ? len : LEN - at;
        starts[ns++] = at;
        REQUIRE(eg_shard_writer_add_doc(w, x + at, len, &err) == EG_OK);
        at += len;
    }
    REQUIRE(eg_shard_writer_finish(w, &err) == EG_OK);
    eg_shard_writer_free(w);
    static const char *const how[4] = {"-m 256M --method tables", "-m 2M --method tables",
                                       "-m 256M --method partition",
                                       "-m 256M --method partition --passes 3"};
    for (int k = 0; k < 4; k++) {
        const char *out = t_tmp_path("mdocs.counts");
        REQUIRE(t_cli("count %s -V 3000 -n 4 --pad 0 --docs -j 2 -o %s --json %s", in, out,
                      how[k]) == 0);
        CHECK_MSG((strstr(t_cli_stdout(), "\"spills\": 0,") == NULL) == (k == 1),
                  "case %d: spills", k);
        check_counts_at(out, x, LEN, 0, starts, ns, 4, 0);
    }
    free(starts);
    free(x);
}

TEST(count_bad_input)
{
    REQUIRE(t_write_file(t_tmp_path("odd.u32"), "12345", 5) == 0);
    uint32_t big[3] = {1, 2, 99};
    REQUIRE(t_write_file(t_tmp_path("big.u32"), big, sizeof big) == 0);
    REQUIRE(t_write_file(t_tmp_path("what.dat"), big, sizeof big) == 0);
    uint32_t proj[4] = {0, 1, 1, 2};
    REQUIRE(t_write_file(t_tmp_path("p4.u32"), proj, sizeof proj) == 0);
    static const char *const expect[] = {
        "not a whole number of uint32", "compressed id 99 >= V' = 10", "unknown shard format",
        "id 99, outside the projection's 4 ids", "too small to make progress",
        "--passes: '0' is not a whole number from 1 to 4096"};
    for (int i = 0; i < 6; i++) {
        const char *out = t_tmp_path("bad.counts");
        int rc = -1;
        switch (i) {
        case 0: rc = t_cli("count %s -V 10 -o %s", t_tmp_path("odd.u32"), out); break;
        case 1: rc = t_cli("count %s -V 10 -o %s", t_tmp_path("big.u32"), out); break;
        case 2: rc = t_cli("count %s -V 10 -o %s", t_tmp_path("what.dat"), out); break;
        case 3:
            rc = t_cli("count %s -p %s -o %s", t_tmp_path("big.u32"), t_tmp_path("p4.u32"), out);
            break;
        case 4: rc = t_cli("count %s -V 1000 -m 100k -o %s", t_tmp_path("big.u32"), out); break;
        default: rc = t_cli("count %s -V 1000 --passes 0 -o %s", t_tmp_path("big.u32"), out);
        }
        CHECK_MSG(rc != 0 && rc < 128, "case %d: exit %d", i, rc);
        CHECK_MSG(strstr(t_cli_stderr(), expect[i]) != NULL, "case %d: '%s'", i, t_cli_stderr());
        CHECK_MSG(!t_file_exists(out), "case %d: output left", i);
    }
    /* blocks are read by the threads side by side: of two bad ids in
     * different threads' slices, the first is named, with both methods */
    enum { LONG = 1 << 20 };
    uint32_t *x = calloc(LONG, sizeof *x);
    REQUIRE(x);
    x[300001] = 12;
    x[900001] = 13;
    REQUIRE(t_write_file(t_tmp_path("bad2.u32"), x, LONG * sizeof *x) == 0);
    free(x);
    for (int k = 0; k < 2; k++) {
        const char *out = t_tmp_path("bad2.counts");
        const int rc = t_cli("count %s -V 10 -j 2 -m 256M --method %s -o %s", t_tmp_path("bad2.u32"),
                             k ? "partition" : "tables", out);
        CHECK_MSG(rc != 0 && rc < 128, "two bad ids, case %d: exit %d", k, rc);
        CHECK_MSG(strstr(t_cli_stderr(), "token 300001: compressed id 12 >= V' = 10"),
                  "two bad ids, case %d: '%s'", k, t_cli_stderr());
        CHECK_MSG(!t_file_exists(out), "two bad ids, case %d: output left", k);
    }
    /* a truncated counts file is refused by the reader */
    uint32_t ok[6] = {1, 2, 3, 1, 2, 3};
    REQUIRE(t_write_file(t_tmp_path("ok.u32"), ok, sizeof ok) == 0);
    REQUIRE(t_cli("count %s -V 10 -o %s -q", t_tmp_path("ok.u32"), t_tmp_path("ok.counts")) == 0);
    size_t n;
    char *bytes = t_read_file(t_tmp_path("ok.counts"), &n);
    REQUIRE(bytes && t_write_file(t_tmp_path("cut.counts"), bytes, n - 3) == 0);
    free(bytes);
    eg_counts *c = NULL;
    eg_err err;
    CHECK(eg_counts_open(t_tmp_path("cut.counts"), &c, &err) == EG_EFORMAT);
    CHECK(strstr(err.msg, "cut.counts"));
}

/* The top k of each order: count first, then (ties) the smaller ids as
 * memory compares them, as eg_count_stats documents it. */
typedef struct {
    uint32_t ids[8];
    uint64_t count;
} top_rec;

static int cmp_top_rec(const void *a, const void *b)
{
    const top_rec *x = a, *y = b;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    return memcmp(x->ids, y->ids, sizeof x->ids);
}

/* The JSON top lists equal the top k of the counts file itself, with every
 * method (ties are frequent at these small counts). */
TEST(count_top_k_matches_the_counts_file)
{
    enum { LEN = 300000, K = 25 };
    uint32_t *x = malloc(LEN * sizeof *x);
    REQUIRE(x);
    uint64_t r = 5;
    for (size_t i = 0; i < LEN; i++) {
        const uint64_t u = t_rand(&r) % 2000;
        x[i] = (uint32_t)(u * u / 2000);
    }
    const char *in = t_tmp_path("topk.u32"), *out = t_tmp_path("topk.counts");
    REQUIRE(t_write_file(in, x, LEN * sizeof *x) == 0);
    free(x);
    static const char *const how[3] = {"--method tables", "--method partition",
                                       "--method partition --passes 3"};
    for (int h = 0; h < 3; h++) {
        REQUIRE(t_cli("count %s -V 2000 -n 3 --pad 0 -T 1000 -m 256M -j 2 -k %d -o %s --json %s",
                      in, K, out, how[h]) == 0);
        json_error_t je;
        json_t *j = json_loads(t_cli_stdout(), 0, &je);
        REQUIRE(j);
        eg_counts *c = NULL;
        eg_err err;
        REQUIRE(eg_counts_open(out, &c, &err) == EG_OK);
        for (uint32_t n = 2; n <= 3; n++) {
            const size_t m = eg_counts_distinct(c, n);
            top_rec *all = calloc(m, sizeof *all);
            REQUIRE(all);
            for (size_t i = 0; i < m; i++)
                REQUIRE(eg_counts_get(c, n, i, all[i].ids, &all[i].count) == EG_OK);
            qsort(all, m, sizeof *all, cmp_top_rec);
            json_t *top = json_object_get(json_array_get(json_object_get(j, "orders"), n - 2), "top");
            CHECK_MSG(json_array_size(top) == K, "%s, order %u: %zu in the top", how[h], n,
                      json_array_size(top));
            size_t bad = 0;
            for (size_t i = 0; i < K && i < json_array_size(top); i++) {
                json_t *e = json_array_get(top, i), *ids = json_object_get(e, "ids");
                bad += (uint64_t)json_integer_value(json_object_get(e, "count")) != all[i].count;
                for (uint32_t k = 0; k < n; k++)
                    bad += (uint32_t)json_integer_value(json_array_get(ids, k)) != all[i].ids[k];
            }
            CHECK_MSG(bad == 0, "%s, order %u: the top %d differs from the file's", how[h], n, K);
            free(all);
        }
        eg_counts_close(c);
        json_decref(j);
    }
}

TEST(count_approx_close_to_exact)
{
    if (!t_shared())
        SKIP("../shared absent");
    const char *ids_path = t_shared_path("golden/tinyshakespeare.deepseek-v3.ids.u32");
    REQUIRE(t_cli("count %s -p %s -n 3 -T 4096 --approx --json -k 3", ids_path,
                  t_shared_path("golden/deepseek-v3.projection.u32")) == 0);
    json_error_t je;
    json_t *j = json_loads(t_cli_stdout(), 0, &je);
    REQUIRE(j);
    json_t *o2 = json_array_get(json_object_get(j, "orders"), 0);
    double d2 = (double)json_integer_value(json_object_get(o2, "distinct"));
    CHECK_MSG(d2 > 96791 * 0.96 && d2 < 96791 * 1.04, "HLL estimate %.0f vs 96791", d2);
    /* the heaviest 2-gram is found with at least most of its count (1970) */
    json_t *top = json_array_get(json_object_get(o2, "top"), 0);
    CHECK(json_integer_value(json_object_get(top, "count")) > 1500);
    json_decref(j);
}

TEST(plan_sizes_and_measured_rates)
{
    CHECK(eg_plan_collision_rate(1, 10) == 0);
    double r = eg_plan_collision_rate(1000, 1000);
    CHECK(r > 0.63 && r < 0.64); /* 1 - e^-1 */
    uint64_t p = eg_plan_size_for(1000000, 0.05);
    CHECK(eg_plan_collision_rate(1000000, p) <= 0.05);
    CHECK(eg_plan_collision_rate(1000000, p - 1) > 0.05);
    if (!t_shared())
        SKIP("../shared absent");
    const char *ids_path = t_shared_path("golden/tinyshakespeare.deepseek-v3.ids.u32");
    REQUIRE(t_cli("count %s -p %s -c configs/demo.json -T 4096 -o %s -q", ids_path,
                  t_shared_path("golden/deepseek-v3.projection.u32"),
                  t_tmp_path("plan.counts")) == 0);
    REQUIRE(t_cli("plan -c configs/demo.json --counts %s --target 0.02 --verify --json -o %s",
                  t_tmp_path("plan.counts"), t_tmp_path("planned.json")) == 0);
    json_error_t je;
    json_t *j = json_loads(t_cli_stdout(), 0, &je);
    REQUIRE(j);
    json_t *o3 = json_array_get(json_object_get(j, "orders"), 1);
    /* measured with the real hash, within a few standard errors of expected */
    double e = json_real_value(json_object_get(o3, "planned_expected_head"));
    double m = json_real_value(json_object_get(o3, "planned_measured_head"));
    CHECK_MSG(e <= 0.02 && m > e * 0.8 && m < e * 1.2, "expected %.4f measured %.4f", e, m);
    double ec = json_real_value(json_object_get(o3, "current_expected_head"));
    double mc = json_real_value(json_object_get(o3, "current_measured_head"));
    CHECK_MSG(mc > ec * 0.8 && mc < ec * 1.2, "current: expected %.4f measured %.4f", ec, mc);
    json_decref(j);
    eg_config cfg;
    eg_err err;
    REQUIRE(eg_config_load(t_tmp_path("planned.json"), &cfg, &err) == EG_OK);
    CHECK_EQ(cfg.compressed_vocab_size, 98627);
    CHECK(cfg.engram_vocab_size[1] > cfg.engram_vocab_size[0]); /* more 3-grams */
    /* --distinct by hand gives the same planned sizes */
    REQUIRE(t_cli("plan -c configs/demo.json --distinct 2=96791,3=211460 --target 0.02 --json") == 0);
    CHECK(strstr(t_cli_stdout(), "\"planned_rows\""));
    CHECK(t_cli("plan -c configs/demo.json --distinct 2=5 --verify") != 0);
}
