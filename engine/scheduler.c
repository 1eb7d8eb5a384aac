/*
 * scheduler.c — continuous batching on one engine thread.
 *
 * Each step of the engine thread:
 *   1. drops cancelled jobs (their KV blocks return to the pool);
 *   2. admits waiting jobs in FIFO order while a sequence slot is free and
 *      the pool has blocks for the job's prompt plus its first token: the
 *      prefix cache attaches the full blocks it already holds, the rest are
 *      taken from the pool at once (before any image of the job is encoded),
 *      and the image cache attaches the embeddings of images it has seen;
 *   3. encodes pending image tiles of admitted jobs, oldest job first: one
 *      ViT layer per step while other sequences decode, so that they keep
 *      streaming (a tile is carried over from step to step in the vision
 *      encoder), and one whole tile otherwise;
 *   4. builds one batch: one entry for every decoding sequence, then prompt
 *      chunks of the prefilling ones, oldest first, up to the step's token
 *      budget, and at most prompt_busy positions while sequences decode
 *      (so a long prompt takes several steps and holds back the running
 *      streams by a bounded time); reserves KV positions, preempting the
 *      newest job when the pool is out of blocks (it goes back to the head
 *      of the queue and recomputes later, mostly from the prefix cache);
 *   5. runs one forward pass (every weight matrix read once per step);
 *   6. registers newly full blocks in the prefix cache, samples every job
 *      whose last position got logits, reports the tokens and ends the jobs
 *      that finished.
 *
 * Batch invariance comes from the decoder (decoder.c): an entry's logits do
 * not depend on the other entries, so neither the batch nor prefix caching
 * nor preemption changes a request's tokens.
 *
 * Locking: one mutex (s->lock) guards the queue, the running list, every
 * job's state / cancel / result fields and the counters. The engine thread
 * drops it while it computes (encoding, forward pass, sampling), so submit,
 * cancel and stats never wait for a step. on_token callbacks run without
 * the lock, on_done ones with it (a job ends under the lock). The prefix
 * cache and the image cache are touched by the engine thread only.
 */
#include "scheduler.h"

#include "decoder.h"
#include "kvcache.h"
#include "vision.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ViT layers encoded per step while sequences decode: the smallest unit of
 * encoder work, and so the bound it puts on their inter-token latency (one
 * layer of a 512-pixel SigLIP tile is ~0.3 s on two cores, a whole tile of
 * 12 layers ~3.6 s). With nothing decoding a step encodes one whole tile:
 * a request that arrives meanwhile waits at most that long to be admitted. */
#define STEP_LAYERS_BUSY 1

/* Histogram bucket bounds. */
static const double time_bounds[GLIMPSE_HIST_N] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                    1,     2.5,  5,     10,   30,  60,  INFINITY };
static const double size_bounds[GLIMPSE_HIST_N] = { 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096,
                                                    INFINITY };

/* ---- image-embedding cache -------------------------------------------------- */

/* The projector output of one image, [n_tiles * n_tokens_out][n_embd],
 * found by content hash and pinned by the jobs that use it. An entry is
 * created by the first job that needs the image; until it is ready, every
 * pinning job waits for it and any of them may encode its next tile (their
 * tiles are the same by the hash), so the encoding survives the creator's
 * cancellation. */
typedef struct img_entry {
    uint64_t hash;
    float *emb;
    size_t bytes;
    int n_tiles, tiles_done;
    int pins;
    bool ready;
    struct img_entry *prev, *next; /* all entries, least recently used first */
} img_entry;

typedef struct img_cache {
    img_entry *head, *tail;
    size_t bytes, cap;
    uint64_t queries, hits;
    /* The entry whose tile tiles_done is half encoded: its first part_layers
     * ViT layers are done and their activations wait in the vision encoder. */
    img_entry *part;
    int part_layers;
} img_cache;

