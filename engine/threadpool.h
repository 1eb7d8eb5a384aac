/*
 * threadpool.h — a fixed pool of worker threads that run one task at a time,
 * split by (ith, nth) like ggml's kernels. Threads are created once; running a
 * task creates none and allocates nothing.
 *
 * Thread rule: one thread (the owner, usually the engine thread) calls
 * threadpool_run; it runs parts of the task too. The pool is not re-entrant.
 */
#ifndef GLIMPSE_THREADPOOL_H
#define GLIMPSE_THREADPOOL_H

#include "internal.h"

typedef struct threadpool threadpool;

/* Part ith of nth (nth = the pool's size, or threadpool_run_parts' count).
 * Each part of a run runs exactly once, on whichever pool thread claims it
 * first: the caller and the workers
 * take parts until none is left, so a worker the OS is slow to schedule
 * costs nothing. No two threads run the same ith at once, so scratch indexed
 * by ith is private to the part; a part must not wait for another part. */
typedef void (*threadpool_fn)(void *arg, int ith, int nth);

/* The number of threads worth running: the CPUs this process may run on
 * (affinity mask), capped by a cgroup CPU quota (containers) — not the
 * machine's CPU count, since oversubscribed pools stall on every hand-off.
 * At least 1. Any thread. */
int threadpool_default_size(void);

/* n_threads >= 1 (1 = the caller only). Owned, free with threadpool_free. */
int threadpool_create(int n_threads, threadpool **out, glimpse_err *err);
void threadpool_free(threadpool *tp);
int threadpool_size(const threadpool *tp);

/* Runs the nth parts of fn and returns when every one has finished. A NULL
 * tp runs fn(arg, 0, 1) on the caller. */
void threadpool_run(threadpool *tp, threadpool_fn fn, void *arg);
/* The same with 1 <= n_parts <= 65535 parts (nth = n_parts) instead of one per
 * thread: finer parts even out threads that the OS runs unevenly, for tasks
 * whose parts need no per-thread scratch. */
void threadpool_run_parts(threadpool *tp, threadpool_fn fn, void *arg, int n_parts);

/* Splits [0, n) into nth nearly equal parts; part ith is [*lo, *hi). */
static inline void threadpool_split(int64_t n, int ith, int nth, int64_t *lo, int64_t *hi)
{
    int64_t per = n / nth, rem = n % nth;
    *lo = ith * per + (ith < rem ? ith : rem);
    *hi = *lo + per + (ith < rem ? 1 : 0);
}

#endif /* GLIMPSE_THREADPOOL_H */
