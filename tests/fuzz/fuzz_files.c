/* fuzz_files.c - fuzz targets over files: corpus readers (plain, gzip, zstd,
 * JSONL; every mode) and shard readers (Megatron, llm.c, raw). The input is
 * written to a temporary file first, as users' files are. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engram/eg_prep.h"
#include "fuzz.h"

int eg_fuzz_reader(const uint8_t *data, size_t size)
{
    const char *p = eg_fuzz_tmp_path(".txt");
    if (eg_fuzz_put(p, data, size))
        return 0;
    for (int mode = 0; mode < 3; mode++)
        for (int strict = 0; strict < 2; strict++) {
            eg_reader_opts o = {0};
            o.mode = (eg_doc_mode)mode;
            o.field = "text";
            o.strict = strict;
            o.max_doc_bytes = 1024;
            /* small reads, so documents and compressed frames straddle refills */
            o.read_bytes = 64 + (size & 255);
            eg_reader *r = NULL;
            if (eg_reader_open(&p, 1, &o, &r, NULL) != EG_OK)
                continue;
            const char *t;
            size_t len;
            uint32_t fl;
            while (eg_reader_next(r, &t, &len, &fl, NULL) == EG_OK && t)
                ;
            eg_reader_close(r);
        }
    unlink(p);
    return 0;
}

int eg_fuzz_shard(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    /* first byte: the layout (0 Megatron .idx + .bin, 1 a .bin, 2 a .u32) */
    const uint8_t kind = data[0] % 3;
    data++;
    size--;
    char a[320], b[320], prefix[300];
    snprintf(prefix, sizeof prefix, "%s", eg_fuzz_tmp_path(""));
    snprintf(a, sizeof a, "%s.idx", prefix);
    snprintf(b, sizeof b, "%s.bin", prefix);
    const char *open_path = prefix;
    if (kind == 0) { /* u16 length of the .idx part, then .idx, then .bin */
        if (size < 2)
            return 0;
        size_t cut = (size_t)(data[0] | data[1] << 8);
        data += 2;
        size -= 2;
        if (cut > size)
            cut = size;
        if (eg_fuzz_put(a, data, cut) || eg_fuzz_put(b, data + cut, size - cut))
            return 0;
    } else if (kind == 1) {
        if (eg_fuzz_put(b, data, size))
            return 0;
        open_path = b;
    } else {
        snprintf(a, sizeof a, "%s.u32", prefix);
        if (eg_fuzz_put(a, data, size))
            return 0;
        open_path = a;
    }
    eg_shard *s = NULL;
    if (eg_shard_open(open_path, &s, NULL) == EG_OK) {
        uint32_t buf[256];
        uint64_t n = eg_shard_n_tokens(s);
        for (uint64_t i = 0; i < n; i += 256)
            (void)eg_shard_read(s, i, (size_t)(n - i < 256 ? n - i : 256), buf, NULL);
        for (uint64_t d = 0; d < eg_shard_n_docs(s) && d < 1000; d++) {
            uint64_t f, m;
            (void)eg_shard_doc(s, d, &f, &m);
        }
        eg_shard_close(s);
    }
    unlink(a);
    unlink(b);
    return 0;
}

#ifdef EG_LIBFUZZER_READER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return eg_fuzz_reader(data, size); }
#endif
#ifdef EG_LIBFUZZER_SHARD
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return eg_fuzz_shard(data, size); }
#endif
