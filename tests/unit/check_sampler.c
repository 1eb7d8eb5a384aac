/*
 * check_sampler.c — the sampler against independent references.
 *
 * Exact checks: PRNG known answers (published xoshiro256** / splitmix64
 * vectors), greedy = argmax, penalties by hand, logprobs against a long-double
 * log-softmax, stop-string tables. Statistical checks: 10 000+ draws per case
 * from a fixed seed; no draw may fall outside the set the reference chain
 * keeps, and Pearson's chi-square against the reference probabilities must
 * stay under the 1e-6 quantile. Each statistical case also shows that the
 * same draws reject a plausible wrong distribution, so the check has power.
 * The reference here sorts the whole vocabulary and works in probability
 * space; the sampler selects partially and works in logit space.
 */
#include "sampler.h"
#include "testutil.h"

#include <math.h>

/* ---- helpers ------------------------------------------------------------- */

/* For hot loops: Check records the location of every passing ck_assert (a
 * write to its parent), which would dominate a loop of 10 000 draws. */
#define REQUIRE(cond, ...)                  \
    do {                                    \
        if (!(cond))                        \
            ck_abort_msg(__VA_ARGS__);      \
    } while (0)

/* Test inputs come from their own generator, not the one under test. */
static uint64_t test_rand_state;

static double test_uniform(void)
{
    uint64_t z = (test_rand_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) / 9007199254740992.0;
}

/* logits [n] uniform in [lo, hi). */
static void random_logits(float *logits, int n, double lo, double hi, uint64_t seed)
{
    test_rand_state = seed;
    for (int i = 0; i < n; i++)
        logits[i] = (float)(lo + (hi - lo) * test_uniform());
}

static glimpse_sampling params_plain(void)
{
    glimpse_sampling p;
    glimpse_sampling_default(&p);
    p.penalty_last_n = 0; /* the statistical cases draw i.i.d. from fixed logits */
    p.seed = 1234;
    return p;
}

/* A sampler for p and a scratch, both for n tokens; the test fails unless both are made. */
static void open_sampler(const glimpse_sampling *p, int n, sampler **s, sampler_scratch **sc)
{
    glimpse_err err = { 0 };
    ck_assert_msg(sampler_create(p, n, s, &err) == 0, "sampler_create: %s", err.msg);
    ck_assert_msg(sampler_scratch_create(n, sc, &err) == 0, "sampler_scratch_create: %s", err.msg);
}

static void close_sampler(sampler *s, sampler_scratch *sc)
{
    sampler_scratch_free(sc);
    sampler_free(s);
}

/* Draws n_draws tokens from logits [n] into counts [n] (zeroed here). */
static void draw_counts(const glimpse_sampling *p, const float *logits, int n, int n_draws, int *counts)
{
    sampler *s = NULL;
    sampler_scratch *sc = NULL;
    glimpse_err err = { 0 };
    open_sampler(p, n, &s, &sc);
    memset(counts, 0, (size_t)n * sizeof *counts);
    for (int i = 0; i < n_draws; i++) {
        sample_result r;
        REQUIRE(sampler_sample(s, sc, logits, &r, &err) == 0, "draw %d: %s", i, err.msg);
        REQUIRE(r.token >= 0 && r.token < n, "draw %d: token %d", i, (int)r.token);
        counts[r.token]++;
    }
    close_sampler(s, sc);
}

static const float *sort_logits; /* qsort has no context argument */

static int by_logit_desc(const void *a, const void *b)
{
    int i = *(const int *)a, j = *(const int *)b;
    if (sort_logits[i] != sort_logits[j])
        return sort_logits[i] > sort_logits[j] ? -1 : 1;
    return i - j;
}

/* Reference chain without penalties, by the stages' definitions: sort the
 * whole vocabulary, cut top-k, cut where the probability mass first reaches
 * top_p, keep p >= min_p * p_max, then softmax(logit / T) over what is left.
 * Fills prob [n] (0 outside the kept set). */
