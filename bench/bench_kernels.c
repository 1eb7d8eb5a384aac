/*
 * bench_kernels.c — the engine's phases as fractions of this machine's limits.
 *
 *   make bench/bench_kernels
 *   bench/bench_kernels [-t THREADS] [-r REPEATS] MODEL.gguf... [--mmproj MMPROJ.gguf]...
 *
 * First measures the ceilings, with the pool's threads all working:
 *   - streaming read bandwidth (sum of a buffer far larger than the caches);
 *   - fp32 FMA peak per ISA (AVX2 ymm, AVX-512 zmm): independent FMA chains
 *     long enough to hide the latency, no memory traffic;
 *   - BF16 dot-product peak (AVX-512 BF16 vdpbf16ps) where the CPU has it;
 *   - int8 dot-product peak (AVX-512 VNNI vpdpbusd) where the CPU has it.
 * Then times, on the random models given (tools/make_model.py --preset ...):
 *   - vision encode of one tile (with --mmproj): GFLOP/s vs the widest fp32
 *     peak (and, for quantised or BF16 weights, the same ops vs the int8 or
 *     BF16 peak);
 *   - prefill of 512 tokens in one pass: GFLOP/s vs the same peaks;
 *   - single-stream decode: weight bytes read per token / time vs the read
 *     bandwidth (the bandwidth bound), measured again between the decode
 *     steps: the best window of those is the row's ceiling;
 *   - batched decode at 8 streams: tokens/s vs single-stream tokens/s;
 *   - the same at 1127 positions (a 256M prompt of one image's 17 tiles),
 *     where the attention's K/V reads outgrow the weights: bytes read per
 *     step (weights and the streams' K/V rows) / time vs the read bandwidth
 *     measured between its steps. No target; how long contexts fare.
 * The machine is shared, and the best run is the one least disturbed by
 * others: the ceilings are the best of 30 short windows (a few ms each, like
 * one decode step), prefill and vision the best of REPEATS runs (default 3),
 * decode the best step of 16 x REPEATS. Never a test.
 */
#include "decoder.h"
#include "gguf.h"
#include "kernels/kernels.h"
#include "kvcache.h"
#include "model.h"
#include "threadpool.h"
#include "vision.h"

#include <cblas.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define X86 1
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what, const glimpse_err *err)
{
    fprintf(stderr, "bench_kernels: %s: %s\n", what, err ? err->msg : "failed");
    exit(1);
}

/* ---- machine -------------------------------------------------------------------- */

typedef struct cpu_caps {
    bool avx2, avx512f, avx512bf16, avx512vnni;
} cpu_caps;

static cpu_caps detect(void)
{
    cpu_caps c = { 0 };
#ifdef X86
    unsigned a, b, cx, d;
    __builtin_cpu_init();
    c.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    c.avx512f = __builtin_cpu_supports("avx512f");
    c.avx512vnni = c.avx512f && __builtin_cpu_supports("avx512vnni");
    /* AVX512_BF16 is CPUID.(7,1):EAX bit 5 (older compilers cannot name it). */
    if (c.avx512f && __get_cpuid_count(7, 1, &a, &b, &cx, &d))
        c.avx512bf16 = (a >> 5) & 1;
#endif
    return c;
}

static void print_machine(const cpu_caps *c, int n_threads)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "model name", 10) == 0) {
            printf("cpu: %s", strchr(line, ':') + 2);
            break;
        }
    if (f)
        fclose(f);
    printf("isa: avx2+fma %s, avx512f %s, avx512_bf16 %s; kernels: %s; openblas: %s; threads: %d\n",
           c->avx2 ? "yes" : "no", c->avx512f ? "yes" : "no", c->avx512bf16 ? "yes" : "no", kernels_isa(),
           openblas_get_corename(), n_threads);
}

/* ---- ceilings ------------------------------------------------------------------- */

