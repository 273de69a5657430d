/* test_dist.c - counting and preparing across processes (eg_count_opts.comm,
 * eg_prep_opts.comm) with ranks as threads of this process (an eg_comm over
 * a barrier): byte-identical to one process for 1..4 ranks, in memory and
 * with spills, and a failure on one rank stops every rank with its message.
 * With mpicc and mpirun, the same through `mpirun engram count|prep --mpi`. */
#include <glob.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engram/engram.h"
#include "engram/eg_count.h"
#include "engram/eg_prep.h"
#include "eg_internal.h"
#include "test.h"

typedef struct {
    int R;
    pthread_barrier_t bar;
    const unsigned char **send;
    const size_t **sb, **sa;
} tshared;

typedef struct {
    tshared *sh;
    int rank;
} tcomm;

static int t_allgather(void *ctx, const void *send, size_t bytes, void *recv)
{
    tcomm *t = ctx;
    t->sh->send[t->rank] = send;
    pthread_barrier_wait(&t->sh->bar);
    for (int r = 0; r < t->sh->R; r++)
        memcpy((unsigned char *)recv + (size_t)r * bytes, t->sh->send[r], bytes);
    pthread_barrier_wait(&t->sh->bar);
    return 0;
}

static int t_allgatherv(void *ctx, const void *send, size_t bytes, void *recv,
                        const size_t *bytes_of)
{
    tcomm *t = ctx;
    t->sh->send[t->rank] = send;
    int bad = bytes != bytes_of[t->rank];
    pthread_barrier_wait(&t->sh->bar);
    for (int r = 0, at = 0; r < t->sh->R; at += (int)bytes_of[r], r++)
        if (bytes_of[r])
            memcpy((unsigned char *)recv + at, t->sh->send[r], bytes_of[r]);
    pthread_barrier_wait(&t->sh->bar);
    return bad;
}

static int t_alltoallv(void *ctx, const void *send, const size_t *sb, const size_t *sa,
                       void *recv, const size_t *rb, const size_t *ra)
{
    tcomm *t = ctx;
    const int me = t->rank;
    t->sh->send[me] = send;
    t->sh->sb[me] = sb;
    t->sh->sa[me] = sa;
    pthread_barrier_wait(&t->sh->bar);
    int bad = 0;
    for (int r = 0; r < t->sh->R; r++) {
        bad |= t->sh->sb[r][me] != rb[r];
        if (rb[r])
            memcpy((unsigned char *)recv + ra[r], t->sh->send[r] + t->sh->sa[r][me], rb[r]);
    }
    pthread_barrier_wait(&t->sh->bar);
    return bad;
}

typedef struct {
    eg_count_opts o; /* a count, or */
    eg_prep_opts po; /* a prep where po.tok is set */
    eg_comm cm;
    tcomm tc;
    eg_count_stats st;
    eg_prep_stats pst;
    eg_err err;
    eg_status ret;
} rank_job;

static void *rank_main(void *arg)
{
    rank_job *j = arg;
    j->o.comm = j->po.comm = &j->cm;
    j->ret = j->po.tok ? eg_prep_run(&j->po, &j->pst, &j->err)
                       : eg_count_run(&j->o, &j->st, &j->err);
    return NULL;
}

/* Count `o` (or prepare `po` where o is NULL) on R thread ranks; each
 * rank's status and message in jobs. */
static void run_ranks(const eg_count_opts *o, const eg_prep_opts *po, int R, rank_job *jobs)
{
    tshared sh = {.R = R};
    sh.send = calloc((size_t)R, sizeof *sh.send);
    sh.sb = calloc((size_t)R, sizeof *sh.sb);
    sh.sa = calloc((size_t)R, sizeof *sh.sa);
    pthread_barrier_init(&sh.bar, NULL, (unsigned)R);
    pthread_t th[8];
    for (int r = 0; r < R; r++) {
        memset(&jobs[r], 0, sizeof jobs[r]);
        if (o)
            jobs[r].o = *o;
        else
            jobs[r].po = *po;
        jobs[r].tc = (tcomm){&sh, r};
        jobs[r].cm = (eg_comm){.rank = r, .size = R, .ctx = &jobs[r].tc,
                               .allgather = t_allgather, .allgatherv = t_allgatherv,
                               .alltoallv = t_alltoallv};
        pthread_create(&th[r], NULL, rank_main, &jobs[r]);
    }
    for (int r = 0; r < R; r++)
        pthread_join(th[r], NULL);
    pthread_barrier_destroy(&sh.bar);
    free(sh.send);
    free(sh.sb);
    free(sh.sa);
}

