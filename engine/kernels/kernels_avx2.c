/*
 * kernels_avx2.c — AVX2 + FMA + F16C versions of the hot kernels: the matmul
 * tiles of every weight type (F32/F16/BF16: 2 rows x 4 tokens per
 * micro-kernel, kernels_tile.h; quantised: 1 row x 4 tokens), the
 * Q8_0/Q8_1/Q8_K/F16 activation conversions, F16/BF16 widening for the sgemm
 * path, the f32 dot, softmax, SwiGLU and the GELU table lookups. Everything
 * else (norms, RoPE) stays the scalar reference.
 *
 * Only the functions marked TARGET use AVX2 instructions; kn_avx2_impl checks
 * the CPU before handing them out, so the file is safe to link everywhere.
 *
 * Numerics vs the reference (tests/unit/check_kernels.c holds them to it):
 *   - quantised dots: the integer block sums are exact, but the per-block
 *     float terms are accumulated in 8 lanes and added at the end, so results
 *     differ from the reference by float rounding only (~1e-6 relative);
 *   - Q8_0/Q8_1 activation quantisation is llama.cpp's x86 variant
 *     (ggml-cpu/arch/x86/quants.c), which is what the oracle runs on this
 *     hardware: multiply by 127/amax and round half to even, where the
 *     reference divides by d and rounds half away from zero; a quant can
 *     differ by 1 in rare near-ties, d is identical;
 *   - float tiles: one 8-lane f32 chain per output instead of a double sum;
 *   - F16 conversion is F16C's round-to-nearest-even, identical to f32_to_fp16;
 *   - softmax/SwiGLU use a polynomial exp within 3 ulp of expf; softmax sums
 *     8-lane partial sums in double, as ggml's AVX2 soft_max does.
 */
#include "kernels_impl.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "simd_exp.h"

#define TARGET __attribute__((target("avx2,fma,f16c")))
/* Loops over accumulator arrays must be unrolled, or -O2 keeps the
 * accumulators in memory and every FMA waits on a store-to-load forward. */
#define UNROLL _Pragma("GCC unroll 4")

/* ---- helpers -------------------------------------------------------------------- */

TARGET static inline float hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

TARGET static inline int hsum_epi32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* Half to float in one instruction: the per-block scales are on the hot path
 * and quant.c's portable fp16_to_f32 is an out-of-line call. */
TARGET static inline float h2f(uint16_t h)
{
    return _cvtsh_ss(h);
}

/* Products of 32 signed bytes, summed in adjacent pairs to 16 int16 lanes.
 * maddubs wants one unsigned operand: move x's sign onto y. No lane can
 * saturate: |x| <= 128 and |y| <= 127 (activations never hold -128). */
TARGET static inline __m256i mul_pairs_i8(__m256i x, __m256i y)
{
    return _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

/* Σ x·y over 32 signed bytes as 8 int32 lanes. */
TARGET static inline __m256i dot_i8(__m256i x, __m256i y)
{
    return _mm256_madd_epi16(mul_pairs_i8(x, y), _mm256_set1_epi16(1));
}

/* 16 bytes of packed nibbles -> 32 bytes: low nibbles (elements 0..15) in
 * the lower half, high nibbles (elements 16..31) in the upper half. */
TARGET static inline __m256i unpack_nibbles(const uint8_t *qs)
{
    __m128i t = _mm_loadu_si128((const __m128i *)qs);
    __m256i b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(b, _mm256_set1_epi8(15));
}

/* The 32 bits of a Q5 qh field as 32 bytes: 0x10 where bit j is set. */
TARGET static inline __m256i qh_bits_to_0x10(const uint8_t *qh)
{
    uint32_t bits;
    memcpy(&bits, qh, sizeof bits);
    /* byte j of the result looks at qh byte j/8 and tests bit j%8 */
    const __m256i pick = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201ll);
    __m256i rep = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), pick);
    __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(rep, bit), bit);
    return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

/* ---- activation conversion ------------------------------------------------------ */

/* One 32-value block the x86 llama.cpp way: stores half(d) and the quants,
 * returns the f32 d = amax/127 and Σq (for Q8_1's s). */