/* The pool's threads run a ceiling's parts (one per thread) at the same
 * time: each part waits at its start until every part has started, and the
 * window is from the first start after that to the last end. Without the
 * wait, a worker that the OS wakes late (another process holds its core)
 * leaves its part to the caller, and the window measures one thread doing
 * the work of all: on this 2-vCPU machine that halved the FMA peak in some
 * runs and not in others. Every pool thread runs one part at a time and
 * there are as many parts as threads, so all of them do start. */
enum { MAX_CEIL_THREADS = 64 };

typedef struct ceil_clock {
    atomic_int started;
    double t0[MAX_CEIL_THREADS], t1[MAX_CEIL_THREADS];
} ceil_clock;

static void ceil_start(ceil_clock *c, int ith, int nth)
{
    atomic_fetch_add(&c->started, 1);
    while (atomic_load(&c->started) < nth)
        ;
    c->t0[ith] = now_s();
}

/* The window of the run that just ended; resets the clock for the next. */
static double ceil_window(ceil_clock *c, int nth)
{
    double t0 = c->t0[0], t1 = c->t1[0];
    for (int i = 1; i < nth; i++) {
        t0 = c->t0[i] < t0 ? c->t0[i] : t0;
        t1 = c->t1[i] > t1 ? c->t1[i] : t1;
    }
    atomic_store(&c->started, 0);
    return t1 - t0;
}

/* Read bandwidth: each thread sums its slice of buf; 8 independent sums keep
 * enough loads in flight. */
typedef struct bw_job {
    ceil_clock clock;
    const float *buf;
    int64_t n;
    float sink[64];
} bw_job;

#ifdef X86
__attribute__((target("avx2"))) static float sum_avx2(const float *p, int64_t n)
{
    __m256 s[8];
    for (int i = 0; i < 8; i++)
        s[i] = _mm256_setzero_ps();
    for (int64_t i = 0; i + 64 <= n; i += 64)
        for (int u = 0; u < 8; u++)
            s[u] = _mm256_add_ps(s[u], _mm256_loadu_ps(p + i + 8 * u));
    for (int i = 1; i < 8; i++)
        s[0] = _mm256_add_ps(s[0], s[i]);
    float out[8];
    _mm256_storeu_ps(out, s[0]);
    return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}
#endif

static void bw_worker(void *arg, int ith, int nth)
{
    bw_job *j = arg;
    int64_t lo, hi;
    threadpool_split(j->n / 64, ith, nth, &lo, &hi);
    ceil_start(&j->clock, ith, nth);
    float s = 0;
#ifdef X86
    s = sum_avx2(j->buf + lo * 64, (hi - lo) * 64);
#else
    for (int64_t i = lo * 64; i < hi * 64; i++)
        s += j->buf[i];
#endif
    j->clock.t1[ith] = now_s();
    j->sink[ith % 64] = s;
}

/* Ceilings are the best of many short windows (a few ms, like one decode
 * step): on a shared machine a long window always includes time when other
 * processes hold our cores, and the phases are also best-of. */
enum { CEIL_REPEATS = 30 };

/* The bandwidth probe's buffer: 256 MiB of floats, 8x the L3, on huge
 * pages like the engine's packed weights (alloc_huge): on 4 KB pages
 * the probe read less than one-token decode does. */
static bw_job bw_probe;

static void bw_probe_init(void)
{
    const int64_t n = (int64_t)64 << 20;
    float *buf = alloc_huge((size_t)n * sizeof(float));
    if (!buf)
        die("bandwidth buffer", NULL);
    for (int64_t i = 0; i < n; i++)
        buf[i] = (float)(i & 7);
    bw_probe.buf = buf;
    bw_probe.n = n;
}

/* Bytes per second of one streaming read of the probe with all pool threads. */
static double bw_window(threadpool *tp)
{
    threadpool_run(tp, bw_worker, &bw_probe);
    return (double)bw_probe.n * sizeof(float) / ceil_window(&bw_probe.clock, threadpool_size(tp));
}

