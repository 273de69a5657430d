/*
 * eg_tokenizer.h - tokenizers (a HuggingFace tokenizer.json or a SentencePiece
 * .model), the key normalizer, and the vocabulary projection P: V -> V'
 * (../shared/CONTRACT.md section 1).
 *
 * A tokenizer is read-only once opened and may be shared by threads. Every
 * string it returns is UTF-8 with an explicit length (pieces may hold any
 * bytes), borrowed from the tokenizer and valid until eg_tokenizer_free.
 */
#ifndef ENGRAM_EG_TOKENIZER_H
#define ENGRAM_EG_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "eg_base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct eg_tokenizer eg_tokenizer;

typedef enum eg_tokenizer_kind {
    EG_TOKENIZER_HF_JSON = 1, /* HuggingFace tokenizer.json (BPE) */
    EG_TOKENIZER_SPM = 2      /* SentencePiece .model (libsentencepiece) */
} eg_tokenizer_kind;

/* Piece flags (eg_tokenizer_flags). */
enum {
    EG_PIECE_CONTROL = 1u << 0,      /* control piece (<s>, </s>, ...) */
    EG_PIECE_BYTE = 1u << 1,         /* byte piece <0xNN> */
    EG_PIECE_UNKNOWN = 1u << 2,      /* the unknown piece */
    EG_PIECE_ADDED = 1u << 3,        /* an added token (tokenizer.json added_tokens) */
    EG_PIECE_SPECIAL = 1u << 4,      /* a special added token */
    EG_PIECE_UNUSED = 1u << 5,       /* an unused SentencePiece piece */
    EG_PIECE_MISSING = 1u << 6       /* no token has this id (a hole in the ids) */
};

/* Open a tokenizer; its kind is recognized from the file's contents (a JSON
 * object is a tokenizer.json, anything else is tried as a SentencePiece model).
 * Supported tokenizer.json models: BPE; decoders: ByteLevel, Metaspace,
 * Replace (string patterns), ByteFallback, Fuse, Strip and Sequences of them.
 * Errors name the file: EG_EIO (unreadable), EG_EFORMAT (not a tokenizer,
 * truncated), EG_EUNSUPPORTED (another model or decoder type).
 * On failure *out is NULL. */
eg_status eg_tokenizer_open(const char *path, eg_tokenizer **out, eg_err *err);
/* The same from bytes in memory (copied as needed; `name` is used in
 * messages and may be NULL). */
eg_status eg_tokenizer_open_memory(const void *data, size_t len, const char *name,
                                   eg_tokenizer **out, eg_err *err);
void eg_tokenizer_free(eg_tokenizer *tok);

eg_tokenizer_kind eg_tokenizer_get_kind(const eg_tokenizer *tok);
/* "tokenizer.json (BPE, ByteLevel decoder)" and the like; borrowed. */
const char *eg_tokenizer_describe(const eg_tokenizer *tok);

/* Number of ids, added tokens included (Python's len(tokenizer)). */
size_t eg_tokenizer_vocab_size(const eg_tokenizer *tok);

/* The raw token string of `id` (convert_ids_to_tokens): borrowed, *len bytes
 * (not NUL-terminated in general). EG_ERANGE when id >= vocab size. */
eg_status eg_tokenizer_piece(const eg_tokenizer *tok, uint32_t id, const char **text,
                             size_t *len);

/* EG_PIECE_* flags of `id` (0 for an id out of range). */
uint32_t eg_tokenizer_flags(const eg_tokenizer *tok, uint32_t id);

/* Decode the single id as HF's decode([id], skip_special_tokens=False) does
 * (no clean-up of tokenization spaces); for a SentencePiece model, as HF's
 * converted tokenizer does. Invalid UTF-8 becomes U+FFFD. Writes up to cap
 * bytes to buf and the full length to *len; EG_ECAPACITY when it does not fit
 * (call again with *len bytes). */
