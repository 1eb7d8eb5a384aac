/*
 * queue.h — the mailbox between the engine and one HTTP request.
 *
 * A request's choices run as jobs of the model's scheduler
 * (engine/scheduler.c, which owns the bounded queue, admission and the
 * refusals: GLIMPSE_EBUSY when its queue is full, GLIMPSE_ESHUTDOWN after
 * glimpse_shutdown). Their token and end callbacks append events to the
 * request's mailbox on the engine thread; the HTTP thread that owns the
 * request takes them with gq_job_take, and cancels every choice at once
 * (waiting, encoding its images, prefilling or decoding) when its client
 * leaves.
 *
 * Lock order: the scheduler's lock, then a job's (the end callback runs
 * under the first); a thread holding a job's lock calls no glimpse function.
 */
#ifndef GLIMPSE_QUEUE_H
#define GLIMPSE_QUEUE_H

#include "glimpse.h"

#include <stddef.h>
#include <stdint.h>

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
    GQ_QUEUED = 0,  /* every choice waits for admission */
    GQ_RUNNING = 1, /* the engine works on it */
    GQ_DONE = 2,    /* every choice ended: status holds rc and err */
};

typedef struct gq_status {
    int state;       /* enum gq_state */
    int rc;          /* DONE: 0, or the first choice's error (GLIMPSE_ECANCELED when
                      * cancelled, GLIMPSE_ESHUTDOWN when the model stopped) */
    glimpse_err err; /* DONE with rc < 0 */
} gq_status;

/* What to run. req.on_token/on_done/user are set by the mailbox;
 * req.sampling.seed is the seed of choice 0, choice i uses seed + i.
 * Everything req points to belongs to owner, which gq_job_release frees with
 * owner_free once the engine has let go of the request (it borrows the
 * images until then). */
typedef struct gq_spec {
    glimpse_request req;
    int n_choices;
    void *owner;
    void (*owner_free)(void *owner);
} gq_spec;

/* Submits every choice of spec to m's scheduler, all or none (they run
 * together, batched). On success *out is the reader's (release with
 * gq_job_release) and owns spec->owner. Errors are glimpse_submit's:
 * GLIMPSE_EBUSY (the scheduler's queue is full: 429), GLIMPSE_ESHUTDOWN
 * (503), GLIMPSE_ELIMIT (the prompt never fits the context), ...; then the
 * caller keeps owner. Any thread. */
int gq_submit(glimpse_model *m, const gq_spec *spec, gq_job **out, glimpse_err *err);

/* Waits up to timeout_ms (0: no wait) until the job has events or changes
 * state since the last take, then moves all pending events into *ev, which
 * must be empty (zeroed or freed with gq_events_free), and fills *st.
 * Returns the number of events moved. Any thread, one reader per job. */
size_t gq_job_take(gq_job *j, int timeout_ms, gq_events *ev, gq_status *st);

/* Asks the engine to end every choice at its next step, whatever it is
 * doing (waiting, encoding images, prefilling, decoding): their sequence
 * slots and KV blocks return to the pool then. Non-blocking. Any thread. */
void gq_job_cancel(gq_job *j);

/* Cancels the job if it has not ended, waits for the engine to let go of it
 * (at most the step in progress), then frees it and its owner. Accepts NULL.
 * The reader's thread. */
void gq_job_release(gq_job *j);

#endif /* GLIMPSE_QUEUE_H */
