/*
 * sampler.c — next-token choice, logprobs, penalties and stop rules.
 *
 * One sampling step over a vocabulary of V tokens costs O(V) for the copy,
 * the log-sum-exp and the draw, O(V log k) for top-k (a bounded heap) and
 * O(V) expected for top-p (a histogram, then a quickselect inside one
 * bucket); the vocabulary is never sorted.
 */
#include "sampler.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* top-p's quickselect sorts a range this small instead of splitting it. */
#define TOP_P_SMALL 32
/* top-p's histogram: buckets over the first TOP_P_RANGE nats below the best
 * logit (e^-32 ~ 1e-14: what lies further is in the last bucket). */
#define TOP_P_BUCKETS 1024
#define TOP_P_RANGE 32.0f

/* ======================================================================== */
/* random numbers                                                            */
/* ======================================================================== */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void rng_seed(rng *r, uint64_t seed)
{
    /* splitmix64 never yields four zero words, the one state xoshiro must avoid. */
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

uint64_t rng_next(rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double rng_uniform(rng *r)
{
    return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

/* ======================================================================== */
/* sampler objects                                                           */
/* ======================================================================== */

struct sampler_scratch {
    int32_t n_vocab;
    float *logit;    /* [n_vocab] penalised logits, by token id */
    int32_t *cand;   /* [n_vocab] candidate token ids, permuted by the filters */
    double *weight;  /* [n_vocab] unnormalised probabilities: by token id in top-p,
                      * by candidate position in the draw */
    uint32_t *count; /* [n_vocab] occurrences in a penalty window; all zero between calls */
    double bucket_mass[TOP_P_BUCKETS];   /* top-p's histogram */
    int32_t bucket_count[TOP_P_BUCKETS];
};

struct sampler {
    glimpse_sampling p;
    int32_t n_vocab;
    rng rng;
    int32_t *window;   /* [p.penalty_last_n] ring of the last accepted tokens */
    int32_t n_window;  /* tokens in the ring, <= p.penalty_last_n */
    int32_t next;      /* ring slot the next token goes to */
};

void glimpse_sampling_default(glimpse_sampling *p)
{
    *p = (glimpse_sampling){
        .temperature = 1.0f,
        .top_k = 0,
        .top_p = 1.0f,
        .min_p = 0.0f,
        .repetition_penalty = 1.0f,
        .frequency_penalty = 0.0f,
        .presence_penalty = 0.0f,
        .penalty_last_n = 64,
        .seed = 0,
        .n_top_logprobs = 0,
    };
}

int sampler_scratch_create(int32_t n_vocab, sampler_scratch **out, glimpse_err *err)
{
    *out = NULL;
    if (n_vocab <= 0)
        return err_set(err, GLIMPSE_EINVAL, "sampler: n_vocab %d must be positive", (int)n_vocab);
    /* One block: weight first (8-byte aligned), then logit, cand and count. */
    size_t per_token = sizeof(double) + sizeof(float) + sizeof(int32_t) + sizeof(uint32_t);
    size_t body;
    if (!size_mul((size_t)n_vocab, per_token, &body))
        return err_set(err, GLIMPSE_ELIMIT, "sampler: n_vocab %d too large", (int)n_vocab);
    sampler_scratch *sc = calloc(1, sizeof *sc);
    if (!sc || !(sc->weight = calloc(1, body)))
        goto fail;
    sc->n_vocab = n_vocab;
    sc->logit = (float *)(sc->weight + n_vocab);
    sc->cand = (int32_t *)(sc->logit + n_vocab);
    sc->count = (uint32_t *)(sc->cand + n_vocab);
    *out = sc;
    return 0;

fail:
    sampler_scratch_free(sc);
    return err_set(err, GLIMPSE_ENOMEM, "sampler: no memory for scratch of %d tokens", (int)n_vocab);
}

void sampler_scratch_free(sampler_scratch *sc)
{
    if (!sc)
        return;
    free(sc->weight);
    free(sc);
}

/* Rejects parameters a request could get wrong; NaN fails every comparison. */
static int check_params(const glimpse_sampling *p, glimpse_err *err)
{
    if (!(p->temperature >= 0.0f) || isinf(p->temperature))
        return err_set(err, GLIMPSE_EINVAL, "sampler: temperature must be finite and >= 0");
    if (p->top_k < 0)
        return err_set(err, GLIMPSE_EINVAL, "sampler: top_k must be >= 0");
    if (!(p->top_p >= 0.0f && p->top_p <= 1.0f))
        return err_set(err, GLIMPSE_EINVAL, "sampler: top_p must be in [0, 1]");
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return err_set(err, GLIMPSE_EINVAL, "sampler: min_p must be in [0, 1]");
    if (!(p->repetition_penalty > 0.0f) || isinf(p->repetition_penalty))
        return err_set(err, GLIMPSE_EINVAL, "sampler: repetition_penalty must be finite and > 0");
    if (!isfinite(p->frequency_penalty))
        return err_set(err, GLIMPSE_EINVAL, "sampler: frequency_penalty must be finite");
    if (!isfinite(p->presence_penalty))
        return err_set(err, GLIMPSE_EINVAL, "sampler: presence_penalty must be finite");
    if (p->penalty_last_n < 0)
        return err_set(err, GLIMPSE_EINVAL, "sampler: penalty_last_n must be >= 0");
    if (p->penalty_last_n > SAMPLER_MAX_PENALTY_WINDOW)
        return err_set(err, GLIMPSE_ELIMIT, "sampler: penalty_last_n %d exceeds %d",
                       (int)p->penalty_last_n, SAMPLER_MAX_PENALTY_WINDOW);
    if (p->n_top_logprobs < 0 || p->n_top_logprobs > GLIMPSE_MAX_TOP_LOGPROBS)
        return err_set(err, GLIMPSE_EINVAL, "sampler: n_top_logprobs must be in [0, %d]",
                       GLIMPSE_MAX_TOP_LOGPROBS);
    return 0;
}

int sampler_create(const glimpse_sampling *params, int32_t n_vocab, sampler **out, glimpse_err *err)
{
    *out = NULL;
    int rc = check_params(params, err);
    if (rc < 0)
        return rc;
    if (n_vocab <= 0)
        return err_set(err, GLIMPSE_EINVAL, "sampler: n_vocab %d must be positive", (int)n_vocab);
    sampler *s = calloc(1, sizeof *s);
    if (!s)
        goto fail;
    s->p = *params;
    s->n_vocab = n_vocab;
    rng_seed(&s->rng, params->seed);
    if (params->penalty_last_n > 0) {
        s->window = calloc((size_t)params->penalty_last_n, sizeof *s->window);
        if (!s->window)
            goto fail;
    }
    *out = s;
    return 0;

fail:
    sampler_free(s);
    return err_set(err, GLIMPSE_ENOMEM, "sampler: out of memory");
}

void sampler_free(sampler *s)
{
    if (!s)
        return;
    free(s->window);
    free(s);
}

int sampler_accept(sampler *s, int32_t token, glimpse_err *err)
{
    if (token < 0 || token >= s->n_vocab)
        return err_set(err, GLIMPSE_EINVAL, "sampler: token %d outside vocabulary of %d",
                       (int)token, (int)s->n_vocab);
    if (s->p.penalty_last_n == 0)
        return 0;
    s->window[s->next] = token;
    s->next = (s->next + 1) % s->p.penalty_last_n;
    if (s->n_window < s->p.penalty_last_n)
        s->n_window++;
    return 0;
}

/* ======================================================================== */
/* penalties                                                                 */
/* ======================================================================== */

static bool penalties_off(const glimpse_sampling *p)
{
    return p->penalty_last_n == 0 ||
           (p->repetition_penalty == 1.0f && p->frequency_penalty == 0.0f && p->presence_penalty == 0.0f);
}

void sampler_penalize(const sampler *s, sampler_scratch *sc, float *logits)
{
    const glimpse_sampling *p = &s->p;
    if (penalties_off(p))
        return;
    /* The ring holds each token once per occurrence: count them, then visit
     * the ring again, penalising a token at its first visit and zeroing its
     * count, which both marks it done and leaves the table zero for the next
     * call. O(window), whatever the vocabulary. */
    for (int32_t i = 0; i < s->n_window; i++)
        sc->count[s->window[i]]++;
    for (int32_t i = 0; i < s->n_window; i++) {
        int32_t t = s->window[i];
        uint32_t c = sc->count[t];
        if (c == 0)
            continue;
        sc->count[t] = 0;
        /* CTRL divides; llama.cpp multiplies a non-positive logit instead, so
         * that a penalty never makes a token likelier. Float ops as llama.cpp. */
        float x = logits[t];
        x = x <= 0.0f ? x * p->repetition_penalty : x / p->repetition_penalty;
        x -= (float)c * p->frequency_penalty + p->presence_penalty;
        /* A huge logit over a tiny penalty could overflow; keep it orderable. */
        logits[t] = x > FLT_MAX ? FLT_MAX : x;
    }
}

/* ======================================================================== */
/* filters over the candidate list                                           */
/* ======================================================================== */

/* The candidate order: higher logit first, then lower id. A strict total
 * order (no NaN reaches here), so every selection below is deterministic. */
static inline bool better(const float *logit, int32_t a, int32_t b)
{
    return logit[a] > logit[b] || (logit[a] == logit[b] && a < b);
}

static void sift_down_worst(const float *logit, int32_t *heap, int32_t n, int32_t i)
{
    /* Min-heap under `better`: the root is the worst of the kept tokens. */
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && better(logit, heap[w], heap[l]))
            w = l;
        if (r < n && better(logit, heap[w], heap[r]))
            w = r;
        if (w == i)
            return;
        int32_t t = heap[i];
        heap[i] = heap[w];
        heap[w] = t;
        i = w;
    }
}

/* Sorts cand [n] best first: heapsort under `better`, in place, no allocation
 * and no global comparator state (qsort would need the logits through one). */
static void sort_best_first(const float *logit, int32_t *cand, int32_t n)
{
    for (int32_t i = n / 2 - 1; i >= 0; i--)
        sift_down_worst(logit, cand, n, i);
    /* Popping the worst to the end leaves the best at the front. */
    for (int32_t end = n - 1; end > 0; end--) {
        int32_t t = cand[0];
        cand[0] = cand[end];
        cand[end] = t;
        sift_down_worst(logit, cand, end, 0);
    }
}

/* Moves the m best of cand [n] to cand [0, m), sorted best first; the rest
 * stay in cand [m, n), each worse than all of the first m. O(n log m). */
static void select_best(const float *logit, int32_t *cand, int32_t n, int32_t m)
{
    for (int32_t i = m / 2 - 1; i >= 0; i--)
        sift_down_worst(logit, cand, m, i);
    for (int32_t j = m; j < n; j++) {
        if (better(logit, cand[j], cand[0])) {
            int32_t t = cand[0];
            cand[0] = cand[j];
            cand[j] = t;
            sift_down_worst(logit, cand, m, 0);
        }
    }
    sort_best_first(logit, cand, m);
}

static float max_logit(const float *logit, const int32_t *cand, int32_t n, bool sorted)
{
    if (sorted)
        return logit[cand[0]];
    float m = logit[cand[0]];
    for (int32_t i = 1; i < n; i++)
        m = logit[cand[i]] > m ? logit[cand[i]] : m;
    return m;
}

/* Finds where the nucleus ends inside cand [lo, hi): every token before lo
 * is kept and better than any from lo on, with total mass acc; the nucleus
 * ends at the first token whose running mass reaches need. A sorted range is
 * walked; an unsorted one goes through a quickselect on the mass, O(n)
 * expected, with median-of-three pivots and, after 64 rounds, a sort, which
 * bounds the worst case by O(n log n). Returns the end index. */
static int32_t nucleus_end(const float *logit, int32_t *cand, const double *w, int32_t lo, int32_t hi,
                           bool sorted, double acc, double need)
{
    for (int rounds = 0; !sorted && hi - lo > TOP_P_SMALL && rounds < 64; rounds++) {
        int32_t *a = &cand[lo], *b = &cand[lo + (hi - lo) / 2], *c = &cand[hi - 1], t;
        if (better(logit, *b, *a))
            t = *a, *a = *b, *b = t;
        if (better(logit, *c, *b))
            t = *b, *b = *c, *c = t;
        if (better(logit, *b, *a))
            t = *a, *a = *b, *b = t;
        /* Now *b is the median: move it to hi - 1 and partition the rest. */
        t = *b, *b = *c, *c = t;
        int32_t pivot = cand[hi - 1], i = lo;
        double mass = 0.0; /* of the tokens better than the pivot */
        for (int32_t j = lo; j < hi - 1; j++) {
            if (better(logit, cand[j], pivot)) {
                mass += w[cand[j]];
                t = cand[i], cand[i] = cand[j], cand[j] = t;
                i++;
            }
        }
        cand[hi - 1] = cand[i];
        cand[i] = pivot;
        if (i > lo && acc + mass >= need) {
            hi = i;
        } else if (acc + mass + w[pivot] >= need) {
            return i + 1;
        } else {
            acc += mass + w[pivot];
            lo = i + 1;
        }
    }
    if (!sorted)
        sort_best_first(logit, cand + lo, hi - lo);
    for (int32_t i = lo; i < hi; i++) {
        acc += w[cand[i]];
        if (acc >= need)
            return i + 1;
    }
    /* Rounding kept the mass a hair short: keep the whole range. */
    return hi;
}

/* Bucket of a logit by its distance below the best one: TOP_P_BUCKETS over
 * TOP_P_RANGE nats; the last bucket takes everything further, -inf included. */
static inline int top_p_bucket(float lmax, float l)
{
    float d = (lmax - l) * ((float)TOP_P_BUCKETS / TOP_P_RANGE);
    return d < (float)(TOP_P_BUCKETS - 1) ? (int)d : TOP_P_BUCKETS - 1;
}

/* Moves the candidates of [from, n) whose bucket passes `keep` to the front
 * of that range (swapping, so none is lost); returns the end of the moved. */
static int32_t gather(const float *logit, int32_t *cand, int32_t from, int32_t n, float lmax, int bucket,
                      bool below)
{
    int32_t k = from;
    for (int32_t i = from; i < n; i++) {
        int b = top_p_bucket(lmax, logit[cand[i]]);
        if (below ? b < bucket : b == bucket) {
            int32_t t = cand[k];
            cand[k++] = cand[i];
            cand[i] = t;
        }
    }
    return k;
}

/* Keeps the smallest set of best tokens whose probability mass reaches
 * top_p, the token that crosses it included: llama.cpp's best-first prefix.
 * Over the whole vocabulary a histogram of the mass by logit bucket finds
 * the bucket the nucleus ends in, so only that bucket's tokens need ordering
 * (nucleus_end); no branch depends on comparing two tokens until then.
 * Returns the new count; the kept tokens are cand [0, count), sorted only if
 * they were. sc->weight holds probabilities by token id here. */
static int32_t filter_top_p(sampler_scratch *sc, int32_t n, bool sorted, float top_p)
{
    const float *logit = sc->logit;
    int32_t *cand = sc->cand;
    double *w = sc->weight;
    float lmax = max_logit(logit, cand, n, sorted);
    double z = 0.0;
    for (int32_t i = 0; i < n; i++) {
        w[cand[i]] = exp((double)logit[cand[i]] - lmax);
        z += w[cand[i]];
    }
    double need = (double)top_p * z;
    if (sorted || n <= TOP_P_SMALL)
        return nucleus_end(logit, cand, w, 0, n, sorted, 0.0, need);

    memset(sc->bucket_mass, 0, sizeof sc->bucket_mass);
    memset(sc->bucket_count, 0, sizeof sc->bucket_count);
    for (int32_t i = 0; i < n; i++) {
        int b = top_p_bucket(lmax, logit[cand[i]]);
        sc->bucket_mass[b] += w[cand[i]];
        sc->bucket_count[b]++;
    }
    double acc = 0.0;
    int c = 0;
    while (c < TOP_P_BUCKETS - 1 && acc + sc->bucket_mass[c] < need)
        acc += sc->bucket_mass[c++];
    /* Buckets before c are kept whole; bucket c follows them, to be ordered. */
    int32_t lo = gather(logit, cand, 0, n, lmax, c, true);
    int32_t hi = gather(logit, cand, lo, n, lmax, c, false);
    return nucleus_end(logit, cand, w, lo, hi, false, acc, need);
}

/* Keeps the tokens with p >= min_p * p_max, i.e. logit >= max + log(min_p).
 * Order is kept; returns the new count (never 0: the best token passes). */
static int32_t filter_min_p(const float *logit, int32_t *cand, int32_t n, bool sorted, float min_p)
{
    double threshold = (double)max_logit(logit, cand, n, sorted) + log((double)min_p);
    int32_t kept = 0;
    for (int32_t i = 0; i < n; i++)
        if ((double)logit[cand[i]] >= threshold)
            cand[kept++] = cand[i];
    return kept;
}

/* Draws one candidate from softmax(logit / temperature). Computing
 * (l - lmax) / T keeps every exponent <= 0 even for a tiny T. */
static int32_t draw(sampler_scratch *sc, int32_t n, bool sorted, float temperature, rng *r)
{
    const float *logit = sc->logit;
    const int32_t *cand = sc->cand;
    double lmax = max_logit(logit, cand, n, sorted);
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        sc->weight[i] = exp(((double)logit[cand[i]] - lmax) / temperature);
        sum += sc->weight[i];
    }
    double target = rng_uniform(r) * sum;
    double run = 0.0;
    int32_t last_positive = 0;
    for (int32_t i = 0; i < n; i++) {
        if (sc->weight[i] <= 0.0)
            continue;
        run += sc->weight[i];
        last_positive = i;
        if (run > target)
            return cand[i];
    }
    /* Rounding left the running sum a hair below target. */
    return cand[last_positive];
}

