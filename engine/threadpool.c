/*
 * threadpool.c — fixed worker pool: one task at a time, split by (ith, nth).
 *
 * A run publishes (fn, arg), bumps a generation counter and wakes the workers.
 * The nth parts of the run are then claimed one at a time, by the caller and
 * by every worker that wakes, until none is left; the caller returns when all
 * nth have finished. Claiming rather than assigning part ith to thread ith is
 * what keeps a shared machine from stalling us: a worker that the kernel
 * scheduler leaves off the CPU for milliseconds would otherwise hold up every
 * one of a decoder step's hundreds of runs, while now the caller simply runs
 * its part too (measured on 2 busy cores: a 30-layer Q8_0 decode step took
 * 68 ms with two threads and assigned parts, 8 ms on one thread).
 * Workers poll the generation counter (spin, then yield) before sleeping on a
 * condvar, because a decoder step issues hundreds of short runs back to back
 * and a full sleep/wake per run would cost more than the work.
 *
 * Locking: one mutex (mu) guards the sleeping side of both handshakes: the
 * generation bump + `wake` broadcast, and the `done` signal of the worker
 * that finishes the last part. The fast paths use the atomics without it.
 */
#include "threadpool.h"

#include <assert.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

/* Waiting for the other side: SPIN_ITERS pause instructions (tens of
 * microseconds), then sched_yield for up to YIELD_MS, then a condvar sleep.
 * A decoder step issues hundreds of runs a few tens of microseconds apart.
 * Measured on 2 cores shared with other work: sleeping right after the spin
 * made the matmuls of a 30-layer decode step 3x slower with 2 threads than
 * with 1, the yield phase made them ~2x faster than 1 thread when the other
 * core was mostly free, and a long pure spin (10 ms) starved the thread it
 * waited for. No policy rescues a pool with more threads than free cores:
 * size it with threadpool_default_size and leave cores to other work. */
#define SPIN_ITERS 2000
#define YIELD_MS 2.0
/* Upper bound on pool size: far above any core count we run on, and keeps the
 * thread array allocation trivially bounded. */
#define MAX_THREADS 512

typedef struct worker {
    threadpool *tp;
    int ith;
    pthread_t thread;
} worker;

struct threadpool {
    int n_threads;          /* including the caller (thread 0) */
    worker *workers;        /* [n_threads - 1], ith = 1.. */
    int n_started;          /* workers actually created (for cleanup) */

    pthread_mutex_t mu;
    pthread_cond_t wake;    /* workers wait here for a new generation */
    pthread_cond_t done;    /* the caller waits here for n_running == 0 */

    threadpool_fn fn;       /* task of the current generation */
    void *arg;
    int n_parts;            /* its number of parts (read by the caller only) */
    atomic_uint gen;        /* bumped once per run (and once at shutdown) */
    /* generation << 32 | n_parts << 16 | next part to hand out: everything
     * a worker compares before claiming is in the one word it claims with,
     * so a worker late for a run can neither claim a part of the next run
     * with the old fn nor test an exhausted part of the old run against the
     * next run's n_parts (which made it run a part twice, n_done overshoot
     * and the caller wait forever). */
    _Atomic uint64_t claim;
    atomic_int n_done;      /* parts of this run finished */
    atomic_bool stop;
};

enum wait_for { WAIT_GENERATION, WAIT_DONE };

static bool ready(threadpool *tp, enum wait_for what, unsigned seen)
{
    if (what == WAIT_GENERATION)
        return atomic_load_explicit(&tp->gen, memory_order_acquire) != seen;
    return atomic_load_explicit(&tp->n_done, memory_order_acquire) == tp->n_parts;
}

/* Polls for `what` without sleeping: a short spin, then sched_yield for up to
 * YIELD_MS so that on an oversubscribed machine the thread we wait for can
 * run on our core. True if it happened. */
static bool poll_ready(threadpool *tp, enum wait_for what, unsigned seen)
{
    for (int i = 0; i < SPIN_ITERS; i++) {
        if (ready(tp, what, seen))
            return true;
        cpu_relax();
    }
    const double end = time_ms() + YIELD_MS;
    do {
        sched_yield();
        if (ready(tp, what, seen))
            return true;
    } while (time_ms() < end);
    return false;
}

