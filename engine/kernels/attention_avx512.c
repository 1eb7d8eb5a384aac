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
 * alone or interleaved with three others, and keys past its own end but
 * within another query's get probability exactly 0, which leaves its sums
 * unchanged bit for bit. Slots past every query's end are masked out of the
 * scores and their values never read.
 *
 * The keys and values are read straight from the cache's blocks: keys are
 * stored transposed (kn_attn_kv), so a block's scores need no shuffles
 * (when they were rows, their 16 x 16 transposition in registers and the
 * values' conversion to a scratch block were ~half of decode's attention).
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
/* K/V blocks are asked for ATTN_PF_BLOCKS blocks ahead of their use: the
 * first ATTN_PF_LEAD, until the hardware prefetchers have found the stream
 * (a head's blocks of a sequence follow each other in the cache when the
 * pool handed them out in order, kvcache.c), and then each one that does
 * not follow the block before it. 8 streams, Q8_0 256M / 500M models,
 * medians of 3-4 alternating runs: at 64-80 positions 3.89 / 8.67 ms a
 * step, 4.16 / 9.09 without any prefetch here; at 1100 positions 8.44 /
 * 16.4, 8.65 / 17.1 asking for every block (and for each block's own lines
 * at its start), 8.74 / 16.8 without. With the sequences' blocks
 * interleaved (8 sequences growing a block at a time, the 256M model),
 * 18.3-19.2 ms a step when only the first blocks were asked for, 13.1-13.5
 * with the blocks that do not follow, 12.4-13.4 before the cache's blocks
 * were read as stored (row pointers, keys transposed per block). */
#define ATTN_PF_BLOCKS 2
#define ATTN_PF_LEAD 6

/* 16 values from p + i (halves or floats) as f32: dimension t of a key
 * block's 16 keys (i = t * 16, the block is transposed), or 16 elements of
 * a value row. */
INLINE __m512 load16(const void *p, size_t i, bool f16)
{
    return f16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i)))
               : _mm512_loadu_ps((const float *)p + i);
}

/* One block for G queries (qi[g] their indices, nv[g] their valid keys in
 * the block, 1..nb) straight from the cache's key block kb and value block
 * vb (nb valid slots; the keys' other lanes are masked out of the scores,
 * the values past nb never read). G and f16 are constants at every call, so
 * the arrays below live in registers; each query's operations do not
 * depend on G. */
INLINE void block_queries(const kn_attn_scratch *w, const void *kb, const void *vb, int nb, bool f16, int d,
                          float scale, const int *qi, const int *nv, int G)
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
            const __m512 k0 = load16(kb, (size_t)t * KN_ATTN_BLOCK, f16);
            const __m512 k1 = load16(kb, (size_t)(t + 1) * KN_ATTN_BLOCK, f16);
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
        for (int j = 0; j < nb; j++) {
            const __m512 v0 = load16(vb, (size_t)j * d + t, f16);
            const __m512 v1 = load16(vb, (size_t)j * d + t + 16, f16);
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
        for (int j = 0; j < nb; j++) {
            const __m512 v0 = load16(vb, (size_t)j * d + t, f16);
            UNROLL_G
            for (int g = 0; g < G; g++)
                a0[g] = _mm512_fmadd_ps(_mm512_set1_ps(p[g][j]), v0, a0[g]);
        }
        UNROLL_G
        for (int g = 0; g < G; g++)
            _mm512_storeu_ps(w->acc + (size_t)qi[g] * d + t, a0[g]);
    }
}

typedef void (*block_fn)(const kn_attn_scratch *w, const void *kb, const void *vb, int nb, int d, float scale,
                         const int *qi, const int *nv);
#define DEFINE_BLOCK(name, G, f16)                                                                         \
    TARGET static void name(const kn_attn_scratch *w, const void *kb, const void *vb, int nb, int d,      \
                            float scale, const int *qi, const int *nv)                                    \
    {                                                                                                      \
        block_queries(w, kb, vb, nb, f16, d, scale, qi, nv, G);                                            \
    }
DEFINE_BLOCK(block1_f32, 1, false)
DEFINE_BLOCK(block2_f32, 2, false)
DEFINE_BLOCK(block3_f32, 3, false)
DEFINE_BLOCK(block4_f32, 4, false)
DEFINE_BLOCK(block1_f16, 1, true)
DEFINE_BLOCK(block2_f16, 2, true)
DEFINE_BLOCK(block3_f16, 3, true)
DEFINE_BLOCK(block4_f16, 4, true)
/* [f16][G] */
static const block_fn blocks[2][5] = {
    { NULL, block1_f32, block2_f32, block3_f32, block4_f32 },
    { NULL, block1_f16, block2_f16, block3_f16, block4_f16 },
};

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
    const bool f16 = kv->type == DTYPE_F16;
    const size_t block_bytes = (size_t)B * (size_t)d * (f16 ? 2 : 4);
    for (int64_t j0 = 0; j0 < n_max; j0 += B) {
        const int nb = n_max - j0 < B ? (int)(n_max - j0) : B;
        const int64_t pf = j0 / B + ATTN_PF_BLOCKS;
        if (pf * B < n_max && (pf < ATTN_PF_LEAD || (const char *)kv->k[pf] != (const char *)kv->k[pf - 1] + block_bytes ||
                               (const char *)kv->v[pf] != (const char *)kv->v[pf - 1] + block_bytes))
            for (size_t o = 0; o < block_bytes; o += 64) {
                _mm_prefetch((const char *)kv->k[pf] + o, _MM_HINT_T0);
                _mm_prefetch((const char *)kv->v[pf] + o, _MM_HINT_T0);
            }
        const void *kb = kv->k[j0 / B], *vb = kv->v[j0 / B];
        int qi[4], nv[4], g = 0;
        for (int i = 0; i < n_q; i++) {
            const int64_t ni = n_keys ? n_keys[i] : kv->n;
            if (ni <= j0)
                continue;
            qi[g] = i;
            nv[g] = ni - j0 < nb ? (int)(ni - j0) : nb;
            if (++g == 4) {
                blocks[f16][4](&w, kb, vb, nb, d, scale, qi, nv);
                g = 0;
            }
        }
        if (g > 0)
            blocks[f16][g](&w, kb, vb, nb, d, scale, qi, nv);
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
