/*
 * eg_safetensors.h - a reader of the safetensors format (an 8-byte
 * little-endian header length, a JSON header of tensors and string metadata,
 * then the byte buffer). The file is mapped read-only; every tensor's dtype,
 * shape and byte range is checked when the file is opened: ranges inside the
 * buffer, not overlapping, sized dtype size x the product of the shape
 * (without overflow). Tensors stay borrowed from the handle until close.
 */
#ifndef ENGRAM_EG_SAFETENSORS_H
#define ENGRAM_EG_SAFETENSORS_H
#include <stddef.h>
#include <stdint.h>
#include "eg_base.h"
#ifdef __cplusplus
extern "C" {
#endif

#define EG_ST_MAX_DIMS 8

typedef struct eg_st_tensor {
    const char *name;  /* borrowed */
    const char *dtype; /* "F32", "BF16", "F16", "F8_E4M3", "U8", ... (borrowed) */
    uint32_t ndim;
    uint64_t shape[EG_ST_MAX_DIMS];
    uint64_t nbytes;
    const void *data; /* in the map */
} eg_st_tensor;

typedef struct eg_safetensors eg_safetensors;

eg_status eg_safetensors_open(const char *path, eg_safetensors **out, eg_err *err);
void eg_safetensors_close(eg_safetensors *st);
size_t eg_safetensors_count(const eg_safetensors *st);
const eg_st_tensor *eg_safetensors_get(const eg_safetensors *st, size_t i);
/* The tensor named `name`, or NULL. */
const eg_st_tensor *eg_safetensors_find(const eg_safetensors *st, const char *name);
/* A __metadata__ string, or NULL. */
const char *eg_safetensors_meta(const eg_safetensors *st, const char *key);
/* Bytes per element of a safetensors dtype name; 0 when unknown. */
size_t eg_safetensors_dtype_size(const char *dtype);

#ifdef __cplusplus
}
#endif
#endif
