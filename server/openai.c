/*
 * openai.c — chat-completions requests and responses (see openai.h).
 *
 * Validation follows OpenAI's API: unknown top-level parameters, unknown keys
 * in messages and content parts, wrong types and out-of-range values are all
 * 400s naming the parameter, so a typo never silently changes an answer.
 *
 * Images arrive as data: URIs or as multipart uploads. A data: URI must say
 * image/<something>; the real format is detected from the bytes, so a PNG
 * labelled image/jpeg is accepted (the label is a hint, the bytes decide),
 * and bytes that are no PNG or JPEG are refused whatever the label says.
 * http(s) URLs are refused: the server never fetches anything (no SSRF).
 */
#include "config.h"
#include "openai.h"

#include "utf8.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* ---- errors ------------------------------------------------------------------ */

static const char *type_for_status(int status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 429: return "rate_limit_error";
    case 500: return "server_error";
    case 503: return "service_unavailable_error";
    default: return "invalid_request_error";
    }
}

int api_error_set(api_error *e, int status, const char *param, const char *code, const char *fmt, ...)
{
    e->status = status;
    e->type = type_for_status(status);
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}


/* Prints a cJSON tree into a malloc'd string (cJSON uses malloc by default). */
static char *print_json(cJSON *root, size_t *len)
{
    char *s = root ? cJSON_PrintUnformatted(root) : NULL;
    if (s && len)
        *len = strlen(s);
    return s;
}

char *api_error_json(const api_error *e, size_t *len)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *o = cJSON_AddObjectToObject(root, "error");
    if (!o) {
        cJSON_Delete(root);
        return NULL;
    }
    char *msg = utf8_clean(e->message, strlen(e->message));
    cJSON_AddStringToObject(o, "message", msg ? msg : "");
    free(msg);
    cJSON_AddStringToObject(o, "type", e->type ? e->type : type_for_status(e->status));
    if (e->param[0]) {
        char *p = utf8_clean(e->param, strlen(e->param));
        cJSON_AddStringToObject(o, "param", p ? p : "");
        free(p);
    } else {
        cJSON_AddNullToObject(o, "param");
    }
    if (e->code)
        cJSON_AddStringToObject(o, "code", e->code);
    else
        cJSON_AddNullToObject(o, "code");
    char *s = print_json(root, len);
    cJSON_Delete(root);
    return s;
}

void api_error_from_engine(api_error *e, int rc, const glimpse_err *err)
{
    const char *msg = err && err->msg[0] ? err->msg : glimpse_status_str(rc);
    switch (rc) {
    case GLIMPSE_ELIMIT:
        api_error_set(e, 400, "messages", "context_length_exceeded", "%s", msg);
        break;
    case GLIMPSE_EINVAL:
    case GLIMPSE_EUNSUPPORTED:
    case GLIMPSE_EFORMAT:
        api_error_set(e, 400, NULL, "invalid_request", "%s", msg);
        break;
    case GLIMPSE_ECANCELED:
        api_error_set(e, 503, NULL, "cancelled", "%s", msg);
        break;
    case GLIMPSE_EBUSY:
        api_error_set(e, 429, NULL, "rate_limit_exceeded",
                      "the server is busy (its queue is full); retry after a second");
        break;
    case GLIMPSE_ESHUTDOWN:
        api_error_set(e, 503, NULL, "shutting_down", "the server is shutting down");
        break;
    default:
        api_error_set(e, 500, NULL, "engine_error", "%s", msg);
        break;
    }
}

/* ---- base64 and data: URIs ------------------------------------------------------- */

/* The value of a base64 digit, or -1. (A function, not a lazily filled
 * table: HTTP threads decode concurrently.) */
static int b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

long base64_decode(const char *in, size_t len, unsigned char *out)
{
    size_t n = len;
    if (n % 4 == 0 && n >= 2 && in[n - 1] == '=')
        n -= in[n - 2] == '=' ? 2 : 1;
    if (n % 4 == 1 || n / 4 > (size_t)(LONG_MAX / 3))
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64_val((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        if (i % 4 == 3) {
            out[o++] = (unsigned char)(acc >> 16);
            out[o++] = (unsigned char)(acc >> 8);
            out[o++] = (unsigned char)acc;
            acc = 0;
        }
    }
    switch (n % 4) {
    case 2:
        if (acc & 0xF) /* non-canonical trailing bits */
            return -1;
        out[o++] = (unsigned char)(acc >> 4);
        break;
    case 3:
        if (acc & 0x3)
            return -1;
        out[o++] = (unsigned char)(acc >> 10);
        out[o++] = (unsigned char)(acc >> 2);
        break;
    default:
        break;
    }
    return (long)o;
}

static bool prefix_ci(const char *s, const char *lit)
{
    for (; *lit; s++, lit++) {
        char c = *s;
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != *lit)
            return false;
    }
    return true;
}

/* "data:image/<x>[;param]*;base64,<payload>" into an owned buffer. */
static int parse_data_uri(const char *url, chat_image_src *src, api_error *e)
{
    const char *comma = strchr(url, ',');
    if (!comma)
        return api_error_set(e, 400, src->param, "invalid_image_url", "the data: URI has no ',' before its data");
    const char *meta = url + 5;
    size_t meta_len = (size_t)(comma - meta);
    if (!prefix_ci(meta, "image/"))
        return api_error_set(e, 400, src->param, "invalid_image_url",
                             "the data: URI must have an image media type (data:image/png;base64,... or "
                             "data:image/jpeg;base64,...)");
    if (meta_len < 7 || !prefix_ci(comma - 7, ";base64"))
        return api_error_set(e, 400, src->param, "invalid_image_url", "the data: URI must be base64-encoded (;base64,)");
    size_t n = strlen(comma + 1);
    if (n == 0)
        return api_error_set(e, 400, src->param, "invalid_image", "the data: URI holds no data");
    src->owned = malloc(n / 4 * 3 + 3);
    if (!src->owned)
        return api_error_set(e, 500, NULL, NULL, "out of memory");
    long got = base64_decode(comma + 1, n, src->owned);
    if (got <= 0)
        return api_error_set(e, 400, src->param, "invalid_base64", "the data: URI's base64 data is invalid");
    src->data = src->owned;
    src->len = (size_t)got;
    return 0;
}

