/*
 * attention.c — the fused attentions: kn_attention (the decoder's, causal,
 * over the KV cache's blocks) and kn_attention_dense (the vision encoder's,
 * bidirectional, f32): scratch layouts, the call into the version for the
 * selected table, and the scalar references every SIMD version
 * (attention_avx512.c) is held to by tests/unit/check_kernels.c.
 */
#include "kernels_impl.h"

#include <math.h>
#include <stddef.h>

size_t kn_attention_scratch(int n_q, int head_dim)
{
    return 2 * (size_t)KN_ATTN_BLOCK * (size_t)head_dim + 2 * (size_t)n_q * (size_t)head_dim + 2 * (size_t)n_q;
}

kn_attn_scratch kn_attn_split(float *buf, int n_q, int head_dim)
{
    kn_attn_scratch s;
    const size_t d = (size_t)head_dim, nq = (size_t)n_q;
    s.kt = buf;
    s.vb = s.kt + d * KN_ATTN_BLOCK;
    s.qc = s.vb + d * KN_ATTN_BLOCK;
    s.acc = s.qc + nq * d;
    s.m = s.acc + nq * d;
    s.l = s.m + nq;
    return s;
}

void kn_attention(const kn_attn_kv *kv, const float *q, size_t q_stride, int n_q, const int64_t *n_keys,
                  float scale, float *out, size_t out_stride, float *buf)
{
    kn_impl_active()->attention(kv, q, q_stride, n_q, n_keys, scale, out, out_stride, buf);
}

/* Keys [j0, j0+nb) of kv (j0 a block's first) into kt [d][B] (transposed)
 * and vb [B][d] as f32, zero-filled past nb so that every block is a whole
 * one. */
static void attn_load_block(const kn_attn_kv *kv, int64_t j0, int nb, float *kt, float *vb)
{
    const int d = kv->head_dim, B = KN_ATTN_BLOCK;
    const void *kb = kv->k[j0 / B], *vbk = kv->v[j0 / B];
    for (int j = 0; j < B; j++)
        for (int t = 0; t < d; t++) {
            const size_t ki = (size_t)t * B + j, vi = (size_t)j * d + t;
            float kv_k = 0, kv_v = 0;
            if (j < nb && kv->type == DTYPE_F16) {
                kv_k = fp16_to_f32(((const uint16_t *)kb)[ki]);
                kv_v = fp16_to_f32(((const uint16_t *)vbk)[vi]);
            } else if (j < nb) {
                kv_k = ((const float *)kb)[ki];
                kv_v = ((const float *)vbk)[vi];
            }
            kt[ki] = kv_k;
            vb[vi] = kv_v;
        }
}

/* The definition: per query, per block of its keys, scores, the block's
 * max, rescaling of the running sum and output by exp(m_old - m_new), then
 * the block's exponentials and their weighted values added. */
