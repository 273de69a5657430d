/* tok_internal.h - the tokenizer object shared by the HF and SentencePiece
 * loaders (internal to libengram). */
#ifndef ENGRAM_TOK_INTERNAL_H
#define ENGRAM_TOK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "../base/eg_internal.h"
#include "engram/eg_tokenizer.h"

/* One step of a decoder pipeline (HF's decoders, applied to a token list). */
typedef enum {
    DEC_BYTELEVEL = 1,
    DEC_REPLACE,
    DEC_BYTEFALLBACK,
    DEC_FUSE,
    DEC_STRIP,
    DEC_METASPACE
} dec_kind;

typedef struct {
    dec_kind kind;
    char *pattern, *content; /* DEC_REPLACE */
    size_t pattern_len, content_len;
    uint32_t strip_char, strip_start, strip_stop; /* DEC_STRIP */
    uint32_t replacement;                         /* DEC_METASPACE */
    int prepend;                                  /* DEC_METASPACE: strip the first space */
} dec_step;

#define EG_MAX_DEC_STEPS 16

struct eg_tokenizer {
    eg_tokenizer_kind kind;
    char describe[160];
    uint8_t sha[32];
    size_t n;        /* ids */
    char *arena;     /* piece bytes */
    size_t *off;     /* piece i at arena + off[i] */
    uint32_t *len;   /* its length */
    uint32_t *flags; /* EG_PIECE_* */
    dec_step steps[EG_MAX_DEC_STEPS];
    size_t n_steps;
    void *spm; /* the SentencePiece processor, for EG_TOKENIZER_SPM */
    struct hf_encoder *enc;   /* tokenizer.json encoder; NULL when unsupported */
    char enc_error[256];      /* why encoding is unsupported */
};

struct json_t;
/* Build the tokenizer.json encoder (normalizer, pre-tokenizer, BPE merges,
 * added tokens) from the parsed file. Unsupported parts leave tok->enc NULL
 * with the reason in tok->enc_error; only EG_ENOMEM fails. */
eg_status eg_hfenc_build(eg_tokenizer *tok, struct json_t *root, const char *path, eg_err *err);
void eg_hfenc_free(struct hf_encoder *enc);
eg_status eg_hfenc_encode(const eg_tokenizer *tok, const char *text, size_t len, uint32_t flags,
                          uint32_t *ids, size_t cap, size_t *n_out, eg_err *err);


/* Allocate the per-id arrays of `tok` for n ids, pieces to be appended. */
eg_status eg_tok_alloc(eg_tokenizer *tok, size_t n, eg_err *err);

/* Loaders: fill `tok` (kind, pieces, flags, decoder) from the file bytes. */
eg_status eg_tok_load_hf(eg_tokenizer *tok, const char *data, size_t len, const char *path,
                         eg_err *err);
eg_status eg_tok_load_spm(eg_tokenizer *tok, const char *data, size_t len, const char *path,
                          eg_err *err);

/* Run the decoder pipeline on one or more pieces; the result (one string) is
 * appended to `out`. */
eg_status eg_tok_decode_pieces(const eg_tokenizer *tok, const uint32_t *ids, size_t n,
                               eg_buf *out);

/* UTF-8 -> UTF-8 with every ill-formed subsequence replaced by U+FFFD
 * (maximal subparts, as Rust's from_utf8_lossy). Appends to `out`. */
int eg_utf8_lossy(const char *s, size_t n, eg_buf *out);
/* Whether s[0..n) is well-formed UTF-8. */
int eg_utf8_valid(const char *s, size_t n);

/* SHA-256 (OpenSSL). */
void eg_sha256(const void *data, size_t n, uint8_t out[32]);

#endif
