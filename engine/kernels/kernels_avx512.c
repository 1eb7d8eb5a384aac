/*
 * kernels_avx512.c — the AVX-512 table: the AVX2 table with the matrix
 * tiles that gain from 16-lane registers replaced: F32/F16/BF16 (4 weight
 * rows x 4 tokens per micro-kernel, kernels_tile.h), Q8_0/Q4_0/Q5_0 with
 * VNNI where the CPU has it (the same blocking, tokens outer), Q4_K and
 * Q6_K with VNNI (2 rows x 4 tokens), and the fused attention
 * (attention_avx512.c); and the LayerNorm and RMS norm of 8 rows at once.
 * Every tile's outputs are summed across lanes in one tree (hsum16), 16 of
 * them at a time.
 *
 * Numerics vs the reference: float tiles sum each output in one 16-lane f32
 * chain instead of double, the quantised tiles add the block terms in 16 lanes
 * (8 per block) instead of one f32 sum, so both differ by float rounding
 * (as the AVX2 ones do). Every output's order of operations depends on k
 * alone (kernels_tile.h: batch invariance).
 *
 * Only the functions marked TARGET use AVX-512 instructions; kn_avx512_impl
 * checks the CPU before handing them out, so the file is safe to link
 * everywhere.
 */
#include "kernels_impl.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include "simd_exp.h"

#include <cpuid.h>
#include <immintrin.h>
#include <string.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define INLINE TARGET static inline __attribute__((always_inline))
/* Loops over register arrays fully unrolled, so that they stay registers. */
#define UNROLL_ALL _Pragma("GCC unroll 16")

/* ---- sums across lanes ------------------------------------------------------------ */

/* Every tile output is the sum of one accumulator's 16 lanes in this tree:
 * lanes i and i + 8 first, then i and i + 4, i and i + 2, i and i + 1 (GCC's
 * _mm512_reduce_add_ps, spelled out so that every compiler sums alike). */
INLINE float hsum16(__m512 v)
{
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), hi);
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

/* The hsum16 tree for 16 vectors at once, as a transpose-and-add network:
 * lane 4q + p of the result is the sum of v[4p + q]. Each level adds the
 * same lane pairs as hsum16 (addition commutes, so the order of the two
 * operands does not matter), and no lane ever meets a lane of another
 * vector: the sums are hsum16's bit for bit, in 15 additions instead of 64
 * (k = 576..768 is only 36-48 FMAs per output). */
INLINE __m512 hsum16_x16(const __m512 v[16])
{
    __m512 u[8], w[4], x[2];
    /* i and i + 8: v[2j] into lanes 0-7 of u[j], v[2j + 1] into 8-15 */
    UNROLL_ALL
    for (int j = 0; j < 8; j++)
        u[j] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * j], v[2 * j + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * j], v[2 * j + 1], 0xee));
    /* i and i + 4: quarter q of w[m] from v[4m + q] */
    UNROLL_ALL
    for (int m = 0; m < 4; m++)
        w[m] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * m], u[2 * m + 1], 0x88),
                             _mm512_shuffle_f32x4(u[2 * m], u[2 * m + 1], 0xdd));
    /* i and i + 2: quarter q of x[n] holds two lanes each of v[8n + q], v[8n + 4 + q] */
    UNROLL_ALL
    for (int n = 0; n < 2; n++)
        x[n] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * n], w[2 * n + 1], 0x44),
                             _mm512_shuffle_ps(w[2 * n], w[2 * n + 1], 0xee));
    /* i and i + 1 */
    return _mm512_add_ps(_mm512_shuffle_ps(x[0], x[1], 0x88), _mm512_shuffle_ps(x[0], x[1], 0xdd));
}

/* vf_store_sums of every AVX-512 micro-kernel (acc [8][4], R x T of them
 * used; T * ceil(R / 4) <= 4, true of every shape here: 4 x 4, 8 x 1, 2 x 4,
 * 4 x 1, 1 x T): group g = (token t, rows 4c..4c+3) goes to quarter g of the
 * network's result, so each group is one masked store of up to 4 outputs.
 * A single output takes hsum16 itself (the same tree). */
INLINE void store_sums16(__m512 acc[8][4], int R, int T, float *y, size_t y_stride)
{
    if (R * T == 1) {
        y[0] = hsum16(acc[0][0]);
        return;
    }
    const int C = (R + 3) / 4;
    __m512 v[16];
    _Alignas(64) float sums[16];
    UNROLL_ALL
    for (int i = 0; i < 16; i++)
        v[i] = _mm512_setzero_ps();
    UNROLL_ALL
    for (int t = 0; t < T; t++) {
        UNROLL_ALL
        for (int r = 0; r < R; r++)
            v[4 * (r % 4) + t * C + r / 4] = acc[r][t];
    }
    _mm512_store_ps(sums, hsum16_x16(v));
    UNROLL_ALL
    for (int t = 0; t < T; t++) {
        UNROLL_ALL
        for (int c = 0; c < C; c++) {
            const int n = R - 4 * c < 4 ? R - 4 * c : 4;
            _mm_mask_storeu_ps(y + (size_t)t * y_stride + 4 * c, (__mmask8)((1u << n) - 1),
                               _mm_load_ps(sums + 4 * (t * C + c)));
        }
    }
}

/* ---- float tiles ----------------------------------------------------------------- */

#define VF __m512
#define VL 16
#define vf_zero() _mm512_setzero_ps()
#define vf_fma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vf_store_sums(acc, R, T, y, y_stride) store_sums16(acc, R, T, y, y_stride)
#define vf_load(p) _mm512_loadu_ps(p)
#define vf_from_f16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define vf_from_bf16(p) \
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
/* 32 zmm registers: 4 x 4 accumulators, 4 weight vectors, 1 activation.
 * Measured on one Zen 5 core, F16 weights, k = 576: 4x4, 4x6, 5x5 and 6x4
 * all reach ~220 GFLOP/s of its 258 peak; 3x8 and 2x8 ~195. A single token
 * (decode) runs 8 rows per step, 8 chains in flight. */
#define TILE_R 4
#define TILE_T 4
#define TILE_R1 8
#include "kernels_tile.h"

/* ---- LayerNorm, 8 rows at once -------------------------------------------------- */

/* r[j] = element j of the 8 rows r[0..7] (an 8 x 8 transpose). */
INLINE void transpose8(__m256 r[8])
{
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xee);
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xee);
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xee);
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xee);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* Row j of the rows lane j computes: the k rows at x (stride floats
 * apart), the last of them again in the lanes past k (whose results go
 * unused). */
INLINE const float *lane_row(const float *x, size_t stride, int k, int j)
{
    return x + (size_t)(j < k ? j : k - 1) * stride;
}

/* c[e] = element i + e of lane_row's 8 rows, one lane per row, for e < 8
 * and i + e < n: a transpose8 of 8 loads, the last n % 8 elements one by
 * one. */
INLINE void column_block(const float *x, size_t stride, int k, int64_t i, int64_t n, __m256 c[8])
{
    if (i + 8 <= n) {
        UNROLL_ALL
        for (int j = 0; j < 8; j++)
            c[j] = _mm256_loadu_ps(lane_row(x, stride, k, j) + i);
        transpose8(c);
        return;
    }
    for (int64_t e = 0; e < n - i; e++) {
        _Alignas(32) float v[8];
        for (int j = 0; j < 8; j++)
            v[j] = lane_row(x, stride, k, j)[i + e];
        c[e] = _mm256_load_ps(v);
    }
}

/* What row_sums8 adds up: each element, its square, or its distance from
 * the row's value in sub, squared. */
enum row_term { TERM_X, TERM_XX, TERM_DD };

