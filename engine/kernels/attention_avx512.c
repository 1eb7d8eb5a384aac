/*
 * attention_avx512.c — kn_attention with AVX-512: online softmax over blocks
 * of KN_ATTN_BLOCK = 16 keys, one block of scores in one zmm register.
 *
 * Numerics vs the reference (attention.c; tests/unit/check_kernels.c holds
 * them to it): the same blocks and the same f32 operations per query, but
 * q.k is summed in two chains (even and odd dimensions) and the block's
 * exponentials by a polynomial within ~1 ulp of expf, summed in a tree; so
 * results differ by float rounding only (~1e-6 relative).
 *
 * Batch invariance: a query's arithmetic is the same whether it is computed
 * alone or interleaved with three others, and keys past its own end (or past
 * the block's end) get probability exactly 0 against zero-filled rows, which
 * leaves its sums unchanged bit for bit.
 *
 * kn_attention_dense: 32 queries side by side, one per lane of two zmm
 * registers, so the softmax needs no horizontal operation and a key or value
 * element, broadcast, serves 32 queries per load. Per query it performs the
 * reference's operations in the reference's order (attention.c), with FMA
 * and exp512 instead of separate multiply-add and expf: float rounding apart
 * (~1e-6 relative), the same numbers.
 *
 * Only kn_avx512_impl (which checks the CPU) hands kn_attention_avx512 and
 * kn_attention_dense_avx512 out.
 */
#include "kernels_impl.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "simd_exp.h"

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define INLINE TARGET static inline __attribute__((always_inline))
/* Loops over the G queries' register arrays must be unrolled, or -O2 keeps
 * the arrays in memory. */
#define UNROLL_G _Pragma("GCC unroll 4")
#define UNROLL_16 _Pragma("GCC unroll 16")
/* K/V rows are asked for this many blocks ahead of their use: they are
 * scattered over the paged cache, a few lines each, which the hardware
 * prefetchers do not follow (8 streams at 1100 positions, Q8_0 256M / 500M
 * models: steps of 24.4 / 50.3 ms without, 21.0 / 41.5 with 2 blocks
 * ahead, 21.5 / 42.3 with 4). */
#define ATTN_PF_BLOCKS 2

/* r[i] = column i of the 16 x 16 floats in rows r[0..15]: pairs, then
 * quads within 128-bit lanes, then the lanes themselves (64 shuffles). The
 * loops must be unrolled for the arrays to stay in registers. */
INLINE void transpose16(__m512 r[16])
{
    __m512 t[16];
    UNROLL_16
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    /* u[4g + k], 128-bit lane L: column 4L + k of rows 4g..4g+3 */
    UNROLL_16
    for (int i = 0; i < 16; i += 4)
        UNROLL_16
        for (int h = 0; h < 2; h++) {
            const __m512d a = _mm512_castps_pd(t[i + h]), b = _mm512_castps_pd(t[i + 2 + h]);
            r[i + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
            r[i + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        }
    UNROLL_16
    for (int k = 0; k < 4; k++) {
        const __m512 v0 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88), v1 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xDD);
        const __m512 w0 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88),
                     w1 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xDD);
        t[k] = _mm512_shuffle_f32x4(v0, w0, 0x88);
        t[4 + k] = _mm512_shuffle_f32x4(v1, w1, 0x88);
        t[8 + k] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
        t[12 + k] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
    }
    UNROLL_16
    for (int i = 0; i < 16; i++)
        r[i] = t[i];
}

/* Keys [j0, j0+nb) into kt [d][16] (transposed) and vb [16][d] as f32, zero
 * past nb, 16 dimensions at a time. The transposition stays in registers:
 * through memory (scalar stores, then a vector load over them) it was most
 * of the time of decode's attention, where a call has only a KV head's few
 * query rows to share it. */
