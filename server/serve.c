/*
 * serve.c — `glimpse serve`: options (each also a GLIMPSE_* environment
 * variable), start-up, signals and shutdown.
 *
 * Start-up order: the listener comes up first so that /health can answer 503
 * while the model loads; a loader thread loads the model (which starts its
 * own engine thread: the scheduler, with the bounded queue) and marks the
 * server ready (a failed load ends the process with status 1). The first
 * SIGINT/SIGTERM drains: /health answers 503, the listener
 * closes (new connections are refused, so a load balancer retries them on
 * another replica), requests in flight finish, streams too, and the process
 * exits 0. A second signal, or --shutdown-timeout with requests still running,
 * exits 1 at once.
 */
#include "demo.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "serve.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int slog_level = GLIMPSE_LOG_INFO;

void slog(int level, const char *fmt, ...)
{
    static const char *names[] = { "error", "warn", "info", "debug" };
    if (level > slog_level)
        return;
    char msg[1024], ts[32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(stderr, "%s glimpse %s: %s\n", ts, names[level < 0 ? 0 : level > 3 ? 3 : level], msg);
}

static void engine_log(int level, const char *msg, void *user) { slog(level, "engine: %s", msg); }

/* ---- options -------------------------------------------------------------------- */

typedef struct serve_opts {
    const char *model, *mmproj, *host, *api_key, *cors_origin, *model_name, *log_level;
    long port, threads, ctx, max_body_mb, max_connections, timeout, keepalive_ms, queue_size, max_images;
    long max_image_pixels, max_prompt_bytes, max_n, shutdown_timeout, parallel, kv_cache_mb, batch;
} serve_opts;

enum opt_kind { OPT_STR, OPT_INT };

typedef struct opt_def {
    const char *name;   /* --name; the variable is GLIMPSE_ + NAME with '-' as '_' */
    int kind;
    size_t offset;
    long lo, hi;
    const char *def;    /* default, as text */
    const char *help;
} opt_def;

#define S(f) OPT_STR, offsetof(serve_opts, f), 0, 0
#define I(f, lo, hi) OPT_INT, offsetof(serve_opts, f), lo, hi
static const opt_def OPTS[] = {
    { "model", S(model), "the bundled demo model", "text model GGUF (llama architecture)" },
    { "mmproj", S(mmproj), "the demo model's, or none", "vision projector GGUF (clip); without it images are refused" },
    { "model-name", S(model_name), "the model file's name", "the model's id in /v1/models and in requests" },
    { "host", S(host), "127.0.0.1", "address to listen on (0.0.0.0 or :: for every interface)" },
    { "port", I(port, 0, 65535), "8080", "TCP port; 0 picks a free one (printed at start)" },
    { "api-key", S(api_key), "none", "require 'Authorization: Bearer KEY' (all routes but /health)" },
    { "cors-origin", S(cors_origin), "*", "Access-Control-Allow-Origin for browsers; '' turns CORS off" },
    { "threads", I(threads, 0, 1024), "0 (all CPUs)", "compute threads of the engine" },
    { "ctx-size", I(ctx, 0, 1 << 20), "0 (min(model, 4096))", "positions per request (prompt + answer)" },
    { "queue-size", I(queue_size, 1, 1 << 20), "64", "requests (choices) waiting for admission before 429" },
    { "parallel", I(parallel, 0, 256), "0 (4)", "requests generated together (continuous batching)" },
    { "kv-cache-mb", I(kv_cache_mb, 0, 1 << 24), "0 (ctx-size x parallel)", "KV cache pool in MiB, shared by all requests" },
    { "batch-size", I(batch, 0, 65536), "0 (256)",
      "positions per forward pass: a decode token per running sequence plus prompt chunks" },
    { "max-connections", I(max_connections, 1, 1 << 16), "256", "open HTTP connections" },
    { "timeout", I(timeout, 1, 86400), "120", "seconds an idle connection stays open" },
    { "max-body-mb", I(max_body_mb, 1, 4096), "32", "request body size in MiB (413 beyond)" },
    { "max-images", I(max_images, 0, 256), "8", "images per request" },
    { "max-image-pixels", I(max_image_pixels, 1, 1L << 30), "16777216", "pixels (width x height) per image" },
    { "max-prompt-bytes", I(max_prompt_bytes, 1, 1L << 30), "1048576", "bytes of message text per request" },
    { "max-n", I(max_n, 1, 128), "8", "choices per request (n)" },
    { "sse-keepalive-ms", I(keepalive_ms, 50, 600000), "5000", "SSE comment interval while a stream waits" },
    { "shutdown-timeout", I(shutdown_timeout, 0, 3600), "30",
      "seconds SIGTERM waits for requests in flight (then, or at a second signal, exit 1)" },
    { "log-level", S(log_level), "info", "error, warn, info (one line per request) or debug" },
};
#undef S
#undef I
#define N_OPTS (sizeof OPTS / sizeof OPTS[0])

static void serve_usage(FILE *out)
{
    fprintf(out, "usage: glimpse serve [options]\n\n"
                 "Serves the OpenAI chat-completions API (POST /v1/chat/completions, GET /v1/models,\n"
                 "GET /health, GET /metrics). Every option can also be set with the environment\n"
                 "variable shown under it; the command line wins.\n\noptions:\n");
    for (size_t i = 0; i < N_OPTS; i++) {
        char env[64], arg[48];
        snprintf(env, sizeof env, "GLIMPSE_%s", OPTS[i].name);
        for (char *p = env; *p; p++)
            *p = *p == '-' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p);
        snprintf(arg, sizeof arg, "--%s %s", OPTS[i].name, OPTS[i].kind == OPT_INT ? "N" : "VALUE");
        fprintf(out, "  %-28s %s\n  %-28s (env %s; default: %s)\n", arg, OPTS[i].help, "", env, OPTS[i].def);
    }
    fprintf(out, "  %-28s show this help\n", "-h, --help");
}