/* The reference norms' sums (kernels_ref.c) for k <= 8 rows at once: a
 * chain of double additions, element after element, whose latency bounds a
 * row (~3 cycles an element); here lane j of one register carries row j's
 * chain, the same additions of the same f32 terms in the same order, so
 * every row gets the reference's bits while 8 chains run in the time of
 * one. */
INLINE __m512d row_sums8(const float *x, size_t stride, int k, int64_t n, enum row_term term, __m256 sub)
{
    __m512d sum = _mm512_setzero_pd();
    __m256 c[8];
    for (int64_t i = 0; i < n; i += 8) {
        column_block(x, stride, k, i, n, c);
        for (int e = 0; e < 8 && i + e < n; e++) {
            const __m256 d = term == TERM_DD ? _mm256_sub_ps(c[e], sub) : c[e];
            sum = _mm512_add_pd(sum, _mm512_cvtps_pd(term == TERM_X ? d : _mm256_mul_ps(d, d)));
        }
    }
    return sum;
}

/* y = ((x - mean) * scale) * w + b over one row, each step rounded in f32
 * as the reference does (w, b may be NULL; mean 0 for the RMS norm, where
 * x - 0 is x). */
INLINE void scale_row(const float *x, float mean, float scale, const float *w, const float *b, int64_t n, float *y)
{
    const __m512 mv = _mm512_set1_ps(mean), sv = _mm512_set1_ps(scale);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mv), sv);
        if (w)
            v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, w + i));
        if (b)
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, b + i));
        _mm512_mask_storeu_ps(y + i, m, v);
    }
}

/* 1.0f / sqrtf(v + eps) lane by lane (IEEE division and square root: the
 * reference's bits). */
INLINE __m256 norm_scale(__m256 v, float eps)
{
    return _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_sqrt_ps(_mm256_add_ps(v, _mm256_set1_ps(eps))));
}

/* The reference's LayerNorm of 8 rows at a time, fewer in the last group
 * (row_sums8); the mean, variance and scale are its f32/f64 operations lane
 * by lane. */
TARGET static void layer_norm_rows(const float *x, size_t x_stride, const float *w, const float *b, int64_t n,
                                   float eps, float *y, size_t y_stride, int64_t n_rows)
{
    for (int64_t r = 0; r < n_rows; r += 8) {
        const float *xr = x + (size_t)r * x_stride;
        const int k = n_rows - r < 8 ? (int)(n_rows - r) : 8;
        const __m512d sum = row_sums8(xr, x_stride, k, n, TERM_X, _mm256_setzero_ps());
        const __m256 mean = _mm256_div_ps(_mm512_cvtpd_ps(sum), _mm256_set1_ps((float)n));
        const __m512d sq = row_sums8(xr, x_stride, k, n, TERM_DD, mean);
        const __m256 var = _mm512_cvtpd_ps(_mm512_div_pd(sq, _mm512_set1_pd((double)n)));
        const __m256 scale = norm_scale(var, eps);
        _Alignas(32) float means[8], scales[8];
        _mm256_store_ps(means, mean);
        _mm256_store_ps(scales, scale);
        for (int j = 0; j < k; j++)
            scale_row(xr + (size_t)j * x_stride, means[j], scales[j], w, b, n, y + (size_t)(r + j) * y_stride);
    }
}

/* The reference's RMS norm of 8 rows at a time, likewise. */
TARGET static void rms_norm_rows(const float *x, size_t x_stride, const float *w, int64_t n, float eps, float *y,
                                 size_t y_stride, int64_t n_rows)
{
    for (int64_t r = 0; r < n_rows; r += 8) {
        const float *xr = x + (size_t)r * x_stride;
        const int k = n_rows - r < 8 ? (int)(n_rows - r) : 8;
        const __m512d sum = row_sums8(xr, x_stride, k, n, TERM_XX, _mm256_setzero_ps());
        const __m256 mean = _mm512_cvtpd_ps(_mm512_div_pd(sum, _mm512_set1_pd((double)n)));
        const __m256 scale = norm_scale(mean, eps);
        _Alignas(32) float scales[8];
        _mm256_store_ps(scales, scale);
        for (int j = 0; j < k; j++)
            scale_row(xr + (size_t)j * x_stride, 0.0f, scales[j], w, NULL, n, y + (size_t)(r + j) * y_stride);
    }
}

/* ---- SwiGLU ---------------------------------------------------------------------- */

/* The AVX2 table's SwiGLU 16 lanes at a time (kn_exp512 gives kn_exp256's
 * results, so every element gets the AVX2 table's bits); the last n % 16
 * elements go to the AVX2 one itself, which starts them at a multiple of 8
 * as it would have. */
/* The AVX2 table, which the tails below finish with (kn_avx2_impl asks the
 * CPU on every call); set by kn_avx512_impl before any of them can run. */
static const kn_impl *avx2_table;

TARGET static void swiglu(float *y, const float *g, const float *u, int64_t n)
{
    int64_t i = 0;
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(g + i);
        const __m512 e = kn_exp512(_mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), sign)));
        _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_div_ps(v, _mm512_add_ps(one, e)), _mm512_loadu_ps(u + i)));
    }
    if (i < n)
        avx2_table->swiglu(y + i, g + i, u + i, n - i);
}

/* ---- GELU tables ------------------------------------------------------------------ */

/* The AVX2 table's lookups (its gelu_lookup) 16 at a time: the input
 * rounded to half indexes the table (a 32-bit gather, the table's spare
 * entry covers the last index), the entry widened back; the last n % 16
 * elements go to the AVX2 function. So every element gets its bits. */
