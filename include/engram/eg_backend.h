/*
 * eg_backend.h - the runtime's backend table. Every compute backend offers
 * the same operations; the CPU backend is built in and is the oracle, the
 * CUDA backend lives in libengram_cuda.so (built when nvcc exists) and is
 * reached only through this table, loaded on first use with dlopen, so
 * libengram itself never links CUDA.
 *
 * The operations take host memory and return results in host memory (the
 * CUDA backend stages through the device), which is what the parity suite
 * compares case by case; device-pointer entry points for production use are
 * in the backend's own header (eg_cuda.h).
 */
#ifndef ENGRAM_EG_BACKEND_H
#define ENGRAM_EG_BACKEND_H
#include <stddef.h>
#include <stdint.h>
#include "eg_base.h"
#include "eg_runtime.h"
#include "eg_spec.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef struct eg_backend {
    const char *name; /* "cpu", "cuda" */
    /* eg_hash_batch's contract: compressed ids [n_seq][seq_len] -> [.][.][H] */
    eg_status (*hash)(const eg_spec *spec, uint32_t li, const uint32_t *ids, size_t n_seq,
                      size_t seq_len, uint32_t flags, uint32_t *out, size_t out_cap, eg_err *err);
    /* out[i] = table[rows[i]] for rows of `row_bytes` bytes (a table already
     * in the output encoding); rows >= n_rows are EG_ERANGE */
    eg_status (*gather)(const void *table, uint64_t n_rows, size_t row_bytes, const uint64_t *rows,
                        size_t n, void *out, eg_err *err);
    /* the distinct values of rows[n], ascending, into uniq; *n_uniq */
    eg_status (*unique)(const uint64_t *rows, size_t n, uint64_t *uniq, size_t *n_uniq,
                        eg_err *err);
    eg_status (*layer_forward)(const eg_layer_dims *dm, const eg_layer_weights *w, const float *e,
                               const float *h, float *out, eg_err *err);
    eg_status (*layer_backward)(const eg_layer_dims *dm, const eg_layer_weights *w,
                                const float *e, const float *h, const float *dout,
                                const eg_layer_grads *g, eg_err *err);
    /* Adam on n rows: vals/m/v [n][dim], steps[n] (incremented), grads [n][dim] */
    eg_status (*adam)(float *vals, float *m, float *v, uint32_t *steps, const float *grads,
                      size_t n, uint32_t dim, const eg_adam *hp, eg_err *err);
    /* hash raw ids [n_seq][seq_len] of a runtime's store and gather the rows
     * in the stored encoding, with the layer's table placed as `residency`
     * (0 device, 1 host, 2 auto, 3 cached; the CPU ignores it): rows [n*H], out
     * [n*H][row_bytes] */
    eg_status (*lookup)(eg_runtime *rt, uint32_t li, int residency, const uint32_t *ids,
                        size_t n_seq, size_t seq_len, uint64_t *rows, void *out, eg_err *err);
    /* n_steps sparse Adam steps of layer li's table in a runtime, step s on
     * rows [s][n] (repeats allowed) with gradients [s][n][dim]: the CPU
     * reduces and steps the runtime (eg_rt_reduce_rows, eg_rt_adam_step);
     * CUDA trains a device copy (eg_cuda_table_open_train, eg_cuda_adam_rows)
     * and hands the trained rows back to the runtime (eg_cuda_table_sync) */
    eg_status (*train_rows)(eg_runtime *rt, uint32_t li, const uint64_t *rows, const float *grads,
                            size_t n, size_t n_steps, const eg_adam *hp, eg_err *err);
} eg_backend;

/* "cpu" (always), or "cuda": loads libengram_cuda.so (from $ENGRAM_CUDA_LIB,
 * beside libengram, or the loader's path) and checks that a device is present;
 * EG_EUNSUPPORTED with the reason otherwise. The table is static. */
eg_status eg_backend_get(const char *name, const eg_backend **out, eg_err *err);

/* The Adam update every backend implements, for one row (the oracle). */
void eg_adam_row(float *val, float *m, float *v, uint32_t step, const float *g, uint32_t dim,
                 const eg_adam *hp);

#ifdef __cplusplus
}
#endif
#endif
