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
 * Only kn_avx512_impl (which checks the CPU) hands kn_attention_avx512 out,
 * and kn_attention_dense_for kn_attention_dense_avx512.
 */
#include "attention_impl.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define INLINE TARGET static inline __attribute__((always_inline))

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

/* ---- dense (vision) attention ----------------------------------------------------- */

#define DQ KN_ATTN_DENSE_QUERIES  /* queries per pass: lanes of two zmm */
#define DKG 8                     /* keys per score tile: 8 x 2 accumulators */
#define DTG 8                     /* dimensions per output tile: 8 x 2 accumulators */
/* Loops over a register tile must be unrolled, or -O2 keeps the tile in memory. */
#define UNROLL_TILE _Pragma("GCC unroll 8")

/* s[j][lane] = scale * q_lane . k_j for the DKG keys at kr[] (past the last
 * key, kr repeats it: those rows of s are written, never read), qt [d][DQ]. */
INLINE void dense_scores(const float *qt, int d, const float *const *kr, float scale, float *s)
{
    __m512 a[DKG][2];
    UNROLL_TILE
    for (int j = 0; j < DKG; j++)
        a[j][0] = a[j][1] = _mm512_setzero_ps();
    for (int t = 0; t < d; t++) {
        const __m512 q0 = _mm512_loadu_ps(qt + (size_t)t * DQ), q1 = _mm512_loadu_ps(qt + (size_t)t * DQ + 16);
        UNROLL_TILE
        for (int j = 0; j < DKG; j++) {
            const __m512 kb = _mm512_set1_ps(kr[j][t]);
            a[j][0] = _mm512_fmadd_ps(kb, q0, a[j][0]);
            a[j][1] = _mm512_fmadd_ps(kb, q1, a[j][1]);
        }
    }
    const __m512 sc = _mm512_set1_ps(scale);
    UNROLL_TILE
    for (int j = 0; j < DKG; j++) {
        _mm512_storeu_ps(s + (size_t)j * DQ, _mm512_mul_ps(a[j][0], sc));
        _mm512_storeu_ps(s + (size_t)j * DQ + 16, _mm512_mul_ps(a[j][1], sc));
    }
}

/* kn_softmax for 16 queries at once, lane by lane: p[j][lane], j < n, in place. */
INLINE void dense_softmax(float *p, int64_t n)
{
    __m512 m = _mm512_loadu_ps(p);
    for (int64_t j = 1; j < n; j++)
        m = _mm512_max_ps(m, _mm512_loadu_ps(p + (size_t)j * DQ));
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();  /* lanes 0-7, 8-15 */
    for (int64_t j = 0; j < n; j++) {
        const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(p + (size_t)j * DQ), m));
        _mm512_storeu_ps(p + (size_t)j * DQ, e);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    const __m512d one = _mm512_set1_pd(1.0);
    const __m256 inv0 = _mm512_cvtpd_ps(_mm512_div_pd(one, s0)), inv1 = _mm512_cvtpd_ps(_mm512_div_pd(one, s1));
    const __m512 inv = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(inv0)),
                                                           _mm256_castps_pd(inv1), 1));
    for (int64_t j = 0; j < n; j++)
        _mm512_storeu_ps(p + (size_t)j * DQ, _mm512_mul_ps(_mm512_loadu_ps(p + (size_t)j * DQ), inv));
}

/* ot[t0 + u][lane] += sum_{j < nb} p[j][lane] * v_j[t0 + u] for u < DTG, the
 * block's sum from zero in key order; v_j at v + j*kv_stride. */
INLINE void dense_values(float *ot, int t0, const float *p, const float *v, size_t kv_stride, int nb)
{
    __m512 a[DTG][2];
    UNROLL_TILE
    for (int u = 0; u < DTG; u++)
        a[u][0] = a[u][1] = _mm512_setzero_ps();
    for (int j = 0; j < nb; j++) {
        const __m512 p0 = _mm512_loadu_ps(p + (size_t)j * DQ), p1 = _mm512_loadu_ps(p + (size_t)j * DQ + 16);
        const float *vj = v + (size_t)j * kv_stride + t0;
        UNROLL_TILE
        for (int u = 0; u < DTG; u++) {
            const __m512 vb = _mm512_set1_ps(vj[u]);
            a[u][0] = _mm512_fmadd_ps(vb, p0, a[u][0]);
            a[u][1] = _mm512_fmadd_ps(vb, p1, a[u][1]);
        }
    }
    UNROLL_TILE
    for (int u = 0; u < DTG; u++) {
        float *o = ot + (size_t)(t0 + u) * DQ;
        _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), a[u][0]));
        _mm512_storeu_ps(o + 16, _mm512_add_ps(_mm512_loadu_ps(o + 16), a[u][1]));
    }
}

TARGET void kn_attention_dense_avx512(const float *q, size_t q_stride, int n_q, const float *k, const float *v,
                                      size_t kv_stride, int64_t n, int head_dim, float scale, float *out,
                                      size_t out_stride, float *scratch)
{
    const int d = head_dim;
    if (d % DTG != 0) {
        kn_attention_dense_ref(q, q_stride, n_q, k, v, kv_stride, n, head_dim, scale, out, out_stride, scratch);
        return;
    }
    /* [n16][DQ], [d][DQ], [d][DQ]: the layout of kn_attention_dense_scratch */
    float *p = scratch, *qt = p + (size_t)(n + 15) / 16 * 16 * DQ, *ot = qt + (size_t)d * DQ;
    for (int i0 = 0; i0 < n_q; i0 += DQ) {
        const int nq = n_q - i0 < DQ ? n_q - i0 : DQ;
        /* lanes past nq hold zero queries: computed, never written out */
        for (int t = 0; t < d; t++)
            for (int i = 0; i < DQ; i++) {
                qt[(size_t)t * DQ + i] = i < nq ? q[(size_t)(i0 + i) * q_stride + t] : 0.0f;
                ot[(size_t)t * DQ + i] = 0.0f;
            }
        for (int64_t j0 = 0; j0 < n; j0 += DKG) {
            const int nk = n - j0 < DKG ? (int)(n - j0) : DKG;
            const float *kr[DKG];
            UNROLL_TILE
            for (int j = 0; j < DKG; j++)
                kr[j] = k + (size_t)(j0 + (j < nk ? j : nk - 1)) * kv_stride;
            dense_scores(qt, d, kr, scale, p + (size_t)j0 * DQ);
        }
        dense_softmax(p, n);
        dense_softmax(p + 16, n);
        for (int64_t j0 = 0; j0 < n; j0 += KN_ATTN_DENSE_VBLOCK) {
            const int nb = n - j0 < KN_ATTN_DENSE_VBLOCK ? (int)(n - j0) : KN_ATTN_DENSE_VBLOCK;
            for (int t0 = 0; t0 < d; t0 += DTG)
                dense_values(ot, t0, p + (size_t)j0 * DQ, v + (size_t)j0 * kv_stride, kv_stride, nb);
        }
        for (int i = 0; i < nq; i++)
            for (int t = 0; t < d; t++)
                out[(size_t)(i0 + i) * out_stride + t] = ot[(size_t)t * DQ + i];
    }
}

#endif
