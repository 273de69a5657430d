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
 *                   Refused (EG_EUNSUPPORTED) for a runtime on the row tier
 *                   (EG_RT_ROWS_TIER: a store larger than RAM): use CACHED.
 *   EG_CUDA_AUTO    DEVICE when the table fits in the free device memory
 *                   minus `reserve` bytes, else HOST.
 * Indices depend only on the input ids, so the rows of batch i+1 can be
 * gathered on a side stream while batch i computes (eg_cuda_gather on a
 * stream of the caller's choosing into a second buffer).
 *
 *   EG_CUDA_CACHED  rows stay in host memory with the runtime; a device cache
 *                   of hot rows (set associative, LRU) is filled ahead of
 *                   each batch (eg_cuda_table_open_cached, below). Its loads
 *                   are eg_rt_gather calls: on a runtime on the row tier they
 *                   read from disk through it, and eg_rt_prefetch of the
 *                   batch starts those reads before the staging.
 *   EG_CUDA_TRAIN   every row in binary32 with its Adam state in device
 *                   memory, trained there (eg_cuda_table_open_train, below).
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
#include "eg_dtype.h"
#include "eg_rowcache.h"
#include "eg_runtime.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    EG_CUDA_DEVICE = 0,
    EG_CUDA_HOST = 1,
    EG_CUDA_AUTO = 2,
    EG_CUDA_CACHED = 3, /* eg_cuda_table_open_cached */
    EG_CUDA_TRAIN = 4   /* eg_cuda_table_open_train */
} eg_cuda_residency;

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

/* ---- cached tables: rows in host memory, hot rows in a device cache --------------- */

/* A table whose rows stay with the runtime in host memory (the store's map
 * and the rows set or trained since open) and whose hot rows live in a
 * device cache of cache_rows rows (`ways`-way set associative, LRU; the
 * directory is eg_rowcache.h's, on the host), decoded to `dtype` (EG_F32 or
 * EG_BF16). Batches of at most max_batch positions. */
eg_status eg_cuda_table_open_cached(eg_runtime *rt, uint32_t li, uint64_t cache_rows,
                                    uint32_t ways, eg_dtype dtype, size_t max_batch,
                                    eg_cuda_table **out, eg_err *err);

/* Stage a batch: rows (host memory, n <= max_batch) -> d_slots (device, n
 * uint64) for eg_cuda_gather_slots. On the host: plans the batch, writes
 * dirty evicted rows back into the runtime (eg_rt_set_rows; waits for
 * their copy), gathers the rows to load and those served directly into a
 * pinned buffer (eg_rt_gather); then queues the copies on `stream` and
 * returns. Call it for batch i+1 while batch i computes (two batches may be
 * staged ahead of their gathers; a third waits for the oldest gather), and
 * order the gather after `stream` (an event, or the same stream). */
eg_status eg_cuda_cache_stage(eg_cuda_table *t, const uint64_t *rows, size_t n, uint64_t *d_slots,
                              void *stream, eg_rowcache_plan_stats *stats, eg_err *err);

/* d_out[i] = the cached or staged row of slot d_slots[i] (dtype of the
 * cache); batches are gathered in the order they were staged. Asynchronous
 * on `stream` (after the batch's copies). */
eg_status eg_cuda_gather_slots(eg_cuda_table *t, const uint64_t *d_slots, size_t n, void *d_out,
                               void *stream, eg_err *err);

/* The cache's rows on the device (slot s at s * row bytes), for kernels that
 * change cached rows in place; mark the slots they changed (host memory;
 * direct positions are ignored: their rows are not cached) after queuing
 * those kernels on `stream`: the next stage waits for them before it writes
 * back or replaces any row. A batch's slots may be replaced once the batch
 * after the next is staged. After an error from stage, the cache's contents
 * are undefined: close the table. */
void *eg_cuda_cache_rows(eg_cuda_table *t);
eg_status eg_cuda_cache_mark_dirty(eg_cuda_table *t, const uint64_t *slots, size_t n,
                                   void *stream, eg_err *err);

