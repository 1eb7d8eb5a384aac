/*
 * kernels_avx512.c — the AVX-512 table: the AVX2 table with the kernels that
 * gain from 16-lane registers replaced: the F32/F16/BF16 dot products (one
 * and four tokens), the Q8_0 ones with VNNI where the CPU has it, and the
 * fused attention (online softmax over blocks of
 * KN_ATTN_BLOCK = 16 keys: one block of scores is one zmm register).
 *
 * Float dots vs the reference: f32 sums in 16 x 4 lanes instead of double,
 * so they differ by float rounding (as the AVX2 ones do).
 *
 * Only the functions marked TARGET use AVX-512 instructions; kn_avx512_impl
 * checks the CPU before handing them out, so the file is safe to link
 * everywhere.
 *
 * Numerics of the attention vs the reference (tests/unit/check_kernels.c
 * holds them to it): the same blocks and the same f32 operations per query,
 * but q.k is summed in two chains (even and odd dimensions) and the block's
 * exponentials by a polynomial within ~1 ulp of expf, summed in a tree; so
 * results differ by float rounding only (~1e-6 relative).
 *
 * Batch invariance: a query's arithmetic is the same whether it is computed
 * alone or interleaved with three others, and keys past its own end (or past
 * the block's end) get probability exactly 0 against zero-filled rows, which
 * leaves its sums unchanged bit for bit.
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

/* e^x as exp256 in kernels_avx2.c (same reduction, same polynomial): within
 * ~1 ulp of expf, +inf above 88.8, 0 below -86.6 (and for -inf). */
INLINE __m512 exp512(__m512 x)
{
    const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-86.6f), _CMP_GE_OQ);
    x = _mm512_min_ps(_mm512_set1_ps(88.8f), x);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_cvtps_epi32(n);
    const __m512 half = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(e, _mm512_set1_epi32(126)), 23));
    return _mm512_maskz_mul_ps(keep, _mm512_mul_ps(p, half), _mm512_set1_ps(2.0f));
}

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

/* ---- fused attention ------------------------------------------------------------ */

/* Keys [j0, j0+nb) into kt [d][16] (transposed) and vb [16][d] as f32, zero
 * past nb. Rows are widened 16 values at a time; the transposition goes
 * through memory (its cost is shared by every query of the call). */
TARGET static void load_block(const kn_attn_kv *kv, int64_t j0, int nb, float *kt, float *vb)
{
    const int d = kv->head_dim, B = KN_ATTN_BLOCK;
    for (int j = 0; j < B; j++) {
        float *vr = vb + (size_t)j * d;
        if (j >= nb) {
            memset(vr, 0, (size_t)d * sizeof *vr);
            for (int t = 0; t < d; t++)
                kt[(size_t)t * B + j] = 0;
            continue;
        }
        float krow[16];
        for (int t = 0; t < d; t += 16) {
            __m512 k16, v16;
            if (kv->type == DTYPE_F16) {
                k16 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)kv->k[j0 + j] + t)));
                v16 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)kv->v[j0 + j] + t)));
            } else {
                k16 = _mm512_loadu_ps((const float *)kv->k[j0 + j] + t);
                v16 = _mm512_loadu_ps((const float *)kv->v[j0 + j] + t);
            }
            _mm512_storeu_ps(vr + t, v16);
            _mm512_storeu_ps(krow, k16);
            for (int u = 0; u < 16; u++)
                kt[(size_t)(t + u) * B + j] = krow[u];
        }
    }
}

/* One block for G queries (qi[g] their indices, nv[g] their valid keys in
 * the block, 1..16). G is a constant at every call, so the arrays below live
 * in registers; each query's operations do not depend on G. */
