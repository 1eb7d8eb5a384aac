/*
 * kernels_avx512.c — the AVX-512 table: the AVX2 table with the kernels that
 * gain from 16-lane registers replaced: the F32/F16/BF16 dot products (one
 * and four tokens), the Q8_0 ones with VNNI where the CPU has it, and the
 * fused attention (attention_avx512.c).
 *
 * Float dots vs the reference: f32 sums in 16 x 4 lanes instead of double,
 * so they differ by float rounding (as the AVX2 ones do).
 *
 * Only the functions marked TARGET use AVX-512 instructions; kn_avx512_impl
 * checks the CPU before handing them out, so the file is safe to link
 * everywhere.
 */
#include "kernels_impl.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define INLINE TARGET static inline __attribute__((always_inline))
/* Loops over accumulator arrays must be unrolled, or -O2 keeps the
 * accumulators in memory (as in kernels_avx2.c). */
#define UNROLL _Pragma("GCC unroll 4")

/* ---- float dots ---------------------------------------------------------------- */

enum wf_kind { WF_F32, WF_F16, WF_BF16 };

/* 16 values (f32, halves or bfloats) at element i of p, as f32. */
INLINE __m512 load16(enum wf_kind kind, const void *p, int64_t i)
{
    switch (kind) {
    case WF_F16:
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i)));
    case WF_BF16: {
        __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i)));
        return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
    }
    case WF_F32:
    default:
        return _mm512_loadu_ps((const float *)p + i);
    }
}

INLINE float load1(enum wf_kind kind, const void *p, int64_t i)
{
    switch (kind) {
    case WF_F16: return _cvtsh_ss(((const uint16_t *)p)[i]);
    case WF_BF16: return bf16_to_f32(((const uint16_t *)p)[i]);
    case WF_F32:
    default: return ((const float *)p)[i];
    }
}

/* One weight row (w) against nt <= 4 activation rows of the same format
 * (a + t*a_stride): four 16-lane accumulators per token, so each weight
 * vector is loaded and widened once for all tokens. The order of a token's
 * sums does not depend on nt: the one-token dot equals the multi-token one
 * bit for bit (kn_matmul_invariant rests on it). */
INLINE void dot_float(enum wf_kind kind, int64_t n, const void *w, const uint8_t *a, size_t a_stride, int nt,
                      float *out)
{
    __m512 acc[4][4];
    UNROLL
    for (int t = 0; t < nt; t++) {
        UNROLL
        for (int r = 0; r < 4; r++)
            acc[t][r] = _mm512_setzero_ps();
    }
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512 wv[4];
        UNROLL
        for (int r = 0; r < 4; r++)
            wv[r] = load16(kind, w, i + 16 * r);
        UNROLL
        for (int t = 0; t < nt; t++) {
            UNROLL
            for (int r = 0; r < 4; r++)
                acc[t][r] = _mm512_fmadd_ps(wv[r], load16(kind, a + (size_t)t * a_stride, i + 16 * r), acc[t][r]);
        }
    }
    for (; i + 16 <= n; i += 16) {
        const __m512 wv = load16(kind, w, i);
        UNROLL
        for (int t = 0; t < nt; t++)
            acc[t][0] = _mm512_fmadd_ps(wv, load16(kind, a + (size_t)t * a_stride, i), acc[t][0]);
    }
    UNROLL
    for (int t = 0; t < nt; t++) {
        float sum = _mm512_reduce_add_ps(
            _mm512_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]), _mm512_add_ps(acc[t][2], acc[t][3])));
        for (int64_t j = i; j < n; j++)
            sum += load1(kind, w, j) * load1(kind, a + (size_t)t * a_stride, j);
        out[t] = sum;
    }
}

TARGET static float dot_f32(const float *a, const float *b, int64_t n)
{
    float r;
    dot_float(WF_F32, n, a, (const uint8_t *)b, 0, 1, &r);
    return r;
}

#define DEFINE_FLOAT_DOTS(name, kind)                                                             \
    TARGET static float vec_dot_##name(int64_t n, const void *w, const void *a)                   \
    {                                                                                             \
        float r;                                                                                  \
        dot_float(kind, n, w, a, 0, 1, &r);                                                       \
        return r;                                                                                 \
    }                                                                                             \
    TARGET static void vec_dot_multi_##name(int64_t n, const void *w, const void *a,              \
                                            size_t a_stride, float *out)                          \
    {                                                                                             \
        dot_float(kind, n, w, a, a_stride, KN_DOT_TOKENS, out);                                   \
    }

