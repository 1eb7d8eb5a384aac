/*
 * metrics.c — Prometheus counters and histograms (see metrics.h).
 *
 * Everything sits behind one mutex: updates are a few additions per HTTP
 * request, far below the cost of the request itself.
 */
#include "metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Status codes the server answers with; anything else counts as "other". */
static const int STATUSES[] = { 200, 204, 400, 401, 404, 405, 413, 415, 429, 500, 503 };
#define N_STATUS (sizeof STATUSES / sizeof STATUSES[0] + 1)

static const char *const ROUTE_NAMES[ROUTE_COUNT] = { "/v1/chat/completions", "/v1/models", "/health", "/metrics",
                                                      "other" };

/* Upper bounds in seconds, shared by the latency histograms. */
static const double BUCKETS[] = { 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300 };
#define N_BUCKETS (sizeof BUCKETS / sizeof BUCKETS[0])

typedef struct histogram {
    uint64_t le[N_BUCKETS]; /* cumulative at render time, per bucket here */
    uint64_t count;
    double sum;
} histogram;

struct metrics {
    pthread_mutex_t mu;
    uint64_t requests[ROUTE_COUNT][N_STATUS];
    histogram duration[ROUTE_COUNT];
    histogram ttft;
    uint64_t prompt_tokens, completion_tokens, image_tokens, images, completions;
    int64_t in_flight;
};

const char *metrics_route_name(int route)
{
    return route >= 0 && route < ROUTE_COUNT ? ROUTE_NAMES[route] : "other";
}

int metrics_create(metrics **out)
{
    metrics *m = calloc(1, sizeof *m);
    if (!m)
        return -1;
    pthread_mutex_init(&m->mu, NULL);
    *out = m;
    return 0;
}