static void ic_unlink(img_cache *c, img_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void ic_push_tail(img_cache *c, img_entry *e)
{
    e->prev = c->tail;
    e->next = NULL;
    if (c->tail)
        c->tail->next = e;
    else
        c->head = e;
    c->tail = e;
}

static void ic_drop(img_cache *c, img_entry *e)
{
    if (c->part == e)
        c->part = NULL;
    ic_unlink(c, e);
    c->bytes -= e->bytes;
    free(e->emb);
    free(e);
}

/* Evicts unpinned entries, least recently used first, until the cache is
 * within its cap (pinned ones may keep it above for a while). */
static void ic_trim(img_cache *c)
{
    for (img_entry *e = c->head, *next; e && c->bytes > c->cap; e = next) {
        next = e->next;
        if (e->pins == 0)
            ic_drop(c, e);
    }
}

static void ic_unpin(img_cache *c, img_entry *e)
{
    if (--e->pins > 0)
        return;
    if (!e->ready)
        ic_drop(c, e); /* every job that waited for it left */
    else
        ic_trim(c);
}

/* ---- the scheduler ------------------------------------------------------------ */

typedef struct job_list {
    glimpse_job *head, *tail;
    int n;
} job_list;

struct scheduler {
    glimpse_model *m;
    sched_params p;
    pthread_t thread;
    bool thread_ok;
    pthread_mutex_t lock;
    pthread_cond_t wake;      /* the engine: work arrived */
    pthread_cond_t done;      /* waiters: a job ended */
    bool stop, draining;
    job_list waiting, running;
    img_cache ic;
    int prompt_busy;          /* prompt positions per step while sequences decode */
    dec_entry *batch;         /* [step_tokens] entries of a pass */
    glimpse_job **jobs;       /* [n_parallel] the running jobs of a step */
    glimpse_stats st;         /* counters (running/waiting/kv filled in by stats_get) */
};

static void list_push_tail(job_list *l, glimpse_job *j)
{
    j->prev = l->tail;
    j->next = NULL;
    if (l->tail)
        l->tail->next = j;
    else
        l->head = j;
    l->tail = j;
    l->n++;
}

static void list_push_head(job_list *l, glimpse_job *j)
{
    j->prev = NULL;
    j->next = l->head;
    if (l->head)
        l->head->prev = j;
    else
        l->tail = j;
    l->head = j;
    l->n++;
}

static void list_remove(job_list *l, glimpse_job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        l->head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        l->tail = j->prev;
    j->prev = j->next = NULL;
    l->n--;
}

static void hist_init(glimpse_hist *h, const double *bounds)
{
    memset(h, 0, sizeof *h);
    memcpy(h->le, bounds, sizeof h->le);
}

static void hist_add(glimpse_hist *h, double v)
{
    int i = 0;
    while (i < GLIMPSE_HIST_N - 1 && v > h->le[i])
        i++;
    h->count[i]++;
    h->n++;
    h->sum += v;
}

/* ---- job lifecycle (engine thread) ---------------------------------------------- */

/* Ends j with rc: its blocks and image pins go back, the waiters wake up.
 * Called with the lock held; j is on the running or waiting list. */
static void job_finish(scheduler *s, glimpse_job *j, int rc, const glimpse_err *err)
{
    glimpse_model *m = s->m;
    list_remove(j->state == JOB_WAITING ? &s->waiting : &s->running, j);
    if (j->seq >= 0)
        kv_seq_close(m->kv, j->seq);
    j->seq = -1;
    for (int i = 0; i < j->n_slots; i++) {
        if (j->slot_emb[i])
            ic_unpin(&s->ic, j->slot_emb[i]);
        j->slot_emb[i] = NULL;
    }
    double now = time_ms();
    j->res.image_encode_ms = j->encode_ms;
    if (j->t_first > 0) {
        j->res.prefill_ms = j->t_first - j->t_ready;
        j->res.decode_ms = now - j->t_first;
    }
    j->rc = rc;
    if (rc < 0 && err)
        j->err = *err;
    if (rc == 0)
        s->st.requests_done++;
    else if (rc == GLIMPSE_ECANCELED)
        s->st.requests_cancelled++;
    else
        s->st.requests_failed++;
    j->state = JOB_DONE;
    if (j->on_done)
        j->on_done(rc, &j->res, &j->err, j->user);
    pthread_cond_broadcast(&s->done);
}

static void job_cancelled(scheduler *s, glimpse_job *j)
{
    glimpse_err err;
    err_set(&err, GLIMPSE_ECANCELED, "generate: cancelled by the caller");
    job_finish(s, j, GLIMPSE_ECANCELED, &err);
}

/* The key of position p in the prefix cache's hash chain: the token id, or
 * (tagged by the top bit) the image's content hash mixed with the row. */
static uint64_t pos_key(const glimpse_job *j, int p)
{
    const prompt_pos *pp = &j->pos[p];
    if (pp->image < 0)
        return (uint64_t)(uint32_t)pp->token;
    uint64_t h = j->slot_hash[pp->image] ^ ((uint64_t)(uint32_t)pp->row * 0x9e3779b97f4a7c15ull);
    return h | 1ull << 63;
}

/* Hashes the full blocks of j up to block n (exclusive). */
static void hash_blocks(glimpse_job *j, int n)
{
    uint64_t keys[SCHED_KV_BLOCK];
    for (; j->n_hashed < n; j->n_hashed++) {
        int b = j->n_hashed;
        for (int i = 0; i < SCHED_KV_BLOCK; i++)
            keys[i] = pos_key(j, b * SCHED_KV_BLOCK + i);
        j->block_hash[b] = kv_block_hash(b ? j->block_hash[b - 1] : 0, keys, SCHED_KV_BLOCK);
    }
}

/* Sends a running job back to the head of the queue, freeing its KV
 * sequence; its registered blocks stay in the prefix cache. Lock held. */
static void job_preempt(scheduler *s, glimpse_job *j)
{
    list_remove(&s->running, j);
    kv_seq_close(s->m->kv, j->seq);
    j->seq = -1;
    j->n_computed = 0;
    j->n_committed = 0;
    j->take = 0;
    j->state = JOB_WAITING;
    list_push_head(&s->waiting, j);
    s->st.preemptions++;
}

/* Pins the image-cache entries j still needs (slots with positions past its
 * attached prefix); a miss creates an entry that j encodes. Returns false
 * when out of memory (j is unchanged for the slots not done). */
static bool pin_images(scheduler *s, glimpse_job *j)
{
    const glimpse_model *m = s->m;
    for (int i = 0; i < j->n_slots; i++) {
        if (j->slot_emb[i] || j->slot_last[i] < j->n_computed)
            continue;
        s->ic.queries++;
        img_entry *e = NULL;
        if (s->ic.cap > 0)
            for (e = s->ic.tail; e && e->hash != j->slot_hash[i]; e = e->prev)
                ;
        if (e) {
            s->ic.hits++;
            ic_unlink(&s->ic, e);
        } else {
            const vision_hparams *hp = vision_get_hparams(m->vision);
            size_t rows = (size_t)j->tiles[i]->n_tiles * (size_t)hp->n_tokens_out;
            e = calloc(1, sizeof *e);
            if (!e)
                return false;
            e->bytes = rows * (size_t)m->text.cfg.n_embd * sizeof(float);
            if (!(e->emb = malloc(e->bytes))) {
                free(e);
                return false;
            }
            e->hash = j->slot_hash[i];
            e->n_tiles = j->tiles[i]->n_tiles;
            s->ic.bytes += e->bytes;
        }
        ic_push_tail(&s->ic, e);
        e->pins++;
        j->slot_emb[i] = e;
    }
    return true;
}

static bool images_ready(const glimpse_job *j)
{
    for (int i = 0; i < j->n_slots; i++)
        if (j->slot_emb[i] && !j->slot_emb[i]->ready)
            return false;
    return true;
}

/* Admits waiting jobs, oldest first, while they fit. Lock held. */
static void admit(scheduler *s)
{
    glimpse_model *m = s->m;
    while (s->waiting.head && s->running.n < s->p.n_parallel) {
        glimpse_job *j = s->waiting.head;
        int seq;
        if (kv_seq_open(m->kv, &seq, NULL) < 0)
            return;
        /* The last position is always recomputed: its logits are needed. */
        int n_attach = (j->n_total - 1) / SCHED_KV_BLOCK;
        hash_blocks(j, n_attach);
        int got = kv_seq_attach_prefix(m->kv, seq, j->block_hash, n_attach);
        /* The blocks of the whole prompt and of the first sampled token are
         * taken now, before the job's images are encoded: a job never spends
         * seconds in the vision encoder and then finds no KV room, and jobs
         * admitted together cannot count the same free blocks. */
        if (kv_seq_reserve(m->kv, seq, (int64_t)j->n_total + 1, NULL) < 0) {
            kv_seq_close(m->kv, seq);
            return; /* FIFO: nobody overtakes the head */
        }
        list_remove(&s->waiting, j);
        j->seq = seq;
        j->n_computed = got * SCHED_KV_BLOCK;
        j->n_committed = got;
        if (!j->counted) {
            j->counted = true;
            j->t_admit = time_ms();
            hist_add(&s->st.queue_s, (j->t_admit - j->t_submit) / 1000.0);
        }
        list_push_tail(&s->running, j);
        if (!pin_images(s, j)) {
            glimpse_err err;
            err_set(&err, GLIMPSE_ENOMEM, "scheduler: out of memory for image embeddings");
            j->state = JOB_RUNNING;
            job_finish(s, j, GLIMPSE_ENOMEM, &err);
            continue;
        }
        j->state = images_ready(j) ? JOB_RUNNING : JOB_ENCODING;
        if (j->state == JOB_RUNNING && j->t_ready == 0)
            j->t_ready = time_ms();
    }
}

/* ---- one step ----------------------------------------------------------------- */

/* Runs up to budget ViT layers of slot i of j (counting a layer-less tower's
 * tile as one), continuing a half-encoded tile of the slot's entry; returns
 * the layers run. Engine thread, without the lock: only the engine touches
 * entries and encoding jobs' tiles. */
static int encode_slot(scheduler *s, glimpse_job *j, int i, int budget)
{
    glimpse_model *m = s->m;
    img_cache *c = &s->ic;
    img_entry *e = j->slot_emb[i];
    const vision_hparams *hp = vision_get_hparams(m->vision);
    const size_t tile_len = 3 * (size_t)hp->image_size * (size_t)hp->image_size;
    const size_t rows = (size_t)hp->n_tokens_out * (size_t)m->text.cfg.n_embd;
    const int n_layer = hp->n_layer_run;
    int used = 0;
    while (!e->ready && used < budget) {
        /* Starting a tile drops the half tile of another entry, if any (the
         * encoder holds one): encode_tiles finishes that one first when a
         * running job pins it, else it is redone from its first layer. */
        int from = c->part == e ? c->part_layers : 0;
        int to = n_layer - from < budget - used ? n_layer : from + budget - used;
        double t0 = time_ms();
        vision_encode_part(m->vision, m->tp, j->tiles[i]->data + (size_t)e->tiles_done * tile_len, from, to,
                           e->emb + (size_t)e->tiles_done * rows);
        j->encode_ms += time_ms() - t0;
        used += to > from ? to - from : 1;
        c->part = to < n_layer ? e : NULL;
        c->part_layers = to;
        if (to == n_layer) {
            e->tiles_done++;
            e->ready = e->tiles_done == e->n_tiles;
        }
    }
    return used;
}

/* Encodes up to budget ViT layers of pending tiles: first the tile in
 * progress (found through any job that pins its entry), then oldest job
 * first. */
static void encode_tiles(scheduler *s, glimpse_job **jobs, int n_jobs, int budget)
{
    for (int pass = s->ic.part ? 0 : 1; pass < 2; pass++)
        for (int k = 0; k < n_jobs && budget > 0; k++) {
            glimpse_job *j = jobs[k];
            for (int i = 0; i < j->n_slots && budget > 0; i++) {
                img_entry *e = j->slot_emb[i];
                if (e && !e->ready && (pass == 1 || e == s->ic.part))
                    budget -= encode_slot(s, j, i, budget);
            }
        }
}

/* Registers the full blocks j has computed in the prefix cache. */
static void commit_blocks(scheduler *s, glimpse_job *j)
{
    int full = j->n_computed / SCHED_KV_BLOCK;
    hash_blocks(j, full);
    for (; j->n_committed < full; j->n_committed++)
        kv_seq_commit_block(s->m->kv, j->seq, j->n_committed, j->block_hash[j->n_committed]);
}

/* Plans this step's entries of every running job (j->take), reserving their
 * KV positions; preempts the newest jobs when the pool runs out. Lock held.
 * Returns the number of entries. */
static int plan_step(scheduler *s)
{
    glimpse_model *m = s->m;
    int n_decode = 0;
    for (glimpse_job *j = s->running.head; j; j = j->next)
        n_decode += j->state == JOB_RUNNING && j->n_total - j->n_computed == 1;
    int budget = s->p.step_tokens - n_decode, n = 0;
    if (n_decode > 0 && budget > s->prompt_busy)
        budget = s->prompt_busy;
    for (glimpse_job *j = s->running.head, *next; j; j = next) {
        next = j->next;
        j->take = 0;
        if (j->state != JOB_RUNNING)
            continue;
        int rem = j->n_total - j->n_computed;
        int take = rem == 1 ? 1 : rem < budget ? rem : budget;
        if (take <= 0)
            continue;
        /* The victim is the newest job: never one planned already. */
        while (kv_seq_reserve(m->kv, j->seq, (int64_t)j->n_computed + take, NULL) < 0) {
            glimpse_job *victim = s->running.tail;
            job_preempt(s, victim);
            if (victim == j)
                break;
        }
        if (j->state != JOB_RUNNING)
            break; /* j was the newest: nothing follows it */
        next = j->next;
        j->take = take;
        n += take;
        if (rem > 1)
            budget -= take;
    }
    return n;
}

/* Runs the planned entries as one forward pass, then samples every job whose
 * last position got logits and ends the finished ones (a failed pass fails
 * every job in it). Called without the lock. */
static void run_step(scheduler *s, glimpse_job **jobs, int n_jobs, int n_entries)
{
    glimpse_model *m = s->m;
    const size_t n_embd = (size_t)m->text.cfg.n_embd;
    int n = 0;
    for (int k = 0; k < n_jobs; k++) {
        glimpse_job *j = jobs[k];
        for (int i = 0; i < j->take; i++) {
            int p = j->n_computed + i;
            const prompt_pos *pp = &j->pos[p];
            const float *embd = pp->image < 0 ? NULL : j->slot_emb[pp->image]->emb + (size_t)pp->row * n_embd;
            s->batch[n++] = (dec_entry){ j->seq, p, pp->token, embd, p == j->n_total - 1 };
        }
    }
    glimpse_err err = { 0 };
    int rc = decoder_forward(m->dec, s->batch, n_entries, &err);

    pthread_mutex_lock(&s->lock);
    s->st.steps++;
    hist_add(&s->st.batch_size, n_entries);
    for (int k = 0; k < n_jobs && rc == 0; k++) {
        glimpse_job *j = jobs[k];
        int in_prompt = j->n_prompt - j->n_computed;
        s->st.prompt_tokens_computed += (uint64_t)(in_prompt < 0 ? 0 : in_prompt < j->take ? in_prompt : j->take);
        j->n_computed += j->take;
        commit_blocks(s, j);
    }
    pthread_mutex_unlock(&s->lock);

    int k_logits = 0;
    for (int k = 0; k < n_jobs; k++) {
        glimpse_job *j = jobs[k];
        bool finished = false, emitted = false;
        int jrc = rc;
        glimpse_err jerr = err;
        if (rc == 0 && j->n_computed == j->n_total) {
            jrc = job_emit(j, decoder_logits(m->dec, k_logits++), &finished, &jerr);
            emitted = true;
        }
        j->take = 0;
        double now = time_ms();
        pthread_mutex_lock(&s->lock);
        if (emitted) {
            s->st.tokens_generated++;
            if (j->t_first == 0) {
                j->t_first = now;
                hist_add(&s->st.ttft_s, (now - j->t_submit) / 1000.0);
            } else {
                hist_add(&s->st.itl_s, (now - j->t_last) / 1000.0);
            }
            j->t_last = now;
        }
        if (jrc == GLIMPSE_ECANCELED)
            job_cancelled(s, j);
        else if (jrc < 0 || finished)
            job_finish(s, j, jrc, &jerr);
        pthread_mutex_unlock(&s->lock);
    }
}

static void *engine_main(void *arg)
{
    scheduler *s = arg;
    glimpse_job **jobs = s->jobs;
    pthread_mutex_lock(&s->lock);
    while (!s->stop) {
        /* 1. cancellations */
        for (glimpse_job *j = s->waiting.head, *next; j; j = next) {
            next = j->next;
            if (j->cancel)
                job_cancelled(s, j);
        }
        for (glimpse_job *j = s->running.head, *next; j; j = next) {
            next = j->next;
            if (j->cancel)
                job_cancelled(s, j);
        }
        /* 2. admission */
        admit(s);
        if (s->running.n == 0) {
            pthread_cond_wait(&s->wake, &s->lock);
            continue;
        }
        /* 3. image tiles of admitted jobs, oldest first */
        int n_jobs = 0, n_encoding = 0, n_decoding = 0;
        for (glimpse_job *j = s->running.head; j; j = j->next) {
            jobs[n_jobs++] = j;
            n_encoding += j->state == JOB_ENCODING;
            n_decoding += j->state == JOB_RUNNING && j->n_total - j->n_computed == 1;
        }
        if (n_encoding > 0) {
            pthread_mutex_unlock(&s->lock);
            const int n_layer = vision_get_hparams(s->m->vision)->n_layer_run;
            encode_tiles(s, jobs, n_jobs, n_decoding > 0 ? STEP_LAYERS_BUSY : n_layer > 0 ? n_layer : 1);
            pthread_mutex_lock(&s->lock);
            for (int k = 0; k < n_jobs; k++) {
                glimpse_job *j = jobs[k];
                if (j->state == JOB_ENCODING && images_ready(j)) {
                    j->state = JOB_RUNNING;
                    j->t_ready = time_ms();
                }
            }
        }
        /* 4.-6. one forward pass */
        int n_entries = plan_step(s);
        if (n_entries == 0)
            continue;
        n_jobs = 0;
        for (glimpse_job *j = s->running.head; j; j = j->next)
            if (j->take > 0)
                jobs[n_jobs++] = j;
        pthread_mutex_unlock(&s->lock);
        run_step(s, jobs, n_jobs, n_entries);
        pthread_mutex_lock(&s->lock);
    }
    /* Stopping: everything still here ends. */
    glimpse_err err;
    err_set(&err, GLIMPSE_ESHUTDOWN, "scheduler: the model is shutting down");
    while (s->running.head)
        job_finish(s, s->running.head, GLIMPSE_ESHUTDOWN, &err);
    while (s->waiting.head)
        job_finish(s, s->waiting.head, GLIMPSE_ESHUTDOWN, &err);
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* ---- creation ------------------------------------------------------------------ */

/* Multiply-adds of one ViT layer on one tile: the four attention
 * projections and the MLP on every row, then QK^T and AV. */
static double vit_layer_macs(const vision_hparams *hp)
{
    const double n = hp->n_pos, c = hp->n_embd;
    return n * (4 * c * c + 2 * c * hp->n_ff) + 2 * n * n * c;
}

/* Multiply-adds of one prompt position through the text model's weights
 * (the attention over earlier positions, which grows along the prompt, is
 * left out: it is a third of the weights' cost at 1000 positions of
 * SmolVLM-256M). */
static double text_pos_macs(const text_config *c)
{
    const double d = c->n_embd, q = (double)c->n_head * c->head_dim, kv = (double)c->n_head_kv * c->head_dim;
    return c->n_layer * (d * (2 * q + 2 * kv) + 3 * d * c->n_ff);
}

/* Prompt positions per step while sequences decode. With a vision tower,
 * as many as cost one ViT layer (STEP_LAYERS_BUSY), so that a stream's
 * step takes about as long whether another request is being encoded or
 * prefilled: 84 positions for SmolVLM-256M, 16 (one block, the floor) for
 * the test models. A text-only model has no such unit: a quarter of the
 * step budget (64 of the default 256). */
static int prompt_busy_of(const glimpse_model *m, int step_tokens)
{
    double n = m->vision ? ceil(vit_layer_macs(vision_get_hparams(m->vision)) / text_pos_macs(&m->text.cfg))
                         : step_tokens / 4;
    if (n < SCHED_KV_BLOCK)
        n = SCHED_KV_BLOCK;
    return n < step_tokens ? (int)n : step_tokens;
}

int scheduler_create(glimpse_model *m, const sched_params *p, scheduler **out, glimpse_err *err)
{
    *out = NULL;
    scheduler *s = calloc(1, sizeof *s);
    if (!s)
        return err_set(err, GLIMPSE_ENOMEM, "scheduler: out of memory");
    s->m = m;
    s->p = *p;
    s->ic.cap = p->image_cache_bytes;
    s->prompt_busy = prompt_busy_of(m, p->step_tokens);
    hist_init(&s->st.batch_size, size_bounds);
    hist_init(&s->st.ttft_s, time_bounds);
    hist_init(&s->st.itl_s, time_bounds);
    hist_init(&s->st.queue_s, time_bounds);
    s->batch = malloc((size_t)p->step_tokens * sizeof *s->batch);
    s->jobs = malloc((size_t)p->n_parallel * sizeof *s->jobs);
    if (!s->batch || !s->jobs) {
        free(s->batch);
        free(s->jobs);
        free(s);
        return err_set(err, GLIMPSE_ENOMEM, "scheduler: out of memory");
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->wake, NULL);
    pthread_cond_init(&s->done, NULL);
    if (pthread_create(&s->thread, NULL, engine_main, s) != 0) {
        scheduler_free(s);
        return err_set(err, GLIMPSE_ENOMEM, "scheduler: cannot start the engine thread");
    }
    s->thread_ok = true;
    LOG_INFO("scheduler: %d sequences, queue %d, %d positions a step, %d prompt positions a step while "
             "sequences decode",
             p->n_parallel, p->max_queue, p->step_tokens, s->prompt_busy);
    *out = s;
    return 0;
}

void scheduler_free(scheduler *s)
{
    if (!s)
        return;
    if (s->thread_ok) {
        pthread_mutex_lock(&s->lock);
        s->stop = true;
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->thread, NULL);
    }
    while (s->ic.head)
        ic_drop(&s->ic, s->ic.head);
    pthread_cond_destroy(&s->done);
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->lock);
    free(s->batch);
    free(s->jobs);
    free(s);
}

