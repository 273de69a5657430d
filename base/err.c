/* err.c - status names and error reports. */
#include <stdio.h>

#include "eg_internal.h"

const char *eg_status_str(eg_status s)
{
    switch (s) {
    case EG_OK: return "ok";
    case EG_EINVAL: return "invalid argument";
    case EG_ECONFIG: return "invalid configuration";
    case EG_EIO: return "i/o error";
    case EG_ENOMEM: return "out of memory";
    case EG_ERANGE: return "value out of range";
    case EG_EFORMAT: return "malformed input";
    case EG_ECAPACITY: return "buffer too small";
    case EG_EUNSUPPORTED: return "unsupported";
    case EG_EMISMATCH: return "mismatch";
    default: return "unknown error";
    }
}

const char *eg_version(void) { return EG_VERSION_STRING; }

eg_status eg_fail(eg_err *err, eg_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}