static int resolve_image_url(const char *url, chat_upload *ups, size_t n_ups, chat_image_src *src, api_error *e)
{
    if (prefix_ci(url, "data:"))
        return parse_data_uri(url, src, e);
    if (prefix_ci(url, "http://") || prefix_ci(url, "https://"))
        return api_error_set(e, 400, src->param, "image_url_not_supported",
                             "remote image URLs are not fetched by this server; send the image inline as a data: "
                             "URI (data:image/png;base64,...) or upload it with multipart/form-data");
    if (!strncmp(url, "upload:", 7)) {
        const char *name = url + 7;
        size_t name_len = strlen(name);
        /* The k-th reference to a name takes the k-th part of that name. */
        for (size_t i = 0; i < n_ups; i++) {
            chat_upload *u = &ups[i];
            if (u->name_len != name_len || memcmp(u->name, name, name_len))
                continue;
            int skip = u->used;
            for (size_t k = i; k < n_ups; k++) {
                if (ups[k].name_len != name_len || memcmp(ups[k].name, name, name_len))
                    continue;
                if (skip-- == 0) {
                    u->used++;
                    src->data = (const unsigned char *)ups[k].data;
                    src->len = ups[k].len;
                    return 0;
                }
            }
            return api_error_set(e, 400, src->param, "invalid_image_url",
                                 "more references to upload:%s than file parts named '%s'", name, name);
        }
        return api_error_set(e, 400, src->param, "invalid_image_url",
                             "no file part named '%s' in the multipart request", name);
    }
    return api_error_set(e, 400, src->param, "invalid_image_url",
                         "image_url.url must be a data: URI (data:image/png;base64,...) or upload:<field>");
}

/* ---- request validation -------------------------------------------------------- */

static int want_number(const cJSON *v, const char *name, double lo, double hi, double *out, api_error *e)
{
    if (!cJSON_IsNumber(v))
        return api_error_set(e, 400, name, "invalid_type", "'%s' must be a number", name);
    double d = v->valuedouble;
    if (!(d >= lo && d <= hi))
        return api_error_set(e, 400, name, "invalid_value", "'%s' must be between %g and %g, got %g", name, lo, hi, d);
    *out = d;
    return 0;
}

static int want_int(const cJSON *v, const char *name, double lo, double hi, double *out, api_error *e)
{
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
        return api_error_set(e, 400, name, "invalid_type", "'%s' must be an integer", name);
    return want_number(v, name, lo, hi, out, e);
}

static int want_bool(const cJSON *v, const char *name, int *out, api_error *e)
{
    if (!cJSON_IsBool(v))
        return api_error_set(e, 400, name, "invalid_type", "'%s' must be true or false", name);
    *out = cJSON_IsTrue(v);
    return 0;
}

static int parse_stop(chat_req *cr, const cJSON *v, api_error *e)
{
    const cJSON *items[GLIMPSE_MAX_STOP];
    size_t n = 0;
    if (cJSON_IsString(v)) {
        items[n++] = v;
    } else if (cJSON_IsArray(v)) {
        int size = cJSON_GetArraySize(v);
        if (size > GLIMPSE_MAX_STOP)
            return api_error_set(e, 400, "stop", "invalid_value", "'stop' holds at most %d strings", GLIMPSE_MAX_STOP);
        for (const cJSON *it = v->child; it; it = it->next) {
            if (!cJSON_IsString(it))
                return api_error_set(e, 400, "stop", "invalid_type", "'stop' must be a string or an array of strings");
            items[n++] = it;
        }
    } else {
        return api_error_set(e, 400, "stop", "invalid_type", "'stop' must be a string or an array of strings");
    }
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(items[i]->valuestring);
        if (len == 0 || len > GLIMPSE_MAX_STOP_LEN)
            return api_error_set(e, 400, "stop", "invalid_value", "each stop string must have 1 to %d bytes",
                                 GLIMPSE_MAX_STOP_LEN);
        cr->req.stop[i] = items[i]->valuestring;
    }
    return 0;
}

/* 400 when key k of obj repeats an earlier key, at every level of a request:
 * which copy is meant is anyone's guess, and a proxy that reads JSON
 * differently would judge another request. The lookup is linear in k's
 * position, which stays small: every caller refuses unknown keys (top-level
 * nulls, skipped unchecked, are the exception, so they are not checked). */
static int refuse_repeated(const cJSON *obj, const cJSON *k, const char *param, const char *where, api_error *e)
{
    if (cJSON_GetObjectItemCaseSensitive(obj, k->string) == k)
        return 0;
    return api_error_set(e, 400, param, "invalid_value", "'%.40s' is given twice%s", k->string, where);
}

