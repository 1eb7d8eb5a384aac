/*
 * util.c — error messages, the log sink and the clock.
 */
#include "internal.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

const char *glimpse_status_str(int code)
{
    static const struct { int code; const char *str; } table[] = {
        { GLIMPSE_OK, "ok" },
        { GLIMPSE_EINVAL, "invalid argument" },
        { GLIMPSE_ENOMEM, "out of memory" },
        { GLIMPSE_EIO, "input/output error" },
        { GLIMPSE_EFORMAT, "malformed data" },
        { GLIMPSE_EUNSUPPORTED, "unsupported" },
        { GLIMPSE_ELIMIT, "limit exceeded" },
        { GLIMPSE_ENOTFOUND, "not found" },
        { GLIMPSE_ECANCELED, "cancelled" },
        { GLIMPSE_EBUSY, "busy" },
        { GLIMPSE_ESHUTDOWN, "shutting down" },
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (table[i].code == code)
            return table[i].str;
    return "unknown error";
}

int err_set(glimpse_err *err, int code, const char *fmt, ...)
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

static void log_stderr(int level, const char *msg, void *user)
{
    static const char *names[] = { "error", "warn", "info", "debug" };
    (void)user;
    fprintf(stderr, "glimpse: %s: %s\n", names[level], msg);
}

/* Written once at start-up, before any thread reads them (glimpse.h rule). */
static glimpse_log_fn log_fn = log_stderr;
static int log_max_level = GLIMPSE_LOG_WARN;
static void *log_user;

void glimpse_log_set(glimpse_log_fn fn, int max_level, void *user)
{
    log_fn = fn ? fn : log_stderr;
    log_max_level = max_level;
    log_user = user;
}

void glimpse_log(int level, const char *fmt, ...)
{
    if (level > log_max_level || level < 0)
        return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log_fn(level, buf, log_user);
}

double time_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void *alloc_huge(size_t len)
{
    const size_t page = (size_t)2 << 20;
    if (len > SIZE_MAX - page)
        return NULL;
    len = (len + page - 1) / page * page;
    void *p = aligned_alloc(page, len);
#ifdef MADV_HUGEPAGE
    if (p)
        madvise(p, len, MADV_HUGEPAGE); /* a hint: 4 KB pages without it */
#endif
    return p;
}
