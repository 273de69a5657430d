/* buf.c - byte buffers and mapped files shared by the modules. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

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

eg_status eg_map_file(const char *path, void **map, size_t *len, eg_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return eg_fail(err, EG_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return eg_fail(err, EG_EIO, "%s: not a regular file", path);
    }
    *len = (size_t)st.st_size;
    *map = NULL;
    if (*len) {
        *map = mmap(NULL, *len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (*map == MAP_FAILED) {
            close(fd);
            *map = NULL;
            return eg_fail(err, EG_EIO, "%s: cannot map: %s", path, strerror(errno));
        }
    }
    close(fd);
    return EG_OK;
}

void *eg_big_alloc(size_t bytes)
{
    if (!bytes)
        bytes = 1;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
#ifdef MADV_HUGEPAGE
    if (bytes >= ((size_t)64 << 20))
        madvise(p, bytes, MADV_HUGEPAGE); /* a hint: fewer TLB misses on random probes */
#endif
    return p;
}

void eg_big_populate(void *p, size_t bytes)
{
#ifdef MADV_POPULATE_WRITE
    const uintptr_t pg = 4096, from = ((uintptr_t)p + pg - 1) & ~(pg - 1),
                    to = ((uintptr_t)p + bytes) & ~(pg - 1);
    if (to > from)
        (void)madvise((void *)from, to - from, MADV_POPULATE_WRITE); /* may fail: a hint */
#else
    (void)p;
    (void)bytes;
#endif
}

void eg_big_free(void *p, size_t bytes)
{
    if (p)
        munmap(p, bytes ? bytes : 1);
}
