/* tier.c - the row tier (eg_tier.h): rows read from the store's file by a pool
 * of reader threads into a hot-row cache; prefetch ahead of the gather. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engram/eg_rowcache.h"
#include "shmcache.h"
#include "store_impl.h"

#define ALIGN 4096u           /* O_DIRECT's offset, length and buffer alignment */
#define MAX_UNIT (128u << 10) /* the most one read call covers (neighbouring rows) */
#define WAYS 8
/* What a slot costs beside its row: eg_rowcache's tag, last use and load
 * batch (8 bytes each) and dirty mark, and the slot's read state. The cache's
 * budget pays for them, so the process holds cache_bytes, not more. */
#define SLOT_OVERHEAD (3 * 8 + 1 + 1)

enum { S_EMPTY = 0, S_PENDING = 1, S_READY = 2, S_ERROR = 3 };

typedef struct {
    uint64_t off;       /* the row's bytes in the file */
    unsigned char *dst; /* where they go */
    uint64_t slot;      /* the cache slot they fill, or EG_ROWCACHE_DIRECT */
    uint64_t key;       /* EG_TIER_KEY(li, row), for messages */
} req;

typedef struct {
    uint64_t off;    /* aligned start */
    uint32_t len;    /* aligned length */
    uint32_t n;      /* requests [first, first + n) */
    size_t first;
} unit;

typedef struct job {
    req *reqs;
    unit *units;
    size_t n_units;
    size_t next;  /* the next unit to claim (under the pool's lock) */
    size_t done;  /* units completed */
    int failed;   /* any request failed */
    uint64_t batch;
    struct job *q_next; /* the pool's queue */
    struct job *a_next; /* the tier's list of load jobs not yet reaped */
} job;

struct eg_tier {
    eg_store *s;
    int fd, direct;
    struct stat id; /* the file at open: size and mtime checked around reads */
    size_t rb;
    uint32_t R;
    const unsigned char *mapbase;
    ssize_t (*read_fn)(void *ctx, int fd, void *buf, size_t n, off_t off);
    void *read_ctx;
    /* cache */
    eg_rowcache *dir;
    unsigned char *slots;
    size_t slots_bytes;
    uint8_t *state; /* per slot, S_* (read and written under mu) */
    eg_shmcache *shm; /* the cache in shared memory (opts.shared), instead of dir/slots/state */
    uint64_t lease_ns; /* its slots' lease */
    uint64_t batch; /* plans made (the directory's batch counter) */
    uint64_t pf_batch, pf_layers_lo; /* the last prefetch: its batch, the layers it covered */
    uint8_t *pf_layer;               /* per layer: covered by the prefetch of pf_batch */
    job *active;                     /* load jobs (prefetch or gather) not reaped */
    /* pool */
    pthread_mutex_t mu;   /* the queue, slot states, job counters, errors */
    pthread_cond_t work;  /* a job was queued, or stop */
    pthread_cond_t doneq; /* a unit completed */
    pthread_mutex_t call; /* serializes the API's calls */
    job *q_head, *q_tail;
    int stop;
    int n_threads;
    pthread_t *threads;
    char io_msg[256]; /* the last read failure */
    eg_tier_stats st;
};

static ssize_t plain_pread(void *ctx, int fd, void *buf, size_t n, off_t off)
{
    (void)ctx;
    return pread(fd, buf, n, off);
}

/* ---- the reader pool ---------------------------------------------------------- */

static void run_unit(eg_tier *t, job *j, const unit *u, unsigned char *buf)
{
    size_t got = 0;
    int e = 0;
    while (got < u->len) {
        ssize_t r = t->read_fn(t->read_ctx, t->fd, buf + got, u->len - got, (off_t)(u->off + got));
        if (r > 0) {
            got += (size_t)r;
        } else if (r == 0) {
            break; /* end of file */
        } else if (errno != EINTR) {
            e = errno ? errno : EIO;
            break;
        }
    }
    int bad = 0;
    pthread_mutex_lock(&t->mu);
    t->st.reads++;
    t->st.bytes_read += got;
    for (uint32_t k = 0; k < u->n; k++) {
        req *q = &j->reqs[u->first + k];
        const uint64_t rel = q->off - u->off;
        const int ok = !e && rel + t->rb <= got;
        if (ok) {
            memcpy(q->dst, buf + rel, t->rb);
            t->st.rows_read++;
        } else {
            bad = 1;
            if (e)
                snprintf(t->io_msg, sizeof t->io_msg, "reading %zu bytes at offset %llu: %s",
                         t->rb, (unsigned long long)q->off, strerror(e));
            else
                snprintf(t->io_msg, sizeof t->io_msg,
                         "the file ends before the row (%zu bytes at offset %llu; the read "
                         "returned %zu of %u): truncated under the reader?",
                         t->rb, (unsigned long long)q->off, got, u->len);
        }
        if (q->slot != EG_ROWCACHE_DIRECT && t->shm)
            eg_shmcache_publish(t->shm, q->slot, ok);
        else if (q->slot != EG_ROWCACHE_DIRECT)
            t->state[q->slot] = ok ? S_READY : S_ERROR;
        else if (!ok)
            q->dst = NULL; /* the direct row's failure, for its waiter */
    }
    j->failed |= bad;
    j->done++;
    pthread_cond_broadcast(&t->doneq);
    pthread_mutex_unlock(&t->mu);
}