/* One content part: text or image_url, into *out. */
static int parse_part(chat_req *cr, const cJSON *it, const char *param, bool user, chat_upload *ups, size_t n_ups,
                      const chat_limits *lim, glimpse_part *out, size_t *text_bytes, api_error *e)
{
    char p2[128];
    if (!cJSON_IsObject(it))
        return api_error_set(e, 400, param, "invalid_type", "each content part must be an object");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(it, "type");
    if (!cJSON_IsString(type))
        return api_error_set(e, 400, param, "invalid_type", "each content part needs a string 'type'");
    bool is_text = !strcmp(type->valuestring, "text");
    if (!is_text && strcmp(type->valuestring, "image_url")) {
        snprintf(p2, sizeof p2, "%.64s.type", param);
        return api_error_set(e, 400, p2, "invalid_value", "content part type must be 'text' or 'image_url'");
    }
    const char *want = is_text ? "text" : "image_url";
    const cJSON *val = NULL;
    for (const cJSON *k = it->child; k; k = k->next) {
        if (refuse_repeated(it, k, param, " in a content part", e) < 0)
            return -1;
        if (!strcmp(k->string, want)) {
            val = k;
        } else if (strcmp(k->string, "type")) {
            snprintf(p2, sizeof p2, "%.64s.%.40s", param, k->string);
            return api_error_set(e, 400, p2, "unknown_parameter", "unknown key '%s' in a %s part", k->string, want);
        }
    }
    snprintf(p2, sizeof p2, "%.64s.%s", param, want);
    if (is_text) {
        if (!cJSON_IsString(val))
            return api_error_set(e, 400, p2, "invalid_type", "a text part needs a string 'text'");
        *text_bytes += strlen(val->valuestring);
        *out = (glimpse_part){ GLIMPSE_PART_TEXT, val->valuestring, 0 };
        return 0;
    }
    if (!user)
        return api_error_set(e, 400, param, "invalid_value", "images are only allowed in user messages");
    if (!cJSON_IsObject(val))
        return api_error_set(e, 400, p2, "invalid_type", "'image_url' must be an object with a 'url'");
    const cJSON *url = NULL;
    for (const cJSON *k = val->child; k; k = k->next) {
        if (refuse_repeated(val, k, p2, " in image_url", e) < 0)
            return -1;
        if (!strcmp(k->string, "url")) {
            url = k;
        } else if (!strcmp(k->string, "detail")) {
            if (!cJSON_IsString(k) ||
                (strcmp(k->valuestring, "auto") && strcmp(k->valuestring, "low") && strcmp(k->valuestring, "high")))
                return api_error_set(e, 400, p2, "invalid_value", "'detail' must be auto, low or high");
        } else {
            return api_error_set(e, 400, p2, "unknown_parameter", "unknown key '%s' in image_url", k->string);
        }
    }
    if (!cJSON_IsString(url)) {
        snprintf(p2, sizeof p2, "%.64s.image_url.url", param);
        return api_error_set(e, 400, p2, "invalid_type", "'image_url.url' must be a string");
    }
    if (cr->n_images >= lim->max_images)
        return api_error_set(e, 400, param, "too_many_images", "a request holds at most %zu images", lim->max_images);
    chat_image_src *src = &cr->src[cr->n_images];
    snprintf(src->param, sizeof src->param, "%.64s.image_url.url", param);
    if (resolve_image_url(url->valuestring, ups, n_ups, src, e) < 0)
        return -1;
    *out = (glimpse_part){ GLIMPSE_PART_IMAGE, NULL, (int)cr->n_images };
    cr->n_images++;
    return 0;
}

static int parse_messages(chat_req *cr, const cJSON *msgs, chat_upload *ups, size_t n_ups, const chat_limits *lim,
                          api_error *e)
{
    if (!cJSON_IsArray(msgs) || !msgs->child)
        return api_error_set(e, 400, "messages", "invalid_type", "'messages' must be a non-empty array");
    size_t n_msgs = 0, n_parts = 0;
    for (const cJSON *m = msgs->child; m; m = m->next) {
        const cJSON *c = cJSON_IsObject(m) ? cJSON_GetObjectItemCaseSensitive(m, "content") : NULL;
        n_msgs++;
        n_parts += cJSON_IsArray(c) ? (size_t)cJSON_GetArraySize(c) : 1;
    }
    cr->messages = calloc(n_msgs, sizeof *cr->messages);
    cr->parts = calloc(n_parts, sizeof *cr->parts);
    cr->src = calloc(lim->max_images + 1, sizeof *cr->src); /* + 1: a refused image's bytes */
    if (!cr->messages || !cr->parts || !cr->src)
        return api_error_set(e, 500, NULL, NULL, "out of memory");
    size_t mi = 0, pi = 0, text_bytes = 0;
    char param[64];
    for (const cJSON *m = msgs->child; m; m = m->next, mi++) {
        snprintf(param, sizeof param, "messages[%zu]", mi);
        if (!cJSON_IsObject(m))
            return api_error_set(e, 400, param, "invalid_type", "each message must be an object");
        const cJSON *role = NULL, *content = NULL;
        for (const cJSON *k = m->child; k; k = k->next) {
            /* also because the parts were counted with the first "content" */
            if (refuse_repeated(m, k, param, " in a message", e) < 0)
                return -1;
            if (!strcmp(k->string, "role"))
                role = k;
            else if (!strcmp(k->string, "content"))
                content = k;
            else if (!strcmp(k->string, "name") || !strcmp(k->string, "refusal")) {
                if (!cJSON_IsString(k) && !cJSON_IsNull(k))
                    return api_error_set(e, 400, param, "invalid_type", "'%s' must be a string", k->string);
            } else {
                char p2[128];
                snprintf(p2, sizeof p2, "%.64s.%.40s", param, k->string);
                return api_error_set(e, 400, p2, "unknown_parameter", "unknown key '%s' in a message", k->string);
            }
        }
        if (!cJSON_IsString(role))
            return api_error_set(e, 400, param, "invalid_type", "each message needs a string 'role'");
        const char *r = role->valuestring;
        if (!strcmp(r, "developer")) /* OpenAI's newer name for system */
            r = "system";
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant"))
            return api_error_set(e, 400, param, "invalid_value",
                                 "role must be system, developer, user or assistant, got '%s'", role->valuestring);
        glimpse_message *gm = &cr->messages[mi];
        gm->role = r;
        gm->parts = &cr->parts[pi];
        snprintf(param, sizeof param, "messages[%zu].content", mi);
        if (cJSON_IsString(content)) {
            cr->parts[pi++] = (glimpse_part){ GLIMPSE_PART_TEXT, content->valuestring, 0 };
            text_bytes += strlen(content->valuestring);
            gm->n_parts = 1;
        } else if (cJSON_IsArray(content) && content->child) {
            size_t ci = 0;
            for (const cJSON *it = content->child; it; it = it->next, ci++) {
                char pp[128];
                snprintf(pp, sizeof pp, "messages[%zu].content[%zu]", mi, ci);
                if (parse_part(cr, it, pp, !strcmp(r, "user"), ups, n_ups, lim, &cr->parts[pi++], &text_bytes, e) < 0)
                    return -1;
            }
            gm->n_parts = ci;
        } else if (!(cJSON_IsNull(content) && !strcmp(r, "assistant"))) {
            return api_error_set(e, 400, param, "invalid_type",
                                 "'content' must be a string or a non-empty array of content parts");
        }
        if (text_bytes > lim->max_prompt_bytes)
            return api_error_set(e, 400, "messages", "context_length_exceeded",
                                 "the messages hold more than %zu bytes of text", lim->max_prompt_bytes);
    }
    cr->req.messages = cr->messages;
    cr->req.n_messages = n_msgs;
    return 0;
}

