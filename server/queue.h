/*
 * queue.h — a bounded FIFO of generation jobs in front of the engine.
 *
 * One engine thread (gq_run) pops jobs and runs glimpse_generate; the token
 * callback appends events to the job's mailbox; the HTTP thread that owns the
 * job takes them with gq_job_take. This is the whole interface between the
 * HTTP side and the engine: a later batching scheduler replaces this file
 * and keeps these calls.
 *
 * Lock order: a job's lock is never held while taking the queue's lock, and
 * neither is held while the engine computes.
 */
#ifndef GLIMPSE_QUEUE_H
#define GLIMPSE_QUEUE_H

#include "glimpse.h"

#include <stddef.h>
#include <stdint.h>

typedef struct gq gq;
typedef struct gq_job gq_job;

enum gq_event_type {
    GQ_EV_TOKEN = 0, /* one token (or the final flush, id GLIMPSE_TOKEN_NONE) of a choice */
    GQ_EV_END = 1,   /* a choice finished: res holds its finish reason and counts */
};

/* An alternative token; piece bytes at events.bytes[piece_off..+piece_len). */
typedef struct gq_top {
    int32_t id;
    size_t piece_off, piece_len;
    float logprob;
} gq_top;

typedef struct gq_event {
    int type;                    /* enum gq_event_type */
    int choice;                  /* 0..n_choices-1 */
    int32_t id;                  /* TOKEN: token id or GLIMPSE_TOKEN_NONE */
    size_t piece_off, piece_len; /* TOKEN: the token's bytes, in events.bytes */
    size_t text_off, text_len;   /* TOKEN: released text, in events.bytes */
    float logprob;
    size_t top_off;              /* TOKEN: tops[top_off .. top_off + n_top) */
    int n_top;
    glimpse_result res;          /* END */
} gq_event;

/* Events handed from the engine to the reader; owned by whoever holds it,
 * cleared with gq_events_free. */
typedef struct gq_events {
    gq_event *ev;
    size_t n_ev, cap_ev;
    gq_top *tops;
    size_t n_tops, cap_tops;
    char *bytes;
    size_t n_bytes, cap_bytes;
} gq_events;

void gq_events_free(gq_events *e);

enum gq_state {
    GQ_QUEUED = 0,  /* waiting for the engine */
    GQ_RUNNING = 1, /* the engine works on it */
    GQ_DONE = 2,    /* finished, failed or cancelled: status holds rc and err */
};

typedef struct gq_status {
    int state;       /* enum gq_state */
    int rc;          /* DONE: 0 or the GLIMPSE_E* code of glimpse_generate */
    glimpse_err err; /* DONE with rc < 0 */
} gq_status;

typedef struct gq_stats {
    size_t capacity;
    size_t queued;        /* jobs waiting */
    size_t running;       /* jobs the engine works on (up to the gq_run callers) */
    uint64_t cancelled;   /* jobs ended by gq_job_cancel or a reader that left */
    uint64_t completed;   /* jobs that ran to their end */
} gq_stats;

/* What to run. req.on_token/req.user are set by the queue; req.sampling.seed
 * is the seed of choice 0, choice i uses seed + i. Everything req points to
 * belongs to owner, which the job frees with owner_free when the last
 * reference goes (the engine may still read it after the reader left). */
typedef struct gq_spec {
    glimpse_request req;
    int n_choices;
    void *owner;
    void (*owner_free)(void *owner);
} gq_spec;

/* Creates a queue holding at most capacity waiting jobs. Owned, free with
 * gq_free after gq_run returned. Any thread. */
int gq_create(size_t capacity, gq **out, glimpse_err *err);
void gq_free(gq *q);

/* A worker loop: pops jobs and runs them on m until gq_shutdown. Several
 * threads may run it at once (one per parallel sequence of the model): the
 * model's engine thread batches their requests. */
void gq_run(gq *q, glimpse_model *m);

/* Makes gq_run return after cancelling the running jobs and failing the
 * queued ones (rc GLIMPSE_ECANCELED). Any thread. */
void gq_shutdown(gq *q);

/* Queues a job. On success *out holds the reader's reference (release with
 * gq_job_release) and the job owns spec->owner. GLIMPSE_ELIMIT when the queue
 * is full, GLIMPSE_ECANCELED after shutdown: then the caller keeps owner.
 * Any thread. */
int gq_submit(gq *q, const gq_spec *spec, gq_job **out, glimpse_err *err);

/* Waits up to timeout_ms (0: no wait) until the job has events or changes
 * state since the last take, then moves all pending events into *ev, which
 * must be empty (zeroed or freed with gq_events_free), and fills *st.
 * Returns the number of events moved. Any thread, one reader per job. */
size_t gq_job_take(gq_job *j, int timeout_ms, gq_events *ev, gq_status *st);

/* Asks the engine to stop the job at its next token (or to skip it while
 * queued). Any thread. */
void gq_job_cancel(gq_job *j);

/* Drops the reader's reference; cancels the job if it has not finished.
 * Accepts NULL. */
void gq_job_release(gq_job *j);

/* A snapshot of the counters, for /metrics. Any thread. */
void gq_stats_get(gq *q, gq_stats *out);

#endif /* GLIMPSE_QUEUE_H */