void kn_attention_ref(const kn_attn_kv *kv, const float *q, size_t q_stride, int n_q, const int64_t *n_keys,
                      float scale, float *out, size_t out_stride, float *scratch)
{
    const int d = kv->head_dim, B = KN_ATTN_BLOCK;
    kn_attn_scratch w = kn_attn_split(scratch, n_q, d);
    int64_t n_max = 0;
    for (int i = 0; i < n_q; i++) {
        const int64_t ni = n_keys ? n_keys[i] : kv->n;
        n_max = ni > n_max ? ni : n_max;
        for (int t = 0; t < d; t++) {
            const float x = q[(size_t)i * q_stride + t];
            w.qc[(size_t)i * d + t] = kv->type == DTYPE_F16 ? fp16_to_f32(f32_to_fp16(x)) : x;
            w.acc[(size_t)i * d + t] = 0;
        }
        w.m[i] = -INFINITY;
        w.l[i] = 0;
    }
    for (int64_t j0 = 0; j0 < n_max; j0 += B) {
        const int nb = n_max - j0 < B ? (int)(n_max - j0) : B;
        attn_load_block(kv, j0, nb, w.kt, w.vb);
        for (int i = 0; i < n_q; i++) {
            const int64_t ni = n_keys ? n_keys[i] : kv->n;
            if (ni <= j0)
                continue;
            const int nv = ni - j0 < nb ? (int)(ni - j0) : nb;
            const float *qi = w.qc + (size_t)i * d;
            float *a = w.acc + (size_t)i * d;
            float p[KN_ATTN_BLOCK], mb = -INFINITY;
            for (int j = 0; j < nv; j++) {
                float dot = 0;
                for (int t = 0; t < d; t++)
                    dot += qi[t] * w.kt[(size_t)t * B + j];
                p[j] = dot * scale;
                mb = fmaxf(mb, p[j]);
            }
            const float mn = fmaxf(w.m[i], mb), c = expf(w.m[i] - mn);
            float sum = 0;
            for (int j = 0; j < nv; j++) {
                p[j] = expf(p[j] - mn);
                sum += p[j];
            }
            w.l[i] = w.l[i] * c + sum;
            w.m[i] = mn;
            for (int t = 0; t < d; t++)
                a[t] *= c;
            for (int j = 0; j < nv; j++)
                for (int t = 0; t < d; t++)
                    a[t] += p[j] * w.vb[(size_t)j * d + t];
        }
    }
    for (int i = 0; i < n_q; i++) {
        const float inv = 1.0f / w.l[i];
        for (int t = 0; t < d; t++)
            out[(size_t)i * out_stride + t] = w.acc[(size_t)i * d + t] * inv;
    }
}

/* ---- dense (vision) attention ---------------------------------------------------- */

size_t kn_attention_dense_scratch(int64_t n, int head_dim)
{
    /* SIMD layout: scores [kn_attn_dense_score_rows(n)][Q], queries
     * transposed [d][Q], outputs transposed [d][Q]; the reference uses the
     * first n + d floats. */
    return (kn_attn_dense_score_rows(n) + 2 * (size_t)head_dim) * KN_ATTN_DENSE_QUERIES;
}

void kn_attention_dense(const float *q, size_t q_stride, int n_q, const float *k, const float *v,
                        size_t kv_stride, int64_t n, int head_dim, float scale, float *out, size_t out_stride,
                        float *scratch)
{
    kn_impl_active()->attention_dense(q, q_stride, n_q, k, v, kv_stride, n, head_dim, scale, out, out_stride,
                                      scratch);
}

/* The definition, one query at a time: the scores (q.k summed over t in
 * order, times scale), the reference softmax over them, then the
 * probability-weighted values summed in key order within blocks of
 * KN_ATTN_DENSE_VBLOCK keys, the blocks' sums added in order. */
void kn_attention_dense_ref(const float *q, size_t q_stride, int n_q, const float *k, const float *v,
                            size_t kv_stride, int64_t n, int head_dim, float scale, float *out,
                            size_t out_stride, float *scratch)
{
    const int d = head_dim;
    float *p = scratch, *blk = p + n;  /* [n], [d] */
    for (int i = 0; i < n_q; i++) {
        const float *qi = q + (size_t)i * q_stride;
        float *o = out + (size_t)i * out_stride;
        for (int64_t j = 0; j < n; j++) {
            const float *kj = k + (size_t)j * kv_stride;
            float dot = 0;
            for (int t = 0; t < d; t++)
                dot += qi[t] * kj[t];
            p[j] = dot * scale;
        }
        kn_ref_impl.softmax(p, n);
        for (int t = 0; t < d; t++)
            o[t] = 0;
        for (int64_t j0 = 0; j0 < n; j0 += KN_ATTN_DENSE_VBLOCK) {
            const int64_t j1 = n - j0 < KN_ATTN_DENSE_VBLOCK ? n : j0 + KN_ATTN_DENSE_VBLOCK;
            for (int t = 0; t < d; t++)
                blk[t] = 0;
            for (int64_t j = j0; j < j1; j++) {
                const float *vj = v + (size_t)j * kv_stride;
                for (int t = 0; t < d; t++)
                    blk[t] += p[j] * vj[t];
            }
            for (int t = 0; t < d; t++)
                o[t] += blk[t];
        }
    }
}
