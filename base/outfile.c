/* outfile.c - large files written beside the page cache (see eg_internal.h).
 *
 * Writing gigabytes through the page cache costs a fresh page, its zeroing
 * and a copy for every 4 KiB, and on the VMs we measure on fresh memory is
 * the slowest thing there is (counts files: a third of `engram count`'s
 * time). O_DIRECT hands the caller's buffer to the disk instead. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eg_internal.h"

static int outfile_open(eg_outfile *w, const char *path, int flags)
{
    w->dfd = -1;
    w->fd = open(path, O_WRONLY | O_CLOEXEC | flags, 0644);
    if (w->fd < 0)
        return -1;
#ifdef O_DIRECT
    /* -1 on tmpfs and the like; not where a page spans several blocks (a
     * direct write would invalidate a neighbour's edge in the page cache) */
    if (sysconf(_SC_PAGESIZE) == EG_OUT_ALIGN)
        w->dfd = open(path, O_WRONLY | O_DIRECT | O_CLOEXEC);
#endif
    return 0;
}

int eg_outfile_open(eg_outfile *w, const char *path)
{
    return outfile_open(w, path, O_CREAT | O_TRUNC);
}

int eg_outfile_reopen(eg_outfile *w, const char *path) { return outfile_open(w, path, 0); }

int eg_outfile_close(eg_outfile *w)
{
    if (w->dfd >= 0)
        close(w->dfd);
    w->dfd = -1;
    int r = w->fd >= 0 ? close(w->fd) : 0;
    w->fd = -1;
    return r ? -1 : 0;
}

static int pwrite_all(int fd, const unsigned char *p, size_t n, uint64_t at)
{
    while (n) {
        ssize_t k = pwrite(fd, p, n, (off_t)at);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            if (k == 0)
                errno = EIO;
            return -1;
        }
        p += k;
        n -= (size_t)k;
        at += (uint64_t)k;
    }
    return 0;
}

int eg_outfile_put(eg_outfile *w, const unsigned char *buf, uint64_t bw, uint64_t s, uint64_t e)
{
    const uint64_t A = EG_OUT_ALIGN;
    if (e <= s)
        return 0;
    uint64_t a0 = (s + A - 1) / A * A, a1 = e / A * A; /* the whole blocks */
    if (w->dfd >= 0 && a0 < a1) {
        if (s < a0 && pwrite_all(w->fd, buf + (s - bw), a0 - s, s))
            return -1;
        /* EINVAL: the device wants a larger alignment; these blocks go
         * through the plain descriptor (the descriptors stay as they are:
         * other threads may be writing through them) */
        if (pwrite_all(w->dfd, buf + (a0 - bw), a1 - a0, a0) &&
            (errno != EINVAL || pwrite_all(w->fd, buf + (a0 - bw), a1 - a0, a0)))
            return -1;
        return a1 < e ? pwrite_all(w->fd, buf + (a1 - bw), e - a1, a1) : 0;
    }
    return pwrite_all(w->fd, buf + (s - bw), e - s, s);
}

int eg_seqout_init(eg_seqout *q, eg_outfile *w, size_t cap)
{
    memset(q, 0, sizeof *q);
    q->w = w;
    q->cap = cap;
    q->stage = aligned_alloc(EG_OUT_ALIGN, cap);
    return q->stage ? 0 : -1;
}

void eg_seqout_seek(eg_seqout *q, uint64_t at)
{
    q->bw = at / EG_OUT_ALIGN * EG_OUT_ALIGN;
    q->n = (size_t)(at - q->bw); /* bytes of the block before `at`: not ours */
    q->s = at;
}

/* The writer thread of an async eg_seqout: one job at a time. */
struct eg_seqwriter {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned char *spare; /* the other stage: the job's while one runs */
    const unsigned char *buf;
    uint64_t bw, s, e;
    int busy, quit, err;
    eg_outfile *w;
};