static int set_opt(serve_opts *o, const opt_def *d, const char *val, const char *from)
{
    char *field = (char *)o + d->offset;
    if (d->kind == OPT_STR) {
        *(const char **)field = val;
        return 0;
    }
    char *end;
    errno = 0;
    long v = strtol(val, &end, 10);
    if (errno || end == val || *end || v < d->lo || v > d->hi) {
        fprintf(stderr, "glimpse serve: %s needs an integer in [%ld, %ld], got '%s'\n", from, d->lo, d->hi, val);
        return -1;
    }
    *(long *)field = v;
    return 0;
}

/* Defaults, then GLIMPSE_* variables, then the command line. Returns 0 to
 * run, 1 when help was printed, -1 on a bad option. */
static int parse_serve(int argc, char **argv, serve_opts *o)
{
    *o = (serve_opts){ .host = "127.0.0.1", .port = 8080, .cors_origin = "*", .queue_size = 64,
                       .max_connections = 256, .timeout = 120, .max_body_mb = 32, .max_images = 8,
                       .max_image_pixels = 16777216, .max_prompt_bytes = 1048576, .max_n = 8,
                       .keepalive_ms = 5000, .shutdown_timeout = 30, .log_level = "info" };
    for (size_t i = 0; i < N_OPTS; i++) {
        char env[64];
        snprintf(env, sizeof env, "GLIMPSE_%s", OPTS[i].name);
        for (char *p = env; *p; p++)
            *p = *p == '-' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p);
        const char *v = getenv(env);
        if (v && set_opt(o, &OPTS[i], v, env) < 0)
            return -1;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            serve_usage(stdout);
            return 1;
        }
        if (strncmp(a, "--", 2)) {
            fprintf(stderr, "glimpse serve: unexpected argument '%s' (see glimpse serve --help)\n", a);
            return -1;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nl = eq ? (size_t)(eq - name) : strlen(name);
        const opt_def *d = NULL;
        for (size_t k = 0; k < N_OPTS; k++)
            if (strlen(OPTS[k].name) == nl && !strncmp(OPTS[k].name, name, nl))
                d = &OPTS[k];
        if (!d) {
            fprintf(stderr, "glimpse serve: unknown option '%s' (see glimpse serve --help)\n", a);
            return -1;
        }
        const char *val = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!val) {
            fprintf(stderr, "glimpse serve: option --%s needs a value\n", d->name);
            return -1;
        }
        if (set_opt(o, d, val, a) < 0)
            return -1;
    }
    static const char *levels[] = { "error", "warn", "info", "debug" };
    int lvl = -1;
    for (int k = 0; k < 4; k++)
        if (!strcmp(o->log_level, levels[k]))
            lvl = k;
    if (lvl < 0) {
        fprintf(stderr, "glimpse serve: --log-level must be error, warn, info or debug\n");
        return -1;
    }
    slog_level = lvl;
    return 0;
}

