/* spm.h - the C interface of the SentencePiece shim (spm_shim.cc, the only
 * C++ file of the project). Internal to libengram. */
#ifndef ENGRAM_SPM_H
#define ENGRAM_SPM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct eg_spm eg_spm;

/* Load a serialized ModelProto; NULL on failure with a message in msg[cap]. */
eg_spm *eg_spm_load(const char *data, size_t len, char *msg, size_t cap);
void eg_spm_free(eg_spm *m);
int eg_spm_size(const eg_spm *m);
/* The piece of `id` (borrowed, valid while m lives). */
const char *eg_spm_piece(const eg_spm *m, int id, size_t *len);
/* 1 when the piece is of that type. */
int eg_spm_is_control(const eg_spm *m, int id);
int eg_spm_is_unknown(const eg_spm *m, int id);
int eg_spm_is_byte(const eg_spm *m, int id);
int eg_spm_is_unused(const eg_spm *m, int id);
/* libsentencepiece's own DecodeIds([id]) into buf; returns the full length. */
size_t eg_spm_decode_native(const eg_spm *m, int id, char *buf, size_t cap);
/* Encode UTF-8 text; returns the number of ids (may exceed cap: call again),
 * or -1 on failure. */
long eg_spm_encode(const eg_spm *m, const char *text, size_t len, int32_t *ids, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
