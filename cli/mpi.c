/* mpi.c - the engram command's MPI adapter: an eg_comm over MPI_COMM_WORLD
 * for `count --mpi` and `prep --mpi`. Compiled with mpi.h only when the
 * Makefile found mpicc (ENGRAM_MPI); otherwise --mpi says so. */
#include <limits.h>
#include <stdlib.h>

#include "cli.h"

#ifdef ENGRAM_MPI
#include <mpi.h>

static int *ints(const size_t *v, int n, int *bad)
{
    int *o = malloc((size_t)n * sizeof *o);
    if (!o) {
        *bad = 1;
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        *bad |= v[i] > (size_t)INT_MAX;
        o[i] = (int)v[i];
    }
    return o;
}

static int m_allgather(void *ctx, const void *send, size_t bytes, void *recv)
{
    (void)ctx;
    if (bytes > (size_t)INT_MAX)
        return -1;
    return MPI_Allgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, MPI_COMM_WORLD) !=
           MPI_SUCCESS;
}

static int m_allgatherv(void *ctx, const void *send, size_t bytes, void *recv,
                        const size_t *bytes_of)
{
    (void)ctx;
    int R, bad = bytes > (size_t)INT_MAX;
    MPI_Comm_size(MPI_COMM_WORLD, &R);
    int *cnt = ints(bytes_of, R, &bad), *at = malloc((size_t)R * sizeof *at);
    size_t off = 0;
    for (int r = 0; at && r < R; r++) {
        bad |= off > (size_t)INT_MAX;
        at[r] = (int)off;
        off += bytes_of[r];
    }
    int rc = bad || !at ? -1
                        : MPI_Allgatherv(send, (int)bytes, MPI_BYTE, recv, cnt, at, MPI_BYTE,
                                         MPI_COMM_WORLD) != MPI_SUCCESS;
    free(cnt);
    free(at);
    return rc;
}

static int m_alltoallv(void *ctx, const void *send, const size_t *sb, const size_t *sa, void *recv,
                       const size_t *rb, const size_t *ra)
{
    (void)ctx;
    int R, bad = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &R);
    int *a = ints(sb, R, &bad), *b = ints(sa, R, &bad), *c = ints(rb, R, &bad),
        *d = ints(ra, R, &bad);
    int rc = bad ? -1
                 : MPI_Alltoallv(send, a, b, MPI_BYTE, recv, c, d, MPI_BYTE, MPI_COMM_WORLD) !=
                       MPI_SUCCESS;
    free(a);
    free(b);
    free(c);
    free(d);
    return rc;
}

int cli_mpi_begin(eg_comm *cm)
{
    int provided = 0, rank = 0, size = 1;
    /* only the main thread calls MPI (OpenMP's teams never do) */
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return cli_error("--mpi: MPI cannot start");
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    *cm = (eg_comm){.rank = rank, .size = size, .allgather = m_allgather,
                    .allgatherv = m_allgatherv, .alltoallv = m_alltoallv};
    return 0;
}

void cli_mpi_end(void) { MPI_Finalize(); }

#else

int cli_mpi_begin(eg_comm *cm)
{
    (void)cm;
    return cli_error("--mpi: this engram was built without MPI (no mpicc when it was built; "
                     "scripts/install-deps.sh installs OpenMPI, then make)");
}

void cli_mpi_end(void) {}

#endif
