/* test_fuzz_regress.c - every fuzz target replays its corpus (seeds and every
 * crash ever found) as a plain regression test, without libFuzzer. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz/fuzz.h"
#include "test.h"

static int replay(const char *dir, int (*target)(const uint8_t *, size_t))
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        size_t len;
        void *buf = t_read_file(path, &len);
        if (!buf)
            continue;
        target(buf, len);
        free(buf);
        n++;
    }
    closedir(d);
    return n;
}

TEST(fuzz_corpus_tokenizer_text_reader_shard_store_counts_replay)
{
    static const struct {
        const char *dir;
        int (*fn)(const uint8_t *, size_t);
    } t[] = {{"tests/fuzz/corpus/tokenizer", eg_fuzz_tokenizer},
             {"tests/fuzz/corpus/text", eg_fuzz_text},
             {"tests/fuzz/corpus/reader", eg_fuzz_reader},
             {"tests/fuzz/corpus/shard", eg_fuzz_shard},
             {"tests/fuzz/corpus/store", eg_fuzz_store},
             {"tests/fuzz/corpus/counts", eg_fuzz_counts},
             {"tests/fuzz/corpus/safetensors", eg_fuzz_safetensors}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        CHECK_MSG(replay(t[i].dir, t[i].fn) > 0, "no corpus in %s", t[i].dir);
}

TEST(fuzz_corpus_config_replays)
{
    int n = replay("tests/fuzz/corpus/config", eg_fuzz_config);
    CHECK_MSG(n > 0, "no corpus in tests/fuzz/corpus/config");
    /* the shipped configs are inputs too */
    CHECK(replay("configs", eg_fuzz_config) >= 3);
}
