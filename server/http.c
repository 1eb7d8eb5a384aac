/*
 * http.c — routing and the connection lifecycle (see http.h).
 *
 * A request's life: the first access-handler call sees the headers (route,
 * method, auth, Content-Length and Content-Type checks answer at once); the
 * next calls collect the body up to max_body; the last one parses it, decodes
 * the images and queues the job. A non-streaming request then waits on its
 * mailbox in the same thread, peeking at the socket so a client that hangs
 * up cancels its job; a streaming one answers with a callback response that
 * blocks on the mailbox and writes an SSE comment whenever nothing happened
 * for keepalive_ms. The request-completed callback releases the job, which
 * cancels it if it is still running: a client that leaves frees its slot.
 */
#include "http.h"

#include "log.h"
#include "multipart.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FORM_PARTS 64
#define WAIT_SLICE_MS 200 /* how often a waiting non-streaming request checks its client */

struct http_server {
    struct MHD_Daemon *d;
    const http_config *cfg;
    metrics *mx;
    _Atomic(glimpse_model *) model; /* jobs are submitted to it */
    atomic_int draining;
    atomic_long in_flight;
    atomic_long unstarted;     /* connections that have not sent a request yet */
    MHD_socket listen_fd;      /* after http_drain: the closed listener, freed by http_stop */
    int port;
    double started;   /* unix time, for /v1/models */
};

/* Per-connection state (MHD's socket_context), for the shutdown: whether the
 * connection has sent its first request. Touched only by the connection's
 * own thread. */
typedef struct conn_sock {
    bool unstarted;
} conn_sock;

/* Per-request state (MHD's con_cls). */
typedef struct conn {
    http_server *srv;
    double t0;               /* monotonic seconds at the first byte */
    int route;               /* enum metrics_route */
    int status;              /* the status answered, for metrics */
    bool post_chat;          /* collecting a chat body */
    bool multipart;
    bool too_large;
    sbuf body;
    MHD_socket fd;
    chat_req *cr;            /* until submitted; then owned by the job */
    const chat_req *req;     /* the request, for the whole life of the response */
    gq_job *job;
    chat_out *out;
    bool counted;            /* counted in in_flight */
    bool finished_ok;        /* the job ended well: usage goes to the metrics */
    double ttft;             /* seconds to the first token, -1 before */
    /* streaming */
    sbuf pending;            /* SSE bytes not yet handed to MHD */
    size_t pending_off;
    bool stream_done;
    int last_state;          /* the job's state at the previous take */
    int quiet_ms;            /* since the stream's last bytes */
} conn;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- responses ------------------------------------------------------------------- */

static void add_common_headers(http_server *s, struct MHD_Response *r)
{
    /* while draining, a kept-alive connection carries no further request */
    if (atomic_load(&s->draining))
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    const char *origin = s->cfg->cors_origin;
    if (origin && origin[0]) {
        MHD_add_response_header(r, "Access-Control-Allow-Origin", origin);
        MHD_add_response_header(r, "Access-Control-Expose-Headers", "Retry-After");
        if (strcmp(origin, "*"))
            MHD_add_response_header(r, "Vary", "Origin");
    }
}

/* Sends body (malloc'd, taken over; NULL: empty) with status. */
static enum MHD_Result reply(struct MHD_Connection *con, conn *c, int status, const char *ctype, char *body,
                             size_t len, const char *h1, const char *v1)
{
    struct MHD_Response *r =
        body ? MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE)
             : MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    if (ctype)
        MHD_add_response_header(r, "Content-Type", ctype);
    if (h1)
        MHD_add_response_header(r, h1, v1);
    add_common_headers(c->srv, r);
    c->status = status;
    enum MHD_Result rc = MHD_queue_response(con, (unsigned)status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result reply_json(struct MHD_Connection *con, conn *c, int status, char *json, size_t len)
{
    if (!json) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,"
                                  "\"code\":null}}";
        char *copy = strdup(oom);
        return reply(con, c, 500, "application/json", copy, copy ? strlen(copy) : 0, NULL, NULL);
    }
    return reply(con, c, status, "application/json", json, len, NULL, NULL);
}

