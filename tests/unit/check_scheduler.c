/*
 * check_scheduler.c — continuous batching seen from the public API.
 *
 * The central property is batch invariance: a request gives the same tokens
 * and the same logprobs, bit for bit, whether it runs alone on a fresh model
 * or among 15 others (identical or different, prefilling while others
 * decode, hitting the prefix cache, preempted when the KV pool runs out).
 * Comparing logprobs exactly makes any numeric dependence on the batch show
 * even where it would not flip a token. The expected side is always the same
 * request run alone on its own freshly loaded model.
 *
 * Also: prefix-cache and image-cache hits, admission control (queue full,
 * shutdown, prompts that can never fit), cancellation giving back KV blocks
 * (while waiting, encoding an image or decoding), and fairness: a long
 * prompt or a picture being encoded leaves running streams a token in every
 * step.
 */
#include "glimpse.h"
#include "kvcache.h"
#include "media.h"
#include "model.h"
#include "vision.h"

#include "testutil.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

#define MAX_TOK 96
#define N_CONC 16

/* What one request produced. */
typedef struct trace {
    int32_t ids[MAX_TOK];
    float logprobs[MAX_TOK];
    int n;
    char text[4096];
    size_t text_len;
    int cancel_after; /* > 0: the callback cancels after this many tokens */
    int done_calls;   /* on_done's calls, the last one's status, error code and tokens */
    int done_rc, done_code, done_tokens;
} trace;

static int on_token(const glimpse_token *t, void *user)
{
    trace *tr = user;
    if (t->id != GLIMPSE_TOKEN_NONE && tr->n < MAX_TOK) {
        tr->ids[tr->n] = t->id;
        tr->logprobs[tr->n] = t->logprob;
        tr->n++;
    }
    if (tr->text_len + t->text_len < sizeof tr->text) {
        memcpy(tr->text + tr->text_len, t->text, t->text_len);
        tr->text_len += t->text_len;
    }
    return tr->cancel_after > 0 && tr->n >= tr->cancel_after;
}

static void on_done(int rc, const glimpse_result *res, const glimpse_err *err, void *user)
{
    trace *tr = user;
    tr->done_calls++;
    tr->done_rc = rc;
    tr->done_code = rc < 0 ? err->code : 0;
    tr->done_tokens = rc == 0 || rc == GLIMPSE_ECANCELED ? res->completion_tokens : -1;
}

static glimpse_model *load(int n_parallel, int n_batch, int n_ctx, int kv_mb)
{
    glimpse_model_params p;
    glimpse_model_params_default(&p);
    p.model_path = fixture_path("tiny-f16.gguf");
    p.n_threads = 2;
    p.n_parallel = n_parallel;
    p.n_batch = n_batch;
    p.n_ctx = n_ctx;
    p.kv_cache_mb = kv_mb;
    glimpse_model *m;
    glimpse_err err = { 0 };
    ck_assert_msg(glimpse_model_load(&p, &m, &err) == 0, "%s (run `make check` to build fixtures)", err.msg);
    return m;
}

/* Request variants: prompts of different lengths (several prefill chunks at
 * n_batch 32), greedy and sampled. */
static const char *const prompts[] = {
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog again and "
    "again, while the dog sleeps in the warm afternoon sun by the river bank.",
    "Once upon a time",
    "A list of colours: red, green, blue, yellow, orange, purple, pink, brown, black, white, grey, cyan, "
    "magenta, violet, indigo, turquoise, beige, maroon, navy, olive, teal, coral, salmon, gold, silver.",
    "Hello, how are you today? I am fine.",
};
#define N_VARIANTS 4

static void variant(int v, glimpse_request *r, trace *tr)
{
    glimpse_request_default(r);
    r->prompt = prompts[v];
    r->max_tokens = 24 + 8 * v;
    r->sampling.temperature = v % 2 ? 0.9f : 0.0f;
    r->sampling.top_k = v % 2 ? 40 : 0;
    r->sampling.seed = 1234 + (uint64_t)v;
    r->on_token = on_token;
    r->user = tr;
}