INLINE void block_queries(const kn_attn_scratch *w, int d, float scale, const int *qi, const int *nv, int G)
{
    __m512 s[4];
    float p[4][KN_ATTN_BLOCK], c[4];
    /* scores: q . k_j for the 16 keys, as two chains over even and odd t */
    {
        __m512 s0[4], s1[4];
        for (int g = 0; g < G; g++)
            s0[g] = s1[g] = _mm512_setzero_ps();
        for (int t = 0; t < d; t += 2) {
            const __m512 k0 = _mm512_loadu_ps(w->kt + (size_t)t * KN_ATTN_BLOCK);
            const __m512 k1 = _mm512_loadu_ps(w->kt + (size_t)(t + 1) * KN_ATTN_BLOCK);
            for (int g = 0; g < G; g++) {
                const float *q = w->qc + (size_t)qi[g] * d + t;
                s0[g] = _mm512_fmadd_ps(_mm512_set1_ps(q[0]), k0, s0[g]);
                s1[g] = _mm512_fmadd_ps(_mm512_set1_ps(q[1]), k1, s1[g]);
            }
        }
        for (int g = 0; g < G; g++)
            s[g] = _mm512_mul_ps(_mm512_add_ps(s0[g], s1[g]), _mm512_set1_ps(scale));
    }
    /* online softmax: new max, rescale factor, the block's exponentials */
    for (int g = 0; g < G; g++) {
        const __mmask16 valid = (__mmask16)((1u << nv[g]) - 1);
        const __m512 sv = _mm512_mask_blend_ps(valid, _mm512_set1_ps(-INFINITY), s[g]);
        const float mb = _mm512_reduce_max_ps(sv);
        float *m = w->m + qi[g], *l = w->l + qi[g];
        const float mn = *m > mb ? *m : mb;
        c[g] = expf(*m - mn);
        const __m512 e = exp512(_mm512_sub_ps(sv, _mm512_set1_ps(mn)));
        *l = *l * c[g] + _mm512_reduce_add_ps(e);
        *m = mn;
        _mm512_storeu_ps(p[g], e);
    }
    /* acc = acc * c + sum_j p_j v_j, 32 (then 16) dimensions at a time */
    int t = 0;
    for (; t + 32 <= d; t += 32) {
        __m512 a0[4], a1[4];
        for (int g = 0; g < G; g++) {
            float *a = w->acc + (size_t)qi[g] * d + t;
            a0[g] = _mm512_mul_ps(_mm512_loadu_ps(a), _mm512_set1_ps(c[g]));
            a1[g] = _mm512_mul_ps(_mm512_loadu_ps(a + 16), _mm512_set1_ps(c[g]));
        }
        for (int j = 0; j < KN_ATTN_BLOCK; j++) {
            const __m512 v0 = _mm512_loadu_ps(w->vb + (size_t)j * d + t);
            const __m512 v1 = _mm512_loadu_ps(w->vb + (size_t)j * d + t + 16);
            for (int g = 0; g < G; g++) {
                const __m512 pj = _mm512_set1_ps(p[g][j]);
                a0[g] = _mm512_fmadd_ps(pj, v0, a0[g]);
                a1[g] = _mm512_fmadd_ps(pj, v1, a1[g]);
            }
        }
        for (int g = 0; g < G; g++) {
            float *a = w->acc + (size_t)qi[g] * d + t;
            _mm512_storeu_ps(a, a0[g]);
            _mm512_storeu_ps(a + 16, a1[g]);
        }
    }
    for (; t < d; t += 16) {
        __m512 a0[4];
        for (int g = 0; g < G; g++)
            a0[g] = _mm512_mul_ps(_mm512_loadu_ps(w->acc + (size_t)qi[g] * d + t), _mm512_set1_ps(c[g]));
        for (int j = 0; j < KN_ATTN_BLOCK; j++) {
            const __m512 v0 = _mm512_loadu_ps(w->vb + (size_t)j * d + t);
            for (int g = 0; g < G; g++)
                a0[g] = _mm512_fmadd_ps(_mm512_set1_ps(p[g][j]), v0, a0[g]);
        }
        for (int g = 0; g < G; g++)
            _mm512_storeu_ps(w->acc + (size_t)qi[g] * d + t, a0[g]);
    }
}

TARGET static void block4(const kn_attn_scratch *w, int d, float scale, const int *qi, const int *nv)
{
    block_queries(w, d, scale, qi, nv, 4);
}

TARGET static void block1(const kn_attn_scratch *w, int d, float scale, const int *qi, const int *nv)
{
    block_queries(w, d, scale, qi, nv, 1);
}

/* kn_attention for head_dim a multiple of 16 (the reference otherwise). The
 * queries that reach into a block are taken four at a time. */
TARGET static void attention(const kn_attn_kv *kv, const float *q, size_t q_stride, int n_q, const int64_t *n_keys,
                             float scale, float *out, size_t out_stride, float *scratch)
{
    const int d = kv->head_dim, B = KN_ATTN_BLOCK;
    if (d % 16 != 0) {
        kn_ref_impl.attention(kv, q, q_stride, n_q, n_keys, scale, out, out_stride, scratch);
        return;
    }
    kn_attn_scratch w = kn_attn_split(scratch, n_q, d);
    int64_t n_max = 0;
    for (int i = 0; i < n_q; i++) {
        const int64_t ni = n_keys ? n_keys[i] : kv->n;
        n_max = ni > n_max ? ni : n_max;
        const float *qs = q + (size_t)i * q_stride;
        float *qd = w.qc + (size_t)i * d, *a = w.acc + (size_t)i * d;
        for (int t = 0; t < d; t += 16) {
            __m512 x = _mm512_loadu_ps(qs + t);
            if (kv->type == DTYPE_F16)
                x = _mm512_cvtph_ps(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            _mm512_storeu_ps(qd + t, x);
            _mm512_storeu_ps(a + t, _mm512_setzero_ps());
        }
        w.m[i] = -INFINITY;
        w.l[i] = 0;
    }
    for (int64_t j0 = 0; j0 < n_max; j0 += B) {
        const int nb = n_max - j0 < B ? (int)(n_max - j0) : B;
        load_block(kv, j0, nb, w.kt, w.vb);
        int qi[4], nv[4], g = 0;
        for (int i = 0; i < n_q; i++) {
            const int64_t ni = n_keys ? n_keys[i] : kv->n;
            if (ni <= j0)
                continue;
            qi[g] = i;
            nv[g] = ni - j0 < nb ? (int)(ni - j0) : nb;
            if (++g == 4) {
                block4(&w, d, scale, qi, nv);
                g = 0;
            }
        }
        for (int r = 0; r < g; r++)
            block1(&w, d, scale, qi + r, nv + r);
    }
    for (int i = 0; i < n_q; i++) {
        const __m512 inv = _mm512_set1_ps(1.0f / w.l[i]);
        for (int t = 0; t < d; t += 16)
            _mm512_storeu_ps(out + (size_t)i * out_stride + t,
                             _mm512_mul_ps(_mm512_loadu_ps(w.acc + (size_t)i * d + t), inv));
    }
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
    t.attention = attention;
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
