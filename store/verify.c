/* verify.c - checking a whole store: metadata against the config's schedule,
 * every block's crc and length. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "store_impl.h"

/* Every stored block's crc, read with O_DIRECT in large sequential reads
 * instead of through the map: verifying a store larger than RAM neither
 * fills the page cache with it nor evicts what other processes keep there.
 * Sets each block's crc state (good or bad); the caller reports. Returns
 * 0 when done, -1 where O_DIRECT or the blocks' offsets are not available
 * (the caller reads through the map). */
typedef struct {
    uint64_t off, idx;
    uint32_t li, len;
} vblock;

static int cmp_vblock(const void *a, const void *b)
{
    const uint64_t x = ((const vblock *)a)->off, y = ((const vblock *)b)->off;
    return x < y ? -1 : x > y;
}

#define VCHUNK (8u << 20)

static int verify_direct(eg_store *s)
{
    int any;
    const unsigned char *mb = eg_store_rows_map(s, &any);
    if (!mb)
        return -1;
    const int fd = eg_store_reopen(s, O_DIRECT);
    if (fd < 0)
        return -1;
    const uint64_t total = s->base[s->n_layers];
    uint64_t n = 0;
    for (uint64_t i = 0; i < total; i++)
        n += s->blk[i] != NULL;
    vblock *v = malloc(n * sizeof *v);
    if (!v) {
        close(fd);
        return -1;
    }
    const uint64_t R = s->info.rows_per_block;
    n = 0;
    for (uint32_t li = 0; li < s->n_layers; li++) {
        const uint64_t rws = eg_spec_layer_rows(s->spec, li);
        for (uint64_t idx = s->base[li]; idx < s->base[li + 1]; idx++)
            if (s->blk[idx]) {
                const uint64_t b = idx - s->base[li];
                const uint64_t nr = b * R + R <= rws ? R : rws - b * R;
                v[n++] = (vblock){(uint64_t)(s->blk[idx] - mb), idx, li,
                                  (uint32_t)(nr * s->info.row_bytes)};
            }
    }
    qsort(v, n, sizeof *v, cmp_vblock);
    /* chunks: runs of blocks whose aligned span stays within VCHUNK */
    uint64_t *start = malloc((n + 1) * sizeof *start), nc = 0;
    if (!start) {
        free(v);
        close(fd);
        return -1;
    }
    for (uint64_t i = 0; i < n; i++) {
        const uint64_t a = nc ? v[start[nc - 1]].off & ~4095ull : 0;
        if (!nc || v[i].off + v[i].len + 4 - a > VCHUNK - 4096)
            start[nc++] = i;
    }
    start[nc] = n;
    int fail = 0;
    const long long NC = (long long)nc;
#ifdef _OPENMP
#pragma omp parallel num_threads(omp_get_max_threads() < 2 ? 1 : 2) reduction(| : fail)
#endif
    {
        unsigned char *buf = NULL;
        if (posix_memalign((void **)&buf, 4096, VCHUNK + 8192))
            buf = NULL;
        if (!buf)
            fail = 1;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (long long c = 0; c < NC; c++) {
            if (!buf)
                continue;
            const vblock *b0 = &v[start[c]], *b1 = &v[start[c + 1] - 1];
            const uint64_t a = b0->off & ~4095ull;
            const uint64_t e = (b1->off + b1->len + 4 + 4095) & ~4095ull;
            size_t got = 0;
            while (got < e - a) {
                ssize_t r = pread(fd, buf + got, (size_t)(e - a) - got, (off_t)(a + got));
                if (r > 0)
                    got += (size_t)r;
                else if (r == 0 || errno != EINTR)
                    break;
            }
            for (const vblock *b = b0; b <= b1; b++) {
                const uint64_t rel = b->off - a;
                uint8_t state = 2;
                if (rel + b->len + 4 <= got) {
                    const uint32_t want = eg_get_le32(buf + rel + b->len);
                    state = (uint32_t)crc32(0L, buf + rel, (uInt)b->len) == want ? 1 : 2;
                }
                __atomic_store_n(&s->crc_state[b->idx], state, __ATOMIC_RELAXED);
            }
        }
        free(buf);
    }
    free(start);
    free(v);
    close(fd);
    return fail ? -1 : 0;
}


eg_status eg_store_verify(const char *path, eg_store_verify_report *r, eg_err *err)
{
    eg_store_verify_report local;
    if (!r)
        r = &local;
    memset(r, 0, sizeof *r);
    eg_store *s = NULL;
    eg_status st = eg_store_open_report(path, EG_STORE_NO_CRC, r, &s, err);
    if (st) {
        snprintf(r->first_problem, sizeof r->first_problem, "%.380s", err ? err->msg : "cannot open");
        return st;
    }
    r->meta_ok = 1;
    /* the recorded arrays against the reference schedule for the config */
    eg_spec *ref = NULL;
    eg_err e2 = {0};
    if (eg_spec_create(eg_spec_config(s->spec), eg_spec_compressed_vocab(s->spec), eg_spec_pad(s->spec),
                       &ref, &e2) ||
        eg_store_expect(s, NULL, ref, &e2)) {
        r->meta_ok = 0;
        eg_store_problem(s, "metadata: %s", e2.msg);
    }
    eg_spec_free(ref);
    if (verify_direct(s)) /* no O_DIRECT here: through the map, block by block */
        memset(s->crc_state, 0, s->base[s->n_layers] ? s->base[s->n_layers] : 1);
    for (uint32_t li = 0; li < s->n_layers; li++)
        for (uint64_t idx = s->base[li]; idx < s->base[li + 1]; idx++) {
            if (!s->blk[idx])
                continue;
            r->blocks_checked++;
            eg_err e3 = {0};
            if (eg_store_check_crc(s, li, idx, &e3)) {
                r->blocks_bad++;
                eg_store_problem(s, "%s", e3.msg);
            }
        }
    eg_store_close(s);
    if (r->blocks_bad || r->blocks_missing || r->blocks_unexpected || !r->meta_ok)
        return eg_fail(err, EG_EFORMAT, "%s: %s", path, r->first_problem);
    return EG_OK;
}