static void *seq_writer(void *arg)
{
    struct eg_seqwriter *a = arg;
    pthread_mutex_lock(&a->mu);
    for (;;) {
        while (!a->busy && !a->quit)
            pthread_cond_wait(&a->cv, &a->mu);
        if (!a->busy)
            break;
        pthread_mutex_unlock(&a->mu);
        const int r = eg_outfile_put(a->w, a->buf, a->bw, a->s, a->e) ? errno : 0;
        pthread_mutex_lock(&a->mu);
        a->err = a->err ? a->err : r;
        a->busy = 0;
        pthread_cond_broadcast(&a->cv);
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

/* Wait for the running job; 0, or -1 with errno when a job failed. */
static int seq_wait(struct eg_seqwriter *a)
{
    pthread_mutex_lock(&a->mu);
    while (a->busy)
        pthread_cond_wait(&a->cv, &a->mu);
    const int err = a->err;
    pthread_mutex_unlock(&a->mu);
    if (err)
        errno = err;
    return err ? -1 : 0;
}

int eg_seqout_init_async(eg_seqout *q, eg_outfile *w, size_t cap)
{
    if (eg_seqout_init(q, w, cap))
        return -1;
    struct eg_seqwriter *a = calloc(1, sizeof *a);
    if (!a || !(a->spare = aligned_alloc(EG_OUT_ALIGN, cap))) {
        free(a);
        return 0; /* synchronous */
    }
    a->w = w;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    if (pthread_create(&a->th, NULL, seq_writer, a)) {
        pthread_mutex_destroy(&a->mu);
        pthread_cond_destroy(&a->cv);
        free(a->spare);
        free(a);
        return 0;
    }
    q->aw = a;
    return 0;
}

/* Write the staged bytes up to the last whole block (all of them if final),
 * keeping the rest at the front of the stage. Async: the whole blocks go to
 * the writer thread with this stage, and the rest moves to the other. */
static int seq_drain(eg_seqout *q, int final)
{
    const uint64_t end = q->bw + q->n;
    const uint64_t cut = final ? end : end / EG_OUT_ALIGN * EG_OUT_ALIGN;
    struct eg_seqwriter *a = q->aw;
    if (a && seq_wait(a))
        return -1;
    if (a && !final && cut > q->s) {
        const size_t keep = (size_t)(end - cut);
        memcpy(a->spare, q->stage + (cut - q->bw), keep);
        pthread_mutex_lock(&a->mu);
        a->buf = q->stage;
        a->bw = q->bw;
        a->s = q->s;
        a->e = cut;
        a->busy = 1;
        unsigned char *next = a->spare;
        a->spare = q->stage;
        pthread_cond_broadcast(&a->cv);
        pthread_mutex_unlock(&a->mu);
        q->stage = next;
        q->bw = q->s = cut;
        q->n = keep;
        return 0;
    }
    if (cut > q->s && eg_outfile_put(q->w, q->stage, q->bw, q->s, cut))
        return -1;
    if (cut > q->s)
        q->s = cut;
    if (!final && cut > q->bw) {
        const size_t keep = (size_t)(end - cut);
        memmove(q->stage, q->stage + (cut - q->bw), keep);
        q->bw = cut;
        q->n = keep;
    }
    return 0;
}

unsigned char *eg_seqout_room(eg_seqout *q, size_t need)
{
    if (q->cap - q->n < need && seq_drain(q, 0))
        return NULL;
    return q->stage + q->n;
}

int eg_seqout_write(eg_seqout *q, const void *data, size_t len)
{
    const unsigned char *p = data;
    while (len) {
        if (q->n == q->cap && seq_drain(q, 0))
            return -1;
        size_t k = q->cap - q->n < len ? q->cap - q->n : len;
        memcpy(q->stage + q->n, p, k);
        q->n += k;
        p += k;
        len -= k;
    }
    return 0;
}

int eg_seqout_flush(eg_seqout *q)
{
    if (seq_drain(q, 1))
        return -1;
    eg_seqout_seek(q, q->bw + q->n);
    return 0;
}

void eg_seqout_free(eg_seqout *q)
{
    struct eg_seqwriter *a = q->aw;
    if (a) {
        pthread_mutex_lock(&a->mu);
        while (a->busy)
            pthread_cond_wait(&a->cv, &a->mu);
        a->quit = 1;
        pthread_cond_broadcast(&a->cv);
        pthread_mutex_unlock(&a->mu);
        pthread_join(a->th, NULL);
        pthread_mutex_destroy(&a->mu);
        pthread_cond_destroy(&a->cv);
        free(a->spare);
        free(a);
        q->aw = NULL;
    }
    free(q->stage);
    q->stage = NULL;
}
