/* test.h - a small test framework: TEST() registers, CHECK() records.
 * The runner prints one line per failure and ends with
 * "N passed, N failed, N skipped". */
#ifndef ENGRAM_TEST_H
#define ENGRAM_TEST_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef void (*test_fn)(void);
void t_register(const char *name, const char *file, test_fn fn);
void t_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void t_skip(const char *why);
int t_failed_now(void);

#define TEST(name)                                                                  \
    static void name(void);                                                         \
    __attribute__((constructor)) static void reg_##name(void)                       \
    {                                                                               \
        t_register(#name, __FILE__, name);                                          \
    }                                                                               \
    static void name(void)

#define CHECK(cond)                                                                 \
    do {                                                                            \
        if (!(cond))                                                                \
            t_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);                         \
    } while (0)

#define CHECK_MSG(cond, ...)                                                        \
    do {                                                                            \
        if (!(cond))                                                                \
            t_fail(__FILE__, __LINE__, __VA_ARGS__);                                \
    } while (0)

#define CHECK_EQ(a, b)                                                              \
    do {                                                                            \
        unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b); \
        if (a_ != b_)                                                               \
            t_fail(__FILE__, __LINE__, "%s == %s: %llu != %llu", #a, #b, a_, b_);    \
    } while (0)

/* Stop the current test when something it needs failed. */
#define REQUIRE(cond)                                                               \
    do {                                                                            \
        if (!(cond)) {                                                              \
            t_fail(__FILE__, __LINE__, "REQUIRE(%s)", #cond);                       \
            return;                                                                 \
        }                                                                           \
    } while (0)

#define REQUIRE_MSG(cond, ...)                                                      \
    do {                                                                            \
        if (!(cond)) {                                                              \
            t_fail(__FILE__, __LINE__, __VA_ARGS__);                                \
            return;                                                                 \
        }                                                                           \
    } while (0)

#define SKIP(why)                                                                   \
    do {                                                                            \
        t_skip(why);                                                                \
        return;                                                                     \
    } while (0)

/* ../shared (or $ENGRAM_SHARED); NULL when absent. */
const char *t_shared(void);
/* Path inside the shared folder, in a static rotating buffer. */
const char *t_shared_path(const char *rel);
/* Read a whole file; returns NULL when it cannot. */
void *t_read_file(const char *path, size_t *len);
/* A fresh temporary directory for this test run. */
const char *t_tmpdir(void);
const char *t_tmp_path(const char *name);
/* t_tmp_path's result is overwritten after 8 calls: a path kept long is
 * declared as its copy, char var[512]. */
#define TMP(var, name)                                                              \
    char var[512];                                                                  \
    snprintf(var, sizeof var, "%s", t_tmp_path(name))
int t_write_file(const char *path, const void *data, size_t len);
int t_file_exists(const char *path);
/* A Megatron shard at prefix of `tokens` tokens in documents of 1..max_doc,
 * Zipf-like ids below id_range (frequent low ids) from seed, the dtype
 * chosen for `vocab`; the token at bad_at (UINT64_MAX: none) is vocab - 5000
 * (out of range for a V' of that). 0, or -1 when it cannot be written. */
int t_write_docs_shard(const char *prefix, unsigned seed, size_t tokens, size_t max_doc,
                       uint32_t id_range, uint64_t vocab, uint64_t bad_at);
/* Whether a name in t_tmpdir() contains `part` (a file left behind). */
int t_tmp_has(const char *part);
/* Both files readable and equal byte for byte. */
int t_same_file(const char *a, const char *b);
/* Run the engram CLI with `args` (a shell fragment); returns its exit status;
 * its stderr is kept in t_cli_stderr(), its stdout in t_cli_stdout(). */
int t_cli(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same under `mpirun --oversubscribe -n ranks` (the CLI's --mpi);
 * t_mpi_available() says whether it can run: engram built with MPI
 * (ENGRAM_MPI=1, set by make test) and mpirun on the PATH. */
int t_cli_mpi(int ranks, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int t_mpi_available(void);
const char *t_cli_stderr(void);
const char *t_cli_stdout(void);
/* The file that holds the last t_cli's standard output (binary-safe). */
const char *t_cli_stdout_file(void);
/* Deterministic pseudo-random numbers for tests (splitmix64). */
uint64_t t_rand(uint64_t *state);

#endif