TARGET static inline float quant_block_q8(const float *x, uint16_t *d_out, int8_t *qs, int *sum)
{
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float max = _mm_cvtss_f32(m);
    const float d = max / 127.0f;
    *d_out = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
    const __m256 id = _mm256_set1_ps(max != 0.0f ? 127.0f / max : 0.0f);
    __m256i q[4];
    for (int i = 0; i < 4; i++)
        q[i] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[i], id),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    *sum = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    /* The packs work per 128-bit half; the permute puts the dwords back in order. */
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)qs, p);
    return d;
}

TARGET static void from_float_q8_0(const float *x, void *dst, int64_t n)
{
    block_q8_0 *y = dst;
    int sum;
    for (int64_t b = 0; b < n / 32; b++)
        quant_block_q8(x + 32 * b, &y[b].d, y[b].qs, &sum);
}

/* The activations of the AVX-512 table's packed types (kernels_impl.h):
 * the Q8_0 blocks above, d widened from its half, and Σ qs. */
TARGET static void from_float_q8_0x(const float *x, void *dst, int64_t n)
{
    block_q8_0x *y = dst;
    for (int64_t b = 0; b < n / 32; b++) {
        uint16_t d;
        int sum;
        quant_block_q8(x + 32 * b, &d, y[b].qs, &sum);
        y[b].d = fp16_to_f32(d);
        y[b].sum = sum;
    }
}

TARGET static void from_float_q8_1(const float *x, void *dst, int64_t n)
{
    block_q8_1 *y = dst;
    for (int64_t b = 0; b < n / 32; b++) {
        int sum;
        const float d = quant_block_q8(x + 32 * b, &y[b].d, y[b].qs, &sum);
        y[b].s = f32_to_fp16(d * (float)sum);
    }
}

/* Q8_K exactly as quant.c (ggml's quantize_row_q8_K_ref, which llama.cpp's
 * x86 build also runs): max is the first value of largest magnitude,
 * q = min(127, round-half-even(-127/max · x)) (cvtps rounds like ggml's
 * nearest_int), d = 1/iscale in f32, bsums over 16s; an all-zero block is all
 * zero. (A NaN input is skipped by the magnitude search as in the scalar loop,
 * but its own quant differs: the two roundings treat NaN differently.) */
TARGET static void from_float_q8_K(const float *x, void *dst, int64_t n)
{
    block_q8_K *y = dst;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        __m256 vmax = _mm256_setzero_ps();
        for (int i = 0; i < QK_K; i += 8)
            vmax = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)), vmax); /* NaN -> keep vmax */
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float amax = _mm_cvtss_f32(h);
        if (amax == 0.0f) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        float max = amax;
        for (int i = 0; i < QK_K; i += 8) {
            __m256 eq = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)), _mm256_set1_ps(amax), _CMP_EQ_OQ);
            int mask = _mm256_movemask_ps(eq);
            if (mask) {
                max = x[i + __builtin_ctz((unsigned)mask)];
                break;
            }
        }
        const float iscale = -127.0f / max;
        const __m256 vs = _mm256_set1_ps(iscale);
        const __m256i top = _mm256_set1_epi32(127);
        for (int i = 0; i < QK_K; i += 32) {
            __m256i q[4];
            UNROLL
            for (int r = 0; r < 4; r++)
                q[r] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(x + i + 8 * r))), top);
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(y[b].qs + i), p);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            __m256i v = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(y[b].qs + 16 * j)));
            y[b].bsums[j] = (int16_t)hsum_epi32(_mm256_madd_epi16(v, _mm256_set1_epi16(1)));
        }
        y[b].d = 1 / iscale;
    }
}

/* f32 rounded to half and back (the F16 act format): F16C's round to
 * nearest even, identical to f32_to_fp16. */
TARGET static void from_float_f16(const float *x, void *dst, int64_t n)
{
    float *y = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
    for (; i < n; i++)
        y[i] = h2f(f32_to_fp16(x[i]));
}

/* F16C's rounding, which f32_to_fp16 matches. */
TARGET static void to_half(const float *x, uint16_t *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        y[i] = f32_to_fp16(x[i]);
}

