/*
 * glimpse.h — the one public header of libglimpse, the Glimpse inference engine.
 *
 * The engine knows nothing of HTTP or JSON. Everything here is plain C11.
 *
 * Conventions (see shared STYLE.md):
 *  - Functions return 0 or a negative GLIMPSE_E* code; on failure they fill the
 *    caller's glimpse_err (which may be NULL) with a human-readable message.
 *  - Every pointer a function returns says who owns it. Every *_free accepts NULL.
 *  - Every function says which thread may call it.
 */
#ifndef GLIMPSE_H
#define GLIMPSE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ------------------------------------------------------------ */

enum glimpse_status {
    GLIMPSE_OK = 0,
    GLIMPSE_EINVAL = -1,       /* bad argument or bad input from a request */
    GLIMPSE_ENOMEM = -2,       /* allocation failed */
    GLIMPSE_EIO = -3,          /* file could not be opened, read or mapped */
    GLIMPSE_EFORMAT = -4,      /* malformed file or data (GGUF, image, ...) */
    GLIMPSE_EUNSUPPORTED = -5, /* well-formed but not supported (type, arch) */
    GLIMPSE_ELIMIT = -6,       /* a configured limit would be exceeded */
    GLIMPSE_ENOTFOUND = -7,    /* a key, tensor or token is absent */
    GLIMPSE_ECANCELED = -8,    /* the caller cancelled the operation */
    GLIMPSE_EBUSY = -9,        /* the request queue is full: retry later (HTTP 429) */
    GLIMPSE_ESHUTDOWN = -10,   /* the model is shutting down and takes no requests (HTTP 503) */
};

#define GLIMPSE_ERR_MSG_LEN 256

typedef struct glimpse_err {
    int code;                       /* one of enum glimpse_status */
    char msg[GLIMPSE_ERR_MSG_LEN];  /* NUL-terminated, for humans */
} glimpse_err;

/* Returns a static string naming a status code ("invalid argument", ...). Any thread. */
const char *glimpse_status_str(int code);

/* ---- logging ----------------------------------------------------------- */

enum glimpse_log_level {
    GLIMPSE_LOG_ERROR = 0,
    GLIMPSE_LOG_WARN = 1,
    GLIMPSE_LOG_INFO = 2,
    GLIMPSE_LOG_DEBUG = 3,
};

typedef void (*glimpse_log_fn)(int level, const char *msg, void *user);

/* Sets the process-wide log sink and the most verbose level passed to it.
 * The default writes WARN and above to stderr. Call before any other function;
 * the callback may be invoked from any engine thread. */
void glimpse_log_set(glimpse_log_fn fn, int max_level, void *user);

/* ---- sampling (engine/sampler.c) ---------------------------------------- */

#define GLIMPSE_MAX_TOP_LOGPROBS 20 /* OpenAI's limit on top_logprobs */

/* How a request's next token is chosen. The stages run in llama.cpp's default
 * order: penalties -> top-k -> top-p -> min-p -> temperature -> draw. Each
 * stage has an "off" value; glimpse_sampling_default sets every stage off
 * except temperature 1 (OpenAI's defaults). Validated when a sampler is made. */
typedef struct glimpse_sampling {
    float temperature;        /* >= 0; 0 = greedy (argmax after penalties) */
    int32_t top_k;            /* >= 0; keep the k likeliest; 0 = off */
    float top_p;              /* [0,1]; smallest set with mass >= top_p; 1 = off */
    float min_p;              /* [0,1]; keep p >= min_p * p_max; 0 = off */
    float repetition_penalty; /* > 0; CTRL style, as llama.cpp; 1 = off */
    float frequency_penalty;  /* OpenAI: logit -= count * frequency_penalty; 0 = off */
    float presence_penalty;   /* OpenAI: logit -= (count > 0) * presence_penalty; 0 = off */
    int32_t penalty_last_n;   /* penalties count the last N tokens (default 64); 0 = off */
    uint64_t seed;            /* same seed and same logits give the same tokens */
    int32_t n_top_logprobs;   /* alternatives reported per token, 0..GLIMPSE_MAX_TOP_LOGPROBS */
} glimpse_sampling;

/* Fills *p with the defaults above (seed 0: the caller picks a random seed
 * when a request gives none). Any thread. */
void glimpse_sampling_default(glimpse_sampling *p);

/* Why a sequence ended, as OpenAI's finish_reason. */
enum glimpse_finish {
    GLIMPSE_FINISH_NONE = 0,   /* still generating */
    GLIMPSE_FINISH_STOP = 1,   /* end-of-generation token or stop string: "stop" */
    GLIMPSE_FINISH_LENGTH = 2, /* max_tokens reached: "length" */
};

/* ---- models (engine/model.c) --------------------------------------------- */