static void ref_chain(const float *logits, int n, const glimpse_sampling *p, double *prob)
{
    int *idx = malloc((size_t)n * sizeof *idx);
    ck_assert_ptr_nonnull(idx);
    for (int i = 0; i < n; i++)
        idx[i] = i;
    sort_logits = logits;
    qsort(idx, (size_t)n, sizeof *idx, by_logit_desc);
    double lmax = logits[idx[0]];
    int kept = n;
    if (p->top_k > 0 && p->top_k < kept)
        kept = p->top_k;
    if (p->top_p < 1.0f) {
        double z = 0.0, cum = 0.0;
        for (int i = 0; i < kept; i++)
            z += exp(logits[idx[i]] - lmax);
        for (int i = 0; i < kept; i++) {
            cum += exp(logits[idx[i]] - lmax) / z;
            if (cum >= p->top_p) {
                kept = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0.0f) {
        int i = 1;
        while (i < kept && exp(logits[idx[i]] - lmax) >= p->min_p)
            i++;
        kept = i;
    }
    double z = 0.0;
    memset(prob, 0, (size_t)n * sizeof *prob);
    for (int i = 0; i < kept; i++) {
        prob[idx[i]] = exp((logits[idx[i]] - lmax) / p->temperature);
        z += prob[idx[i]];
    }
    for (int i = 0; i < kept; i++)
        prob[idx[i]] /= z;
    free(idx);
}

/* Pearson's chi-square of counts [n] against prob [n]; *df gets the degrees
 * of freedom. Returns INFINITY when a token with probability 0 was drawn. */
static double chi_square(const int *counts, const double *prob, int n, int n_draws, int *df)
{
    double x = 0.0;
    int support = 0;
    for (int i = 0; i < n; i++) {
        if (prob[i] == 0.0) {
            x = counts[i] != 0 ? INFINITY : x;
            continue;
        }
        support++;
        double e = prob[i] * n_draws;
        x += (counts[i] - e) * (counts[i] - e) / e;
    }
    *df = support - 1;
    return x;
}

/* Upper 1e-6 quantile of chi-square with df degrees of freedom
 * (Wilson–Hilferty; z = 4.753 is the normal 1e-6 quantile). */
static double chi2_bound(int df)
{
    double a = 2.0 / (9.0 * df);
    double c = 1.0 - a + 4.753 * sqrt(a);
    return df * c * c * c;
}

/* Asserts that counts fit prob and reject wrong [n] (a plausible mistake). */
static void assert_fits(const char *name, const int *counts, const double *prob, const double *wrong, int n,
                        int n_draws)
{
    int df = 0, df_wrong = 0;
    double x = chi_square(counts, prob, n, n_draws, &df);
    ck_assert_msg(df >= 1, "%s: degenerate case: one token kept", name);
    ck_assert_msg(x != INFINITY, "%s: a token outside the kept set was drawn", name);
    ck_assert_msg(x < chi2_bound(df), "%s: chi-square %.1f over bound %.1f (df %d)", name, x, chi2_bound(df), df);
    double xw = chi_square(counts, wrong, n, n_draws, &df_wrong);
    ck_assert_msg(!(xw < chi2_bound(df_wrong > 0 ? df_wrong : 1)),
                  "%s: the wrong distribution fits too (chi-square %.1f): the case has no power", name, xw);
}

/* wrong [n]: the kept set of prob minus its least likely token, at the
 * probabilities full [n] renormalised: a nucleus cut one token short. */
static void one_token_short(const double *prob, const double *full, const float *logits, int n, double *wrong)
{
    int last = -1;
    for (int i = 0; i < n; i++)
        if (prob[i] > 0.0 && (last < 0 || logits[i] < logits[last]))
            last = i;
    double mass = 0.0;
    for (int i = 0; i < n; i++) {
        wrong[i] = prob[i] > 0.0 && i != last ? full[i] : 0.0;
        mass += wrong[i];
    }
    for (int i = 0; i < n; i++)
        wrong[i] /= mass;
}

/* ---- random numbers ------------------------------------------------------ */

START_TEST(test_rng_known_answers)
{
    /* splitmix64 from seed 0: the values in Vigna's splitmix64.c reference. */
    rng r;
    rng_seed(&r, 0);
    ck_assert_uint_eq(r.s[0], 0xe220a8397b1dcdafull);
    ck_assert_uint_eq(r.s[1], 0x6e789e6aa1b965f4ull);
    ck_assert_uint_eq(r.s[2], 0x06c45d188009454full);
    ck_assert_uint_eq(r.s[3], 0xf88bb8a8724c81ecull);
    /* xoshiro256** from state {1, 2, 3, 4}: the published first outputs. */
    r = (rng){ { 1, 2, 3, 4 } };
    static const uint64_t want[] = { 11520u, 0u, 1509978240u, 1215971899390074240ull };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        ck_assert_uint_eq(rng_next(&r), want[i]);
    /* Uniform doubles stay in [0, 1). */
    rng_seed(&r, 99);
    for (int i = 0; i < 100000; i++) {
        double u = rng_uniform(&r);
        REQUIRE(u >= 0.0 && u < 1.0, "uniform %d is %.17g", i, u);
    }
}
END_TEST

/* ---- greedy -------------------------------------------------------------- */

START_TEST(test_greedy_is_argmax)
{
    enum { N = 3000 };
    static float logits[N];
    glimpse_sampling p = params_plain();
    p.temperature = 0.0f;
    /* The filters never change a greedy choice; set them to make sure. */
    p.top_k = 3;
    p.top_p = 0.1f;
    p.min_p = 0.5f;
    sampler *s = NULL;
    sampler_scratch *sc = NULL;
    open_sampler(&p, N, &s, &sc);
    for (uint64_t trial = 0; trial < 50; trial++) {
        random_logits(logits, N, -20.0, 20.0, 100 + trial);
        int want = 0;
        for (int i = 1; i < N; i++)
            if (logits[i] > logits[want])
                want = i;
        sample_result r;
        ck_assert_int_eq(sampler_sample(s, sc, logits, &r, NULL), 0);
        ck_assert_int_eq(r.token, want);
    }
    /* Ties go to the lowest id, wherever the tie sits. */
    random_logits(logits, N, -5.0, 5.0, 7);
    logits[2900] = 9.0f;
    logits[1234] = 9.0f;
    logits[2999] = 9.0f;
    sample_result r;
    ck_assert_int_eq(sampler_sample(s, sc, logits, &r, NULL), 0);
    ck_assert_int_eq(r.token, 1234);
    /* All equal: token 0. */
    for (int i = 0; i < N; i++)
        logits[i] = -1.5f;
    ck_assert_int_eq(sampler_sample(s, sc, logits, &r, NULL), 0);
    ck_assert_int_eq(r.token, 0);
    close_sampler(s, sc);
}
END_TEST

/* ---- filters: support and distribution ------------------------------------ */

/* Statistical cases: logits [n] uniform in [lo, hi) from seed, draws from
 * the sampler with the given filters and one of them set to each of values,
 * checked against ref_chain and against a plausible wrong distribution (the
 * case's power). */
enum wrong_kind {
    WRONG_EQUAL_ODDS, /* the kept set at equal odds (top-k forgot the softmax) */
    WRONG_ONE_SHORT,  /* a nucleus cut one token short (one_token_short) */
    WRONG_UNFILTERED, /* no filter and temperature 1 (the setting ignored) */
    WRONG_HOTTER,     /* the same filters at temperature 1.3 */
    WRONG_TEMP_FIRST, /* the filters applied to logits already divided by T */
};

enum stat_param { SET_TOP_K, SET_TOP_P, SET_MIN_P, SET_TEMPERATURE };

typedef struct stat_case {
    const char *name;
    int n, draws;
    double lo, hi;
    uint64_t seed;
    int top_k;
    float top_p, min_p, temperature;
    enum stat_param param; /* the filter that takes each of values */
    float values[4];       /* 0-terminated unless all four are used */
    enum wrong_kind wrong;
    int min_kept; /* the reference keeps, and the draws hit, more tokens than this */
} stat_case;

static const stat_case stat_cases[] = {
    { "top-k", 300, 10000, -3.0, 3.0, 11, 0, 1.0f, 0.0f, 1.0f, SET_TOP_K, { 1, 14, 27, 40 }, WRONG_EQUAL_ODDS, 0 },
    { "top-p", 200, 10000, -4.0, 4.0, 21, 0, 1.0f, 0.0f, 1.0f, SET_TOP_P, { 0.3f, 0.6f, 0.9f }, WRONG_ONE_SHORT, 0 },
    /* nearly flat: a nucleus of hundreds of tokens over a dozen of the
     * sampler's histogram buckets, the crossing one holding dozens */
    { "top-p, wide nucleus", 1200, 15000, 0.0, 0.5, 31, 0, 1.0f, 0.0f, 1.0f, SET_TOP_P, { 0.5f }, WRONG_ONE_SHORT,
      500 },
    { "min-p", 250, 10000, -4.0, 4.0, 41, 0, 1.0f, 0.0f, 1.0f, SET_MIN_P, { 0.05f, 0.2f, 0.6f }, WRONG_UNFILTERED, 0 },
    { "temperature", 30, 10000, -2.0, 2.0, 51, 0, 1.0f, 0.0f, 1.0f, SET_TEMPERATURE, { 0.5f, 0.8f, 1.5f, 3.0f },
      WRONG_UNFILTERED, 0 },
    { "temperature 1 is the plain softmax", 30, 10000, -2.0, 2.0, 51, 0, 1.0f, 0.0f, 1.0f, SET_TEMPERATURE, { 1.0f },
      WRONG_HOTTER, 0 },
    /* every stage at once: the order matters (min-p after top-p, temperature last) */
    { "chain order", 1000, 20000, -6.0, 6.0, 61, 60, 0.8f, 0.03f, 1.0f, SET_TEMPERATURE, { 2.0f }, WRONG_TEMP_FIRST,
      0 },
};

/* wrong [n] for case c whose sampler settings are p and reference prob [n];
 * scratch [n] is overwritten. Returns false when the reference keeps one
 * token, where only the support can be checked. */
static bool wrong_distribution(const stat_case *c, const glimpse_sampling *p, const float *logits,
                               const double *prob, float *scratch, double *wrong)
{
    const int n = c->n;
    const glimpse_sampling plain = params_plain();
    glimpse_sampling q = *p;
    int kept = 0;
    for (int i = 0; i < n; i++)
        kept += prob[i] > 0.0;
    if (kept == 1)
        return false;
    switch (c->wrong) {
    case WRONG_EQUAL_ODDS:
        for (int i = 0; i < n; i++)
            wrong[i] = prob[i] > 0.0 ? 1.0 / kept : 0.0;
        break;
    case WRONG_ONE_SHORT: {
        double *full = malloc((size_t)n * sizeof *full);
        ck_assert_ptr_nonnull(full);
        ref_chain(logits, n, &plain, full);
        one_token_short(prob, full, logits, n, wrong);
        free(full);
        break;
    }
    case WRONG_UNFILTERED:
        ref_chain(logits, n, &plain, wrong);
        break;
    case WRONG_HOTTER:
        q.temperature = 1.3f;
        ref_chain(logits, n, &q, wrong);
        break;
    case WRONG_TEMP_FIRST:
        for (int i = 0; i < n; i++)
            scratch[i] = logits[i] / p->temperature;
        q.temperature = 1.0f;
        ref_chain(scratch, n, &q, wrong);
        break;
    }
    return true;
}

START_TEST(test_distribution)
{
    const stat_case *c = &stat_cases[_i];
    const int n = c->n;
    float *logits = malloc((size_t)n * sizeof *logits), *scratch = malloc((size_t)n * sizeof *scratch);
    int *counts = malloc((size_t)n * sizeof *counts);
    double *prob = malloc((size_t)n * sizeof *prob), *wrong = malloc((size_t)n * sizeof *wrong);
    ck_assert(logits && scratch && counts && prob && wrong);
    random_logits(logits, n, c->lo, c->hi, c->seed);
    glimpse_sampling p = params_plain();
    p.top_k = c->top_k;
    p.top_p = c->top_p;
    p.min_p = c->min_p;
    p.temperature = c->temperature;
    for (int v = 0; v < 4 && c->values[v] != 0.0f; v++) {
        char name[80];
        snprintf(name, sizeof name, "%s %g", c->name, (double)c->values[v]);
        switch (c->param) {
        case SET_TOP_K:
            p.top_k = (int)c->values[v];
            break;
        case SET_TOP_P:
            p.top_p = c->values[v];
            break;
        case SET_MIN_P:
            p.min_p = c->values[v];
            break;
        case SET_TEMPERATURE:
            p.temperature = c->values[v];
            break;
        }
        draw_counts(&p, logits, n, c->draws, counts);
        ref_chain(logits, n, &p, prob);
        int df;
        ck_assert_msg(chi_square(counts, prob, n, c->draws, &df) != INFINITY, "%s: drew outside the kept set", name);
        if (wrong_distribution(c, &p, logits, prob, scratch, wrong))
            assert_fits(name, counts, prob, wrong, n, c->draws);
        int n_kept = 0, n_drawn = 0;
        for (int i = 0; i < n; i++) {
            n_kept += prob[i] > 0.0;
            n_drawn += counts[i] > 0;
        }
        ck_assert_msg(n_kept > c->min_kept && n_drawn > c->min_kept, "%s: %d kept, %d drawn", name, n_kept, n_drawn);
    }
    free(logits);
    free(scratch);
    free(counts);
    free(prob);
    free(wrong);
}
END_TEST

/* Exact supports: at the edges of top-p the crossing token is kept, top_p 0
 * keeps the best token only, and among equal logits the lower ids come
 * first; masked tokens (-inf) are never drawn, even with no filter at all. */
START_TEST(test_exact_support)
{
    enum { N = 100, DRAWS = 2000 };
    static float logits[N];
    static int counts[N];
    for (int i = 0; i < N; i++)
        logits[i] = -INFINITY;
    logits[40] = logf(0.5f);
    logits[3] = logf(0.25f);
    logits[77] = logf(0.125f);
    logits[8] = logf(0.125f);
    glimpse_sampling p = params_plain();
    static const struct { float top_p; int n_kept; } cases[] = { { 0.0f, 1 }, { 0.4f, 1 }, { 0.6f, 2 }, { 0.8f, 3 } };
    /* Kept sets, best first: 40, 3, then 8 before 77 (equal logits, lower id). */
    static const int order[] = { 40, 3, 8, 77 };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        p.top_p = cases[c].top_p;
        draw_counts(&p, logits, N, DRAWS, counts);
        for (int k = 0; k < 4; k++)
            ck_assert_msg((counts[order[k]] > 0) == (k < cases[c].n_kept), "top_p %g: token %d drawn %d times",
                          cases[c].top_p, order[k], counts[order[k]]);
    }
    /* A flat vocabulary: the nucleus of mass 0.5 is exactly ids 0..49. */
    for (int i = 0; i < N; i++)
        logits[i] = 1.0f;
    p.top_p = 0.5f;
    draw_counts(&p, logits, N, 20 * DRAWS, counts);
    for (int i = 0; i < N; i++)
        ck_assert_msg((counts[i] > 0) == (i < 50), "flat: token %d drawn %d times", i, counts[i]);
    /* Masked tokens: every third id is finite. */
    for (int i = 0; i < N; i++)
        logits[i] = i % 3 == 0 ? 0.25f * (float)(i % 5) : -INFINITY;
    p = params_plain();
    draw_counts(&p, logits, N, 5 * DRAWS, counts);
    for (int i = 0; i < N; i++)
        ck_assert_msg(i % 3 == 0 || counts[i] == 0, "masked token %d drawn %d times", i, counts[i]);
}
END_TEST

/* ---- seeds ----------------------------------------------------------------- */

static void draw_sequence(uint64_t seed, const float *logits, int n, int32_t *tokens, int n_tokens)
{
    glimpse_sampling p = params_plain();
    p.seed = seed;
    p.top_k = 100;
    p.top_p = 0.95f;
    sampler *s = NULL;
    sampler_scratch *sc = NULL;
    open_sampler(&p, n, &s, &sc);
    for (int i = 0; i < n_tokens; i++) {
        sample_result r;
        REQUIRE(sampler_sample(s, sc, logits, &r, NULL) == 0, "draw %d failed", i);
        tokens[i] = r.token;
    }
    close_sampler(s, sc);
}

START_TEST(test_seed_repeats)
{
    enum { N = 500, T = 1000 };
    static float logits[N];
    static int32_t a[T], b[T], c[T];
    random_logits(logits, N, -3.0, 3.0, 71);
    draw_sequence(42, logits, N, a, T);
    draw_sequence(42, logits, N, b, T);
    draw_sequence(43, logits, N, c, T);
    ck_assert_mem_eq(a, b, sizeof a);
    int same = 0;
    for (int i = 0; i < T; i++)
        same += a[i] == c[i];
    /* Independent draws agree at a rate of sum p^2, far below 1. */
    ck_assert_int_lt(same, T / 2);
}
END_TEST

/* One scratch serves many sequences: interleaving two penalised samplers on
 * a shared scratch gives exactly what each gives on its own scratch. */
START_TEST(test_shared_scratch)
{
    enum { N = 300, T = 200 };
    static float logits[N];
    random_logits(logits, N, -2.0, 2.0, 75);
    glimpse_sampling p = params_plain();
    p.repetition_penalty = 1.4f;
    p.frequency_penalty = 0.3f;
    p.penalty_last_n = 16;
    p.top_p = 0.9f;
    sampler *a = NULL, *b = NULL, *a2 = NULL, *b2 = NULL;
    sampler_scratch *shared = NULL, *own_a = NULL, *own_b = NULL;
    ck_assert_int_eq(sampler_scratch_create(N, &shared, NULL), 0);
    ck_assert_int_eq(sampler_scratch_create(N, &own_a, NULL), 0);
    ck_assert_int_eq(sampler_scratch_create(N, &own_b, NULL), 0);
    p.seed = 1;
    ck_assert_int_eq(sampler_create(&p, N, &a, NULL), 0);
    ck_assert_int_eq(sampler_create(&p, N, &a2, NULL), 0);
    p.seed = 2;
    ck_assert_int_eq(sampler_create(&p, N, &b, NULL), 0);
    ck_assert_int_eq(sampler_create(&p, N, &b2, NULL), 0);
    for (int i = 0; i < T; i++) {
        sample_result ra, rb, ra2, rb2;
        REQUIRE(sampler_sample(a, shared, logits, &ra, NULL) == 0 && sampler_sample(b, shared, logits, &rb, NULL) == 0 &&
                    sampler_sample(a2, own_a, logits, &ra2, NULL) == 0 &&
                    sampler_sample(b2, own_b, logits, &rb2, NULL) == 0,
                "step %d failed", i);
        REQUIRE(ra.token == ra2.token && rb.token == rb2.token, "step %d: shared scratch changed a draw", i);
    }
    sampler_free(a);
    sampler_free(b);
    sampler_free(a2);
    sampler_free(b2);
    sampler_scratch_free(shared);
    sampler_scratch_free(own_a);
    sampler_scratch_free(own_b);
}
END_TEST

/* ---- penalties ------------------------------------------------------------- */

enum { PEN_N = 8 };
static const int32_t pen_history[] = { 0, 1, 1, 4, 3, 3, 3, 5 };

/* x [PEN_N]: base after a fresh sampler with p and a window of last_n tokens
 * accepted pen_history; a second call on the same sampler must give the same
 * (the count table is left clean). */
static void penalize_after_history(glimpse_sampling p, int last_n, sampler_scratch *sc, const float *base, float *x)
{
    p.penalty_last_n = last_n;
    sampler *s = NULL;
    ck_assert_int_eq(sampler_create(&p, PEN_N, &s, NULL), 0);
    for (size_t i = 0; i < sizeof pen_history / sizeof pen_history[0]; i++)
        ck_assert_int_eq(sampler_accept(s, pen_history[i], NULL), 0);
    float again[PEN_N];
    memcpy(x, base, sizeof again);
    memcpy(again, base, sizeof again);
    sampler_penalize(s, sc, x);
    sampler_penalize(s, sc, again);
    ck_assert_mem_eq(x, again, sizeof again);
    sampler_free(s);
}

START_TEST(test_penalties_exact)
{
    static const float base[PEN_N] = { 2.0f, -1.0f, 0.5f, -3.0f, 4.0f, 0.0f, 1.0f, -0.5f };
    glimpse_sampling p = params_plain();
    p.repetition_penalty = 1.5f;
    p.frequency_penalty = 0.25f;
    p.presence_penalty = 0.5f;
    sampler_scratch *sc = NULL;
    ck_assert_int_eq(sampler_scratch_create(PEN_N, &sc, NULL), 0);
    float x[PEN_N];
    penalize_after_history(p, 64, sc, base, x);
    /* Positive logits are divided, non-positive ones multiplied; then
     * count * frequency + presence is subtracted. */
    ck_assert_float_eq_tol(x[0], 2.0f / 1.5f - (1 * 0.25f + 0.5f), 1e-6f);
    ck_assert_float_eq_tol(x[1], -1.0f * 1.5f - (2 * 0.25f + 0.5f), 1e-6f);
    ck_assert_float_eq(x[2], 0.5f);
    ck_assert_float_eq_tol(x[3], -3.0f * 1.5f - (3 * 0.25f + 0.5f), 1e-6f);
    ck_assert_float_eq_tol(x[4], 4.0f / 1.5f - (1 * 0.25f + 0.5f), 1e-6f);
    ck_assert_float_eq_tol(x[5], 0.0f - (1 * 0.25f + 0.5f), 1e-6f);
    ck_assert_float_eq(x[6], 1.0f);
    ck_assert_float_eq(x[7], -0.5f);

    /* The window keeps only the last 3 tokens, across ring wrap-around:
     * history 0 1 1 4 3 3 3 5 -> window 3 3 5. */
    penalize_after_history(p, 3, sc, base, x);
    for (int i = 0; i < PEN_N; i++) {
        if (i == 3)
            ck_assert_float_eq_tol(x[3], -3.0f * 1.5f - (2 * 0.25f + 0.5f), 1e-6f);
        else if (i == 5)
            ck_assert_float_eq_tol(x[5], 0.0f - (1 * 0.25f + 0.5f), 1e-6f);
        else
            ck_assert_float_eq(x[i], base[i]);
    }

    /* Window 0 turns every penalty off. */
    penalize_after_history(p, 0, sc, base, x);
    ck_assert_mem_eq(x, base, sizeof x);
    sampler_scratch_free(sc);
}
END_TEST

/* sampler_sample records its own tokens: a greedy sampler with a repetition
 * penalty alternates between two close logits. */
START_TEST(test_penalty_feedback)
{
    static const float logits[3] = { 1.0f, 0.9f, -2.0f };
    glimpse_sampling p = params_plain();
    p.temperature = 0.0f;
    p.repetition_penalty = 2.0f;
    p.penalty_last_n = 1;
    sampler *s = NULL;
    sampler_scratch *sc = NULL;
    open_sampler(&p, 3, &s, &sc);
    static const int32_t want[] = { 0, 1, 0, 1, 0 };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        sample_result r;
        ck_assert_int_eq(sampler_sample(s, sc, logits, &r, NULL), 0);
        ck_assert_int_eq(r.token, want[i]);
    }
    close_sampler(s, sc);
}
END_TEST