INLINE __m512 gelu_lookup16(const uint16_t *table, __m512 v)
{
    const __m512i idx = _mm512_cvtepu16_epi32(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    const __m512i g = _mm512_i32gather_epi32(idx, (const void *)table, 2);
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
}

TARGET static void gelu(float *x, int64_t n)
{
    const uint16_t *table = kn_gelu_table(false);
    const __m512 lo = _mm512_set1_ps(-10.0f), hi = _mm512_set1_ps(10.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        __m512 g = gelu_lookup16(table, v);
        /* x <= -10: 0; x >= 10: x (ggml's pass-through outside the table) */
        g = _mm512_mask_mov_ps(g, _mm512_cmp_ps_mask(v, lo, _CMP_LE_OQ), _mm512_setzero_ps());
        g = _mm512_mask_mov_ps(g, _mm512_cmp_ps_mask(v, hi, _CMP_GE_OQ), v);
        _mm512_storeu_ps(x + i, g);
    }
    if (i < n)
        avx2_table->gelu(x + i, n - i);
}

TARGET static void gelu_quick(float *x, int64_t n)
{
    const uint16_t *table = kn_gelu_table(true);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(x + i, gelu_lookup16(table, _mm512_loadu_ps(x + i)));
    if (i < n)
        avx2_table->gelu_quick(x + i, n - i);
}

/* ---- packed rows: tokens of a group ------------------------------------------------ */

/* The tokens of one group of KN_R16 rows, 8 at a time and then the rest,
 * as CALL(T, t): T tokens from token t, T a constant at every expansion so
 * that the micro-kernels' register arrays stay registers. */
#define R16_TOKENS(n_tok, CALL)                  \
    do {                                         \
        int64_t t_ = 0;                          \
        for (; t_ + 8 <= (n_tok); t_ += 8)       \
            CALL(8, t_);                         \
        switch ((n_tok) - t_) {                  \
        case 7: CALL(7, t_); break;              \
        case 6: CALL(6, t_); break;              \
        case 5: CALL(5, t_); break;              \
        case 4: CALL(4, t_); break;              \
        case 3: CALL(3, t_); break;              \
        case 2: CALL(2, t_); break;              \
        case 1: CALL(1, t_); break;              \
        default: break;                          \
        }                                        \
    } while (0)

/* ---- F16, packed ------------------------------------------------------------------ */

/* Elements ahead of their use that the F16_R16 kernel prefetches, a line
 * per pair of elements: 2 KB at one token, 8 KB for more, whose steps take
 * longer (8 streams, F16 256M / 500M models, medians of 4 alternating runs:
 * 9.06 / 24.3 ms a step 2 KB ahead, 7.68 / 20.2 at 4 KB, 7.46 / 18.6 at
 * 8 KB, 7.72 / 18.8 at 16 KB; one token: no gain past 2 KB). */
#define F16_R16_PF_ONE 64
#define F16_R16_PF_MANY 256

/* A DTYPE_F16_R16 group's 16 rows x T tokens (T <= 8): per element i, one
 * load widens element i of the 16 rows, times the token's activation
 * broadcast, into two chains (even and odd i) added at the end, so lane r
 * ends with row r's dot; each output's operations are the same whatever T
 * (batch invariance) and nothing is reduced across lanes. One token reads
 * the group front to back: against the row-major tile's 8 rows
 * side by side, one token of 16-row groups read 42-44 GB/s where that read
 * 35-37 on this machine (120 matrices of 1536 x 576 from DRAM, 2 threads),
 * and 512 tokens ran 400-417 GFLOP/s against 362-368. */
INLINE void micro_f16_r16(int T, int64_t k, const uint16_t *g, const uint8_t *a, size_t a_row, float *y,
                          size_t y_stride)
{
    __m512 a0[8], a1[8];
    TILE_UNROLL
    for (int t = 0; t < T; t++)
        a0[t] = a1[t] = _mm512_setzero_ps();
    const int64_t pf = T > 1 ? F16_R16_PF_MANY : F16_R16_PF_ONE;
    int64_t i = 0;
    for (; i + 2 <= k; i += 2) {
        _mm_prefetch((const char *)(g + (size_t)(i + pf) * KN_R16), _MM_HINT_T0);
        const __m512 w0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(g + (size_t)i * KN_R16)));
        const __m512 w1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(g + (size_t)(i + 1) * KN_R16)));
        TILE_UNROLL
        for (int t = 0; t < T; t++) {
            const float *x = (const float *)(a + (size_t)t * a_row) + i;
            a0[t] = _mm512_fmadd_ps(w0, _mm512_set1_ps(x[0]), a0[t]);
            a1[t] = _mm512_fmadd_ps(w1, _mm512_set1_ps(x[1]), a1[t]);
        }
    }
    if (i < k) {
        const __m512 w0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(g + (size_t)i * KN_R16)));
        TILE_UNROLL
        for (int t = 0; t < T; t++)
            a0[t] = _mm512_fmadd_ps(w0, _mm512_set1_ps(((const float *)(a + (size_t)t * a_row))[i]), a0[t]);
    }
    TILE_UNROLL
    for (int t = 0; t < T; t++)
        _mm512_storeu_ps(y + (size_t)t * y_stride, _mm512_add_ps(a0[t], a1[t]));
}

/* Two DTYPE_F16_R16 groups side by side (g and the one after it, 32 rows)
 * x T <= 4 tokens: element i of both groups widened once, each token's
 * activation broadcast once for both, so 8 broadcasts per 16 FMAs where
 * micro_f16_r16 has one per FMA (one Zen 5 core, L1-resident: FMAs with a
 * broadcast operand ran at 84 % of the FMA peak, these at 95 %). Every
 * output's chains are micro_f16_r16's (even and odd i, added at the end):
 * the same bits. pf: NULL, or a pair whose element i the loop prefetches
 * at its element i. */
INLINE void micro_f16_r32(int T, int64_t k, const uint16_t *g, const uint16_t *pf, const uint8_t *a, size_t a_row,
                          float *y, size_t y_stride)
{
    const uint16_t *h = g + (size_t)k * KN_R16;
    __m512 a0[2][4], a1[2][4];
    TILE_UNROLL
    for (int t = 0; t < T; t++)
        a0[0][t] = a1[0][t] = a0[1][t] = a1[1][t] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= k; i += 2) {
        if (pf)
            _mm_prefetch((const char *)(pf + (size_t)i * KN_R16), _MM_HINT_T0);
        const __m512 w00 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(g + (size_t)i * KN_R16)));
        const __m512 w01 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(g + (size_t)(i + 1) * KN_R16)));
        const __m512 w10 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + (size_t)i * KN_R16)));
        const __m512 w11 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + (size_t)(i + 1) * KN_R16)));
        TILE_UNROLL
        for (int t = 0; t < T; t++) {
            const float *x = (const float *)(a + (size_t)t * a_row) + i;
            const __m512 b0 = _mm512_set1_ps(x[0]), b1 = _mm512_set1_ps(x[1]);
            a0[0][t] = _mm512_fmadd_ps(w00, b0, a0[0][t]);
            a1[0][t] = _mm512_fmadd_ps(w01, b1, a1[0][t]);
            a0[1][t] = _mm512_fmadd_ps(w10, b0, a0[1][t]);
            a1[1][t] = _mm512_fmadd_ps(w11, b1, a1[1][t]);
        }
    }
    if (i < k) {
        const __m512 w00 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(g + (size_t)i * KN_R16)));
        const __m512 w10 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + (size_t)i * KN_R16)));
        TILE_UNROLL
        for (int t = 0; t < T; t++) {
            const __m512 b0 = _mm512_set1_ps(((const float *)(a + (size_t)t * a_row))[i]);
            a0[0][t] = _mm512_fmadd_ps(w00, b0, a0[0][t]);
            a0[1][t] = _mm512_fmadd_ps(w10, b0, a0[1][t]);
        }
    }
    TILE_UNROLL
    for (int t = 0; t < T; t++) {
        _mm512_storeu_ps(y + (size_t)t * y_stride, _mm512_add_ps(a0[0][t], a1[0][t]));
        _mm512_storeu_ps(y + (size_t)t * y_stride + KN_R16, _mm512_add_ps(a0[1][t], a1[1][t]));
    }
}

/* n_rows is a multiple of KN_R16 (kn_packed_add_rows packs no other
 * matrix, and kernels.c's row tiles are multiples of it).
 *
 * From 5 tokens, pairs of groups (micro_f16_r32) in passes of at most 4
 * tokens, up to 8 tokens two passes as even as can be; the first two passes
 * over a pair ask for the next pair, a group each, so that the memory is
 * asked at an even pace and the next pair's first pass finds it in cache.
 * Measured against the groups one by one, 2 threads: prefill 512 of the F16
 * 256M model 346-355 -> 375-384 GFLOP/s, 8 streams 1089-1143 -> 1130-1155
 * tokens/s (4 alternating bench runs, best steps), in the fast-memory state
 * 1134 -> 1238; step medians in alternating steps of one process, with the
 * memory slow and the machine busy, 1-3 % slower to 1.5 % faster. With 2 to
 * 4 tokens one pass reads the pair at twice the pace, held by the memory
 * (4 streams: 4.83 -> 5.32 ms a step): the groups one by one there. */