static enum MHD_Result reply_error(struct MHD_Connection *con, conn *c, const api_error *e)
{
    size_t len = 0;
    char *json = api_error_json(e, &len);
    const char *h = NULL, *v = NULL;
    if (e->status == 429) {
        h = "Retry-After";
        v = "1";
    } else if (e->status == 401) {
        h = "WWW-Authenticate";
        v = "Bearer";
    } else if (e->status == 405) {
        h = "Allow";
        v = c->route == ROUTE_CHAT ? "POST, OPTIONS" : "GET, OPTIONS";
    }
    if (!json)
        return reply_json(con, c, 500, NULL, 0);
    return reply(con, c, e->status, "application/json", json, len, h, v);
}

static enum MHD_Result reply_cjson(struct MHD_Connection *con, conn *c, int status, cJSON *obj)
{
    char *s = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    return reply_json(con, c, status, s, s ? strlen(s) : 0);
}

/* ---- small routes ---------------------------------------------------------------- */

static cJSON *model_object(http_server *s)
{
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", s->cfg->model_id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", s->started);
    cJSON_AddStringToObject(m, "owned_by", "glimpse");
    return m;
}

static enum MHD_Result route_models(struct MHD_Connection *con, conn *c, const char *url)
{
    http_server *s = c->srv;
    if (!strcmp(url, "/v1/models")) {
        cJSON *list = cJSON_CreateObject();
        cJSON_AddStringToObject(list, "object", "list");
        cJSON *data = cJSON_AddArrayToObject(list, "data");
        cJSON_AddItemToArray(data, model_object(s));
        return reply_cjson(con, c, 200, list);
    }
    const char *id = url + strlen("/v1/models/");
    if (!strcmp(id, s->cfg->model_id))
        return reply_cjson(con, c, 200, model_object(s));
    api_error e;
    api_error_set(&e, 404, "model", "model_not_found", "The model '%.200s' does not exist", id);
    return reply_error(con, c, &e);
}

static enum MHD_Result route_health(struct MHD_Connection *con, conn *c)
{
    http_server *s = c->srv;
    const char *state = atomic_load(&s->draining) ? "draining" : atomic_load(&s->model) ? "ok" : "loading";
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", state);
    return reply_cjson(con, c, strcmp(state, "ok") ? 503 : 200, o);
}

static enum MHD_Result route_metrics(struct MHD_Connection *con, conn *c)
{
    glimpse_stats es;
    const glimpse_model *model = atomic_load(&c->srv->model);
    if (model)
        glimpse_stats_get(model, &es);
    size_t len = 0;
    char *text = metrics_render(c->srv->mx, model ? &es : NULL, &len);
    if (!text)
        return reply_json(con, c, 500, NULL, 0);
    return reply(con, c, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, NULL, NULL);
}

/* ---- auth ---------------------------------------------------------------------------- */

/* Compares in time independent of where the strings differ (only the
 * configured key's length shows). */
static bool key_equal(const char *given, const char *key)
{
    size_t gl = strlen(given), kl = strlen(key);
    unsigned char diff = gl != kl;
    for (size_t i = 0; i < kl; i++)
        diff |= (unsigned char)(key[i] ^ (i < gl ? given[i] : 0));
    return diff == 0;
}

static bool authorized(struct MHD_Connection *con, const char *key)
{
    if (!key || !key[0])
        return true;
    const char *h = MHD_lookup_connection_value(con, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7))
        return false;
    h += 7;
    while (*h == ' ')
        h++;
    return key_equal(h, key);
}

/* ---- chat completions ------------------------------------------------------------------ */

/* Whether the client is still there: a closed socket reads as EOF. */
static bool client_alive(const conn *c)
{
    char b;
    ssize_t n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR));
}