/* ======================================================================== */
/* sampling                                                                  */
/* ======================================================================== */

/* Fills out->top with the n best raw logits (best first) as logprobs. */
static void top_logprobs(const float *logits, int32_t n_vocab, double lse, int32_t n, sample_result *out)
{
    int32_t heap[GLIMPSE_MAX_TOP_LOGPROBS];
    int32_t kept = 0;
    for (int32_t t = 0; t < n_vocab; t++) {
        if (kept < n) {
            heap[kept++] = t;
            if (kept == n)
                for (int32_t i = n / 2 - 1; i >= 0; i--)
                    sift_down_worst(logits, heap, n, i);
        } else if (better(logits, t, heap[0])) {
            heap[0] = t;
            sift_down_worst(logits, heap, n, 0);
        }
    }
    sort_best_first(logits, heap, kept);
    out->n_top = kept;
    for (int32_t i = 0; i < kept; i++) {
        out->top[i].id = heap[i];
        out->top[i].logprob = (float)((double)logits[heap[i]] - lse);
    }
}

int sampler_sample(sampler *s, sampler_scratch *sc, const float *logits, sample_result *out,
                   glimpse_err *err)
{
    const glimpse_sampling *p = &s->p;
    int32_t n = s->n_vocab;
    if (sc->n_vocab != n)
        return err_set(err, GLIMPSE_EINVAL, "sampler: scratch is for %d tokens, sampler for %d",
                       (int)sc->n_vocab, (int)n);

    /* Copy and validate: -inf masks a token; NaN or +inf means a broken model
     * or bias, which must not silently pick a token. */
    float raw_max = -INFINITY;
    for (int32_t t = 0; t < n; t++) {
        float x = logits[t];
        if (isnan(x) || x == INFINITY)
            return err_set(err, GLIMPSE_EINVAL, "sampler: logit of token %d is %s", (int)t,
                           isnan(x) ? "NaN" : "+inf");
        raw_max = x > raw_max ? x : raw_max;
        sc->logit[t] = x;
        sc->cand[t] = t;
    }
    if (raw_max == -INFINITY)
        return err_set(err, GLIMPSE_EINVAL, "sampler: every logit is -inf");

    /* The model's log-partition function, for the logprobs. */
    double z = 0.0;
    for (int32_t t = 0; t < n; t++)
        z += exp((double)logits[t] - raw_max);
    double lse = raw_max + log(z);

    sampler_penalize(s, sc, sc->logit);

    int32_t token;
    if (p->temperature == 0.0f) {
        /* Greedy; the filters below never drop the argmax, so skip them. */
        token = 0;
        for (int32_t t = 1; t < n; t++)
            if (sc->logit[t] > sc->logit[token])
                token = t;
    } else {
        bool sorted = false;
        if (p->top_k > 0 && p->top_k < n) {
            select_best(sc->logit, sc->cand, n, p->top_k);
            n = p->top_k;
            sorted = true;
        }
        if (p->top_p < 1.0f)
            n = filter_top_p(sc, n, sorted, p->top_p);
        if (p->min_p > 0.0f)
            n = filter_min_p(sc->logit, sc->cand, n, sorted, p->min_p);
        token = draw(sc, n, sorted, p->temperature, &s->rng);
    }

    out->token = token;
    out->logprob = (float)((double)logits[token] - lse);
    out->n_top = 0;
    if (p->n_top_logprobs > 0)
        top_logprobs(logits, s->n_vocab, lse, p->n_top_logprobs, out);
    return sampler_accept(s, token, err);
}