/* ---- loading ----------------------------------------------------------------------- */

typedef struct load_ctx {
    glimpse_model_params mp;
    http_server *http;
    glimpse_model *model;
    int failed;
} load_ctx;

/* The main thread sleeps on stop_sem until a signal or a failed load posts it.
 * A handler, not sigwait: libraries (OpenBLAS) start threads before main()
 * that do not block signals, and any thread may receive SIGTERM. */
static sem_t stop_sem;
static volatile sig_atomic_t stop_signal, n_stop_signals;

static void on_stop_signal(int sig)
{
    stop_signal = sig;
    n_stop_signals++; /* the handler blocks both signals, so this never races with itself */
    sem_post(&stop_sem); /* async-signal-safe */
}

static void *load_main(void *arg)
{
    load_ctx *e = arg;
    glimpse_err err = { 0 };
    if (glimpse_model_load(&e->mp, &e->model, &err) < 0) {
        slog(GLIMPSE_LOG_ERROR, "cannot load the model %s%s%s: %s", e->mp.model_path, e->mp.mmproj_path ? " + " : "",
             e->mp.mmproj_path ? e->mp.mmproj_path : "", err.msg);
        e->failed = 1;
        sem_post(&stop_sem);
        return NULL;
    }
    glimpse_model_info info;
    glimpse_model_info_get(e->model, &info);
    slog(GLIMPSE_LOG_INFO, "model %s loaded in %.0f ms: %d layers, n_embd %d, context %d, %d threads, vision %s",
         info.name, info.load_ms, info.n_layer, info.n_embd, info.n_ctx, info.n_threads, info.has_vision ? "yes" : "no");
    http_set_model(e->http, e->model);
    return NULL;
}

/* ---- serve ------------------------------------------------------------------------------ */