/* Widening of F16/BF16 rows (the sgemm path's weight panels); other types
 * go to quant.c. */
TARGET static void to_f32(int type, const void *src, float *dst, int64_t n)
{
    const uint16_t *h = src;
    int64_t i = 0;
    if (type == DTYPE_F16) {
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
        for (; i < n; i++)
            dst[i] = h2f(h[i]);
    } else if (type == DTYPE_BF16) {
        for (; i + 8 <= n; i += 8) {
            __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(h + i)));
            _mm256_storeu_si256((__m256i *)(dst + i), _mm256_slli_epi32(u, 16));
        }
        for (; i < n; i++)
            dst[i] = bf16_to_f32(h[i]);
    } else {
        dequantize_row(type, src, dst, n);
    }
}

/* ---- float tiles ----------------------------------------------------------------- */

#define INLINE TARGET static inline __attribute__((always_inline))
#define VF __m256
#define VL 8
#define vf_zero() _mm256_setzero_ps()
#define vf_fma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define vf_store_sums(acc, R, T, y, y_stride) TILE_ACC_STORE(acc, R, T, y, y_stride, hsum_ps)
#define vf_load(p) _mm256_loadu_ps(p)
#define vf_from_f16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define vf_from_bf16(p) \
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
/* 16 ymm registers: 2 x 4 accumulators + 2 weight vectors + 1 activation. */
#define TILE_R 2
#define TILE_T 4
#define TILE_R1 4
#include "kernels_tile.h"

/* ---- bias ------------------------------------------------------------------------- */

/* The reference's additions, 8 at a time (the same sums bit for bit): the
 * ViT adds a bias and a residual to every row of every product. */
TARGET static void add_bias(float *y, const float *b, int64_t n_tok, int64_t n)
{
    for (int64_t t = 0; t < n_tok; t++) {
        float *yt = y + t * n;
        int64_t i = 0;
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(yt + i, _mm256_add_ps(_mm256_loadu_ps(yt + i), _mm256_loadu_ps(b + i)));
        for (; i < n; i++)
            yt[i] += b[i];
    }
}

/* ---- softmax and SwiGLU ------------------------------------------------------------ */

/* Max-subtracted exponentials summed in double one 8-lane vector at a time
 * (ggml's AVX2 soft_max does the same), then scaled by the f32 reciprocal. */
TARGET static void softmax(float *x, int64_t n)
{
    float max = -INFINITY;
    int64_t i = 0;
    if (n >= 8) {
        __m256 m = _mm256_loadu_ps(x);
        for (i = 8; i + 8 <= n; i += 8)
            m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        max = _mm_cvtss_f32(h);
    }
    for (; i < n; i++)
        max = fmaxf(max, x[i]);
    const __m256 vmax = _mm256_set1_ps(max);
    double sum = 0.0;
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = kn_exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));
        _mm256_storeu_ps(x + i, e);
        sum += (double)hsum_ps(e);
    }
    for (; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += (double)x[i];
    }
    const __m256 inv = _mm256_set1_ps((float)(1.0 / sum));
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    for (; i < n; i++)
        x[i] *= (float)(1.0 / sum);
}

/* g = g / (1 + e^-g) · u; e^-g saturates to inf for g < -88.7, giving -0. */
TARGET static void swiglu(float *y, const float *g, const float *u, int64_t n)
{
    int64_t i = 0;
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(g + i);
        __m256 e = kn_exp256(_mm256_xor_ps(v, neg));
        __m256 silu = _mm256_div_ps(v, _mm256_add_ps(one, e));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(silu, _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++)
        y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* ---- GELU tables ------------------------------------------------------------------ */

/* The reference's table lookup 8 at a time: F16C rounds to half exactly like
 * f32_to_fp16, a 32-bit gather at each half's index fetches its entry (the
 * table has a spare entry for the last index), F16C widens it back. */
TARGET static inline __m256 gelu_lookup(const uint16_t *table, __m256 v)
{
    __m256i idx = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    __m256i g = _mm256_i32gather_epi32((const int *)table, idx, 2);
    g = _mm256_and_si256(g, _mm256_set1_epi32(0xffff));
    __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(g), _mm256_extracti128_si256(g, 1));
    return _mm256_cvtph_ps(h);
}

