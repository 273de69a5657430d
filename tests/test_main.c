/* test_main.c - the test runner. Usage: engram-tests [NAME-SUBSTRING...] */
#include <dirent.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engram/eg_shard.h"
#include "test.h"

#define MAX_TESTS 512

static struct {
    const char *name, *file;
    test_fn fn;
} tests[MAX_TESTS];
static int n_tests;
static int cur_failed, cur_skipped;
static char skip_why[256];

void t_register(const char *name, const char *file, test_fn fn)
{
    if (n_tests < MAX_TESTS) {
        tests[n_tests].name = name;
        tests[n_tests].file = file;
        tests[n_tests].fn = fn;
        n_tests++;
    }
}

void t_fail(const char *file, int line, const char *fmt, ...)
{
    if (cur_failed < 10) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stdout, "    %s:%d: ", file, line);
        vfprintf(stdout, fmt, ap);
        fputc('\n', stdout);
        va_end(ap);
    }
    cur_failed++;
}

int t_failed_now(void) { return cur_failed; }

void t_skip(const char *why)
{
    cur_skipped = 1;
    snprintf(skip_why, sizeof skip_why, "%s", why);
}

const char *t_shared(void)
{
    static char path[1024];
    static int done;
    if (!done) {
        done = 1;
        const char *env = getenv("ENGRAM_SHARED");
        snprintf(path, sizeof path, "%s", env && *env ? env : "../shared");
        struct stat st;
        char probe[1100];
        snprintf(probe, sizeof probe, "%s/CONTRACT.md", path);
        if (stat(probe, &st) != 0)
            path[0] = 0;
    }
    return path[0] ? path : NULL;
}

const char *t_shared_path(const char *rel)
{
    static char buf[8][1200];
    static int i;
    i = (i + 1) % 8;
    snprintf(buf[i], sizeof buf[i], "%s/%s", t_shared() ? t_shared() : "../shared", rel);
    return buf[i];
}

void *t_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        if (len)
            *len = (size_t)n;
    }
    return buf;
}

static char tmpdir[256];

const char *t_tmpdir(void)
{
    if (!tmpdir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmpdir, sizeof tmpdir, "%s/engram-tests.XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(tmpdir)) {
            perror("mkdtemp");
            exit(2);
        }
    }
    return tmpdir;
}

const char *t_tmp_path(const char *name)
{
    static char buf[8][512];
    static int i;
    i = (i + 1) % 8;
    snprintf(buf[i], sizeof buf[i], "%s/%s", t_tmpdir(), name);
    return buf[i];
}

int t_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(data, 1, len, f);
    return (fclose(f) == 0 && w == len) ? 0 : -1;
}

int t_file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

int t_write_docs_shard(const char *prefix, unsigned seed, size_t tokens, size_t max_doc,
                       uint32_t id_range, uint64_t vocab, uint64_t bad_at)
{
    eg_shard_writer *w = NULL;
    if (eg_shard_writer_open(prefix, EG_SHARD_MEGATRON, vocab, 0, &w, NULL))
        return -1;
    uint64_t x = 0x9E3779B97F4A7C15ull * (seed + 1);
    uint32_t *doc = malloc(max_doc * sizeof *doc);
    int bad = !doc;
    for (size_t done = 0; !bad && done < tokens;) {
        size_t len = 1 + (size_t)(t_rand(&x) % max_doc);
        len = len < tokens - done ? len : tokens - done;
        for (size_t i = 0; i < len; i++) {
            const double u = (double)(t_rand(&x) >> 11) / 9007199254740992.0;
            doc[i] = (uint32_t)(u * u * u * id_range); /* frequent low ids */
            if (done + i == bad_at)
                doc[i] = (uint32_t)(vocab - 5000);
        }
        bad = eg_shard_writer_add_doc(w, doc, len, NULL) != EG_OK;
        done += len;
    }
    bad = bad || eg_shard_writer_finish(w, NULL) != EG_OK;
    if (bad)
        eg_shard_writer_abort(w);
    eg_shard_writer_free(w);
    free(doc);
    return bad ? -1 : 0;
}

