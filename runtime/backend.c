/* backend.c - the backend table: the built-in CPU backend (the oracle) and
 * the loader of libengram_cuda.so (eg_backend.h). */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eg_internal.h"
#include "engram/eg_backend.h"
#include "engram/eg_hash.h"
#include "eg_adam_rule.h"

void eg_adam_row(float *val, float *m, float *v, uint32_t step, const float *g, uint32_t dim,
                 const eg_adam *hp)
{
    const double b1 = (double)hp->beta1, b2 = (double)hp->beta2;
    const double lr = (double)hp->lr * (hp->lr_mult > 0 ? (double)hp->lr_mult : 1.0);
    const double c1 = 1.0 - eg_powi(b1, step), c2 = 1.0 - eg_powi(b2, step);
    for (uint32_t k = 0; k < dim; k++)
        eg_adam_value(&val[k], &m[k], &v[k], g[k], b1, b2, c1, c2, lr, hp->eps);
}

static eg_status cpu_hash(const eg_spec *spec, uint32_t li, const uint32_t *ids, size_t n_seq,
                          size_t seq_len, uint32_t flags, uint32_t *out, size_t out_cap, eg_err *err)
{
    return eg_hash_batch(spec, li, ids, n_seq, seq_len, flags, 0, out, out_cap, err);
}

static eg_status cpu_gather(const void *table, uint64_t n_rows, size_t row_bytes,
                            const uint64_t *rows, size_t n, void *out, eg_err *err)
{
    for (size_t i = 0; i < n; i++) {
        if (rows[i] >= n_rows)
            return eg_fail(err, EG_ERANGE, "gather: row %llu at %zu >= %llu rows",
                           (unsigned long long)rows[i], i, (unsigned long long)n_rows);
        memcpy((unsigned char *)out + i * row_bytes,
               (const unsigned char *)table + rows[i] * row_bytes, row_bytes);
    }
    return EG_OK;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static eg_status cpu_unique(const uint64_t *rows, size_t n, uint64_t *uniq, size_t *n_uniq,
                            eg_err *err)
{
    (void)err;
    memcpy(uniq, rows, n * sizeof *uniq);
    qsort(uniq, n, sizeof *uniq, cmp_u64);
    size_t u = 0;
    for (size_t i = 0; i < n; i++)
        if (!i || uniq[i] != uniq[u - 1])
            uniq[u++] = uniq[i];
    *n_uniq = u;
    return EG_OK;
}

static eg_status cpu_forward(const eg_layer_dims *dm, const eg_layer_weights *w, const float *e,
                             const float *h, float *out, eg_err *err)
{
    return eg_layer_forward(dm, w, e, h, out, 0, err);
}

static eg_status cpu_backward(const eg_layer_dims *dm, const eg_layer_weights *w, const float *e,
                              const float *h, const float *dout, const eg_layer_grads *g,
                              eg_err *err)
{
    return eg_layer_backward(dm, w, e, h, dout, g, 0, err);
}

static eg_status cpu_adam(float *vals, float *m, float *v, uint32_t *steps, const float *grads,
                          size_t n, uint32_t dim, const eg_adam *hp, eg_err *err)
{
    (void)err;
    for (size_t i = 0; i < n; i++)
        eg_adam_row(vals + i * dim, m + i * dim, v + i * dim, ++steps[i], grads + i * dim, dim, hp);
    return EG_OK;
}

static eg_status cpu_lookup(eg_runtime *rt, uint32_t li, int residency, const uint32_t *ids,
                            size_t n_seq, size_t seq_len, uint64_t *rows, void *out, eg_err *err)
{
    (void)residency;
    const size_t n = n_seq * seq_len * eg_spec_n_heads(eg_runtime_spec(rt));
    eg_status st = eg_rt_hash(rt, li, ids, n_seq, seq_len, NULL, NULL, rows, n, err);
    if (st)
        return st;
    eg_store *s = (eg_store *)(uintptr_t)eg_runtime_store(rt);
    return eg_store_gather_encoded(s, li, rows, n, out, n * eg_store_get_info(s)->row_bytes, 0,
                                   err);
}

static eg_status cpu_train_rows(eg_runtime *rt, uint32_t li, const uint64_t *rows,
                                const float *grads, size_t n, size_t n_steps, const eg_adam *hp,
                                eg_err *err)
{
    const size_t dim = eg_runtime_dim(rt);
    uint64_t *uq = malloc((n ? n : 1) * sizeof *uq);
    float *us = malloc((n ? n : 1) * dim * sizeof *us);
    eg_status st = EG_OK;
    if (!uq || !us)
        st = eg_fail(err, EG_ENOMEM, "out of memory");
    for (size_t s = 0; s < n_steps && !st; s++) {
        size_t nu = 0;
        if (!(st = eg_rt_reduce_rows(rt, rows + s * n, grads + s * n * dim, n, uq, us, &nu, err)))
            st = eg_rt_adam_step(rt, li, uq, us, nu, hp, err);
    }
    free(uq);
    free(us);
    return st;
}

static const eg_backend cpu_backend = {"cpu",        cpu_hash,     cpu_gather, cpu_unique,
                                       cpu_forward,  cpu_backward, cpu_adam,   cpu_lookup,
                                       cpu_train_rows};

eg_status eg_backend_get(const char *name, const eg_backend **out, eg_err *err)
{
    if (!name || !out)
        return eg_fail(err, EG_EINVAL, "eg_backend_get: NULL argument");
    *out = NULL;
    if (!strcmp(name, "cpu")) {
        *out = &cpu_backend;
        return EG_OK;
    }
    if (strcmp(name, "cuda"))
        return eg_fail(err, EG_EINVAL, "unknown backend '%s' (cpu, cuda)", name);
    static const eg_backend *cuda;
    static char why[400];
    if (!cuda && !why[0]) {
        const char *env = getenv("ENGRAM_CUDA_LIB");
        void *h = dlopen(env && *env ? env : "libengram_cuda.so", RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            Dl_info di; /* beside libengram */
            if (dladdr((const void *)&cpu_backend, &di) && di.dli_fname) {
                char p[1024];
                snprintf(p, sizeof p, "%s", di.dli_fname);
                char *sl = strrchr(p, '/');
                if (sl) {
                    snprintf(sl + 1, sizeof p - (size_t)(sl + 1 - p), "libengram_cuda.so");
                    h = dlopen(p, RTLD_NOW | RTLD_LOCAL);
                }
            }
        }
        if (!h) {
            snprintf(why, sizeof why, "the CUDA backend is not available: %s", dlerror());
        } else {
            const eg_backend *(*get)(char *, size_t) = NULL;
            void *sym = dlsym(h, "eg_cuda_backend");
            if (sym)
                memcpy(&get, &sym, sizeof get); /* POSIX: dlsym's object pointer is the function */
            if (!get)
                snprintf(why, sizeof why, "libengram_cuda.so has no eg_cuda_backend");
            else if (!(cuda = get(why, sizeof why)) && !why[0])
                snprintf(why, sizeof why, "no CUDA device");
        }
    }
    if (!cuda)
        return eg_fail(err, EG_EUNSUPPORTED, "%s", why);
    *out = cuda;
    return EG_OK;
}