TARGET static void gelu(float *x, int64_t n)
{
    const uint16_t *table = kn_gelu_table(false);
    const __m256 lo = _mm256_set1_ps(-10.0f), hi = _mm256_set1_ps(10.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 g = gelu_lookup(table, v);
        /* x <= -10: 0; x >= 10: x (ggml's pass-through outside the table) */
        g = _mm256_andnot_ps(_mm256_cmp_ps(v, lo, _CMP_LE_OQ), g);
        g = _mm256_blendv_ps(g, v, _mm256_cmp_ps(v, hi, _CMP_GE_OQ));
        _mm256_storeu_ps(x + i, g);
    }
    for (; i < n; i++) {
        if (x[i] <= -10.0f)
            x[i] = 0.0f;
        else if (x[i] < 10.0f)
            x[i] = h2f(table[_cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT)]);
    }
}

TARGET static void gelu_quick(float *x, int64_t n)
{
    const uint16_t *table = kn_gelu_table(true);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, gelu_lookup(table, _mm256_loadu_ps(x + i)));
    for (; i < n; i++)
        x[i] = h2f(table[_cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT)]);
}

/* ---- multi-token dots ------------------------------------------------------------ */

/* Every quantised dot below runs one weight row against nt <= QT activation
 * rows (a, a + a_stride, ...), writing y[t * y_stride]: the weight block is
 * decoded once and reused for each token. A token's operations do not depend
 * on nt, so the results per token are bit-identical for any nt (the tiles
 * below run nt = QT and nt = 1). */
#define QT 4

/* ---- 32-element quant blocks ------------------------------------------------------ */

enum w32_kind { W_Q8_0, W_Q4_0, W_Q5_0, W_Q4_1, W_Q5_1 };

/* Block b of a 32-element weight row as 32 int8 (signed for Q8_0/Q4_0/Q5_0,
 * unsigned < 32 for Q4_1/Q5_1), with its half scale d and min m. */
TARGET static inline __m256i load_w32(enum w32_kind kind, const void *w, int64_t b, uint16_t *d, uint16_t *m)
{
    switch (kind) {
    case W_Q8_0: {
        const block_q8_0 *x = (const block_q8_0 *)w + b;
        *d = x->d;
        return _mm256_loadu_si256((const __m256i *)x->qs);
    }
    case W_Q4_0: {
        const block_q4_0 *x = (const block_q4_0 *)w + b;
        *d = x->d;
        return _mm256_sub_epi8(unpack_nibbles(x->qs), _mm256_set1_epi8(8));
    }
    case W_Q5_0: {
        const block_q5_0 *x = (const block_q5_0 *)w + b;
        *d = x->d;
        __m256i q = _mm256_or_si256(unpack_nibbles(x->qs), qh_bits_to_0x10(x->qh));
        return _mm256_sub_epi8(q, _mm256_set1_epi8(16));
    }
    case W_Q4_1: {
        const block_q4_1 *x = (const block_q4_1 *)w + b;
        *d = x->d;
        *m = x->m;
        return unpack_nibbles(x->qs);
    }
    case W_Q5_1:
    default: {
        const block_q5_1 *x = (const block_q5_1 *)w + b;
        *d = x->d;
        *m = x->m;
        return _mm256_or_si256(unpack_nibbles(x->qs), qh_bits_to_0x10(x->qh));
    }
    }
}

/* Q8_0 activations for the signed kinds; Q8_1 for Q4_1/Q5_1, whose unsigned
 * quants go straight into maddubs and whose minimum adds m·s per block
 * (s = d_y·Σq_y, precomputed by the Q8_1 quantiser). */