/* Documents of 1..500 tokens, ids below 60000, id 65000 at token bad_at. */
static void write_shard(const char *prefix, unsigned seed, size_t tokens, uint32_t bad_at)
{
    REQUIRE(t_write_docs_shard(prefix, seed, tokens, 500, 60000, 70000, bad_at) == 0);
}

static char *slurp(const char *path, size_t *n)
{
    *n = 0;
    return t_read_file(path, n);
}

/* Seven shards of 2k..160k tokens (orders 2..3 in one-word keys with 32-bit
 * counts, and orders 2..5 in two-word keys): 1, 2, 3 and 4 ranks write the
 * file one process writes, byte for byte, with an ample budget and with one
 * that spills; the statistics are the whole count's on every rank. */
TEST(count_across_ranks_equals_one_process)
{
    static const size_t sizes[7] = {40000, 2000, 160000, 75000, 9000, 120000, 33000};
    char paths[7][512];
    const char *sp[7];
    for (int i = 0; i < 7; i++) {
        char name[32];
        snprintf(name, sizeof name, "dist%d", i);
        snprintf(paths[i], sizeof paths[i], "%s", t_tmp_path(name));
        write_shard(paths[i], (unsigned)i, sizes[i], UINT32_MAX);
        sp[i] = paths[i];
    }
    TMP(one, "dist_one.counts");
    TMP(out, "dist_ranks.counts");
    for (int N = 3; N <= 5; N += 2)
        for (int spill = 0; spill < 2; spill++) {
            eg_count_opts o;
            memset(&o, 0, sizeof o);
            o.shards = sp;
            o.n_shards = 7;
            o.vprime = 65536;
            o.pad = 0;
            o.max_ngram = (uint32_t)N;
            o.pad_mode = EG_PAD_DOCS;
            o.memory = spill ? (size_t)2 << 20 : (size_t)256 << 20;
            o.n_threads = 2;
            o.top_k = 5;
            o.output = one;
            o.method = EG_COUNT_TABLES;
            eg_count_stats st1;
            eg_err err;
            REQUIRE(eg_count_run(&o, &st1, &err) == EG_OK);
            size_t n1;
            char *want = slurp(one, &n1);
            REQUIRE(want);
            o.output = out;
            for (int R = 1; R <= 4; R++) {
                rank_job jobs[4];
                run_ranks(&o, NULL, R, jobs);
                for (int r = 0; r < R; r++)
                    CHECK_MSG(jobs[r].ret == EG_OK, "N %d, spill %d, %d ranks, rank %d: %s", N,
                              spill, R, r, jobs[r].err.msg);
                size_t n2;
                char *got = slurp(out, &n2);
                CHECK_MSG(got && n1 == n2 && !memcmp(want, got, n1),
                          "N %d, spill %d: %d ranks wrote another file (%zu vs %zu bytes)", N,
                          spill, R, n2, n1);
                free(got);
                for (int r = 0; r < R; r++) {
                    const eg_count_stats *s = &jobs[r].st;
                    CHECK(s->tokens == st1.tokens && s->ranks == (uint32_t)R);
                    CHECK(s->distinct[N] == st1.distinct[N] && s->singletons[2] == st1.singletons[2]);
                    CHECK(!memcmp(s->fof, st1.fof, sizeof s->fof));
                    CHECK_MSG(s->n_top[2] == st1.n_top[2] &&
                                  !memcmp(s->top[2], st1.top[2], st1.n_top[2] * sizeof *st1.top[2]),
                              "%d ranks: the top 2-grams differ", R);
                    if (R > 1)
                        CHECK(s->exchange_bytes > 0);
                    if (spill)
                        CHECK(s->spills > 0);
                    eg_count_stats_free(&jobs[r].st);
                }
            }
            free(want);
            eg_count_stats_free(&st1);
        }
}

