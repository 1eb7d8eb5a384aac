/*
 * sampler.h — the last step of the Output Block: logits -> next token, with its
 * logprob and the likeliest alternatives; and the stop rules that end a
 * sequence (end-of-generation tokens, stop strings, max_tokens).
 *
 * Objects and threads:
 *  - sampler: one per sequence, made from the request's glimpse_sampling. It
 *    owns the random generator and the penalty window (the last N tokens).
 *  - sampler_scratch: per-call working memory sized to the vocabulary, owned by
 *    the thread that samples and shared by all the sequences it samples, so a
 *    sequence costs O(penalty window) memory, not O(n_vocab).
 *  - stop_matcher: a plain struct, one per sequence; it never allocates.
 * None of them locks: each object is used by one thread at a time; distinct
 * objects may be used concurrently. Nothing allocates per token.
 *
 * The stages run in llama.cpp's default chain order (common/sampling.cpp):
 * penalties -> top-k -> top-p -> min-p -> temperature -> draw, with its
 * semantics: top-p keeps the shortest prefix of the tokens sorted by
 * probability whose mass reaches top_p (the crossing token included); min-p
 * keeps the tokens with p >= min_p * p_max; both look at the distribution left
 * by the earlier stages at temperature 1. Temperature 0 is greedy: the argmax
 * of the penalised logits, ties going to the lowest id.
 *
 * Logprobs are the model's own: log-softmax of the raw logits, before
 * penalties, filters and temperature — what OpenAI reports and what
 * llama-server reports by default. They are computed in double (log-sum-exp).
 */
#ifndef GLIMPSE_SAMPLER_H
#define GLIMPSE_SAMPLER_H

#include "internal.h"

/* Longest penalty window accepted (tokens); bounds a request's allocation. */
#define SAMPLER_MAX_PENALTY_WINDOW (1 << 20)

/* ---- random numbers ------------------------------------------------------ */

/* xoshiro256** (Blackman & Vigna), seeded by expanding a 64-bit seed with
 * splitmix64 as its authors recommend. Plain value type; not thread-safe. */
typedef struct rng {
    uint64_t s[4];
} rng;

