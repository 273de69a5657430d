/*
 * eg_config.h - Engram configurations: the reference's fields, read from JSON.
 *
 * Two JSON shapes are accepted:
 *  1. The reference shape (engram_demo_v1.py's EngramConfig field names):
 *       engram_vocab_size  [int, ...]  one table size per order 2..N (required)
 *       max_ngram_size     int >= 2                                (required)
 *       n_embed_per_ngram  int, a multiple of n_head_per_ngram     (required)
 *       n_head_per_ngram   int >= 1                                (required)
 *       layer_ids          [int >= 0, ...] distinct                (required)
 *       pad_id             int >= 0 (a raw id)                     (required)
 *       seed               int >= 0                 (default 0)
 *       kernel_size        int >= 1                 (default 4)
 *     plus ours, all optional: name, description, tokenizer_name_or_path
 *     (strings), compressed_vocab_size (the V' the tables were built for;
 *     a projection with another V' is refused), hidden_size (default 1024),
 *     hc_mult (default 4). Any other field is an error.
 *  2. A DeepSeek-V4.1 Hugging Face config.json: recognized by an
 *     `engram_layer_ids` field at the top level or in `text_config`. Read are
 *     engram_layer_ids, engram_max_ngram_size, engram_n_heads, engram_head_dim,
 *     engram_vocab_size (an int for every order, or a list), engram_pad_token_id,
 *     engram_compressed_vocab_size and engram_num_embeddings (the published
 *     rows per layer, checked against the prime schedule by eg_spec_create),
 *     with hidden_size and hc_mult when present; other fields are ignored.
 */
#ifndef ENGRAM_EG_CONFIG_H
#define ENGRAM_EG_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "eg_base.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EG_MAX_NGRAM 16   /* largest max_ngram_size accepted */
#define EG_MAX_LAYERS 64  /* most Engram layers in one config */
#define EG_MAX_HEADS 64   /* most heads per order */
#define EG_NAME_MAX 128

typedef struct eg_config {
    uint32_t max_ngram_size;                     /* N */
    uint32_t n_head_per_ngram;                   /* K */
    uint32_t n_embed_per_ngram;                  /* K * head_dim */
    uint32_t n_layers;                           /* entries used in layer_ids */
    uint32_t layer_ids[EG_MAX_LAYERS];
    uint64_t engram_vocab_size[EG_MAX_NGRAM - 1]; /* per order n = 2..N at [n-2] */
    int64_t pad_id;                              /* raw id, >= 0 */
    uint64_t seed;
    uint32_t kernel_size;
    uint32_t hidden_size;
    uint32_t hc_mult;
    uint64_t compressed_vocab_size;  /* declared V'; 0 = not declared */
    uint64_t declared_rows[EG_MAX_LAYERS]; /* HF engram_num_embeddings; 0 = none */
    int from_hf;                     /* 1 when read from a HF config.json */
    char name[EG_NAME_MAX];
} eg_config;

/* Fill `cfg` with the reference demo configuration (engram_demo_v1.py). */
void eg_config_demo(eg_config *cfg);

/* Parse a JSON text of `len` bytes. `source` names it in error messages
 * (a file name; may be NULL). On failure `cfg` is unspecified. */
eg_status eg_config_parse(const char *json, size_t len, const char *source,
                          eg_config *cfg, eg_err *err);

/* Read and parse the file at `path`. */
eg_status eg_config_load(const char *path, eg_config *cfg, eg_err *err);

/* Check every field's range and the relations between fields. Called by
 * eg_config_parse; call it again after editing a config by hand. */
eg_status eg_config_validate(const eg_config *cfg, const char *source, eg_err *err);

/* Write the config as reference-shaped JSON (one line, no trailing newline)
 * into buf[cap]. Returns EG_ECAPACITY when it does not fit. */
eg_status eg_config_to_json(const eg_config *cfg, char *buf, size_t cap, eg_err *err);

#ifdef __cplusplus
}
#endif
#endif