/* A bad id in the shard one rank reads: every rank stops with that rank's
 * message (shard and token), and neither the output nor a part is left. */
TEST(count_across_ranks_a_failing_rank_stops_all)
{
    char paths[4][512];
    const char *sp[4];
    for (int i = 0; i < 4; i++) {
        char name[32];
        snprintf(name, sizeof name, "dfail%d", i);
        snprintf(paths[i], sizeof paths[i], "%s", t_tmp_path(name));
        write_shard(paths[i], 40u + (unsigned)i, 30000, i == 2 ? 12345 : UINT32_MAX);
        sp[i] = paths[i];
    }
    TMP(out, "dfail.counts");
    eg_count_opts o;
    memset(&o, 0, sizeof o);
    o.shards = sp;
    o.n_shards = 4;
    o.vprime = 65000;
    o.max_ngram = 3;
    o.memory = (size_t)64 << 20;
    o.n_threads = 1;
    o.output = out;
    rank_job jobs[4];
    run_ranks(&o, NULL, 4, jobs);
    for (int r = 0; r < 4; r++) {
        CHECK_MSG(jobs[r].ret == EG_ERANGE, "rank %d: status %d", r, jobs[r].ret);
        CHECK_MSG(strstr(jobs[r].err.msg, "rank 2 of 4: ") &&
                      strstr(jobs[r].err.msg, "dfail2") &&
                      strstr(jobs[r].err.msg, "token 12345: compressed id 65000 >= V' = 65000"),
                  "rank %d: '%s'", r, jobs[r].err.msg);
    }
    CHECK(!t_file_exists(out));
    CHECK_MSG(!t_tmp_has("dfail.counts"), "a part or temporary file of the output is left");
}

/* ---- prep across ranks ------------------------------------------------------ */

/* Every token and every document length of the shards PREFIX*.bin, in name
 * order (the stream a reader of the shards sees). */
typedef struct {
    uint32_t *tok;
    size_t n_tok;
    uint64_t *docs;
    size_t n_docs, n_shards;
} stream;

static void stream_free(stream *s)
{
    free(s->tok);
    free(s->docs);
    memset(s, 0, sizeof *s);
}

static void read_stream(const char *prefix, stream *s)
{
    memset(s, 0, sizeof *s);
    char pat[600];
    snprintf(pat, sizeof pat, "%s*.bin", prefix);
    glob_t g;
    if (glob(pat, 0, NULL, &g))
        return;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        eg_shard *sh = NULL;
        eg_err err;
        REQUIRE(eg_shard_open(g.gl_pathv[i], &sh, &err) == EG_OK);
        const uint64_t nt = eg_shard_n_tokens(sh), nd = eg_shard_n_docs(sh);
        s->tok = realloc(s->tok, (s->n_tok + nt + 1) * sizeof *s->tok);
        s->docs = realloc(s->docs, (s->n_docs + nd + 1) * sizeof *s->docs);
        REQUIRE(s->tok && s->docs);
        REQUIRE(eg_shard_read(sh, 0, (size_t)nt, s->tok + s->n_tok, &err) == EG_OK);
        for (uint64_t d = 0; d < nd; d++) {
            uint64_t first, n;
            REQUIRE(eg_shard_doc(sh, d, &first, &n) == EG_OK);
            s->docs[s->n_docs + d] = n;
        }
        s->n_tok += nt;
        s->n_docs += nd;
        s->n_shards++;
        eg_shard_close(sh);
    }
    globfree(&g);
}

static int same_stream(const stream *a, const stream *b)
{
    return a->n_tok == b->n_tok && a->n_docs == b->n_docs && a->n_tok &&
           !memcmp(a->tok, b->tok, a->n_tok * sizeof *a->tok) &&
           !memcmp(a->docs, b->docs, a->n_docs * sizeof *a->docs);
}