/* Copy every dirty cached row into the runtime (eg_rt_set_rows), e.g. before
 * eg_rt_checkpoint; waits for the device. */
eg_status eg_cuda_cache_writeback(eg_cuda_table *t, eg_err *err);

/* ---- training a table on the device ------------------------------------------- */

/* Every row of layer li in binary32 (the runtime's current values: stored,
 * set or trained) with its Adam state (m, v, step count; eg_rt_get_rows_state)
 * in device memory: rows * (12 * dim + 5) bytes. eg_cuda_hash works on it,
 * and eg_cuda_gather returns binary32 rows (dim * 4 bytes each). */
eg_status eg_cuda_table_open_train(eg_runtime *rt, uint32_t li, eg_cuda_table **out,
                                   eg_err *err);

/* One sparse Adam step on a training table: d_rows [n] (device; repeats
 * allowed) with their gradients d_grads [n][dim] (device); the gradients of
 * equal rows summed in position order, then each distinct row updated once,
 * with the CPU runtime's arithmetic (eg_rt_reduce_rows + eg_rt_adam_step give
 * the same bits). Waits for the stream (it checks the rows first: EG_ERANGE
 * for a row out of range, nothing trained). EG_EINVAL for a table not opened
 * for training. */
eg_status eg_cuda_adam_rows(eg_cuda_table *t, const uint64_t *d_rows, const float *d_grads,
                            size_t n, const eg_adam *hp, void *stream, eg_err *err);

/* The rows trained on the device since the last sync, into the runtime
 * (eg_rt_set_rows_state: value, m, v, step count), e.g. before
 * eg_rt_checkpoint; waits for the device. Nothing to do for other tables. */
eg_status eg_cuda_table_sync(eg_cuda_table *t, eg_err *err);

/* ---- the layer on device pointers ---------------------------------------------- */

/* A workspace for the forward and backward of up to dm->B * dm->T tokens of
 * these dimensions (hc, d, De and kernel fixed; the intermediates, a cuBLAS
 * handle). */
typedef struct eg_cuda_layer eg_cuda_layer;
eg_status eg_cuda_layer_create(const eg_layer_dims *dm, eg_cuda_layer **out, eg_err *err);
void eg_cuda_layer_free(eg_cuda_layer *l);

/* eg_layer_forward with every pointer in device memory (the weights in w
 * too), queued on `stream`: d_e [B][T][De], d_h [B][T][hc][d] -> d_out
 * [B][T][hc][d]. The backend table's forward runs it (on uploaded copies),
 * so the parity suite checks it against the CPU. */
eg_status eg_cuda_layer_forward(eg_cuda_layer *l, const eg_layer_dims *dm,
                                const eg_layer_weights *w, const float *d_e, const float *d_h,
                                float *d_out, void *stream, eg_err *err);

/* eg_layer_backward with every pointer in device memory (the weights in w
 * and every gradient in g too; db_k / db_v only with their biases), queued
 * on `stream`: recomputes the forward from d_e and d_h in the workspace
 * (as eg_layer_backward does on the CPU), then writes g->de [B][T][De],
 * g->dh [B][T][hc][d] and the weights' gradients (written, not
 * accumulated). The backward's own arrays are allocated at the first call
 * (EG_ENOMEM when the device has no room). One call at a time per
 * eg_cuda_layer (the workspace is shared with its forward). This is what
 * the backend table's layer_backward runs, so the parity suite
 * (cuda_parity_layer) checks it against the CPU. */
eg_status eg_cuda_layer_backward(eg_cuda_layer *l, const eg_layer_dims *dm,
                                 const eg_layer_weights *w, const float *d_e, const float *d_h,
                                 const float *d_dout, const eg_layer_grads *g, void *stream,
                                 eg_err *err);

#ifdef __cplusplus
}
#endif
#endif