/* The best of repeats windows, after one that warms the pages and the pool. */
static double measure_bandwidth(threadpool *tp, int repeats)
{
    double best = 0;
    bw_window(tp);
    for (int r = 0; r < repeats; r++) {
        double b = bw_window(tp);
        best = b > best ? b : best;
    }
    return best;
}

/* FMA peak: 12 independent chains per thread (latency 4 x 2 ports = 8 in
 * flight at least), a fixed number of iterations (a few ms). */
enum { PEAK_ITERS = 1000 * 1000 };

typedef struct peak_job {
    ceil_clock clock;
    int isa; /* 0 avx2, 1 avx512f, 2 avx512 bf16, 3 avx512 vnni */
    float sink[64];
} peak_job;

#ifdef X86
__attribute__((target("avx2,fma"))) static float peak_avx2(void)
{
    __m256 a[12], m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++)
        a[i] = _mm256_set1_ps((float)i);
    for (long it = 0; it < PEAK_ITERS; it++)
        _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], m, c);
    for (int i = 1; i < 12; i++)
        a[0] = _mm256_add_ps(a[0], a[i]);
    return _mm256_cvtss_f32(a[0]);
}

__attribute__((target("avx512f"))) static float peak_avx512(void)
{
    __m512 a[12], m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++)
        a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < PEAK_ITERS; it++)
        _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], m, c);
    for (int i = 1; i < 12; i++)
        a[0] = _mm512_add_ps(a[0], a[i]);
    return _mm512_reduce_add_ps(a[0]);
}

/* vdpbf16ps: 16 lanes x 2 products = 32 multiply-adds (64 flops) each. */
__attribute__((target("avx512f,avx512bf16"))) static float peak_bf16(void)
{
    __m512 a[12];
    __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3380);
    for (int i = 0; i < 12; i++)
        a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < PEAK_ITERS; it++)
        _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) a[i] = _mm512_dpbf16_ps(a[i], x, y);
    for (int i = 1; i < 12; i++)
        a[0] = _mm512_add_ps(a[0], a[i]);
    return _mm512_reduce_add_ps(a[0]);
}

/* vpdpbusd: 16 lanes x 4 byte products = 64 multiply-adds (128 ops) each,
 * the instruction of the quantised matrix products. */
__attribute__((target("avx512f,avx512vnni"))) static float peak_vnni(void)
{
    __m512i a[12];
    const __m512i x = _mm512_set1_epi8(3), y = _mm512_set1_epi8(-2);
    for (int i = 0; i < 12; i++)
        a[i] = _mm512_set1_epi32(i);
    for (long it = 0; it < PEAK_ITERS; it++)
        _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) a[i] = _mm512_dpbusd_epi32(a[i], x, y);
    for (int i = 1; i < 12; i++)
        a[0] = _mm512_add_epi32(a[0], a[i]);
    return (float)_mm512_reduce_add_epi32(a[0]);
}
#endif

static void peak_worker(void *arg, int ith, int nth)
{
    peak_job *j = arg;
    float s = 0;
    ceil_start(&j->clock, ith, nth);
#ifdef X86
    s = j->isa == 0 ? peak_avx2() : j->isa == 1 ? peak_avx512() : j->isa == 2 ? peak_bf16() : peak_vnni();
#endif
    j->clock.t1[ith] = now_s();
    j->sink[ith % 64] = s;
}

/* FLOP/s of all pool threads running the isa's FMA loop. */
static double measure_peak(threadpool *tp, int isa, int repeats)
{
    static const double flops_per_op[4] = { 16, 32, 64, 128 };
    peak_job j = { .isa = isa };
    double best = 1e30;
    for (int r = 0; r < repeats + 1; r++) {
        threadpool_run(tp, peak_worker, &j);
        double t = ceil_window(&j.clock, threadpool_size(tp));
        if (r > 0 && t < best)
            best = t;
    }
    return (double)threadpool_size(tp) * PEAK_ITERS * 12 * flops_per_op[isa] / best;
}