static void *reader(void *arg)
{
    eg_tier *t = arg;
    unsigned char *buf = NULL;
    if (posix_memalign((void **)&buf, ALIGN, MAX_UNIT + 2 * ALIGN))
        buf = NULL;
    pthread_mutex_lock(&t->mu);
    for (;;) {
        while (!t->stop && !t->q_head)
            pthread_cond_wait(&t->work, &t->mu);
        if (!t->q_head) /* stop, with nothing queued */
            break;
        job *j = t->q_head;
        const size_t ui = j->next++;
        if (j->next >= j->n_units) { /* the last unit claimed: off the queue */
            t->q_head = j->q_next;
            if (!t->q_head)
                t->q_tail = NULL;
        }
        pthread_mutex_unlock(&t->mu);
        if (buf) {
            run_unit(t, j, &j->units[ui], buf);
        } else { /* no buffer: the unit fails (ENOMEM) without reading */
            unit u = j->units[ui];
            pthread_mutex_lock(&t->mu);
            for (uint32_t k = 0; k < u.n; k++) {
                req *q = &j->reqs[u.first + k];
                if (q->slot != EG_ROWCACHE_DIRECT && t->shm)
                    eg_shmcache_publish(t->shm, q->slot, 0);
                else if (q->slot != EG_ROWCACHE_DIRECT)
                    t->state[q->slot] = S_ERROR;
                else
                    q->dst = NULL;
            }
            snprintf(t->io_msg, sizeof t->io_msg, "out of memory for a read buffer");
            j->failed = 1;
            j->done++;
            pthread_cond_broadcast(&t->doneq);
            pthread_mutex_unlock(&t->mu);
        }
        pthread_mutex_lock(&t->mu);
    }
    pthread_mutex_unlock(&t->mu);
    free(buf);
    return NULL;
}

static int cmp_req(const void *a, const void *b)
{
    const uint64_t x = ((const req *)a)->off, y = ((const req *)b)->off;
    return x < y ? -1 : x > y;
}

/* Sort a job's requests by offset and cut them into units; NULL on ENOMEM. */
static job *make_job(eg_tier *t, req *reqs, size_t n, uint64_t batch)
{
    job *j = calloc(1, sizeof *j);
    unit *u = malloc((n ? n : 1) * sizeof *u);
    if (!j || !u) {
        free(j);
        free(u);
        return NULL;
    }
    qsort(reqs, n, sizeof *reqs, cmp_req);
    size_t nu = 0;
    for (size_t i = 0; i < n; i++) {
        const uint64_t a = reqs[i].off & ~(uint64_t)(ALIGN - 1);
        const uint64_t e = (reqs[i].off + t->rb + ALIGN - 1) & ~(uint64_t)(ALIGN - 1);
        if (nu && a <= u[nu - 1].off + u[nu - 1].len && e - u[nu - 1].off <= MAX_UNIT) {
            unit *c = &u[nu - 1];
            if (e > c->off + c->len)
                c->len = (uint32_t)(e - c->off);
            c->n++;
            continue;
        }
        u[nu++] = (unit){.off = a, .len = (uint32_t)(e - a), .n = 1, .first = i};
    }
    j->reqs = reqs;
    j->units = u;
    j->n_units = nu;
    j->batch = batch;
    return j;
}

static void submit(eg_tier *t, job *j)
{
    if (!j->n_units)
        return;
    pthread_mutex_lock(&t->mu);
    if (t->q_tail)
        t->q_tail->q_next = j;
    else
        t->q_head = j;
    t->q_tail = j;
    pthread_cond_broadcast(&t->work);
    pthread_mutex_unlock(&t->mu);
}