/* ---- public API ---------------------------------------------------------------- */

int glimpse_submit(glimpse_model *m, const glimpse_request *req, glimpse_job **out, glimpse_err *err)
{
    *out = NULL;
    if (!m || !req)
        return err_set(err, GLIMPSE_EINVAL, "generate: model and request are required");
    scheduler *s = m->sched;
    glimpse_job *j = calloc(1, sizeof *j);
    if (!j)
        return err_set(err, GLIMPSE_ENOMEM, "generate: out of memory");
    j->m = m;
    int rc = job_prepare(j, req, err);
    /* A prompt that cannot be held by the whole pool would wait forever. */
    if (rc == 0 && (j->n_prompt + 1 + SCHED_KV_BLOCK - 1) / SCHED_KV_BLOCK > kv_cache_params(m->kv)->n_blocks)
        rc = err_set(err, GLIMPSE_ELIMIT, "generate: the prompt of %d positions does not fit the KV cache",
                     j->n_prompt);
    if (rc < 0) {
        job_release(j);
        free(j);
        return rc;
    }
    pthread_mutex_lock(&s->lock);
    if (s->draining || s->stop)
        rc = err_set(err, GLIMPSE_ESHUTDOWN, "generate: the model is shutting down");
    else if (s->waiting.n >= s->p.max_queue)
        rc = err_set(err, GLIMPSE_EBUSY, "generate: %d requests are waiting already; retry later",
                     s->waiting.n);
    if (rc == 0) {
        j->t_submit = time_ms();
        j->state = JOB_WAITING;
        list_push_tail(&s->waiting, j);
        pthread_cond_signal(&s->wake);
    }
    pthread_mutex_unlock(&s->lock);
    if (rc < 0) {
        job_release(j);
        free(j);
        return rc;
    }
    *out = j;
    return 0;
}

