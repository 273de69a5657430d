/* projection.c - checks and application of a vocabulary projection array. */
#include <stdlib.h>

#include "../base/eg_internal.h"
#include "engram/eg_projection.h"

eg_status eg_projection_vprime(const uint32_t *proj, size_t n, const char *source,
                               uint64_t *vprime, eg_err *err)
{
    const char *src = source ? source : "projection";
    if (!proj || n == 0)
        return eg_fail(err, EG_EFORMAT, "%s: empty projection", src);
    uint32_t max = 0;
    for (size_t i = 0; i < n; i++)
        if (proj[i] > max)
            max = proj[i];
    if ((uint64_t)max + 1 > n)
        return eg_fail(err, EG_EFORMAT,
                       "%s: maps %zu raw ids to values up to %u: a projection is onto "
                       "0..V'-1 with V' <= V",
                       src, n, max);
    unsigned char *used = calloc((size_t)max + 1, 1);
    if (!used)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        used[proj[i]] = 1;
    for (uint64_t v = 0; v <= max; v++)
        if (!used[v]) {
            free(used);
            return eg_fail(err, EG_EFORMAT,
                           "%s: compressed id %llu is never used: not a surjection onto "
                           "0..%u",
                           src, (unsigned long long)v, max);
        }
    free(used);
    *vprime = (uint64_t)max + 1;
    return EG_OK;
}

eg_status eg_project_ids(const uint32_t *proj, size_t n_proj, const uint32_t *ids, size_t n,
                         uint32_t *out, eg_err *err)
{
    if ((!proj && n_proj) || (!ids && n) || (!out && n))
        return eg_fail(err, EG_EINVAL, "eg_project_ids: NULL argument");
    for (size_t i = 0; i < n; i++) {
        uint32_t id = ids[i];
        if (id >= n_proj)
            return eg_fail(err, EG_ERANGE,
                           "id %u at position %zu is outside the tokenizer's %zu ids", id, i,
                           n_proj);
        out[i] = proj[id];
    }
    return EG_OK;
}