static void wait_job(eg_tier *t, job *j)
{
    pthread_mutex_lock(&t->mu);
    while (j->done < j->n_units)
        pthread_cond_wait(&t->doneq, &t->mu);
    pthread_mutex_unlock(&t->mu);
}

static void free_job(job *j)
{
    if (j) {
        free(j->reqs);
        free(j->units);
        free(j);
    }
}

/* Free the load jobs that have completed; with `older_than`, first wait for
 * those planned before that batch (their slots may be evicted from then on). */
static void reap(eg_tier *t, uint64_t older_than)
{
    job **pp = &t->active;
    while (*pp) {
        job *j = *pp;
        if (j->batch < older_than)
            wait_job(t, j);
        pthread_mutex_lock(&t->mu);
        const int done = j->done >= j->n_units;
        pthread_mutex_unlock(&t->mu);
        if (done) {
            *pp = j->a_next;
            free_job(j);
        } else {
            pp = &j->a_next;
        }
    }
}

/* ---- open / close ------------------------------------------------------------- */

eg_status eg_tier_open(eg_store *s, const eg_tier_opts *o, eg_tier **out, eg_err *err)
{
    if (!s || !out)
        return eg_fail(err, EG_EINVAL, "eg_tier_open: NULL argument");
    *out = NULL;
    eg_tier_opts d = {0};
    if (!o)
        o = &d;
    int any;
    const unsigned char *mb = eg_store_rows_map(s, &any);
    if (any && !mb)
        return eg_fail(err, EG_EUNSUPPORTED, "%s: the rows' places in the file cannot be told "
                                             "(no /proc/self/maps)",
                       s->path);
    eg_tier *t = calloc(1, sizeof *t);
    if (!t)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    t->s = s;
    t->fd = -1;
    t->rb = s->info.row_bytes;
    t->R = s->info.rows_per_block;
    t->mapbase = mb;
    t->read_fn = o->read_fn ? o->read_fn : plain_pread;
    t->read_ctx = o->read_ctx;
    pthread_mutex_init(&t->mu, NULL);
    pthread_mutex_init(&t->call, NULL);
    pthread_cond_init(&t->work, NULL);
    pthread_cond_init(&t->doneq, NULL);
    /* the same file LMDB opened (the path may name a newer generation now) */
    if (!o->buffered)
        t->fd = eg_store_reopen(s, O_DIRECT);
    t->direct = t->fd >= 0;
    if (t->fd < 0)
        t->fd = eg_store_reopen(s, 0);
    eg_status st = EG_OK;
    if (t->fd < 0 || fstat(t->fd, &t->id)) {
        st = eg_fail(err, EG_EIO, "%s: cannot open the store file for reading rows: %s", s->path,
                     strerror(errno));
        goto fail;
    }
    if (!t->direct)
        (void)posix_fadvise(t->fd, 0, 0, POSIX_FADV_RANDOM);
    t->pf_layer = calloc(s->n_layers ? s->n_layers : 1, 1);
    if (!t->pf_layer) {
        st = eg_fail(err, EG_ENOMEM, "out of memory");
        goto fail;
    }
    const uint64_t n_slots =
        o->cache_bytes / (t->rb + (o->shared ? EG_SHM_SLOT_OVERHEAD : SLOT_OVERHEAD));
    if (o->shared && n_slots >= WAYS) {
        if ((st = eg_shmcache_open(&t->id, n_slots, WAYS, t->rb, &t->shm, err))) {
            char m[sizeof err->msg];
            snprintf(m, sizeof m, "%s", err ? err->msg : "");
            st = eg_fail(err, st, "%s: %s", s->path, m);
            goto fail;
        }
        t->st.cache_slots = eg_shmcache_slots(t->shm);
        t->st.cache_bytes = t->st.cache_slots * t->rb;
        t->st.shared = 1;
        t->lease_ns = (uint64_t)(o->lease_ms ? o->lease_ms : 250) * 1000000ull;
    } else if (n_slots >= WAYS) {
        if ((st = eg_rowcache_create(n_slots, WAYS, &t->dir, err)))
            goto fail;
        const uint64_t ns = eg_rowcache_slots(t->dir);
        t->slots_bytes = (size_t)(ns * t->rb);
        t->slots = mmap(NULL, t->slots_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                        -1, 0);
        t->state = calloc(ns, 1);
        if (t->slots == MAP_FAILED || !t->state) {
            if (t->slots == MAP_FAILED)
                t->slots = NULL;
            st = eg_fail(err, EG_ENOMEM, "%s: out of memory for a row cache of %llu bytes",
                         s->path, (unsigned long long)t->slots_bytes);
            goto fail;
        }
#ifdef MADV_HUGEPAGE
        (void)madvise(t->slots, t->slots_bytes, MADV_HUGEPAGE);
#endif
        t->st.cache_slots = ns;
        t->st.cache_bytes = t->slots_bytes;
    }
    t->st.direct = t->direct;
    t->n_threads = o->n_readers > 0 ? o->n_readers : 16;
    t->threads = calloc((size_t)t->n_threads, sizeof *t->threads);
    if (!t->threads) {
        st = eg_fail(err, EG_ENOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < t->n_threads; i++)
        if (pthread_create(&t->threads[i], NULL, reader, t)) {
            t->n_threads = i;
            st = eg_fail(err, EG_ENOMEM, "%s: cannot start reader threads", s->path);
            goto fail;
        }
    *out = t;
    return EG_OK;
fail:
    eg_tier_close(t);
    return st;
}

void eg_tier_close(eg_tier *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pthread_cond_broadcast(&t->work);
    pthread_mutex_unlock(&t->mu);
    for (int i = 0; t->threads && i < t->n_threads; i++)
        pthread_join(t->threads[i], NULL);
    free(t->threads);
    while (t->active) {
        job *j = t->active;
        t->active = j->a_next;
        free_job(j);
    }
    if (t->slots)
        munmap(t->slots, t->slots_bytes);
    free(t->state);
    eg_shmcache_close(t->shm);
    free(t->pf_layer);
    eg_rowcache_free(t->dir);
    if (t->fd >= 0)
        close(t->fd);
    pthread_mutex_destroy(&t->mu);
    pthread_mutex_destroy(&t->call);
    pthread_cond_destroy(&t->work);
    pthread_cond_destroy(&t->doneq);
    free(t);
}

void eg_tier_get_stats(const eg_tier *t, eg_tier_stats *st)
{
    if (!st)
        return;
    memset(st, 0, sizeof *st);
    if (!t)
        return;
    eg_tier *m = (eg_tier *)(uintptr_t)t;
    pthread_mutex_lock(&m->mu);
    *st = t->st;
    pthread_mutex_unlock(&m->mu);
}

void eg_tier_drain(eg_tier *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->call);
    reap(t, UINT64_MAX);
    pthread_mutex_unlock(&t->call);
}