/* A loaded model: the mapped weights, tokenizer, KV cache, compute scratch and
 * the thread pool, all created by glimpse_model_load; nothing is allocated
 * per token afterwards. */
typedef struct glimpse_model glimpse_model;

enum glimpse_kv_type {
    GLIMPSE_KV_F16 = 0, /* keys and values stored as half, like llama.cpp (default) */
    GLIMPSE_KV_F32 = 1, /* exact float32 cache, for comparisons with a float reference */
};

typedef struct glimpse_model_params {
    const char *model_path;  /* text GGUF (general.architecture = llama); required */
    const char *mmproj_path; /* vision projector GGUF, or NULL (text only) */
    int n_threads;           /* compute threads; 0 = the number of online CPUs */
    int n_ctx;               /* positions a generation may use (prompt + output);
                              * 0 = min(the model's context_length, 4096) */
    int n_batch;             /* entries per forward pass: the step's token budget, shared by
                              * one decode token per running sequence and prompt chunks;
                              * 0 = 256, raised to n_parallel + 16 */
    int kv_type;             /* enum glimpse_kv_type */
    /* scheduling (engine/scheduler.c); see "serving many requests" below */
    int n_parallel;          /* sequences generated together; 0 = 4 */
    int kv_cache_mb;         /* KV pool in MiB; 0 = room for n_ctx x n_parallel positions.
                              * Never less than one full context. */
    int max_queue;           /* requests waiting for admission before GLIMPSE_EBUSY; 0 = 64 */
    int image_cache_mb;      /* image embeddings kept by content hash; 0 = 64, -1 = off */
} glimpse_model_params;

/* Fills *p with the defaults (all zero / F16, no paths). Any thread. */
void glimpse_model_params_default(glimpse_model_params *p);

/* Loads a model. On success *out is owned by the caller, free with
 * glimpse_model_free. Any thread; the files must not change while loaded. */
int glimpse_model_load(const glimpse_model_params *p, glimpse_model **out, glimpse_err *err);

/* Stops the model's engine thread and frees everything of the model.
 * Accepts NULL. Every job must have been freed (glimpse_job_free) first. */
void glimpse_model_free(glimpse_model *m);

typedef struct glimpse_model_info {
    const char *name;          /* general.name, else the file's base name; borrowed, valid until free */
    const char *chat_template; /* "smolvlm" or "chatml": how messages are rendered; static */
    int n_vocab;
    int n_embd;
    int n_layer;
    int n_head;
    int n_head_kv;
    int n_ctx_train;           /* the model's context_length */
    int n_ctx;                 /* positions one generation may use */
    int n_threads;
    int n_parallel;            /* sequences generated together */
    int has_vision;            /* 1 when an mmproj is loaded */
    double load_ms;            /* wall time of glimpse_model_load */
} glimpse_model_info;

/* Fills *out. Any thread, while the model is alive. */
void glimpse_model_info_get(const glimpse_model *m, glimpse_model_info *out);

/* ---- images (engine/image.c, engine/vision.c) ------------------------------ */

/* An image decoded and preprocessed for one model's vision encoder: the tiles
 * the encoder will run on and the prompt positions it will take. */
typedef struct glimpse_image glimpse_image;

typedef struct glimpse_image_limits {
    int max_width;   /* pixels per side; 0 = 16384 */
    int max_height;
    int64_t max_pixels; /* width * height; 0 = 40 megapixels */
} glimpse_image_limits;

/* Decodes a JPEG or PNG (detected from the bytes; EXIF orientation applied,
 * alpha composited on white) and preprocesses it for m's vision encoder.
 * The limits are checked from the header before any pixel is allocated.
 * Errors: GLIMPSE_EFORMAT (corrupt or not an image), GLIMPSE_EUNSUPPORTED
 * (e.g. 12-bit JPEG, or m has no vision encoder), GLIMPSE_ELIMIT, GLIMPSE_ENOMEM.
 * On success *out is owned by the caller, free with glimpse_image_free.
 * Any thread, concurrently: HTTP threads decode while the engine runs. */
int glimpse_image_decode(const glimpse_model *m, const void *data, size_t len, const glimpse_image_limits *lim,
                         glimpse_image **out, glimpse_err *err);
void glimpse_image_free(glimpse_image *img);

/* The decoded size, and the prompt positions (embeddings + wrapper tokens)
 * the image will occupy. Any thread. */
int glimpse_image_width(const glimpse_image *img);
int glimpse_image_height(const glimpse_image *img);
int glimpse_image_n_tokens(const glimpse_image *img);

/* ---- generation (engine/generate.c) -------------------------------------- */

#define GLIMPSE_MAX_STOP 4        /* stop strings per request, like OpenAI */
#define GLIMPSE_MAX_STOP_LEN 128  /* bytes per stop string */

