/* fuzz.h - fuzz targets, callable from libFuzzer and from the test runner. */
#ifndef ENGRAM_FUZZ_H
#define ENGRAM_FUZZ_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int eg_fuzz_config(const uint8_t *data, size_t size);
int eg_fuzz_tokenizer(const uint8_t *data, size_t size);
int eg_fuzz_text(const uint8_t *data, size_t size);
int eg_fuzz_reader(const uint8_t *data, size_t size);
int eg_fuzz_shard(const uint8_t *data, size_t size);
int eg_fuzz_store(const uint8_t *data, size_t size);
int eg_fuzz_counts(const uint8_t *data, size_t size);
int eg_fuzz_safetensors(const uint8_t *data, size_t size);

/* A per-process temporary path ending in `suffix` (a static buffer), and a
 * whole-file write: the targets give the parsers files, as users' files are. */
static inline const char *eg_fuzz_tmp_path(const char *suffix)
{
    static char path[256];
    const char *dir = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/eg-fuzz-%ld%s", dir && *dir ? dir : "/tmp", (long)getpid(),
             suffix);
    return path;
}

static inline int eg_fuzz_put(const char *path, const uint8_t *d, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = n ? fwrite(d, 1, n, f) : 0;
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}
#endif
