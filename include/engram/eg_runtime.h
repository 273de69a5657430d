/*
 * eg_runtime.h - the runtime's CPU backend (also the oracle of every other
 * backend): a store opened for lookups (and training), hashing with decode
 * history, gathering rows, the Engram layer forward and backward (CONTRACT
 * section 5), sparse Adam on the touched rows, and checkpoints.
 *
 * Threads: an eg_runtime may be used by one thread at a time for calls that
 * change it (eg_rt_adam_step, eg_rt_checkpoint); lookups (hash, gather) from
 * several threads at once are safe while nothing changes it. Every call
 * parallelizes internally with OpenMP over `n_threads` (0: OpenMP's default);
 * results are identical for any thread count.
 *
 * Row ids: the layer-local row of a head's bucket, offset[head] + index, as
 * eg_hash_batch's EG_HASH_OFFSETS gives; layers are addressed by their index
 * li in the config's layer_ids.
 */
#ifndef ENGRAM_EG_RUNTIME_H
#define ENGRAM_EG_RUNTIME_H
#include <stddef.h>
#include <stdint.h>
#include "eg_base.h"
#include "eg_dtype.h"
#include "eg_spec.h"
#include "eg_store.h"
#include "eg_tier.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef struct eg_runtime eg_runtime;

typedef struct eg_runtime_opts {
    const char *expect_tokenizer_sha256; /* refuse a store of another tokenizer (NULL: any) */
    const eg_spec *expect_spec;          /* refuse a store of another config (NULL: any) */
    int n_threads;                       /* 0: OpenMP's default */
    /* Where rows are read from: EG_RT_ROWS_MAP (0), LMDB's memory map (rows
     * fault in page by page; the whole store should fit in memory), or
     * EG_RT_ROWS_TIER, the row tier (eg_tier.h): parallel direct reads into
     * a hot-row cache of tier.cache_bytes, with eg_rt_prefetch. */
    int rows;
    eg_tier_opts tier;
} eg_runtime_opts;

#define EG_RT_ROWS_MAP 0
#define EG_RT_ROWS_TIER 1

/* Open `store` read-only for lookups and training steps (updated rows live
 * in memory until eg_rt_checkpoint). opts may be NULL. EG_EMISMATCH when
 * the store was built for another tokenizer or config. */
eg_status eg_runtime_open(const char *store, const eg_runtime_opts *opts, eg_runtime **out,
                          eg_err *err);
void eg_runtime_close(eg_runtime *rt);
/* Borrowed, valid until close (or the next checkpoint for the store). */
const eg_spec *eg_runtime_spec(const eg_runtime *rt);
const eg_store *eg_runtime_store(const eg_runtime *rt);
uint32_t eg_runtime_dim(const eg_runtime *rt); /* values per row */
int eg_runtime_rows(const eg_runtime *rt);     /* EG_RT_ROWS_MAP or EG_RT_ROWS_TIER */

/* ---- hashing -------------------------------------------------------------- */

/* Per sequence decode state: the last N-1 compressed ids (oldest first).
 * eg_rt_history_reset sets `n` histories to a sequence start (all pad). */
typedef struct eg_rt_history {
    uint32_t ids[16];
} eg_rt_history;
void eg_rt_history_reset(const eg_runtime *rt, eg_rt_history *h, size_t n);

/* Hash B sequences of T raw token ids (ids[B*T]; mapped through the store's
 * projection, or taken as compressed ids when the store has none) for layer
 * li into rows[B*T*H] (H = (N-1)*K, orders then heads; cap = rows' capacity
 * in elements).
 * hist: NULL means every sequence starts here (left padding with the pad id,
 * as the contract hashes a whole sequence); otherwise hist[b] supplies the
 * ids before position 0 and receives the last N-1 ids after the call, so
 * hashing a sequence piece by piece (token by token in decode) gives exactly
 * the rows of hashing it whole.
 * barrier: NULL, or B*T bytes; a non-zero byte at position t blocks lookback
 * across it (DeepSeek-V4.1 image spans): the sequence starts afresh at t, so
 * the windows of t and of later positions see the pad id at every position
 * before t (as at a sequence start); the history after the call carries it.
 * EG_ERANGE for an id outside the projection (or >= V'), naming b and t. */
eg_status eg_rt_hash(eg_runtime *rt, uint32_t li, const uint32_t *ids, size_t B, size_t T,
                     const uint8_t *barrier, eg_rt_history *hist, uint64_t *rows, size_t cap,
                     eg_err *err);

/* ---- gathering -------------------------------------------------------------- */

/* out[i*dim .. ] = row rows[i] of layer li, as binary32 (out_dtype EG_F32)
 * or bfloat16 (EG_BF16), from any stored dtype (and from the updated values
 * of rows trained since open). Repeated rows are decoded once. cap: out's
 * capacity in bytes. EG_ERANGE for a row outside the layer. */