TARGET static inline void dot_w32(enum w32_kind kind, int64_t n, const void *w, const uint8_t *a, size_t a_stride,
                                  int nt, float *y, size_t y_stride)
{
    const bool with_min = kind == W_Q4_1 || kind == W_Q5_1;
    const size_t ablk = with_min ? sizeof(block_q8_1) : sizeof(block_q8_0);
    __m256 acc[QT];
    float mins[QT];
    UNROLL
    for (int t = 0; t < QT; t++) {
        acc[t] = _mm256_setzero_ps();
        mins[t] = 0.0f;
    }
    for (int64_t b = 0; b < n / 32; b++) {
        uint16_t dx, mx = 0;
        __m256i qx = load_w32(kind, w, b, &dx, &mx);
        const float fdx = h2f(dx);
        UNROLL
        for (int t = 0; t < nt; t++) {
            /* block_q8_0 and block_q8_1 both start with the half d; qs is last */
            const uint8_t *yb = a + (size_t)t * a_stride + (size_t)b * ablk;
            uint16_t dy;
            memcpy(&dy, yb, 2);
            __m256i qy = _mm256_loadu_si256((const __m256i *)(yb + ablk - 32));
            __m256i isum = with_min ? _mm256_madd_epi16(_mm256_maddubs_epi16(qx, qy), _mm256_set1_epi16(1))
                                    : dot_i8(qx, qy);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(fdx * h2f(dy)), _mm256_cvtepi32_ps(isum), acc[t]);
            if (with_min) {
                uint16_t sy;
                memcpy(&sy, yb + offsetof(block_q8_1, s), 2);
                mins[t] += h2f(mx) * h2f(sy);
            }
        }
    }
    UNROLL
    for (int t = 0; t < nt; t++)
        y[(size_t)t * y_stride] = with_min ? hsum_ps(acc[t]) + mins[t] : hsum_ps(acc[t]);
}

/* ---- K-quants ---------------------------------------------------------------------- */

/* Σ over the 16 bsums of min(j/2)·bsum (the min term of a Q4_K/Q5_K block):
 * the mins widened to 16 int16 lanes, each twice, against the bsums. */
TARGET static inline int k4_min_sum(const block_q8_K *y, __m256i mins16)
{
    __m256i b = _mm256_loadu_si256((const __m256i *)y->bsums);
    return hsum_epi32(_mm256_madd_epi16(b, mins16));
}

/* Q4_K and Q5_K: 4 groups of 64; in group g, 32 bytes of qs give sub-block 2g
 * (low nibbles) and 2g+1 (high nibbles). qh (Q5_K) adds 16 where bit 2g /
 * 2g+1 of qh[l] is set. Unsigned quants <= 31 times int8 fit maddubs. */
TARGET static inline void dot_q45_K(int64_t n, const uint8_t *base, size_t block_len, size_t qs_off, bool has_qh,
                                    const uint8_t *a, size_t a_stride, int nt, float *y, size_t y_stride)
{
    __m256 acc[QT];
    float mins[QT];
    UNROLL
    for (int t = 0; t < QT; t++) {
        acc[t] = _mm256_setzero_ps();
        mins[t] = 0.0f;
    }
    const __m256i low4 = _mm256_set1_epi8(15);
    for (int64_t b = 0; b < n / QK_K; b++) {
        const uint8_t *blk = base + (size_t)b * block_len;
        uint16_t dh, dminh;
        memcpy(&dh, blk, 2);
        memcpy(&dminh, blk + 2, 2);
        uint8_t sc[8], mn[8];
        unpack_scales_k4(blk + 4, sc, mn);
        const __m256i mins16 = widen_mins(mn);
        const uint8_t *qs = blk + qs_off;
        __m256i qhv = has_qh ? _mm256_loadu_si256((const __m256i *)(blk + offsetof(block_q5_K, qh)))
                             : _mm256_setzero_si256();
        __m256i isum[QT];
        UNROLL
        for (int t = 0; t < QT; t++)
            isum[t] = _mm256_setzero_si256();
        for (int g = 0; g < 4; g++) {
            __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 32 * g));
            __m256i lo = _mm256_and_si256(raw, low4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
            if (has_qh) {
                const __m256i b0 = _mm256_set1_epi8((char)(1 << (2 * g)));
                const __m256i b1 = _mm256_set1_epi8((char)(2 << (2 * g)));
                const __m256i v16 = _mm256_set1_epi8(16);
                lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qhv, b0), b0), v16));
                hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qhv, b1), b1), v16));
            }
            const __m256i slo = _mm256_set1_epi16((short)sc[2 * g]), shi = _mm256_set1_epi16((short)sc[2 * g + 1]);
            UNROLL
            for (int t = 0; t < nt; t++) {
                const block_q8_K *yb = (const block_q8_K *)(a + (size_t)t * a_stride) + b;
                __m256i plo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(yb->qs + 64 * g)));
                __m256i phi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(yb->qs + 64 * g + 32)));
                isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(plo, slo));
                isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(phi, shi));
            }
        }
        const float d = h2f(dh), dmin = h2f(dminh);
        UNROLL
        for (int t = 0; t < nt; t++) {
            const block_q8_K *yb = (const block_q8_K *)(a + (size_t)t * a_stride) + b;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * yb->d), _mm256_cvtepi32_ps(isum[t]), acc[t]);
            mins[t] -= dmin * yb->d * (float)k4_min_sum(yb, mins16);
        }
    }
    UNROLL
    for (int t = 0; t < nt; t++)
        y[(size_t)t * y_stride] = hsum_ps(acc[t]) + mins[t];
}