/* Every top-level parameter but messages. */
static int parse_params(chat_req *cr, const cJSON *root, const chat_limits *lim, api_error *e)
{
    glimpse_sampling *s = &cr->req.sampling;
    const cJSON *stream_options = NULL;
    bool have_max_completion = false;
    for (const cJSON *k = root->child; k; k = k->next) {
        const char *name = k->string;
        double d;
        int b = 0, rc = 0;
        if (cJSON_IsNull(k)) /* OpenAI's clients send null for "not given" */
            continue;
        /* also because "messages" is read from its first copy and the others from their last */
        if (refuse_repeated(root, k, name, "", e) < 0)
            return -1;
        if (!strcmp(name, "messages"))
            continue;
        if (!strcmp(name, "model")) {
            if (!cJSON_IsString(k))
                return api_error_set(e, 400, name, "invalid_type", "'model' must be a string");
            cr->model = k->valuestring;
        } else if (!strcmp(name, "max_tokens") || !strcmp(name, "max_completion_tokens")) {
            bool mc = !strcmp(name, "max_completion_tokens");
            if ((rc = want_int(k, name, 1, 1 << 30, &d, e)) == 0 && (mc || !have_max_completion))
                cr->req.max_tokens = (int)d;
            have_max_completion |= mc;
        } else if (!strcmp(name, "temperature")) {
            if ((rc = want_number(k, name, 0, 2, &d, e)) == 0)
                s->temperature = (float)d;
        } else if (!strcmp(name, "top_p")) {
            if ((rc = want_number(k, name, 0, 1, &d, e)) == 0)
                s->top_p = (float)d;
        } else if (!strcmp(name, "top_k")) {
            if ((rc = want_int(k, name, 0, 1 << 30, &d, e)) == 0)
                s->top_k = (int32_t)d;
        } else if (!strcmp(name, "min_p")) {
            if ((rc = want_number(k, name, 0, 1, &d, e)) == 0)
                s->min_p = (float)d;
        } else if (!strcmp(name, "presence_penalty")) {
            if ((rc = want_number(k, name, -2, 2, &d, e)) == 0)
                s->presence_penalty = (float)d;
        } else if (!strcmp(name, "frequency_penalty")) {
            if ((rc = want_number(k, name, -2, 2, &d, e)) == 0)
                s->frequency_penalty = (float)d;
        } else if (!strcmp(name, "repetition_penalty")) {
            if ((rc = want_number(k, name, 0.01, 10, &d, e)) == 0)
                s->repetition_penalty = (float)d;
        } else if (!strcmp(name, "seed")) {
            /* OpenAI takes any 64-bit integer; the engine wants its bits */
            if ((rc = want_int(k, name, -9.2e18, 9.2e18, &d, e)) == 0) {
                s->seed = (uint64_t)(int64_t)d;
                cr->seed_given = 1;
            }
        } else if (!strcmp(name, "stop")) {
            rc = parse_stop(cr, k, e);
        } else if (!strcmp(name, "n")) {
            if ((rc = want_int(k, name, 1, lim->max_n, &d, e)) == 0)
                cr->n = (int)d;
            /* Not a 429: such a request would never fit the queue, however long it waited. */
            if (rc == 0 && lim->max_queue > 0 && cr->n > lim->max_queue)
                return api_error_set(e, 400, name, "invalid_value",
                                     "'n' = %d choices can never be queued: the server queues at most %d sequences "
                                     "(--queue-size), one per choice",
                                     cr->n, lim->max_queue);
        } else if (!strcmp(name, "stream")) {
            if ((rc = want_bool(k, name, &b, e)) == 0)
                cr->stream = b;
        } else if (!strcmp(name, "stream_options")) {
            if (!cJSON_IsObject(k))
                return api_error_set(e, 400, name, "invalid_type", "'stream_options' must be an object");
            stream_options = k;
        } else if (!strcmp(name, "logprobs")) {
            if ((rc = want_bool(k, name, &b, e)) == 0)
                cr->logprobs = b;
        } else if (!strcmp(name, "top_logprobs")) {
            if ((rc = want_int(k, name, 0, GLIMPSE_MAX_TOP_LOGPROBS, &d, e)) == 0)
                cr->top_logprobs = (int)d;
        } else if (!strcmp(name, "user")) {
            if (!cJSON_IsString(k))
                return api_error_set(e, 400, name, "invalid_type", "'user' must be a string");
        } else {
            return api_error_set(e, 400, name, "unknown_parameter", "Unrecognized request argument supplied: %s", name);
        }
        if (rc < 0)
            return -1;
    }
    if (stream_options) {
        if (!cr->stream)
            return api_error_set(e, 400, "stream_options", "invalid_value",
                                 "'stream_options' is only allowed when 'stream' is true");
        for (const cJSON *k = stream_options->child; k; k = k->next) {
            int b = 0;
            if (refuse_repeated(stream_options, k, "stream_options", " in stream_options", e) < 0)
                return -1;
            if (strcmp(k->string, "include_usage"))
                return api_error_set(e, 400, "stream_options", "unknown_parameter",
                                     "unknown key '%s' in stream_options", k->string);
            if (want_bool(k, "stream_options.include_usage", &b, e) < 0)
                return -1;
            cr->include_usage = b;
        }
    }
    if (cr->top_logprobs > 0 && !cr->logprobs)
        return api_error_set(e, 400, "top_logprobs", "invalid_value",
                             "'logprobs' must be true when 'top_logprobs' is given");
    s->n_top_logprobs = cr->logprobs ? cr->top_logprobs : 0;
    return 0;
}

