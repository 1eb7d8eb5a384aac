/*
 * main.c — the glimpse program: `glimpse ask` (one question from the command
 * line) and, later, `glimpse serve` (the HTTP server).
 *
 * Exit status: 0 done, 1 the engine failed (model file, generation), 2 bad
 * command line.
 */
#include "glimpse.h"
#include "demo.h"
#include "sbuf.h"
#include "serve.h"
#include "utf8.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: glimpse <command> [options]\n"
            "\n"
            "commands:\n"
            "  ask     answer one prompt from the command line (glimpse ask --help)\n"
            "  serve   serve the OpenAI chat-completions API over HTTP (glimpse serve --help)\n"
            "  help    show this help\n");
}

static void ask_usage(FILE *out)
{
    fprintf(out,
            "usage: glimpse ask --model MODEL.gguf --prompt TEXT [options]\n"
            "\n"
            "Answers one prompt. The prompt is sent as a user message through the model's\n"
            "chat template unless --raw-prompt is given. The answer is streamed to stdout as\n"
            "it is generated (followed by a newline); logs go to stderr.\n"
            "\n"
            "options:\n"
            "  -m, --model PATH        text model GGUF (llama architecture); default: the bundled\n"
            "                          demo model (models/glimpse-shapes.gguf and its projector)\n"
            "      --mmproj PATH       vision projector GGUF for the model (needed for --image)\n"
            "      --image FILE        a JPEG or PNG to ask about; repeat for several images,\n"
            "                          which come before the question, in order\n"
            "  -p, --prompt TEXT       the question\n"
            "  -n, --max-tokens N      stop after N tokens (default 256)\n"
            "      --temp T            sampling temperature, 0 = greedy (default 0)\n"
            "      --seed S            random seed (default: from the clock)\n"
            "      --top-logprobs K    report the K likeliest alternatives per token, 0..20\n"
            "                          (shown with --json)\n"
            "      --json              print one JSON object instead of the text: text, tokens\n"
            "                          (id, text, logprob, top_logprobs), usage, timings\n"
            "  -t, --threads N         compute threads (default: all CPUs)\n"
            "  -c, --ctx-size N        context size in tokens (default: min(model, 4096))\n"
            "      --raw-prompt        use TEXT as the prompt as is, without the chat template\n"
            "  -v, --verbose           log engine information to stderr\n"
            "  -h, --help              show this help\n");
}

/* ---- argument parsing -------------------------------------------------------- */