TARGET static void load_block(const kn_attn_kv *kv, int64_t j0, int nb, float *kt, float *vb)
{
    const int d = kv->head_dim, B = KN_ATTN_BLOCK;
    for (int t = 0; t < d; t += 16) {
        __m512 kr[16];
        UNROLL_16
        for (int j = 0; j < B; j++) {
            __m512 v16;
            if (j >= nb) {
                kr[j] = v16 = _mm512_setzero_ps();
            } else if (kv->type == DTYPE_F16) {
                kr[j] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)kv->k[j0 + j] + t)));
                v16 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)kv->v[j0 + j] + t)));
            } else {
                kr[j] = _mm512_loadu_ps((const float *)kv->k[j0 + j] + t);
                v16 = _mm512_loadu_ps((const float *)kv->v[j0 + j] + t);
            }
            _mm512_storeu_ps(vb + (size_t)j * d + t, v16);
        }
        transpose16(kr);
        UNROLL_16
        for (int u = 0; u < 16; u++)
            _mm512_storeu_ps(kt + (size_t)(t + u) * B, kr[u]);
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
        UNROLL_G
        for (int g = 0; g < G; g++)
            s0[g] = s1[g] = _mm512_setzero_ps();
        for (int t = 0; t < d; t += 2) {
            const __m512 k0 = _mm512_loadu_ps(w->kt + (size_t)t * KN_ATTN_BLOCK);
            const __m512 k1 = _mm512_loadu_ps(w->kt + (size_t)(t + 1) * KN_ATTN_BLOCK);
            UNROLL_G
            for (int g = 0; g < G; g++) {
                const float *q = w->qc + (size_t)qi[g] * d + t;
                s0[g] = _mm512_fmadd_ps(_mm512_set1_ps(q[0]), k0, s0[g]);
                s1[g] = _mm512_fmadd_ps(_mm512_set1_ps(q[1]), k1, s1[g]);
            }
        }
        UNROLL_G
        for (int g = 0; g < G; g++)
            s[g] = _mm512_mul_ps(_mm512_add_ps(s0[g], s1[g]), _mm512_set1_ps(scale));
    }
    /* online softmax: new max, rescale factor, the block's exponentials */
    UNROLL_G
    for (int g = 0; g < G; g++) {
        const __mmask16 valid = (__mmask16)((1u << nv[g]) - 1);
        const __m512 sv = _mm512_mask_blend_ps(valid, _mm512_set1_ps(-INFINITY), s[g]);
        const float mb = _mm512_reduce_max_ps(sv);
        float *m = w->m + qi[g], *l = w->l + qi[g];
        const float mn = *m > mb ? *m : mb;
        c[g] = mn == *m ? 1.0f : expf(*m - mn); /* expf(0) is 1: the common case, without the call */
        const __m512 e = kn_exp512(_mm512_sub_ps(sv, _mm512_set1_ps(mn)));
        *l = *l * c[g] + _mm512_reduce_add_ps(e);
        *m = mn;
        _mm512_storeu_ps(p[g], e);
    }
    /* acc = acc * c + sum_j p_j v_j, 32 (then 16) dimensions at a time */
    int t = 0;
    for (; t + 32 <= d; t += 32) {
        __m512 a0[4], a1[4];
        UNROLL_G
        for (int g = 0; g < G; g++) {
            float *a = w->acc + (size_t)qi[g] * d + t;
            a0[g] = _mm512_mul_ps(_mm512_loadu_ps(a), _mm512_set1_ps(c[g]));
            a1[g] = _mm512_mul_ps(_mm512_loadu_ps(a + 16), _mm512_set1_ps(c[g]));
        }
        for (int j = 0; j < KN_ATTN_BLOCK; j++) {
            const __m512 v0 = _mm512_loadu_ps(w->vb + (size_t)j * d + t);
            const __m512 v1 = _mm512_loadu_ps(w->vb + (size_t)j * d + t + 16);
            UNROLL_G
            for (int g = 0; g < G; g++) {
                const __m512 pj = _mm512_set1_ps(p[g][j]);
                a0[g] = _mm512_fmadd_ps(pj, v0, a0[g]);
                a1[g] = _mm512_fmadd_ps(pj, v1, a1[g]);
            }
        }
        UNROLL_G
        for (int g = 0; g < G; g++) {
            float *a = w->acc + (size_t)qi[g] * d + t;
            _mm512_storeu_ps(a, a0[g]);
            _mm512_storeu_ps(a + 16, a1[g]);
        }
    }
    for (; t < d; t += 16) {
        __m512 a0[4];
        UNROLL_G
        for (int g = 0; g < G; g++)
            a0[g] = _mm512_mul_ps(_mm512_loadu_ps(w->acc + (size_t)qi[g] * d + t), _mm512_set1_ps(c[g]));
        for (int j = 0; j < KN_ATTN_BLOCK; j++) {
            const __m512 v0 = _mm512_loadu_ps(w->vb + (size_t)j * d + t);
            UNROLL_G
            for (int g = 0; g < G; g++)
                a0[g] = _mm512_fmadd_ps(_mm512_set1_ps(p[g][j]), v0, a0[g]);
        }
        UNROLL_G
        for (int g = 0; g < G; g++)
            _mm512_storeu_ps(w->acc + (size_t)qi[g] * d + t, a0[g]);
    }
}

