/*
 * eg_projection.h - the vocabulary projection P: V -> V' as a flat array
 * (uint32 per raw id, the `P.u32` file format: little-endian uint32, one per
 * raw id, nothing else).
 */
#ifndef ENGRAM_EG_PROJECTION_H
#define ENGRAM_EG_PROJECTION_H

#include <stddef.h>
#include <stdint.h>

#include "eg_base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Check that proj[0..n) is a surjection onto 0..V'-1 and return V' (the
 * number of distinct values, max+1). EG_EFORMAT when n == 0 or a value in
 * 0..max is never used. `source` names the file in messages (may be NULL). */
eg_status eg_projection_vprime(const uint32_t *proj, size_t n, const char *source,
                               uint64_t *vprime, eg_err *err);

/* Map raw ids through a projection: out[i] = proj[ids[i]]. Fails with
 * EG_ERANGE at the first id >= n_proj (its index is in the message).
 * `out` may equal `ids` (in place). */
eg_status eg_project_ids(const uint32_t *proj, size_t n_proj, const uint32_t *ids,
                         size_t n, uint32_t *out, eg_err *err);

#ifdef __cplusplus
}
#endif
#endif