/* ---- phases --------------------------------------------------------------------- */

/* The int8 VNNI and BF16 dot peaks (ops/s), 0 where the CPU lacks them:
 * the quantised and the BF16 products' own ceilings, next to the fp32 one
 * the targets name. */
static double int8_peak, bf16_peak;

static double matrix_flops(const tensor *w, int64_t n_tok)
{
    return 2.0 * (double)w->ne[0] * (double)w->ne[1] * (double)n_tok;
}

static double matrix_bytes(const tensor *w)
{
    return (double)w->nbytes;
}

/* Weight bytes one decode token reads: every layer matrix and the LM head
 * (the token_embd lookup reads one row: negligible). */
static double decode_bytes(const text_model *m)
{
    double b = matrix_bytes(m->w.output);
    for (int l = 0; l < m->cfg.n_layer; l++) {
        const text_layer *L = &m->w.layers[l];
        b += matrix_bytes(L->wq) + matrix_bytes(L->wk) + matrix_bytes(L->wv) + matrix_bytes(L->wo) +
             matrix_bytes(L->ffn_gate) + matrix_bytes(L->ffn_up) + matrix_bytes(L->ffn_down);
    }
    return b;
}

/* FLOPs of a prefill of n tokens at positions 0..n-1 with logits for the last. */
static double prefill_flops(const text_model *m, int64_t n)
{
    const text_config *c = &m->cfg;
    double f = matrix_flops(m->w.output, 1);
    for (int l = 0; l < c->n_layer; l++) {
        const text_layer *L = &m->w.layers[l];
        f += matrix_flops(L->wq, n) + matrix_flops(L->wk, n) + matrix_flops(L->wv, n) + matrix_flops(L->wo, n) +
             matrix_flops(L->ffn_gate, n) + matrix_flops(L->ffn_up, n) + matrix_flops(L->ffn_down, n);
        /* q·k and p·v over positions 0..i for every row i, every head */
        f += 2.0 * 2.0 * c->n_head * c->head_dim * ((double)n * (double)(n + 1) / 2);
    }
    return f;
}

typedef struct text_rig {
    gguf_file *f;
    text_model m;
    kv_cache *kv;
    decoder *d;
    int seqs[8];
} text_rig;

enum { PREFILL = 512, N_STREAMS = 8, DECODE_CTX = 64, LONG_CTX = 1127, DECODE_STEPS = 16 };
enum { SEQ_POS = LONG_CTX + DECODE_STEPS, SEQ_BLOCKS = (SEQ_POS + 15) / 16 };

static void rig_open(text_rig *r, const char *path, threadpool *tp)
{
    glimpse_err err = { 0 };
    memset(r, 0, sizeof *r);
    if (gguf_open(path, &r->f, &err) || text_model_load(r->f, &r->m, &err))
        die(path, &err);
    kv_params kp = {
        .n_layer = r->m.cfg.n_layer,
        .row_len = r->m.cfg.n_head_kv * r->m.cfg.head_dim,
        .n_head = r->m.cfg.n_head_kv,
        .type = KV_F16,
        .block_size = 16,
        .n_blocks = N_STREAMS * SEQ_BLOCKS,
        .max_seqs = N_STREAMS,
        .max_seq_len = SEQ_POS,
    };
    if (kv_cache_create(&kp, &r->kv, &err) || decoder_create(&r->m, r->kv, tp, PREFILL, N_STREAMS, &r->d, &err))
        die(path, &err);
    for (int s = 0; s < N_STREAMS; s++)
        if (kv_seq_open(r->kv, &r->seqs[s], &err) ||
            kv_seq_reserve(r->kv, r->seqs[s], SEQ_POS, &err))
            die("kv reserve", &err);
}

static void rig_close(text_rig *r)
{
    decoder_free(r->d);
    kv_cache_free(r->kv);
    text_model_release(&r->m);
    gguf_close(r->f);
}