/* ---- planning ------------------------------------------------------------------ */

/* Where a row's bytes are: *off in the file, or *absent for a block a sparse
 * store does not hold (generated, not read). */
static void locate(const eg_tier *t, uint32_t li, uint64_t row, uint64_t *off, int *absent)
{
    const eg_store *s = t->s;
    const unsigned char *b = s->blk[s->base[li] + row / t->R];
    *absent = !b;
    *off = b ? (uint64_t)(b - t->mapbase) + (row % t->R) * t->rb : 0;
}

static eg_status check_file(eg_tier *t, uint32_t li, uint64_t row, eg_err *err)
{
    struct stat sb;
    if (fstat(t->fd, &sb))
        return eg_fail(err, EG_EIO, "%s: layer %u row %llu: cannot stat the store file: %s",
                       t->s->path, li, (unsigned long long)row, strerror(errno));
    if (sb.st_size != t->id.st_size || sb.st_mtim.tv_sec != t->id.st_mtim.tv_sec ||
        sb.st_mtim.tv_nsec != t->id.st_mtim.tv_nsec)
        return eg_fail(err, EG_EIO,
                       "%s: layer %u row %llu: the store file changed under the reader (%lld "
                       "bytes at open, %lld now, or modified since): its rows cannot be trusted; "
                       "reopen the store",
                       t->s->path, li, (unsigned long long)row, (long long)t->id.st_size,
                       (long long)sb.st_size);
    return EG_OK;
}

/* Plan keys[n] as one batch: slot_of[i] gets the slot (or DIRECT), and the
 * loads (rows not cached, and cached rows whose read failed before) are
 * read into their slots by a job on the active list. Absent rows are
 * generated into their slots here. Under t->call. */