TARGET static void tile_f16_r16(int64_t k, const void *w, size_t w_row, int64_t n_rows, const void *a, size_t a_row,
                                int64_t n_tok, float *y, size_t y_stride)
{
    int64_t o = 0;
    const int64_t first = n_tok <= 8 ? (n_tok + 1) / 2 : 4; /* tokens of the first pass */
    for (; n_tok > 4 && o + 2 * KN_R16 <= n_rows; o += 2 * KN_R16) {
        const uint16_t *g = (const uint16_t *)((const uint8_t *)w + (size_t)o * w_row);
        const uint16_t *next = g + (size_t)(2 * k) * KN_R16;
        for (int64_t t = 0; t < n_tok;) {
            const int64_t T = t == 0 ? first : n_tok - t < 4 ? n_tok - t : 4;
            const uint16_t *pf = t == 0 ? next : t == first ? next + (size_t)k * KN_R16 : NULL;
            const uint8_t *at = (const uint8_t *)a + (size_t)t * a_row;
            float *yt = y + (size_t)t * y_stride + o;
            switch (T) {
            case 1: micro_f16_r32(1, k, g, pf, at, a_row, yt, y_stride); break;
            case 2: micro_f16_r32(2, k, g, pf, at, a_row, yt, y_stride); break;
            case 3: micro_f16_r32(3, k, g, pf, at, a_row, yt, y_stride); break;
            default: micro_f16_r32(4, k, g, pf, at, a_row, yt, y_stride); break;
            }
            t += T;
        }
    }
    for (; o + KN_R16 <= n_rows; o += KN_R16) {
        const uint16_t *g = (const uint16_t *)((const uint8_t *)w + (size_t)o * w_row);
#define CALL_F16_R16(T, t) \
    micro_f16_r16(T, k, g, (const uint8_t *)a + (size_t)(t) * a_row, a_row, y + (size_t)(t) * y_stride + o, y_stride)
        R16_TOKENS(n_tok, CALL_F16_R16);
#undef CALL_F16_R16
    }
}

/* ---- Q8_0, Q4_0, Q5_0 x Q8_0 with VNNI --------------------------------------------- */

#undef TARGET
#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

enum w32_kind { W_Q8_0, W_Q4_0, W_Q5_0 };

static inline size_t w32_size(enum w32_kind kind)
{
    return kind == W_Q8_0 ? sizeof(block_q8_0) : kind == W_Q4_0 ? sizeof(block_q4_0) : sizeof(block_q5_0);
}

/* Block b of a row as 32 signed quants, and its half scale. Nibble formats:
 * byte j holds element j (low) and j+16 (high); Q5_0's 5th bit of element j
 * is bit j of qh (a byte mask as it stands); offsets 8 / 16 removed. */
INLINE __m256i w32_block(enum w32_kind kind, const uint8_t *row, int64_t b, uint16_t *d)
{
    const uint8_t *blk = row + (size_t)b * w32_size(kind);
    memcpy(d, blk, sizeof *d);
    if (kind == W_Q8_0)
        return _mm256_loadu_si256((const __m256i *)((const block_q8_0 *)blk)->qs);
    const uint8_t *qs = kind == W_Q4_0 ? ((const block_q4_0 *)blk)->qs : ((const block_q5_0 *)blk)->qs;
    const __m128i raw = _mm_loadu_si128((const __m128i *)qs), low4 = _mm_set1_epi8(15);
    __m256i q = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), low4), _mm_and_si128(raw, low4));
    if (kind == W_Q4_0)
        return _mm256_sub_epi8(q, _mm256_set1_epi8(8));
    uint32_t qh;
    memcpy(&qh, ((const block_q5_0 *)blk)->qh, sizeof qh);
    q = _mm256_sub_epi8(q, _mm256_set1_epi8(16));
    return _mm256_mask_add_epi8(q, (__mmask32)qh, q, _mm256_set1_epi8(16));
}

/* Blocks b and b+1 in one register (b+1 zero when absent), and their scales:
 * 8 lanes of d_b, 8 of d_{b+1}. */
INLINE __m512i w32_pair(enum w32_kind kind, const uint8_t *row, int64_t b, bool two, __m512 *scales)
{
    uint16_t d0, d1 = 0;
    const __m512i lo = _mm512_zextsi256_si512(w32_block(kind, row, b, &d0));
    const __m512i q = two ? _mm512_inserti64x4(lo, w32_block(kind, row, b + 1, &d1), 1) : lo;
    *scales = _mm512_cvtph_ps(_mm256_set_m128i(_mm_set1_epi16((short)d1), _mm_set1_epi16((short)d0)));
    return q;
}

/* The activation side of a micro_w32 step for one token: blocks b, b+1 as
 * a + 128 (see below) and their scales widened. */
typedef struct w32_act {
    __m512i q;
    __m512 d;
} w32_act;

INLINE w32_act w32_act_pair(const uint8_t *row, int64_t b, bool two)
{
    w32_act p;
    p.q = _mm512_xor_si512(w32_pair(W_Q8_0, row, b, two, &p.d), _mm512_set1_epi8((char)0x80));
    return p;
}

/* R weight rows x T Q8_0 activation rows, two blocks per step.
 * vpdpbusd multiplies unsigned by signed bytes: the activations go in as
 * a + 128 (they never hold -128, so a + 128 is 1..255), the weights signed,
 * and the accumulator starts at -128 * (the weight's 4-byte sums), computed
 * once per weight vector for all T tokens; so each 8-lane half holds one
 * block's exact integer partial sums, then scaled by d_w * d_a and added to
 * the pair's one accumulator. The order depends on k alone. The activation
 * rows come as a (a_row bytes apart), or when pa is not NULL already as
 * w32_act pairs, np per token (the same values). */
INLINE void micro_w32(enum w32_kind kind, int R, int T, int64_t k, const uint8_t *w, size_t w_row,
                      const uint8_t *a, size_t a_row, const w32_act *pa, int64_t np, float *y, size_t y_stride)
{
    const int64_t nb = k / QK8_0;
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    __m512 acc[TILE_R1][TILE_T], dw[TILE_R1];
    __m512i qw[TILE_R1], corr[TILE_R1];
    TILE_ACC_ZERO(acc, R, T, _mm512_setzero_ps());
    for (int64_t b = 0; b < nb; b += 2) {
        const bool two = b + 1 < nb;
        /* a step reads 2 blocks (36-68 bytes) of each row: two lines */
        prefetch_ahead(w, w_row, R, (size_t)b * w32_size(kind));
        prefetch_ahead(w, w_row, R, (size_t)b * w32_size(kind) + 64);
        TILE_UNROLL
        for (int r = 0; r < R; r++) {
            qw[r] = w32_pair(kind, w + (size_t)r * w_row, b, two, &dw[r]);
            corr[r] = _mm512_sub_epi32(_mm512_setzero_si512(),
                                       _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, qw[r]));
        }
        TILE_UNROLL
        for (int t = 0; t < T; t++) {
            const w32_act x = pa ? pa[t * np + b / 2] : w32_act_pair(a + (size_t)t * a_row, b, two);
            TILE_UNROLL
            for (int r = 0; r < R; r++) {
                const __m512i isum = _mm512_dpbusd_epi32(corr[r], x.q, qw[r]);
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dw[r], x.d), acc[r][t]);
            }
        }
    }
    store_sums16(acc, R, T, y, y_stride);
}

#define W32_Q8_0(R, T, k, w, w_row, a, a_row, y, ys) micro_w32(W_Q8_0, R, T, k, w, w_row, a, a_row, NULL, 0, y, ys)
#define W32_Q4_0(R, T, k, w, w_row, a, a_row, y, ys) micro_w32(W_Q4_0, R, T, k, w, w_row, a, a_row, NULL, 0, y, ys)
#define W32_Q5_0(R, T, k, w, w_row, a, a_row, y, ys) micro_w32(W_Q5_0, R, T, k, w, w_row, a, a_row, NULL, 0, y, ys)
#define MICRO_Q8_0(...) MICRO_WHOLE(W32_Q8_0, __VA_ARGS__)
#define MICRO_Q4_0(...) MICRO_WHOLE(W32_Q4_0, __VA_ARGS__)
#define MICRO_Q5_0(...) MICRO_WHOLE(W32_Q5_0, __VA_ARGS__)