static void note_events(conn *c, const gq_events *ev)
{
    if (c->ttft < 0)
        for (size_t i = 0; i < ev->n_ev; i++)
            if (ev->ev[i].type == GQ_EV_TOKEN) {
                c->ttft = now_s() - c->t0;
                break;
            }
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    conn *c = cls;
    http_server *s = c->srv;
    for (;;) {
        if (c->pending_off < c->pending.len) {
            size_t n = c->pending.len - c->pending_off;
            if (n > max)
                n = max;
            memcpy(buf, c->pending.p + c->pending_off, n);
            c->pending_off += n;
            return (ssize_t)n;
        }
        c->pending.len = 0;
        c->pending_off = 0;
        if (c->stream_done)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (!client_alive(c)) {
            gq_job_cancel(c->job);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        gq_events ev = { 0 };
        gq_status st;
        int prev = c->last_state;
        /* short takes, so that a client that left is noticed within a slice
         * whatever its job is doing (queued, encoding images, prefilling) */
        const int slice = s->cfg->keepalive_ms < WAIT_SLICE_MS ? s->cfg->keepalive_ms : WAIT_SLICE_MS;
        size_t n = gq_job_take(c->job, slice, &ev, &st);
        c->last_state = st.state;
        c->quiet_ms = n == 0 && st.state == prev ? c->quiet_ms + slice : 0;
        note_events(c, &ev);
        chat_out_stream(c->out, &ev, &c->pending);
        gq_events_free(&ev);
        if (st.state == GQ_DONE) {
            if (st.rc == 0) {
                chat_out_stream_end(c->out, &c->pending);
                c->finished_ok = true;
            } else {
                api_error e;
                api_error_from_engine(&e, st.rc, &st.err);
                size_t len;
                char *json = api_error_json(&e, &len);
                sbuf_str(&c->pending, "data: ");
                sbuf_str(&c->pending, json ? json : "{\"error\":{\"message\":\"out of memory\"}}");
                sbuf_str(&c->pending, "\n\n");
                free(json);
            }
            c->stream_done = true;
        } else if (c->quiet_ms >= s->cfg->keepalive_ms) {
            /* nothing for a while (queued, or encoding images): keep proxies from timing out */
            sbuf_str(&c->pending, st.state == GQ_QUEUED ? ": queued\n\n" : ": working\n\n");
            c->quiet_ms = 0;
        }
        if (c->pending.oom)
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
}

static enum MHD_Result start_stream(struct MHD_Connection *con, conn *c)
{
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, c, NULL);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "text/event-stream; charset=utf-8");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    add_common_headers(c->srv, r);
    c->status = 200;
    enum MHD_Result rc = MHD_queue_response(con, 200, r);
    MHD_destroy_response(r);
    return rc;
}

/* Waits for the whole answer in this thread; a client that leaves cancels it. */
static enum MHD_Result finish_blocking(struct MHD_Connection *con, conn *c)
{
    for (;;) {
        gq_events ev = { 0 };
        gq_status st;
        gq_job_take(c->job, WAIT_SLICE_MS, &ev, &st);
        note_events(c, &ev);
        int rc = chat_out_add(c->out, &ev);
        gq_events_free(&ev);
        if (rc < 0) {
            gq_job_cancel(c->job);
            return reply_json(con, c, 500, NULL, 0);
        }
        if (st.state == GQ_DONE) {
            if (st.rc < 0) {
                api_error e;
                api_error_from_engine(&e, st.rc, &st.err);
                return reply_error(con, c, &e);
            }
            c->finished_ok = true;
            size_t len = 0;
            char *json = chat_out_json(c->out, &len);
            return reply_json(con, c, 200, json, len);
        }
        if (!client_alive(c)) {
            gq_job_cancel(c->job);
            c->status = 499; /* nginx's "client closed request", for the metrics */
            return MHD_NO;
        }
    }
}