/* n_files pieces of tinyshakespeare of different sizes in folder dir (one
 * empty); the last holds invalid UTF-8 where bad. */
static void write_pieces(const char *dir, int n_files, int bad)
{
    size_t n;
    char *text = t_read_file(t_shared_path("data/corpora/tinyshakespeare.txt"), &n);
    REQUIRE(text && n > 400000);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", dir, dir);
    REQUIRE(system(cmd) == 0);
    size_t at = 0;
    for (int i = 0; i < n_files; i++) {
        const size_t len = i == 2 ? 0 : 3000 + (size_t)(i * i) * 4100 + (size_t)(i % 3) * 20000;
        char path[600];
        snprintf(path, sizeof path, "%s/piece%02d.txt", dir, i);
        REQUIRE(t_write_file(path, text + at, len) == 0);
        if (bad && i == n_files - 1) {
            FILE *f = fopen(path, "ab");
            REQUIRE(f);
            fputs("a bad byte \xff here\n", f);
            fclose(f);
        }
        at += len;
    }
    free(text);
}

/* Files divided among 1..4 ranks (and 4 ranks over two files, so that some
 * write nothing): the shards of all ranks in name order hold the tokens and
 * documents one process writes, per file and per line, with --bos/--eos,
 * one shard per rank or several; the statistics are the whole job's. */
TEST(prep_across_ranks_equals_one_process)
{
    if (!t_shared())
        SKIP("needs ../shared (tokenizer and corpus)");
    TMP(dir, "pdist_in");
    TMP(one, "pdist_one");
    TMP(ranks, "pdist_ranks");
    write_pieces(dir, 9, 0);
    eg_tokenizer *tok = NULL;
    eg_err err;
    REQUIRE(eg_tokenizer_open(t_shared_path("data/tokenizers/mistral-v03.tokenizer.json"), &tok,
                              &err) == EG_OK);
    char two[2][600];
    snprintf(two[0], sizeof two[0], "%s/piece03.txt", dir);
    snprintf(two[1], sizeof two[1], "%s/piece07.txt", dir);
    const char *folder[1] = {dir}, *pair[2] = {two[0], two[1]};
    char cmd[1200];
    for (int c = 0; c < 4; c++) {
        eg_prep_opts po;
        memset(&po, 0, sizeof po);
        po.inputs = c == 3 ? pair : folder;
        po.n_inputs = c == 3 ? 2 : 1;
        po.tok = tok;
        po.format = EG_SHARD_MEGATRON;
        po.reader.mode = c == 1 ? EG_DOC_PER_LINE : EG_DOC_PER_FILE;
        po.bos = c == 1 ? 1 : -1;
        po.eos = c == 1 ? -1 : 2;
        po.shard_tokens = c == 2 ? 7000 : 0;
        po.n_threads = 1;
        po.output = one;
        snprintf(cmd, sizeof cmd, "rm -f %s* %s*", one, ranks);
        REQUIRE(system(cmd) == 0);
        eg_prep_stats st1;
        REQUIRE_MSG(eg_prep_run(&po, &st1, &err) == EG_OK, "%s", err.msg);
        stream want;
        read_stream(one, &want);
        po.output = ranks;
        for (int R = 1; R <= 4; R++) {
            snprintf(cmd, sizeof cmd, "rm -f %s*", ranks);
            REQUIRE(system(cmd) == 0);
            rank_job jobs[4];
            run_ranks(NULL, &po, R, jobs);
            for (int r = 0; r < R; r++) {
                CHECK_MSG(jobs[r].ret == EG_OK, "case %d, %d ranks, rank %d: %s", c, R, r,
                          jobs[r].err.msg);
                const eg_prep_stats *s = &jobs[r].pst;
                CHECK_MSG(s->tokens == st1.tokens && s->in.docs == st1.in.docs &&
                              s->in.files == st1.in.files && s->in.bytes == st1.in.bytes &&
                              s->in.empty == st1.in.empty,
                          "case %d, %d ranks, rank %d: stats %llu tokens vs %llu", c, R, r,
                          (unsigned long long)s->tokens, (unsigned long long)st1.tokens);
            }
            stream got;
            read_stream(ranks, &got);
            CHECK_MSG(same_stream(&want, &got),
                      "case %d, %d ranks: %zu tokens / %zu docs vs %zu / %zu", c, R, got.n_tok,
                      got.n_docs, want.n_tok, want.n_docs);
            CHECK_MSG(got.n_shards == jobs[0].pst.shards, "case %d, %d ranks: %zu shards, %zu said",
                      c, R, got.n_shards, jobs[0].pst.shards);
            if (c == 0) { /* one shard per rank: rank r's is PREFIX_r<r>.bin */
                char p[600];
                snprintf(p, sizeof p, "%s_r%05d.bin", ranks, R - 1);
                CHECK_MSG(t_file_exists(p), "%d ranks: no %s", R, p);
            }
            if (c == 3 && R == 4) { /* two files: two ranks write nothing */
                CHECK(got.n_shards == 2);
            }
            stream_free(&got);
        }
        stream_free(&want);
    }
    CHECK_MSG(!t_tmp_has(".tmp."), "a temporary shard is left");
    eg_tokenizer_free(tok);
}