/* Validates a parsed request; takes ownership of root. */
static int parse_root(cJSON *root, chat_upload *ups, size_t n_ups, const chat_limits *lim, chat_req **out,
                      api_error *e)
{
    chat_req *cr = calloc(1, sizeof *cr);
    if (!cr) {
        cJSON_Delete(root);
        return api_error_set(e, 500, NULL, NULL, "out of memory");
    }
    cr->root = root;
    cr->n = 1;
    glimpse_request_default(&cr->req);
    if (!cJSON_IsObject(root)) {
        api_error_set(e, 400, NULL, "invalid_type", "the request body must be a JSON object");
        goto fail;
    }
    if (parse_params(cr, root, lim, e) < 0)
        goto fail;
    if (parse_messages(cr, cJSON_GetObjectItemCaseSensitive(root, "messages"), ups, n_ups, lim, e) < 0)
        goto fail;
    if (!cr->seed_given && getrandom(&cr->req.sampling.seed, sizeof cr->req.sampling.seed, 0) !=
                               (ssize_t)sizeof cr->req.sampling.seed)
        cr->req.sampling.seed = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull;
    *out = cr;
    return 0;
fail:
    chat_req_free(cr);
    return -1;
}

int chat_parse_json(const char *body, size_t len, chat_upload *uploads, size_t n_uploads, const chat_limits *lim,
                    chat_req **out, api_error *e)
{
    /* JSON text is UTF-8 (RFC 8259 §8.1); cJSON would pass other bytes on into
     * the prompt, whose text the engine takes as UTF-8 */
    size_t ok = utf8_valid_prefix(body, len);
    if (ok < len)
        return api_error_set(e, 400, NULL, "invalid_json", "the request body is not valid UTF-8 (at byte %zu)", ok);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!root) {
        size_t at = end && end >= body ? (size_t)(end - body) : 0;
        return api_error_set(e, 400, NULL, "invalid_json", "the request body is not valid JSON (error near byte %zu)",
                             at);
    }
    /* cJSON stops at the value's end; anything but whitespace after it is an error */
    for (const char *p = end; p && p < body + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
            cJSON_Delete(root);
            return api_error_set(e, 400, NULL, "invalid_json", "the request body has data after its JSON value");
        }
    return parse_root(root, uploads, n_uploads, lim, out, e);
}

static bool part_is(const mp_part *p, const char *name)
{
    return p->name_len == strlen(name) && !memcmp(p->name, name, p->name_len);
}

/* A scalar form field as JSON: a number, true, false or null as such, anything else as a string. */
static cJSON *field_value(const mp_part *p)
{
    const char *end = NULL;
    cJSON *v = cJSON_ParseWithLengthOpts(p->data, p->data_len, &end, 0);
    if (v && end == p->data + p->data_len && (cJSON_IsNumber(v) || cJSON_IsBool(v) || cJSON_IsNull(v)))
        return v;
    cJSON_Delete(v);
    char *s = malloc(p->data_len + 1);
    if (!s)
        return NULL;
    memcpy(s, p->data, p->data_len);
    s[p->data_len] = '\0';
    v = cJSON_CreateString(s);
    free(s);
    return v;
}