/* ---- llama.cpp's chain ------------------------------------------------------ */

/* tests/data/sampler/llama-chain.txt holds what llama.cpp's own sampler chain
 * keeps, and with which probabilities, for random logits, histories and
 * parameters (the file's header says how it was made). Each draw here comes
 * from a fresh sampler (seed = draw number) fed the same history, so the
 * draws are i.i.d. from the sampler's distribution for that history. */
START_TEST(test_llama_chain_goldens)
{
    enum { V = 256, MAX_HIST = 64, DRAWS = 10000 };
    size_t len = 0;
    char *text = read_file(source_path("tests/data/sampler/llama-chain.txt"), &len);
    ck_assert_msg(text != NULL, "cannot read tests/data/sampler/llama-chain.txt");
    text = realloc(text, len + 1); /* read_file does not terminate; sscanf needs it */
    ck_assert_ptr_nonnull(text);
    text[len] = '\0';
    char *at = text;
    int n_cases = 0;
    sampler_scratch *sc = NULL;
    ck_assert_int_eq(sampler_scratch_create(V, &sc, NULL), 0);
    while ((at = strstr(at, "\ncase ")) != NULL) {
        glimpse_sampling p = params_plain();
        int n, used;
        ck_assert_int_eq(sscanf(at, " case %f %d %f %f %f %f %f %d logits %d%n", &p.temperature, &p.top_k, &p.top_p,
                                &p.min_p, &p.repetition_penalty, &p.frequency_penalty, &p.presence_penalty,
                                &p.penalty_last_n, &n, &used), 9);
        ck_assert_int_eq(n, V);
        at += used;
        float logits[V];
        for (int i = 0; i < V; i++) {
            REQUIRE(sscanf(at, "%f%n", &logits[i], &used) == 1, "case %d: logit %d unreadable", n_cases, i);
            at += used;
        }
        int n_hist;
        int32_t hist[MAX_HIST];
        ck_assert_int_eq(sscanf(at, " history %d%n", &n_hist, &used), 1);
        ck_assert(n_hist > 0 && n_hist <= MAX_HIST);
        at += used;
        for (int i = 0; i < n_hist; i++) {
            REQUIRE(sscanf(at, "%d%n", &hist[i], &used) == 1, "case %d: history %d unreadable", n_cases, i);
            at += used;
        }
        int n_kept;
        ck_assert_int_eq(sscanf(at, " kept %d%n", &n_kept, &used), 1);
        at += used;
        double prob[V] = { 0 };
        for (int i = 0; i < n_kept; i++) {
            int id;
            double pr;
            REQUIRE(sscanf(at, "%d %lf%n", &id, &pr, &used) == 2 && id >= 0 && id < V,
                    "case %d: kept line %d unreadable", n_cases, i);
            prob[id] = pr;
            at += used;
        }
        int counts[V] = { 0 };
        for (int d = 0; d < DRAWS; d++) {
            sampler *s = NULL;
            p.seed = (uint64_t)d;
            REQUIRE(sampler_create(&p, V, &s, NULL) == 0, "case %d: create failed", n_cases);
            for (int i = 0; i < n_hist; i++)
                REQUIRE(sampler_accept(s, hist[i], NULL) == 0, "case %d: accept %d failed", n_cases, hist[i]);
            sample_result r;
            REQUIRE(sampler_sample(s, sc, logits, &r, NULL) == 0, "case %d: draw %d failed", n_cases, d);
            counts[r.token]++;
            sampler_free(s);
        }
        int df;
        double x = chi_square(counts, prob, V, DRAWS, &df);
        ck_assert_msg(x != INFINITY, "case %d: drew a token llama.cpp's chain drops", n_cases);
        ck_assert_msg(df == 0 || x < chi2_bound(df), "case %d: chi-square %.1f over bound %.1f (df %d)", n_cases, x,
                      chi2_bound(df), df);
        n_cases++;
    }
    ck_assert_int_eq(n_cases, 7);
    sampler_scratch_free(sc);
    free(text);
}
END_TEST

