/*
 * internal.h — helpers shared by the engine's modules; never included by server/.
 */
#ifndef GLIMPSE_INTERNAL_H
#define GLIMPSE_INTERNAL_H

#include "glimpse.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define GLIMPSE_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define GLIMPSE_PRINTF(a, b)
#endif

/* Fills *err (if not NULL) with code and a formatted message; returns code so
 * that callers can write `return err_set(err, GLIMPSE_EINVAL, "...")`. */
int err_set(glimpse_err *err, int code, const char *fmt, ...) GLIMPSE_PRINTF(3, 4);

/* Logs through the sink set by glimpse_log_set. Any thread. */
void glimpse_log(int level, const char *fmt, ...) GLIMPSE_PRINTF(2, 3);

#define LOG_ERROR(...) glimpse_log(GLIMPSE_LOG_ERROR, __VA_ARGS__)
#define LOG_WARN(...) glimpse_log(GLIMPSE_LOG_WARN, __VA_ARGS__)
#define LOG_INFO(...) glimpse_log(GLIMPSE_LOG_INFO, __VA_ARGS__)
#define LOG_DEBUG(...) glimpse_log(GLIMPSE_LOG_DEBUG, __VA_ARGS__)

/* Overflow-checked size arithmetic: return false (and leave *out unspecified)
 * when the exact result does not fit. Use them on every size that comes from
 * a file or a request. */
static inline bool size_mul(size_t a, size_t b, size_t *out) { return !__builtin_mul_overflow(a, b, out); }
static inline bool size_add(size_t a, size_t b, size_t *out) { return !__builtin_add_overflow(a, b, out); }
static inline bool u64_mul(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_mul_overflow(a, b, out); }
static inline bool u64_add(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_add_overflow(a, b, out); }

/* Monotonic clock in milliseconds, for timings. */
double time_ms(void);

/* len bytes (rounded up to 2 MB) aligned to 2 MB and advised as transparent
 * huge pages where the kernel offers them (Debian's default is on
 * madvise): for the large arrays a decode step streams through whole (the
 * packed weights), whose 4 KB pages cost a page-table walk each. Touching
 * any byte of a 2 MB page makes all of it resident. Free with free(); NULL
 * when out of memory or on overflow. */
void *alloc_huge(size_t len);

#endif /* GLIMPSE_INTERNAL_H */