int chat_parse_form(const mp_part *parts, size_t n_parts, const chat_limits *lim, chat_req **out, api_error *e)
{
    const mp_part *request = NULL, *prompt = NULL;
    chat_upload *ups = calloc(n_parts ? n_parts : 1, sizeof *ups);
    size_t n_ups = 0;
    cJSON *root = NULL;
    int rc = -1;
    if (!ups)
        return api_error_set(e, 500, NULL, NULL, "out of memory");
    for (size_t i = 0; i < n_parts; i++) {
        if (part_is(&parts[i], "request")) {
            if (request)
                return free(ups), api_error_set(e, 400, "request", "invalid_value", "two 'request' fields");
            request = &parts[i];
        } else if (part_is(&parts[i], "prompt")) {
            if (prompt)
                return free(ups), api_error_set(e, 400, "prompt", "invalid_value", "two 'prompt' fields");
            prompt = &parts[i];
        }
    }
    if (request && prompt) {
        free(ups);
        return api_error_set(e, 400, "prompt", "invalid_value", "send either a 'request' field or a 'prompt' field");
    }
    if (request) {
        /* every other part is an upload */
        for (size_t i = 0; i < n_parts; i++) {
            if (&parts[i] == request)
                continue;
            if (!parts[i].filename) {
                char name[48];
                snprintf(name, sizeof name, "%.*s", (int)(parts[i].name_len < 40 ? parts[i].name_len : 40),
                         parts[i].name);
                free(ups);
                return api_error_set(e, 400, name, "invalid_value",
                                     "with a 'request' field, parameters go inside its JSON; '%s' is not a file", name);
            }
            ups[n_ups++] = (chat_upload){ parts[i].name, parts[i].name_len, parts[i].data, parts[i].data_len, 0 };
        }
        rc = chat_parse_json(request->data, request->data_len, ups, n_ups, lim, out, e);
        goto done;
    }
    if (!prompt) {
        free(ups);
        return api_error_set(e, 400, "prompt", "missing_parameter",
                             "a multipart request needs a 'prompt' field (with 'image' files) or a 'request' field");
    }
    root = cJSON_CreateObject();
    cJSON *msgs = cJSON_AddArrayToObject(root, "messages");
    cJSON *msg = cJSON_CreateObject();
    cJSON *content = cJSON_CreateArray();
    cJSON *stop = NULL;
    if (!msgs || !msg || !cJSON_AddItemToArray(msgs, msg) || !content) {
        cJSON_Delete(msg);
        cJSON_Delete(content);
        api_error_set(e, 500, NULL, NULL, "out of memory");
        goto done;
    }
    cJSON_AddStringToObject(msg, "role", "user");
    cJSON_AddItemToObject(msg, "content", content);
    for (size_t i = 0; i < n_parts; i++) {
        const mp_part *p = &parts[i];
        if (p == prompt)
            continue;
        if (part_is(p, "image")) {
            ups[n_ups++] = (chat_upload){ p->name, p->name_len, p->data, p->data_len, 0 };
            cJSON *ip = cJSON_CreateObject();
            cJSON_AddItemToArray(content, ip);
            cJSON_AddStringToObject(ip, "type", "image_url");
            cJSON_AddStringToObject(cJSON_AddObjectToObject(ip, "image_url"), "url", "upload:image");
            continue;
        }
        char name[48];
        snprintf(name, sizeof name, "%.*s", (int)(p->name_len < 40 ? p->name_len : 40), p->name);
        if (p->filename || !strcmp(name, "messages") || strlen(name) != p->name_len) {
            api_error_set(e, 400, name, "invalid_value",
                          "with a 'prompt' field, files must be named 'image' and '%s' cannot be a field", name);
            goto done;
        }
        if (utf8_valid_prefix(p->data, p->data_len) < p->data_len) {
            api_error_set(e, 400, name, "invalid_value", "the field '%s' is not valid UTF-8", name);
            goto done;
        }
        cJSON *v = field_value(p);
        if (!v) {
            api_error_set(e, 500, NULL, NULL, "out of memory");
            goto done;
        }
        if (!strcmp(name, "stop")) { /* repeated stop fields make the array */
            if (!stop)
                stop = cJSON_AddArrayToObject(root, "stop");
            cJSON_AddItemToArray(stop, v);
        } else if (cJSON_GetObjectItemCaseSensitive(root, name)) {
            cJSON_Delete(v);
            api_error_set(e, 400, name, "invalid_value", "the field '%s' is given twice", name);
            goto done;
        } else {
            cJSON_AddItemToObject(root, name, v);
        }
    }
    if (utf8_valid_prefix(prompt->data, prompt->data_len) < prompt->data_len) {
        api_error_set(e, 400, "prompt", "invalid_value", "the field 'prompt' is not valid UTF-8");
        goto done;
    }
    cJSON *tp = cJSON_CreateObject();
    cJSON_AddItemToArray(content, tp);
    cJSON_AddStringToObject(tp, "type", "text");
    char *text = malloc(prompt->data_len + 1);
    if (!text) {
        api_error_set(e, 500, NULL, NULL, "out of memory");
        goto done;
    }
    memcpy(text, prompt->data, prompt->data_len);
    text[prompt->data_len] = '\0';
    cJSON_AddStringToObject(tp, "text", text);
    free(text);
    rc = parse_root(root, ups, n_ups, lim, out, e);
    root = NULL;
done:
    cJSON_Delete(root);
    free(ups);
    return rc;
}

int chat_decode_images(chat_req *cr, const glimpse_model *m, const chat_limits *lim, api_error *e)
{
    if (cr->n_images == 0)
        return 0;
    cr->images = calloc(cr->n_images, sizeof *cr->images);
    if (!cr->images)
        return api_error_set(e, 500, NULL, NULL, "out of memory");
    for (size_t i = 0; i < cr->n_images; i++) {
        chat_image_src *src = &cr->src[i];
        glimpse_err err = { 0 };
        int rc = glimpse_image_decode(m, src->data, src->len, &lim->image, &cr->images[i], &err);
        if (rc == GLIMPSE_ENOMEM)
            return api_error_set(e, 500, NULL, NULL, "out of memory decoding an image");
        if (rc == GLIMPSE_ELIMIT)
            return api_error_set(e, 400, src->param, "image_too_large", "image %zu is too large: %s", i, err.msg);
        if (rc == GLIMPSE_EUNSUPPORTED)
            return api_error_set(e, 400, src->param, "unsupported_image", "image %zu cannot be used: %s", i, err.msg);
        if (rc < 0)
            return api_error_set(e, 400, src->param, "invalid_image",
                                 "image %zu is not a valid PNG or JPEG image: %s", i, err.msg);
        free(src->owned);
        src->owned = NULL;
        src->data = NULL;
    }
    cr->req.images = (const glimpse_image *const *)cr->images;
    cr->req.n_images = cr->n_images;
    return 0;
}