int glimpse_job_wait(glimpse_job *j, glimpse_result *res, glimpse_err *err)
{
    scheduler *s = j->m->sched;
    pthread_mutex_lock(&s->lock);
    while (j->state != JOB_DONE)
        pthread_cond_wait(&s->done, &s->lock);
    pthread_mutex_unlock(&s->lock);
    if (res && (j->rc == 0 || j->rc == GLIMPSE_ECANCELED))
        *res = j->res;
    if (j->rc < 0 && err)
        *err = j->err;
    return j->rc;
}

void glimpse_job_cancel(glimpse_job *j)
{
    if (!j)
        return;
    scheduler *s = j->m->sched;
    pthread_mutex_lock(&s->lock);
    if (j->state != JOB_DONE) {
        j->cancel = true;
        pthread_cond_signal(&s->wake);
    }
    pthread_mutex_unlock(&s->lock);
}

int glimpse_job_waiting(glimpse_job *j)
{
    scheduler *s = j->m->sched;
    pthread_mutex_lock(&s->lock);
    int waiting = j->state == JOB_WAITING;
    pthread_mutex_unlock(&s->lock);
    return waiting;
}

void glimpse_job_free(glimpse_job *j)
{
    if (!j)
        return;
    glimpse_job_cancel(j);
    glimpse_job_wait(j, NULL, NULL);
    job_release(j);
    free(j);
}

void glimpse_shutdown(glimpse_model *m)
{
    scheduler *s = m->sched;
    pthread_mutex_lock(&s->lock);
    s->draining = true;
    pthread_mutex_unlock(&s->lock);
}

void glimpse_stats_get(const glimpse_model *m, glimpse_stats *out)
{
    scheduler *s = m->sched;
    kv_stats ks;
    pthread_mutex_lock(&s->lock);
    *out = s->st;
    out->running = s->running.n;
    out->waiting = s->waiting.n;
    out->n_parallel = s->p.n_parallel;
    out->max_queue = s->p.max_queue;
    out->image_queries = s->ic.queries;
    out->image_hits = s->ic.hits;
    kv_cache_stats(m->kv, &ks);
    pthread_mutex_unlock(&s->lock);
    out->kv_blocks = ks.n_blocks;
    out->kv_block_size = SCHED_KV_BLOCK;
    out->kv_cached_blocks = ks.n_cached;
    out->kv_usage = ks.n_blocks ? (double)ks.n_used / ks.n_blocks : 0.0;
    out->prefix_queries = ks.queries;
    out->prefix_hits = ks.hits;
}
