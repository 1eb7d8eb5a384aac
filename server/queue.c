/*
 * queue.c — the bounded FIFO in front of the engine (see queue.h).
 *
 * A job has two references: the reader's (the HTTP connection) and the
 * queue's (dropped when the engine is done with it, or when it leaves the
 * queue unrun). The owner's request memory is freed with the last one, so
 * the engine never reads freed memory when a client leaves mid-generation.
 *
 * Several engine workers may run gq_run at once (one per parallel sequence):
 * each blocks in glimpse_generate while the engine's scheduler batches all
 * of their requests into the same forward passes.
 *
 * Locks: gq.mu guards the list, the running count and the counters;
 * gq_job.mu guards a job's state, mailbox and reference count. A thread
 * holding a job's lock never takes the queue's lock.
 */
#include "queue.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct gq_job {
    pthread_mutex_t mu;
    pthread_cond_t cv;     /* signalled on new events and state changes */
    int refs;
    atomic_int cancel;     /* read by the token callback without the lock */
    int state;             /* enum gq_state */
    int seen_state;        /* the state the reader saw at its last take */
    int rc;
    glimpse_err err;
    bool oom;              /* the mailbox could not grow: the job fails with ENOMEM */
    gq_events pending;     /* events the reader has not taken yet */
    int choice;            /* engine thread only: the choice being generated */
    gq_spec spec;
    bool queued;           /* under gq.mu: linked in the list */
    gq_job *next;          /* under gq.mu */
    gq *q;
};

struct gq {
    pthread_mutex_t mu;
    pthread_cond_t cv;     /* signalled on submit and shutdown */
    gq_job *head, *tail;
    size_t n_queued, capacity;
    size_t n_running;
    bool shutdown;
    atomic_int stop;       /* = shutdown, read by token callbacks without the lock */
    uint64_t cancelled, completed;
};

void gq_events_free(gq_events *e)
{
    free(e->ev);
    free(e->tops);
    free(e->bytes);
    memset(e, 0, sizeof *e);
}

/* Grows *p (elements of size sz) to hold need elements; false on overflow or OOM. */
static bool grow(void **p, size_t *cap, size_t need, size_t sz)
{
    if (need <= *cap)
        return true;
    size_t n = *cap ? *cap : 16;
    while (n < need) {
        if (n > SIZE_MAX / 2)
            return false;
        n *= 2;
    }
    if (n > SIZE_MAX / sz)
        return false;
    void *q = realloc(*p, n * sz);
    if (!q)
        return false;
    *p = q;
    *cap = n;
    return true;
}

static bool put_bytes(gq_events *e, const char *s, size_t n, size_t *off)
{
    if (n > SIZE_MAX - e->n_bytes || !grow((void **)&e->bytes, &e->cap_bytes, e->n_bytes + n, 1))
        return false;
    if (n)
        memcpy(e->bytes + e->n_bytes, s, n);
    *off = e->n_bytes;
    e->n_bytes += n;
    return true;
}

static bool push_event(gq_events *e, const gq_event *ev)
{
    if (!grow((void **)&e->ev, &e->cap_ev, e->n_ev + 1, sizeof *e->ev))
        return false;
    e->ev[e->n_ev++] = *ev;
    return true;
}

/* ---- jobs ------------------------------------------------------------------ */