void rng_seed(rng *r, uint64_t seed);
uint64_t rng_next(rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double rng_uniform(rng *r);

/* ---- sampler ------------------------------------------------------------- */

typedef struct sampler sampler;
typedef struct sampler_scratch sampler_scratch;

typedef struct token_logprob {
    int32_t id;
    float logprob; /* -INFINITY for a token whose logit is -INFINITY */
} token_logprob;

/* The outcome of one sampling step. */
typedef struct sample_result {
    int32_t token;
    float logprob; /* of token, in the model's distribution */
    int32_t n_top; /* = the sampler's n_top_logprobs */
    token_logprob top[GLIMPSE_MAX_TOP_LOGPROBS]; /* likeliest first; ties: lower id first */
} sample_result;

/* Makes the working memory for sampling over n_vocab tokens (about 20 bytes a
 * token). On success *out is owned by the caller, free with
 * sampler_scratch_free. Any thread. */
int sampler_scratch_create(int32_t n_vocab, sampler_scratch **out, glimpse_err *err);
void sampler_scratch_free(sampler_scratch *sc);

/* Makes a sampler for one sequence over n_vocab tokens. params is copied and
 * validated (GLIMPSE_EINVAL names the bad field; GLIMPSE_ELIMIT for a penalty
 * window over SAMPLER_MAX_PENALTY_WINDOW). On success *out is owned by the
 * caller, free with sampler_free. Any thread. */
int sampler_create(const glimpse_sampling *params, int32_t n_vocab, sampler **out, glimpse_err *err);
void sampler_free(sampler *s);

/* Appends token to the sequence's history as seen by the penalties. Feed the
 * prompt's tokens here if they should be penalised too; sampler_sample
 * records the tokens it returns by itself. GLIMPSE_EINVAL for an id outside
 * the vocabulary. */
int sampler_accept(sampler *s, int32_t token, glimpse_err *err);

/* Applies the sequence's penalties in place to logits [n_vocab] (indexed by
 * token id), exactly as sampler_sample does before filtering. sc provides the
 * counting table (it must match the sampler's n_vocab; not checked here). */
void sampler_penalize(const sampler *s, sampler_scratch *sc, float *logits);

/* Chooses the next token from logits [n_vocab] (not modified), fills *out and
 * records the token in the penalty window. sc must have been made for the
 * same n_vocab. GLIMPSE_EINVAL when a logit is NaN or +inf or none is finite;
 * nothing is recorded then. */
int sampler_sample(sampler *s, sampler_scratch *sc, const float *logits, sample_result *out,
                   glimpse_err *err);

/* ---- stop rules ---------------------------------------------------------- */

#define STOP_MAX_STRINGS GLIMPSE_MAX_STOP /* OpenAI's limit on `stop` */
#define STOP_MAX_LEN GLIMPSE_MAX_STOP_LEN  /* bytes in one stop string */
#define STOP_MAX_EOG 8                     /* end-of-generation token ids */
/* Most bytes held back at once: a proper prefix of a stop string, or an
 * incomplete UTF-8 character (the longer of the two suffixes). */
#define STOP_HOLD_MAX (STOP_MAX_LEN - 1)

/* Turns the stream of generated tokens and their text pieces into released
 * text and a finish reason. Text that may be the start of a stop string is
 * held back until it either completes the stop string (it is then dropped,
 * with everything after it) or cannot anymore (it is released). A trailing
 * incomplete UTF-8 character is held back too, so every release ends on a
 * character boundary when the text is valid UTF-8. Matching is on bytes and
 * does not depend on how the text is split into pieces: the sequence stops at
 * the first byte that completes any stop string, and the text is cut where
 * that occurrence starts (the longer stop string wins when two end there). */
typedef struct stop_matcher {
    char stops[STOP_MAX_STRINGS][STOP_MAX_LEN];
    size_t stop_len[STOP_MAX_STRINGS];
    int n_stops;
    int32_t eog[STOP_MAX_EOG];
    int n_eog;
    int64_t max_tokens; /* 0 = no limit here */
    int64_t n_tokens;   /* tokens pushed so far, end-of-generation ones excluded */
    char held[STOP_HOLD_MAX];
    size_t held_len;
    int finish; /* enum glimpse_finish; once set, the matcher is done */
} stop_matcher;

/* Sets up m. stops[i] is stop_lens[i] bytes (1..STOP_MAX_LEN, may hold any
 * byte); n_stops <= STOP_MAX_STRINGS; n_eog <= STOP_MAX_EOG; max_tokens >= 0
 * (0 = no limit). Everything is copied. GLIMPSE_EINVAL or GLIMPSE_ELIMIT with
 * a message when a limit is broken. */
int stop_init(stop_matcher *m, const char *const *stops, const size_t *stop_lens, int n_stops,
              const int32_t *eog, int n_eog, int64_t max_tokens, glimpse_err *err);

/* Pushes one generated token and its text piece [piece_len]. Writes the text
 * now safe to show to out and its length to *out_len; out_cap must be at
 * least piece_len + STOP_HOLD_MAX. Returns the finish reason:
 * GLIMPSE_FINISH_STOP for an end-of-generation token (its piece is not
 * shown) or a completed stop string (out ends right before it),
 * GLIMPSE_FINISH_LENGTH when this was the max_tokens-th token, else
 * GLIMPSE_FINISH_NONE. On a finish, all held text that is not part of a stop
 * string has been released. Returns GLIMPSE_EINVAL after a finish and
 * GLIMPSE_ELIMIT when out_cap is too small (m is unchanged then). */
int stop_push(stop_matcher *m, int32_t token, const char *piece, size_t piece_len, char *out,
              size_t out_cap, size_t *out_len, glimpse_err *err);

/* Releases whatever is held (when the sequence ends for another reason: the
 * context is full, the request was cancelled) into out [out_cap >=
 * STOP_HOLD_MAX]; the bytes may end in an incomplete UTF-8 character. */
void stop_flush(stop_matcher *m, char *out, size_t *out_len);

#endif /* GLIMPSE_SAMPLER_H */