/* ======================================================================== */
/* stop rules                                                                */
/* ======================================================================== */

int stop_init(stop_matcher *m, const char *const *stops, const size_t *stop_lens, int n_stops,
              const int32_t *eog, int n_eog, int64_t max_tokens, glimpse_err *err)
{
    memset(m, 0, sizeof *m);
    if (n_stops < 0 || n_stops > STOP_MAX_STRINGS)
        return err_set(err, GLIMPSE_ELIMIT, "stop: %d stop strings, at most %d", n_stops, STOP_MAX_STRINGS);
    if (n_eog < 0 || n_eog > STOP_MAX_EOG)
        return err_set(err, GLIMPSE_ELIMIT, "stop: %d end-of-generation tokens, at most %d", n_eog,
                       STOP_MAX_EOG);
    if (max_tokens < 0)
        return err_set(err, GLIMPSE_EINVAL, "stop: max_tokens must be >= 0");
    for (int i = 0; i < n_stops; i++) {
        if (stop_lens[i] == 0)
            return err_set(err, GLIMPSE_EINVAL, "stop: stop string %d is empty", i);
        if (stop_lens[i] > STOP_MAX_LEN)
            return err_set(err, GLIMPSE_ELIMIT, "stop: stop string %d is %zu bytes, at most %d", i,
                           stop_lens[i], STOP_MAX_LEN);
        memcpy(m->stops[i], stops[i], stop_lens[i]);
        m->stop_len[i] = stop_lens[i];
    }
    m->n_stops = n_stops;
    if (n_eog > 0)
        memcpy(m->eog, eog, (size_t)n_eog * sizeof *eog);
    m->n_eog = n_eog;
    m->max_tokens = max_tokens;
    return 0;
}

