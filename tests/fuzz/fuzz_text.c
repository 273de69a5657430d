/* fuzz_text.c - fuzz target: arbitrary text through the key normalizer and the
 * encoders of two small built-in tokenizers (ByteLevel with regex splits;
 * Metaspace with byte fallback), then the decoder. */
#include <stdlib.h>
#include <string.h>

#include "engram/eg_tokenizer.h"
#include "fuzz.h"

static const char bytelevel_json[] =
    "{\"added_tokens\":[{\"id\":9,\"content\":\"<s>\",\"special\":true}],"
    "\"normalizer\":null,"
    "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":["
    "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\p{N}{1,3}\"},\"behavior\":\"Isolated\"},"
    "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\s+(?!\\\\S)|\\\\s+|\\\\p{L}+\"},"
    "\"behavior\":\"Isolated\"},"
    "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]},"
    "\"decoder\":{\"type\":\"ByteLevel\"},"
    "\"model\":{\"type\":\"BPE\",\"merges\":[\"a b\",\"ab c\"],\"vocab\":{"
    "\"a\":0,\"b\":1,\"c\":2,\"ab\":3,\"abc\":4,\"\\u0120\":5,\"1\":6,\"2\":7,\"\\u010a\":8}}}";

static const char metaspace_json[] =
    "{\"added_tokens\":[],\"normalizer\":null,"
    "\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\","
    "\"prepend_scheme\":\"first\",\"split\":true},"
    "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":"
    "\"\\u2581\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},"
    "{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]},"
    "\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"fuse_unk\":true,\"unk_token\":\"<unk>\","
    "\"merges\":[\"\\u2581 a\"],\"vocab\":{\"<unk>\":0,\"\\u2581\":1,\"a\":2,\"\\u2581a\":3,"
    "\"<0x00>\":4}}}";

int eg_fuzz_text(const uint8_t *data, size_t size)
{
    static eg_tokenizer *toks[2];
    if (!toks[0]) {
        eg_tokenizer_open_memory(bytelevel_json, sizeof bytelevel_json - 1, "bl", &toks[0], NULL);
        eg_tokenizer_open_memory(metaspace_json, sizeof metaspace_json - 1, "ms", &toks[1], NULL);
    }
    const char *text = (const char *)data;
    size_t n;
    char *out = malloc(size * 8 + 16);
    if (out)
        (void)eg_normalize_key(text, size, out, size * 8 + 16, &n, NULL);
    free(out);
    uint32_t *ids = malloc((size + 2) * sizeof *ids);
    for (int k = 0; k < 2 && ids; k++) {
        if (!toks[k])
            continue;
        if (eg_tokenizer_encode(toks[k], text, size, 0, ids, size + 2, &n, NULL) == EG_OK) {
            char buf[32];
            size_t m;
            for (size_t i = 0; i < n && i < 64; i++)
                (void)eg_tokenizer_decode_id(toks[k], ids[i], buf, sizeof buf, &m);
        }
    }
    free(ids);
    return 0;
}

#ifdef EG_LIBFUZZER_TEXT
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return eg_fuzz_text(data, size); }
#endif