void metrics_free(metrics *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static void observe(histogram *h, double v)
{
    for (size_t i = 0; i < N_BUCKETS; i++) {
        if (v <= BUCKETS[i]) {
            h->le[i]++;
            break;
        }
    }
    h->count++;
    h->sum += v;
}

void metrics_request(metrics *m, int route, int status, double seconds)
{
    if (route < 0 || route >= ROUTE_COUNT)
        route = ROUTE_OTHER;
    size_t si = N_STATUS - 1;
    for (size_t i = 0; i < N_STATUS - 1; i++)
        if (STATUSES[i] == status)
            si = i;
    pthread_mutex_lock(&m->mu);
    m->requests[route][si]++;
    observe(&m->duration[route], seconds);
    pthread_mutex_unlock(&m->mu);
}

void metrics_completion(metrics *m, int prompt_tokens, int completion_tokens, int image_tokens, int n_images,
                        double ttft_seconds)
{
    pthread_mutex_lock(&m->mu);
    m->completions++;
    m->prompt_tokens += (uint64_t)(prompt_tokens > 0 ? prompt_tokens : 0);
    m->completion_tokens += (uint64_t)(completion_tokens > 0 ? completion_tokens : 0);
    m->image_tokens += (uint64_t)(image_tokens > 0 ? image_tokens : 0);
    m->images += (uint64_t)(n_images > 0 ? n_images : 0);
    if (ttft_seconds >= 0)
        observe(&m->ttft, ttft_seconds);
    pthread_mutex_unlock(&m->mu);
}

void metrics_in_flight(metrics *m, int delta)
{
    pthread_mutex_lock(&m->mu);
    m->in_flight += delta;
    pthread_mutex_unlock(&m->mu);
}

/* A growable text buffer; on OOM it stays failed and render returns NULL. */
typedef struct text {
    char *p;
    size_t len, cap;
    int oom;
} text;

static void put(text *t, const char *fmt, ...)
{
    if (t->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->p ? t->p + t->len : NULL, t->p ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->oom = 1;
            return;
        }
        if (t->p && (size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap * 2 : 4096;
        while (cap < t->len + (size_t)n + 1)
            cap *= 2;
        char *p = realloc(t->p, cap);
        if (!p) {
            t->oom = 1;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
}

static void put_histogram(text *t, const char *name, const char *labels, const histogram *h)
{
    uint64_t cum = 0;
    const char *sep = labels[0] ? "," : "";
    for (size_t i = 0; i < N_BUCKETS; i++) {
        cum += h->le[i];
        put(t, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, BUCKETS[i], (unsigned long long)cum);
    }
    put(t, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)h->count);
    if (labels[0]) {
        put(t, "%s_sum{%s} %.6f\n", name, labels, h->sum);
        put(t, "%s_count{%s} %llu\n", name, labels, (unsigned long long)h->count);
    } else {
        put(t, "%s_sum %.6f\n", name, h->sum);
        put(t, "%s_count %llu\n", name, (unsigned long long)h->count);
    }
}

/* A histogram of the engine's (per-bucket counts, own bounds) as Prometheus
 * cumulative buckets. */
static void put_engine_histogram(text *t, const char *name, const char *help, const glimpse_hist *h)
{
    put(t, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < GLIMPSE_HIST_N - 1; i++) {
        cum += h->count[i];
        put(t, "%s_bucket{le=\"%g\"} %llu\n", name, h->le[i], (unsigned long long)cum);
    }
    put(t, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name, (unsigned long long)h->n, name,
        h->sum, name, (unsigned long long)h->n);
}

/* The scheduler's gauges, counters and histograms (engine/glimpse.h glimpse_stats). */
static void put_engine(text *t, const glimpse_stats *es)
{
    put(t,
        "# HELP glimpse_queue_depth Sequences (one per choice of a request) waiting for admission (KV blocks or a "
        "sequence slot).\n"
        "# TYPE glimpse_queue_depth gauge\nglimpse_queue_depth %d\n"
        "# HELP glimpse_queue_capacity Sequences the queue holds before answering 429.\n"
        "# TYPE glimpse_queue_capacity gauge\nglimpse_queue_capacity %d\n"
        "# HELP glimpse_running Sequences admitted by the scheduler (encoding images, prefill or decode).\n"
        "# TYPE glimpse_running gauge\nglimpse_running %d\n"
        "# HELP glimpse_jobs_cancelled_total Sequences ended early: their client left or the server stopped.\n"
        "# TYPE glimpse_jobs_cancelled_total counter\nglimpse_jobs_cancelled_total %llu\n"
        "# HELP glimpse_jobs_completed_total Sequences the engine ran to their end (successfully or not).\n"
        "# TYPE glimpse_jobs_completed_total counter\nglimpse_jobs_completed_total %llu\n"
        "# HELP glimpse_kv_cache_usage_ratio KV cache blocks held by sequences over the pool's blocks.\n"
        "# TYPE glimpse_kv_cache_usage_ratio gauge\nglimpse_kv_cache_usage_ratio %.6f\n"
        "# HELP glimpse_kv_cache_blocks Blocks in the KV pool.\n"
        "# TYPE glimpse_kv_cache_blocks gauge\nglimpse_kv_cache_blocks %d\n"
        "# HELP glimpse_kv_cache_cached_blocks Blocks registered in the prefix cache.\n"
        "# TYPE glimpse_kv_cache_cached_blocks gauge\nglimpse_kv_cache_cached_blocks %d\n"
        "# HELP glimpse_prefix_cache_queries_total Full prompt blocks looked up in the prefix cache.\n"
        "# TYPE glimpse_prefix_cache_queries_total counter\nglimpse_prefix_cache_queries_total %llu\n"
        "# HELP glimpse_prefix_cache_hits_total Prompt blocks found in the prefix cache (not recomputed).\n"
        "# TYPE glimpse_prefix_cache_hits_total counter\nglimpse_prefix_cache_hits_total %llu\n"
        "# HELP glimpse_image_cache_queries_total Images looked up in the image-embedding cache.\n"
        "# TYPE glimpse_image_cache_queries_total counter\nglimpse_image_cache_queries_total %llu\n"
        "# HELP glimpse_image_cache_hits_total Images found in the image-embedding cache (not encoded).\n"
        "# TYPE glimpse_image_cache_hits_total counter\nglimpse_image_cache_hits_total %llu\n"
        "# HELP glimpse_preemptions_total Sequences sent back to the queue because the KV cache ran out.\n"
        "# TYPE glimpse_preemptions_total counter\nglimpse_preemptions_total %llu\n"
        "# HELP glimpse_engine_steps_total Forward passes of the engine.\n"
        "# TYPE glimpse_engine_steps_total counter\nglimpse_engine_steps_total %llu\n"
        "# HELP glimpse_prompt_tokens_computed_total Prompt positions evaluated (prefix-cache hits excluded).\n"
        "# TYPE glimpse_prompt_tokens_computed_total counter\nglimpse_prompt_tokens_computed_total %llu\n",
        es->waiting, es->max_queue, es->running, (unsigned long long)es->requests_cancelled,
        (unsigned long long)(es->requests_done + es->requests_failed), es->kv_usage, es->kv_blocks,
        es->kv_cached_blocks,
        (unsigned long long)es->prefix_queries, (unsigned long long)es->prefix_hits,
        (unsigned long long)es->image_queries, (unsigned long long)es->image_hits,
        (unsigned long long)es->preemptions, (unsigned long long)es->steps,
        (unsigned long long)es->prompt_tokens_computed);
    put_engine_histogram(t, "glimpse_batch_size", "Entries (decode tokens + prompt positions) per forward pass.",
                         &es->batch_size);
    put_engine_histogram(t, "glimpse_engine_time_to_first_token_seconds",
                         "From submission to the engine to a sequence's first token.", &es->ttft_s);
    put_engine_histogram(t, "glimpse_inter_token_latency_seconds", "Between two tokens of one sequence.",
                         &es->itl_s);
    put_engine_histogram(t, "glimpse_queue_time_seconds", "From submission to the engine to admission.",
                         &es->queue_s);
}

char *metrics_render(metrics *m, const glimpse_stats *es, size_t *len)
{
    text t = { 0 };
    pthread_mutex_lock(&m->mu);
    put(&t, "# HELP glimpse_http_requests_total HTTP requests answered, by route and status code.\n"
            "# TYPE glimpse_http_requests_total counter\n");
    for (int r = 0; r < ROUTE_COUNT; r++)
        for (size_t s = 0; s < N_STATUS; s++)
            if (m->requests[r][s]) {
                char code[16];
                if (s < N_STATUS - 1)
                    snprintf(code, sizeof code, "%d", STATUSES[s]);
                else
                    snprintf(code, sizeof code, "other");
                put(&t, "glimpse_http_requests_total{route=\"%s\",code=\"%s\"} %llu\n", ROUTE_NAMES[r], code,
                    (unsigned long long)m->requests[r][s]);
            }
    put(&t, "# HELP glimpse_http_request_duration_seconds Wall time from the request's first byte to its "
            "response's last, by route.\n# TYPE glimpse_http_request_duration_seconds histogram\n");
    for (int r = 0; r < ROUTE_COUNT; r++) {
        char labels[64];
        snprintf(labels, sizeof labels, "route=\"%s\"", ROUTE_NAMES[r]);
        put_histogram(&t, "glimpse_http_request_duration_seconds", labels, &m->duration[r]);
    }
    put(&t, "# HELP glimpse_time_to_first_token_seconds Time from a chat request's arrival to its first "
            "generated token.\n# TYPE glimpse_time_to_first_token_seconds histogram\n");
    put_histogram(&t, "glimpse_time_to_first_token_seconds", "", &m->ttft);
    put(&t,
        "# HELP glimpse_completions_total Chat completions that ran to their end.\n"
        "# TYPE glimpse_completions_total counter\nglimpse_completions_total %llu\n"
        "# HELP glimpse_prompt_tokens_total Prompt tokens of finished completions (images included).\n"
        "# TYPE glimpse_prompt_tokens_total counter\nglimpse_prompt_tokens_total %llu\n"
        "# HELP glimpse_completion_tokens_total Generated tokens of finished completions.\n"
        "# TYPE glimpse_completion_tokens_total counter\nglimpse_completion_tokens_total %llu\n"
        "# HELP glimpse_image_tokens_total Prompt positions taken by images.\n"
        "# TYPE glimpse_image_tokens_total counter\nglimpse_image_tokens_total %llu\n"
        "# HELP glimpse_images_total Images in finished completions.\n"
        "# TYPE glimpse_images_total counter\nglimpse_images_total %llu\n"
        "# HELP glimpse_requests_in_flight Chat requests being answered (parsed, queued, running or streaming).\n"
        "# TYPE glimpse_requests_in_flight gauge\nglimpse_requests_in_flight %lld\n",
        (unsigned long long)m->completions, (unsigned long long)m->prompt_tokens,
        (unsigned long long)m->completion_tokens, (unsigned long long)m->image_tokens,
        (unsigned long long)m->images, (long long)m->in_flight);
    pthread_mutex_unlock(&m->mu);
    put(&t,
        "# HELP glimpse_model_ready 1 once the model is loaded and requests are served.\n"
        "# TYPE glimpse_model_ready gauge\nglimpse_model_ready %d\n",
        es ? 1 : 0);
    if (es)
        put_engine(&t, es);
    if (t.oom) {
        free(t.p);
        return NULL;
    }
    *len = t.len;
    return t.p;
}