/* The text under consideration is held ‖ piece; these read it by position. */
typedef struct stop_text {
    const char *held;
    size_t held_len;
    const char *piece;
    size_t len; /* held_len + piece_len */
} stop_text;

static inline char text_at(const stop_text *t, size_t i)
{
    return i < t->held_len ? t->held[i] : t->piece[i - t->held_len];
}

static bool text_equals(const stop_text *t, size_t at, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (text_at(t, at + i) != s[i])
            return false;
    return true;
}

/* Copies text [from, to) to dst; dst may be m->held itself (from > 0 then). */
static void text_copy(const stop_text *t, size_t from, size_t to, char *dst)
{
    for (size_t i = from; i < to; i++)
        dst[i - from] = text_at(t, i);
}

/* Start of the earliest-ending complete stop string in the text, or len when
 * none. Held text was already searched, so a match must end in the piece. */
static size_t find_stop(const stop_matcher *m, const stop_text *t)
{
    for (size_t end = t->held_len + 1; end <= t->len; end++) {
        size_t best = t->len;
        for (int k = 0; k < m->n_stops; k++) {
            size_t n = m->stop_len[k];
            if (n <= end && end - n < best && text_equals(t, end - n, m->stops[k], n))
                best = end - n;
        }
        if (best < t->len)
            return best;
    }
    return t->len;
}