static eg_status plan_batch(eg_tier *t, const uint64_t *keys, size_t n, uint64_t *slot_of,
                            size_t *hits, eg_err *err)
{
    const size_t cap = n < eg_rowcache_slots(t->dir) ? n : (size_t)eg_rowcache_slots(t->dir);
    uint64_t *lr = malloc((cap ? cap : 1) * sizeof *lr), *ls = malloc((cap ? cap : 1) * sizeof *ls);
    uint64_t *wr = malloc((cap ? cap : 1) * sizeof *wr), *ws = malloc((cap ? cap : 1) * sizeof *ws);
    req *reqs = malloc((n ? n : 1) * sizeof *reqs);
    eg_status st = EG_OK;
    if (!lr || !ls || !wr || !ws || !reqs) {
        st = eg_fail(err, EG_ENOMEM, "out of memory");
        goto out;
    }
    /* every earlier read complete: slots of the batch before last may be
     * evicted by this plan, and a row whose read is still in flight may yet
     * fail (a gather that failed returns before its other reads end), which
     * this plan must see to read it again. In the usual order (prefetch,
     * then the step's gathers, which wait for their rows) nothing is left. */
    reap(t, UINT64_MAX);
    eg_rowcache_plan_stats ps;
    if ((st = eg_rowcache_plan(t->dir, keys, n, slot_of, lr, ls, cap, wr, ws, cap, &ps, err)))
        goto out;
    const uint64_t b = ++t->batch;
    size_t nr = 0;
    if (hits)
        *hits = ps.hits;
    pthread_mutex_lock(&t->mu); /* slot states (the reader threads write them too) */
    for (size_t k = 0; k < ps.loads; k++)
        t->state[ls[k]] = S_EMPTY;
    /* cached rows whose earlier read failed: read again */
    for (size_t i = 0; i < n; i++)
        if (slot_of[i] != EG_ROWCACHE_DIRECT && t->state[slot_of[i]] == S_ERROR) {
            t->state[slot_of[i]] = S_EMPTY;
            lr[ps.loads] = keys[i];
            ls[ps.loads++] = slot_of[i];
        }
    for (size_t k = 0; k < ps.loads; k++) {
        const uint32_t li = (uint32_t)(lr[k] >> 40);
        const uint64_t row = lr[k] & ((1ull << 40) - 1);
        unsigned char *dst = t->slots + ls[k] * t->rb;
        uint64_t off;
        int absent;
        locate(t, li, row, &off, &absent);
        if (absent) {
            if ((st = eg_store_read_encoded(t->s, li, row, 1, dst, t->rb, err))) {
                for (size_t k2 = k; k2 < ps.loads; k2++) /* this load and the rest: not made */
                    eg_rowcache_drop(t->dir, ls[k2]);
                break;
            }
            t->state[ls[k]] = S_READY;
            continue;
        }
        t->state[ls[k]] = S_PENDING;
        reqs[nr++] = (req){.off = off, .dst = dst, .slot = ls[k], .key = lr[k]};
    }
    pthread_mutex_unlock(&t->mu);
    if (st) {
        pthread_mutex_lock(&t->mu);
        for (size_t k = 0; k < nr; k++) {
            t->state[reqs[k].slot] = S_EMPTY;
            eg_rowcache_drop(t->dir, reqs[k].slot);
        }
        pthread_mutex_unlock(&t->mu);
        goto out;
    }
    job *j = make_job(t, reqs, nr, b);
    if (!j) {
        pthread_mutex_lock(&t->mu);
        for (size_t k = 0; k < nr; k++) {
            t->state[reqs[k].slot] = S_EMPTY;
            eg_rowcache_drop(t->dir, reqs[k].slot);
        }
        pthread_mutex_unlock(&t->mu);
        st = eg_fail(err, EG_ENOMEM, "out of memory");
        goto out;
    }
    reqs = NULL;
    j->a_next = t->active;
    t->active = j;
    submit(t, j);
out:
    free(lr);
    free(ls);
    free(wr);
    free(ws);
    free(reqs);
    return st;
}

/* Plan keys[n] in the shared cache: slot_of[i] gets the slot (or DIRECT),
 * want[i] the word it holds when the row is there; the rows claimed here are
 * read into their slots by a job on the active list (absent rows generated
 * here). *hits / *inflight count rows found read / being read. Under t->call.
 * Reads in flight are not waited for: slots another plan may take are
 * checked by their words when copied. */
