/*
 * scheduler.h — continuous batching: the job a request becomes, and the one
 * engine thread that runs all jobs of a model together over the shared,
 * paged, prefix-caching KV cache (kvcache.h).
 *
 * Split of the work:
 *  - generate.c turns a glimpse_request into a job on the submitting thread
 *    (template, tokenizer, image layouts, sampler) and turns a job's logits
 *    into its next token and reported text (job_emit, engine thread);
 *  - scheduler.c owns the queue, admission, the image-embedding cache, the
 *    batching of every step and the metrics.
 *
 * A job's positions: pos[0, n_prompt) is the fused prompt, then each sampled
 * token is appended, so pos[0, n_total) is everything the sequence has seen;
 * positions [0, n_computed) have their K/V rows in the cache. A job whose
 * n_total - n_computed is 1 is decoding (its last sampled token is the next
 * input); more means prefill (a new prompt, or one sent back by a
 * preemption, which recomputes what the prefix cache lost).
 */
#ifndef GLIMPSE_SCHEDULER_H
#define GLIMPSE_SCHEDULER_H

#include "fusion.h"
#include "image.h"
#include "model.h"
#include "sampler.h"
#include "tokenizer.h"

#include <pthread.h>

/* Positions per KV block: the prefix cache's unit of reuse. */
#define SCHED_KV_BLOCK 16

enum job_state {
    JOB_WAITING = 0,  /* in the queue */
    JOB_ENCODING = 1, /* admitted; image tiles being encoded */
    JOB_RUNNING = 2,  /* admitted; prefill or decode */
    JOB_DONE = 3,
};

struct img_entry;

struct glimpse_job {
    glimpse_model *m;
    glimpse_token_fn on_token;
    glimpse_done_fn on_done;
    void *user;

    /* ---- prepared on the submitting thread (generate.c) ---- */
    prompt_pos *pos;            /* [cap] prompt, then sampled tokens */
    int n_prompt;
    int n_total;
    int cap;                    /* n_prompt + max_tokens */
    int image_tokens;
    int n_slots;                /* image slots of the prompt */
    const image_tiles **tiles;  /* [n_slots] borrowed from the request's images */
    uint64_t *slot_hash;        /* [n_slots] content hash of each slot's image */
    int *slot_last;             /* [n_slots] last prompt position of each slot */
    struct img_entry **slot_emb; /* [n_slots] pinned image-cache entries (engine thread) */
    uint64_t *block_hash;       /* [cap / SCHED_KV_BLOCK] hash chain of full blocks */
    int n_hashed;               /* block_hash[0, n_hashed) are computed */
    sampler *smp;
    stop_matcher sm;
    detok dt;

    /* ---- engine thread ---- */
    int seq;                    /* KV sequence, -1 when not admitted */
    int n_computed;
    int n_committed;            /* full blocks registered in the prefix cache */
    int take;                   /* entries of the current step */
    double encode_ms;
    double t_submit, t_admit, t_ready, t_first, t_last;

    /* ---- under the scheduler's lock ---- */
    int state;                  /* enum job_state */
    bool cancel;
    bool counted;               /* first admission seen (queue time recorded) */
    int rc;
    glimpse_err err;
    glimpse_result res;
    glimpse_job *prev, *next;   /* waiting queue or running list */
};

/* ---- generate.c ---------------------------------------------------------------- */

/* Fills j from req (j zeroed by the caller, j->m set): renders and tokenizes
 * the prompt, lays out images, checks the context, makes the sampler and stop
 * matcher. Errors as glimpse_submit's. Any thread. */
int job_prepare(glimpse_job *j, const glimpse_request *req, glimpse_err *err);
/* Frees what job_prepare allocated (not slot_emb's entries). */
void job_release(glimpse_job *j);

/* Samples the job's next token from logits [n_vocab], reports it, and either
 * appends it to pos (returns 0, *finished false) or ends the sequence
 * (returns 0, *finished true, j->res.finish_reason set). GLIMPSE_ECANCELED
 * when the callback asked to stop; other errors from the sampler. Engine
 * thread (it uses the model's sampling scratch). */
int job_emit(glimpse_job *j, const float *logits, bool *finished, glimpse_err *err);

/* ---- scheduler.c --------------------------------------------------------------- */

typedef struct scheduler scheduler;

typedef struct sched_params {
    int n_parallel;      /* = the KV cache's max_seqs */
    int max_queue;
    int step_tokens;     /* entries per forward pass (= the decoder's n_batch) */
    size_t image_cache_bytes; /* 0 = no caching beyond the running requests */
} sched_params;

/* Starts the engine thread of m (whose kv, dec, tp, vision are ready).
 * Owned, free with scheduler_free. */
int scheduler_create(glimpse_model *m, const sched_params *p, scheduler **out, glimpse_err *err);
/* Cancels every job, stops and joins the engine thread, frees the caches.
 * Jobs not yet freed by their owners end with GLIMPSE_ESHUTDOWN. Accepts NULL. */
void scheduler_free(scheduler *s);

#endif /* GLIMPSE_SCHEDULER_H */