static enum MHD_Result handle_chat(struct MHD_Connection *con, conn *c)
{
    http_server *s = c->srv;
    const http_config *cfg = s->cfg;
    api_error e;
    glimpse_model *m = atomic_load(&s->model);
    if (!m) {
        api_error_set(&e, 503, NULL, "model_loading", "the model is still loading; retry shortly");
        return reply_error(con, c, &e);
    }
    if (c->too_large) {
        api_error_set(&e, 413, NULL, "request_too_large", "the request body exceeds %zu bytes", cfg->max_body);
        return reply_error(con, c, &e);
    }
    int rc;
    if (c->multipart) {
        const char *ct = MHD_lookup_connection_value(con, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
        const char *b, *why = NULL;
        size_t bl;
        mp_part parts[MAX_FORM_PARTS];
        int np;
        if (!ct || mp_boundary(ct, &b, &bl) < 0) {
            api_error_set(&e, 400, NULL, "invalid_multipart", "multipart/form-data needs a valid boundary parameter");
            return reply_error(con, c, &e);
        }
        if ((np = mp_parse(c->body.p ? c->body.p : "", c->body.len, b, bl, parts, MAX_FORM_PARTS, &why)) < 0) {
            api_error_set(&e, 400, NULL, "invalid_multipart", "malformed multipart body: %s", why);
            return reply_error(con, c, &e);
        }
        rc = chat_parse_form(parts, (size_t)np, &cfg->limits, &c->cr, &e);
    } else {
        rc = chat_parse_json(c->body.p ? c->body.p : "", c->body.len, NULL, 0, &cfg->limits, &c->cr, &e);
    }
    if (rc < 0)
        return reply_error(con, c, &e);
    if (c->cr->model && strcmp(c->cr->model, cfg->model_id)) {
        api_error_set(&e, 404, "model", "model_not_found",
                      "The model '%.200s' does not exist; this server serves '%.200s'", c->cr->model, cfg->model_id);
        return reply_error(con, c, &e);
    }
    if (chat_decode_images(c->cr, m, &cfg->limits, &e) < 0)
        return reply_error(con, c, &e);
    if (!(c->out = chat_out_new(c->cr, cfg->model_id)))
        return reply_json(con, c, 500, NULL, 0);
    /* the body (and the images' encoded bytes in it) is no longer needed */
    sbuf_free(&c->body);

    gq_spec spec = { .req = c->cr->req, .n_choices = c->cr->n, .owner = c->cr,
                     .owner_free = (void (*)(void *))chat_req_free };
    glimpse_err err = { 0 };
    rc = gq_submit(m, &spec, &c->job, &err);
    if (rc < 0) { /* 429 when the scheduler's queue is full, 503 when shutting down, 400, ... */
        api_error_from_engine(&e, rc, &err);
        return reply_error(con, c, &e);
    }
    c->req = c->cr;
    c->cr = NULL; /* the job owns it now */
    return c->req->stream ? start_stream(con, c) : finish_blocking(con, c);
}

/* ---- the access handler -------------------------------------------------------------- */

static int route_of(const char *url)
{
    if (!strcmp(url, "/v1/chat/completions"))
        return ROUTE_CHAT;
    if (!strcmp(url, "/v1/models") || !strncmp(url, "/v1/models/", 11))
        return ROUTE_MODELS;
    if (!strcmp(url, "/health"))
        return ROUTE_HEALTH;
    if (!strcmp(url, "/metrics"))
        return ROUTE_METRICS;
    return ROUTE_OTHER;
}

/* How a request's body is delimited, from all its headers: libmicrohttpd
 * looks only at the first Content-Length and prefers Transfer-Encoding. */
typedef struct framing {
    const char *length;    /* the first Content-Length */
    bool lengths_differ;   /* a later Content-Length says otherwise */
    int n_encodings;       /* Transfer-Encoding headers */
} framing;

static enum MHD_Result scan_framing(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    framing *f = cls;
    (void)kind;
    value = value ? value : "";
    if (!strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH)) {
        f->lengths_differ |= f->length && strcmp(f->length, value);
        f->length = f->length ? f->length : value;
    } else if (!strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING)) {
        f->n_encodings++;
    }
    return MHD_YES;
}

/* NULL, or why the end of the body is ambiguous: a front proxy that reads
 * the other header would see another request in the bytes that follow
 * (request smuggling, RFC 9112 §6.3), so the request is refused. */
