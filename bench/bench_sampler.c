/*
 * bench_sampler.c — cost of one sampling step at SmolVLM's vocabulary size.
 *
 *   make bench/bench_sampler && bench/bench_sampler [n_vocab]
 *
 * Prints the machine, then CPU time per token (process CPU clock, so a busy
 * machine inflates it less than wall time would) for the common settings and
 * each one's ratio to greedy, whose cost is the floor every setting pays: the
 * copy, the log-sum-exp for the logprobs and the argmax. Logits are Gaussian
 * (sd 3), roughly the spread of a small LM's output.
 */
#include "sampler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>

static double cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void print_machine(void)
{
    struct utsname u;
    if (uname(&u) == 0)
        printf("machine: %s %s %s\n", u.sysname, u.release, u.machine);
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "model name", 10) == 0) {
            printf("cpu: %s", strchr(line, ':') + 2);
            break;
        }
    if (f)
        fclose(f);
}

/* Microseconds of CPU per sampled token for params p. */
static double time_per_token(const glimpse_sampling *p, const float *logits, int32_t n_vocab, int n_iter)
{
    sampler *s = NULL;
    sampler_scratch *sc = NULL;
    glimpse_err err = { 0 };
    if (sampler_create(p, n_vocab, &s, &err) < 0 || sampler_scratch_create(n_vocab, &sc, &err) < 0) {
        fprintf(stderr, "bench_sampler: %s\n", err.msg);
        exit(1);
    }
    double t0 = cpu_ms();
    for (int i = 0; i < n_iter; i++) {
        sample_result r;
        if (sampler_sample(s, sc, logits, &r, &err) < 0) {
            fprintf(stderr, "bench_sampler: %s\n", err.msg);
            exit(1);
        }
    }
    double us = (cpu_ms() - t0) * 1e3 / n_iter;
    sampler_scratch_free(sc);
    sampler_free(s);
    return us;
}

int main(int argc, char **argv)
{
    int32_t n_vocab = argc > 1 ? atoi(argv[1]) : 49280; /* SmolVLM's vocabulary */
    if (n_vocab <= 0) {
        fprintf(stderr, "usage: bench_sampler [n_vocab > 0]\n");
        return 2;
    }
    float *logits = malloc((size_t)n_vocab * sizeof *logits);
    if (!logits)
        return 1;
    rng r;
    rng_seed(&r, 1);
    for (int32_t i = 0; i < n_vocab; i++) {
        double u1 = 1.0 - rng_uniform(&r), u2 = rng_uniform(&r); /* Box–Muller */
        logits[i] = (float)(3.0 * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
    }
    print_machine();
    printf("n_vocab: %d\n\n%-44s %12s %10s\n", (int)n_vocab, "setting", "us/token", "x greedy");

    glimpse_sampling base;
    glimpse_sampling_default(&base);
    base.penalty_last_n = 0;
    struct {
        const char *name;
        glimpse_sampling p;
    } cases[8];
    int n = 0;
    cases[n].name = "greedy (temperature 0)", cases[n].p = base, cases[n++].p.temperature = 0.0f;
    cases[n].name = "temperature 1, no filter (OpenAI default)", cases[n++].p = base;
    cases[n].name = "top_k 40", cases[n].p = base, cases[n++].p.top_k = 40;
    cases[n].name = "top_p 0.95 over the whole vocabulary", cases[n].p = base, cases[n++].p.top_p = 0.95f;
    cases[n].name = "min_p 0.05", cases[n].p = base, cases[n++].p.min_p = 0.05f;
    glimpse_sampling chain = base;
    chain.top_k = 40, chain.top_p = 0.95f, chain.min_p = 0.05f, chain.temperature = 0.8f;
    chain.repetition_penalty = 1.1f, chain.penalty_last_n = 64;
    cases[n].name = "llama.cpp defaults + repetition 1.1 over 64", cases[n++].p = chain;
    cases[n].name = "  the same + 20 top logprobs", cases[n].p = chain, cases[n++].p.n_top_logprobs = 20;

    double greedy_us = 0.0;
    for (int i = 0; i < n; i++) {
        double us = time_per_token(&cases[i].p, logits, n_vocab, 300);
        if (i == 0)
            greedy_us = us;
        printf("%-44s %12.1f %10.2f\n", cases[i].name, us, us / greedy_us);
    }
    free(logits);
    return 0;
}
