/*
 * queue.c — the mailbox between the engine and one HTTP request (see
 * queue.h). The queue itself is the scheduler's: this file only turns a
 * request's choices into scheduler jobs and their callbacks into events.
 *
 * Lifetime: the reader owns the mailbox; gq_job_release cancels what still
 * runs and frees the scheduler jobs (glimpse_job_free waits for the engine's
 * step in progress), so no callback can run on a freed mailbox, and the
 * request's memory (its images, borrowed by the jobs) is freed last.
 */
#include "queue.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The user data of one choice's callbacks. */
typedef struct gq_choice {
    gq_job *job;
    int index;
    glimpse_job *gj;   /* NULL if its submission failed */
} gq_choice;

struct gq_job {
    pthread_mutex_t mu;
    pthread_cond_t cv;     /* signalled on new events and on a choice's end */
    atomic_int stop;       /* read by the token callbacks without the lock: a choice
                            * failed or the mailbox is out of memory, so all stop */
    int n_choices;
    gq_choice *choices;    /* [n_choices] */
    int n_done;            /* choices ended */
    bool seen_done;        /* the reader saw the end at its last take */
    int rc;                /* the first error among the ended choices, else 0 */
    glimpse_err err;
    bool oom;              /* the mailbox could not grow: the job fails with ENOMEM */
    gq_events pending;     /* events the reader has not taken yet */
    gq_spec spec;
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

/* ---- callbacks (engine thread) ---------------------------------------------- */

/* Copies a token event into the mailbox. */
static int on_token(const glimpse_token *t, void *user)
{
    gq_choice *c = user;
    gq_job *j = c->job;
    if (atomic_load(&j->stop))
        return 1;
    pthread_mutex_lock(&j->mu);
    gq_events *e = &j->pending;
    gq_event ev = { .type = GQ_EV_TOKEN, .choice = c->index, .id = t->id, .logprob = t->logprob,
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
    if (!ok) {
        j->oom = true;
        atomic_store(&j->stop, 1);
    }
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    return ok ? 0 : 1;
}

/* A choice ended: its END event, or its error (the first real error wins
 * over a cancellation, which may be its consequence). Runs under the
 * scheduler's lock. */
static void on_done(int rc, const glimpse_result *res, const glimpse_err *err, void *user)
{
    gq_choice *c = user;
    gq_job *j = c->job;
    pthread_mutex_lock(&j->mu);
    if (rc == 0) {
        gq_event ev = { .type = GQ_EV_END, .choice = c->index, .res = *res };
        if (!push_event(&j->pending, &ev))
            j->oom = true;
    } else {
        atomic_store(&j->stop, 1);
        if (j->rc == 0 || (j->rc == GLIMPSE_ECANCELED && rc != GLIMPSE_ECANCELED)) {
            j->rc = rc;
            j->err = *err;
        }
    }
    j->n_done++;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

/* ---- the reader's side --------------------------------------------------------- */

/* Frees j after its choices (those submitted) ended; not the owner. */
static void job_destroy(gq_job *j)
{
    for (int i = 0; i < j->n_choices; i++)
        glimpse_job_free(j->choices[i].gj);
    gq_events_free(&j->pending);
    free(j->choices);
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

int gq_submit(glimpse_model *m, const gq_spec *spec, gq_job **out, glimpse_err *err)
{
    *out = NULL;
    gq_job *j = calloc(1, sizeof *j);
    if (j)
        j->choices = calloc(spec->n_choices > 0 ? (size_t)spec->n_choices : 1, sizeof *j->choices);
    if (!j || !j->choices) {
        free(j);
        if (err)
            *err = (glimpse_err){ GLIMPSE_ENOMEM, "out of memory" };
        return GLIMPSE_ENOMEM;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&j->mu, NULL);
    atomic_init(&j->stop, 0);
    j->spec = *spec;
    j->n_choices = spec->n_choices;
    int rc = 0;
    for (int i = 0; i < j->n_choices && rc == 0; i++) {
        gq_choice *c = &j->choices[i];
        c->job = j;
        c->index = i;
        glimpse_request req = spec->req;
        req.sampling.seed = spec->req.sampling.seed + (uint64_t)i;
        req.on_token = on_token;
        req.on_done = on_done;
        req.user = c;
        rc = glimpse_submit(m, &req, &c->gj, err);
    }
    if (rc < 0) { /* all or none: the choices already queued go */
        gq_job_cancel(j);
        job_destroy(j);
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
    /* until an event, or the end the reader has not seen yet */
    while (timeout_ms > 0 && j->pending.n_ev == 0 && (j->n_done == j->n_choices) == j->seen_done) {
        if (pthread_cond_timedwait(&j->cv, &j->mu, &until) == ETIMEDOUT)
            break;
    }
    size_t n = j->pending.n_ev;
    *ev = j->pending;
    memset(&j->pending, 0, sizeof j->pending);
    bool done = j->n_done == j->n_choices;
    j->seen_done = done;
    st->rc = 0;
    if (done && j->oom) {
        st->rc = GLIMPSE_ENOMEM;
        st->err = (glimpse_err){ GLIMPSE_ENOMEM, "out of memory while streaming tokens" };
    } else if (done && j->rc < 0) {
        st->rc = j->rc;
        st->err = j->err;
    }
    pthread_mutex_unlock(&j->mu);
    /* without the job's lock: glimpse_job_waiting takes the scheduler's */
    st->state = GQ_DONE;
    if (!done) {
        st->state = GQ_QUEUED;
        for (int i = 0; i < j->n_choices && st->state == GQ_QUEUED; i++)
            if (!glimpse_job_waiting(j->choices[i].gj))
                st->state = GQ_RUNNING;
    }
    return n;
}

void gq_job_cancel(gq_job *j)
{
    atomic_store(&j->stop, 1);
    for (int i = 0; i < j->n_choices; i++)
        if (j->choices[i].gj)
            glimpse_job_cancel(j->choices[i].gj);
}

void gq_job_release(gq_job *j)
{
    if (!j)
        return;
    gq_job_cancel(j); /* a no-op for the choices that ended */
    void *owner = j->spec.owner;
    void (*owner_free)(void *) = j->spec.owner_free;
    job_destroy(j);
    if (owner_free)
        owner_free(owner);
}