/* ---- logprobs -------------------------------------------------------------- */

START_TEST(test_logprobs)
{
    enum { N = 5000 };
    static float logits[N];
    random_logits(logits, N, -15.0, 15.0, 81);
    logits[10] = logits[4000] = 16.0f; /* a tie at the top: lower id first */
    logits[77] = -INFINITY;
    long double m = -INFINITY, z = 0.0L;
    for (int i = 0; i < N; i++)
        m = logits[i] > m ? logits[i] : m;
    for (int i = 0; i < N; i++)
        z += expl((long double)logits[i] - m);
    long double lse = m + logl(z);

    glimpse_sampling p = params_plain();
    p.n_top_logprobs = GLIMPSE_MAX_TOP_LOGPROBS;
    /* Logprobs are the model's: the same whatever penalties and temperature. */
    p.temperature = 0.4f;
    p.top_k = 5;
    p.repetition_penalty = 3.0f;
    p.presence_penalty = 1.0f;
    p.penalty_last_n = 16;
    sampler *s = NULL;
    sampler_scratch *sc = NULL;
    open_sampler(&p, N, &s, &sc);
    ck_assert_int_eq(sampler_accept(s, 10, NULL), 0);
    int32_t order[N];
    for (int i = 0; i < N; i++)
        order[i] = i;
    sort_logits = logits;
    qsort(order, N, sizeof *order, by_logit_desc);
    for (int step = 0; step < 20; step++) {
        sample_result r;
        ck_assert_int_eq(sampler_sample(s, sc, logits, &r, NULL), 0);
        ck_assert_double_eq_tol(r.logprob, (double)(logits[r.token] - lse), 1e-5);
        ck_assert_int_eq(r.n_top, GLIMPSE_MAX_TOP_LOGPROBS);
        for (int i = 0; i < r.n_top; i++) {
            ck_assert_int_eq(r.top[i].id, order[i]);
            ck_assert_double_eq_tol(r.top[i].logprob, (double)(logits[order[i]] - lse), 1e-5);
        }
    }
    ck_assert_int_eq(order[0], 10);
    ck_assert_int_eq(order[1], 4000);
    close_sampler(s, sc);

    /* Fewer tokens than asked for: all of them, a masked one at -inf. */
    const float small[3] = { 0.0f, -INFINITY, 1.0f };
    open_sampler(&p, 3, &s, &sc);
    sample_result r;
    ck_assert_int_eq(sampler_sample(s, sc, small, &r, NULL), 0);
    ck_assert_int_eq(r.n_top, 3);
    ck_assert_int_eq(r.top[0].id, 2);
    ck_assert_int_eq(r.top[1].id, 0);
    ck_assert_int_eq(r.top[2].id, 1);
    ck_assert_double_eq_tol(r.top[0].logprob, -log1p(exp(-1.0)), 1e-6);
    ck_assert(isinf(r.top[2].logprob) && r.top[2].logprob < 0);
    close_sampler(s, sc);
}
END_TEST