/* Start of the longest suffix of the text that is a proper prefix of a stop
 * string, or len when none. */
static size_t partial_stop_start(const stop_matcher *m, const stop_text *t)
{
    size_t first = t->len > STOP_HOLD_MAX ? t->len - STOP_HOLD_MAX : 0;
    for (size_t start = first; start < t->len; start++) {
        size_t n = t->len - start;
        for (int k = 0; k < m->n_stops; k++)
            if (n < m->stop_len[k] && text_equals(t, start, m->stops[k], n))
                return start;
    }
    return t->len;
}

/* Start of a trailing UTF-8 character whose lead byte promises more bytes
 * than the text has, or len when the text ends on a boundary. */
static size_t partial_utf8_start(const stop_text *t)
{
    for (size_t back = 1; back <= 3 && back <= t->len; back++) {
        unsigned char b = (unsigned char)text_at(t, t->len - back);
        if ((b & 0xC0) == 0x80)
            continue; /* continuation byte: keep looking for the lead */
        size_t need = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1;
        return need > back ? t->len - back : t->len;
    }
    return t->len;
}

static bool is_eog(const stop_matcher *m, int32_t token)
{
    for (int i = 0; i < m->n_eog; i++)
        if (m->eog[i] == token)
            return true;
    return false;
}