/* One pass over n entries: streams seq0.. seq0+n_seqs-1, n/n_seqs positions
 * each from pos0. */
static double run_pass(text_rig *r, dec_entry *b, int seq0, int n_seqs, int per_seq, int64_t pos0)
{
    glimpse_err err = { 0 };
    int n = 0;
    /* entries of one sequence must be contiguous with rising positions */
    for (int s = seq0; s < seq0 + n_seqs; s++)
        for (int p = 0; p < per_seq; p++)
            b[n++] = (dec_entry){ .seq = r->seqs[s], .pos = pos0 + p, .token = (int32_t)((p * 7919 + s * 104729) % r->m.cfg.n_vocab),
                                  .logits = p == per_seq - 1 };
    double t0 = now_s();
    if (decoder_forward(r->d, b, n, &err))
        die("decoder_forward", &err);
    return now_s() - t0;
}

/* One decode step of the N_STREAMS streams, each at position pos; its time. */
static double batched_step(text_rig *r, int64_t pos)
{
    dec_entry e[N_STREAMS];
    glimpse_err err = { 0 };
    for (int q = 0; q < N_STREAMS; q++)
        e[q] = (dec_entry){ .seq = r->seqs[q], .pos = pos, .token = 100 + q, .logits = true };
    double t0 = now_s();
    if (decoder_forward(r->d, e, N_STREAMS, &err))
        die("decoder_forward", &err);
    return now_s() - t0;
}

/* K/V bytes one stream's decode step reads at n positions: every layer's K
 * and V rows of them. */
static double kv_bytes(const text_rig *r, int64_t n)
{
    const kv_params *kp = kv_cache_params(r->kv);
    return 2.0 * (double)n * kp->n_layer * kp->row_len * (kp->type == KV_F16 ? 2 : 4);
}

/* One line of the table: the ratio is achieved / ceiling. */
static void add_row(const char *name, const char *unit, double ceiling, double achieved)
{
    printf("  %-52s ceiling %9.2f %-8s achieved %9.2f  ratio %6.1f %%\n", name, ceiling, unit, achieved,
           100.0 * achieved / ceiling);
    fflush(stdout);
}

/* One more row for a phase whose matrices are of the given type: the same
 * ops against the peak of the instruction that multiplies them. */