static const char *ambiguous_framing(struct MHD_Connection *con)
{
    framing f = { 0 };
    MHD_get_connection_values(con, MHD_HEADER_KIND, scan_framing, &f);
    if (f.lengths_differ)
        return "the request has Content-Length headers with different values";
    if (f.length && f.n_encodings)
        return "the request has both Content-Length and Transfer-Encoding";
    if (f.n_encodings > 1)
        return "the request has more than one Transfer-Encoding header";
    return NULL;
}

/* The first call for a request: everything decidable from the headers. */
static enum MHD_Result on_headers(struct MHD_Connection *con, conn *c, const char *url, const char *method)
{
    http_server *s = c->srv;
    api_error e;
    const char *why = ambiguous_framing(con);
    if (why) {
        /* the connection is closed after the answer: where its next request starts is unknown */
        api_error_set(&e, 400, NULL, "invalid_request", "%s", why);
        size_t len = 0;
        char *json = api_error_json(&e, &len);
        if (!json)
            return reply_json(con, c, 500, NULL, 0);
        return reply(con, c, 400, "application/json", json, len, MHD_HTTP_HEADER_CONNECTION, "close");
    }
    if (!strcmp(method, "OPTIONS")) { /* CORS preflight: open, like /health */
        const char *req_h =
            MHD_lookup_connection_value(con, MHD_HEADER_KIND, "Access-Control-Request-Headers");
        struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        if (!r)
            return MHD_NO;
        add_common_headers(s, r);
        MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
        MHD_add_response_header(r, "Access-Control-Allow-Headers",
                                req_h && strlen(req_h) < 2048 ? req_h : "Authorization, Content-Type");
        MHD_add_response_header(r, "Access-Control-Max-Age", "86400");
        c->status = 204;
        enum MHD_Result rc = MHD_queue_response(con, 204, r);
        MHD_destroy_response(r);
        return rc;
    }
    if (c->route == ROUTE_OTHER) {
        api_error_set(&e, 404, NULL, "not_found", "no route %.16s %.200s", method, url);
        return reply_error(con, c, &e);
    }
    bool want_post = c->route == ROUTE_CHAT;
    bool is_get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    if (want_post ? strcmp(method, "POST") : !is_get) {
        api_error_set(&e, 405, NULL, "method_not_allowed", "%.16s is not allowed on %.200s; use %s", method, url,
                      want_post ? "POST" : "GET");
        return reply_error(con, c, &e);
    }
    if (c->route == ROUTE_HEALTH)
        return route_health(con, c);
    if (!authorized(con, s->cfg->api_key)) {
        api_error_set(&e, 401, NULL, "invalid_api_key",
                      "missing or incorrect API key: send it as 'Authorization: Bearer <key>'");
        return reply_error(con, c, &e);
    }
    if (c->route == ROUTE_MODELS)
        return route_models(con, c, url);
    if (c->route == ROUTE_METRICS)
        return route_metrics(con, c);

