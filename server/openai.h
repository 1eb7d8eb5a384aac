/*
 * openai.h — the OpenAI chat-completions dialect: request JSON (or a
 * multipart form) to an engine request, engine events to chat.completion
 * JSON or chat.completion.chunk SSE events, and OpenAI-shaped errors.
 *
 * No HTTP here, so check_openai runs it without a server. Any thread; the
 * objects are not shared between threads.
 */
#ifndef GLIMPSE_OPENAI_H
#define GLIMPSE_OPENAI_H

#include "glimpse.h"
#include "multipart.h"
#include "queue.h"
#include "sbuf.h"

#include <cjson/cJSON.h>
#include <stddef.h>

/* ---- errors ------------------------------------------------------------------ */

/* An error answer: {"error":{"message","type","param","code"}} with status. */
typedef struct api_error {
    int status;        /* HTTP status */
    const char *type;  /* OpenAI's error type, static: derived from status */
    const char *code;  /* static machine-readable code, or NULL (JSON null) */
    char param[128];   /* the offending parameter ("messages[0].content"), or "" (null) */
    char message[512];
} api_error;

/* Fills *e and returns -1, so that callers can `return api_error_set(...)`.
 * param and code may be NULL. */
int api_error_set(api_error *e, int status, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* The error's JSON object. Owned, free with free(); NULL on OOM. */
char *api_error_json(const api_error *e, size_t *len);

/* ---- requests ----------------------------------------------------------------- */

typedef struct chat_limits {
    size_t max_images;           /* images per request */
    size_t max_prompt_bytes;     /* bytes of text over all messages */
    int max_n;                   /* choices per request */
    int max_queue;               /* sequences the engine's queue holds (one per choice); a
                                  * request of more choices can never be queued: 0 = no check */
    glimpse_image_limits image;  /* pixels per image, checked while decoding */
} chat_limits;

/* A file part of a multipart request, referenced as "upload:<name>"; several
 * references to one name take that name's parts in order. Borrowed. */
typedef struct chat_upload {
    const char *name;
    size_t name_len;
    const char *data;
    size_t len;
    int used;          /* parse: how many references took a part of this name */
} chat_upload;

/* One image of a request before decoding: bytes of a data: URI (owned) or of
 * an upload (borrowed from the body). */
typedef struct chat_image_src {
    unsigned char *owned;
    const unsigned char *data;
    size_t len;
    char param[128];   /* where it was in the request, for error messages */
} chat_image_src;

typedef struct chat_req {
    glimpse_request req;   /* messages, images, sampling, max_tokens, stop: all owned here */
    int n;                 /* choices, 1..limits.max_n */
    int seed_given;        /* 0: req.sampling.seed was drawn at random */
    int stream;
    int include_usage;     /* stream_options.include_usage */
    int logprobs;
    int top_logprobs;
    const char *model;     /* the requested model name or NULL; borrowed from root */

    cJSON *root;           /* the parsed request; every string above points into it */
    glimpse_message *messages;
    glimpse_part *parts;
    chat_image_src *src;   /* [n_images], until chat_decode_images */
    glimpse_image **images;/* [n_images], filled by chat_decode_images */
    size_t n_images;
} chat_req;

/* Parses and validates a JSON request body. uploads (may be NULL) are the
 * file parts "upload:<name>" URLs may reference; they must outlive the
 * request until chat_decode_images. On success *out is owned, free with
 * chat_req_free. On failure returns -1 with *e filled (4xx). */
int chat_parse_json(const char *body, size_t len, chat_upload *uploads, size_t n_uploads, const chat_limits *lim,
                    chat_req **out, api_error *e);

/* Parses a multipart form: either a field "request" with a JSON body whose
 * image URLs may be "upload:<name>", or a field "prompt" with file fields
 * "image" (one user message: the images, then the prompt) and any scalar
 * parameter as a field (numbers, true/false as JSON, anything else as a string).
 * The parts must outlive the request until chat_decode_images. */
int chat_parse_form(const mp_part *parts, size_t n_parts, const chat_limits *lim, chat_req **out, api_error *e);

/* Decodes every image for m (glimpse_image_decode), then drops the encoded
 * bytes. Bad or oversized images are 400s. */
int chat_decode_images(chat_req *cr, const glimpse_model *m, const chat_limits *lim, api_error *e);

/* Accepts NULL. */
void chat_req_free(chat_req *cr);

/* Decodes standard base64 (padding optional, no whitespace) into out, which
 * holds at least len / 4 * 3 + 3 bytes. Returns the decoded length or -1 on
 * an invalid character or length. Exposed for check_openai. */
long base64_decode(const char *in, size_t len, unsigned char *out);

/* ---- responses ----------------------------------------------------------------- */

typedef struct chat_out chat_out;

/* A response under construction for cr (which must outlive it), named
 * model_id. Owned, free with chat_out_free. NULL on OOM. */
chat_out *chat_out_new(const chat_req *cr, const char *model_id);
void chat_out_free(chat_out *o);

/* Non-streaming: folds the events into the choices. -1 on OOM. */
int chat_out_add(chat_out *o, const gq_events *ev);

/* The chat.completion object after the job ended well. Owned, free with
 * free(); NULL on OOM. */
char *chat_out_json(chat_out *o, size_t *len);

/* Streaming: appends the SSE events ("data: {chunk}\n\n") for ev to out. */
void chat_out_stream(chat_out *o, const gq_events *ev, sbuf *out);

/* Streaming, after the job ended well: the usage chunk when asked, then
 * "data: [DONE]". */
void chat_out_stream_end(chat_out *o, sbuf *out);

/* Usage totals so far (for metrics): prompt and completion tokens, image tokens. */
void chat_out_usage(const chat_out *o, int *prompt, int *completion, int *image);

/* Maps an engine failure to an API error (400 for input the model cannot
 * take, 500 otherwise). */
void api_error_from_engine(api_error *e, int rc, const glimpse_err *err);

#endif /* GLIMPSE_OPENAI_H */