static void add_peak_row(const char *phase, int type, double ops_per_s)
{
    const bool bf16 = type == DTYPE_BF16, int8 = type != DTYPE_F32 && type != DTYPE_F16 && !bf16;
    const double peak = bf16 ? bf16_peak : int8 ? int8_peak : 0;
    char name[112];
    if (peak <= 0)
        return;
    snprintf(name, sizeof name, "%s, vs %s", phase, bf16 ? "bf16" : "int8");
    add_row(name, "GOP/s", peak / 1e9, ops_per_s / 1e9);
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static void bench_text(const char *path, threadpool *tp, int repeats, double peak)
{
    text_rig r;
    char name[96];
    dec_entry *b = malloc(PREFILL * sizeof *b);
    if (!b)
        die("batch", NULL);
    rig_open(&r, path, tp);
    const char *mn = base_name(path);

    /* prefill: one pass of 512 positions of stream 0 */
    double best = 1e30;
    for (int i = 0; i < repeats; i++) {
        double t = run_pass(&r, b, 0, 1, PREFILL, 0);
        best = t < best ? t : best;
    }
    snprintf(name, sizeof name, "%s prefill %d", mn, PREFILL);
    add_row(name, "GFLOP/s", peak / 1e9, prefill_flops(&r.m, PREFILL) / best / 1e9);
    add_peak_row(name, r.m.w.layers[0].wq->type, prefill_flops(&r.m, PREFILL) / best);

    /* single-stream decode after a context of DECODE_CTX positions; each
     * step follows a window of the bandwidth probe, whose best is this
     * row's ceiling: both are measured over the same seconds, so a neighbour
     * that takes memory bandwidth for a while lowers both or neither */
    run_pass(&r, b, 0, 1, DECODE_CTX, 0);
    double single = 1e30, bw = 0;
    for (int i = 0; i < repeats; i++)
        for (int s = 0; s < DECODE_STEPS; s++) {
            const double w = bw_window(tp);
            bw = w > bw ? w : bw;
            double t = run_pass(&r, b, 0, 1, 1, DECODE_CTX + s);
            single = t < single ? t : single;
        }
    const double bytes = decode_bytes(&r.m);
    snprintf(name, sizeof name, "%s decode 1 (%.0f MB/token)", mn, bytes / 1e6);
    add_row(name, "GB/s", bw / 1e9, bytes / single / 1e9);

    /* 8 streams, each at DECODE_CTX + s, one entry per stream per pass */
    run_pass(&r, b, 0, N_STREAMS, DECODE_CTX, 0);
    double batched = 1e30;
    for (int i = 0; i < repeats; i++)
        for (int s = 0; s < DECODE_STEPS; s++) {
            double t = batched_step(&r, DECODE_CTX + s);
            batched = t < batched ? t : batched;
        }
    /* the ceiling column is single-stream tokens/s: the ratio is the speed-up */
    snprintf(name, sizeof name, "%s decode %d streams", mn, N_STREAMS);
    add_row(name, "tok/s", 1.0 / single, N_STREAMS / batched);

    /* 8 streams at LONG_CTX + s, after a prefill of each stream in passes
     * of PREFILL; the bandwidth probe between the steps, as for one stream */
    for (int q = 0; q < N_STREAMS; q++)
        for (int p0 = 0; p0 < LONG_CTX; p0 += PREFILL)
            run_pass(&r, b, q, 1, LONG_CTX - p0 < PREFILL ? LONG_CTX - p0 : PREFILL, p0);
    double long_step = 1e30, long_bytes = 0;
    bw = 0;
    for (int i = 0; i < repeats; i++)
        for (int s = 0; s < DECODE_STEPS; s++) {
            const double w = bw_window(tp);
            bw = w > bw ? w : bw;
            double t = batched_step(&r, LONG_CTX + s);
            if (t < long_step) {
                long_step = t;
                long_bytes = bytes + N_STREAMS * kv_bytes(&r, LONG_CTX + s + 1);
            }
        }
    snprintf(name, sizeof name, "%s decode %d x %d pos (%.0f MB)", mn, N_STREAMS, LONG_CTX, long_bytes / 1e6);
    add_row(name, "GB/s", bw / 1e9, long_bytes / long_step / 1e9);
    rig_close(&r);
    free(b);
}

static double vision_flops(const vision_hparams *hp)
{
    const double n = hp->n_pos, C = hp->n_embd, F = hp->n_ff, p = hp->patch_size;
    double f = 2.0 * hp->n_patches * 3 * p * p * C;
    f += hp->n_layer_run * (2.0 * n * C * (4 * C + 2 * F) + 4.0 * n * n * C);
    f += 2.0 * hp->n_tokens_out * C * hp->scale_factor * hp->scale_factor * hp->n_embd_text;
    return f;
}

static void bench_vision(const char *path, threadpool *tp, int repeats, double peak)
{
    glimpse_err err = { 0 };
    gguf_file *f = NULL;
    vision_model *vm = NULL;
    if (gguf_open(path, &f, &err) || vision_load(f, &vm, &err))
        die(path, &err);
    const vision_hparams *hp = vision_get_hparams(vm);
    const size_t S = (size_t)hp->image_size;
    float *tile = malloc(3 * S * S * sizeof *tile);
    float *out = malloc((size_t)hp->n_tokens_out * (size_t)hp->n_embd_text * sizeof *out);
    if (!tile || !out)
        die("tile", NULL);
    for (size_t i = 0; i < 3 * S * S; i++)
        tile[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
    vision_encode(vm, tp, tile, out); /* warm-up: page in the weights */
    double best = 1e30;
    for (int i = 0; i < repeats; i++) {
        double t0 = now_s();
        vision_encode(vm, tp, tile, out);
        double t = now_s() - t0;
        best = t < best ? t : best;
    }
    char name[96];
    snprintf(name, sizeof name, "%s encode %dx%d (%.2f s)", base_name(path), hp->image_size, hp->image_size, best);
    add_row(name, "GFLOP/s", peak / 1e9, vision_flops(hp) / best / 1e9);
    const tensor *wq = gguf_find_tensor(f, "v.blk.0.attn_q.weight");
    snprintf(name, sizeof name, "%s encode", base_name(path));
    if (wq)
        add_peak_row(name, wq->type, vision_flops(hp) / best);
    free(tile);
    free(out);
    vision_free(vm);
    gguf_close(f);
}

int main(int argc, char **argv)
{
    int n_threads = threadpool_default_size(), repeats = 3;
    const char *models[16], *mmproj[4];
    int n_models = 0, n_mmproj = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-t") == 0 && i + 1 < argc)
            n_threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "-r") == 0 && i + 1 < argc)
            repeats = atoi(argv[++i]);
        else if (strcmp(argv[i], "--mmproj") == 0 && i + 1 < argc && n_mmproj < 4)
            mmproj[n_mmproj++] = argv[++i];
        else if (argv[i][0] != '-' && n_models < 16)
            models[n_models++] = argv[i];
        else {
            fprintf(stderr, "usage: bench_kernels [-t THREADS] [-r REPEATS] MODEL.gguf... [--mmproj MMPROJ.gguf]...\n");
            return 2;
        }
    }
    if (n_threads < 1 || n_threads > MAX_CEIL_THREADS || repeats < 1)
        return 2;

    glimpse_err err = { 0 };
    threadpool *tp = NULL;
    kernels_init();
    if (threadpool_create(n_threads, &tp, &err))
        die("threadpool", &err);
    cpu_caps caps = detect();
    print_machine(&caps, n_threads);

    printf("ceilings (best of %d):\n", CEIL_REPEATS);
    bw_probe_init();
    printf("  read bandwidth            %8.2f GB/s\n", measure_bandwidth(tp, CEIL_REPEATS) / 1e9);
    double peak = 0, p;
    if (caps.avx2) {
        p = measure_peak(tp, 0, CEIL_REPEATS);
        printf("  fp32 FMA peak, AVX2       %8.1f GFLOP/s\n", p / 1e9);
        peak = p > peak ? p : peak;
    }
    if (caps.avx512f) {
        p = measure_peak(tp, 1, CEIL_REPEATS);
        printf("  fp32 FMA peak, AVX-512F   %8.1f GFLOP/s\n", p / 1e9);
        peak = p > peak ? p : peak;
    }
    if (caps.avx512bf16) {
        bf16_peak = measure_peak(tp, 2, CEIL_REPEATS);
        printf("  BF16 dot peak, AVX-512    %8.1f GFLOP/s\n", bf16_peak / 1e9);
    }
    if (caps.avx512vnni) {
        int8_peak = measure_peak(tp, 3, CEIL_REPEATS);
        printf("  int8 dot peak, AVX-512 VNNI %6.1f GOP/s\n", int8_peak / 1e9);
    }
    if (peak == 0)
        peak = 1e9; /* no SIMD: ratios are vs 1 GFLOP/s */
    printf("phases (best of %d; ratios vs the widest fp32 peak, the read bandwidth measured between the decode\n"
           "steps, or single-stream decode):\n",
           repeats);
    for (int i = 0; i < n_mmproj; i++)
        bench_vision(mmproj[i], tp, repeats, peak);
    for (int i = 0; i < n_models; i++)
        bench_text(models[i], tp, repeats, peak);
    threadpool_free(tp);
    free((void *)bw_probe.buf);
    return 0;
}
