/* buf.c - the growable byte buffer shared by the modules. */
#include <stdlib.h>
#include <string.h>

#include "eg_internal.h"

int eg_buf_reserve(eg_buf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

int eg_buf_put(eg_buf *b, const void *data, size_t n)
{
    if (eg_buf_reserve(b, n + 1))
        return -1;
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

void eg_buf_free(eg_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}
