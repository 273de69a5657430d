/* test_dist.c - counting across processes (eg_count_opts.comm) with ranks as
 * threads of this process (an eg_comm over a barrier): byte-identical to one
 * process for 1..4 ranks, in memory and with spills, and a failure on one
 * rank stops every rank with its message. With mpicc and mpirun, the same
 * through `mpirun engram count --mpi` (test_cli's mpi tests). */
#include <pthread.h>
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
    eg_count_opts o;
    eg_comm cm;
    tcomm tc;
    eg_count_stats st;
    eg_err err;
    eg_status ret;
} rank_job;

static void *rank_main(void *arg)
{
    rank_job *j = arg;
    j->o.comm = &j->cm;
    j->ret = eg_count_run(&j->o, &j->st, &j->err);
    return NULL;
}

/* Count `o` on R thread ranks; each rank's status and message in jobs. */
static void run_ranks(const eg_count_opts *o, int R, rank_job *jobs)
{
    tshared sh = {.R = R};
    sh.send = calloc((size_t)R, sizeof *sh.send);
    sh.sb = calloc((size_t)R, sizeof *sh.sb);
    sh.sa = calloc((size_t)R, sizeof *sh.sa);
    pthread_barrier_init(&sh.bar, NULL, (unsigned)R);
    pthread_t th[8];
    for (int r = 0; r < R; r++) {
        memset(&jobs[r], 0, sizeof jobs[r]);
        jobs[r].o = *o;
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

static void write_shard(const char *prefix, unsigned seed, size_t tokens, uint32_t bad_at)
{
    eg_shard_writer *w = NULL;
    eg_err err;
    REQUIRE(eg_shard_writer_open(prefix, EG_SHARD_MEGATRON, 70000, 0, &w, &err) == EG_OK);
    uint64_t x = 0x9E3779B97F4A7C15ull * (seed + 1);
    uint32_t doc[500];
    for (size_t done = 0; done < tokens;) {
        size_t len = 1 + (size_t)(t_rand(&x) % 500);
        len = len < tokens - done ? len : tokens - done;
        for (size_t i = 0; i < len; i++) {
            const double u = (double)(t_rand(&x) >> 11) / 9007199254740992.0;
            doc[i] = (uint32_t)(u * u * u * 60000); /* frequent low ids */
            if (done + i == bad_at)
                doc[i] = 65000;
        }
        REQUIRE(eg_shard_writer_add_doc(w, doc, len, &err) == EG_OK);
        done += len;
    }
    REQUIRE(eg_shard_writer_finish(w, &err) == EG_OK);
    eg_shard_writer_free(w);
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
        char name[16];
        snprintf(name, sizeof name, "dist%d", i);
        snprintf(paths[i], sizeof paths[i], "%s", t_tmp_path(name));
        write_shard(paths[i], (unsigned)i, sizes[i], UINT32_MAX);
        sp[i] = paths[i];
    }
    char one[512], out[512];
    snprintf(one, sizeof one, "%s", t_tmp_path("dist_one.counts"));
    snprintf(out, sizeof out, "%s", t_tmp_path("dist_ranks.counts"));
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
                run_ranks(&o, R, jobs);
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
        char name[16];
        snprintf(name, sizeof name, "dfail%d", i);
        snprintf(paths[i], sizeof paths[i], "%s", t_tmp_path(name));
        write_shard(paths[i], 40u + (unsigned)i, 30000, i == 2 ? 12345 : UINT32_MAX);
        sp[i] = paths[i];
    }
    char out[512];
    snprintf(out, sizeof out, "%s", t_tmp_path("dfail.counts"));
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
    run_ranks(&o, 4, jobs);
    for (int r = 0; r < 4; r++) {
        CHECK_MSG(jobs[r].ret == EG_ERANGE, "rank %d: status %d", r, jobs[r].ret);
        CHECK_MSG(strstr(jobs[r].err.msg, "rank 2 of 4: ") &&
                      strstr(jobs[r].err.msg, "dfail2") &&
                      strstr(jobs[r].err.msg, "token 12345: compressed id 65000 >= V' = 65000"),
                  "rank %d: '%s'", r, jobs[r].err.msg);
    }
    CHECK(!t_file_exists(out));
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "ls %s | grep -c 'dfail.counts' > /dev/null", t_tmpdir());
    CHECK_MSG(system(cmd) != 0, "a part or temporary file of the output is left");
}