/* Invalid UTF-8 (with strict) in the file the last rank reads: every rank
 * stops with that rank's message, and no shard of any rank is left, under
 * its final name or a temporary one. */
TEST(prep_across_ranks_a_failing_rank_stops_all)
{
    if (!t_shared())
        SKIP("needs ../shared (tokenizer and corpus)");
    TMP(dir, "pfail_in");
    TMP(out, "pfail_out");
    write_pieces(dir, 9, 1);
    eg_tokenizer *tok = NULL;
    eg_err err;
    REQUIRE(eg_tokenizer_open(t_shared_path("data/tokenizers/mistral-v03.tokenizer.json"), &tok,
                              &err) == EG_OK);
    const char *folder[1] = {dir};
    eg_prep_opts po;
    memset(&po, 0, sizeof po);
    po.inputs = folder;
    po.n_inputs = 1;
    po.tok = tok;
    po.format = EG_SHARD_MEGATRON;
    po.reader.strict = 1;
    po.bos = po.eos = -1;
    po.shard_tokens = 5000; /* ranks finish shards before the failure */
    po.n_threads = 1;
    po.output = out;
    rank_job jobs[4];
    run_ranks(NULL, &po, 4, jobs);
    for (int r = 0; r < 4; r++)
        CHECK_MSG(jobs[r].ret == EG_EFORMAT && strstr(jobs[r].err.msg, "rank 3 of 4: ") &&
                      strstr(jobs[r].err.msg, "piece08.txt: invalid UTF-8"),
                  "rank %d: %d '%s'", r, jobs[r].ret, jobs[r].err.msg);
    CHECK_MSG(!t_tmp_has("pfail_out"), "a shard (or a temporary one) is left");
    eg_tokenizer_free(tok);
}

/* ---- the same through mpirun ------------------------------------------------ */

/* mpirun -n 1, 2, 4 engram count --mpi: the file one process writes, in
 * memory and spilling; a bad id on one rank fails the job with its message
 * and no output. */