eg_status eg_tokenizer_decode_id(const eg_tokenizer *tok, uint32_t id, char *buf, size_t cap,
                                 size_t *len);

/* ---- encoding ----------------------------------------------------------- */

/* Flags of eg_tokenizer_encode. */
enum {
    EG_ENCODE_CONTINUE = 1u << 0 /* the text continues a document: no prefix space */
};

/* EG_OK when the tokenizer can encode text; otherwise EG_EUNSUPPORTED with
 * the reason (a normalizer, pre-tokenizer or model option not handled). */
eg_status eg_tokenizer_can_encode(const eg_tokenizer *tok, eg_err *err);

/* Encode UTF-8 text exactly as the tokenizer does, without special tokens:
 * HF tokenizers' encode(text, add_special_tokens=False) for a tokenizer.json
 * (added tokens found in the text are kept as single ids), libsentencepiece's
 * Encode for a .model. Writes up to cap ids and the count to *n_out;
 * EG_ECAPACITY when cap is too small (cap >= len + 2 always suffices).
 * Thread-safe. Text must be valid UTF-8 (EG_EFORMAT otherwise). */
eg_status eg_tokenizer_encode(const eg_tokenizer *tok, const char *text, size_t len,
                              uint32_t flags, uint32_t *ids, size_t cap, size_t *n_out,
                              eg_err *err);

/* The id of a token string (vocabulary or added token); EG_ERANGE if none. */
eg_status eg_tokenizer_token_id(const eg_tokenizer *tok, const char *s, size_t len,
                                uint32_t *id);

/* SHA-256 of the tokenizer file's bytes. */
void eg_tokenizer_sha256(const eg_tokenizer *tok, uint8_t out[32]);

/* ---- the key normalizer ------------------------------------------------ */

/* normalize(text) of CONTRACT section 1: NFKC; NFD; drop every combining mark
 * (M*); lowercase each code point with its full mapping (root locale, no
 * context); runs of [ \t\r\n] become one space; a lone space stays; else strip
 * White_Space at both ends; finally U+E000 becomes a space (the reference's
 * sentinel). `text` must be valid UTF-8 (EG_EFORMAT otherwise). Output as in
 * eg_tokenizer_decode_id: up to cap bytes, full length in *len, EG_ECAPACITY
 * when it does not fit. Thread-safe. */
eg_status eg_normalize_key(const char *text, size_t len, char *out, size_t cap,
                           size_t *out_len, eg_err *err);

/* ---- the projection ----------------------------------------------------- */

typedef struct eg_vocab_projection eg_vocab_projection;

/* Build P for every id of `tok` (borrowed only during the call): the key of
 * each id (its decode, normalized; the raw token when the decode holds
 * U+FFFD; the decode itself when it normalizes to nothing), new ids in
 * first-seen order. */
eg_status eg_projection_build(const eg_tokenizer *tok, eg_vocab_projection **out, eg_err *err);
void eg_projection_free(eg_vocab_projection *p);

/* The map, one compressed id per raw id; borrowed. */
const uint32_t *eg_projection_map(const eg_vocab_projection *p, size_t *n_raw);
uint64_t eg_projection_compressed_size(const eg_vocab_projection *p); /* V' */
/* Key of compressed id `cid` (borrowed, *len bytes) and how many raw ids map
 * to it; NULL / 0 for cid >= V'. */
const char *eg_projection_key(const eg_vocab_projection *p, uint32_t cid, size_t *len);
uint32_t eg_projection_group_size(const eg_vocab_projection *p, uint32_t cid);
/* SHA-256 of the map as little-endian uint32 (the P.u32 file's bytes). */
void eg_projection_sha256(const eg_vocab_projection *p, uint8_t out[32]);

/* Hex of a SHA-256 into out[65]. */
void eg_sha256_hex(const uint8_t digest[32], char out[65]);

#ifdef __cplusplus
}
#endif
#endif
