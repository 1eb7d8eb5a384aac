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

#ifdef __cplusplus
}
#endif

#endif /* GLIMPSE_H */