/* ---- bad input --------------------------------------------------------------- */

START_TEST(test_bad_params)
{
    glimpse_sampling bad[12];
    int codes[12];
    int n = 0;
    glimpse_sampling ok = params_plain();
    bad[n] = ok, bad[n].temperature = -0.5f, codes[n++] = GLIMPSE_EINVAL;
    bad[n] = ok, bad[n].temperature = NAN, codes[n++] = GLIMPSE_EINVAL;
    bad[n] = ok, bad[n].temperature = INFINITY, codes[n++] = GLIMPSE_EINVAL;
    bad[n] = ok, bad[n].top_k = -1, codes[n++] = GLIMPSE_EINVAL;
    bad[n] = ok, bad[n].top_p = 1.5f, codes[n++] = GLIMPSE_EINVAL;
    bad[n] = ok, bad[n].top_p = NAN, codes[n++] = GLIMPSE_EINVAL;
    bad[n] = ok, bad[n].min_p = -0.1f, codes[n++] = GLIMPSE_EINVAL;
    bad[n] = ok, bad[n].repetition_penalty = 0.0f, codes[n++] = GLIMPSE_EINVAL;
    bad[n] = ok, bad[n].frequency_penalty = NAN, codes[n++] = GLIMPSE_EINVAL;
    bad[n] = ok, bad[n].penalty_last_n = -1, codes[n++] = GLIMPSE_EINVAL;
    bad[n] = ok, bad[n].penalty_last_n = SAMPLER_MAX_PENALTY_WINDOW + 1, codes[n++] = GLIMPSE_ELIMIT;
    bad[n] = ok, bad[n].n_top_logprobs = GLIMPSE_MAX_TOP_LOGPROBS + 1, codes[n++] = GLIMPSE_EINVAL;
    for (int i = 0; i < n; i++) {
        sampler *s = (sampler *)&ok; /* must be reset to NULL on failure */
        glimpse_err err = { 0 };
        ck_assert_int_eq(sampler_create(&bad[i], 10, &s, &err), codes[i]);
        ck_assert_ptr_null(s);
        ck_assert_int_eq(err.code, codes[i]);
        ck_assert(strlen(err.msg) > 0);
    }
    sampler *s = NULL;
    ck_assert_int_eq(sampler_create(&ok, 0, &s, NULL), GLIMPSE_EINVAL);
    sampler_scratch *sc = NULL;
    ck_assert_int_eq(sampler_scratch_create(-3, &sc, NULL), GLIMPSE_EINVAL);
    ck_assert_ptr_null(sc);
    sampler_free(NULL);
    sampler_scratch_free(NULL);
}
END_TEST

