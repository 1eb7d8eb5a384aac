/*
 * glimpse.h — the one public header of libglimpse, the Glimpse inference engine.
 *
 * The engine knows nothing of HTTP or JSON. Everything here is plain C11.
 *
 * Conventions (see shared STYLE.md):
 *  - Functions return 0 or a negative GLIMPSE_E* code; on failure they fill the
 *    caller's glimpse_err (which may be NULL) with a human-readable message.
 *  - Every pointer a function returns says who owns it. Every *_free accepts NULL.
 *  - Every function says which thread may call it.
 */
#ifndef GLIMPSE_H
#define GLIMPSE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ------------------------------------------------------------ */

enum glimpse_status {
    GLIMPSE_OK = 0,
    GLIMPSE_EINVAL = -1,       /* bad argument or bad input from a request */
    GLIMPSE_ENOMEM = -2,       /* allocation failed */
    GLIMPSE_EIO = -3,          /* file could not be opened, read or mapped */
    GLIMPSE_EFORMAT = -4,      /* malformed file or data (GGUF, image, ...) */
    GLIMPSE_EUNSUPPORTED = -5, /* well-formed but not supported (type, arch) */
    GLIMPSE_ELIMIT = -6,       /* a configured limit would be exceeded */
    GLIMPSE_ENOTFOUND = -7,    /* a key, tensor or token is absent */
    GLIMPSE_ECANCELED = -8,    /* the caller cancelled the operation */
};

#define GLIMPSE_ERR_MSG_LEN 256

typedef struct glimpse_err {
    int code;                       /* one of enum glimpse_status */
    char msg[GLIMPSE_ERR_MSG_LEN];  /* NUL-terminated, for humans */
} glimpse_err;

/* Returns a static string naming a status code ("invalid argument", ...). Any thread. */
const char *glimpse_status_str(int code);

/* ---- logging ----------------------------------------------------------- */

enum glimpse_log_level {
    GLIMPSE_LOG_ERROR = 0,
    GLIMPSE_LOG_WARN = 1,
    GLIMPSE_LOG_INFO = 2,
    GLIMPSE_LOG_DEBUG = 3,
};

typedef void (*glimpse_log_fn)(int level, const char *msg, void *user);

/* Sets the process-wide log sink and the most verbose level passed to it.
 * The default writes WARN and above to stderr. Call before any other function;
 * the callback may be invoked from any engine thread. */
void glimpse_log_set(glimpse_log_fn fn, int max_level, void *user);

#ifdef __cplusplus
}
#endif

#endif /* GLIMPSE_H */