int t_tmp_has(const char *part)
{
    DIR *d = opendir(t_tmpdir());
    int found = 0;
    for (struct dirent *e; d && !found && (e = readdir(d));)
        found = strstr(e->d_name, part) != NULL;
    if (d)
        closedir(d);
    return found;
}

int t_same_file(const char *a, const char *b)
{
    size_t na = 0, nb = 0;
    char *x = t_read_file(a, &na), *y = t_read_file(b, &nb);
    const int same = x && y && na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return same;
}

static char *cli_out, *cli_err;

const char *t_cli_stderr(void) { return cli_err ? cli_err : ""; }
const char *t_cli_stdout(void) { return cli_out ? cli_out : ""; }

static char cli_out_path[600];
const char *t_cli_stdout_file(void) { return cli_out_path; }

/* Run `launcher BIN args` (launcher "" or "mpirun ... "), keeping its
 * output and error. */
__attribute__((format(printf, 2, 0))) static int cli_run(const char *launcher, const char *fmt,
                                                       va_list ap)
{
    char args[4096], cmd[8192];
    vsnprintf(args, sizeof args, fmt, ap);
    const char *bin = getenv("ENGRAM_BIN");
    char out_path[600], err_path[600];
    snprintf(out_path, sizeof out_path, "%s/cli.stdout", t_tmpdir());
    snprintf(cli_out_path, sizeof cli_out_path, "%s", out_path);
    snprintf(err_path, sizeof err_path, "%s/cli.stderr", t_tmpdir());
    snprintf(cmd, sizeof cmd, "%s%s %s >%s 2>%s </dev/null", launcher,
             bin && *bin ? bin : "build/engram", args, out_path, err_path);
    int rc = system(cmd);
    free(cli_out);
    free(cli_err);
    cli_out = t_read_file(out_path, NULL);
    cli_err = t_read_file(err_path, NULL);
    if (rc == -1)
        return -1;
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
}

int t_cli(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    const int rc = cli_run("", fmt, ap);
    va_end(ap);
    return rc;
}

int t_mpi_available(void)
{
    const char *m = getenv("ENGRAM_MPI");
    return m && !strcmp(m, "1") && system("command -v mpirun >/dev/null 2>&1") == 0;
}

int t_cli_mpi(int ranks, const char *fmt, ...)
{
    /* OpenMPI refuses root unless told (containers and CI run as root);
     * MPI's own allocations outlive MPI_Finalize, which is not ours to
     * report under ASan */
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    char launcher[128];
    snprintf(launcher, sizeof launcher,
             "ASAN_OPTIONS=detect_leaks=0 mpirun --oversubscribe -n %d ", ranks);
    va_list ap;
    va_start(ap, fmt);
    const int rc = cli_run(launcher, fmt, ap);
    va_end(ap);
    return rc;
}

uint64_t t_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void rm_tmpdir(void)
{
    if (!tmpdir[0])
        return;
    DIR *d = opendir(tmpdir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            char p[1024];
            snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(tmpdir);
}

int main(int argc, char **argv)
{
    int passed = 0, failed = 0, skipped = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!t_shared())
        printf("note: ../shared not found (set ENGRAM_SHARED): golden tests are skipped\n");
    for (int i = 0; i < n_tests; i++) {
        int want = argc < 2;
        for (int a = 1; a < argc; a++)
            want |= strstr(tests[i].name, argv[a]) != NULL;
        if (!want)
            continue;
        cur_failed = 0;
        cur_skipped = 0;
        tests[i].fn();
        if (cur_failed) {
            printf("FAIL %s (%s, %d checks failed)\n", tests[i].name, tests[i].file, cur_failed);
            failed++;
        } else if (cur_skipped) {
            printf("skip %s: %s\n", tests[i].name, skip_why);
            skipped++;
        } else {
            printf("ok   %s\n", tests[i].name);
            passed++;
        }
    }
    free(cli_out);
    free(cli_err);
    rm_tmpdir();
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
