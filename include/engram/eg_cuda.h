/*
 * eg_cuda.h - the CUDA backend's device-pointer entry points (in
 * libengram_cuda.so, built when nvcc exists; link it, or reach the
 * host-memory operations through eg_backend.h).
 *
 * A layer's table is opened for the GPU with a residency:
 *   EG_CUDA_DEVICE  rows copied once into device memory (HBM);
 *   EG_CUDA_HOST    rows stay in host memory: the store's map is registered
 *                   with the driver (cudaHostRegister, read-only, mapped) and
 *                   the GPU reads the rows it gathers directly over the bus;
 *                   a block-pointer table on the device finds each row;
 *   EG_CUDA_AUTO    DEVICE when the table fits in the free device memory
 *                   minus `reserve` bytes, else HOST.
 * Indices depend only on the input ids, so the rows of batch i+1 can be
 * gathered on a side stream while batch i computes (eg_cuda_gather on a
 * stream of the caller's choosing into a second buffer).
 *
 * Streams are cudaStream_t passed as void * (NULL: the default stream).
 * The table borrows the store of `rt`: close the table before the runtime.
 * Rows trained in the runtime since open are not seen (open after a
 * checkpoint).
 */
#ifndef ENGRAM_EG_CUDA_H
#define ENGRAM_EG_CUDA_H
#include <stddef.h>
#include <stdint.h>
#include "eg_base.h"
#include "eg_runtime.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef enum { EG_CUDA_DEVICE = 0, EG_CUDA_HOST = 1, EG_CUDA_AUTO = 2 } eg_cuda_residency;

typedef struct eg_cuda_table eg_cuda_table;

eg_status eg_cuda_table_open(eg_runtime *rt, uint32_t li, eg_cuda_residency where, size_t reserve,
                             eg_cuda_table **out, eg_err *err);
void eg_cuda_table_close(eg_cuda_table *t);
/* DEVICE or HOST: what AUTO chose. */
eg_cuda_residency eg_cuda_table_residency(const eg_cuda_table *t);

/* Hash n_seq sequences of seq_len compressed ids (device memory) into
 * layer-local rows (uint64, device memory), as eg_hash_batch with offsets. */
eg_status eg_cuda_hash(eg_cuda_table *t, const uint32_t *d_ids, size_t n_seq, size_t seq_len,
                       uint64_t *d_rows, void *stream, eg_err *err);

/* d_out[i] = row d_rows[i] in the stored encoding (row_bytes each), device
 * memory; rows out of range leave zeros and make the call fail with
 * EG_ERANGE (after the stream synchronizes). */
eg_status eg_cuda_gather(eg_cuda_table *t, const uint64_t *d_rows, size_t n, void *d_out,
                         void *stream, eg_err *err);

#ifdef __cplusplus
}
#endif
#endif