static eg_status plan_shared(eg_tier *t, const uint64_t *keys, size_t n, uint64_t *slot_of,
                             uint64_t *want, size_t *hits, size_t *inflight, eg_err *err)
{
    req *reqs = malloc((n ? n : 1) * sizeof *reqs);
    if (!reqs)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    reap(t, 0); /* the completed jobs' memory */
    eg_status st = EG_OK;
    size_t nr = 0, h = 0, f = 0, i = 0;
    for (; i < n; i++) {
        const int r = eg_shmcache_find(t->shm, keys[i], t->lease_ns, &slot_of[i], &want[i]);
        h += r == EG_SHM_HIT;
        f += r == EG_SHM_INFLIGHT;
        if (r != EG_SHM_CLAIMED)
            continue;
        const uint32_t li = (uint32_t)(keys[i] >> 40);
        const uint64_t row = keys[i] & ((1ull << 40) - 1);
        unsigned char *dst = eg_shmcache_row(t->shm, slot_of[i]);
        uint64_t off;
        int absent;
        locate(t, li, row, &off, &absent);
        if (absent) {
            st = eg_store_read_encoded(t->s, li, row, 1, dst, t->rb, err);
            eg_shmcache_publish(t->shm, slot_of[i], !st);
            if (st)
                break;
            continue;
        }
        reqs[nr++] = (req){.off = off, .dst = dst, .slot = slot_of[i], .key = keys[i]};
    }
    job *j = st ? NULL : make_job(t, reqs, nr, ++t->batch);
    if (!j) { /* nothing submitted: the claimed slots go back empty */
        if (!st)
            st = eg_fail(err, EG_ENOMEM, "out of memory");
        for (size_t k = 0; k < nr; k++)
            eg_shmcache_publish(t->shm, reqs[k].slot, 0);
        free(reqs);
        return st;
    }
    j->a_next = t->active;
    t->active = j;
    submit(t, j);
    if (hits)
        *hits = h;
    if (inflight)
        *inflight = f;
    return EG_OK;
}

static eg_status check_keys(const eg_tier *t, const uint64_t *keys, size_t n, eg_err *err)
{
    for (size_t i = 0; i < n; i++) {
        const uint32_t li = (uint32_t)(keys[i] >> 40);
        const uint64_t row = keys[i] & ((1ull << 40) - 1);
        if (li >= t->s->n_layers)
            return eg_fail(err, EG_ERANGE, "%s: key %zu: layer index %u >= %u", t->s->path, i, li,
                           t->s->n_layers);
        if (row >= eg_spec_layer_rows(t->s->spec, li))
            return eg_fail(err, EG_ERANGE, "%s: key %zu: row %llu >= layer %u's %llu rows",
                           t->s->path, i, (unsigned long long)row, li,
                           (unsigned long long)eg_spec_layer_rows(t->s->spec, li));
    }
    return EG_OK;
}

eg_status eg_tier_prefetch(eg_tier *t, const uint64_t *keys, size_t n, eg_err *err)
{
    if (!t || (n && !keys))
        return eg_fail(err, EG_EINVAL, "eg_tier_prefetch: NULL argument");
    eg_status st = check_keys(t, keys, n, err);
    if (st || (!t->dir && !t->shm) || !n)
        return st;
    uint64_t *slot_of = malloc(n * sizeof *slot_of);
    if (!slot_of)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    pthread_mutex_lock(&t->call);
    if (t->shm) {
        uint64_t *want = malloc(n * sizeof *want);
        st = want ? plan_shared(t, keys, n, slot_of, want, NULL, NULL, err)
                  : eg_fail(err, EG_ENOMEM, "out of memory");
        free(want);
        pthread_mutex_unlock(&t->call);
        free(slot_of);
        return st;
    }
    st = plan_batch(t, keys, n, slot_of, NULL, err);
    if (!st) {
        memset(t->pf_layer, 0, t->s->n_layers);
        for (size_t i = 0; i < n; i++)
            t->pf_layer[keys[i] >> 40] = 1;
        t->pf_batch = t->batch;
    }
    pthread_mutex_unlock(&t->call);
    free(slot_of);
    return st;
}

/* ---- gather --------------------------------------------------------------------- */

/* Read positions pos[k] (rows rows[pos[k]]) straight into dst, each distinct
 * row once. */