enum glimpse_part_type {
    GLIMPSE_PART_TEXT = 0,
    GLIMPSE_PART_IMAGE = 1,  /* an image slot; needs a model with an mmproj */
};

/* One item of a message's content. */
typedef struct glimpse_part {
    int type;                /* enum glimpse_part_type */
    const char *text;        /* TEXT: NUL-terminated UTF-8 */
    int image;               /* IMAGE: index into the request's images */
} glimpse_part;

typedef struct glimpse_message {
    const char *role;        /* "system", "user", "assistant" (others are rendered by name) */
    const glimpse_part *parts;
    size_t n_parts;
} glimpse_message;

/* An alternative token at one step. */
typedef struct glimpse_top_logprob {
    int32_t id;
    const char *piece;       /* the token's bytes (not NUL-terminated; may be part of a UTF-8 character) */
    size_t piece_len;
    float logprob;
} glimpse_top_logprob;

/* What the token callback receives for each generated token. All pointers are
 * borrowed and valid only during the callback. */
typedef struct glimpse_token {
    int32_t id;                     /* token id; GLIMPSE_TOKEN_NONE for the final flush */
    const char *piece;              /* this token's own bytes, as the tokenizer decodes it */
    size_t piece_len;
    const char *text;               /* text released to the reader by this event: complete UTF-8,
                                     * stop strings cut, held-back bytes released later */
    size_t text_len;
    float logprob;                  /* log-probability of id under the model's distribution */
    const glimpse_top_logprob *top; /* [n_top] likeliest alternatives, best first */
    int n_top;
} glimpse_token;

#define GLIMPSE_TOKEN_NONE (-1)

/* Called for every token, then once with id == GLIMPSE_TOKEN_NONE when text
 * was still held back at the end (an incomplete UTF-8 tail or a possible
 * stop-string prefix). Return 0 to go on, non-zero to cancel: the request
 * then ends with GLIMPSE_ECANCELED. It runs on the model's engine thread,
 * between two steps of every sequence: it must be quick (copy the event and
 * return) and must not call any glimpse function on the same model. */
typedef int (*glimpse_token_fn)(const glimpse_token *tok, void *user);

/* Called once when a submitted request ends (finished, failed or
 * cancelled) with what glimpse_job_wait returns: after it, no callback of
 * the request runs and glimpse_job_wait/glimpse_job_free return at once.
 * res is filled for rc 0 and GLIMPSE_ECANCELED, err for rc < 0. Same rules
 * as on_token (engine thread; quick; no glimpse call on the same model). */
struct glimpse_result; /* below */
typedef void (*glimpse_done_fn)(int rc, const struct glimpse_result *res, const glimpse_err *err, void *user);

typedef struct glimpse_request {
    const glimpse_message *messages; /* rendered with the model's chat template */
    size_t n_messages;
    const char *prompt;              /* raw prompt: when not NULL, used as is instead of messages */
    const glimpse_image *const *images; /* [n_images], borrowed for the call; GLIMPSE_PART_IMAGE
                                      * parts index them (a raw prompt puts them first, in order) */
    size_t n_images;
    glimpse_sampling sampling;
    int max_tokens;                  /* >= 1; 0 = until the context is full */
    const char *stop[GLIMPSE_MAX_STOP]; /* NULL-padded */
    glimpse_token_fn on_token;       /* may be NULL */
    void *user;                      /* passed to on_token and on_done */
    glimpse_done_fn on_done;         /* may be NULL */
} glimpse_request;

/* Fills *r with defaults: no messages, default sampling, max_tokens 0, no stops. */
void glimpse_request_default(glimpse_request *r);

typedef struct glimpse_result {
    int finish_reason;        /* enum glimpse_finish */
    int prompt_tokens;
    int completion_tokens;
    int image_tokens;         /* prompt positions taken by images (included in prompt_tokens) */
    double load_ms;           /* the model's load time, for reports */
    double image_encode_ms;   /* vision encoder and projector, all images */
    double prefill_ms;        /* prompt evaluation */
    double decode_ms;         /* generation after the first token's logits */
} glimpse_result;

/* Runs one request to its end: renders and tokenizes the prompt, evaluates it,
 * then samples and reports tokens through req->on_token until an end-of-
 * generation token, a stop string, max_tokens or the context's end.
 * *res is filled on success and on GLIMPSE_ECANCELED.
 * It is glimpse_submit + glimpse_job_wait + glimpse_job_free: any thread,
 * any number at once (they are batched together); errors as glimpse_submit's. */
int glimpse_generate(glimpse_model *m, const glimpse_request *req, glimpse_result *res, glimpse_err *err);

