/*
 * attention_dense.h — the body of kn_attention_dense's SIMD versions, written
 * once for any vector width: included by attention_avx512.c (zmm) and
 * attention_avx2.c (ymm) after they define
 *   VEC, VL (lanes), V_LOAD(p), V_STORE(p, x), V_SET1(x), V_ZERO(), V_FMA(a, b, c) (a*b + c),
 *   V_MUL, V_ADD, V_SUB, V_MAX, V_EXP (within ~1 ulp of expf),
 *   DSUM (lane sums in double), dsum_zero(), dsum_add(DSUM *, VEC), dsum_inv(const DSUM *) (VEC of (float)(1/sum)),
 *   DKG (keys per score tile, divides 48), DTG (dimensions per output tile),
 *   TARGET, INLINE, DENSE_FN (the function's name).
 *
 * KN_ATTN_DENSE_QUERIES queries are computed side by side, one per lane of
 * DQ / VL vectors: every operation is lane-wise, so a query's arithmetic does
 * not depend on the others (nor on which lane it occupies), and the softmax
 * needs no horizontal step. A broadcast key or value element serves all 32
 * queries. Per query the operations and their order are the reference's
 * (attention.c), with FMA and V_EXP for multiply-add and expf.
 */

#define DQ KN_ATTN_DENSE_QUERIES
#define NV (DQ / VL)
/* Loops over a register tile must be unrolled, or -O2 keeps the tile in memory. */
#define UNROLL_TILE _Pragma("GCC unroll 8")

/* s[j][lane] = scale * q_lane . k_j for the DKG keys at kr[] (past the last
 * key, kr repeats it: those rows of s are written, never read), qt [d][DQ]. */
INLINE void dense_scores(const float *qt, int d, const float *const *kr, float scale, float *s)
{
    VEC a[DKG][NV];
    UNROLL_TILE
    for (int j = 0; j < DKG; j++)
        UNROLL_TILE
        for (int h = 0; h < NV; h++)
            a[j][h] = V_ZERO();
    for (int t = 0; t < d; t++) {
        VEC qv[NV];
        UNROLL_TILE
        for (int h = 0; h < NV; h++)
            qv[h] = V_LOAD(qt + (size_t)t * DQ + h * VL);
        UNROLL_TILE
        for (int j = 0; j < DKG; j++) {
            const VEC kb = V_SET1(kr[j][t]);
            UNROLL_TILE
            for (int h = 0; h < NV; h++)
                a[j][h] = V_FMA(kb, qv[h], a[j][h]);
        }
    }
    const VEC sc = V_SET1(scale);
    UNROLL_TILE
    for (int j = 0; j < DKG; j++)
        UNROLL_TILE
        for (int h = 0; h < NV; h++)
            V_STORE(s + (size_t)j * DQ + h * VL, V_MUL(a[j][h], sc));
}

/* The tables' softmax for VL queries at once, lane by lane: p[j][lane], j < n, in place. */
INLINE void dense_softmax(float *p, int64_t n)
{
    VEC m = V_LOAD(p);
    for (int64_t j = 1; j < n; j++)
        m = V_MAX(m, V_LOAD(p + (size_t)j * DQ));
    DSUM sum = dsum_zero();
    for (int64_t j = 0; j < n; j++) {
        const VEC e = V_EXP(V_SUB(V_LOAD(p + (size_t)j * DQ), m));
        V_STORE(p + (size_t)j * DQ, e);
        dsum_add(&sum, e);
    }
    const VEC inv = dsum_inv(&sum);
    for (int64_t j = 0; j < n; j++)
        V_STORE(p + (size_t)j * DQ, V_MUL(V_LOAD(p + (size_t)j * DQ), inv));
}

/* ot[t0 + u][lane] += sum_{j < nb} p[j][lane] * v_j[t0 + u] for u < DTG, the
 * block's sum from zero in key order; v_j at v + j*kv_stride. */
INLINE void dense_values(float *ot, int t0, const float *p, const float *v, size_t kv_stride, int nb)
{
    VEC a[DTG][NV];
    UNROLL_TILE
    for (int u = 0; u < DTG; u++)
        UNROLL_TILE
        for (int h = 0; h < NV; h++)
            a[u][h] = V_ZERO();
    for (int j = 0; j < nb; j++) {
        VEC pv[NV];
        UNROLL_TILE
        for (int h = 0; h < NV; h++)
            pv[h] = V_LOAD(p + (size_t)j * DQ + h * VL);
        const float *vj = v + (size_t)j * kv_stride + t0;
        UNROLL_TILE
        for (int u = 0; u < DTG; u++) {
            const VEC vb = V_SET1(vj[u]);
            UNROLL_TILE
            for (int h = 0; h < NV; h++)
                a[u][h] = V_FMA(vb, pv[h], a[u][h]);
        }
    }
    UNROLL_TILE
    for (int u = 0; u < DTG; u++)
        UNROLL_TILE
        for (int h = 0; h < NV; h++) {
            float *o = ot + (size_t)(t0 + u) * DQ + h * VL;
            V_STORE(o, V_ADD(V_LOAD(o), a[u][h]));
        }
}

TARGET void DENSE_FN(const float *q, size_t q_stride, int n_q, const float *k, const float *v, size_t kv_stride,
                     int64_t n, int head_dim, float scale, float *out, size_t out_stride, float *scratch)
{
    const int d = head_dim;
    if (d % DTG != 0) {
        kn_attention_dense_ref(q, q_stride, n_q, k, v, kv_stride, n, head_dim, scale, out, out_stride, scratch);
        return;
    }
    /* scores, queries, outputs: the layout of kn_attention_dense_scratch */
    float *p = scratch, *qt = p + kn_attn_dense_score_rows(n) * DQ, *ot = qt + (size_t)d * DQ;
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
        for (int h = 0; h < NV; h++)
            dense_softmax(p + h * VL, n);
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