    /* POST /v1/chat/completions: check what the headers tell before reading the body */
    const char *ct = MHD_lookup_connection_value(con, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    const char *cl = MHD_lookup_connection_value(con, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > s->cfg->max_body) {
        api_error_set(&e, 413, NULL, "request_too_large", "the request body exceeds %zu bytes", s->cfg->max_body);
        return reply_error(con, c, &e);
    }
    if (ct && !strncasecmp(ct, "multipart/form-data", 19)) {
        c->multipart = true;
    } else if (!ct || strncasecmp(ct, "application/json", 16) || (ct[16] && ct[16] != ';' && ct[16] != ' ')) {
        api_error_set(&e, 415, NULL, "unsupported_media_type",
                      "send the request as application/json or multipart/form-data (got %.100s)", ct ? ct : "none");
        return reply_error(con, c, &e);
    }
    /* While draining, requests still come in on connections accepted before the
     * listener closed; they reached this replica, so they are served. */
    if (!atomic_load(&s->model))
        return handle_chat(con, c); /* answers 503 without reading the body */
    c->post_chat = true;
    atomic_fetch_add(&s->in_flight, 1);
    metrics_in_flight(s->mx, 1);
    c->counted = true;
    return MHD_YES;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *con, const char *url, const char *method,
                                 const char *version, const char *upload_data, size_t *upload_data_size,
                                 void **con_cls)
{
    http_server *s = cls;
    conn *c = *con_cls;
    if (!c) {
        c = calloc(1, sizeof *c);
        if (!c)
            return MHD_NO;
        c->srv = s;
        c->t0 = now_s();
        c->ttft = -1;
        c->route = route_of(url);
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(con, MHD_CONNECTION_INFO_CONNECTION_FD);
        c->fd = ci ? ci->connect_fd : MHD_INVALID_SOCKET;
        *con_cls = c;
        enum MHD_Result rc = on_headers(con, c, url, method);
        /* only now: on_headers has counted a chat request in flight, so the shutdown sees one of the two */
        const union MHD_ConnectionInfo *si = MHD_get_connection_info(con, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        conn_sock *cs = si ? si->socket_context : NULL;
        if (cs && cs->unstarted) {
            cs->unstarted = false;
            atomic_fetch_sub(&s->unstarted, 1);
        }
        return rc;
    }
    if (!c->post_chat) /* a response is queued already; MHD discards the body */
        return MHD_YES;
    if (*upload_data_size) {
        if (!c->too_large && c->body.len + *upload_data_size > s->cfg->max_body) {
            c->too_large = true; /* a chunked body grew past the limit: drop the rest, answer 413 */
            sbuf_free(&c->body);
        }
        if (!c->too_large)
            sbuf_put(&c->body, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return c->body.oom ? MHD_NO : MHD_YES;
    }
    c->post_chat = false;
    return handle_chat(con, c);
}

static void on_completed(void *cls, struct MHD_Connection *con, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    http_server *s = cls;
    conn *c = *con_cls;
    if (!c)
        return;
    *con_cls = NULL;
    double dt = now_s() - c->t0;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && c->status == 200)
        c->status = 499;
    metrics_request(s->mx, c->route, c->status, dt);
    if (c->finished_ok && c->out) {
        int p, comp, img;
        chat_out_usage(c->out, &p, &comp, &img);
        metrics_completion(s->mx, p, comp, img, (int)c->req->n_images, c->ttft);
    }
    if (c->counted) {
        atomic_fetch_sub(&s->in_flight, 1);
        metrics_in_flight(s->mx, -1);
    }
    slog(GLIMPSE_LOG_INFO, "%s %d %.1f ms%s", metrics_route_name(c->route), c->status, dt * 1e3,
         toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection ended early)");
    chat_out_free(c->out);
    gq_job_release(c->job); /* last: the job owns the request c->req points to */
    chat_req_free(c->cr);
    sbuf_free(&c->body);
    sbuf_free(&c->pending);
    free(c);
}

static void on_connection(void *cls, struct MHD_Connection *con, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    http_server *s = cls;
    conn_sock *cs = *socket_context;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        /* without memory the connection is just not waited for at shutdown */
        if ((cs = calloc(1, sizeof *cs))) {
            cs->unstarted = true;
            atomic_fetch_add(&s->unstarted, 1);
        }
        *socket_context = cs;
    } else if (cs) {
        if (cs->unstarted)
            atomic_fetch_sub(&s->unstarted, 1);
        free(cs);
        *socket_context = NULL;
    }
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    slog(GLIMPSE_LOG_WARN, "http: %s", msg);
}

/* ---- life cycle ----------------------------------------------------------------------- */

/* glibc's malloc suits a few long-lived threads; this server runs one per
 * connection. bench/soak.py saw RSS creep while the bytes in use stayed flat
 * (malloc_info): each burst of concurrent connections created another arena
 * (up to 8 per core), each keeping about 2 MiB of freed memory, and glibc
 * raises its mmap threshold to the largest block freed (up to 32 MiB), after
 * which request bodies and decoded pictures of that size stay in the arenas
 * too. So: two arenas for all threads (small blocks come from per-thread
 * caches anyway), and a fixed threshold, so that every block of 128 KiB or
 * more is mapped on its own and returned on free. Before any thread starts. */
static void tune_malloc(void)
{
#ifdef __GLIBC__
    mallopt(M_ARENA_MAX, 2);
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
#endif
}

int http_start(const http_config *cfg, metrics *mx, http_server **out, glimpse_err *err)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
    struct addrinfo *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", cfg->port);
    int gai = getaddrinfo(cfg->host, port, &hints, &ai);
    if (gai) {
        err->code = GLIMPSE_EINVAL;
        snprintf(err->msg, sizeof err->msg, "cannot resolve host '%s': %s", cfg->host, gai_strerror(gai));
        return GLIMPSE_EINVAL;
    }
    tune_malloc();
    http_server *s = calloc(1, sizeof *s);
    if (!s) {
        freeaddrinfo(ai);
        *err = (glimpse_err){ GLIMPSE_ENOMEM, "out of memory" };
        return GLIMPSE_ENOMEM;
    }
    s->cfg = cfg;
    s->mx = mx;
    s->started = (double)time(NULL);
    s->listen_fd = MHD_INVALID_SOCKET;
    /* MHD_USE_ITC: http_drain's MHD_quiesce_daemon needs it */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
                     MHD_USE_ERROR_LOG | MHD_USE_ITC;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    s->d = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, on_access, s,
                            MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s,
                            MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                            MHD_OPTION_CONNECTION_LIMIT, cfg->max_connections,
                            MHD_OPTION_CONNECTION_TIMEOUT, cfg->timeout_s,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
                            MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->d) {
        free(s);
        err->code = GLIMPSE_EIO;
        snprintf(err->msg, sizeof err->msg, "cannot listen on %s:%d (in use, or not an address of this machine?)",
                 cfg->host, cfg->port);
        return GLIMPSE_EIO;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : cfg->port;
    *out = s;
    return 0;
}