static eg_status read_direct(eg_tier *t, uint32_t li, const uint64_t *rows, const size_t *pos,
                             size_t m, unsigned char *dst, eg_err *err)
{
    if (!m)
        return EG_OK;
    eg_rowpos *rp = malloc(m * sizeof *rp);
    req *reqs = malloc(m * sizeof *reqs);
    eg_status st = EG_OK;
    if (!rp || !reqs) {
        free(rp);
        free(reqs);
        return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    for (size_t k = 0; k < m; k++)
        rp[k] = (eg_rowpos){rows[pos[k]], pos[k]};
    qsort(rp, m, sizeof *rp, eg_cmp_rowpos);
    size_t nr = 0;
    for (size_t k = 0; k < m; k++) {
        if (k && rp[k].row == rp[k - 1].row)
            continue;
        unsigned char *d = dst + rp[k].pos * t->rb;
        uint64_t off;
        int absent;
        locate(t, li, rp[k].row, &off, &absent);
        if (absent) {
            if ((st = eg_store_read_encoded(t->s, li, rp[k].row, 1, d, t->rb, err)))
                goto out;
            continue;
        }
        reqs[nr++] = (req){.off = off, .dst = d, .slot = EG_ROWCACHE_DIRECT,
                           .key = EG_TIER_KEY(li, rp[k].row)};
    }
    job *j = make_job(t, reqs, nr, 0);
    if (!j) {
        st = eg_fail(err, EG_ENOMEM, "out of memory");
        goto out;
    }
    reqs = NULL;
    submit(t, j);
    wait_job(t, j);
    for (size_t q = 0; q < nr && !st; q++)
        if (!j->reqs[q].dst) {
            pthread_mutex_lock(&t->mu);
            st = eg_fail(err, EG_EIO, "%s: layer %u row %llu: %s", t->s->path, li,
                         (unsigned long long)(j->reqs[q].key & ((1ull << 40) - 1)), t->io_msg);
            pthread_mutex_unlock(&t->mu);
        }
    free_job(j);
    /* copies to the repeated positions */
    for (size_t k = 1; k < m && !st; k++)
        if (rp[k].row == rp[k - 1].row)
            memcpy(dst + rp[k].pos * t->rb, dst + rp[k - 1].pos * t->rb, t->rb);
out:
    free(rp);
    free(reqs);
    return st;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The gather on the shared cache: plan (rows another process or a prefetch
 * read are found), wait for the reads in flight (this process's on its
 * condition, another's by polling, up to 5 s or its death), copy each row
 * checking its slot's word; rows not cached, or whose slot changed or whose
 * read failed, are read straight into dst. Under t->call. */
static eg_status gather_shared(eg_tier *t, uint32_t li, const uint64_t *rows, size_t n,
                               unsigned char *out, uint64_t *slot_of, size_t *direct,
                               eg_err *err)
{
    uint64_t *keys = malloc(n * sizeof *keys), *want = malloc(n * sizeof *want);
    eg_status st = EG_OK;
    if (!keys || !want) {
        st = eg_fail(err, EG_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        keys[i] = EG_TIER_KEY(li, rows[i]);
    size_t hits = 0, inflight = 0, nd = 0;
    if ((st = plan_shared(t, keys, n, slot_of, want, &hits, &inflight, err)))
        goto out;
    for (size_t i = 0; i < n; i++) {
        const uint64_t s = slot_of[i];
        if (s == EG_SHM_DIRECT) {
            direct[nd++] = i;
            continue;
        }
        const uint64_t loading = eg_shm_loading_of(want[i]);
        uint64_t deadline = 0;
        while (eg_shmcache_word(t->shm, s) == loading) {
            if (eg_shmcache_mine(t->shm, s)) { /* our reader publishes under mu */
                pthread_mutex_lock(&t->mu);
                while (eg_shmcache_word(t->shm, s) == loading)
                    pthread_cond_wait(&t->doneq, &t->mu);
                pthread_mutex_unlock(&t->mu);
                break;
            }
            const uint64_t now = mono_ns();
            if (!deadline)
                deadline = now + 5000000000ull;
            if (now > deadline || eg_shmcache_loader_dead(t->shm, s))
                break;
            struct timespec ts = {0, 20000};
            nanosleep(&ts, NULL);
        }
        if (!eg_shmcache_copy(t->shm, s, want[i], keys[i], out + i * t->rb))
            direct[nd++] = i; /* evicted, failed or still loading: read it here */
    }
    st = read_direct(t, li, rows, direct, nd, out, err);
    pthread_mutex_lock(&t->mu);
    t->st.lookups += n;
    t->st.hits += hits;
    t->st.waited += inflight;
    pthread_mutex_unlock(&t->mu);
out:
    free(keys);
    free(want);
    return st;
}

eg_status eg_tier_gather(eg_tier *t, uint32_t li, const uint64_t *rows, size_t n, void *dst,
                         size_t cap, eg_err *err)
{
    if (!t || (n && (!rows || !dst)))
        return eg_fail(err, EG_EINVAL, "eg_tier_gather: NULL argument");
    if (li >= t->s->n_layers)
        return eg_fail(err, EG_ERANGE, "%s: layer index %u >= %u", t->s->path, li, t->s->n_layers);
    if (n > cap / t->rb)
        return eg_fail(err, EG_ECAPACITY, "eg_tier_gather: %zu rows need %zu bytes, the buffer "
                                          "holds %zu",
                       n, n * t->rb, cap);
    const uint64_t lr = eg_spec_layer_rows(t->s->spec, li);
    for (size_t i = 0; i < n; i++)
        if (rows[i] >= lr)
            return eg_fail(err, EG_ERANGE, "%s: row %llu at %zu >= layer %u's %llu rows",
                           t->s->path, (unsigned long long)rows[i], i, li, (unsigned long long)lr);
    if (!n)
        return EG_OK;
    unsigned char *out = dst;
    uint64_t *slot_of = malloc(n * sizeof *slot_of);
    size_t *direct = malloc(n * sizeof *direct);
    if (!slot_of || !direct) {
        free(slot_of);
        free(direct);
        return eg_fail(err, EG_ENOMEM, "out of memory");
    }
    pthread_mutex_lock(&t->call);
    eg_status st = check_file(t, li, rows[0], err);
    if (t->shm) {
        if (!st)
            st = gather_shared(t, li, rows, n, out, slot_of, direct, err);
        if (!st)
            st = check_file(t, li, rows[0], err);
        pthread_mutex_unlock(&t->call);
        free(slot_of);
        free(direct);
        return st;
    }
    size_t nd = 0;
    uint64_t hits = 0, waited = 0, planned_hits = 0;
    int planned = 0;
    if (!st && t->dir) {
        if (t->pf_layer[li] && t->pf_batch == t->batch) {
            for (size_t i = 0; i < n; i++) /* planned by the prefetch: look up */
                slot_of[i] = eg_rowcache_lookup(t->dir, EG_TIER_KEY(li, rows[i]));
        } else {
            uint64_t *keys = malloc(n * sizeof *keys);
            if (!keys) {
                st = eg_fail(err, EG_ENOMEM, "out of memory");
            } else {
                for (size_t i = 0; i < n; i++)
                    keys[i] = EG_TIER_KEY(li, rows[i]);
                size_t h = 0;
                st = plan_batch(t, keys, n, slot_of, &h, err);
                planned_hits = h;
                planned = 1;
                free(keys);
            }
        }
    } else {
        for (size_t i = 0; i < n; i++)
            slot_of[i] = EG_ROWCACHE_DIRECT;
    }
    for (size_t i = 0; i < n && !st; i++)
        if (slot_of[i] == EG_ROWCACHE_DIRECT)
            direct[nd++] = i;
    if (!st)
        st = read_direct(t, li, rows, direct, nd, out, err);
    /* the cached rows, waiting for the reads still in flight */
    for (size_t i = 0; i < n && !st; i++) {
        const uint64_t s = slot_of[i];
        if (s == EG_ROWCACHE_DIRECT)
            continue;
        pthread_mutex_lock(&t->mu);
        int w = 0;
        while (t->state[s] == S_PENDING) {
            w = 1;
            pthread_cond_wait(&t->doneq, &t->mu);
        }
        const int state = t->state[s];
        if (state != S_READY) {
            st = eg_fail(err, EG_EIO, "%s: layer %u row %llu: %s", t->s->path, li,
                         (unsigned long long)rows[i],
                         state == S_ERROR ? t->io_msg : "the row's read was not started");
            pthread_mutex_unlock(&t->mu);
            break;
        }
        pthread_mutex_unlock(&t->mu);
        waited += w;
        hits += !w;
        memcpy(out + i * t->rb, t->slots + s * t->rb, t->rb);
    }
    if (!st)
        st = check_file(t, li, rows[0], err);
    pthread_mutex_lock(&t->mu);
    t->st.lookups += n;
    t->st.hits += planned ? planned_hits : hits;
    t->st.waited += planned ? 0 : waited;
    pthread_mutex_unlock(&t->mu);
    pthread_mutex_unlock(&t->call);
    free(slot_of);
    free(direct);
    return st;
}

const char *eg_tier_cache_name(const eg_tier *t)
{
    return t ? eg_shmcache_name(t->shm) : NULL;
}
