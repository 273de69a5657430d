/* fuzz_tokenizer.c - fuzz target: tokenizer bytes (tokenizer.json or a
 * SentencePiece model) -> open, decode every id, build the projection, encode. */
#include <stdlib.h>
#include <string.h>

#include "engram/eg_tokenizer.h"
#include "fuzz.h"

int eg_fuzz_tokenizer(const uint8_t *data, size_t size)
{
    eg_tokenizer *t = NULL;
    if (eg_tokenizer_open_memory(data, size, "fuzz", &t, NULL) != EG_OK)
        return 0;
    size_t V = eg_tokenizer_vocab_size(t);
    if (V <= 4096) {
        char buf[64];
        size_t n;
        for (uint32_t id = 0; id < V; id++) {
            (void)eg_tokenizer_decode_id(t, id, buf, sizeof buf, &n);
            (void)eg_tokenizer_flags(t, id);
        }
        eg_vocab_projection *p = NULL;
        if (eg_projection_build(t, &p, NULL) == EG_OK)
            eg_projection_free(p);
    }
    static const char text[] = "Hello  world,\n the 123 <s> caf\xC3\xA9 \xE6\x97\xA5!";
    uint32_t ids[sizeof text + 2];
    size_t n;
    (void)eg_tokenizer_encode(t, text, sizeof text - 1, 0, ids, sizeof text + 2, &n, NULL);
    eg_tokenizer_free(t);
    return 0;
}

#ifdef EG_LIBFUZZER_TOKENIZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return eg_fuzz_tokenizer(data, size); }
#endif