/* The tiles on raw activation rows (rows outer, as DEFINE_TILE does). */
DEFINE_TILE(tile_q8_0_raw, MICRO_Q8_0, TILE_R, TILE_T, TILE_R1, 0)
DEFINE_TILE(tile_q4_0_raw, MICRO_Q4_0, TILE_R, TILE_T, TILE_R1, 0)
DEFINE_TILE(tile_q5_0_raw, MICRO_Q5_0, TILE_R, TILE_T, TILE_R1, 0)

/* Rows up to this many block pairs (k <= 3072) take the prepared path. */
#define W32_MAX_PAIRS 48

/* The tiles of Q8_0/Q4_0/Q5_0: tokens TILE_T at a time, outer, their
 * activation pairs prepared once (w32_act_pair) for all the rows, which
 * then go past them TILE_R at a time (the rows of a tile, kernels.c's 32,
 * stay in L1 or L2); the tokens left over, and rows too long for the
 * stack buffer, take the raw tile. The same chains either way. */
INLINE void tile_w32(enum w32_kind kind, kn_tile_fn raw, int64_t k, const void *w, size_t w_row, int64_t n_rows,
                     const void *a, size_t a_row, int64_t n_tok, float *y, size_t y_stride)
{
    const int64_t nb = k / QK8_0, np = (nb + 1) / 2, n_full = n_tok - n_tok % TILE_T;
    const uint8_t *w8 = w, *a8 = a;
    if (np > W32_MAX_PAIRS) {
        raw(k, w, w_row, n_rows, a, a_row, n_tok, y, y_stride);
        return;
    }
    w32_act prep[TILE_T * W32_MAX_PAIRS]; /* [TILE_T][np] */
    for (int64_t t = 0; t < n_full; t += TILE_T) {
        for (int j = 0; j < TILE_T; j++)
            for (int64_t b = 0; b < nb; b += 2)
                prep[j * np + b / 2] = w32_act_pair(a8 + (size_t)(t + j) * a_row, b, b + 1 < nb);
        float *yt = y + (size_t)t * y_stride;
        int64_t o = 0;
        for (; o + TILE_R <= n_rows; o += TILE_R)
            micro_w32(kind, TILE_R, TILE_T, k, w8 + (size_t)o * w_row, w_row, NULL, 0, prep, np, yt + o, y_stride);
        for (; o < n_rows; o++)
            micro_w32(kind, 1, TILE_T, k, w8 + (size_t)o * w_row, w_row, NULL, 0, prep, np, yt + o, y_stride);
    }
    if (n_full < n_tok)
        raw(k, w, w_row, n_rows, a8 + (size_t)n_full * a_row, a_row, n_tok - n_full, y + (size_t)n_full * y_stride,
            y_stride);
}

TARGET static void tile_q8_0(int64_t k, const void *w, size_t w_row, int64_t n_rows, const void *a, size_t a_row,
                             int64_t n_tok, float *y, size_t y_stride)
{
    tile_w32(W_Q8_0, tile_q8_0_raw, k, w, w_row, n_rows, a, a_row, n_tok, y, y_stride);
}

TARGET static void tile_q4_0(int64_t k, const void *w, size_t w_row, int64_t n_rows, const void *a, size_t a_row,
                             int64_t n_tok, float *y, size_t y_stride)
{
    tile_w32(W_Q4_0, tile_q4_0_raw, k, w, w_row, n_rows, a, a_row, n_tok, y, y_stride);
}

TARGET static void tile_q5_0(int64_t k, const void *w, size_t w_row, int64_t n_rows, const void *a, size_t a_row,
                             int64_t n_tok, float *y, size_t y_stride)
{
    tile_w32(W_Q5_0, tile_q5_0_raw, k, w, w_row, n_rows, a, a_row, n_tok, y, y_stride);
}

/* ---- Q8_0/Q4_0/Q5_0 in groups of 16 rows (DTYPE_*_R16) with VNNI --------------- */

/* The 8 registers of block b's quants (kernels_impl.h): register i holds
 * elements 4i..4i+3 of the 16 rows as unsigned bytes, the quant plus the
 * type's offset. Q8_0 stores them so; Q4_0/Q5_0 store nibble bytes, whose
 * low halves are elements 4i.. and high halves 16+4i.. (i < 4), Q5_0 with
 * the 5th bits as byte masks. */
INLINE void r16_quants(int type, const uint8_t *body, __m512i wq[8])
{
    if (type == DTYPE_Q8_0_R16) {
        TILE_UNROLL
        for (int i = 0; i < 8; i++)
            wq[i] = _mm512_loadu_si512((const void *)(body + (size_t)i * 4 * KN_R16));
        return;
    }
    const __m512i low4 = _mm512_set1_epi8(15), bit5 = _mm512_set1_epi8(16);
    const uint8_t *qs = body + (type == DTYPE_Q5_0_R16 ? 64 : 0);
    TILE_UNROLL
    for (int i = 0; i < 4; i++) {
        const __m512i v = _mm512_loadu_si512((const void *)(qs + (size_t)i * 4 * KN_R16));
        wq[i] = _mm512_and_si512(v, low4);
        wq[4 + i] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
        if (type == DTYPE_Q5_0_R16) {
            uint64_t m0, m1;
            memcpy(&m0, body + 8 * i, sizeof m0);
            memcpy(&m1, body + 8 * (4 + i), sizeof m1);
            wq[i] = _mm512_or_si512(wq[i], _mm512_maskz_mov_epi8(m0, bit5));
            wq[4 + i] = _mm512_or_si512(wq[4 + i], _mm512_maskz_mov_epi8(m1, bit5));
        }
    }
}

/* The prefetch: the lines of the block R16_PF_ONE ahead at one token,
 * R16_PF_MANY ahead for more, whose blocks take longer. Measured (500M /
 * 256M Q8_0 models, 2 threads, alternating runs): one token 40.9-41.5 ->
 * 46.8-48.5 / 32.4-36.5 -> 41.1-42.8 GB/s of weights with 4 blocks ahead
 * against none (the row-major tiles read 44.1-46.1 / 35.6-37.2 then); 8
 * streams, medians of 4 runs, 13.5 / 5.0 ms a step with 4 blocks ahead,
 * 11.6 / 4.9 with 16, 11.8 / 5.0 with 24, 12.1 / 5.2 with 32. */
#define R16_PF_ONE 4
#define R16_PF_MANY 16

/* A group's 16 rows x T tokens (T <= 8, a constant at every call). Per block
 * and token, vpdpbusd multiplies the 16 rows' stored quants, four at a
 * time, by the token's four quants broadcast, in two chains started at
 * -offset * (the token's Σ qs) and at 0: lane r ends with row r's exact
 * integer block sum. Then acc[t] lane r += sum * (d_r * d_t), one FMA: each
 * output is one f32 chain over the blocks in order, whatever T (batch
 * invariance), and differs from the reference dot (the scales times the
 * sum, then add) only by the FMA's single rounding. A block costs 8
 * registers of weights (loads, and for the nibble types their unpacking)
 * and a scale conversion for all T tokens, then per token 8 vpdpbusd and
 * 4 more instructions for 16 x 32 products, with nothing to reduce across
 * lanes; the row-major Q8_0 tile spends ~14 per row and 2 blocks at one
 * token (its scales and corrections): one-token decode of the 256M / 500M
 * Q8_0 models read 37 / 46 GB/s of weights with it, 43 / 50 with these
 * (bench/README.md). */