void stop_flush(stop_matcher *m, char *out, size_t *out_len)
{
    memcpy(out, m->held, m->held_len);
    *out_len = m->held_len;
    m->held_len = 0;
}

int stop_push(stop_matcher *m, int32_t token, const char *piece, size_t piece_len, char *out,
              size_t out_cap, size_t *out_len, glimpse_err *err)
{
    *out_len = 0;
    if (m->finish != GLIMPSE_FINISH_NONE)
        return err_set(err, GLIMPSE_EINVAL, "stop: the sequence has already finished");
    size_t need;
    if (!size_add(piece_len, STOP_HOLD_MAX, &need) || out_cap < need)
        return err_set(err, GLIMPSE_ELIMIT, "stop: output buffer of %zu bytes, need %zu + %d", out_cap,
                       piece_len, STOP_HOLD_MAX);
    if (is_eog(m, token)) {
        stop_flush(m, out, out_len);
        return m->finish = GLIMPSE_FINISH_STOP;
    }
    m->n_tokens++;

    stop_text t = { m->held, m->held_len, piece, m->held_len + piece_len };
    size_t cut = find_stop(m, &t);
    if (cut < t.len) {
        text_copy(&t, 0, cut, out);
        *out_len = cut;
        m->held_len = 0;
        return m->finish = GLIMPSE_FINISH_STOP;
    }
    if (m->max_tokens > 0 && m->n_tokens >= m->max_tokens) {
        text_copy(&t, 0, t.len, out);
        *out_len = t.len;
        m->held_len = 0;
        return m->finish = GLIMPSE_FINISH_LENGTH;
    }
    size_t hold = partial_stop_start(m, &t);
    size_t utf8 = partial_utf8_start(&t);
    hold = utf8 < hold ? utf8 : hold;
    text_copy(&t, 0, hold, out);
    *out_len = hold;
    /* The new held text is a suffix of held ‖ piece: copying forward from a
     * position >= 0 never overwrites a held byte before it is read. */
    text_copy(&t, hold, t.len, m->held);
    m->held_len = t.len - hold;
    return GLIMPSE_FINISH_NONE;
}