TARGET static void block4(const kn_attn_scratch *w, int d, float scale, const int *qi, const int *nv)
{
    block_queries(w, d, scale, qi, nv, 4);
}

TARGET static void block3(const kn_attn_scratch *w, int d, float scale, const int *qi, const int *nv)
{
    block_queries(w, d, scale, qi, nv, 3);
}

TARGET static void block2(const kn_attn_scratch *w, int d, float scale, const int *qi, const int *nv)
{
    block_queries(w, d, scale, qi, nv, 2);
}

TARGET static void block1(const kn_attn_scratch *w, int d, float scale, const int *qi, const int *nv)
{
    block_queries(w, d, scale, qi, nv, 1);
}

/* kn_attention for head_dim a multiple of 16 (the reference otherwise). The
 * queries that reach into a block are taken four at a time, the 1-3 left
 * together: a decode step's call has one entry's group of query heads
 * (SmolVLM's 3), which then load the block's keys and values once, not 3
 * times (8 streams at 1100 positions, Q8_0 256M / 500M models: steps of
 * 16.8-17.2 / 31.1-31.8 ms against 17.7-18.5 / 34.2-34.8). */
TARGET void kn_attention_avx512(const kn_attn_kv *kv, const float *q, size_t q_stride, int n_q, const int64_t *n_keys,
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
        for (int64_t j = j0 + ATTN_PF_BLOCKS * B; j < n_max && j < j0 + (ATTN_PF_BLOCKS + 1) * B; j++)
            for (int o = 0; o < d * (kv->type == DTYPE_F16 ? 2 : 4); o += 64) {
                _mm_prefetch((const char *)kv->k[j] + o, _MM_HINT_T0);
                _mm_prefetch((const char *)kv->v[j] + o, _MM_HINT_T0);
            }
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
        if (g == 3)
            block3(&w, d, scale, qi, nv);
        else if (g == 2)
            block2(&w, d, scale, qi, nv);
        else if (g == 1)
            block1(&w, d, scale, qi, nv);
    }
    for (int i = 0; i < n_q; i++) {
        const __m512 inv = _mm512_set1_ps(1.0f / w.l[i]);
        for (int t = 0; t < d; t += 16)
            _mm512_storeu_ps(out + (size_t)i * out_stride + t,
                             _mm512_mul_ps(_mm512_loadu_ps(w.acc + (size_t)i * d + t), inv));
    }
}

/* ---- dense (vision) attention ----------------------------------------------------- */

#define VEC __m512
#define VL 16
#define V_LOAD _mm512_loadu_ps
#define V_STORE _mm512_storeu_ps
#define V_SET1 _mm512_set1_ps
#define V_ZERO _mm512_setzero_ps
#define V_FMA _mm512_fmadd_ps
#define V_MUL _mm512_mul_ps
#define V_ADD _mm512_add_ps
#define V_SUB _mm512_sub_ps
#define V_MAX _mm512_max_ps
#define V_EXP kn_exp512
#define DKG 8  /* 8 keys x 2 zmm accumulators */
#define DTG 8  /* 8 dimensions x 2 zmm accumulators */
#define DENSE_FN kn_attention_dense_avx512

typedef struct { __m512d lo, hi; } DSUM;  /* lanes 0-7, 8-15 */

INLINE DSUM dsum_zero(void)
{
    return (DSUM){ _mm512_setzero_pd(), _mm512_setzero_pd() };
}

INLINE void dsum_add(DSUM *s, __m512 e)
{
    s->lo = _mm512_add_pd(s->lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
    s->hi = _mm512_add_pd(s->hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
}

INLINE __m512 dsum_inv(const DSUM *s)
{
    const __m512d one = _mm512_set1_pd(1.0);
    const __m256 lo = _mm512_cvtpd_ps(_mm512_div_pd(one, s->lo)), hi = _mm512_cvtpd_ps(_mm512_div_pd(one, s->hi));
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)), _mm256_castps_pd(hi), 1));
}

#include "attention_dense.h"

#endif
