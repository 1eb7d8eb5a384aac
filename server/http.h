/*
 * http.h — the HTTP side of `glimpse serve`: a libmicrohttpd daemon (one
 * polling thread, one thread per connection) with routing, CORS, auth,
 * limits and the connection lifecycle. HTTP threads parse, decode images and
 * format responses; model math happens only on the model's engine thread
 * (the scheduler), to which each chat request is submitted (queue.h).
 */
#ifndef GLIMPSE_HTTP_H
#define GLIMPSE_HTTP_H

#include "metrics.h"
#include "openai.h"
#include "queue.h"

#include <stddef.h>

typedef struct http_config {
    const char *host;         /* address to bind: IPv4, IPv6 or a name */
    int port;                 /* 0: any free port (see http_port) */
    const char *api_key;      /* required as "Authorization: Bearer KEY"; NULL or "": no auth */
    const char *cors_origin;  /* Access-Control-Allow-Origin; NULL or "": no CORS headers */
    const char *model_id;     /* the model's name in /v1/models and requests */
    size_t max_body;          /* bytes of a request body (413 beyond) */
    unsigned max_connections;
    unsigned timeout_s;       /* idle connection timeout */
    int keepalive_ms;         /* SSE comment interval while a stream waits */
    chat_limits limits;
} http_config;

typedef struct http_server http_server;

/* Starts listening. The config's strings and mx must outlive the server.
 * Until http_set_model, /health and chat requests answer 503.
 * On success *out is owned, stop with http_stop. Main thread. */
int http_start(const http_config *cfg, metrics *mx, http_server **out, glimpse_err *err);

/* The port actually bound. Any thread. */
int http_port(const http_server *s);

/* Serves requests with m (borrowed; it must outlive http_stop). Any thread. */
void http_set_model(http_server *s, glimpse_model *m);

/* Starts the shutdown: /health answers 503, the listener closes (new
 * connections are refused), and connections already open are answered
 * with "Connection: close", chat requests included. Main thread. */
void http_drain(http_server *s);

/* Chat requests accepted and not yet answered completely. Any thread. */
long http_in_flight(http_server *s);

/* Open connections that have not sent a request yet. Any thread. */
long http_unstarted(http_server *s);

/* Stops the daemon (closing open connections) and frees s. Accepts NULL. Main thread. */
void http_stop(http_server *s);

#endif /* GLIMPSE_HTTP_H */
