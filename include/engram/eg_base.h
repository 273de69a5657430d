/*
 * eg_base.h - status codes, error reports and version of libengram, and the
 * collectives (eg_comm) of jobs that run across processes.
 *
 * Conventions used by every public header of libengram:
 *  - Every fallible call returns an eg_status: 0 (EG_OK) on success, a negative
 *    EG_E* code on failure.
 *  - Calls that have no handle to keep an error message take an optional
 *    `eg_err *err` as their last argument. When it is non-NULL and the call
 *    fails, err->code and err->msg (a one-line, NUL-terminated English message,
 *    naming the file and position where there is one) are filled in. On success
 *    `err` is left untouched. Passing NULL is always allowed.
 *  - Handle-owning objects (created by eg_X_create/eg_X_open) are released by
 *    eg_X_free/eg_X_close, which accept NULL.
 *  - The library never prints and never exits; it allocates with malloc and
 *    reports EG_ENOMEM when that fails.
 */
#ifndef ENGRAM_EG_BASE_H
#define ENGRAM_EG_BASE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EG_VERSION_MAJOR 0
#define EG_VERSION_MINOR 1
#define EG_VERSION_PATCH 0
#define EG_VERSION_STRING "0.1.0"

typedef int eg_status;

enum {
    EG_OK = 0,
    EG_EINVAL = -1,       /* an argument is invalid (NULL, zero length, bad flag) */
    EG_ECONFIG = -2,      /* a configuration is missing a field or has a bad value */
    EG_EIO = -3,          /* reading or writing a file failed */
    EG_ENOMEM = -4,       /* an allocation failed */
    EG_ERANGE = -5,       /* a value is out of range (id >= vocabulary, overflow) */
    EG_EFORMAT = -6,      /* a file's contents are malformed (length, header, JSON) */
    EG_ECAPACITY = -7,    /* a caller buffer is too small */
    EG_EUNSUPPORTED = -8, /* valid input that this build does not handle */
    EG_EMISMATCH = -9     /* two inputs disagree (declared vs computed size, ...) */
};

#define EG_ERR_MSG_MAX 512

typedef struct eg_err {
    eg_status code;
    char msg[EG_ERR_MSG_MAX];
} eg_err;

/* Collective operations among the processes of a distributed job (ranks
 * 0..size-1: eg_count_opts.comm, eg_prep_opts.comm), supplied by the caller:
 * an MPI adapter (the engram command's --mpi), or threads (the tests). Every rank calls them in the same order;
 * each returns 0, or non-zero when the transport failed. Byte counts and
 * offsets are per rank, in rank order. */
typedef struct eg_comm {
    int rank, size;
    void *ctx;
    /* recv[r * bytes, (r + 1) * bytes) = rank r's send */
    int (*allgather)(void *ctx, const void *send, size_t bytes, void *recv);
    /* rank r's `bytes_of[r]` bytes, laid end to end in recv */
    int (*allgatherv)(void *ctx, const void *send, size_t bytes, void *recv,
                      const size_t *bytes_of);
    /* send_bytes[r] bytes from send + send_at[r] go to rank r; rank r's
     * recv_bytes[r] bytes for this rank land at recv + recv_at[r] */
    int (*alltoallv)(void *ctx, const void *send, const size_t *send_bytes, const size_t *send_at,
                     void *recv, const size_t *recv_bytes, const size_t *recv_at);
} eg_comm;

/* Every rank's verdict: each rank passes its own status (and err holding its
 * message when st != 0); all ranks return the same, EG_OK when every rank
 * passed EG_OK, else the lowest failing rank's status with err = "rank r of
 * R: its message"; EG_EIO when the transport itself failed. */
eg_status eg_comm_agree(const eg_comm *cm, eg_status st, eg_err *err);

/* A static, human-readable name for a status code ("invalid argument", ...). */
const char *eg_status_str(eg_status s);

/* The library's version string, e.g. "0.1.0". */
const char *eg_version(void);

#ifdef __cplusplus
}
#endif
#endif
