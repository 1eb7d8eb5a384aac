/*
 * metrics.h — the server's counters and histograms, rendered as Prometheus
 * text (exposition format 0.0.4) for GET /metrics. Any thread.
 */
#ifndef GLIMPSE_METRICS_H
#define GLIMPSE_METRICS_H

#include "glimpse.h"

#include <stddef.h>

enum metrics_route {
    ROUTE_CHAT = 0,   /* /v1/chat/completions */
    ROUTE_MODELS,     /* /v1/models, /v1/models/{id} */
    ROUTE_HEALTH,     /* /health */
    ROUTE_METRICS,    /* /metrics */
    ROUTE_OTHER,      /* anything else (404s, preflights) */
    ROUTE_COUNT
};

typedef struct metrics metrics;

/* Owned, free with metrics_free. */
int metrics_create(metrics **out);
void metrics_free(metrics *m);

/* One finished HTTP request: its route, status and wall time. */
void metrics_request(metrics *m, int route, int status, double seconds);
/* One finished chat completion: token counts and the time to its first token
 * (< 0 when none was produced). */
void metrics_completion(metrics *m, int prompt_tokens, int completion_tokens, int image_tokens, int n_images,
                        double ttft_seconds);
/* Chat requests between their parse and their response's end (streams included). */
void metrics_in_flight(metrics *m, int delta);

/* Renders everything, with the engine's scheduler counters (es: its queue,
 * sequences, caches and histograms; NULL while the model loads, which also
 * makes glimpse_model_ready 0). Owned, free with free(); NULL on OOM. */
char *metrics_render(metrics *m, const glimpse_stats *es, size_t *len);

/* The route label of a route. */
const char *metrics_route_name(int route);

#endif /* GLIMPSE_METRICS_H */