int http_port(const http_server *s) { return s->port; }

void http_set_model(http_server *s, glimpse_model *m) { atomic_store(&s->model, m); }

/* Hands the connections waiting in the quiesced listener's backlog to MHD.
 * Their handshake is complete and a client (a load balancer) may already have
 * sent its request on them; shutting the listener down would reset them after
 * the request was sent, and nginx does not resend a POST that reached a
 * replica: the client would get a 502. They reached this replica, so they are
 * served like the connections accepted before the drain. */
static void adopt_backlog(http_server *s)
{
    int fl = fcntl(s->listen_fd, F_GETFL);
    if (fl < 0 || fcntl(s->listen_fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return;
    for (;;) {
        struct sockaddr_storage addr;
        socklen_t len = sizeof addr;
        int fd = accept(s->listen_fd, (struct sockaddr *)&addr, &len);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            return; /* EAGAIN: the backlog is empty (or the listener failed: nothing to adopt) */
        }
        /* MHD closes fd itself when it cannot take the connection */
        if (MHD_add_connection(s->d, fd, (struct sockaddr *)&addr, len) != MHD_YES)
            slog(GLIMPSE_LOG_WARN, "http: a connection from the backlog could not be served while draining");
    }
}

void http_drain(http_server *s)
{
    atomic_store(&s->draining, 1);
    if (s->listen_fd != MHD_INVALID_SOCKET)
        return;
    /* MHD stops accepting, but the socket would still complete handshakes into
     * its backlog: the connections already there are adopted, then shutting
     * the socket down makes the kernel refuse new connections at once (nginx
     * retries a refused connection on another replica). It is closed only
     * after MHD_stop_daemon, when MHD's polling thread has certainly let go
     * of it. */
    s->listen_fd = MHD_quiesce_daemon(s->d);
    if (s->listen_fd != MHD_INVALID_SOCKET) {
        adopt_backlog(s);
        shutdown(s->listen_fd, SHUT_RDWR);
    }
}

long http_in_flight(http_server *s) { return atomic_load(&s->in_flight); }

long http_unstarted(http_server *s) { return atomic_load(&s->unstarted); }

void http_stop(http_server *s)
{
    if (!s)
        return;
    MHD_stop_daemon(s->d);
    if (s->listen_fd != MHD_INVALID_SOCKET)
        close(s->listen_fd);
    free(s);
}