typedef int32_t quads __attribute__((may_alias, aligned(4)));
INLINE void micro_r16(int type, int T, int64_t nb, const uint8_t *g, const uint8_t *a, size_t a_row, float *y,
                      size_t y_stride)
{
    const size_t blk = KN_R16 * (type == DTYPE_Q8_0_R16   ? sizeof(block_q8_0)
                                 : type == DTYPE_Q4_0_R16 ? sizeof(block_q4_0)
                                                          : sizeof(block_q5_0));
    const int offset = kn_r16_offset(type);
    __m512 acc[8];
    TILE_UNROLL
    for (int t = 0; t < T; t++)
        acc[t] = _mm512_setzero_ps();
    const int64_t pf = T > 1 ? R16_PF_MANY : R16_PF_ONE;
    for (int64_t b = 0; b < nb; b++) {
        for (size_t l = 0; l < blk; l += 64)
            _mm_prefetch((const char *)g + (size_t)(b + pf) * blk + l, _MM_HINT_T0);
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(g + kn_r16_scales(b, blk))));
        __m512i wq[8];
        r16_quants(type, g + kn_r16_body(b, nb, blk), wq);
        TILE_UNROLL
        for (int t = 0; t < T; t++) {
            const block_q8_0x *x = (const block_q8_0x *)(a + (size_t)t * a_row) + b;
            /* the quants read in place, four at a time: one broadcast load
             * each. Copied to an int32_t array first, they became 64-bit
             * loads and a broadcast from a general register per four (two
             * more vector operations each): 8 tokens of the 256M Q8_0
             * model's matrices on one thread, 4.8 -> 3.9 ms a pass (two
             * threads are held by the memory there, no change). */
            const quads *xq = (const quads *)(const void *)x->qs;
            __m512i s0 = _mm512_set1_epi32(-offset * x->sum), s1 = _mm512_setzero_si512();
            TILE_UNROLL
            for (int i = 0; i < QK8_0 / 4; i += 2) {
                s0 = _mm512_dpbusd_epi32(s0, wq[i], _mm512_set1_epi32(xq[i]));
                s1 = _mm512_dpbusd_epi32(s1, wq[i + 1], _mm512_set1_epi32(xq[i + 1]));
            }
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)),
                                     _mm512_mul_ps(dw, _mm512_set1_ps(x->d)), acc[t]);
        }
    }
    TILE_UNROLL
    for (int t = 0; t < T; t++)
        _mm512_storeu_ps(y + (size_t)t * y_stride, acc[t]);
}

/* Two Q8_0 groups side by side (g and the one after it, 32 rows) x T <= 4
 * tokens: each token's quants broadcast once for both groups, whose quants
 * vpdpbusd takes from memory (L1 after the first token), so 8 broadcasts per
 * 16 vpdpbusd where micro_r16 has one per vpdpbusd (one Zen 5 core,
 * L1-resident, 8 tokens: 607-609 -> 841-860 GOP/s; with 8 tokens a pass
 * GCC keeps both groups' quants in registers and spills the accumulators,
 * slower than micro_r16). Every output's chains and rounding are micro_r16's:
 * the same bits. */
INLINE void micro_q8_0_r32(int T, int64_t nb, const uint8_t *g, const uint8_t *a, size_t a_row, float *y,
                           size_t y_stride)
{
    const size_t blk = KN_R16 * sizeof(block_q8_0);
    const uint8_t *h = g + (size_t)nb * blk;
    const int offset = kn_r16_offset(DTYPE_Q8_0_R16);
    __m512 acc[2][4];
    TILE_UNROLL
    for (int t = 0; t < T; t++)
        acc[0][t] = acc[1][t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const __m512 dw0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(g + kn_r16_scales(b, blk))));
        const __m512 dw1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + kn_r16_scales(b, blk))));
        const uint8_t *q0 = g + kn_r16_body(b, nb, blk), *q1 = h + kn_r16_body(b, nb, blk);
        TILE_UNROLL
        for (int t = 0; t < T; t++) {
            const block_q8_0x *x = (const block_q8_0x *)(a + (size_t)t * a_row) + b;
            const quads *xq = (const quads *)(const void *)x->qs;
            const __m512i c = _mm512_set1_epi32(-offset * x->sum);
            __m512i s0 = c, s1 = _mm512_setzero_si512(), u0 = c, u1 = _mm512_setzero_si512();
            TILE_UNROLL
            for (int i = 0; i < QK8_0 / 4; i += 2) {
                const __m512i b0 = _mm512_set1_epi32(xq[i]), b1 = _mm512_set1_epi32(xq[i + 1]);
                s0 = _mm512_dpbusd_epi32(s0, _mm512_loadu_si512((const void *)(q0 + (size_t)i * 4 * KN_R16)), b0);
                s1 = _mm512_dpbusd_epi32(s1, _mm512_loadu_si512((const void *)(q0 + (size_t)(i + 1) * 4 * KN_R16)), b1);
                u0 = _mm512_dpbusd_epi32(u0, _mm512_loadu_si512((const void *)(q1 + (size_t)i * 4 * KN_R16)), b0);
                u1 = _mm512_dpbusd_epi32(u1, _mm512_loadu_si512((const void *)(q1 + (size_t)(i + 1) * 4 * KN_R16)), b1);
            }
            const __m512 dx = _mm512_set1_ps(x->d);
            acc[0][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), _mm512_mul_ps(dw0, dx), acc[0][t]);
            acc[1][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(u0, u1)), _mm512_mul_ps(dw1, dx), acc[1][t]);
        }
    }
    TILE_UNROLL
    for (int t = 0; t < T; t++) {
        _mm512_storeu_ps(y + (size_t)t * y_stride, acc[0][t]);
        _mm512_storeu_ps(y + (size_t)t * y_stride + KN_R16, acc[1][t]);
    }
}

/* Tokens from which Q8_0 groups go in pairs (micro_q8_0_r32): prefill 512,
 * 2 threads, 3 alternating bench runs, 256M / 500M models: 733-849 /
 * 905-981 -> 898-916 / 1047-1056 GFLOP/s. With 8 tokens (8 streams) the
 * pairs were 4-6 % slower a step (alternating steps of one process), held
 * by the memory, which the one-group kernel's prefetch streams better. */
#define Q8_0_R32_MIN_TOK 16

/* n_rows is a multiple of KN_R16 (kn_packed_add_rows packs no other matrix, and
 * kernels.c's row tiles are multiples of it); each group (or pair of Q8_0
 * groups) against all the tokens, 8 (4) at a time, while its rows are in
 * cache. */
INLINE void tile_r16(int type, int64_t k, const void *w, size_t w_row, int64_t n_rows, const void *a, size_t a_row,
                     int64_t n_tok, float *y, size_t y_stride)
{
    const int64_t nb = k / QK8_0;
    const uint8_t *a8 = a;
    int64_t o = 0;
    for (; type == DTYPE_Q8_0_R16 && n_tok >= Q8_0_R32_MIN_TOK && o + 2 * KN_R16 <= n_rows; o += 2 * KN_R16) {
        const uint8_t *g = (const uint8_t *)w + (size_t)o * w_row;
        int64_t t = 0;
        for (; t + 4 <= n_tok; t += 4)
            micro_q8_0_r32(4, nb, g, a8 + (size_t)t * a_row, a_row, y + (size_t)t * y_stride + o, y_stride);
        switch (n_tok - t) {
        case 3: micro_q8_0_r32(3, nb, g, a8 + (size_t)t * a_row, a_row, y + (size_t)t * y_stride + o, y_stride); break;
        case 2: micro_q8_0_r32(2, nb, g, a8 + (size_t)t * a_row, a_row, y + (size_t)t * y_stride + o, y_stride); break;
        case 1: micro_q8_0_r32(1, nb, g, a8 + (size_t)t * a_row, a_row, y + (size_t)t * y_stride + o, y_stride); break;
        default: break;
        }
    }
    for (; o + KN_R16 <= n_rows; o += KN_R16) {
        const uint8_t *g = (const uint8_t *)w + (size_t)o * w_row;
#define CALL_R16(T, t) micro_r16(type, T, nb, g, a8 + (size_t)(t) * a_row, a_row, y + (size_t)(t) * y_stride + o, y_stride)
        R16_TOKENS(n_tok, CALL_R16);
#undef CALL_R16
    }
}