static void run_alone(glimpse_model *m, int v, trace *tr, glimpse_result *res)
{
    glimpse_request r;
    glimpse_err err = { 0 };
    memset(tr, 0, sizeof *tr);
    variant(v, &r, tr);
    ck_assert_msg(glimpse_generate(m, &r, res, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(res->completion_tokens, tr->n);
}

static void assert_same(const trace *want, const trace *got, const char *what, int i)
{
    ck_assert_msg(got->n == want->n, "%s %d: %d tokens, alone %d", what, i, got->n, want->n);
    for (int t = 0; t < want->n; t++) {
        ck_assert_msg(got->ids[t] == want->ids[t], "%s %d: token %d is %d, alone %d", what, i, t, got->ids[t],
                      want->ids[t]);
        ck_assert_msg(memcmp(&got->logprobs[t], &want->logprobs[t], sizeof(float)) == 0,
                      "%s %d: logprob of token %d is %.9g, alone %.9g (not bit-identical)", what, i, t,
                      (double)got->logprobs[t], (double)want->logprobs[t]);
    }
    ck_assert(got->text_len == want->text_len && memcmp(got->text, want->text, want->text_len) == 0);
}

/* Submits n requests at once (variant vs[i]) and waits for all. */
static void run_together(glimpse_model *m, const int *vs, int n, trace *tr)
{
    glimpse_job *jobs[N_CONC];
    glimpse_err err = { 0 };
    for (int i = 0; i < n; i++) {
        glimpse_request r;
        memset(&tr[i], 0, sizeof tr[i]);
        variant(vs[i], &r, &tr[i]);
        ck_assert_msg(glimpse_submit(m, &r, &jobs[i], &err) == 0, "%s", err.msg);
    }
    for (int i = 0; i < n; i++) {
        glimpse_result res;
        ck_assert_msg(glimpse_job_wait(jobs[i], &res, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(res.completion_tokens, tr[i].n);
        glimpse_job_free(jobs[i]);
    }
}

static trace alone[N_VARIANTS];

/* The references: every variant alone, each on a fresh model. */
static void make_alone(void)
{
    for (int v = 0; v < N_VARIANTS; v++) {
        glimpse_model *m = load(1, 32, 512, 0);
        glimpse_result res;
        run_alone(m, v, &alone[v], &res);
        ck_assert_int_ge(alone[v].n, 8);
        glimpse_model_free(m);
    }
}

START_TEST(sixteen_identical_equal_alone)
{
    make_alone();
    static trace tr[N_CONC];
    int vs[N_CONC];
    for (int v = 0; v < 2; v++) { /* greedy, then sampled with one seed */
        for (int i = 0; i < N_CONC; i++)
            vs[i] = v;
        glimpse_model *m = load(N_CONC, 32, 512, 0);
        run_together(m, vs, N_CONC, tr);
        for (int i = 0; i < N_CONC; i++)
            assert_same(&alone[v], &tr[i], v ? "sampled copy" : "greedy copy", i);
        /* again on the same model: now from the prefix cache */
        run_together(m, vs, N_CONC, tr);
        for (int i = 0; i < N_CONC; i++)
            assert_same(&alone[v], &tr[i], "cached copy", i);
        glimpse_stats st;
        glimpse_stats_get(m, &st);
        if (v == 0) /* the longer prompt: several full blocks */
            ck_assert_uint_gt(st.prefix_hits, 0);
        ck_assert_uint_gt(st.batch_size.count[4] + st.batch_size.count[5], 0); /* 9..32 entries per step */
        glimpse_model_free(m);
    }
}
END_TEST

START_TEST(mixed_batch_equals_alone)
{
    make_alone();
    static trace tr[N_CONC];
    int vs[N_CONC];
    for (int i = 0; i < N_CONC; i++)
        vs[i] = (i * 3 + 1) % N_VARIANTS;
    glimpse_model *m = load(8, 32, 512, 0); /* 8 run, 8 wait for a slot */
    run_together(m, vs, N_CONC, tr);
    for (int i = 0; i < N_CONC; i++)
        assert_same(&alone[vs[i]], &tr[i], "mixed", i);
    glimpse_stats st;
    glimpse_stats_get(m, &st);
    ck_assert_int_eq(st.running, 0);
    ck_assert_int_eq(st.waiting, 0);
    ck_assert(st.kv_usage == 0.0);
    ck_assert_uint_eq(st.requests_done, N_CONC);
    ck_assert_uint_eq(st.ttft_s.n, N_CONC);
    ck_assert_uint_eq(st.queue_s.n, N_CONC);
    glimpse_model_free(m);
}
END_TEST

START_TEST(preemption_keeps_outputs)
{
    make_alone();
    /* A pool of 1 MiB (42 blocks of 16 positions with this model) for 16
     * sequences that each grow to 2..9 blocks: some must be preempted. */
    static trace tr[N_CONC];
    int vs[N_CONC];
    for (int i = 0; i < N_CONC; i++)
        vs[i] = (i + 2) % N_VARIANTS;
    glimpse_model *m = load(N_CONC, 32, 256, 1);
    run_together(m, vs, N_CONC, tr);
    glimpse_stats st;
    glimpse_stats_get(m, &st);
    ck_assert_int_eq(st.kv_blocks, 42);
    ck_assert_uint_gt(st.preemptions, 0);
    for (int i = 0; i < N_CONC; i++)
        assert_same(&alone[vs[i]], &tr[i], "preempted", i);
    ck_assert(st.kv_usage == 0.0);
    glimpse_model_free(m);
}
END_TEST

START_TEST(prefix_cache_skips_prefill)
{
    glimpse_model *m = load(2, 32, 512, 0);
    trace a, b;
    glimpse_result ra, rb;
    glimpse_stats s0, s1, s2;
    glimpse_stats_get(m, &s0);
    run_alone(m, 0, &a, &ra);
    glimpse_stats_get(m, &s1);
    ck_assert_uint_eq(s1.prompt_tokens_computed - s0.prompt_tokens_computed, (uint64_t)ra.prompt_tokens);
    ck_assert_uint_eq(s1.prefix_hits, 0);
    run_alone(m, 0, &b, &rb);
    glimpse_stats_get(m, &s2);
    /* every full block but the one holding the last prompt position */
    uint64_t hit_blocks = (uint64_t)(rb.prompt_tokens - 1) / 16;
    ck_assert_uint_ge(hit_blocks, 2);
    ck_assert_uint_eq(s2.prefix_hits - s1.prefix_hits, hit_blocks);
    ck_assert_uint_eq(s2.prompt_tokens_computed - s1.prompt_tokens_computed,
                      (uint64_t)rb.prompt_tokens - hit_blocks * 16);
    assert_same(&a, &b, "from cache", 0);
    glimpse_model_free(m);
}
END_TEST

/* ---- admission control ------------------------------------------------------- */

/* Stream A holds the engine in its n-th token's callback until a_release
 * >= n, so that the test thread acts between two known steps; B's callback
 * notes how many tokens A had when B got its first, and keeps a trace when
 * given one. */
static atomic_int a_tokens, a_release, a_tokens_at_b_first, b_tokens;

static int stream_a(const glimpse_token *t, void *user)
{
    (void)user;
    if (t->id == GLIMPSE_TOKEN_NONE)
        return 0;
    int n = atomic_fetch_add(&a_tokens, 1) + 1;
    while (atomic_load(&a_release) < n)
        usleep(1000);
    return 0;
}

static int stream_b(const glimpse_token *t, void *user)
{
    if (t->id != GLIMPSE_TOKEN_NONE && atomic_fetch_add(&b_tokens, 1) == 0)
        atomic_store(&a_tokens_at_b_first, atomic_load(&a_tokens));
    return user ? on_token(t, user) : 0;
}

/* Submits stream A (greedy, max_tokens long) and waits until the engine
 * holds in its first token. */
static glimpse_job *start_a(glimpse_model *m, int max_tokens)
{
    atomic_store(&a_tokens, 0);
    atomic_store(&a_release, 0);
    atomic_store(&b_tokens, 0);
    glimpse_request ra;
    glimpse_request_default(&ra);
    ra.prompt = prompts[1];
    ra.max_tokens = max_tokens;
    ra.sampling.temperature = 0;
    ra.on_token = stream_a;
    glimpse_job *ja;
    glimpse_err err = { 0 };
    ck_assert_msg(glimpse_submit(m, &ra, &ja, &err) == 0, "%s", err.msg);
    while (atomic_load(&a_tokens) < 1)
        usleep(1000);
    return ja;
}


START_TEST(queue_full_shutdown_and_context)
{
    glimpse_model_params p;
    glimpse_model_params_default(&p);
    p.model_path = fixture_path("tiny-f16.gguf");
    p.n_threads = 1;
    p.n_parallel = 1;
    p.max_queue = 2;
    p.n_ctx = 64;
    glimpse_model *m;
    glimpse_err err = { 0 };
    ck_assert_msg(glimpse_model_load(&p, &m, &err) == 0, "%s", err.msg);

    glimpse_request r;
    glimpse_request_default(&r);
    r.prompt = prompts[1];
    r.max_tokens = 4;
    r.sampling.temperature = 0;
    glimpse_job *first = start_a(m, 4), *q1, *q2, *extra;
    /* the engine is inside first's callback: the next two wait, the third is refused */
    ck_assert_int_eq(glimpse_submit(m, &r, &q1, &err), 0);
    ck_assert_int_eq(glimpse_submit(m, &r, &q2, &err), 0);
    ck_assert_int_eq(glimpse_submit(m, &r, &extra, &err), GLIMPSE_EBUSY);
    ck_assert(extra == NULL);
    ck_assert(!glimpse_job_waiting(first) && glimpse_job_waiting(q1) && glimpse_job_waiting(q2));
    glimpse_stats st;
    glimpse_stats_get(m, &st);
    ck_assert_int_eq(st.running, 1);
    ck_assert_int_eq(st.waiting, 2);

    /* a prompt longer than the context can never run */
    static char long_prompt[2000];
    for (size_t i = 0; i + 1 < sizeof long_prompt; i++)
        long_prompt[i] = i % 5 == 4 ? ' ' : 'a' + (char)(i % 7);
    r.prompt = long_prompt;
    ck_assert_int_eq(glimpse_submit(m, &r, &extra, &err), GLIMPSE_ELIMIT);
    r.prompt = prompts[1];

    /* cancelling a waiting job: it ends without running */
    glimpse_job_cancel(q2);

    /* shutting down: new requests are refused, admitted and queued ones drain */
    glimpse_shutdown(m);
    ck_assert_int_eq(glimpse_submit(m, &r, &extra, &err), GLIMPSE_ESHUTDOWN);
    atomic_store(&a_release, INT_MAX);
    glimpse_result res;
    ck_assert_int_eq(glimpse_job_wait(first, &res, &err), 0);
    ck_assert_int_eq(res.completion_tokens, 4);
    ck_assert_int_eq(glimpse_job_wait(q1, &res, &err), 0);
    ck_assert_int_eq(res.completion_tokens, 4);
    ck_assert_int_eq(glimpse_job_wait(q2, &res, &err), GLIMPSE_ECANCELED);
    ck_assert_int_eq(res.completion_tokens, 0);
    glimpse_job_free(first);
    glimpse_job_free(q1);
    glimpse_job_free(q2);
    glimpse_stats_get(m, &st);
    ck_assert_uint_eq(st.requests_done, 2);
    ck_assert_uint_eq(st.requests_cancelled, 1);
    ck_assert(st.kv_usage == 0.0);
    glimpse_model_free(m);
}
END_TEST

START_TEST(cancel_returns_blocks)
{
    glimpse_model *m = load(4, 32, 512, 0);
    trace tr[4];
    glimpse_job *jobs[4];
    glimpse_err err = { 0 };
    for (int i = 0; i < 4; i++) {
        glimpse_request r;
        memset(&tr[i], 0, sizeof tr[i]);
        variant(i, &r, &tr[i]);
        tr[i].cancel_after = i % 2 ? 3 : 0; /* two cancel from their callback */
        r.on_done = on_done;
        ck_assert_int_eq(glimpse_submit(m, &r, &jobs[i], &err), 0);
    }
    glimpse_job_free(jobs[2]); /* one is dropped by its owner at any step */
    ck_assert_int_eq(tr[2].done_calls, 1); /* its end was reported before the free returned */
    ck_assert(tr[2].done_rc == 0 || tr[2].done_rc == GLIMPSE_ECANCELED);
    for (int i = 0; i < 4; i++) {
        if (i == 2)
            continue;
        glimpse_result res;
        int rc = glimpse_job_wait(jobs[i], &res, &err);
        ck_assert_int_eq(rc, i % 2 ? GLIMPSE_ECANCELED : 0);
        if (i % 2)
            ck_assert_int_eq(res.completion_tokens, 3);
        /* on_done ran once, before the wait returned, with what the wait returns */
        ck_assert_int_eq(tr[i].done_calls, 1);
        ck_assert_int_eq(tr[i].done_rc, rc);
        ck_assert_int_eq(tr[i].done_code, rc);
        ck_assert_int_eq(tr[i].done_tokens, res.completion_tokens);
        glimpse_job_free(jobs[i]);
    }
    glimpse_stats st;
    glimpse_stats_get(m, &st);
    ck_assert_int_eq(st.running + st.waiting, 0);
    ck_assert(st.kv_usage == 0.0);
    ck_assert_uint_eq(st.requests_cancelled + st.requests_done, 4);
    ck_assert_uint_ge(st.requests_cancelled, 2);
    glimpse_model_free(m);
}
END_TEST

/* ---- fairness ---------------------------------------------------------------- */

START_TEST(long_prompt_does_not_starve_streams)
{
    /* A streams; then B arrives with a prompt of many step budgets. A must
     * get a token in every step of B's prefill, which takes at most the
     * step's budget beside A's token (n_batch 32: 31 positions), and at most
     * 64 positions while anything decodes (n_batch 256: a text-only model's
     * cap is a quarter of the budget, prompt_busy_of), so that a stream
     * waits for a bounded step. */
    static const int n_batch[2] = { 32, 256 }, per_step[2] = { 31, 64 };
    static char long_prompt[4096];
    long_prompt[0] = '\0';
    for (int i = 0; i < 8; i++)
        strcat(long_prompt, prompts[2]);
    for (int c = 0; c < 2; c++) {
        glimpse_model *m = load(2, n_batch[c], 1024, 0);
        glimpse_err err = { 0 };
        glimpse_job *ja = start_a(m, 80), *jb;
        glimpse_request rb;
        glimpse_request_default(&rb);
        rb.prompt = long_prompt;
        rb.max_tokens = 2;
        rb.sampling.temperature = 0;
        rb.on_token = stream_b;
        ck_assert_int_eq(glimpse_submit(m, &rb, &jb, &err), 0);
        atomic_store(&a_release, INT_MAX); /* B is queued before A's second step */
        glimpse_result res_a, res_b;
        ck_assert_int_eq(glimpse_job_wait(jb, &res_b, &err), 0);
        ck_assert_int_eq(glimpse_job_wait(ja, &res_a, &err), 0);
        int steps_b = (res_b.prompt_tokens + per_step[c] - 1) / per_step[c];
        ck_assert_int_ge(steps_b, 4);
        ck_assert_msg(atomic_load(&a_tokens_at_b_first) - 1 >= steps_b,
                      "n_batch %d: A got %d tokens during B's prefill of %d positions (>= %d steps)", n_batch[c],
                      atomic_load(&a_tokens_at_b_first) - 1, res_b.prompt_tokens, steps_b);
        glimpse_job_free(ja);
        glimpse_job_free(jb);
        glimpse_model_free(m);
    }
}
END_TEST

/* ---- images ------------------------------------------------------------------ */

/* The VLM with n_ctx positions per request and a KV pool of kv_mb MiB (0:
 * the defaults). */
static glimpse_model *load_vlm_pool(int n_parallel, int n_ctx, int kv_mb)
{
    glimpse_model_params p;
    glimpse_model_params_default(&p);
    char model_path[4096], mmproj_path[4096]; /* fixture_path's buffer is static */
    snprintf(model_path, sizeof model_path, "%s", fixture_path("vlm.gguf"));
    snprintf(mmproj_path, sizeof mmproj_path, "%s", fixture_path("vlm-mmproj.gguf"));
    p.model_path = model_path;
    p.mmproj_path = mmproj_path;
    p.n_threads = 2;
    p.n_parallel = n_parallel;
    p.n_batch = 32;
    p.n_ctx = n_ctx;
    p.kv_cache_mb = kv_mb;
    glimpse_model *m;
    glimpse_err err = { 0 };
    ck_assert_msg(glimpse_model_load(&p, &m, &err) == 0, "%s", err.msg);
    return m;
}

static glimpse_model *load_vlm(int n_parallel) { return load_vlm_pool(n_parallel, 0, 0); }

static glimpse_image *test_image(const glimpse_model *m)
{
    size_t len;
    void *png = read_file(source_path("../shared/testdata/images/jpeg-turbo/vgl_5674_0098.png"), &len);
    ck_assert(png != NULL);
    glimpse_image *img;
    glimpse_err err = { 0 };
    ck_assert_msg(glimpse_image_decode(m, png, len, NULL, &img, &err) == 0, "%s", err.msg);
    free(png);
    return img;
}

/* A greedy question about *img (which must stay in place) into tr. */
typedef struct image_req {
    glimpse_part parts[2];
    glimpse_message msg;
    const glimpse_image *img;
    glimpse_request r;
} image_req;

static void image_request(image_req *q, const glimpse_image *img, glimpse_token_fn fn, trace *tr)
{
    q->parts[0] = (glimpse_part){ GLIMPSE_PART_IMAGE, NULL, 0 };
    q->parts[1] = (glimpse_part){ GLIMPSE_PART_TEXT, "What is in this picture?", 0 };
    q->msg = (glimpse_message){ "user", q->parts, 2 };
    q->img = img;
    glimpse_request_default(&q->r);
    q->r.messages = &q->msg;
    q->r.n_messages = 1;
    q->r.images = &q->img;
    q->r.n_images = 1;
    q->r.max_tokens = 16;
    q->r.sampling.temperature = 0;
    q->r.on_token = fn;
    q->r.user = tr;
    if (tr)
        memset(tr, 0, sizeof *tr);
}

/* The image question alone on a freshly loaded model (whole tiles a step). */
static void image_alone(trace *want, glimpse_result *res)
{
    glimpse_model *fresh = load_vlm(1);
    glimpse_image *img = test_image(fresh);
    image_req q;
    image_request(&q, img, on_token, want);
    glimpse_err err = { 0 };
    ck_assert_msg(glimpse_generate(fresh, &q.r, res, &err) == 0, "%s", err.msg);
    ck_assert_int_gt(res->image_tokens, 0);
    glimpse_image_free(img);
    glimpse_model_free(fresh);
}

START_TEST(image_cache_and_invariance)
{
    trace want, got[4];
    glimpse_result res;
    glimpse_err err = { 0 };
    image_alone(&want, &res);

    /* four at once: encoded once or more, then cached */
    glimpse_model *m = load_vlm(4);
    glimpse_image *img = test_image(m);
    image_req q[4];
    glimpse_job *jobs[4];
    for (int i = 0; i < 4; i++) {
        image_request(&q[i], img, on_token, &got[i]);
        ck_assert_int_eq(glimpse_submit(m, &q[i].r, &jobs[i], &err), 0);
    }
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(glimpse_job_wait(jobs[i], &res, &err), 0);
        glimpse_job_free(jobs[i]);
        assert_same(&want, &got[i], "image copy", i);
    }
    glimpse_stats s1, s2;
    glimpse_stats_get(m, &s1);
    ck_assert_uint_eq(s1.image_queries, 4); /* encoded once, by whoever came first */
    ck_assert_uint_eq(s1.image_hits, 3);
    /* once more: the image embeddings and the prompt's prefix are cached */
    image_request(&q[0], img, on_token, &got[0]);
    ck_assert_int_eq(glimpse_generate(m, &q[0].r, &res, &err), 0);
    assert_same(&want, &got[0], "image from cache", 0);
    glimpse_stats_get(m, &s2);
    ck_assert_uint_gt(s2.prefix_hits, s1.prefix_hits);
    ck_assert(res.image_encode_ms == 0.0);
    glimpse_image_free(img);
    glimpse_model_free(m);
}
END_TEST

START_TEST(image_in_layers_beside_a_stream)
{
    /* A streams; B's picture arrives. While A decodes, B's tiles are encoded
     * one ViT layer per step: A gets a token for every layer of every tile
     * (and for every prefill chunk of B), and B's answer is bit for bit the
     * one of B alone, encoded a whole tile at a time. */
    trace want, got;
    glimpse_result res_a, res_b;
    glimpse_err err = { 0 };
    image_alone(&want, &res_b);

    glimpse_model *m = load_vlm(2);
    glimpse_image *img = test_image(m);
    const int n_tiles = img->tiles.n_tiles, n_layer = vision_get_hparams(m->vision)->n_layer_run;
    ck_assert_int_ge(n_layer, 2); /* else a layer is a tile */
    glimpse_job *ja = start_a(m, 200), *jb;
    image_req q;
    image_request(&q, img, stream_b, &got);
    ck_assert_int_eq(glimpse_submit(m, &q.r, &jb, &err), 0);
    atomic_store(&a_release, INT_MAX);
    ck_assert_int_eq(glimpse_job_wait(jb, &res_b, &err), 0);
    ck_assert_int_eq(glimpse_job_wait(ja, &res_a, &err), 0);
    assert_same(&want, &got, "image encoded in layers", 0);
    /* steps from B's admission to its first token: one per layer (the last
     * one also runs B's first prompt chunk), then the other chunks of at
     * most 16 positions beside A's token (a layer of this tiny ViT costs
     * less than one prompt position, so the busy prompt cap is its floor,
     * one KV block, not the step's 31) */
    int chunks = (res_b.prompt_tokens + 15) / 16;
    int steps = n_tiles * n_layer + chunks - 1;
    ck_assert_msg(atomic_load(&a_tokens_at_b_first) - 1 >= steps,
                  "A got %d tokens while B's %d tiles of %d layers were encoded and its %d positions prefilled "
                  "(>= %d steps)",
                  atomic_load(&a_tokens_at_b_first) - 1, n_tiles, n_layer, res_b.prompt_tokens, steps);
    glimpse_job_free(ja);
    glimpse_job_free(jb);
    glimpse_image_free(img);
    glimpse_model_free(m);
}
END_TEST

START_TEST(cancel_while_encoding)
{
    /* B is cancelled between two layers of its first tile: its sequence slot
     * returns at the next step, while A still runs; the half-encoded tile is
     * dropped, and the same picture later encodes correctly. */
    trace want, got;
    glimpse_result res;
    glimpse_err err = { 0 };
    image_alone(&want, &res);

    glimpse_model *m = load_vlm(2);
    glimpse_image *img = test_image(m);
    glimpse_stats s0, s1, s2;
    glimpse_job *ja = start_a(m, 40), *jb;
    glimpse_stats_get(m, &s0); /* A alone, held in its first token */
    image_req q;
    image_request(&q, img, on_token, &got);
    ck_assert_int_eq(glimpse_submit(m, &q.r, &jb, &err), 0);
    atomic_store(&a_release, 1);
    while (atomic_load(&a_tokens) < 2) /* the step that admitted B and ran its first layer */
        usleep(1000);
    glimpse_stats_get(m, &s1);
    ck_assert_int_eq(s1.running, 2); /* B holds a sequence slot and its prompt's blocks */
    ck_assert(s1.kv_usage > s0.kv_usage);
    glimpse_job_cancel(jb);
    atomic_store(&a_release, 2); /* the next step drops B; A then holds in its third token */
    ck_assert_int_eq(glimpse_job_wait(jb, &res, &err), GLIMPSE_ECANCELED);
    ck_assert_int_eq(got.n, 0);
    glimpse_stats_get(m, &s2);
    ck_assert_int_eq(s2.running, 1);
    ck_assert_int_eq(s2.waiting, 0);
    ck_assert_uint_eq(s2.requests_cancelled, 1);
    ck_assert(s2.kv_usage == s0.kv_usage); /* A's few positions fit its first block */
    ck_assert_int_le(atomic_load(&a_tokens), 3);
    glimpse_job_free(jb);
    atomic_store(&a_release, INT_MAX);
    ck_assert_int_eq(glimpse_job_wait(ja, &res, &err), 0);
    glimpse_job_free(ja);

    image_request(&q, img, on_token, &got);
    ck_assert_int_eq(glimpse_generate(m, &q.r, &res, &err), 0);
    assert_same(&want, &got, "image after a cancelled encoding", 0);
    glimpse_stats_get(m, &s2);
    ck_assert(s2.kv_usage == 0.0);
    glimpse_image_free(img);
    glimpse_model_free(m);
}
END_TEST

/* Blocks held by sequences, from the usage ratio. */
static int kv_used(const glimpse_model *m)
{
    glimpse_stats st;
    glimpse_stats_get(m, &st);
    return (int)lround(st.kv_usage * st.kv_blocks);
}

START_TEST(admission_holds_prompt_blocks)
{
    /* The pool is left with room for A's block, one image request and one
     * block less than a second. B and C (the same question) arrive while A
     * streams: B is admitted and holds its whole prompt's blocks from its
     * first ViT layer on; C would fit the blocks B has not filled yet, but
     * waits instead of encoding a picture it could not prefill. Cancelling
     * B, half encoded, gives its blocks back and admits C, which answers
     * like the request alone; nobody is preempted. */
    trace want, got_b, got_c;
    glimpse_result res;
    glimpse_err err = { 0 };
    image_alone(&want, &res);
    const int need = (res.prompt_tokens + 1 + 15) / 16; /* the prompt and the first token */

    glimpse_model *m = load_vlm_pool(4, 4096, 1);
    glimpse_stats st;
    glimpse_stats_get(m, &st);
    /* A sequence of the test's own takes the rest of the pool, before the
     * engine has any work (it touches the pool only while it has jobs). */
    int hog_seq, hog = st.kv_blocks - 1 - (2 * need - 1);
    ck_assert_int_gt(hog, 0);
    ck_assert_int_eq(kv_seq_open(m->kv, &hog_seq, &err), 0);
    ck_assert_msg(kv_seq_reserve(m->kv, hog_seq, (int64_t)hog * 16, &err) == 0, "%s", err.msg);

    glimpse_image *img = test_image(m);
    glimpse_job *ja = start_a(m, 8), *jb, *jc;
    ck_assert_int_eq(kv_used(m), hog + 1); /* A's prompt and first tokens fill one block */
    image_req qb, qc;
    image_request(&qb, img, on_token, &got_b);
    image_request(&qc, img, on_token, &got_c);
    ck_assert_int_eq(glimpse_submit(m, &qb.r, &jb, &err), 0);
    ck_assert_int_eq(glimpse_submit(m, &qc.r, &jc, &err), 0);
    atomic_store(&a_release, 1);
    while (atomic_load(&a_tokens) < 2) /* the step that admitted B and ran its first layer */
        usleep(1000);
    glimpse_stats_get(m, &st);
    ck_assert_int_eq(st.running, 2);
    ck_assert_int_eq(st.waiting, 1);
    ck_assert_int_eq(kv_used(m), hog + 1 + need);
    ck_assert(glimpse_job_waiting(jc));

    glimpse_job_cancel(jb);
    atomic_store(&a_release, 2); /* the next step drops B, admits C and runs its first layer */
    while (atomic_load(&a_tokens) < 3)
        usleep(1000);
    ck_assert_int_eq(glimpse_job_wait(jb, &res, &err), GLIMPSE_ECANCELED);
    ck_assert_int_eq(got_b.n, 0);
    glimpse_stats_get(m, &st);
    ck_assert_int_eq(st.running, 2);
    ck_assert_int_eq(st.waiting, 0);
    ck_assert_int_eq(kv_used(m), hog + 1 + need);

    atomic_store(&a_release, INT_MAX);
    ck_assert_int_eq(glimpse_job_wait(jc, &res, &err), 0);
    assert_same(&want, &got_c, "image admitted after a cancelled one", 0);
    ck_assert_int_eq(glimpse_job_wait(ja, &res, &err), 0);
    glimpse_stats_get(m, &st);
    ck_assert_uint_eq(st.preemptions, 0);
    ck_assert_int_eq(kv_used(m), hog); /* everything else went back */
    glimpse_job_free(ja);
    glimpse_job_free(jb);
    glimpse_job_free(jc);
    glimpse_image_free(img);
    glimpse_model_free(m);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("scheduler");
    TCase *tc = tcase_create("batching");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, sixteen_identical_equal_alone);
    tcase_add_test(tc, mixed_batch_equals_alone);
    tcase_add_test(tc, preemption_keeps_outputs);
    tcase_add_test(tc, prefix_cache_skips_prefill);
    tcase_add_test(tc, queue_full_shutdown_and_context);
    tcase_add_test(tc, cancel_returns_blocks);
    tcase_add_test(tc, long_prompt_does_not_starve_streams);
    tcase_add_test(tc, image_cache_and_invariance);
    tcase_add_test(tc, image_in_layers_beside_a_stream);
    tcase_add_test(tc, cancel_while_encoding);
    tcase_add_test(tc, admission_holds_prompt_blocks);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(suite());
}