/* Q6_K: per half of 128, ql[0..63] and qh[0..31] give four vectors of 32
 * quants (elements l, l+32, l+64, l+96), each spanning two 16-element scale
 * groups: the lower 128 bits of the pair sums take one scale, the upper the next. */
TARGET static inline void dot_q6_K(int64_t n, const void *w, const uint8_t *a, size_t a_stride, int nt, float *y,
                                   size_t y_stride)
{
    const block_q6_K *x = w;
    const __m256i low4 = _mm256_set1_epi8(15), hi2 = _mm256_set1_epi8(0x30), off = _mm256_set1_epi8(32);
    __m256 acc[QT];
    UNROLL
    for (int t = 0; t < QT; t++)
        acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; b++) {
        __m256i isum[QT];
        UNROLL
        for (int t = 0; t < QT; t++)
            isum[t] = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[b].ql + 64 * h;
            __m256i qa = _mm256_loadu_si256((const __m256i *)ql);
            __m256i qb = _mm256_loadu_si256((const __m256i *)(ql + 32));
            __m256i qh = _mm256_loadu_si256((const __m256i *)(x[b].qh + 32 * h));
            __m256i q[4] = {
                _mm256_or_si256(_mm256_and_si256(qa, low4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), hi2)),
                _mm256_or_si256(_mm256_and_si256(qb, low4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), hi2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qa, 4), low4), _mm256_and_si256(qh, hi2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qb, 4), low4),
                                _mm256_and_si256(_mm256_srli_epi16(qh, 2), hi2)),
            };
            for (int v = 0; v < 4; v++) {
                const int e0 = 128 * h + 32 * v; /* first element of this vector */
                const __m256i qv = _mm256_sub_epi8(q[v], off);
                const __m256i s = _mm256_set_m128i(_mm_set1_epi16(x[b].scales[e0 / 16 + 1]),
                                                   _mm_set1_epi16(x[b].scales[e0 / 16]));
                UNROLL
                for (int t = 0; t < nt; t++) {
                    const block_q8_K *yb = (const block_q8_K *)(a + (size_t)t * a_stride) + b;
                    __m256i p = mul_pairs_i8(qv, _mm256_loadu_si256((const __m256i *)(yb->qs + e0)));
                    isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(p, s));
                }
            }
        }
        const float d = h2f(x[b].d);
        UNROLL
        for (int t = 0; t < nt; t++) {
            const block_q8_K *yb = (const block_q8_K *)(a + (size_t)t * a_stride) + b;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * yb->d), _mm256_cvtepi32_ps(isum[t]), acc[t]);
        }
    }
    UNROLL
    for (int t = 0; t < nt; t++)
        y[(size_t)t * y_stride] = hsum_ps(acc[t]);
}

/* The tiles of the quantised types: one row at a time, QT tokens per
 * weight-row pass. */