eg_status eg_rt_gather(eg_runtime *rt, uint32_t li, const uint64_t *rows, size_t n,
                       eg_dtype out_dtype, void *out, size_t cap, eg_err *err);

/* Start the reads of one step's rows, for every layer, and return at once:
 * the B x T raw ids are hashed as eg_rt_hash would hash them (hist and
 * barrier as there; hist is only read, not advanced) and the rows not cached
 * and not trained are read by the row tier's threads while the caller
 * computes. The step's eg_rt_gather calls then wait only for rows whose
 * reads have not completed. Prefetching changes no value a gather returns.
 * With rows in the map (EG_RT_ROWS_MAP) or a tier without a cache, there is
 * nothing to hold the rows and it does nothing. */
eg_status eg_rt_prefetch(eg_runtime *rt, const uint32_t *ids, size_t B, size_t T,
                         const uint8_t *barrier, const eg_rt_history *hist, eg_err *err);

/* The row tier's counters (zeros when rows come from the map). */
void eg_rt_tier_stats(const eg_runtime *rt, eg_tier_stats *st);

/* ---- the layer (CONTRACT section 5) ------------------------------------------- */

/* Shapes: B sequences of T tokens, hc branches (hc_mult), hidden size d,
 * De = (N-1)*K*dim gathered values per token (the concatenation of the
 * token's rows in hash order), the causal depthwise conv's kernel size and
 * dilation (= N). eps_kq: RMSNorm epsilon of keys and queries (PyTorch's
 * nn.RMSNorm default for float32, 1.1920929e-07, when 0); eps_conv: of the
 * conv input (1e-5 when 0). */
typedef struct eg_layer_dims {
    size_t B, T;
    uint32_t hc, d, De, kernel, dilation;
    float eps_kq, eps_conv;
} eg_layer_dims;

/* Caller-owned dense weights, binary32, row-major, PyTorch's layouts:
 * w_k [hc][d][De] (nn.Linear per branch), b_k [hc][d] (NULL: none),
 * w_v [d][De], b_v [d] (NULL: none), norm_k / norm_q / norm_c [hc][d]
 * (RMSNorm weights of keys, of the hidden states, of the conv input),
 * conv [hc*d][kernel] (nn.Conv1d(groups=hc*d) weight, tap kernel-1 on t). */
typedef struct eg_layer_weights {
    const float *w_k, *b_k, *w_v, *b_v, *norm_k, *norm_q, *norm_c, *conv;
} eg_layer_weights;

/* Gradients, same shapes; every pointer required except db_k / db_v (only
 * when the bias exists). Written, not accumulated. */
typedef struct eg_layer_grads {
    float *de;  /* [B][T][De] */
    float *dh;  /* [B][T][hc][d] */
    float *dw_k, *db_k, *dw_v, *db_v, *dnorm_k, *dnorm_q, *dnorm_c, *dconv;
} eg_layer_grads;

/* Memory: the layer calls (forward, backward, decode) keep one workspace per
 * calling thread, the size of that thread's largest call's intermediates,
 * reused by its later calls and freed when the thread exits (fresh pages on
 * every call cost more than the arithmetic). */

/* out[B][T][hc][d] = v + SiLU(conv(RMSNorm(v))), v = gate * (W_V e + b_V),
 * gate = sigmoid(signed sqrt(<RMSNorm(W_K e + b_K), RMSNorm(h)> / sqrt(d))).
 * e [B][T][De], h [B][T][hc][d]. */
eg_status eg_layer_forward(const eg_layer_dims *dm, const eg_layer_weights *w, const float *e,
                           const float *h, float *out, int n_threads, eg_err *err);

/* The backward pass for dout [B][T][hc][d] (recomputes the forward). */
eg_status eg_layer_backward(const eg_layer_dims *dm, const eg_layer_weights *w, const float *e,
                            const float *h, const float *dout, const eg_layer_grads *g,
                            int n_threads, eg_err *err);

/* Training without recomputing the forward: eg_layer_forward_save writes
 * the output (as eg_layer_forward) and keeps the intermediates the backward
 * needs in `saved` (caller-owned, 8-byte aligned, at least
 * eg_layer_saved_bytes(dm) bytes: (hc*(24 + 32/d) + 4)*d bytes per token,
 * rounded up); eg_layer_backward_saved then gives eg_layer_backward's gradients,
 * bit for bit, from them (same dm, w, e and h; `saved` is only read, and may
 * be reused once the backward returns). EG_ECAPACITY when saved is too small
 * or misaligned. */
size_t eg_layer_saved_bytes(const eg_layer_dims *dm);
eg_status eg_layer_forward_save(const eg_layer_dims *dm, const eg_layer_weights *w,
                                const float *e, const float *h, float *out, void *saved,
                                size_t cap, int n_threads, eg_err *err);