START_TEST(test_bad_logits)
{
    enum { N = 16 };
    float logits[N];
    glimpse_sampling p = params_plain();
    p.penalty_last_n = 4;
    sampler *s = NULL;
    sampler_scratch *sc = NULL, *sc_other = NULL;
    ck_assert_int_eq(sampler_create(&p, N, &s, NULL), 0);
    ck_assert_int_eq(sampler_scratch_create(N, &sc, NULL), 0);
    ck_assert_int_eq(sampler_scratch_create(N + 1, &sc_other, NULL), 0);
    sample_result r;
    glimpse_err err = { 0 };

    random_logits(logits, N, -1.0, 1.0, 91);
    ck_assert_int_eq(sampler_sample(s, sc_other, logits, &r, &err), GLIMPSE_EINVAL);
    logits[5] = NAN;
    ck_assert_int_eq(sampler_sample(s, sc, logits, &r, &err), GLIMPSE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "NaN"));
    logits[5] = INFINITY;
    ck_assert_int_eq(sampler_sample(s, sc, logits, &r, &err), GLIMPSE_EINVAL);
    for (int i = 0; i < N; i++)
        logits[i] = -INFINITY;
    ck_assert_int_eq(sampler_sample(s, sc, logits, &r, &err), GLIMPSE_EINVAL);
    ck_assert_int_eq(sampler_accept(s, N, &err), GLIMPSE_EINVAL);
    ck_assert_int_eq(sampler_accept(s, -1, &err), GLIMPSE_EINVAL);

    /* Huge logits and a tiny temperature: still a valid, finite choice. */
    random_logits(logits, N, -1.0, 1.0, 92);
    logits[3] = 3e38f;
    logits[4] = -3e38f;
    glimpse_sampling q = params_plain();
    q.temperature = 1e-30f;
    q.repetition_penalty = 1e-30f;
    q.penalty_last_n = 4;
    sampler *t = NULL;
    ck_assert_int_eq(sampler_create(&q, N, &t, NULL), 0);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(sampler_sample(t, sc, logits, &r, NULL), 0);
        ck_assert_int_eq(r.token, 3);
    }
    sampler_free(t);
    sampler_scratch_free(sc_other);
    close_sampler(s, sc);
}
END_TEST

/* ---- stop rules ---------------------------------------------------------------- */

/* A table case: pieces are pushed one by one (token ids 100, 101, ...); each
 * push must release exactly want[i] and the last one finish with `finish`.
 * Pieces are placed right before a guard page, so over-reads fault. */
typedef struct stop_case {
    const char *name;
    const char *stops[STOP_MAX_STRINGS];
    const char *pieces[8];
    const char *want[8];
    int32_t eog_at; /* index of a piece pushed as the end-of-generation token, or -1 */
    int64_t max_tokens;
    int finish;
} stop_case;

