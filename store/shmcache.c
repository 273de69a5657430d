/* shmcache.c - the row tier's hot-row cache in shared memory (shmcache.h). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "shmcache.h"

#define MAGIC 0x726569742d6d7267ull /* "grm-tier" */
#define VERSION 1u
#define HDR_BYTES 4096u
#define MAX_PIDS 64
#define EMPTY_KEY UINT64_MAX

enum { W_EMPTY = 0, W_LOADING = 1, W_READY = 2 };

typedef struct {
    _Atomic uint64_t magic; /* set last, when the rest is written */
    uint32_t version, ways;
    uint64_t n_slots, row_bytes;
    uint64_t dev, ino, size, mtime_s, mtime_ns; /* the store file */
    _Atomic int32_t pids[MAX_PIDS];              /* attached processes (0: free) */
} hdr;
_Static_assert(sizeof(hdr) <= HDR_BYTES, "header fits its page");

typedef struct {
    _Atomic uint64_t word;  /* seq << 2 | state */
    _Atomic uint64_t key;   /* EG_TIER_KEY of the row (valid while the word holds) */
    _Atomic uint64_t used;  /* CLOCK_MONOTONIC ns of the last find */
    _Atomic uint64_t lease; /* not evicted before this time (ns) */
    _Atomic int32_t owner;  /* the loading process */
    int32_t pad;
} meta;
_Static_assert(sizeof(meta) == EG_SHM_SLOT_OVERHEAD, "the overhead the tier budgets");

struct eg_shmcache {
    hdr *h;
    meta *m;
    unsigned char *rows;
    size_t map_bytes, rb;
    uint64_t n_slots, n_sets;
    uint32_t ways;
    int32_t pid;
    char name[96];
};

static size_t rows_offset(uint64_t n_slots)
{
    return (HDR_BYTES + (size_t)n_slots * sizeof(meta) + 4095) & ~(size_t)4095;
}

static int pid_dead(int32_t pid)
{
    return pid > 0 && kill(pid, 0) < 0 && errno == ESRCH;
}

static void attach_pid(eg_shmcache *c)
{
    for (int i = 0; i < MAX_PIDS; i++) { /* the dead first: their places are free */
        int32_t p = atomic_load(&c->h->pids[i]);
        if (p && pid_dead(p))
            atomic_compare_exchange_strong(&c->h->pids[i], &p, 0);
    }
    for (int i = 0; i < MAX_PIDS; i++) {
        int32_t z = 0;
        if (atomic_compare_exchange_strong(&c->h->pids[i], &z, c->pid))
            return;
    }
    /* more than MAX_PIDS processes: this one is not counted (the segment's
     * name may be removed while it is attached; it keeps working) */
}

static void sleep_ns(long ns)
{
    struct timespec ts = {0, ns};
    nanosleep(&ts, NULL);
}