/* Waits until tp->gen differs from seen; returns the new generation. */
static unsigned wait_generation(threadpool *tp, unsigned seen)
{
    if (!poll_ready(tp, WAIT_GENERATION, seen)) {
        pthread_mutex_lock(&tp->mu);
        while (!ready(tp, WAIT_GENERATION, seen))
            pthread_cond_wait(&tp->wake, &tp->mu);
        pthread_mutex_unlock(&tp->mu);
    }
    return atomic_load_explicit(&tp->gen, memory_order_acquire);
}

/* Claims and runs parts of generation gen until none is left. A successful
 * claim means the run is not finished, so fn and arg are still this run's.
 * The worker that finishes the last part wakes the caller (is_worker). */
static void run_parts(threadpool *tp, unsigned gen, bool is_worker)
{
    uint64_t c = atomic_load_explicit(&tp->claim, memory_order_acquire);
    for (;;) {
        const int n_parts = (int)((c >> 16) & 0xffff), part = (int)(c & 0xffff);
        if ((unsigned)(c >> 32) != gen || part >= n_parts)
            return;
        if (!atomic_compare_exchange_weak_explicit(&tp->claim, &c, c + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        tp->fn(tp->arg, part, n_parts);
        if (atomic_fetch_add_explicit(&tp->n_done, 1, memory_order_acq_rel) + 1 == n_parts && is_worker) {
            /* The caller may be asleep on `done`; taking the mutex orders
             * this signal after its check of n_done. */
            pthread_mutex_lock(&tp->mu);
            pthread_cond_signal(&tp->done);
            pthread_mutex_unlock(&tp->mu);
        }
        c = atomic_load_explicit(&tp->claim, memory_order_acquire);
    }
}

static void *worker_main(void *p)
{
    worker *w = p;
    threadpool *tp = w->tp;
    unsigned seen = 0;
    for (;;) {
        seen = wait_generation(tp, seen);
        if (atomic_load_explicit(&tp->stop, memory_order_acquire))
            break;
        run_parts(tp, seen, true);
    }
    return NULL;
}

/* CPUs granted by a CFS quota of `quota` µs per `period` µs, rounded up;
 * 0 when there is no quota (quota or period not positive). */
static int quota_cpus(long long quota, long long period)
{
    if (quota <= 0 || period <= 0)
        return 0;
    long long n = quota / period + (quota % period != 0);
    return n > MAX_THREADS ? MAX_THREADS : (int)n;
}

/* The quota of this process's cgroup: v2 cpu.max holds "QUOTA PERIOD" or
 * "max PERIOD"; v1 has two files, quota -1 meaning none. 0 if none. */
static int cgroup_cpus(void)
{
    long long quota = 0, period = 0;
    char q[32];
    FILE *f = fopen("/sys/fs/cgroup/cpu.max", "r");
    if (f) {
        if (fscanf(f, "%31s %lld", q, &period) == 2 && strcmp(q, "max") != 0)
            quota = strtoll(q, NULL, 10);
        fclose(f);
        return quota_cpus(quota, period);
    }
    f = fopen("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "r");
    if (f) {
        if (fscanf(f, "%lld", &quota) != 1)
            quota = 0;
        fclose(f);
    }
    f = fopen("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "r");
    if (f) {
        if (fscanf(f, "%lld", &period) != 1)
            period = 0;
        fclose(f);
    }
    return quota_cpus(quota, period);
}

int threadpool_default_size(void)
{
    int n = 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        n = CPU_COUNT(&set);
    if (n < 1) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c < 1 ? 1 : c > MAX_THREADS ? MAX_THREADS : (int)c;
    }
    int quota = cgroup_cpus();
    if (quota > 0 && quota < n)
        n = quota;
    return n > MAX_THREADS ? MAX_THREADS : n;
}

int threadpool_create(int n_threads, threadpool **out, glimpse_err *err)
{
    *out = NULL;
    if (n_threads < 1 || n_threads > MAX_THREADS)
        return err_set(err, GLIMPSE_EINVAL, "thread count %d outside [1, %d]", n_threads, MAX_THREADS);
    threadpool *tp = calloc(1, sizeof *tp);
    if (!tp)
        return err_set(err, GLIMPSE_ENOMEM, "out of memory for the thread pool");
    tp->n_threads = n_threads;
    atomic_init(&tp->gen, 0);
    atomic_init(&tp->claim, 0);
    atomic_init(&tp->n_done, 0);
    atomic_init(&tp->stop, false);
    pthread_mutex_init(&tp->mu, NULL);
    pthread_cond_init(&tp->wake, NULL);
    pthread_cond_init(&tp->done, NULL);

    int rc = 0;
    if (n_threads > 1) {
        tp->workers = calloc((size_t)n_threads - 1, sizeof *tp->workers);
        if (!tp->workers) {
            rc = err_set(err, GLIMPSE_ENOMEM, "out of memory for %d workers", n_threads - 1);
            goto fail;
        }
    }
    for (int i = 0; i < n_threads - 1; i++) {
        worker *w = &tp->workers[i];
        w->tp = tp;
        w->ith = i + 1;
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            rc = err_set(err, GLIMPSE_ENOMEM, "could not create worker thread %d", i + 1);
            goto fail;
        }
        tp->n_started++;
    }
    *out = tp;
    return 0;
fail:
    threadpool_free(tp);
    return rc;
}

void threadpool_free(threadpool *tp)
{
    if (!tp)
        return;
    pthread_mutex_lock(&tp->mu);
    atomic_store_explicit(&tp->stop, true, memory_order_release);
    atomic_fetch_add_explicit(&tp->gen, 1, memory_order_acq_rel);
    pthread_cond_broadcast(&tp->wake);
    pthread_mutex_unlock(&tp->mu);
    for (int i = 0; i < tp->n_started; i++)
        pthread_join(tp->workers[i].thread, NULL);
    pthread_cond_destroy(&tp->done);
    pthread_cond_destroy(&tp->wake);
    pthread_mutex_destroy(&tp->mu);
    free(tp->workers);
    free(tp);
}

int threadpool_size(const threadpool *tp)
{
    return tp ? tp->n_threads : 1;
}

void threadpool_run(threadpool *tp, threadpool_fn fn, void *arg)
{
    threadpool_run_parts(tp, fn, arg, tp ? tp->n_threads : 1);
}

void threadpool_run_parts(threadpool *tp, threadpool_fn fn, void *arg, int n_parts)
{
    if (!tp || tp->n_threads == 1) {
        for (int p = 0; p < n_parts; p++)
            fn(arg, p, n_parts);
        return;
    }
    /* Only this thread bumps gen while the pool runs, and every part of the
     * previous run has finished: nobody reads fn, arg, n_parts or n_done now. */
    const unsigned gen = atomic_load_explicit(&tp->gen, memory_order_relaxed) + 1;
    assert(n_parts >= 1 && n_parts <= 0xffff);
    tp->fn = fn;
    tp->arg = arg;
    tp->n_parts = n_parts;  /* for ready(): this thread's own copy */
    atomic_store_explicit(&tp->n_done, 0, memory_order_relaxed);
    /* Releases fn/arg/n_done to whoever claims a part of this generation. */
    atomic_store_explicit(&tp->claim, (uint64_t)gen << 32 | (uint64_t)n_parts << 16, memory_order_release);
    pthread_mutex_lock(&tp->mu);
    atomic_store_explicit(&tp->gen, gen, memory_order_release);
    pthread_cond_broadcast(&tp->wake);
    pthread_mutex_unlock(&tp->mu);

    run_parts(tp, gen, false);

    if (poll_ready(tp, WAIT_DONE, 0))
        return;
    pthread_mutex_lock(&tp->mu);
    while (!ready(tp, WAIT_DONE, 0))
        pthread_cond_wait(&tp->done, &tp->mu);
    pthread_mutex_unlock(&tp->mu);
}