static int parse_int(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "glimpse ask: %s needs an integer in [%ld, %ld], got '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_float(const char *opt, const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "glimpse ask: %s needs a number in [%g, %g], got '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_u64(const char *opt, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-') {
        fprintf(stderr, "glimpse ask: %s needs a non-negative integer, got '%s'\n", opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

#define ASK_MAX_IMAGES 16

typedef struct ask_opts {
    const char *model;
    const char *mmproj;
    const char *images[ASK_MAX_IMAGES];
    int n_images;
    const char *prompt;
    long max_tokens;
    double temp;
    uint64_t seed;
    int have_seed;
    long top_logprobs;
    long threads;
    long ctx;
    int json;
    int raw;
    int verbose;
} ask_opts;

/* Returns 0 to run, 1 when help was printed, -1 on a bad command line. */
static int parse_ask(int argc, char **argv, ask_opts *o)
{
    enum { OPT_TEMP = 256, OPT_SEED, OPT_TOP, OPT_JSON, OPT_RAW, OPT_MMPROJ, OPT_IMAGE };
    static const struct option longopts[] = {
        { "model", required_argument, NULL, 'm' },
        { "mmproj", required_argument, NULL, OPT_MMPROJ },
        { "image", required_argument, NULL, OPT_IMAGE },
        { "prompt", required_argument, NULL, 'p' },
        { "max-tokens", required_argument, NULL, 'n' },
        { "temp", required_argument, NULL, OPT_TEMP },
        { "seed", required_argument, NULL, OPT_SEED },
        { "top-logprobs", required_argument, NULL, OPT_TOP },
        { "json", no_argument, NULL, OPT_JSON },
        { "threads", required_argument, NULL, 't' },
        { "ctx-size", required_argument, NULL, 'c' },
        { "raw-prompt", no_argument, NULL, OPT_RAW },
        { "verbose", no_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    memset(o, 0, sizeof *o);
    o->max_tokens = 256;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":m:p:n:t:c:vh", longopts, NULL)) != -1) {
        int rc = 0;
        switch (c) {
        case 'm': o->model = optarg; break;
        case OPT_MMPROJ: o->mmproj = optarg; break;
        case OPT_IMAGE:
            if (o->n_images == ASK_MAX_IMAGES) {
                fprintf(stderr, "glimpse ask: at most %d images\n", ASK_MAX_IMAGES);
                return -1;
            }
            o->images[o->n_images++] = optarg;
            break;
        case 'p': o->prompt = optarg; break;
        case 'n': rc = parse_int("--max-tokens", optarg, 1, INT_MAX, &o->max_tokens); break;
        case OPT_TEMP: rc = parse_float("--temp", optarg, 0.0, 100.0, &o->temp); break;
        case OPT_SEED: rc = parse_u64("--seed", optarg, &o->seed); o->have_seed = 1; break;
        case OPT_TOP: rc = parse_int("--top-logprobs", optarg, 0, GLIMPSE_MAX_TOP_LOGPROBS, &o->top_logprobs); break;
        case OPT_JSON: o->json = 1; break;
        case 't': rc = parse_int("--threads", optarg, 1, 256, &o->threads); break;
        case 'c': rc = parse_int("--ctx-size", optarg, 1, 1 << 20, &o->ctx); break;
        case OPT_RAW: o->raw = 1; break;
        case 'v': o->verbose = 1; break;
        case 'h': ask_usage(stdout); return 1;
        case ':':
            fprintf(stderr, "glimpse ask: option %s needs a value\n", argv[optind - 1]);
            return -1;
        default:
            fprintf(stderr, "glimpse ask: unknown option '%s'\n", argv[optind - 1]);
            return -1;
        }
        if (rc < 0)
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "glimpse ask: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!o->prompt) {
        fprintf(stderr, "glimpse ask: --prompt is required (see glimpse ask --help)\n");
        return -1;
    }
    if (o->n_images && !o->mmproj && o->model) {
        fprintf(stderr, "glimpse ask: --image needs the model's vision projector (--mmproj)\n");
        return -1;
    }
    return 0;
}

/* ---- output -------------------------------------------------------------- */

/* Adds s[0..n) as a JSON string: a token piece may be part of a UTF-8
 * character (or hold a NUL byte), which JSON cannot carry, so ill-formed bytes
 * become U+FFFD. Returns -1 when out of memory. */
static int add_text(cJSON *o, const char *key, const char *s, size_t n)
{
    char *clean = utf8_clean(s, n);
    int ok = clean && cJSON_AddStringToObject(o, key, clean);
    free(clean);
    return ok ? 0 : -1;
}

typedef struct ask_state {
    int json;
    sbuf text;         /* --json: all released text */
    cJSON *tokens;     /* --json: the tokens array */
    int wrote;         /* text mode: something is on stdout */
    int oom;
} ask_state;

static int on_token(const glimpse_token *t, void *user)
{
    ask_state *st = user;
    if (!st->json) {
        fwrite(t->text, 1, t->text_len, stdout);
        fflush(stdout);
        st->wrote |= t->text_len > 0;
        return 0;
    }
    sbuf_put(&st->text, t->text, t->text_len);
    if (t->id == GLIMPSE_TOKEN_NONE)
        return 0;
    cJSON *o = cJSON_CreateObject(), *top = cJSON_CreateArray();
    if (!o || !top || !cJSON_AddItemToArray(st->tokens, o)) {
        cJSON_Delete(o);
        cJSON_Delete(top);
        st->oom = 1;
        return 1;
    }
    cJSON_AddNumberToObject(o, "id", t->id);
    if (add_text(o, "text", t->piece, t->piece_len) < 0)
        st->oom = 1;
    cJSON_AddNumberToObject(o, "logprob", t->logprob);
    for (int i = 0; i < t->n_top; i++) {
        cJSON *a = cJSON_CreateObject();
        if (!a || !cJSON_AddItemToArray(top, a)) {
            cJSON_Delete(a);
            st->oom = 1;
            break;
        }
        cJSON_AddNumberToObject(a, "id", t->top[i].id);
        if (add_text(a, "text", t->top[i].piece, t->top[i].piece_len) < 0)
            st->oom = 1;
        cJSON_AddNumberToObject(a, "logprob", t->top[i].logprob);
    }
    cJSON_AddItemToObject(o, "top_logprobs", top);
    return st->oom;
}

static int print_json(ask_state *st, const glimpse_result *res)
{
    static const char *finish[] = { "none", "stop", "length" };
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return -1;
    if (add_text(root, "text", st->text.p ? st->text.p : "", st->text.len) < 0)
        st->oom = 1;
    cJSON_AddItemToObject(root, "tokens", st->tokens);
    st->tokens = NULL;
    cJSON_AddStringToObject(root, "finish_reason",
                            res->finish_reason >= 0 && res->finish_reason <= 2 ? finish[res->finish_reason] : "none");
    cJSON *usage = cJSON_AddObjectToObject(root, "usage");
    cJSON *timings = cJSON_AddObjectToObject(root, "timings");
    if (usage) {
        cJSON_AddNumberToObject(usage, "prompt_tokens", res->prompt_tokens);
        cJSON_AddNumberToObject(usage, "completion_tokens", res->completion_tokens);
        cJSON_AddNumberToObject(usage, "image_tokens", res->image_tokens);
    }
    if (timings) {
        cJSON_AddNumberToObject(timings, "load_ms", res->load_ms);
        cJSON_AddNumberToObject(timings, "image_encode_ms", res->image_encode_ms);
        cJSON_AddNumberToObject(timings, "prefill_ms", res->prefill_ms);
        cJSON_AddNumberToObject(timings, "decode_ms", res->decode_ms);
    }
    char *s = st->oom || st->text.oom ? NULL : cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!s)
        return -1;
    puts(s);
    cJSON_free(s);
    return 0;
}