DEFINE_FLOAT_DOTS(f32, WF_F32)
DEFINE_FLOAT_DOTS(f16, WF_F16)
DEFINE_FLOAT_DOTS(bf16, WF_BF16)

/* ---- Q8_0 x Q8_0 with VNNI ------------------------------------------------------- */

#define TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

/* 32 quants of each of blocks b and b+1 (b+1 all zero when absent). */
TARGET_VNNI static inline __attribute__((always_inline)) __m512i load_pair(const block_q8_0 *x, int64_t b,
                                                                          bool two)
{
    const __m512i lo = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)x[b].qs));
    return two ? _mm512_inserti64x4(lo, _mm256_loadu_si256((const __m256i *)x[b + 1].qs), 1) : lo;
}

/* One Q8_0 weight row against nt <= 4 Q8_0 activation rows, two blocks per
 * 64-byte register: vpdpbusd multiplies unsigned by signed bytes, so the
 * weight's sign moves onto the activation (|-128| = 128 is right as
 * unsigned; activations never hold -128). Each 8-lane half holds one block's
 * integer sum, scaled by that block's d_w*d_a. A token's order of sums does
 * not depend on nt. */
TARGET_VNNI static inline __attribute__((always_inline)) void dot_q8_0_vnni(int64_t n, const void *w,
                                                                           const uint8_t *a, size_t a_stride,
                                                                           int nt, float *out)
{
    const block_q8_0 *x = w;
    const int64_t nb = n / QK8_0;
    __m512 acc[4];
    UNROLL
    for (int t = 0; t < nt; t++)
        acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b += 2) {
        const bool two = b + 1 < nb;
        const __m512i qx = load_pair(x, b, two);
        const __m512i ux = _mm512_abs_epi8(qx);
        const __mmask64 neg = _mm512_movepi8_mask(qx);
        const float dx0 = _cvtsh_ss(x[b].d), dx1 = two ? _cvtsh_ss(x[b + 1].d) : 0.0f;
        UNROLL
        for (int t = 0; t < nt; t++) {
            const block_q8_0 *y = (const block_q8_0 *)(a + (size_t)t * a_stride);
            __m512i qy = load_pair(y, b, two);
            qy = _mm512_mask_sub_epi8(qy, neg, _mm512_setzero_si512(), qy);
            const __m512i isum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ux, qy);
            const float dy1 = two ? _cvtsh_ss(y[b + 1].d) : 0.0f;
            const __m512 scale = _mm512_insertf32x8(_mm512_set1_ps(dx0 * _cvtsh_ss(y[b].d)),
                                                    _mm256_set1_ps(dx1 * dy1), 1);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[t]);
        }
    }
    UNROLL
    for (int t = 0; t < nt; t++)
        out[t] = _mm512_reduce_add_ps(acc[t]);
}

TARGET_VNNI static float vec_dot_q8_0(int64_t n, const void *w, const void *a)
{
    float r;
    dot_q8_0_vnni(n, w, a, 0, 1, &r);
    return r;
}

TARGET_VNNI static void vec_dot_multi_q8_0(int64_t n, const void *w, const void *a, size_t a_stride, float *out)
{
    dot_q8_0_vnni(n, w, a, a_stride, KN_DOT_TOKENS, out);
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
    kn_impl t = *base;
    t.isa = "avx512";
    t.attention = kn_attention_avx512;
    t.dot_f32 = dot_f32;
    t.vec_dot[DTYPE_F32] = vec_dot_f32;
    t.vec_dot[DTYPE_F16] = vec_dot_f16;
    t.vec_dot[DTYPE_BF16] = vec_dot_bf16;
    t.vec_dot_multi[DTYPE_F32] = vec_dot_multi_f32;
    t.vec_dot_multi[DTYPE_F16] = vec_dot_multi_f16;
    t.vec_dot_multi[DTYPE_BF16] = vec_dot_multi_bf16;
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512dq")) {
        t.vec_dot[DTYPE_Q8_0] = vec_dot_q8_0;
        t.vec_dot_multi[DTYPE_Q8_0] = vec_dot_multi_q8_0;
    }
    avx512_impl = t;
    return &avx512_impl;
}

#else /* not x86-64 GCC/Clang */

const kn_impl *kn_avx512_impl(void)
{
    return NULL;
}

#endif