static void job_unref(gq_job *j)
{
    pthread_mutex_lock(&j->mu);
    int refs = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (refs > 0)
        return;
    if (j->spec.owner_free)
        j->spec.owner_free(j->spec.owner);
    gq_events_free(&j->pending);
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

/* Marks j finished and wakes its reader. */
static void job_finish(gq_job *j, int rc, const glimpse_err *err)
{
    pthread_mutex_lock(&j->mu);
    j->state = GQ_DONE;
    j->rc = rc;
    if (rc < 0 && err)
        j->err = *err;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

static void job_finish_canceled(gq_job *j, const char *why)
{
    glimpse_err e = { GLIMPSE_ECANCELED, { 0 } };
    snprintf(e.msg, sizeof e.msg, "%s", why);
    job_finish(j, GLIMPSE_ECANCELED, &e);
}

/* The token callback: copies the event into the mailbox. Engine thread. */
static int on_token(const glimpse_token *t, void *user)
{
    gq_job *j = user;
    if (atomic_load(&j->cancel) || atomic_load(&j->q->stop))
        return 1;
    pthread_mutex_lock(&j->mu);
    gq_events *e = &j->pending;
    gq_event ev = { .type = GQ_EV_TOKEN, .choice = j->choice, .id = t->id, .logprob = t->logprob,
                    .piece_len = t->piece_len, .text_len = t->text_len, .n_top = t->n_top };
    bool ok = put_bytes(e, t->piece, t->piece_len, &ev.piece_off) && put_bytes(e, t->text, t->text_len, &ev.text_off) &&
              t->n_top >= 0 && grow((void **)&e->tops, &e->cap_tops, e->n_tops + (size_t)t->n_top, sizeof *e->tops);
    if (ok) {
        ev.top_off = e->n_tops;
        for (int i = 0; i < t->n_top && ok; i++) {
            gq_top *tp = &e->tops[e->n_tops + (size_t)i];
            tp->id = t->top[i].id;
            tp->logprob = t->top[i].logprob;
            tp->piece_len = t->top[i].piece_len;
            ok = put_bytes(e, t->top[i].piece, t->top[i].piece_len, &tp->piece_off);
        }
        if (ok)
            e->n_tops += (size_t)t->n_top;
    }
    ok = ok && push_event(e, &ev);
    if (!ok)
        j->oom = true;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    return ok ? 0 : 1;
}

/* Runs every choice of j. Engine thread. */
static int job_run(gq_job *j, glimpse_model *m, glimpse_err *err)
{
    int rc = 0;
    for (int i = 0; i < j->spec.n_choices && rc == 0; i++) {
        glimpse_request req = j->spec.req;
        req.sampling.seed = j->spec.req.sampling.seed + (uint64_t)i;
        req.on_token = on_token;
        req.user = j;
        j->choice = i;
        glimpse_result res;
        rc = glimpse_generate(m, &req, &res, err);
        pthread_mutex_lock(&j->mu);
        if (j->oom) {
            rc = GLIMPSE_ENOMEM;
            snprintf(err->msg, sizeof err->msg, "out of memory while streaming tokens");
        } else if (rc == 0) {
            gq_event ev = { .type = GQ_EV_END, .choice = i, .res = res };
            if (!push_event(&j->pending, &ev)) {
                rc = GLIMPSE_ENOMEM;
                snprintf(err->msg, sizeof err->msg, "out of memory while streaming tokens");
            }
            pthread_cond_broadcast(&j->cv);
        }
        pthread_mutex_unlock(&j->mu);
    }
    if (rc < 0)
        err->code = rc;
    return rc;
}

/* ---- the queue ------------------------------------------------------------- */

int gq_create(size_t capacity, gq **out, glimpse_err *err)
{
    gq *q = calloc(1, sizeof *q);
    if (!q) {
        if (err)
            *err = (glimpse_err){ GLIMPSE_ENOMEM, "queue: out of memory" };
        return GLIMPSE_ENOMEM;
    }
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    atomic_init(&q->stop, 0);
    q->capacity = capacity;
    *out = q;
    return 0;
}

void gq_free(gq *q)
{
    if (!q)
        return;
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

void gq_run(gq *q, glimpse_model *m)
{
    for (;;) {
        pthread_mutex_lock(&q->mu);
        while (!q->shutdown && !q->head)
            pthread_cond_wait(&q->cv, &q->mu);
        if (q->shutdown) {
            pthread_mutex_unlock(&q->mu);
            return;
        }
        gq_job *j = q->head;
        q->head = j->next;
        if (!q->head)
            q->tail = NULL;
        j->next = NULL;
        j->queued = false;
        q->n_queued--;
        q->n_running++;
        pthread_mutex_unlock(&q->mu);

        pthread_mutex_lock(&j->mu);
        j->state = GQ_RUNNING;
        pthread_cond_broadcast(&j->cv);
        pthread_mutex_unlock(&j->mu);

        glimpse_err err = { 0 };
        int rc = atomic_load(&j->cancel) ? GLIMPSE_ECANCELED : job_run(j, m, &err);

        /* counters first: a client that has its answer sees the engine free in /metrics */
        pthread_mutex_lock(&q->mu);
        q->n_running--;
        if (rc == GLIMPSE_ECANCELED)
            q->cancelled++;
        else
            q->completed++;
        bool stopping = q->shutdown;
        pthread_mutex_unlock(&q->mu);
        if (rc == GLIMPSE_ECANCELED)
            snprintf(err.msg, sizeof err.msg, "%s",
                     stopping ? "the server is shutting down" : "the request was cancelled");
        job_finish(j, rc, &err);
        job_unref(j);
    }
}

void gq_shutdown(gq *q)
{
    pthread_mutex_lock(&q->mu);
    q->shutdown = true;
    gq_job *list = q->head;
    q->head = q->tail = NULL;
    q->n_queued = 0;
    atomic_store(&q->stop, 1); /* running jobs stop at their next token */
    for (gq_job *j = list; j; j = j->next)
        j->queued = false;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    while (list) {
        gq_job *next = list->next;
        job_finish_canceled(list, "the server is shutting down");
        job_unref(list);
        list = next;
    }
}

int gq_submit(gq *q, const gq_spec *spec, gq_job **out, glimpse_err *err)
{
    gq_job *j = calloc(1, sizeof *j);
    if (!j) {
        if (err)
            *err = (glimpse_err){ GLIMPSE_ENOMEM, "queue: out of memory" };
        return GLIMPSE_ENOMEM;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&j->mu, NULL);
    j->refs = 2;
    j->spec = *spec;
    j->q = q;
    atomic_init(&j->cancel, 0);

    pthread_mutex_lock(&q->mu);
    int rc = 0;
    if (q->shutdown)
        rc = GLIMPSE_ECANCELED;
    else if (q->n_queued >= q->capacity)
        rc = GLIMPSE_ELIMIT;
    if (rc == 0) {
        j->queued = true;
        if (q->tail)
            q->tail->next = j;
        else
            q->head = j;
        q->tail = j;
        q->n_queued++;
        pthread_cond_signal(&q->cv);
    }
    pthread_mutex_unlock(&q->mu);
    if (rc < 0) {
        if (err) {
            err->code = rc;
            snprintf(err->msg, sizeof err->msg, "%s",
                     rc == GLIMPSE_ELIMIT ? "the queue is full" : "the server is shutting down");
        }
        j->spec.owner_free = NULL; /* the caller keeps its request */
        j->refs = 1;
        job_unref(j);
        return rc;
    }
    *out = j;
    return 0;
}

size_t gq_job_take(gq_job *j, int timeout_ms, gq_events *ev, gq_status *st)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&j->mu);
    while (timeout_ms > 0 && j->pending.n_ev == 0 && j->state == j->seen_state) {
        if (pthread_cond_timedwait(&j->cv, &j->mu, &until) == ETIMEDOUT)
            break;
    }
    size_t n = j->pending.n_ev;
    *ev = j->pending;
    memset(&j->pending, 0, sizeof j->pending);
    j->seen_state = j->state;
    st->state = j->state;
    st->rc = j->rc;
    st->err = j->err;
    pthread_mutex_unlock(&j->mu);
    return n;
}

void gq_job_cancel(gq_job *j)
{
    atomic_store(&j->cancel, 1);
    gq *q = j->q;
    bool unlinked = false;
    pthread_mutex_lock(&q->mu);
    if (j->queued) {
        gq_job **pp = &q->head, *prev = NULL;
        while (*pp != j) {
            prev = *pp;
            pp = &(*pp)->next;
        }
        *pp = j->next;
        if (q->tail == j)
            q->tail = prev;
        j->next = NULL;
        j->queued = false;
        q->n_queued--;
        q->cancelled++;
        unlinked = true;
    }
    pthread_mutex_unlock(&q->mu);
    if (unlinked) {
        job_finish_canceled(j, "the request was cancelled");
        job_unref(j);
    }
}

void gq_job_release(gq_job *j)
{
    if (!j)
        return;
    pthread_mutex_lock(&j->mu);
    bool done = j->state == GQ_DONE;
    pthread_mutex_unlock(&j->mu);
    if (!done)
        gq_job_cancel(j);
    job_unref(j);
}

void gq_stats_get(gq *q, gq_stats *out)
{
    pthread_mutex_lock(&q->mu);
    out->capacity = q->capacity;
    out->queued = q->n_queued;
    out->running = q->n_running;
    out->cancelled = q->cancelled;
    out->completed = q->completed;
    pthread_mutex_unlock(&q->mu);
}