int cmd_serve(int argc, char **argv)
{
    serve_opts o;
    int prc = parse_serve(argc, argv, &o);
    if (prc != 0)
        return prc > 0 ? 0 : 2;
    glimpse_log_set(engine_log, slog_level, NULL);

    char *demo_model = NULL, *demo_mmproj = NULL;
    if (!o.model) {
        if (find_demo_model(&demo_model, &demo_mmproj) < 0) {
            fprintf(stderr, "glimpse serve: no --model given and the bundled demo model "
                            "(models/glimpse-shapes.gguf) is not there; pass --model PATH [--mmproj PATH]\n");
            return 2;
        }
        o.model = demo_model;
        if (!o.mmproj)
            o.mmproj = demo_mmproj;
    }
    char name[256];
    if (o.model_name && o.model_name[0]) {
        snprintf(name, sizeof name, "%s", o.model_name);
    } else {
        const char *base = strrchr(o.model, '/');
        snprintf(name, sizeof name, "%s", base ? base + 1 : o.model);
        size_t nl = strlen(name);
        if (nl > 5 && !strcmp(name + nl - 5, ".gguf"))
            name[nl - 5] = '\0';
    }

    int status = 1;
    metrics *mx = NULL;
    http_server *http = NULL;
    load_ctx ec = { 0 };
    pthread_t loader;
    int loader_started = 0;
    glimpse_err err = { 0 };

    sem_init(&stop_sem, 0, 0);
    struct sigaction sa = { .sa_handler = on_stop_signal, .sa_flags = SA_RESTART };
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGINT);
    sigaddset(&sa.sa_mask, SIGTERM);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    http_config cfg = {
        .host = o.host, .port = (int)o.port, .api_key = o.api_key, .cors_origin = o.cors_origin,
        .model_id = name, .max_body = (size_t)o.max_body_mb << 20, .max_connections = (unsigned)o.max_connections,
        .timeout_s = (unsigned)o.timeout, .keepalive_ms = (int)o.keepalive_ms,
        .limits = { .max_images = (size_t)o.max_images, .max_prompt_bytes = (size_t)o.max_prompt_bytes,
                    .max_n = (int)o.max_n, .max_queue = (int)o.queue_size,
                    .image = { .max_pixels = o.max_image_pixels } },
    };
    if (metrics_create(&mx) < 0) {
        fprintf(stderr, "glimpse serve: out of memory\n");
        goto done;
    }
    if (http_start(&cfg, mx, &http, &err) < 0) {
        fprintf(stderr, "glimpse serve: %s\n", err.msg);
        goto done;
    }
    const char *h = o.host;
    slog(GLIMPSE_LOG_WARN, "listening on http://%s%s%s:%d (model %s loading)", strchr(h, ':') ? "[" : "", h,
         strchr(h, ':') ? "]" : "", http_port(http), name);

    glimpse_model_params_default(&ec.mp);
    ec.mp.model_path = o.model;
    ec.mp.mmproj_path = o.mmproj && o.mmproj[0] ? o.mmproj : NULL;
    ec.mp.n_threads = (int)o.threads;
    ec.mp.n_ctx = (int)o.ctx;
    ec.mp.n_parallel = (int)o.parallel;
    ec.mp.kv_cache_mb = (int)o.kv_cache_mb;
    ec.mp.n_batch = (int)o.batch;
    ec.mp.max_queue = (int)o.queue_size;
    ec.http = http;
    if (pthread_create(&loader, NULL, load_main, &ec)) {
        fprintf(stderr, "glimpse serve: cannot start the loader thread\n");
        goto done;
    }
    loader_started = 1;

    while (sem_wait(&stop_sem) < 0 && errno == EINTR)
        ;
    if (ec.failed)
        goto done;
    const char *sig_name = stop_signal == SIGINT ? "SIGINT" : "SIGTERM";
    http_drain(http);
    slog(GLIMPSE_LOG_WARN, "%s: listener closed, draining (up to %ld s for %ld requests)", sig_name,
         o.shutdown_timeout, http_in_flight(http));
    /* A connection accepted just before the listener closed carries a request
     * that reached this replica (a load balancer will not retry it): wait for
     * it to arrive, for a second at most, since an idle client may never send. */
    for (long waited = 0; n_stop_signals < 2 && waited < o.shutdown_timeout * 1000 &&
                          (http_in_flight(http) > 0 || (http_unstarted(http) > 0 && waited < 1000));
         waited += 20)
        nanosleep(&(struct timespec){ 0, 20 * 1000000L }, NULL); /* a signal cuts it short */
    if (http_in_flight(http) > 0) {
        /* exit at once: no engine step or connection is waited for any longer */
        slog(GLIMPSE_LOG_WARN, "%s: %s, exiting with %ld requests unfinished", sig_name,
             n_stop_signals < 2 ? "shutdown timeout" : "second signal", http_in_flight(http));
        _exit(1);
    }
    status = 0;
done:
    if (loader_started)
        pthread_join(loader, NULL);
    /* A request that still slipped in (on a connection that was open but
     * silent) is refused with 503; http_stop then closes the connections,
     * which cancels and frees their jobs before the model goes. */
    if (ec.model)
        glimpse_shutdown(ec.model);
    http_stop(http);
    glimpse_model_free(ec.model);
    metrics_free(mx);
    free(demo_model);
    free(demo_mmproj);
    sem_destroy(&stop_sem);
    if (status == 0)
        slog(GLIMPSE_LOG_WARN, "stopped");
    return status;
}