static const stop_case stop_cases[] = {
    { "no stop strings", { NULL }, { "Hel", "lo", " world" }, { "Hel", "lo", " world" }, -1, 0,
      GLIMPSE_FINISH_NONE },
    { "match across pieces", { "END" }, { "abcE", "N", "Dxyz" }, { "abc", "", "" }, -1, 0,
      GLIMPSE_FINISH_STOP },
    { "partial prefix then mismatch is released", { "END" }, { "abE", "Nx", "E" }, { "ab", "ENx", "" }, -1,
      0, GLIMPSE_FINISH_NONE },
    { "stop at the very start", { "Hi" }, { "Hi there" }, { "" }, -1, 0, GLIMPSE_FINISH_STOP },
    { "stop string split over three pieces at the start", { "<end>" }, { "<", "en", "d>" }, { "", "", "" },
      -1, 0, GLIMPSE_FINISH_STOP },
    { "overlapping stops: earliest end wins", { "abcd", "bc" }, { "xab", "cd" }, { "x", "a" }, -1, 0,
      GLIMPSE_FINISH_STOP },
    { "same end: the longer stop cuts earlier", { "c", "abc" }, { "xxab", "c" }, { "xx", "" }, -1, 0,
      GLIMPSE_FINISH_STOP },
    { "self-overlapping stop", { "aab" }, { "a", "a", "a", "b" }, { "", "", "a", "" }, -1, 0,
      GLIMPSE_FINISH_STOP },
    { "second of several stops", { "###", "\n\n", "User:" }, { "ok.\n", "Us", "er: hi" }, { "ok.", "\n", "" },
      -1, 0, GLIMPSE_FINISH_STOP },
    { "text after the stop in the same piece is dropped", { "." }, { "one. two. three" }, { "one" }, -1, 0,
      GLIMPSE_FINISH_STOP },
    { "multibyte stop split inside its character", { "\xC3\xA9" }, { "caf\xC3", "\xA9!" }, { "caf", "" }, -1,
      0, GLIMPSE_FINISH_STOP },
    { "UTF-8 character split across pieces is held", { NULL }, { "\xE2\x82", "\xAC ok", "\xF0\x9F", "\x98",
      "\x80" }, { "", "\xE2\x82\xAC ok", "", "", "\xF0\x9F\x98\x80" }, -1, 0, GLIMPSE_FINISH_NONE },
    { "multibyte stop prefix then a different character", { "\xE2\x82\xAC" }, { "\xE2\x82", "\xA2" },
      { "", "\xE2\x82\xA2" }, -1, 0, GLIMPSE_FINISH_NONE },
    { "end-of-generation releases held text", { "END" }, { "ab", "E", "<eos>" }, { "ab", "", "E" }, 2, 0,
      GLIMPSE_FINISH_STOP },
    { "max_tokens releases held text", { "END" }, { "a", "bE" }, { "a", "bE" }, -1, 2,
      GLIMPSE_FINISH_LENGTH },
    { "a stop on the last allowed token is a stop", { "END" }, { "a", "END" }, { "a", "" }, -1, 2,
      GLIMPSE_FINISH_STOP },
};

START_TEST(test_stop_table)
{
    const stop_case *c = &stop_cases[_i];
    const char *stops[STOP_MAX_STRINGS];
    size_t lens[STOP_MAX_STRINGS];
    int n_stops = 0;
    while (n_stops < STOP_MAX_STRINGS && c->stops[n_stops]) {
        stops[n_stops] = c->stops[n_stops];
        lens[n_stops] = strlen(c->stops[n_stops]);
        n_stops++;
    }
    const int32_t eog[2] = { 7, c->eog_at >= 0 ? 100 + c->eog_at : 8 };
    stop_matcher m;
    ck_assert_int_eq(stop_init(&m, stops, lens, n_stops, eog, 2, c->max_tokens, NULL), 0);
    int finish = GLIMPSE_FINISH_NONE;
    for (int i = 0; c->pieces[i]; i++) {
        ck_assert_msg(finish == GLIMPSE_FINISH_NONE, "%s: finished before piece %d", c->name, i);
        size_t len = strlen(c->pieces[i]);
        char *piece = guarded_copy(c->pieces[i], len);
        ck_assert_ptr_nonnull(piece);
        char out[64 + STOP_HOLD_MAX];
        size_t out_len = 0;
        finish = stop_push(&m, 100 + i, piece, len, out, sizeof out, &out_len, NULL);
        guarded_free(piece, len);
        ck_assert_msg(finish >= 0, "%s: piece %d failed", c->name, i);
        ck_assert_msg(out_len == strlen(c->want[i]) && memcmp(out, c->want[i], out_len) == 0,
                      "%s: piece %d released \"%.*s\", want \"%s\"", c->name, i, (int)out_len, out, c->want[i]);
    }
    ck_assert_msg(finish == c->finish, "%s: finish %d, want %d", c->name, finish, c->finish);
    if (finish != GLIMPSE_FINISH_NONE) {
        char out[STOP_HOLD_MAX + 8];
        size_t out_len = 99;
        ck_assert_int_eq(stop_push(&m, 5, "x", 1, out, sizeof out, &out_len, NULL), GLIMPSE_EINVAL);
        ck_assert_uint_eq(out_len, 0);
    }
}
END_TEST

/* Reference: the text up to the earliest-ending stop occurrence (longer stop
 * first on a tie), by brute force over the whole text. */
static size_t ref_stop_cut(const char *text, size_t len, const char *const *stops, int n_stops)
{
    for (size_t end = 1; end <= len; end++) {
        size_t best = len + 1;
        for (int k = 0; k < n_stops; k++) {
            size_t n = strlen(stops[k]);
            if (n <= end && memcmp(text + end - n, stops[k], n) == 0 && end - n < best)
                best = end - n;
        }
        if (best <= len)
            return best;
    }
    return len;
}

/* Whatever the split into pieces (1 … max_piece bytes, cut inside
 * characters too), the released text is the same and is the reference's cut,
 * and every release ends on a character boundary. Random text over a small
 * alphabet makes near-misses common; the UTF-8 case has stop strings that
 * start or end mid-sequence. */
typedef struct split_case {
    const char *alphabet[5];
    const char *stops[STOP_MAX_STRINGS];
    int max_chars, max_piece;
    bool some_stops; /* each trial uses the first 1 … all stops, not all */
    uint64_t seed;
} split_case;

static const split_case split_cases[] = {
    { { "a", "b", "c" }, { "abca", "cab", "bb", "aaa" }, 40, 5, true, 2024 },
    { { "a", "b", "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80" },
      { "\xC3\xA9\xE2\x82", "b\xC3\xA9" "b", "\xE2\x82\xAC\xE2\x82\xAC" }, 20, 6, false, 777 },
};