eg_status eg_layer_backward_saved(const eg_layer_dims *dm, const eg_layer_weights *w,
                                  const float *e, const float *h, const float *dout,
                                  const void *saved, size_t cap, const eg_layer_grads *g,
                                  int n_threads, eg_err *err);

/* ---- decoding ---------------------------------------------------------------- */

/* The layer's decode state for B sequences: the causal conv's last
 * (kernel-1)*dilation inputs per sequence (everything else in the layer is
 * per position). Created at every sequence's start; free accepts NULL. */
typedef struct eg_layer_state eg_layer_state;
eg_status eg_layer_state_create(size_t B, uint32_t hc, uint32_t d, uint32_t kernel,
                                uint32_t dilation, eg_layer_state **out, eg_err *err);
void eg_layer_state_free(eg_layer_state *s);
/* Sequences b0 .. b0+n-1 start afresh (their next position is position 0). */
void eg_layer_state_reset(eg_layer_state *s, size_t b0, size_t n);
/* Positions sequence b has been given since its start. */
uint64_t eg_layer_state_seen(const eg_layer_state *s, size_t b);

/* The forward of the next T positions of each of the B sequences (e
 * [B][T][De], h [B][T][hc][d] -> out [B][T][hc][d]), continuing from `s`,
 * which then holds these positions too: a sequence given piece by piece (a
 * prompt, then one token at a time) gets bit for bit the outputs of
 * eg_layer_forward on the whole sequence. dm's B, hc, d, kernel and
 * dilation must be the state's (EG_EINVAL otherwise). */
eg_status eg_layer_decode(const eg_layer_dims *dm, const eg_layer_weights *w, const float *e,
                          const float *h, eg_layer_state *s, float *out, int n_threads,
                          eg_err *err);

/* ---- training ------------------------------------------------------------------ */

/* Reduce per-position row gradients to one per unique row: rows[n] with
 * grads[n][dim] (the gathered positions' slices of de) -> uniq[*n_uniq]
 * (ascending) and usum[*n_uniq][dim]; uniq and usum need room for n rows. */
eg_status eg_rt_reduce_rows(const eg_runtime *rt, const uint64_t *rows, const float *grads,
                            size_t n, uint64_t *uniq, float *usum, size_t *n_uniq, eg_err *err);

typedef struct eg_adam {
    float lr, beta1, beta2, eps;
    float lr_mult; /* the tables' learning-rate multiplier (1 when 0) */
} eg_adam;

/* One Adam step (bias-corrected, no weight decay) on the given unique rows of
 * layer li with their summed gradients; the optimizer state (m, v, and the
 * row's step count) lives with the row. Rows not given do not change. */
eg_status eg_rt_adam_step(eg_runtime *rt, uint32_t li, const uint64_t *uniq, const float *grads,
                          size_t n, const eg_adam *hp, eg_err *err);

/* Set rows' values (n rows of dim binary32 values; a later row of the same
 * id wins), keeping their optimizer state (m, v and step count; zero for a
 * row not trained yet). For rows changed elsewhere, e.g. in a device cache
 * (eg_cuda_cache_writeback); the next checkpoint writes them. */
eg_status eg_rt_set_rows(eg_runtime *rt, uint32_t li, const uint64_t *rows, const float *vals,
                         size_t n, eg_err *err);

/* A row's whole training state, for optimizers that run elsewhere (the CUDA
 * backend's device-trained tables): eg_rt_get_rows_state writes, for each
 * of n rows (< the layer's rows; any order, repeats allowed), its current
 * binary32 value to val [n][dim], Adam's m and v to m and v [n][dim] and its
 * step count to steps [n] (zeros and 0 for a row never trained: what its
 * first Adam step starts from). eg_rt_set_rows_state makes those the rows'
 * state (a later repeat wins); the next checkpoint writes them, and an Adam
 * step continues from them bit for bit. EG_ERANGE for a row out of range
 * (nothing changed), EG_ENOMEM. */
eg_status eg_rt_get_rows_state(eg_runtime *rt, uint32_t li, const uint64_t *rows, size_t n,
                               float *val, float *m, float *v, uint32_t *steps, eg_err *err);
eg_status eg_rt_set_rows_state(eg_runtime *rt, uint32_t li, const uint64_t *rows, size_t n,
                               const float *val, const float *m, const float *v,
                               const uint32_t *steps, eg_err *err);

/* Write a new generation of the store (every row's current value in the
 * store's dtype, plus the binary32 values and Adam state of the trained
 * rows) to `path` (NULL: the store's own path), atomically: the old file
 * stays whole until the rename, and readers that have it open keep their
 * view. The runtime then reads the new generation. */
eg_status eg_rt_checkpoint(eg_runtime *rt, const char *path, eg_err *err);

/* Number of rows trained since open (or held from a checkpoint). */
size_t eg_rt_trained_rows(const eg_runtime *rt);

#ifdef __cplusplus
}
#endif
#endif