/* ---- serving many requests (engine/scheduler.c) ------------------------------
 *
 * Every model runs one engine thread, started by glimpse_model_load, which
 * serves all requests together (continuous batching): each step it admits
 * waiting requests in FIFO order while KV cache blocks are free, encodes
 * pending image tiles, evaluates a chunk of waiting prompts under a per-step
 * token budget, and decodes one token of every running sequence in one
 * forward pass. A request's tokens do not depend on what else runs (the
 * same request and seed give the same tokens alone or in any batch).
 * Prompt prefixes (the same system prompt, image or conversation history)
 * are reused from the KV cache, and image embeddings from an image cache,
 * both keyed by content and evicted least-recently-used.
 */

/* A submitted request. */
typedef struct glimpse_job glimpse_job;

/* Prepares req (template, tokenizer, image layouts: on the calling thread)
 * and queues it. On success *out is owned by the caller: wait for it with
 * glimpse_job_wait, then free it with glimpse_job_free. req and everything
 * it points to may be freed after the call, except req->images, which are
 * borrowed until the job is freed; on_token runs on the engine thread.
 * Errors: GLIMPSE_EINVAL (bad request), GLIMPSE_ELIMIT (the prompt can
 * never fit the context: "context_length_exceeded"), GLIMPSE_EUNSUPPORTED
 * (images without an mmproj), GLIMPSE_EBUSY (queue full: retry later),
 * GLIMPSE_ESHUTDOWN, GLIMPSE_ENOMEM. Any thread. */
int glimpse_submit(glimpse_model *m, const glimpse_request *req, glimpse_job **out, glimpse_err *err);

/* Blocks until the job ends; returns its status (0, GLIMPSE_ECANCELED, or an
 * engine error) and fills *res (on 0 and GLIMPSE_ECANCELED) and *err. Any
 * thread, while the job is not freed. */
int glimpse_job_wait(glimpse_job *j, glimpse_result *res, glimpse_err *err);

/* Asks the engine to end the job at its next step (or to drop it while it
 * waits); its KV blocks return to the pool. Any thread, non-blocking. */
void glimpse_job_cancel(glimpse_job *j);

/* Non-zero while the job waits for admission (queued, or sent back to the
 * queue when the KV cache ran out). Any thread, non-blocking. */
int glimpse_job_waiting(glimpse_job *j);

/* Cancels the job if it has not ended, waits for it and frees it.
 * Accepts NULL. Any thread, once per job. */
void glimpse_job_free(glimpse_job *j);

/* From now on glimpse_submit fails with GLIMPSE_ESHUTDOWN; admitted and
 * queued requests still run to their end (draining). Any thread. */
void glimpse_shutdown(glimpse_model *m);

/* A histogram: count[i] observations in (le[i-1], le[i]]; le[GLIMPSE_HIST_N-1]
 * is +infinity. Counts are per bucket, not cumulative. */
#define GLIMPSE_HIST_N 14
typedef struct glimpse_hist {
    double le[GLIMPSE_HIST_N];
    uint64_t count[GLIMPSE_HIST_N];
    uint64_t n;
    double sum;
} glimpse_hist;

typedef struct glimpse_stats {
    int running;                 /* admitted sequences (encoding, prefilling or decoding) */
    int waiting;                 /* queued, not admitted */
    int n_parallel;              /* most sequences running at once */
    int max_queue;
    double kv_usage;             /* blocks held by sequences / pool blocks, 0..1 */
    int kv_blocks;               /* pool size in blocks */
    int kv_block_size;           /* positions per block */
    int kv_cached_blocks;        /* blocks registered in the prefix cache */
    uint64_t prefix_queries;     /* full prompt blocks looked up in the prefix cache */
    uint64_t prefix_hits;        /* of which were found (their prefill was skipped) */
    uint64_t image_queries;      /* images looked up in the image-embedding cache */
    uint64_t image_hits;         /* of which were found (the vision encoder was skipped) */
    uint64_t preemptions;        /* sequences sent back to the queue when KV ran out */
    uint64_t requests_done;      /* ended normally */
    uint64_t requests_cancelled;
    uint64_t requests_failed;
    uint64_t steps;              /* forward passes */
    uint64_t tokens_generated;
    uint64_t prompt_tokens_computed; /* prompt positions evaluated (cache hits excluded) */
    glimpse_hist batch_size;     /* entries per forward pass */
    glimpse_hist ttft_s;         /* submit -> first token, seconds */
    glimpse_hist itl_s;          /* between two tokens of one sequence, seconds */
    glimpse_hist queue_s;        /* submit -> admission, seconds */
} glimpse_stats;

/* A snapshot of the scheduler's counters, for /metrics. Any thread. */
void glimpse_stats_get(const glimpse_model *m, glimpse_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* GLIMPSE_H */