void chat_req_free(chat_req *cr)
{
    if (!cr)
        return;
    for (size_t i = 0; i < cr->n_images; i++) {
        if (cr->src)
            free(cr->src[i].owned);
        if (cr->images)
            glimpse_image_free(cr->images[i]);
    }
    /* a data: URI decoded before a later error is not counted in n_images */
    if (cr->src && cr->src[cr->n_images].owned)
        free(cr->src[cr->n_images].owned);
    free(cr->src);
    free(cr->images);
    free(cr->parts);
    free(cr->messages);
    cJSON_Delete(cr->root);
    free(cr);
}

/* ---- responses ------------------------------------------------------------------- */

typedef struct out_choice {
    sbuf text;      /* non-streaming: the whole answer */
    cJSON *lp;      /* non-streaming with logprobs: the logprobs.content array */
    int finish;     /* enum glimpse_finish, once ended */
    int started;    /* streaming: the role chunk was sent */
    int completion_tokens;
} out_choice;

struct chat_out {
    const chat_req *cr;
    char id[48];
    double created;
    char *model;
    out_choice *ch;      /* [cr->n] */
    int prompt_tokens, image_tokens;
    int oom;
};

chat_out *chat_out_new(const chat_req *cr, const char *model_id)
{
    chat_out *o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    o->cr = cr;
    o->ch = calloc((size_t)cr->n, sizeof *o->ch);
    o->model = strdup(model_id);
    if (!o->ch || !o->model) {
        chat_out_free(o);
        return NULL;
    }
    unsigned char rnd[12];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        memset(rnd, 0, sizeof rnd);
    int n = snprintf(o->id, sizeof o->id, "chatcmpl-");
    for (size_t i = 0; i < sizeof rnd; i++)
        n += snprintf(o->id + n, sizeof o->id - (size_t)n, "%02x", rnd[i]);
    o->created = (double)time(NULL);
    return o;
}

void chat_out_free(chat_out *o)
{
    if (!o)
        return;
    for (int i = 0; o->ch && i < o->cr->n; i++) {
        sbuf_free(&o->ch[i].text);
        cJSON_Delete(o->ch[i].lp);
    }
    free(o->ch);
    free(o->model);
    free(o);
}

void chat_out_usage(const chat_out *o, int *prompt, int *completion, int *image)
{
    int c = 0;
    for (int i = 0; i < o->cr->n; i++)
        c += o->ch[i].completion_tokens;
    *prompt = o->prompt_tokens;
    *completion = c;
    *image = o->image_tokens;
}

static const char *finish_name(int f)
{
    return f == GLIMPSE_FINISH_LENGTH ? "length" : "stop";
}

/* A logprob as a finite number: OpenAI reports -9999 for impossible tokens. */
static double finite_lp(float v)
{
    return isfinite(v) ? (double)v : -9999.0;
}

/* {"token","logprob","bytes"} for one piece. NULL on OOM. */
static cJSON *lp_item(const char *piece, size_t len, float logprob)
{
    cJSON *o = cJSON_CreateObject();
    char *tok = utf8_clean(piece, len);
    cJSON *bytes = cJSON_CreateArray();
    if (!o || !tok || !bytes) {
        cJSON_Delete(o);
        cJSON_Delete(bytes);
        free(tok);
        return NULL;
    }
    cJSON_AddStringToObject(o, "token", tok);
    free(tok);
    cJSON_AddNumberToObject(o, "logprob", finite_lp(logprob));
    for (size_t i = 0; i < len; i++)
        cJSON_AddItemToArray(bytes, cJSON_CreateNumber((unsigned char)piece[i]));
    cJSON_AddItemToObject(o, "bytes", bytes);
    return o;
}

/* The logprobs.content entry of a token event, with its alternatives. */
static cJSON *lp_entry(const gq_events *e, const gq_event *ev)
{
    cJSON *o = lp_item(e->bytes + ev->piece_off, ev->piece_len, ev->logprob);
    cJSON *top = cJSON_AddArrayToObject(o, "top_logprobs");
    if (!top) {
        cJSON_Delete(o);
        return NULL;
    }
    for (int i = 0; i < ev->n_top; i++) {
        const gq_top *t = &e->tops[ev->top_off + (size_t)i];
        cJSON *a = lp_item(e->bytes + t->piece_off, t->piece_len, t->logprob);
        if (!a) {
            cJSON_Delete(o);
            return NULL;
        }
        cJSON_AddItemToArray(top, a);
    }
    return o;
}

static void note_end(chat_out *o, const gq_event *ev)
{
    out_choice *c = &o->ch[ev->choice];
    c->finish = ev->res.finish_reason;
    c->completion_tokens = ev->res.completion_tokens;
    o->prompt_tokens = ev->res.prompt_tokens;
    o->image_tokens = ev->res.image_tokens;
}

int chat_out_add(chat_out *o, const gq_events *e)
{
    for (size_t i = 0; i < e->n_ev; i++) {
        const gq_event *ev = &e->ev[i];
        if (ev->choice < 0 || ev->choice >= o->cr->n)
            continue;
        out_choice *c = &o->ch[ev->choice];
        if (ev->type == GQ_EV_END) {
            note_end(o, ev);
            continue;
        }
        sbuf_put(&c->text, e->bytes + ev->text_off, ev->text_len);
        if (o->cr->logprobs && ev->id != GLIMPSE_TOKEN_NONE) {
            if (!c->lp && !(c->lp = cJSON_CreateArray()))
                return -1;
            cJSON *it = lp_entry(e, ev);
            if (!it || !cJSON_AddItemToArray(c->lp, it)) {
                cJSON_Delete(it);
                return -1;
            }
        }
        if (c->text.oom)
            return -1;
    }
    return 0;
}

static cJSON *usage_json(const chat_out *o)
{
    int p, c, img;
    chat_out_usage(o, &p, &c, &img);
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", p);
    cJSON_AddNumberToObject(u, "completion_tokens", c);
    cJSON_AddNumberToObject(u, "total_tokens", (double)p + c);
    cJSON *pd = cJSON_AddObjectToObject(u, "prompt_tokens_details");
    cJSON_AddNumberToObject(pd, "cached_tokens", 0);
    cJSON_AddNumberToObject(pd, "image_tokens", img);
    return u;
}

