/* comm.c - what every distributed job needs of its collectives (eg_comm):
 * the ranks' agreement on success or on the first failure. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eg_internal.h"

typedef struct {
    int32_t code;
    char msg[EG_ERR_MSG_MAX];
} rank_status;

eg_status eg_comm_agree(const eg_comm *cm, eg_status st, eg_err *err)
{
    if (!cm || cm->size < 1)
        return eg_fail(err, EG_EINVAL, "eg_comm_agree: no ranks");
    rank_status mine, *all = malloc((size_t)cm->size * sizeof *all);
    memset(&mine, 0, sizeof mine);
    mine.code = st;
    if (st)
        snprintf(mine.msg, sizeof mine.msg, "%s", err && err->msg[0] ? err->msg : "failed");
    if (!all || cm->allgather(cm->ctx, &mine, sizeof mine, all)) {
        free(all);
        return eg_fail(err, EG_EIO, "the ranks could not exchange their status");
    }
    eg_status ret = EG_OK;
    for (int r = 0; r < cm->size && !ret; r++)
        if (all[r].code)
            ret = eg_fail(err, all[r].code, "rank %d of %d: %s", r, cm->size, all[r].msg);
    free(all);
    return ret;
}