START_TEST(test_stop_any_split)
{
    const split_case *c = &split_cases[_i];
    int n_alpha = 0, n_all = 0;
    size_t lens[STOP_MAX_STRINGS];
    while (n_alpha < 5 && c->alphabet[n_alpha])
        n_alpha++;
    for (; n_all < STOP_MAX_STRINGS && c->stops[n_all]; n_all++)
        lens[n_all] = strlen(c->stops[n_all]);
    test_rand_state = c->seed;
    for (int trial = 0; trial < 2000; trial++) {
        char text[256];
        size_t len = 0;
        int n_chars = 1 + (int)(test_uniform() * c->max_chars);
        for (int i = 0; i < n_chars; i++) {
            const char *ch = c->alphabet[(int)(test_uniform() * n_alpha)];
            memcpy(text + len, ch, strlen(ch));
            len += strlen(ch);
        }
        int n_stops = c->some_stops ? 1 + (int)(test_uniform() * n_all) : n_all;
        size_t want = ref_stop_cut(text, len, c->stops, n_stops);
        stop_matcher m;
        REQUIRE(stop_init(&m, c->stops, lens, n_stops, NULL, 0, 0, NULL) == 0, "trial %d", trial);
        size_t got_len = 0, at = 0;
        int finish = GLIMPSE_FINISH_NONE;
        while (at < len && finish == GLIMPSE_FINISH_NONE) {
            size_t n = 1 + (size_t)(test_uniform() * c->max_piece);
            n = n > len - at ? len - at : n;
            char out[8 + STOP_HOLD_MAX];
            size_t out_len;
            finish = stop_push(&m, 1, text + at, n, out, sizeof out, &out_len, NULL);
            REQUIRE(finish >= 0, "trial %d: push failed", trial);
            REQUIRE(memcmp(out, text + got_len, out_len) == 0, "trial %d: released bytes differ", trial);
            got_len += out_len;
            REQUIRE(out_len == 0 || got_len == len || ((unsigned char)text[got_len] & 0xC0) != 0x80,
                    "trial %d: release ends inside a character at byte %zu", trial, got_len);
            at += n;
        }
        if (finish == GLIMPSE_FINISH_NONE) {
            char out[STOP_HOLD_MAX];
            size_t out_len;
            stop_flush(&m, out, &out_len);
            REQUIRE(memcmp(out, text + got_len, out_len) == 0, "trial %d: flushed bytes differ", trial);
            got_len += out_len;
        }
        REQUIRE(got_len == want, "trial %d: \"%.*s\" released %zu bytes, want %zu", trial, (int)len, text, got_len,
                want);
        REQUIRE(finish == (want < len ? GLIMPSE_FINISH_STOP : GLIMPSE_FINISH_NONE), "trial %d: finish %d", trial,
                finish);
    }
}
END_TEST

START_TEST(test_stop_limits)
{
    stop_matcher m;
    glimpse_err err = { 0 };
    const char *five[5] = { "a", "b", "c", "d", "e" };
    size_t five_lens[5] = { 1, 1, 1, 1, 1 };
    ck_assert_int_eq(stop_init(&m, five, five_lens, 5, NULL, 0, 0, &err), GLIMPSE_ELIMIT);
    size_t zero = 0;
    ck_assert_int_eq(stop_init(&m, five, &zero, 1, NULL, 0, 0, &err), GLIMPSE_EINVAL);
    char longest[STOP_MAX_LEN + 1];
    memset(longest, 'z', sizeof longest);
    const char *one[1] = { longest };
    size_t too_long = STOP_MAX_LEN + 1, max_len = STOP_MAX_LEN;
    ck_assert_int_eq(stop_init(&m, one, &too_long, 1, NULL, 0, 0, &err), GLIMPSE_ELIMIT);
    ck_assert_int_eq(stop_init(&m, NULL, NULL, 0, NULL, 0, -1, &err), GLIMPSE_EINVAL);
    int32_t eog[STOP_MAX_EOG + 1] = { 0 };
    ck_assert_int_eq(stop_init(&m, NULL, NULL, 0, eog, STOP_MAX_EOG + 1, 0, &err), GLIMPSE_ELIMIT);

    /* The longest stop string is held whole and matched across many pieces;
     * an output buffer without room for the held text is refused. */
    ck_assert_int_eq(stop_init(&m, one, &max_len, 1, NULL, 0, 0, &err), 0);
    char out[STOP_HOLD_MAX + 16];
    size_t out_len;
    ck_assert_int_eq(stop_push(&m, 1, "ok ", 3, out, 3 + STOP_HOLD_MAX - 1, &out_len, &err), GLIMPSE_ELIMIT);
    ck_assert_int_eq(stop_push(&m, 1, "ok ", 3, out, sizeof out, &out_len, &err), GLIMPSE_FINISH_NONE);
    ck_assert_uint_eq(out_len, 3);
    for (int i = 0; i < STOP_MAX_LEN - 1; i++) {
        ck_assert_int_eq(stop_push(&m, 1, "z", 1, out, sizeof out, &out_len, &err), GLIMPSE_FINISH_NONE);
        ck_assert_uint_eq(out_len, 0);
    }
    ck_assert_uint_eq(m.held_len, STOP_HOLD_MAX);
    /* The first new z completes the stop string; the second is dropped. */
    ck_assert_int_eq(stop_push(&m, 1, "zz", 2, out, sizeof out, &out_len, &err), GLIMPSE_FINISH_STOP);
    ck_assert_uint_eq(out_len, 0);
}
END_TEST

static Suite *sampler_suite(void)
{
    Suite *s = suite_create("sampler");
    TCase *tc = tcase_create("sampling");
    tcase_add_test(tc, test_rng_known_answers);
    tcase_add_test(tc, test_greedy_is_argmax);
    tcase_add_loop_test(tc, test_distribution, 0, (int)(sizeof stat_cases / sizeof stat_cases[0]));
    tcase_add_test(tc, test_exact_support);
    tcase_add_test(tc, test_seed_repeats);
    tcase_add_test(tc, test_shared_scratch);
    tcase_add_test(tc, test_penalties_exact);
    tcase_add_test(tc, test_penalty_feedback);
    tcase_add_test(tc, test_llama_chain_goldens);
    tcase_add_test(tc, test_logprobs);
    tcase_add_test(tc, test_bad_params);
    tcase_add_test(tc, test_bad_logits);
    suite_add_tcase(s, tc);
    TCase *ts = tcase_create("stop");
    tcase_add_loop_test(ts, test_stop_table, 0, (int)(sizeof stop_cases / sizeof stop_cases[0]));
    tcase_add_loop_test(ts, test_stop_any_split, 0, (int)(sizeof split_cases / sizeof split_cases[0]));
    tcase_add_test(ts, test_stop_limits);
    suite_add_tcase(s, ts);
    return s;
}

int main(void)
{
    return run_suite(sampler_suite());
}