static eg_status create_or_attach(eg_shmcache *c, const struct stat *id, size_t bytes, int retry,
                                  eg_err *err)
{
    int fd = shm_open(c->name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    const int made = fd >= 0;
    if (!made && errno == EEXIST)
        fd = shm_open(c->name, O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0)
        return eg_fail(err, EG_EIO, "shared row cache /dev/shm%s: %s", c->name, strerror(errno));
    if (made) {
        int e = ftruncate(fd, (off_t)bytes) ? errno : posix_fallocate(fd, 0, (off_t)bytes);
        if (e) {
            close(fd);
            shm_unlink(c->name);
            return eg_fail(err, e == ENOSPC ? EG_ENOMEM : EG_EIO,
                           "shared row cache /dev/shm%s: cannot hold %zu bytes: %s", c->name,
                           bytes, strerror(e));
        }
    } else { /* the creator may still be sizing and writing it */
        struct stat sb;
        int waited = 0;
        for (;;) {
            if (fstat(fd, &sb)) {
                const int e = errno;
                close(fd);
                return eg_fail(err, EG_EIO, "shared row cache /dev/shm%s: %s", c->name,
                               strerror(e));
            }
            if ((size_t)sb.st_size >= HDR_BYTES) {
                hdr *h = mmap(NULL, HDR_BYTES, PROT_READ, MAP_SHARED, fd, 0);
                const int ready = h != MAP_FAILED && atomic_load(&h->magic) == MAGIC;
                if (h != MAP_FAILED)
                    munmap(h, HDR_BYTES);
                if (ready)
                    break;
            }
            if (++waited > 5000) { /* 5 s: its creator died half-way; make it again */
                close(fd);
                if (!retry)
                    return eg_fail(err, EG_EIO,
                                   "shared row cache /dev/shm%s is left half-made; remove it",
                                   c->name);
                shm_unlink(c->name);
                return create_or_attach(c, id, bytes, 0, err);
            }
            sleep_ns(1000000);
        }
        if ((size_t)sb.st_size != bytes) {
            hdr *h = mmap(NULL, HDR_BYTES, PROT_READ, MAP_SHARED, fd, 0);
            int32_t who = 0;
            uint64_t slots = 0;
            if (h != MAP_FAILED) {
                slots = h->n_slots;
                for (int i = 0; i < MAX_PIDS && !who; i++)
                    who = atomic_load(&h->pids[i]);
                munmap(h, HDR_BYTES);
            }
            close(fd);
            return eg_fail(err, EG_EINVAL,
                           "shared row cache /dev/shm%s holds %llu rows (%lld bytes; pid %d uses "
                           "it), not the %llu asked for: open the store with the same cache_bytes",
                           c->name, (unsigned long long)slots, (long long)sb.st_size, (int)who,
                           (unsigned long long)c->n_slots);
        }
    }
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    const int e = errno;
    close(fd);
    if (p == MAP_FAILED) {
        if (made)
            shm_unlink(c->name);
        return eg_fail(err, EG_ENOMEM, "shared row cache /dev/shm%s: cannot map %zu bytes: %s",
                       c->name, bytes, strerror(e));
    }
    c->h = p;
    c->map_bytes = bytes;
    c->m = (meta *)((unsigned char *)p + HDR_BYTES);
    c->rows = (unsigned char *)p + rows_offset(c->n_slots);
    if (made) { /* zero-filled: every slot EMPTY at seq 0 */
        hdr *h = c->h;
        h->version = VERSION;
        h->ways = c->ways;
        h->n_slots = c->n_slots;
        h->row_bytes = c->rb;
        h->dev = (uint64_t)id->st_dev;
        h->ino = (uint64_t)id->st_ino;
        h->size = (uint64_t)id->st_size;
        h->mtime_s = (uint64_t)id->st_mtim.tv_sec;
        h->mtime_ns = (uint64_t)id->st_mtim.tv_nsec;
        for (uint64_t s = 0; s < c->n_slots; s++)
            atomic_store_explicit(&c->m[s].key, EMPTY_KEY, memory_order_relaxed);
        atomic_store_explicit(&h->magic, MAGIC, memory_order_release);
    } else if (c->h->version != VERSION || c->h->ways != c->ways || c->h->n_slots != c->n_slots ||
               c->h->row_bytes != c->rb || c->h->ino != (uint64_t)id->st_ino ||
               c->h->size != (uint64_t)id->st_size) {
        const unsigned hv = c->h->version, hw = c->h->ways;
        const unsigned long long hn = c->h->n_slots, hr = c->h->row_bytes;
        munmap(p, bytes);
        c->h = NULL;
        return eg_fail(err, EG_EINVAL,
                       "shared row cache /dev/shm%s was made for another store or geometry "
                       "(version %u, %u ways, %llu rows of %llu bytes): remove it",
                       c->name, hv, hw, hn, hr);
    }
    attach_pid(c);
    return EG_OK;
}

eg_status eg_shmcache_open(const struct stat *id, uint64_t n_slots, uint32_t ways, size_t row_bytes,
                           eg_shmcache **out, eg_err *err)
{
    if (!id || !out || ways < 1 || !row_bytes)
        return eg_fail(err, EG_EINVAL, "eg_shmcache_open: bad argument");
    *out = NULL;
    if (n_slots / ways < 1)
        return eg_fail(err, EG_EINVAL, "shared row cache: %llu slots cannot make one set of %u",
                       (unsigned long long)n_slots, ways);
    eg_shmcache *c = calloc(1, sizeof *c);
    if (!c)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    c->ways = ways;
    c->n_sets = n_slots / ways;
    c->n_slots = c->n_sets * ways;
    c->rb = row_bytes;
    c->pid = (int32_t)getpid();
    snprintf(c->name, sizeof c->name, "/engram-tier-%llx-%llx-%llx-%llx.%09ld",
             (unsigned long long)id->st_dev, (unsigned long long)id->st_ino,
             (unsigned long long)id->st_size, (unsigned long long)id->st_mtim.tv_sec,
             (long)id->st_mtim.tv_nsec);
    const size_t bytes = rows_offset(c->n_slots) + (size_t)c->n_slots * row_bytes;
    eg_status st = create_or_attach(c, id, bytes, 1, err);
    if (st) {
        free(c);
        return st;
    }
#ifdef MADV_HUGEPAGE
    (void)madvise(c->rows, (size_t)c->n_slots * row_bytes, MADV_HUGEPAGE);
#endif
    *out = c;
    return EG_OK;
}

void eg_shmcache_close(eg_shmcache *c)
{
    if (!c)
        return;
    int others = 0;
    for (int i = 0; i < MAX_PIDS; i++) {
        int32_t p = atomic_load(&c->h->pids[i]);
        if (p == c->pid)
            atomic_compare_exchange_strong(&c->h->pids[i], &p, 0);
        else if (p && !pid_dead(p))
            others = 1;
    }
    if (!others) /* the last one: the name goes (the memory with the last mapping) */
        shm_unlink(c->name);
    munmap(c->h, c->map_bytes);
    free(c);
}

uint64_t eg_shmcache_slots(const eg_shmcache *c) { return c ? c->n_slots : 0; }
const char *eg_shmcache_name(const eg_shmcache *c) { return c ? c->name : NULL; }
unsigned char *eg_shmcache_row(eg_shmcache *c, uint64_t slot) { return c->rows + slot * c->rb; }

uint64_t eg_shmcache_word(const eg_shmcache *c, uint64_t slot)
{
    return atomic_load_explicit(&c->m[slot].word, memory_order_acquire);
}

int eg_shmcache_mine(const eg_shmcache *c, uint64_t slot)
{
    return atomic_load_explicit(&c->m[slot].owner, memory_order_relaxed) == c->pid;
}

int eg_shmcache_loader_dead(const eg_shmcache *c, uint64_t slot)
{
    return pid_dead(atomic_load_explicit(&c->m[slot].owner, memory_order_relaxed));
}

static uint64_t set_of(const eg_shmcache *c, uint64_t key)
{
    uint64_t x = key * 0x9E3779B97F4A7C15ull;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    __extension__ typedef unsigned __int128 u128;
    return (uint64_t)(((u128)x * c->n_sets) >> 64);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int eg_shmcache_find(eg_shmcache *c, uint64_t key, uint64_t lease_ns, uint64_t *slot,
                     uint64_t *want)
{
    const uint64_t now = now_ns(), s0 = set_of(c, key) * c->ways;
    for (int attempt = 0; attempt < 8; attempt++) {
        uint64_t victim = EG_SHM_DIRECT, vword = 0;
        int vrank = 4; /* -1 this key's dead loader, 0 empty, 1 expired (least recently used
                        * first), 2 another key's dead loader */
        uint64_t vused = UINT64_MAX;
        for (uint32_t w = 0; w < c->ways; w++) {
            const uint64_t s = s0 + w;
            meta *m = &c->m[s];
            const uint64_t w1 = atomic_load_explicit(&m->word, memory_order_acquire);
            const uint64_t k = atomic_load_explicit(&m->key, memory_order_acquire);
            atomic_thread_fence(memory_order_acquire);
            const uint64_t w2 = atomic_load_explicit(&m->word, memory_order_relaxed);
            const unsigned state = (unsigned)(w1 & 3);
            if (w1 == w2 && state == W_LOADING && k == key &&
                atomic_load_explicit(&m->owner, memory_order_relaxed) != c->pid &&
                eg_shmcache_loader_dead(c, s)) { /* its read will never end: load it again */
                victim = s, vword = w1, vrank = -1;
                break;
            }
            if (w1 == w2 && state != W_EMPTY && k == key) {
                atomic_store_explicit(&m->used, now, memory_order_relaxed);
                atomic_store_explicit(&m->lease, now + lease_ns, memory_order_relaxed);
                *slot = s;
                if (state == W_READY) {
                    *want = w1;
                    return EG_SHM_HIT;
                }
                *want = ((w1 >> 2) + 1) << 2 | W_READY;
                return EG_SHM_INFLIGHT;
            }
            if (state == W_EMPTY) {
                if (vrank > 0) {
                    victim = s, vword = w1, vrank = 0;
                }
            } else if (state == W_READY) {
                const uint64_t u = atomic_load_explicit(&m->used, memory_order_relaxed);
                if (atomic_load_explicit(&m->lease, memory_order_relaxed) <= now &&
                    (vrank > 1 || (vrank == 1 && u < vused))) {
                    victim = s, vword = w1, vrank = 1, vused = u;
                }
            }
        }
        if (victim == EG_SHM_DIRECT && vrank > 0) { /* every way busy: a loader that died frees its way */
            for (uint32_t w = 0; w < c->ways && victim == EG_SHM_DIRECT; w++) {
                const uint64_t s = s0 + w;
                const uint64_t w1 = atomic_load_explicit(&c->m[s].word, memory_order_acquire);
                if ((w1 & 3) == W_LOADING && eg_shmcache_loader_dead(c, s))
                    victim = s, vword = w1, vrank = 2;
            }
        }
        if (victim == EG_SHM_DIRECT)
            break;
        meta *m = &c->m[victim];
        const uint64_t loading = ((vword >> 2) + 1) << 2 | W_LOADING;
        if (atomic_compare_exchange_strong_explicit(&m->word, &vword, loading,
                                                    memory_order_acq_rel, memory_order_acquire)) {
            atomic_store_explicit(&m->owner, c->pid, memory_order_relaxed);
            atomic_store_explicit(&m->key, key, memory_order_release);
            atomic_store_explicit(&m->used, now, memory_order_relaxed);
            atomic_store_explicit(&m->lease, now + lease_ns, memory_order_relaxed);
            *slot = victim;
            *want = ((vword >> 2) + 2) << 2 | W_READY;
            return EG_SHM_CLAIMED;
        }
        /* another process took the way first: look again */
    }
    *slot = EG_SHM_DIRECT;
    *want = 0;
    return EG_SHM_NONE;
}

void eg_shmcache_publish(eg_shmcache *c, uint64_t slot, int ok)
{
    meta *m = &c->m[slot];
    uint64_t w = atomic_load_explicit(&m->word, memory_order_relaxed);
    if ((w & 3) != W_LOADING || atomic_load_explicit(&m->owner, memory_order_relaxed) != c->pid)
        return; /* taken from this process (it was thought dead): not ours to publish */
    if (!ok)
        atomic_store_explicit(&m->key, EMPTY_KEY, memory_order_relaxed);
    const uint64_t next = ((w >> 2) + 1) << 2 | (ok ? W_READY : W_EMPTY);
    atomic_compare_exchange_strong_explicit(&m->word, &w, next, memory_order_release,
                                            memory_order_relaxed);
}

int eg_shmcache_copy(const eg_shmcache *c, uint64_t slot, uint64_t want, uint64_t key, void *dst)
{
    const meta *m = &c->m[slot];
    if (atomic_load_explicit(&m->word, memory_order_acquire) != want ||
        atomic_load_explicit(&m->key, memory_order_relaxed) != key)
        return 0;
    memcpy(dst, c->rows + slot * c->rb, c->rb);
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit(&m->word, memory_order_relaxed) == want;
}