/* ---- ask ------------------------------------------------------------------ */

/* Reads and prepares the --image files; 0 or -1 after a message. */
static int load_images(glimpse_model *model, const ask_opts *o, glimpse_image **images)
{
    for (int i = 0; i < o->n_images; i++) {
        FILE *f = fopen(o->images[i], "rb");
        if (!f) {
            fprintf(stderr, "glimpse ask: cannot open %s: %s\n", o->images[i], strerror(errno));
            return -1;
        }
        sbuf b = { 0 };
        char chunk[65536];
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
            sbuf_put(&b, chunk, n);
        int bad = ferror(f);
        fclose(f);
        glimpse_err err = { 0 };
        int rc = bad || b.oom ? -1 : glimpse_image_decode(model, b.p, b.len, NULL, &images[i], &err);
        free(b.p);
        if (rc < 0) {
            fprintf(stderr, "glimpse ask: %s: %s\n", o->images[i], bad ? "read error" : b.oom ? "out of memory" : err.msg);
            return -1;
        }
    }
    return 0;
}

static int cmd_ask(int argc, char **argv)
{
    ask_opts o;
    int prc = parse_ask(argc, argv, &o);
    if (prc != 0)
        return prc > 0 ? 0 : 2;
    if (o.verbose)
        glimpse_log_set(NULL, GLIMPSE_LOG_INFO, NULL);

    glimpse_err err = { 0 };
    char *demo_model = NULL, *demo_mmproj = NULL;
    if (!o.model) {
        if (find_demo_model(&demo_model, &demo_mmproj) < 0) {
            fprintf(stderr, "glimpse ask: no --model given and the bundled demo model (models/glimpse-shapes.gguf) "
                            "is not there\n");
            return 2;
        }
        o.model = demo_model;
        if (!o.mmproj)
            o.mmproj = demo_mmproj;
    }
    glimpse_model_params mp;
    glimpse_model_params_default(&mp);
    mp.model_path = o.model;
    mp.mmproj_path = o.mmproj;
    mp.n_threads = (int)o.threads;
    mp.n_ctx = (int)o.ctx;
    mp.n_parallel = 1; /* one request: a KV pool of one context */
    glimpse_model *model = NULL;
    int loaded = glimpse_model_load(&mp, &model, &err);
    if (loaded < 0)
        fprintf(stderr, "glimpse ask: cannot load %s: %s\n", o.model, err.msg);
    free(demo_model);
    free(demo_mmproj);
    if (loaded < 0)
        return 1;

    glimpse_image *images[ASK_MAX_IMAGES] = { 0 };
    ask_state st = { .json = o.json };
    glimpse_part parts[ASK_MAX_IMAGES + 1];
    int status = 0;
    if (load_images(model, &o, images) < 0) {
        status = 1;
        goto out;
    }
    for (int i = 0; i < o.n_images; i++)
        parts[i] = (glimpse_part){ GLIMPSE_PART_IMAGE, NULL, i };
    parts[o.n_images] = (glimpse_part){ GLIMPSE_PART_TEXT, o.prompt, 0 };
    glimpse_message msg = { "user", parts, (size_t)o.n_images + 1 };
    glimpse_request req;
    glimpse_request_default(&req);
    req.images = (const glimpse_image *const *)images;
    req.n_images = (size_t)o.n_images;
    if (o.raw) {
        req.prompt = o.prompt;
    } else {
        req.messages = &msg;
        req.n_messages = 1;
    }
    req.max_tokens = (int)o.max_tokens;
    req.sampling.temperature = (float)o.temp;
    req.sampling.seed = o.have_seed ? o.seed : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    req.sampling.n_top_logprobs = (int32_t)o.top_logprobs;
    if (o.json && !(st.tokens = cJSON_CreateArray())) {
        fprintf(stderr, "glimpse ask: out of memory\n");
        status = 1;
        goto out;
    }
    req.on_token = on_token;
    req.user = &st;

    glimpse_result res;
    int rc = glimpse_generate(model, &req, &res, &err);
    if (rc < 0) {
        if (st.wrote)
            putchar('\n');
        fprintf(stderr, "glimpse ask: %s\n", st.oom ? "out of memory" : err.msg);
        status = 1;
    } else if (o.json) {
        if (print_json(&st, &res) < 0) {
            fprintf(stderr, "glimpse ask: out of memory\n");
            status = 1;
        }
    } else {
        putchar('\n');
    }
    if (status == 0)
        fprintf(stderr, "glimpse ask: %d prompt (%d image) + %d generated tokens; load %.0f ms, image encode "
                        "%.0f ms, prefill %.0f ms, decode %.0f ms (%.1f tokens/s)\n",
                res.prompt_tokens, res.image_tokens, res.completion_tokens, res.load_ms, res.image_encode_ms,
                res.prefill_ms, res.decode_ms,
                res.decode_ms > 0 ? res.completion_tokens * 1000.0 / res.decode_ms : 0.0);
out:
    cJSON_Delete(st.tokens);
    sbuf_free(&st.text);
    for (int i = 0; i < o.n_images; i++)
        glimpse_image_free(images[i]);
    glimpse_model_free(model);
    return status;
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "ask"))
        return cmd_ask(argc - 1, argv + 1);
    if (!strcmp(argv[1], "serve"))
        return cmd_serve(argc - 1, argv + 1);
    fprintf(stderr, "glimpse: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