#define DEFINE_R16_TILE(name, type)                                                                        \
    TARGET static void name(int64_t k, const void *w, size_t w_row, int64_t n_rows, const void *a,         \
                            size_t a_row, int64_t n_tok, float *y, size_t y_stride)                        \
    {                                                                                                      \
        tile_r16(type, k, w, w_row, n_rows, a, a_row, n_tok, y, y_stride);                                 \
    }
DEFINE_R16_TILE(tile_q8_0_r16, DTYPE_Q8_0_R16)
DEFINE_R16_TILE(tile_q4_0_r16, DTYPE_Q4_0_R16)
DEFINE_R16_TILE(tile_q5_0_r16, DTYPE_Q5_0_R16)

/* ---- Q4_K x Q8_K with VNNI ------------------------------------------------------- */

/* R Q4_K weight rows x T Q8_K activation rows, one 256-element block per
 * step in 4 groups of 64: the group's 32 bytes of qs unpacked to 64 unsigned
 * quants (low nibbles = elements 64g..64g+31, high = the next 32) meet the
 * activation's 64 bytes in vpmaddubsw (pairs, no saturation: 2*15*127),
 * and vpdpwssd multiplies the pair sums by the sub-block scales (16-bit
 * lanes: sc[2g] for the lower half, sc[2g+1] for the upper) into the pair's
 * integer block sum. Per block, the pair's one f32 accumulator gets
 * d_w*d_a * (that sum) and then -dmin_w*d_a * (mins x bsums), lane by lane:
 * the order depends on k alone. */
INLINE void micro_q4_K(int R, int T, int64_t k, const uint8_t *w, size_t w_row, const uint8_t *a, size_t a_row,
                       float *y, size_t y_stride)
{
    const int64_t nb = k / QK_K;
    const __m256i low4 = _mm256_set1_epi8(15);
    __m512 acc[TILE_R1][TILE_T];
    __m512i isum[TILE_R1][TILE_T], qw[TILE_R1], scw[TILE_R1];
    __m256i mins16[TILE_R1];
    uint8_t sc[TILE_R1][8];
    float dw[TILE_R1], dminw[TILE_R1];
    TILE_ACC_ZERO(acc, R, T, _mm512_setzero_ps());
    for (int64_t b = 0; b < nb; b++) {
        TILE_UNROLL
        for (int r = 0; r < R; r++) {
            const block_q4_K *x = (const block_q4_K *)(w + (size_t)r * w_row) + b;
            uint8_t mn[8];
            unpack_scales_k4(x->scales, sc[r], mn);
            mins16[r] = widen_mins(mn);
            dw[r] = _cvtsh_ss(x->d);
            dminw[r] = _cvtsh_ss(x->dmin);
        }
        TILE_ACC_ZERO(isum, R, T, _mm512_setzero_si512());
        for (int g = 0; g < 4; g++) {
            /* a block is 144 bytes: a line ahead per group covers it */
            prefetch_ahead(w, w_row, R, (size_t)b * sizeof(block_q4_K) + 48 * (size_t)g);
            TILE_UNROLL
            for (int r = 0; r < R; r++) {
                const block_q4_K *x = (const block_q4_K *)(w + (size_t)r * w_row) + b;
                const __m256i raw = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * g));
                qw[r] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(raw, low4)),
                                           _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4), 1);
                scw[r] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(sc[r][2 * g])),
                                            _mm256_set1_epi16(sc[r][2 * g + 1]), 1);
            }
            TILE_UNROLL
            for (int t = 0; t < T; t++) {
                const block_q8_K *ya = (const block_q8_K *)(a + (size_t)t * a_row) + b;
                const __m512i qa = _mm512_loadu_si512(ya->qs + 64 * g);
                TILE_UNROLL
                for (int r = 0; r < R; r++)
                    isum[r][t] = _mm512_dpwssd_epi32(isum[r][t], _mm512_maddubs_epi16(qw[r], qa), scw[r]);
            }
        }
        TILE_UNROLL
        for (int t = 0; t < T; t++) {
            const block_q8_K *ya = (const block_q8_K *)(a + (size_t)t * a_row) + b;
            const __m256i bsums = _mm256_loadu_si256((const __m256i *)ya->bsums);
            TILE_UNROLL
            for (int r = 0; r < R; r++) {
                const __m512 mins = _mm512_cvtepi32_ps(_mm512_zextsi256_si512(_mm256_madd_epi16(bsums, mins16[r])));
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r][t]), _mm512_set1_ps(dw[r] * ya->d), acc[r][t]);
                acc[r][t] = _mm512_fnmadd_ps(mins, _mm512_set1_ps(dminw[r] * ya->d), acc[r][t]);
            }
        }
    }
    store_sums16(acc, R, T, y, y_stride);
}

/* Two rows x 4 tokens: 8 integer and 8 float accumulators; 4 rows for a
 * single token. */
#define MICRO_Q4_K(...) MICRO_WHOLE(micro_q4_K, __VA_ARGS__)
DEFINE_TILE(tile_q4_K, MICRO_Q4_K, 2, TILE_T, 4, 0)

/* ---- Q6_K x Q8_K with VNNI ------------------------------------------------------- */

/* Half h (elements 128h..128h+127) of a Q6_K block as two registers of 64
 * quants + 32 (unsigned 0..63): q01 = elements 128h..+63, q23 = +64..+127.
 * ql byte l gives element l (low nibble) and l+64 (high), ql byte 32+l
 * element l+32 and l+96; qh byte l holds bits 4-5 of elements l, l+32,
 * l+64, l+96 in its bit pairs 0, 2, 4, 6 (spec §1.4). */
INLINE void q6_half(const block_q6_K *x, int h, __m512i *q01, __m512i *q23)
{
    const __m256i low4 = _mm256_set1_epi8(15), hi2 = _mm256_set1_epi8(0x30);
    const __m256i qa = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h));
    const __m256i qb = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h + 32));
    const __m256i qh = _mm256_loadu_si256((const __m256i *)(x->qh + 32 * h));
    const __m256i q0 = _mm256_or_si256(_mm256_and_si256(qa, low4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), hi2));
    const __m256i q1 = _mm256_or_si256(_mm256_and_si256(qb, low4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), hi2));
    const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qa, 4), low4), _mm256_and_si256(qh, hi2));
    const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qb, 4), low4),
                                       _mm256_and_si256(_mm256_srli_epi16(qh, 2), hi2));
    *q01 = _mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1);
    *q23 = _mm512_inserti64x4(_mm512_castsi256_si512(q2), q3, 1);
}

/* The 4 scales of 64 elements from sub-block j0 as 32 int16 lanes, 8 each
 * (vpmaddubsw's pair sums of 16 elements), sign-extended. */
INLINE __m512i q6_scales(const int8_t *sc, int j0)
{
    uint32_t s4;
    memcpy(&s4, sc + j0, sizeof s4);
    const __m256i pick = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    return _mm512_cvtepi8_epi16(_mm256_shuffle_epi8(_mm256_set1_epi32((int)s4), pick));
}

/* R Q6_K weight rows x T Q8_K activation rows, one block per step: the
 * quants go into vpmaddubsw as q + 32 (unsigned) and the block's integer
 * sum loses 32 * sum_j sc_j * bsum_j (the activation's 16-element sums),
 * exactly; then d_w*d_a times the sum into the pair's one f32 accumulator.
 * The order depends on k alone. */