TEST(mpirun_count_equals_one_process)
{
    if (!t_mpi_available())
        SKIP("engram built without MPI, or no mpirun");
    static const size_t sizes[5] = {50000, 3000, 140000, 80000, 20000};
    char paths[5][512];
    for (int i = 0; i < 5; i++) {
        char name[32];
        snprintf(name, sizeof name, "mpic%d", i);
        snprintf(paths[i], sizeof paths[i], "%s", t_tmp_path(name));
        write_shard(paths[i], 70u + (unsigned)i, sizes[i], UINT32_MAX);
    }
    char in[2600] = "";
    TMP(one, "mpic_one.counts");
    TMP(out, "mpic_out.counts");
    for (int i = 0; i < 5; i++)
        snprintf(in + strlen(in), sizeof in - strlen(in), "%s.bin ", paths[i]);
    for (int spill = 0; spill < 2; spill++) {
        /* spilling: runs and each rank's part in --tmp, not beside the output */
        char mem[700];
        snprintf(mem, sizeof mem, spill ? "-m 2M --method tables --tmp %s" : "-m 256M",
                 t_tmpdir());
        REQUIRE(t_cli("count %s -V 65536 --pad 0 -n 4 --docs %s -j 2 -o %s -q", in, mem, one) ==
                0);
        for (int R = 1; R <= 4; R *= 2) {
            const int rc = t_cli_mpi(R, "count %s -V 65536 --pad 0 -n 4 --docs %s -j 1 -o %s --mpi --json",
                                     in, mem, out);
            CHECK_MSG(rc == 0, "spill %d, %d ranks: exit %d: %s", spill, R, rc, t_cli_stderr());
            CHECK_MSG(t_same_file(one, out), "spill %d, %d ranks: another file", spill, R);
            char want[64];
            snprintf(want, sizeof want, "\"ranks\": %d", R);
            CHECK_MSG(strstr(t_cli_stdout(), want), "%d ranks: %s", R, t_cli_stdout());
            if (spill) /* the report's spill count is rank 0's, but some rank spilled */
                CHECK(strstr(t_cli_stdout(), "\"spills\""));
        }
    }
    /* a bad id in the shard rank 1 of 2 reads */
    write_shard(paths[3], 73u, sizes[3], 777);
    remove(out);
    const int rc = t_cli_mpi(2, "count %s -V 65000 -n 3 -j 1 -o %s --mpi", in, out);
    CHECK_MSG(rc != 0, "a bad id passed");
    CHECK_MSG(strstr(t_cli_stderr(), "rank 1 of 2: ") && strstr(t_cli_stderr(), "mpic3") &&
                  strstr(t_cli_stderr(), "token 777"),
              "%s", t_cli_stderr());
    CHECK(!t_file_exists(out));
}

/* mpirun -n 3 engram prep --mpi: the shards of all ranks hold the stream one
 * process writes; invalid UTF-8 on one rank fails the job, no shard left. */
TEST(mpirun_prep_equals_one_process)
{
    if (!t_mpi_available())
        SKIP("engram built without MPI, or no mpirun");
    if (!t_shared())
        SKIP("needs ../shared (tokenizer and corpus)");
    TMP(dir, "mpip_in");
    TMP(one, "mpip_one");
    TMP(out, "mpip_out");
    write_pieces(dir, 9, 0);
    const char *tok = t_shared_path("data/tokenizers/mistral-v03.tokenizer.json");
    REQUIRE(t_cli("prep -t %s -o %s %s --doc-per-line --eos 2 -s 9000 -q", tok, one, dir) == 0);
    const int rc =
        t_cli_mpi(3, "prep -t %s -o %s %s --doc-per-line --eos 2 -s 9000 -j 1 --mpi --json", tok,
                  out, dir);
    CHECK_MSG(rc == 0, "exit %d: %s", rc, t_cli_stderr());
    CHECK_MSG(strstr(t_cli_stdout(), "\"ranks\": 3"), "%s", t_cli_stdout());
    stream want, got;
    read_stream(one, &want);
    read_stream(out, &got);
    CHECK_MSG(same_stream(&want, &got), "%zu tokens / %zu docs vs %zu / %zu", got.n_tok,
              got.n_docs, want.n_tok, want.n_docs);
    stream_free(&want);
    stream_free(&got);
    write_pieces(dir, 9, 1);
    TMP(fail, "mpip_fail");
    CHECK(t_cli_mpi(3, "prep -t %s -o %s %s --strict -j 1 --mpi", tok, fail, dir) != 0);
    CHECK_MSG(strstr(t_cli_stderr(), "rank 2 of 3: ") && strstr(t_cli_stderr(), "piece08.txt"),
              "%s", t_cli_stderr());
    CHECK_MSG(!t_tmp_has("mpip_fail"), "a shard (or a temporary one) is left");
}