#define DOT_Q8_0(...) dot_w32(W_Q8_0, __VA_ARGS__)
#define DOT_Q4_0(...) dot_w32(W_Q4_0, __VA_ARGS__)
#define DOT_Q5_0(...) dot_w32(W_Q5_0, __VA_ARGS__)
#define DOT_Q4_1(...) dot_w32(W_Q4_1, __VA_ARGS__)
#define DOT_Q5_1(...) dot_w32(W_Q5_1, __VA_ARGS__)
#define DOT_Q4_K(k, w, ...) dot_q45_K(k, w, sizeof(block_q4_K), offsetof(block_q4_K, qs), false, __VA_ARGS__)
#define DOT_Q5_K(k, w, ...) dot_q45_K(k, w, sizeof(block_q5_K), offsetof(block_q5_K, qs), true, __VA_ARGS__)
#define DOT_Q6_K dot_q6_K
#define DEFINE_Q_TILE(name, dot)                                                                          \
    INLINE void micro_##name(int R, int T, int64_t k0, int64_t k1, int64_t k, const uint8_t *w, size_t w_row, \
                             const uint8_t *a, size_t a_row, VF *state, float *y, size_t y_stride)           \
    {                                                                                                      \
        (void)R, (void)k0, (void)k1, (void)w_row, (void)state; /* one whole row at a time */              \
        dot(k, w, a, a_row, T, y, y_stride);                                                               \
    }                                                                                                      \
    DEFINE_TILE(tile_##name, micro_##name, 1, QT, 1, 0)

DEFINE_Q_TILE(q8_0, DOT_Q8_0)
DEFINE_Q_TILE(q4_0, DOT_Q4_0)
DEFINE_Q_TILE(q5_0, DOT_Q5_0)
DEFINE_Q_TILE(q4_1, DOT_Q4_1)
DEFINE_Q_TILE(q5_1, DOT_Q5_1)
DEFINE_Q_TILE(q4_K, DOT_Q4_K)
DEFINE_Q_TILE(q5_K, DOT_Q5_K)
DEFINE_Q_TILE(q6_K, DOT_Q6_K)

/* ---- the table -------------------------------------------------------------------- */

static kn_impl avx2_impl;

const kn_impl *kn_avx2_impl(void)
{
    /* clang's __builtin_cpu_supports knows no "f16c": ask CPUID (leaf 1, ECX). */
    unsigned eax, ebx, ecx, edx;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !f16c)
        return NULL;
    if (avx2_impl.isa)
        return &avx2_impl;
    kn_impl t = kn_ref_impl;
    t.isa = "avx2";
    t.use_blas = true;
    t.attention_dense = kn_attention_dense_avx2;
    t.from_float[KN_ACT_F16] = from_float_f16;
    t.from_float[KN_ACT_Q8_0] = from_float_q8_0;
    t.from_float[KN_ACT_Q8_1] = from_float_q8_1;
    t.from_float[KN_ACT_Q8_0X] = from_float_q8_0x; /* for the AVX-512 table, which has the packed tiles */
    t.from_float[KN_ACT_Q8_K] = from_float_q8_K;
    t.tile[DTYPE_F32] = tile_f32;
    t.tile[DTYPE_F16] = tile_f16;
    t.tile[DTYPE_BF16] = tile_bf16;
    t.tile[DTYPE_Q4_0] = tile_q4_0;
    t.tile[DTYPE_Q4_1] = tile_q4_1;
    t.tile[DTYPE_Q5_0] = tile_q5_0;
    t.tile[DTYPE_Q5_1] = tile_q5_1;
    t.tile[DTYPE_Q8_0] = tile_q8_0;
    t.tile[DTYPE_Q4_K] = tile_q4_K;
    t.tile[DTYPE_Q5_K] = tile_q5_K;
    t.tile[DTYPE_Q6_K] = tile_q6_K;
    t.to_f32 = to_f32;
    t.dot_f32 = dot_f32;
    t.softmax = softmax;
    t.swiglu = swiglu;
    t.add_bias = add_bias;
    t.to_half = to_half;
    t.gelu = gelu;
    t.gelu_quick = gelu_quick;
    avx2_impl = t;
    return &avx2_impl;
}

#else /* not x86-64 GCC/Clang */

const kn_impl *kn_avx2_impl(void)
{
    return NULL;
}

#endif