INLINE void micro_q6_K(int R, int T, int64_t k, const uint8_t *w, size_t w_row, const uint8_t *a, size_t a_row,
                       float *y, size_t y_stride)
{
    const int64_t nb = k / QK_K;
    __m512 acc[TILE_R1][TILE_T];
    __m512i isum[TILE_R1][TILE_T], q01[TILE_R1], q23[TILE_R1], s01[TILE_R1], s23[TILE_R1];
    TILE_ACC_ZERO(acc, R, T, _mm512_setzero_ps());
    for (int64_t b = 0; b < nb; b++) {
        TILE_ACC_ZERO(isum, R, T, _mm512_setzero_si512());
        for (int h = 0; h < 2; h++) {
            prefetch_ahead(w, w_row, R, (size_t)b * sizeof(block_q6_K) + 112 * (size_t)h);
            TILE_UNROLL
            for (int r = 0; r < R; r++) {
                const block_q6_K *x = (const block_q6_K *)(w + (size_t)r * w_row) + b;
                q6_half(x, h, &q01[r], &q23[r]);
                s01[r] = q6_scales(x->scales, 8 * h);
                s23[r] = q6_scales(x->scales, 8 * h + 4);
            }
            TILE_UNROLL
            for (int t = 0; t < T; t++) {
                const block_q8_K *ya = (const block_q8_K *)(a + (size_t)t * a_row) + b;
                const __m512i a01 = _mm512_loadu_si512(ya->qs + 128 * h);
                const __m512i a23 = _mm512_loadu_si512(ya->qs + 128 * h + 64);
                TILE_UNROLL
                for (int r = 0; r < R; r++) {
                    isum[r][t] = _mm512_dpwssd_epi32(isum[r][t], _mm512_maddubs_epi16(q01[r], a01), s01[r]);
                    isum[r][t] = _mm512_dpwssd_epi32(isum[r][t], _mm512_maddubs_epi16(q23[r], a23), s23[r]);
                }
            }
        }
        TILE_UNROLL
        for (int r = 0; r < R; r++) {
            const block_q6_K *x = (const block_q6_K *)(w + (size_t)r * w_row) + b;
            const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x->scales));
            const float dw = _cvtsh_ss(x->d);
            TILE_UNROLL
            for (int t = 0; t < T; t++) {
                const block_q8_K *ya = (const block_q8_K *)(a + (size_t)t * a_row) + b;
                const __m256i bs = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)ya->bsums), sc16);
                const __m512i fix = _mm512_zextsi256_si512(_mm256_slli_epi32(bs, 5));
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(isum[r][t], fix)),
                                            _mm512_set1_ps(dw * ya->d), acc[r][t]);
            }
        }
    }
    store_sums16(acc, R, T, y, y_stride);
}

#define MICRO_Q6_K(...) MICRO_WHOLE(micro_q6_K, __VA_ARGS__)
DEFINE_TILE(tile_q6_K, MICRO_Q6_K, 2, TILE_T, 4, 0)

/* ---- BF16 x BF16 with AVX512_BF16 ------------------------------------------------ */

#undef TARGET
#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")))

/* R BF16 weight rows x T activation rows (KN_ACT_BF16: f32 values already
 * rounded to bfloat), 32 elements a step: the activations narrowed to bf16
 * (exact, they are bfloats) and vdpbf16ps adding each lane's two products,
 * which are exact in f32, to its accumulator: twice the products of an FMA
 * per instruction, and the weights loaded as they are stored. The last
 * step's elements past k are masked to zero (they add exact zeros). Each
 * output is one chain over k and the fixed hsum16 tree, whatever R and T.
 * Measured no faster than the F16-style float tile on BF16 weights (a ViT
 * tile 0.61-0.69 s against 0.62-0.63; prefill alike): narrowing the
 * activations in the inner loop costs what the dot saves. Narrowing them
 * once per matmul (an activation format of bf16 pairs) is the next step. */
INLINE void micro_bf16_dp(int R, int T, int64_t k, const uint8_t *w, size_t w_row, const uint8_t *a, size_t a_row,
                          float *y, size_t y_stride)
{
    __m512 acc[TILE_R1][TILE_T];
    TILE_ACC_ZERO(acc, R, T, _mm512_setzero_ps());
    for (int64_t i = 0; i < k; i += 32) {
        const int n = k - i < 32 ? (int)(k - i) : 32;
        const __mmask32 m = n == 32 ? ~(__mmask32)0 : ((__mmask32)1 << n) - 1;
        const __mmask16 m0 = (__mmask16)m, m1 = (__mmask16)(m >> 16);
        prefetch_ahead(w, w_row, R, (size_t)i * 2);
        __m512bh wv[TILE_R1];
        TILE_UNROLL
        for (int r = 0; r < R; r++)
            wv[r] = (__m512bh)_mm512_maskz_loadu_epi16(m, w + (size_t)r * w_row + (size_t)i * 2);
        TILE_UNROLL
        for (int t = 0; t < T; t++) {
            const float *ap = (const float *)(a + (size_t)t * a_row) + i;
            const __m512bh av = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, ap + 16), _mm512_maskz_loadu_ps(m0, ap));
            TILE_UNROLL
            for (int r = 0; r < R; r++)
                acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv[r], av);
        }
    }
    store_sums16(acc, R, T, y, y_stride);
}

#define MICRO_BF16_DP(...) MICRO_WHOLE(micro_bf16_dp, __VA_ARGS__)
DEFINE_TILE(tile_bf16_dp, MICRO_BF16_DP, TILE_R, TILE_T, TILE_R1, 0)

/* AVX512_BF16 is CPUID.(7,1):EAX bit 5 (older compilers cannot name it). */
static bool has_avx512bf16(void)
{
    unsigned eax, ebx, ecx, edx;
    return __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && ((eax >> 5) & 1);
}

/* ---- the table -------------------------------------------------------------------- */

static kn_impl avx512_impl;

const kn_impl *kn_avx512_impl(void)
{
    const kn_impl *base = kn_avx2_impl();
    __builtin_cpu_init();
    if (!base || !__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl"))
        return NULL;
    if (avx512_impl.isa)
        return &avx512_impl;
    avx2_table = base;
    kn_impl t = *base;
    t.isa = "avx512";
    t.attention = kn_attention_avx512;
    t.attention_dense = kn_attention_dense_avx512;
    /* The tiles beat Debian's OpenBLAS (Haswell kernels on Zen 5) ~2x at
     * the ViT's sizes (bench/README.md "Kernels"): no sgemm path here. */
    t.use_blas = false;
    t.dot_f32 = dot_f32;
    t.layer_norm_rows = layer_norm_rows;
    t.rms_norm_rows = rms_norm_rows;
    t.swiglu = swiglu;
    t.gelu = gelu;
    t.gelu_quick = gelu_quick;
    t.tile[DTYPE_F32] = tile_f32;
    t.tile[DTYPE_F16] = tile_f16;
    t.tile[DTYPE_BF16] = tile_bf16;
    t.tile[DTYPE_F16_R16] = tile_f16_r16;
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512dq")) {
        t.tile[DTYPE_Q8_0] = tile_q8_0;
        t.tile[DTYPE_Q4_0] = tile_q4_0;
        t.tile[DTYPE_Q5_0] = tile_q5_0;
        t.tile[DTYPE_Q4_K] = tile_q4_K;
        t.tile[DTYPE_Q6_K] = tile_q6_K;
        t.tile[DTYPE_Q8_0_R16] = tile_q8_0_r16;
        t.tile[DTYPE_Q4_0_R16] = tile_q4_0_r16;
        t.tile[DTYPE_Q5_0_R16] = tile_q5_0_r16;
    }
    if (has_avx512bf16())
        t.tile[DTYPE_BF16] = tile_bf16_dp;
    avx512_impl = t;
    return &avx512_impl;
}

#else /* not x86-64 GCC/Clang */

const kn_impl *kn_avx512_impl(void)
{
    return NULL;
}

#endif