/* The fields every response object starts with. */
static cJSON *envelope(const chat_out *o, const char *object)
{
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "id", o->id);
    cJSON_AddStringToObject(r, "object", object);
    cJSON_AddNumberToObject(r, "created", o->created);
    cJSON_AddStringToObject(r, "model", o->model);
    cJSON_AddStringToObject(r, "system_fingerprint", "glimpse-" PACKAGE_VERSION);
    return r;
}

char *chat_out_json(chat_out *o, size_t *len)
{
    cJSON *r = envelope(o, "chat.completion");
    cJSON *choices = cJSON_AddArrayToObject(r, "choices");
    for (int i = 0; i < o->cr->n && choices; i++) {
        out_choice *c = &o->ch[i];
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddItemToArray(choices, ch);
        cJSON_AddNumberToObject(ch, "index", i);
        cJSON *msg = cJSON_AddObjectToObject(ch, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        char *text = utf8_clean(c->text.p ? c->text.p : "", c->text.len);
        if (!text)
            o->oom = 1;
        cJSON_AddStringToObject(msg, "content", text ? text : "");
        free(text);
        cJSON_AddNullToObject(msg, "refusal");
        if (o->cr->logprobs) {
            cJSON *lp = cJSON_AddObjectToObject(ch, "logprobs");
            cJSON_AddItemToObject(lp, "content", c->lp ? c->lp : cJSON_CreateArray());
            c->lp = NULL;
            cJSON_AddNullToObject(lp, "refusal");
        } else {
            cJSON_AddNullToObject(ch, "logprobs");
        }
        cJSON_AddStringToObject(ch, "finish_reason", finish_name(c->finish));
    }
    cJSON_AddItemToObject(r, "usage", usage_json(o));
    char *s = o->oom ? NULL : print_json(r, len);
    cJSON_Delete(r);
    return s;
}

/* Appends "data: <json>\n\n" and frees the object. */
static void emit(chat_out *o, sbuf *out, cJSON *obj)
{
    char *s = print_json(obj, NULL);
    cJSON_Delete(obj);
    if (!s) {
        o->oom = 1;
        out->oom = 1;
        return;
    }
    sbuf_str(out, "data: ");
    sbuf_str(out, s);
    sbuf_str(out, "\n\n");
    free(s);
}

/* A chunk with one choice; returns the choice object to fill its delta. */
static cJSON *chunk(const chat_out *o, int index, cJSON **root)
{
    cJSON *r = envelope(o, "chat.completion.chunk");
    cJSON *choices = cJSON_AddArrayToObject(r, "choices");
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, ch);
    cJSON_AddNumberToObject(ch, "index", index);
    if (o->cr->include_usage)
        cJSON_AddNullToObject(r, "usage");
    *root = r;
    return ch;
}

void chat_out_stream(chat_out *o, const gq_events *e, sbuf *out)
{
    for (size_t i = 0; i < e->n_ev; i++) {
        const gq_event *ev = &e->ev[i];
        if (ev->choice < 0 || ev->choice >= o->cr->n)
            continue;
        out_choice *c = &o->ch[ev->choice];
        cJSON *r, *ch;
        if (!c->started) { /* OpenAI's first chunk of a choice carries the role alone */
            ch = chunk(o, ev->choice, &r);
            cJSON *d = cJSON_AddObjectToObject(ch, "delta");
            cJSON_AddStringToObject(d, "role", "assistant");
            cJSON_AddStringToObject(d, "content", "");
            cJSON_AddNullToObject(ch, "logprobs");
            cJSON_AddNullToObject(ch, "finish_reason");
            emit(o, out, r);
            c->started = 1;
        }
        if (ev->type == GQ_EV_END) {
            note_end(o, ev);
            ch = chunk(o, ev->choice, &r);
            cJSON_AddObjectToObject(ch, "delta");
            cJSON_AddNullToObject(ch, "logprobs");
            cJSON_AddStringToObject(ch, "finish_reason", finish_name(ev->res.finish_reason));
            emit(o, out, r);
            continue;
        }
        bool lp = o->cr->logprobs && ev->id != GLIMPSE_TOKEN_NONE;
        if (ev->text_len == 0 && !lp) /* bytes held back (a UTF-8 tail or a stop-string prefix) */
            continue;
        ch = chunk(o, ev->choice, &r);
        cJSON *d = cJSON_AddObjectToObject(ch, "delta");
        char *text = utf8_clean(e->bytes + ev->text_off, ev->text_len);
        cJSON_AddStringToObject(d, "content", text ? text : "");
        if (!text)
            o->oom = 1;
        free(text);
        if (lp) {
            cJSON *l = cJSON_AddObjectToObject(ch, "logprobs");
            cJSON *content = cJSON_AddArrayToObject(l, "content");
            cJSON *it = lp_entry(e, ev);
            if (!it)
                o->oom = 1;
            cJSON_AddItemToArray(content, it);
            cJSON_AddNullToObject(l, "refusal");
        } else {
            cJSON_AddNullToObject(ch, "logprobs");
        }
        cJSON_AddNullToObject(ch, "finish_reason");
        emit(o, out, r);
    }
}

void chat_out_stream_end(chat_out *o, sbuf *out)
{
    if (o->cr->include_usage) {
        cJSON *r = envelope(o, "chat.completion.chunk");
        cJSON_AddArrayToObject(r, "choices");
        cJSON_AddItemToObject(r, "usage", usage_json(o));
        emit(o, out, r);
    }
    sbuf_str(out, "data: [DONE]\n\n");
}
